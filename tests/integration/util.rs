//! Helpers: a temporary work area and a way to run the built binary in it,
//! printing its output when a command does not do what the test expects.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, SeedableRng};

pub const BIN: &str = env!("CARGO_BIN_EXE_peermirror");

/// A temporary directory with a default data dir and master key location.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("pm-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The binary with `--data <dir>/data`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data").arg(self.path("data"));
        c.env_remove("RUST_LOG");
        c
    }

    /// Runs and returns the output, whatever the exit status.
    pub fn run_any(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn peermirror")
    }

    /// Runs, requires success, returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.run_any(args);
        if !out.status.success() {
            panic!(
                "peermirror {args:?} failed ({})\nstdout:\n{}\nstderr:\n{}\n(work dir {})",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.dir.path().display()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs, requires failure, returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run_any(args);
        assert!(
            !out.status.success(),
            "peermirror {args:?} should fail\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes a key and a sample tree (see [`sample_tree`]) and publishes
    /// it: returns (key path, collection id, source dir).
    pub fn publish_sample(&self, big_mib: usize) -> (String, String, PathBuf) {
        let (key, id) = self.keygen();
        let src = self.path("src");
        sample_tree(&src, big_mib);
        self.run(&["publish", "--key", &key, src.to_str().unwrap()]);
        (key, id, src)
    }

    /// Writes a master key and returns (path, collection id).
    pub fn keygen(&self) -> (String, String) {
        let key = self.path("master.key");
        let out = self.run(&["keygen", key.to_str().unwrap()]);
        let id = out.lines().last().unwrap().trim().to_string();
        (key.to_str().unwrap().to_string(), id)
    }
}

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
