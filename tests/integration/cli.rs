//! The command-line contract: keygen, publish, export, verify, gc, status.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::harness::*;

#[test]
fn keygen_prints_id_and_never_overwrites() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    assert_eq!(id.len(), 64, "collection id is 64 hex digits: {id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = fs::read(&key).unwrap();
    let err = h.fail(&["keygen", &key]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(fs::read(&key).unwrap(), before);
    assert_eq!(h.run(&["id", &key]).trim(), id);
}

#[test]
fn publish_export_round_trip_is_exact() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 6);
    let out = h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(out.contains("published src version 1: 33 files"), "{out}");
    let dest = h.path("out/tree");
    h.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    // No temporary sibling is left behind.
    let siblings: Vec<_> = fs::read_dir(h.path("out")).unwrap().collect();
    assert_eq!(siblings.len(), 1);
    // Export by name works too.
    h.run(&["export", "src", h.path("by-name").to_str().unwrap()]);
    assert_same_tree(&src, &h.path("by-name"));
    let status = h.run(&["status"]);
    assert!(
        status.contains(&id) && status.contains("current: version 1"),
        "{status}"
    );
}

#[test]
fn unchanged_data_stores_nothing_new_and_edits_store_little() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 24);
    let first = h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(new_bytes(&first) > 24.0 * 1048576.0, "{first}");
    let again = h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(again.contains("version 2"), "{again}");
    assert_eq!(new_bytes(&again), 0.0, "{again}");

    // Insert 1000 bytes in the middle of the 24 MiB file.
    let mut big = fs::read(src.join("big.img")).unwrap();
    big.splice(12 << 20..12 << 20, random_bytes(1000, 99));
    fs::write(src.join("big.img"), &big).unwrap();
    let edited = h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let stored = new_bytes(&edited);
    assert!(
        stored > 0.0 && stored < 9.0 * 1048576.0,
        "edit stored {stored} bytes: {edited}"
    );

    // Old versions stay exportable until collected.
    let v1 = h.path("v1");
    h.run(&["export", "--version", "1", &id, v1.to_str().unwrap()]);
    assert_eq!(
        fs::read(v1.join("big.img")).unwrap(),
        random_bytes(24 << 20, 1)
    );
    let cur = h.path("cur");
    h.run(&["export", &id, cur.to_str().unwrap()]);
    assert_same_tree(&src, &cur);
}

#[test]
fn export_replaces_only_when_asked_and_atomically() {
    let h = Harness::new();
    let (_, id, src) = h.publish_sample(1);
    let dest = h.path("dest");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("precious"), b"keep me").unwrap();
    let err = h.fail(&["export", &id, dest.to_str().unwrap()]);
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(fs::read(dest.join("precious")).unwrap(), b"keep me");
    h.run(&["export", "--replace", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    assert_eq!(
        fs::read_dir(h.dir()).unwrap().count(),
        4,
        "no temp dirs left"
    );
}

#[test]
fn verify_names_corruption_and_repair_recovers() {
    let h = Harness::new();
    let (key, id, src) = h.publish_sample(2);
    let ok = h.run(&["verify"]);
    assert!(ok.contains(" 0 problems"), "{ok}");

    // Flip one byte in the middle of the segment file (inside big.img's data).
    let seg = fs::read_dir(h.path("data/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let at = 1 << 20;
    bytes[at] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();

    let out = h.run_any(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("corrupt chunk") && text.contains("big.img"),
        "{text}"
    );
    // Export refuses to write corrupt bytes.
    let err = h.fail(&["export", &id, h.path("x").to_str().unwrap()]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(!h.path("x").exists());

    // Repair drops the bad chunk; verify now reports it missing; republish restores it.
    let out = h.run_any(&["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(1));
    let text = h.run_any(&["verify"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("missing chunk"));
    h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let out = h.run_any(&["verify"]);
    // Version 1 is whole again because the chunk was stored again.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dest = h.path("dest");
    h.run(&["export", "--version", "1", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
}

#[test]
fn gc_frees_space_of_dropped_versions() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    fs::create_dir_all(&src).unwrap();
    for v in 0..3u64 {
        fs::write(src.join("image.iso"), random_bytes(8 << 20, 100 + v)).unwrap();
        h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    }
    let before = disk_usage(&h.path("data/segments"));
    assert!(before >= 24 << 20, "three versions stored: {before}");
    let out = h.run(&["gc", "--keep", "1"]);
    assert!(out.contains("dropped 2 versions"), "{out}");
    let after = disk_usage(&h.path("data/segments"));
    assert!(after < 10 << 20, "gc gave space back: {before} -> {after}");
    let ok = h.run(&["verify"]);
    assert!(ok.contains(" 0 problems"), "{ok}");
    let dest = h.path("dest");
    h.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    h.fail(&[
        "export",
        "--version",
        "1",
        &id,
        h.path("old").to_str().unwrap(),
    ]);
    // Publishing after gc still works and reuses nothing that was freed.
    fs::write(src.join("image.iso"), random_bytes(8 << 20, 100)).unwrap();
    h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let dest = h.path("dest2");
    h.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    assert!(h.run(&["verify"]).contains(" 0 problems"));
}

#[test]
fn bad_trees_are_refused_before_anything_changes() {
    let h = Harness::new();
    let (key, _) = h.keygen();
    let src = h.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", src.join("evil")).unwrap();
    let refuse = |h: &Harness| {
        let args = ["publish", "--symlinks", "refuse", "--key", &key];
        h.fail(&[&args[..], &[src.to_str().unwrap()]].concat())
    };
    let err = refuse(&h);
    assert!(err.contains("escapes the tree"), "{err}");
    fs::remove_file(src.join("evil")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
    let err = refuse(&h);
    assert!(err.contains("escapes the tree"), "{err}");
    let status = h.run(&["status"]);
    assert!(status.contains("no collections"), "{status}");
    let err = h.fail(&[
        "publish",
        "--key",
        &key,
        "--name",
        "../x",
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("invalid collection name"), "{err}");
}

#[test]
fn a_store_in_use_gives_a_clear_error() {
    let h = Harness::new();
    let _held = peermirror::store::Store::open(&h.path("data")).unwrap();
    let err = h.fail(&["status"]);
    assert!(
        err.contains("in use by another peermirror process"),
        "{err}"
    );
}

#[test]
fn explicit_versions_must_increase() {
    let h = Harness::new();
    let (key, _) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 1);
    h.run(&[
        "publish",
        "--key",
        &key,
        "--version",
        "10",
        src.to_str().unwrap(),
    ]);
    let err = h.fail(&[
        "publish",
        "--key",
        &key,
        "--version",
        "10",
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("not newer"), "{err}");
    let out = h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(out.contains("version 11"), "{out}");
}
