//! Many small files: a collection of thousands of files of 512 B to 4 KiB
//! (one chunk each) syncs across three nodes byte-identical, with many
//! chunks per request and have-maps over the manifest's chunk order, and a
//! change to a few files moves only those files' chunks and the few pieces
//! of the manifest that hold their entries (manifests are cut small for
//! transfer).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use peermirror::keys::MasterKey;
use rand::{Rng, RngExt, SeedableRng};

use crate::harness::*;

const FILES: usize = 5000;
const DIRS: usize = 50;

/// `FILES` files of 512 B to 4 KiB in `DIRS` directories, from `seed`.
/// Returns the total bytes.
fn small_tree(dir: &Path, seed: u64) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut total = 0;
    for d in 0..DIRS {
        fs::create_dir_all(dir.join(format!("d{d:03}"))).unwrap();
    }
    for i in 0..FILES {
        let len = rng.random_range(512..=4096);
        let mut body = vec![0u8; len];
        rng.fill_bytes(&mut body);
        fs::write(dir.join(format!("d{:03}/f{i:05}", i % DIRS)), &body).unwrap();
        total += len as u64;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_small_files_sync_across_three_nodes_and_a_change_moves_little() {
    let h = Harness::new();
    let src = h.path("src");
    let total = small_tree(&src, 11);
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    let a = h.start("a", master.addrs().to_vec(), vec![c]).await;
    let mut peers = master.addrs().to_vec();
    peers.extend(a.addrs().iter().cloned());
    let b = h.start("b", peers, vec![c]).await;

    let t = Instant::now();
    let v1 = master.publish(&key, &src).await;
    a.wait_version(c, v1).await;
    b.wait_version(c, v1).await;
    tracing::info!(took = ?t.elapsed(), files = FILES, bytes = total, "both mirrors current");
    a.export_and_compare(c, &src, h.path("out-a1")).await;
    b.export_and_compare(c, &src, h.path("out-b1")).await;
    // How much of it came from the master (not asserted: two mirrors that
    // start together on a fast link both take most of a small tree from
    // the source before their have-map updates reach each other).
    let sent = master.node().bytes_up();
    tracing::info!(copies = sent as f64 / total as f64, "master upload");
    let pieces = |body: &peermirror::announce::Announcement| {
        let list = master.node().store().manifest_chunks(&body.manifest);
        list.unwrap().unwrap()
    };
    let v1_pieces = pieces(&master.node().store().latest(&c).unwrap().unwrap().body);

    // Five files change: each mirror fetches those five chunks and the
    // manifest's changed pieces, nothing else.
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut changed = 0u64;
    for i in [7usize, 1234, 2500, 3777, 4999] {
        let len = rng.random_range(512..=4096);
        let mut body = vec![0u8; len];
        rng.fill_bytes(&mut body);
        fs::write(src.join(format!("d{:03}/f{i:05}", i % DIRS)), &body).unwrap();
        changed += len as u64;
    }
    let (a0, b0) = (a.node().bytes_down(), b.node().bytes_down());
    let v2 = master.publish(&key, &src).await;
    a.wait_version(c, v2).await;
    b.wait_version(c, v2).await;
    b.export_and_compare(c, &src, h.path("out-b2")).await;
    let latest = master.node().store().latest(&c).unwrap().unwrap().body;
    let manifest = latest.manifest_size;
    // The pieces of the new manifest that the old one did not have: one or
    // two (16 KiB on average) around each changed entry, not the whole
    // manifest (the default chunker cut it in one or two pieces, both new).
    let mut new_pieces: Vec<_> = pieces(&latest)
        .into_iter()
        .filter(|p| !v1_pieces.contains(p))
        .collect();
    new_pieces.sort_by_key(|p| p.id.0);
    new_pieces.dedup();
    let pieces_bytes: u64 = new_pieces.iter().map(|p| u64::from(p.len)).sum();
    assert!(
        new_pieces.len() <= 10 && pieces_bytes * 2 <= manifest,
        "{} new pieces of {pieces_bytes} bytes in a {manifest}-byte manifest",
        new_pieces.len()
    );
    // a holds the same manifest and every chunk of it (each verified when
    // it arrived): the same bytes as b's export.
    let current = a.node().store().current(&c).unwrap().unwrap().body;
    assert_eq!(current.manifest, latest.manifest);
    let m = a.node().store().manifest(&current.manifest).unwrap();
    assert!(a.node().store().missing_chunks(&m).unwrap().is_empty());
    for (name, node, before) in [("a", &a, a0), ("b", &b, b0)] {
        let moved = node.node().bytes_down() - before;
        assert!(moved >= changed, "{name} fetched {moved} bytes");
        assert!(
            moved <= changed + pieces_bytes,
            "{name} fetched {moved} bytes for {changed} bytes of files and {pieces_bytes} of the {manifest}-byte manifest"
        );
    }
    for n in [&a, &b, &master] {
        tokio::time::timeout(Duration::from_secs(10), n.shutdown())
            .await
            .unwrap();
    }
}
