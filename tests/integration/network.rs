//! Multi-node tests: real nodes on 127.0.0.1 in one process, real bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use peermirror::keys::{CollectionId, MasterKey};
use peermirror::node::{Node, NodeConfig};
use peermirror::publish::PublishOptions;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(180);

async fn start(
    data: PathBuf,
    peers: Vec<Multiaddr>,
    follow: Vec<CollectionId>,
) -> (Arc<Node>, Vec<Multiaddr>) {
    let n = Node::start(NodeConfig::loopback(data, peers, follow))
        .await
        .unwrap();
    let addrs = n.listen_addrs().await;
    assert!(!addrs.is_empty());
    (n, addrs)
}

async fn wait_version(n: &Node, c: CollectionId, v: u64) {
    tokio::time::timeout(WAIT, n.wait_current(c, v))
        .await
        .unwrap_or_else(|_| panic!("node {} did not reach version {v}", n.peer_id()))
        .unwrap();
}

async fn export_and_compare(n: &Arc<Node>, c: CollectionId, src: &Path, dest: PathBuf) {
    let store = n.store().clone();
    let d = dest.clone();
    tokio::task::spawn_blocking(move || store.export(&c, None, &d, true))
        .await
        .unwrap()
        .unwrap();
    assert_same_tree(src, &dest);
}

async fn publish(master: &Node, key: &MasterKey, src: &Path) -> u64 {
    let key = key.clone();
    let r = master
        .publish(key, src.to_path_buf(), PublishOptions::default())
        .await
        .unwrap();
    r.announcement.body.version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_three_mirrors_converge_and_updates_move_little() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src, 64);
    let key = MasterKey::generate();
    let c = key.collection();
    let (master, maddr) = start(env.path("master"), vec![], vec![]).await;
    let (m1, a1) = start(env.path("m1"), maddr.clone(), vec![c]).await;
    let (m2, _) = start(env.path("m2"), maddr.clone(), vec![c]).await;
    // m3 knows only m1, never the master.
    let (m3, _) = start(env.path("m3"), a1.clone(), vec![c]).await;

    let v1 = publish(&master, &key, &src).await;
    for m in [&m1, &m2, &m3] {
        wait_version(m, c, v1).await;
    }
    for (i, m) in [&m1, &m2, &m3].into_iter().enumerate() {
        export_and_compare(m, c, &src, env.path(&format!("out{i}"))).await;
    }
    let tree_bytes = 64u64 << 20;

    // Version 2: overwrite 1 MiB in the middle of the 64 MiB file.
    let before: Vec<u64> = [&m1, &m2, &m3].iter().map(|m| m.bytes_down()).collect();
    let mut big = fs::read(src.join("big.img")).unwrap();
    big[32 << 20..33 << 20].copy_from_slice(&random_bytes(1 << 20, 77));
    fs::write(src.join("big.img"), &big).unwrap();
    let v2 = publish(&master, &key, &src).await;
    assert_eq!(v2, v1 + 1);
    for m in [&m1, &m2, &m3] {
        wait_version(m, c, v2).await;
    }
    for (i, m) in [&m1, &m2, &m3].into_iter().enumerate() {
        let moved = m.bytes_down() - before[i];
        assert!(
            moved < tree_bytes / 10,
            "mirror {i} moved {moved} bytes for a 1 MiB change"
        );
        export_and_compare(m, c, &src, env.path(&format!("v2-out{i}"))).await;
    }
    for n in [master, m1, m2, m3] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_mirror_catches_up_and_survives_the_master_leaving() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src, 16);
    let key = MasterKey::generate();
    let c = key.collection();
    let (master, maddr) = start(env.path("master"), vec![], vec![]).await;
    let v = publish(&master, &key, &src).await;

    // Started after the publish: it must ask its peers for the latest version.
    let (a, aaddr) = start(env.path("a"), maddr.clone(), vec![c]).await;
    wait_version(&a, c, v).await;
    export_and_compare(&a, c, &src, env.path("out-a")).await;

    // The master leaves; the rest complete from the mirror.
    master.shutdown().await;
    drop(master);
    let (b, _) = start(env.path("b"), aaddr.clone(), vec![c]).await;
    let (d, _) = start(env.path("d"), aaddr.clone(), vec![c]).await;
    wait_version(&b, c, v).await;
    wait_version(&d, c, v).await;
    export_and_compare(&b, c, &src, env.path("out-b")).await;
    export_and_compare(&d, c, &src, env.path("out-d")).await;
    assert!(a.bytes_up() >= 16 << 20, "mirror a served the data");
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
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src, 8);
    let key = MasterKey::generate();
    let c = key.collection();

    // The liar runs first so the mirror knows it before the honest master.
    let kp = libp2p::identity::Keypair::generate_ed25519();
    let lies = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (liar, _events, lp) = peermirror::net::new(
        kp,
        NodeConfig::loopback(env.path("liar"), vec![], vec![]).net,
        Arc::new(Liar(lies.clone())),
    )
    .unwrap();
    let liar_task = tokio::spawn(lp.run(std::future::pending()));
    let laddr = liar.listen_addrs().await;

    let (master, maddr) = start(env.path("master"), vec![], vec![]).await;
    let mut peers = laddr.clone();
    peers.extend(maddr.clone());
    let (m, _) = start(env.path("m"), peers, vec![c]).await;
    let v = publish(&master, &key, &src).await;
    wait_version(&m, c, v).await;
    export_and_compare(&m, c, &src, env.path("out")).await;
    // The liar was asked (and banned after its first answer), yet every byte is right.
    assert!(lies.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let report = m.store().verify(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // A forged version 9 (signed by another key) and a replay of version 1
    // change nothing.
    let other = MasterKey::generate();
    let mut forged = peermirror::announce::Announcement {
        version: 9,
        collection: other.collection(),
        ..m.store().current(&c).unwrap().unwrap().body
    }
    .sign(&other);
    forged.body.collection = c;
    liar.subscribe(c).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msg = peermirror::gossip::GossipMessage::announce(&forged).encode();
    liar.publish(c, msg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(m.store().latest(&c).unwrap().unwrap().body.version, v);
    let err = m.store().accept_announcement(&forged).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    let replay = m.store().current(&c).unwrap().unwrap();
    assert!(m.store().accept_announcement(&replay).is_err());

    liar_task.abort();
    master.shutdown().await;
    m.shutdown().await;
}
