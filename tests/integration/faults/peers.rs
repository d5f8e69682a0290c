//! Peers that come and go: a mirror started before its master, a master
//! restarted under running mirrors, a master stopped mid-sync.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use peermirror::keys::CollectionId;

use crate::harness::*;

/// How long a mirror may take to reach a version here: configured peers
/// are dialed again within seconds.
const CONVERGE: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `node`'s address on `port`, with its peer id.
fn addr_on(node: &TestNode, port: u16) -> Multiaddr {
    node.addrs()
        .iter()
        .find(|a| a.iter().any(|p| p == Protocol::Tcp(port)))
        .unwrap_or_else(|| panic!("{} does not listen on {port}", node.name()))
        .clone()
}

async fn wait_version(m: &TestNode, c: CollectionId, v: u64) {
    tokio::time::timeout(CONVERGE, m.node().wait_current(c, v))
        .await
        .unwrap_or_else(|_| panic!("{} did not reach version {v}", m.name()));
}

/// A mirror whose master is down when it starts syncs once the master is
/// up, and a master restarted under it (a new connection to be made)
/// brings it the next version: configured peers are dialed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_started_before_its_master_and_a_restarted_master_converge() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let c: CollectionId = id.parse().unwrap();
    let src = h.path("src");
    sample_tree(&src, 4);
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut master = h.binary("master", &["--listen", &listen]);
    let maddr = addr_on(&master, port);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    master.stop();

    // The mirror starts while its only peer is down.
    let m = h.start("m", vec![maddr.clone()], vec![c]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(m.node().store().current(&c).unwrap().is_none());
    master.restart();
    assert_eq!(addr_on(&master, port), maddr);
    wait_version(&m, c, 1).await;
    m.export_and_compare(c, &src, h.path("out1")).await;

    // The master restarts under the running mirror, then publishes.
    master.restart();
    std::fs::write(src.join("new.txt"), b"version 2").unwrap();
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    wait_version(&m, c, 2).await;
    m.export_and_compare(c, &src, h.path("out2")).await;
    m.shutdown().await;
    master.stop();
}
