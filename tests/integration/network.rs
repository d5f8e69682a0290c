//! Multi-node tests: real nodes on 127.0.0.1 in one process, real bytes.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use peermirror::keys::MasterKey;
use peermirror::node::NodeConfig;
use tracing::Instrument;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_three_mirrors_converge_and_updates_move_little() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 64);
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    let maddr = master.addrs().to_vec();
    let m1 = h.start("m1", maddr.clone(), vec![c]).await;
    let a1 = m1.addrs().to_vec();
    let m2 = h.start("m2", maddr.clone(), vec![c]).await;
    // m3 knows only m1, never the master.
    let m3 = h.start("m3", a1.clone(), vec![c]).await;

    let v1 = master.publish(&key, &src).await;
    for m in [&m1, &m2, &m3] {
        m.wait_version(c, v1).await;
    }
    for (i, m) in [&m1, &m2, &m3].into_iter().enumerate() {
        m.export_and_compare(c, &src, h.path(&format!("out{i}")))
            .await;
    }
    let tree_bytes = 64u64 << 20;

    // Version 2: overwrite 1 MiB in the middle of the 64 MiB file.
    let before: Vec<u64> = [&m1, &m2, &m3]
        .iter()
        .map(|m| m.node().bytes_down())
        .collect();
    let mut big = fs::read(src.join("big.img")).unwrap();
    big[32 << 20..33 << 20].copy_from_slice(&random_bytes(1 << 20, 77));
    fs::write(src.join("big.img"), &big).unwrap();
    let v2 = master.publish(&key, &src).await;
    assert_eq!(v2, v1 + 1);
    for m in [&m1, &m2, &m3] {
        m.wait_version(c, v2).await;
    }
    for (i, m) in [&m1, &m2, &m3].into_iter().enumerate() {
        let moved = m.node().bytes_down() - before[i];
        assert!(
            moved < tree_bytes / 10,
            "mirror {i} moved {moved} bytes for a 1 MiB change"
        );
        m.export_and_compare(c, &src, h.path(&format!("v2-out{i}")))
            .await;
    }
    for n in [master, m1, m2, m3] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_mirror_catches_up_and_survives_the_master_leaving() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 16);
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    let maddr = master.addrs().to_vec();
    let v = master.publish(&key, &src).await;

    // Started after the publish: it must ask its peers for the latest version.
    let a = h.start("a", maddr.clone(), vec![c]).await;
    let aaddr = a.addrs().to_vec();
    a.wait_version(c, v).await;
    a.export_and_compare(c, &src, h.path("out-a")).await;

    // The master leaves; the rest complete from the mirror.
    master.shutdown().await;
    drop(master);
    let b = h.start("b", aaddr.clone(), vec![c]).await;
    let d = h.start("d", aaddr.clone(), vec![c]).await;
    b.wait_version(c, v).await;
    d.wait_version(c, v).await;
    b.export_and_compare(c, &src, h.path("out-b")).await;
    d.export_and_compare(c, &src, h.path("out-d")).await;
    assert!(a.node().bytes_up() >= 16 << 20, "mirror a served the data");
    for n in [a, b, d] {
        n.shutdown().await;
    }
}

/// A peer that claims every chunk and answers with garbage.
struct Liar(Arc<std::sync::atomic::AtomicU64>);

impl peermirror::net::ChunkProvider for Liar {
    fn chunk(&self, _id: &peermirror::hash::Hash) -> Option<bytes::Bytes> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(bytes::Bytes::from(vec![0xAB; 1 << 20]))
    }
    fn have(&self, ids: &[peermirror::hash::Hash]) -> Vec<bool> {
        vec![true; ids.len()]
    }
    fn manifest_chunks(
        &self,
        _id: &peermirror::hash::Hash,
    ) -> Option<Vec<peermirror::manifest::ChunkRef>> {
        None
    }
    fn latest_announcement(&self, _c: &peermirror::keys::CollectionId) -> Option<Vec<u8>> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_and_forged_announcements_are_refused() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 8);
    let key = MasterKey::generate();
    let c = key.collection();

    // The liar runs first so the mirror knows it before the honest master.
    // It is a bare network endpoint, not a node, logging like one.
    let kp = libp2p::identity::Keypair::generate_ed25519();
    let lies = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (liar_dir, liar_span) = h.node_span("liar");
    let (liar, _events, lp) = liar_span
        .in_scope(|| {
            peermirror::net::new(
                kp,
                NodeConfig::loopback(liar_dir, vec![], vec![]).net,
                Arc::new(Liar(lies.clone())),
            )
        })
        .unwrap();
    let liar_task = tokio::spawn(lp.run(std::future::pending()).instrument(liar_span));
    let laddr = liar.listen_addrs().await;

    let master = h.start("master", vec![], vec![]).await;
    let maddr = master.addrs().to_vec();
    let mut peers = laddr.clone();
    peers.extend(maddr.clone());
    let m = h.start("m", peers, vec![c]).await;
    let v = master.publish(&key, &src).await;
    m.wait_version(c, v).await;
    m.export_and_compare(c, &src, h.path("out")).await;
    // The liar was asked (and banned after its first answer), yet every byte is right.
    assert!(lies.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let report = m.node().store().verify(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // A forged version 9 (signed by another key) and a replay of version 1
    // change nothing.
    let other = MasterKey::generate();
    let mut forged = peermirror::announce::Announcement {
        version: 9,
        collection: other.collection(),
        ..m.node().store().current(&c).unwrap().unwrap().body
    }
    .sign(&other);
    forged.body.collection = c;
    liar.subscribe(c).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msg = peermirror::gossip::GossipMessage::announce(&forged).encode();
    liar.publish(c, msg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let store = m.node().store().clone();
    assert_eq!(store.latest(&c).unwrap().unwrap().body.version, v);
    let a = m.node().admit_announcement(forged.encode()).await;
    assert!(
        matches!(a, peermirror::node::Admission::Reject(ref why) if why.to_string().contains("signature")),
        "{a:?}"
    );
    let replay = store.current(&c).unwrap().unwrap();
    let a = m.node().admit_announcement(replay.encode()).await;
    assert!(matches!(a, peermirror::node::Admission::Ignore(_)), "{a:?}");
    assert_eq!(store.latest(&c).unwrap().unwrap().body.version, v);

    liar_task.abort();
    master.shutdown().await;
    m.shutdown().await;
}
