//! Finding peers without a shared bootstrap peer: provider records per
//! collection in the DHT, and the peers a node learned kept across restarts.

use std::time::{Duration, Instant};

use peermirror::keys::MasterKey;

use crate::harness::*;

/// Waits until `node` is connected to `peer`.
async fn wait_connected(node: &TestNode, peer: libp2p::PeerId, what: &str) {
    let start = Instant::now();
    loop {
        let peers = node.node().client().peers().await;
        if peers.iter().any(|p| p.peer_id == peer) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: {} never connected to {peer}",
            node.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_meet_through_provider_records_and_remember_each_other() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 4);
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    // A is a DHT node only: it follows nothing and never holds the data.
    let a = h.start("a", master.addrs().to_vec(), vec![]).await;
    let aaddr = a.addrs().to_vec();
    let v = master.publish(&key, &src).await;

    // B knows only A: it finds the master as a provider of the collection.
    let b = h.start("b", aaddr.clone(), vec![c]).await;
    b.wait_version(c, v).await;
    master.shutdown().await;

    // C knows only A, and the master is gone: only B can give it the data.
    let c_node = h.start("c", aaddr.clone(), vec![c]).await;
    c_node.wait_version(c, v).await;
    c_node.export_and_compare(c, &src, h.path("out-c")).await;
    assert!(b.node().bytes_up() > 0, "B served nothing");
    assert!(
        c_node.node().bytes_down() > 0,
        "C received nothing from peers"
    );
    // Its lookup named B as a provider.
    let b_id = b.peer_id().to_string();
    let start = Instant::now();
    while !c_node
        .log()
        .lines()
        .any(|l| l.contains("providers found") && l.contains(&b_id))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no lookup of C named B:\n{}",
            c_node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Restarted without any peer configured, C dials the peers it knew.
    c_node.shutdown().await;
    drop(c_node);
    let again = h.start("c", vec![], vec![c]).await;
    wait_connected(&again, b.peer_id(), "after a restart").await;
    wait_connected(&again, a.peer_id(), "after a restart").await;
    let status = again.status().await;
    let node = status.node.expect("a running node's status");
    assert!(node.known_peers >= 2, "{node:?}");
    assert!(node.peers.iter().all(|p| p.path == "direct"), "{node:?}");
    for n in [again, b, a] {
        n.shutdown().await;
    }
}
