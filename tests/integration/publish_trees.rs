//! Publishing real trees: symlinks as system directories have them (each
//! `--symlinks` mode, through export and the HTTP gateway), `--exclude`
//! and `[publish]` settings, and `--dry-run` leaving the store untouched.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use peermirror::http::{serve, Gateway, HttpConfig};
use peermirror::keys::MasterKey;
use peermirror::publish::{publish, PublishOptions, SymlinkPolicy};
use peermirror::store::Store;

use crate::harness::*;

const GNU: &str = "x86_64-linux-gnu";

/// A copy of a system library directory's layout, rooted at `root` the way
/// `/lib` is: absolute links into it (as `libBrokenLocale.so ->
/// /lib/x86_64-linux-gnu/libBrokenLocale.so.1`, spelled with `root`),
/// relative links, a link to the dynamic loader elsewhere, and one that
/// climbs out with `..`.
fn system_lib(root: &Path) {
    let gnu = root.join(GNU);
    fs::create_dir_all(gnu.join("gconv")).unwrap();
    fs::write(gnu.join("libBrokenLocale.so.1"), random_bytes(5000, 1)).unwrap();
    fs::write(gnu.join("libc.so.6"), random_bytes(9000, 2)).unwrap();
    fs::write(gnu.join("gconv/UTF-16.so"), random_bytes(700, 3)).unwrap();
    let abs = |p: &str| format!("{}/{p}", root.display());
    symlink(
        abs(&format!("{GNU}/libBrokenLocale.so.1")),
        gnu.join("libBrokenLocale.so"),
    )
    .unwrap();
    symlink(abs(&format!("{GNU}/libc.so.6")), gnu.join("gconv/libc.so")).unwrap();
    symlink(abs(GNU), root.join("gnu")).unwrap();
    symlink("libc.so.6", gnu.join("libc.so")).unwrap();
    symlink("/lib64/ld-linux-x86-64.so.2", gnu.join("ld-linux.so")).unwrap();
    symlink("../../etc/passwd", gnu.join("passwd")).unwrap();
}

fn link(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()
        .map(|t| t.to_str().unwrap().to_string())
}

#[test]
fn system_library_links_in_each_mode() {
    for mode in ["skip", "keep", "refuse"] {
        let h = Harness::new();
        let (key, id) = h.keygen();
        let src = h.path("lib");
        system_lib(&src);
        let mut args = vec!["publish", "--key", &key, "--symlinks", mode];
        let src_arg = src.to_str().unwrap();
        args.push(src_arg);
        if mode == "refuse" {
            let err = h.fail(&args);
            assert!(err.contains("escapes the tree"), "{err}");
            assert!(h.run(&["status"]).contains("no collections"));
            continue;
        }
        let out = h.run_any(&args);
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("3 absolute symlinks into the tree stored as relative"),
            "{stderr}"
        );
        let dest = h.path("out");
        h.run(&["export", &id, dest.to_str().unwrap()]);
        // Absolute links into the tree come back relative, and resolve.
        assert_eq!(
            link(&dest.join(GNU).join("libBrokenLocale.so")).as_deref(),
            Some("libBrokenLocale.so.1")
        );
        assert_eq!(
            link(&dest.join(GNU).join("gconv/libc.so")).as_deref(),
            Some("../libc.so.6")
        );
        assert_eq!(link(&dest.join("gnu")).as_deref(), Some(GNU));
        assert_eq!(
            fs::read(dest.join(GNU).join("libBrokenLocale.so")).unwrap(),
            fs::read(src.join(GNU).join("libBrokenLocale.so.1")).unwrap()
        );
        assert_eq!(
            link(&dest.join(GNU).join("libc.so")).as_deref(),
            Some("libc.so.6")
        );
        let (loader, passwd) = (
            link(&dest.join(GNU).join("ld-linux.so")),
            link(&dest.join(GNU).join("passwd")),
        );
        if mode == "skip" {
            assert!(
                stderr.contains("2 symlinks pointing outside the tree left out"),
                "{stderr}"
            );
            assert_eq!((loader, passwd), (None, None));
        } else {
            // Kept as they were, written as stored, never resolved.
            assert_eq!(loader.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
            assert_eq!(passwd.as_deref(), Some("../../etc/passwd"));
        }
        assert!(h.run(&["verify"]).contains(" 0 problems"));
    }
}

/// One GET over a raw connection to the gateway: the status code and body.
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| out[i + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

/// The gateway follows links lexically inside the manifest only: rewritten
/// links serve their target, kept absolute or escaping ones serve nothing.
#[test]
fn the_gateway_never_resolves_kept_links() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("lib");
    system_lib(&src);
    let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
    let opts = PublishOptions {
        name: Some("lib".into()),
        symlinks: SymlinkPolicy::Keep,
        ..Default::default()
    };
    publish(&store, &MasterKey::generate(), &src, &opts, &mut |_, _| {}).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let config = HttpConfig {
        listen: addr,
        ..Default::default()
    };
    let gw = Gateway::new(store.clone(), &config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(serve(listener, gw, async move {
        let _ = stopped.await;
    }));
    let lib = fs::read(src.join(GNU).join("libBrokenLocale.so.1")).unwrap();
    assert_eq!(
        get(addr, &format!("/lib/{GNU}/libBrokenLocale.so")),
        (200, lib)
    );
    assert_eq!(get(addr, &format!("/lib/{GNU}/ld-linux.so")).0, 404);
    assert_eq!(get(addr, &format!("/lib/{GNU}/passwd")).0, 404);
    let _ = stop.send(());
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// Every file under `dir` with its bytes (sled's files included).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file() && e.file_name() != "LOCK")
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            (rel, fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn exclude_settings_flags_and_a_dry_run_that_writes_nothing() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 1);
    fs::create_dir_all(src.join("cache/deep")).unwrap();
    fs::write(src.join("cache/deep/blob"), random_bytes(3000, 7)).unwrap();
    fs::write(src.join("a/b/scratch.tmp"), b"temporary").unwrap();
    fs::write(src.join("keep.tmp.txt"), b"kept").unwrap();
    let data = h.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(
        data.join("config.toml"),
        "[publish]\nexclude = [\"*.tmp\"]\n",
    )
    .unwrap();
    let s = src.to_str().unwrap();
    let first = h.run(&["publish", "--key", &key, "--exclude", "/cache/", s]);
    assert!(first.contains("version 1: 34 files"), "{first}");
    let dest = h.path("out");
    h.run(&["export", &id, dest.to_str().unwrap()]);
    assert!(dest.join("keep.tmp.txt").exists() && dest.join("a/b/f0.txt").exists());
    assert!(!dest.join("cache").exists() && !dest.join("a/b/scratch.tmp").exists());

    // A dry run after a change: counts, and not one byte of the store moves.
    fs::write(src.join("new.bin"), random_bytes(100_000, 8)).unwrap();
    let before = snapshot(&data);
    let out = h.run(&[
        "publish",
        "--dry-run",
        "--key",
        &key,
        "--exclude",
        "/cache/",
        s,
    ]);
    assert!(out.contains("would publish src version 2"), "{out}");
    assert!(out.contains("35 files") && out.contains("1 of "), "{out}");
    assert!(out.contains("nothing written"), "{out}");
    assert_eq!(snapshot(&data), before, "the dry run changed the store");
    assert!(h.run(&["status"]).contains("current: version 1"));
    // Without the flag the cache directory would be published.
    let out = h.run(&["publish", "--dry-run", "--key", &key, s]);
    assert!(out.contains("36 files"), "{out}");
    assert_eq!(snapshot(&data), before, "the dry run changed the store");
}
