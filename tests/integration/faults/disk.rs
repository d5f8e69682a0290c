//! Full disks: the store, a syncing node and export on a real small tmpfs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::hash::Hash;
use peermirror::keys::MasterKey;
use peermirror::publish::{self, PublishOptions};
use peermirror::store::{Store, DISK_RESERVE};

use crate::harness::*;

/// Chunks written until the disk fills, then more after space is freed:
/// every committed chunk reads back right, before and after reopening.
#[test]
fn store_stays_consistent_when_the_disk_fills_mid_batch() {
    let h = Harness::new();
    let Some(disk) = Tmpfs::mount(&h.path("disk"), 24 << 20) else {
        return;
    };
    let ballast = disk.path().join("ballast");
    disk.fill(&ballast, 8 << 20);
    let data = disk.path().join("data");
    let store = Store::open(&data).unwrap();
    // No reserve: the file system itself refuses a write half-way.
    store.set_disk_reserve(0);
    let chunk = |i: u64| {
        let d = random_bytes((1 << 20) + 1000 * i as usize, 500 + i);
        (Hash::of(&d), d)
    };
    let mut committed: Vec<Hash> = Vec::new();
    let mut failures = 0;
    let mut i = 0u64;
    // Batches of three chunks until two batches in a row fail.
    while failures < 2 {
        let batch: Vec<_> = (i..i + 3).map(chunk).collect();
        i += 3;
        match store.put_chunks(&batch) {
            Ok(_) => committed.extend(batch.iter().map(|(id, _)| *id)),
            Err(e) => {
                failures += 1;
                assert!(e.to_string().contains("No space left"), "{e}");
            }
        }
        assert!(i < 100, "the disk never filled up");
    }
    std::fs::remove_file(&ballast).unwrap();
    for _ in 0..2 {
        let batch: Vec<_> = (i..i + 3).map(chunk).collect();
        i += 3;
        store
            .put_chunks(&batch)
            .expect("writing once space is freed");
        committed.extend(batch.iter().map(|(id, _)| *id));
    }
    let check = |store: &Store| {
        for id in &committed {
            store
                .read_chunk(id)
                .unwrap_or_else(|e| panic!("chunk {id}: {e}"));
        }
        let report = store.verify(false).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    };
    check(&store);
    drop(store);
    let store = Store::open(&data).unwrap();
    check(&store);
}

/// A store that fills its own disk stops short of the reserve kept for the
/// index (sled keeps failing after one failed write, even once space is
/// freed), refuses with a disk-full error, and carries on once space is freed.
#[test]
fn a_store_filling_its_disk_leaves_the_index_reserve_free() {
    let h = Harness::new();
    let Some(disk) = Tmpfs::mount(&h.path("disk"), 32 << 20) else {
        return;
    };
    let data = disk.path().join("data");
    let store = Store::open(&data).unwrap();
    let ballast = disk.path().join("ballast");
    disk.fill(&ballast, 12 << 20);
    let chunk = |i: u64| {
        let d = random_bytes(64 << 10, 9000 + i);
        (Hash::of(&d), d)
    };
    let mut committed = Vec::new();
    let mut i = 0;
    let err = loop {
        let batch: Vec<_> = (i..i + 4).map(chunk).collect();
        i += 4;
        match store.put_chunks(&batch) {
            Ok(_) => committed.extend(batch.iter().map(|(id, _)| *id)),
            Err(e) => break e,
        }
    };
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("kept free for the index"), "{err}");
    let free = disk.available();
    assert!(
        free + (64 << 10) >= DISK_RESERVE,
        "only {free} bytes left free"
    );
    std::fs::remove_file(&ballast).unwrap();
    for _ in 0..8 {
        let batch: Vec<_> = (i..i + 4).map(chunk).collect();
        i += 4;
        store
            .put_chunks(&batch)
            .expect("writing once space is freed");
        committed.extend(batch.iter().map(|(id, _)| *id));
    }
    for id in &committed {
        store.read_chunk(id).unwrap();
    }
    assert!(store.verify(false).unwrap().problems.is_empty());
}

/// Publishes `src` into a fresh store at `<test dir>/<name>` for a
/// [`SlowSource`]; returns the store and the version.
pub fn source_store(h: &Harness, name: &str, key: &MasterKey, src: &Path) -> (Arc<Store>, u64) {
    let store = Store::open(&h.path(name)).unwrap();
    let r = publish::publish(&store, key, src, &PublishOptions::default(), &mut |_, _| {}).unwrap();
    (Arc::new(store), r.announcement.body.version)
}

/// A node whose data directory is a small tmpfs of `size` bytes; its log
/// goes to the big disk (`<name>.log`), so nothing is lost when it fills.
fn small_disk(h: &Harness, name: &str, size: u64) -> Option<Tmpfs> {
    let disk = Tmpfs::mount(&h.path(name), size)?;
    let log = h.path(&format!("{name}.log"));
    std::fs::write(&log, b"").unwrap();
    std::os::unix::fs::symlink(&log, disk.path().join(LOG_FILE)).unwrap();
    h.keep_log(&format!("{name} (log kept outside its disk)"), log);
    Some(disk)
}

/// A version that would take the store over `limits.max_store_bytes` is
/// refused before it is fetched, with a clear line in the log and in
/// `status`, and what is held stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_over_the_store_quota_is_refused_before_it_is_fetched() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 2);
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    let m = h
        .start_with("m", master.addrs().to_vec(), vec![c], |cfg| {
            cfg.limits.max_store_bytes = 6 << 20;
        })
        .await;
    let v1 = master.publish(&key, &src).await;
    m.wait_version(c, v1).await;
    let v1_copy = h.path("src-v1");
    m.export_and_compare(c, &src, v1_copy.clone()).await;

    // Version 2 adds 8 MiB: over the 6 MiB quota.
    std::fs::write(src.join("more.img"), random_bytes(8 << 20, 42)).unwrap();
    let v2 = master.publish(&key, &src).await;
    let log = m.wait_log("version refused").await;
    assert!(log.contains("limits.max_store_bytes"), "{log}");
    let status = m.status().await;
    let cs = &status.collections[0];
    let refused = cs
        .refused
        .as_ref()
        .expect("status shows the refused version");
    assert_eq!(refused.version, v2);
    assert!(refused.reason.contains("quota"), "{}", refused.reason);
    assert_eq!(cs.current.as_ref().unwrap().version, v1);
    // Nothing of version 2 was fetched, nothing of version 1 lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(m.node().bytes_down() < 4 << 20, "{}", m.node().bytes_down());
    assert!(m.node().store().held_bytes().unwrap() <= 6 << 20);
    let report = m.node().store().verify(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    m.export_and_compare(c, &v1_copy, h.path("out")).await;
    m.shutdown().await;
    master.shutdown().await;
}

/// The disk fills up in the middle of a sync: the mirror says so in its
/// log, backs off (not a retry every two seconds), keeps its store sound,
/// and completes the version once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filling_mid_sync_pauses_it_until_space_is_freed() {
    let h = Harness::new();
    let Some(disk) = small_disk(&h, "m", 96 << 20) else {
        return;
    };
    let src = h.path("src");
    sample_tree(&src, 40);
    let key = MasterKey::generate();
    let c = key.collection();
    let (store, v) = source_store(&h, "source", &key, &src);
    let source = SlowSource::start(&h, "source", store, Duration::from_millis(40)).await;
    let m = h.start("m", source.addrs(), vec![c]).await;
    // Fill the disk once a few chunks are in.
    let t = Instant::now();
    while m
        .status()
        .await
        .collections
        .first()
        .map_or(0, |c| c.done_bytes)
        < 4 << 20
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the sync never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ballast = disk.path().join("ballast");
    disk.fill(&ballast, 1 << 40);
    m.wait_log("disk full: sync paused").await;
    // Nine seconds full: an exponential backoff tries at most three times.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let pauses = m.log().matches("disk full: sync paused").count();
    assert!(pauses <= 3, "{pauses} attempts in 9 s on a full disk");
    let store = m.node().store().clone();
    assert!(store.current(&c).unwrap().is_none());
    let report = store.verify(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    std::fs::remove_file(&ballast).unwrap();
    tokio::time::timeout(Duration::from_secs(60), m.node().wait_current(c, v))
        .await
        .expect("the sync completes once space is freed");
    let report = store.verify(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    m.export_and_compare(c, &src, h.path("out")).await;
    m.shutdown().await;
    drop(m);
    drop(source);
}

/// Export onto a full disk fails with a clear error, leaves nothing behind
/// at the destination, and leaves the store sound; it works once space is
/// freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_onto_a_full_disk_fails_cleanly() {
    let h = Harness::new();
    let Some(disk) = Tmpfs::mount(&h.path("out-disk"), 24 << 20) else {
        return;
    };
    let src = h.path("src");
    sample_tree(&src, 16);
    let key = MasterKey::generate();
    let (store, _) = source_store(&h, "data", &key, &src);
    let c = key.collection();
    let ballast = disk.path().join("ballast");
    disk.fill(&ballast, 12 << 20);
    let dest = disk.path().join("tree");
    let s = store.clone();
    let d = dest.clone();
    let err = tokio::task::spawn_blocking(move || s.export(&c, None, &d, false))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    let left: Vec<_> = std::fs::read_dir(disk.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("ballast")]);
    assert!(store.verify(false).unwrap().problems.is_empty());
    std::fs::remove_file(&ballast).unwrap();
    let (s, d) = (store.clone(), dest.clone());
    tokio::task::spawn_blocking(move || s.export(&c, None, &d, false))
        .await
        .unwrap()
        .unwrap();
    assert_same_tree(&src, &dest);
}
