//! Full disks: the store, a syncing node and export on a real small tmpfs.

use peermirror::hash::Hash;
use peermirror::store::Store;

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
