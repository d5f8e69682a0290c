//! Publish: file metadata, symlinks, excludes, dry runs, the stat cache.

use super::*;
use crate::chunk;
use crate::manifest::{EntryKind, Timestamp};
use rand::{Rng, SeedableRng};
use sha2::Digest;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Every kind of file (empty, gathered small ones, one cut over several
/// windows) gets its SHA-256 and modification time, and export restores
/// the times.
#[test]
fn files_carry_sha256_and_mtime_through_export() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("big", random(chunk::WINDOW + (3 << 20), 1)),
        ("d/small1", random(1000, 2)),
        ("d/small2", random(200 << 10, 3)),
        ("empty", Vec::new()),
        ("mid", random(300 << 10, 4)),
    ];
    for (i, (p, data)) in files.iter().enumerate() {
        let path = src.join(p);
        std::fs::write(&path, data).unwrap();
        let t = UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 1000, 123_456_789);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let store = Store::open(&dir.path().join("store")).unwrap();
    let key = MasterKey::generate();
    let opts = PublishOptions {
        name: Some("t".into()),
        ..Default::default()
    };
    let report = publish(&store, &key, &src, &opts, &mut |_, _| {}).unwrap();
    let m = store.manifest(&report.announcement.body.manifest).unwrap();
    assert_eq!(m.format, crate::manifest::FORMAT);
    for (i, (p, data)) in files.iter().enumerate() {
        let EntryKind::File {
            meta: Some(meta), ..
        } = &m.get(p).unwrap().kind
        else {
            panic!("{p} has no metadata");
        };
        let want: [u8; 32] = sha2::Sha256::digest(data).into();
        assert_eq!(meta.sha256, want, "{p}");
        assert_eq!(
            meta.modified,
            Timestamp {
                secs: 1_600_000_000 + i as i64 * 1000,
                nanos: 123_456_789
            },
            "{p}"
        );
    }
    let out = dir.path().join("out");
    store.export(&key.collection(), None, &out, false).unwrap();
    for (i, (p, data)) in files.iter().enumerate() {
        let md = std::fs::metadata(out.join(p)).unwrap();
        assert_eq!(std::fs::read(out.join(p)).unwrap(), *data);
        assert_eq!(
            md.modified().unwrap(),
            UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 1000, 123_456_789),
            "{p}"
        );
    }
}

/// A tree of small files and one large one, its times safely in the past
/// for the stat cache (a file changed in the last moments is not trusted).
fn cache_tree(src: &Path) {
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("d/f{i:03}")), random(1000 + i, i as u64)).unwrap();
    }
    std::fs::write(src.join("large"), random(3 << 20, 999)).unwrap();
    std::thread::sleep(Duration::from_millis(150));
}

fn opts() -> PublishOptions {
    PublishOptions {
        name: Some("t".into()),
        ..Default::default()
    }
}

fn republish(store: &Store, key: &MasterKey, src: &Path) -> PublishReport {
    std::thread::sleep(Duration::from_millis(150));
    publish(store, key, src, &opts(), &mut |_, _| {}).unwrap()
}

fn sha_of(store: &Store, r: &PublishReport, path: &str) -> [u8; 32] {
    let m = store.manifest(&r.announcement.body.manifest).unwrap();
    match &m.get(path).unwrap().kind {
        EntryKind::File {
            meta: Some(meta), ..
        } => meta.sha256,
        _ => panic!("{path} is no file"),
    }
}

/// Republishing reads only what changed, by size, times or inode: a file
/// rewritten with its size and modification time put back is caught by
/// its change time, one replaced by rename by its inode.
#[test]
fn the_stat_cache_reads_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    cache_tree(&src);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let key = MasterKey::generate();
    let first = publish(&store, &key, &src, &opts(), &mut |_, _| {}).unwrap();
    assert_eq!(first.read_bytes, first.bytes);
    assert_eq!(store.stat_cache_entries().unwrap(), 201);
    let again = republish(&store, &key, &src);
    assert_eq!(again.read_bytes, 0, "an unchanged tree is not read");
    assert_eq!(
        again.announcement.body.manifest,
        first.announcement.body.manifest
    );

    // One small file grows.
    let f = src.join("d/f007");
    let mut data = std::fs::read(&f).unwrap();
    data.extend_from_slice(b"more");
    std::fs::write(&f, &data).unwrap();
    let r = republish(&store, &key, &src);
    assert_eq!(r.read_bytes, data.len() as u64);
    assert_eq!(
        sha_of(&store, &r, "d/f007"),
        <[u8; 32]>::from(sha2::Sha256::digest(&data))
    );

    // The large file rewritten in place, same size, mtime set back.
    let large = src.join("large");
    let mtime = std::fs::metadata(&large).unwrap().modified().unwrap();
    let mut big = std::fs::read(&large).unwrap();
    big[12345] ^= 0xff;
    std::fs::write(&large, &big).unwrap();
    File::options()
        .write(true)
        .open(&large)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let r = republish(&store, &key, &src);
    assert_eq!(r.read_bytes, big.len() as u64);
    assert_eq!(
        sha_of(&store, &r, "large"),
        <[u8; 32]>::from(sha2::Sha256::digest(&big))
    );

    // A file replaced by rename, with the same size and times.
    let g = src.join("d/f100");
    let md = std::fs::metadata(&g).unwrap();
    let other = dir.path().join("other");
    let fresh = random(md.len() as usize, 4242);
    std::fs::write(&other, &fresh).unwrap();
    File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(md.modified().unwrap())
        .unwrap();
    std::fs::rename(&other, &g).unwrap();
    let r = republish(&store, &key, &src);
    assert_eq!(r.read_bytes, fresh.len() as u64);

    // Removed files leave the cache; --reread reads everything.
    std::fs::remove_file(src.join("d/f000")).unwrap();
    let r = republish(&store, &key, &src);
    assert_eq!(r.read_bytes, 0);
    assert_eq!(store.stat_cache_entries().unwrap(), 200);
    let o = PublishOptions {
        reread: true,
        ..opts()
    };
    let r = publish(&store, &key, &src, &o, &mut |_, _| {}).unwrap();
    assert_eq!(r.read_bytes, r.bytes);
    let out = dir.path().join("out");
    store.export(&key.collection(), None, &out, false).unwrap();
    assert!(crate::demo::compare_trees(&src, &out).unwrap().is_none());
}

/// A file changed just before the publish is read but not remembered: its
/// stat fields could stay the same through another change.
#[test]
fn files_changed_a_moment_ago_are_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("old"), b"old").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    std::fs::write(src.join("new"), b"new").unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let key = MasterKey::generate();
    publish(&store, &key, &src, &opts(), &mut |_, _| {}).unwrap();
    assert_eq!(store.stat_cache_entries().unwrap(), 1);
    let r = republish(&store, &key, &src);
    assert_eq!(r.read_bytes, 3);
    assert_eq!(store.stat_cache_entries().unwrap(), 2);
}

/// Every store file's bytes.
fn store_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() && e.file_name() != "LOCK" {
            out.push((e.path().to_path_buf(), std::fs::read(e.path()).unwrap()));
        }
    }
    out
}

/// A dry run counts what a publish would store and writes nothing.
#[test]
fn a_dry_run_counts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    cache_tree(&src);
    let root = dir.path().join("store");
    let key = MasterKey::generate();
    // A store as any other process leaves it: sled's own files flushed.
    drop(Store::open(&root).unwrap());
    let store = Store::open(&root).unwrap();
    let before = store_files(&root);
    let r = dry_run(&store, &key, &src, &opts(), &mut |_, _| {}).unwrap();
    assert_eq!((r.files, r.version, r.entries), (201, 1, 202));
    assert_eq!(r.new_bytes, r.bytes);
    assert_eq!(r.new_chunks, r.chunks);
    assert!(store.collections().unwrap().is_empty());
    assert_eq!(store.stats().unwrap().chunks, 0);
    assert_eq!(store.stat_cache_entries().unwrap(), 0);
    drop(store);
    assert_eq!(store_files(&root), before);

    let store = Store::open(&root).unwrap();
    publish(&store, &key, &src, &opts(), &mut |_, _| {}).unwrap();
    std::fs::write(src.join("d/f050"), b"changed").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let stats = store.stats().unwrap();
    let r = dry_run(&store, &key, &src, &opts(), &mut |_, _| {}).unwrap();
    assert_eq!(
        (r.version, r.new_chunks, r.new_bytes, r.read_bytes),
        (2, 1, 7, 7)
    );
    assert_eq!(store.stats().unwrap().chunks, stats.chunks);
    assert_eq!(
        store
            .current(&key.collection())
            .unwrap()
            .unwrap()
            .body
            .version,
        1
    );
}

/// Absolute links into the tree become relative; the others follow the
/// policy, and `refuse` stores nothing.
#[test]
fn symlink_policies() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/libx.so.1"), b"x").unwrap();
    std::os::unix::fs::symlink(src.join("lib/libx.so.1"), src.join("lib/libx.so")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", src.join("host")).unwrap();
    let key = MasterKey::generate();
    for (policy, kept) in [
        (SymlinkPolicy::Skip, false),
        (SymlinkPolicy::Keep, true),
        (SymlinkPolicy::Refuse, false),
    ] {
        let store = Store::open(&dir.path().join(format!("{policy:?}"))).unwrap();
        let o = PublishOptions {
            symlinks: policy,
            ..opts()
        };
        let r = publish(&store, &key, &src, &o, &mut |_, _| {});
        if policy == SymlinkPolicy::Refuse {
            assert!(matches!(
                r,
                Err(PublishError::Manifest(ManifestError::SymlinkEscapes { .. }))
            ));
            assert_eq!(
                store.stats().unwrap().chunks,
                0,
                "refused before any data is read"
            );
            continue;
        }
        let r = r.unwrap();
        assert_eq!((r.links_rewritten, r.links_skipped), (1, u64::from(!kept)));
        let m = store.manifest(&r.announcement.body.manifest).unwrap();
        let target = |p: &str| match m.get(p).map(|e| &e.kind) {
            Some(EntryKind::Symlink { target }) => Some(target.clone()),
            _ => None,
        };
        assert_eq!(target("lib/libx.so").as_deref(), Some("libx.so.1"));
        assert_eq!(target("host").is_some(), kept);
    }
}
