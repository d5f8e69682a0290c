//! Full disks: the store, a syncing node and export on a real small tmpfs.

use peermirror::hash::Hash;
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
