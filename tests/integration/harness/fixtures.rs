//! Test data: deterministic bytes, a sample tree, tree comparison and
//! parsing of the CLI's byte counts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::{Rng, SeedableRng};

/// Deterministic random bytes.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes a tree with a large multi-chunk file, small files, an executable,
/// an empty directory and symlinks.
pub fn sample_tree(dir: &Path, big_mib: usize) {
    fs::create_dir_all(dir.join("a/b")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::write(dir.join("big.img"), random_bytes(big_mib << 20, 1)).unwrap();
    for i in 0..30 {
        fs::write(
            dir.join(format!("a/b/f{i}.txt")),
            random_bytes(100 + i * 333, i as u64 + 10),
        )
        .unwrap();
    }
    fs::write(dir.join("zero-length"), b"").unwrap();
    let exe = dir.join("a/run.sh");
    let mut f = fs::File::create(&exe).unwrap();
    f.write_all(b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("big.img", dir.join("latest")).unwrap();
    std::os::unix::fs::symlink("../b/f1.txt", dir.join("a/b/link-up")).unwrap();
}

/// Panics with the difference if the trees differ.
pub fn assert_same_tree(a: &Path, b: &Path) {
    if let Some(d) = peermirror::demo::compare_trees(a, b).unwrap() {
        panic!("trees differ: {d}");
    }
}

/// Parses "N new stored" bytes from a publish summary like "..., 1.00 MiB new stored".
pub fn new_bytes(summary: &str) -> f64 {
    let before = summary.split(" new stored").next().unwrap();
    let part = before.rsplit(", ").next().unwrap();
    let mut it = part.split_whitespace();
    let n: f64 = it.next().unwrap().parse().unwrap();
    let mult = match it.next().unwrap() {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        u => panic!("unit {u}"),
    };
    n * mult
}

/// Allocated bytes of the files below `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum()
}
