//! Sample data and tree comparison, shared by `peermirror demo`, the
//! integration tests and the benchmarks.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::{Rng, SeedableRng};

/// Writes a small but varied tree: a few MiB of random images, text files,
/// an executable script, an empty directory and symlinks.
pub fn generate_sample(dir: &Path) -> io::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    fs::create_dir_all(dir.join("images"))?;
    fs::create_dir_all(dir.join("pool/main"))?;
    fs::create_dir_all(dir.join("empty"))?;
    for (name, mib) in [("images/installer.iso", 12usize), ("images/netinst.iso", 4)] {
        let mut f = fs::File::create(dir.join(name))?;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf)?;
        }
    }
    for i in 0..20 {
        let mut body = vec![0u8; 1000 + i * 997];
        rng.fill_bytes(&mut body);
        fs::write(dir.join(format!("pool/main/pkg-{i:02}.deb")), body)?;
    }
    fs::write(
        dir.join("README.txt"),
        "Sample collection published by peermirror demo.\n",
    )?;
    let script = dir.join("install.sh");
    fs::write(&script, "#!/bin/sh\necho installing\n")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("images/installer.iso", dir.join("latest.iso"))?;
    std::os::unix::fs::symlink("../main", dir.join("pool/main/self"))?;
    Ok(())
}

/// Compares two trees: paths, kinds, bytes, exec bits and link targets.
/// Returns a description of the first difference, or None if identical.
pub fn compare_trees(a: &Path, b: &Path) -> io::Result<Option<String>> {
    let list = |root: &Path| -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
            let e = e.map_err(io::Error::other)?;
            let rel = e.path().strip_prefix(root).map_err(io::Error::other)?;
            v.push(rel.to_string_lossy().into_owned());
        }
        v.sort();
        Ok(v)
    };
    let (la, lb) = (list(a)?, list(b)?);
    if la != lb {
        let only_a: Vec<_> = la.iter().filter(|p| !lb.contains(p)).take(3).collect();
        let only_b: Vec<_> = lb.iter().filter(|p| !la.contains(p)).take(3).collect();
        return Ok(Some(format!(
            "paths differ: only in {}: {only_a:?}; only in {}: {only_b:?}",
            a.display(),
            b.display()
        )));
    }
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (fs::symlink_metadata(&pa)?, fs::symlink_metadata(&pb)?);
        if ma.file_type() != mb.file_type() {
            return Ok(Some(format!("{rel}: kind differs")));
        }
        if ma.file_type().is_symlink() {
            if fs::read_link(&pa)? != fs::read_link(&pb)? {
                return Ok(Some(format!("{rel}: link target differs")));
            }
        } else if ma.is_file() {
            if (ma.permissions().mode() & 0o100) != (mb.permissions().mode() & 0o100) {
                return Ok(Some(format!("{rel}: exec bit differs")));
            }
            if ma.len() != mb.len() || !same_bytes(&pa, &pb)? {
                return Ok(Some(format!("{rel}: contents differ")));
            }
        }
    }
    Ok(None)
}

fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
