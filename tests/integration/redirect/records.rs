//! Mirror records from a hostile peer: a bare network endpoint gossips a
//! record in another node's name and a replay of its own older record; the
//! node keeps neither, and hands out only the genuine newest one.

use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use peermirror::gossip::GossipMessage;
use peermirror::hash::Hash;
use peermirror::keys::{CollectionId, MasterKey};
use peermirror::manifest::ChunkRef;
use peermirror::mirrors::{MirrorRecord, SignedMirrorRecord};
use peermirror::net::ChunkProvider;
use peermirror::node::NodeConfig;
use tracing::Instrument;

use crate::harness::*;

/// Serves nothing.
struct Nothing;

impl ChunkProvider for Nothing {
    fn chunk(&self, _: &Hash) -> Option<bytes::Bytes> {
        None
    }
    fn have(&self, ids: &[Hash]) -> Vec<bool> {
        vec![false; ids.len()]
    }
    fn manifest_chunks(&self, _: &Hash) -> Option<Vec<ChunkRef>> {
        None
    }
    fn latest_announcement(&self, _: &CollectionId) -> Option<Vec<u8>> {
        None
    }
}

fn record(peer: &Keypair, signer: &Keypair, c: CollectionId, seq: u64, version: u64) -> Vec<u8> {
    let now = peermirror::announce::now();
    MirrorRecord {
        peer: peer.public().to_peer_id().to_bytes(),
        url: "http://127.0.0.1:9".into(),
        region: String::new(),
        prefer: vec![],
        capacity_mbps: 0,
        collection: c,
        version,
        seq,
        issued_at: now,
        expires_at: now + 600,
    }
    .sign(signer)
    .unwrap()
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_mirror_records_are_refused() {
    let h = Harness::new();
    let c = MasterKey::generate().collection();
    let node = h.start("node", vec![], vec![c]).await;
    let kp = Keypair::generate_ed25519();
    let (dir, span) = h.node_span("hostile");
    let (client, _events, el) = span
        .in_scope(|| {
            peermirror::net::new(
                kp.clone(),
                NodeConfig::loopback(dir, vec![], vec![]).net,
                std::sync::Arc::new(Nothing),
            )
        })
        .unwrap();
    tokio::spawn(el.run(std::future::pending()).instrument(span));
    client.dial(node.addrs()[0].clone()).await.unwrap();
    let victim = Keypair::generate_ed25519();
    let gossip = |r: Vec<u8>| GossipMessage::Mirror(r).encode();
    // In the victim's name, signed with the hostile key; then its own
    // record, sequence 5; then an older one, sequence 4, naming version 9.
    client
        .publish(c, gossip(record(&victim, &kp, c, 7, 1)))
        .await
        .unwrap();
    node.wait_log("signed by").await;
    client
        .publish(c, gossip(record(&kp, &kp, c, 5, 1)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let held = client.request_mirrors(node.peer_id(), c).await.unwrap();
        if !held.is_empty() {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "the genuine record was never taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client
        .publish(c, gossip(record(&kp, &kp, c, 4, 9)))
        .await
        .unwrap();
    node.wait_log("sequence 4 is not newer than 5").await;
    let held = if held.len() == 1 {
        client.request_mirrors(node.peer_id(), c).await.unwrap()
    } else {
        held
    };
    assert_eq!(held.len(), 1, "only the genuine record is held");
    let r = SignedMirrorRecord::decode(&held[0], peermirror::announce::now()).unwrap();
    assert_eq!(r.body.peer_id(), Some(kp.public().to_peer_id()));
    assert_eq!(
        (r.body.seq, r.body.version),
        (5, 1),
        "the replay replaced it"
    );
}
