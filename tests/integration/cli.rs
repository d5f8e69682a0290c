//! The command-line contract: keygen, publish, export, verify, gc, status.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::*;

#[test]
fn keygen_prints_id_and_never_overwrites() {
    let env = Env::new();
    let (key, id) = env.keygen();
    assert_eq!(id.len(), 64, "collection id is 64 hex digits: {id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = fs::read(&key).unwrap();
    let err = env.fail(&["keygen", &key]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(fs::read(&key).unwrap(), before);
    assert_eq!(env.run(&["id", &key]).trim(), id);
}

#[test]
fn publish_export_round_trip_is_exact() {
    let env = Env::new();
    let (key, id) = env.keygen();
    let src = env.path("src");
    sample_tree(&src, 6);
    let out = env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(out.contains("published src version 1: 33 files"), "{out}");
    let dest = env.path("out/tree");
    env.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    // No temporary sibling is left behind.
    let siblings: Vec<_> = fs::read_dir(env.path("out")).unwrap().collect();
    assert_eq!(siblings.len(), 1);
    // Export by name works too.
    env.run(&["export", "src", env.path("by-name").to_str().unwrap()]);
    assert_same_tree(&src, &env.path("by-name"));
    let status = env.run(&["status"]);
    assert!(
        status.contains(&id) && status.contains("current: version 1"),
        "{status}"
    );
}

#[test]
fn unchanged_data_stores_nothing_new_and_edits_store_little() {
    let env = Env::new();
    let (key, id) = env.keygen();
    let src = env.path("src");
    sample_tree(&src, 24);
    let first = env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(new_bytes(&first) > 24.0 * 1048576.0, "{first}");
    let again = env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(again.contains("version 2"), "{again}");
    assert_eq!(new_bytes(&again), 0.0, "{again}");

    // Insert 1000 bytes in the middle of the 24 MiB file.
    let mut big = fs::read(src.join("big.img")).unwrap();
    big.splice(12 << 20..12 << 20, random_bytes(1000, 99));
    fs::write(src.join("big.img"), &big).unwrap();
    let edited = env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let stored = new_bytes(&edited);
    assert!(
        stored > 0.0 && stored < 9.0 * 1048576.0,
        "edit stored {stored} bytes: {edited}"
    );

    // Old versions stay exportable until collected.
    let v1 = env.path("v1");
    env.run(&["export", "--version", "1", &id, v1.to_str().unwrap()]);
    assert_eq!(
        fs::read(v1.join("big.img")).unwrap(),
        random_bytes(24 << 20, 1)
    );
    let cur = env.path("cur");
    env.run(&["export", &id, cur.to_str().unwrap()]);
    assert_same_tree(&src, &cur);
}

#[test]
fn export_replaces_only_when_asked_and_atomically() {
    let env = Env::new();
    let (_, id, src) = env.publish_sample(1);
    let dest = env.path("dest");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("precious"), b"keep me").unwrap();
    let err = env.fail(&["export", &id, dest.to_str().unwrap()]);
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(fs::read(dest.join("precious")).unwrap(), b"keep me");
    env.run(&["export", "--replace", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    assert_eq!(
        fs::read_dir(env.dir.path()).unwrap().count(),
        4,
        "no temp dirs left"
    );
}

#[test]
fn verify_names_corruption_and_repair_recovers() {
    let env = Env::new();
    let (key, id, src) = env.publish_sample(2);
    let ok = env.run(&["verify"]);
    assert!(ok.contains(" 0 problems"), "{ok}");

    // Flip one byte in the middle of the segment file (inside big.img's data).
    let seg = fs::read_dir(env.path("data/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let at = 1 << 20;
    bytes[at] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();

    let out = env.run_any(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("corrupt chunk") && text.contains("big.img"),
        "{text}"
    );
    // Export refuses to write corrupt bytes.
    let err = env.fail(&["export", &id, env.path("x").to_str().unwrap()]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(!env.path("x").exists());

    // Repair drops the bad chunk; verify now reports it missing; republish restores it.
    let out = env.run_any(&["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(1));
    let text = env.run_any(&["verify"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("missing chunk"));
    env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let out = env.run_any(&["verify"]);
    // Version 1 is whole again because the chunk was stored again.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dest = env.path("dest");
    env.run(&["export", "--version", "1", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
}

#[test]
fn gc_frees_space_of_dropped_versions() {
    let env = Env::new();
    let (key, id) = env.keygen();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for v in 0..3u64 {
        fs::write(src.join("image.iso"), random_bytes(8 << 20, 100 + v)).unwrap();
        env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    }
    let before = disk_usage(&env.path("data/segments"));
    assert!(before >= 24 << 20, "three versions stored: {before}");
    let out = env.run(&["gc", "--keep", "1"]);
    assert!(out.contains("dropped 2 versions"), "{out}");
    let after = disk_usage(&env.path("data/segments"));
    assert!(after < 10 << 20, "gc gave space back: {before} -> {after}");
    let ok = env.run(&["verify"]);
    assert!(ok.contains(" 0 problems"), "{ok}");
    let dest = env.path("dest");
    env.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    env.fail(&[
        "export",
        "--version",
        "1",
        &id,
        env.path("old").to_str().unwrap(),
    ]);
    // Publishing after gc still works and reuses nothing that was freed.
    fs::write(src.join("image.iso"), random_bytes(8 << 20, 100)).unwrap();
    env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let dest = env.path("dest2");
    env.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    assert!(env.run(&["verify"]).contains(" 0 problems"));
}

#[test]
fn bad_trees_are_refused_before_anything_changes() {
    let env = Env::new();
    let (key, _) = env.keygen();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", src.join("evil")).unwrap();
    let err = env.fail(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(err.contains("escapes the tree"), "{err}");
    fs::remove_file(src.join("evil")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
    let err = env.fail(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(err.contains("escapes the tree"), "{err}");
    let status = env.run(&["status"]);
    assert!(status.contains("no collections"), "{status}");
    let err = env.fail(&[
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
    let env = Env::new();
    let _held = peermirror::store::Store::open(&env.path("data")).unwrap();
    let err = env.fail(&["status"]);
    assert!(
        err.contains("in use by another peermirror process"),
        "{err}"
    );
}

#[test]
fn explicit_versions_must_increase() {
    let env = Env::new();
    let (key, _) = env.keygen();
    let src = env.path("src");
    sample_tree(&src, 1);
    env.run(&[
        "publish",
        "--key",
        &key,
        "--version",
        "10",
        src.to_str().unwrap(),
    ]);
    let err = env.fail(&[
        "publish",
        "--key",
        &key,
        "--version",
        "10",
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("not newer"), "{err}");
    let out = env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(out.contains("version 11"), "{out}");
}
