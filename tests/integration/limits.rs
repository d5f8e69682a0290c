//! Hostile peers against the network limits: each test runs a real peer
//! that speaks the wire protocol and misbehaves, and checks that the node
//! keeps its bounds while honest peers are still served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::{identity::Keypair, Multiaddr, PeerId};
use peermirror::config::LimitsSettings;
use peermirror::gossip::GossipMessage;
use peermirror::hash::Hash;
use peermirror::keys::{CollectionId, MasterKey};
use peermirror::manifest::ChunkRef;
use peermirror::net::{self, Client, Event, Verdict};
use peermirror::node::{Node, NodeConfig};
use peermirror::publish::PublishOptions;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::harness::*;

/// Serves nothing.
struct Empty;

impl net::ChunkProvider for Empty {
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

/// A bare network endpoint (no store), logging like a node: the hostile
/// peers, and plain honest clients to compare them with. Gossip it
/// receives is ignored.
async fn endpoint(h: &Harness, name: &str) -> (Client, JoinHandle<()>) {
    let (client, task, _) = endpoint_counting(h, name).await;
    (client, task)
}

/// [`endpoint`], also counting the gossip messages it receives.
async fn endpoint_counting(
    h: &Harness,
    name: &str,
) -> (Client, JoinHandle<()>, Arc<std::sync::atomic::AtomicU64>) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = count.clone();
    let (dir, span) = h.node_span(name);
    let mut cfg = NodeConfig::loopback(dir, vec![], vec![]).net;
    cfg.kademlia = false;
    let (client, mut events, lp) = span
        .in_scope(|| net::new(Keypair::generate_ed25519(), cfg, Arc::new(Empty)))
        .unwrap();
    let c = client.clone();
    let task = tokio::spawn(
        async move {
            let drain = async move {
                while let Some(ev) = events.recv().await {
                    if let Event::Gossip { msg_id, source, .. } = ev {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        c.report(msg_id, source, Verdict::Ignore);
                    }
                }
            };
            tokio::select! {
                _ = lp.run(std::future::pending()) => {}
                _ = drain => {}
            }
        }
        .instrument(span),
    );
    (client, task, count)
}

/// An in-process node with the given limits; returns it and its addresses.
async fn start_with(
    h: &Harness,
    name: &str,
    peers: Vec<Multiaddr>,
    follow: Vec<CollectionId>,
    limits: LimitsSettings,
) -> (Arc<Node>, Vec<Multiaddr>) {
    let (dir, _) = h.node_span(name);
    let mut cfg = NodeConfig::loopback(dir, peers, follow);
    cfg.limits = limits;
    cfg.net.limits = peermirror::node::net_limits(&cfg.limits);
    let node = Node::start(cfg, std::future::pending()).await.unwrap();
    let addrs = node.listen_addrs().await;
    (node, addrs)
}

/// The distinct chunks of `c`'s current version on `node`, largest first.
fn chunks_of(node: &Node, c: CollectionId) -> Vec<ChunkRef> {
    let store = node.store();
    let cur = store.current(&c).unwrap().unwrap();
    let m = store.manifest(&cur.body.manifest).unwrap();
    let mut all: Vec<ChunkRef> = m.files().flat_map(|(_, _, _, ch)| ch.to_vec()).collect();
    all.sort_by_key(|c| (std::cmp::Reverse(c.len), c.id.0));
    all.dedup_by_key(|c| c.id);
    all
}

/// Opens a chunk stream to `peer`, asks for `id` (a `Get` of one id), and
/// never reads.
async fn stalled_request(client: &Client, peer: PeerId, id: Hash) -> Option<net::Stream> {
    let mut s = client.open_chunk_stream(peer).await.ok()?;
    let mut frame = vec![0x01, 0, 0, 0, 1];
    frame.extend_from_slice(&id.0);
    s.write_all(&frame).await.ok()?;
    s.flush().await.ok()?;
    Some(s)
}

/// Polls `cond` every 100 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_pin_bounded_memory_and_an_honest_mirror_still_syncs() {
    const BUDGET: u64 = 8 << 20;
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 32);
    let key = MasterKey::generate();
    let c = key.collection();
    let limits = LimitsSettings {
        max_inbound_streams_per_peer: 32,
        max_send_buffer_bytes_per_peer: BUDGET,
        send_timeout_secs: 4,
        ..LimitsSettings::default()
    };
    let (seeder, saddr) = start_with(&h, "seeder", vec![], vec![], limits).await;
    let seeder_id = seeder.peer_id();
    let v = seeder
        .publish(key.clone(), src.clone(), PublishOptions::default())
        .await
        .unwrap()
        .announcement
        .body
        .version;
    let chunks = chunks_of(&seeder, c);
    assert!(chunks.len() >= 16, "{} chunks", chunks.len());
    let stats = || seeder.client().server_stats();

    // A peer opens a hundred streams, asks for the largest chunks and never
    // reads, and keeps doing so.
    let (hostile, hostile_task) = endpoint(&h, "hostile").await;
    hostile.dial(saddr[0].clone()).await.unwrap();
    let attack = {
        let hostile = hostile.clone();
        let ids: Vec<Hash> = chunks.iter().map(|c| c.id).collect();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for round in 0usize.. {
                for i in 0..100 {
                    let id = ids[(round * 100 + i) % ids.len()];
                    held.extend(stalled_request(&hostile, seeder_id, id).await);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || stats().streams_refused >= 50).await,
        "{:?}",
        stats()
    );
    let s = stats();
    assert!(s.open_streams <= 32, "streams per peer bounded: {s:?}");
    assert!(s.buffered_bytes > 0, "the attack pins something: {s:?}");
    assert!(
        s.peak_buffered_bytes <= BUDGET + (1 << 16),
        "one peer pinned more than its budget: {s:?}"
    );

    // Meanwhile an honest mirror syncs from the seeder alone.
    let (mirror, _) = start_with(
        &h,
        "mirror",
        saddr.clone(),
        vec![c],
        LimitsSettings::default(),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(120), mirror.wait_current(c, v))
        .await
        .expect("the honest mirror synced during the attack")
        .unwrap();
    let out = h.path("out");
    mirror.store().export(&c, None, &out, true).unwrap();
    assert_same_tree(&src, &out);
    let s = stats();
    assert!(
        s.peak_buffered_bytes <= 2 * BUDGET + (1 << 16),
        "two peers, two budgets at most: {s:?}"
    );

    // The attack stops opening streams; those it holds time out and give
    // back everything they pinned.
    attack.abort();
    let _ = attack.await;
    let mut held = Vec::new();
    for ch in chunks.iter().take(8) {
        held.extend(stalled_request(&hostile, seeder_id, ch.id).await);
    }
    assert!(
        eventually(Duration::from_secs(5), || stats().buffered_bytes > 0).await,
        "{:?}",
        stats()
    );
    let timeouts = stats().send_timeouts;
    assert!(
        eventually(Duration::from_secs(15), || stats().buffered_bytes == 0).await,
        "stalled replies are dropped after the send timeout: {:?}",
        stats()
    );
    assert!(stats().send_timeouts > timeouts, "{:?}", stats());
    drop(held);
    hostile_task.abort();
    mirror.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_the_extra_connections() {
    let h = Harness::new();
    for (name, limits, cap) in [
        (
            "per-ip",
            LimitsSettings {
                max_connections_per_ip: 3,
                ..LimitsSettings::default()
            },
            3,
        ),
        (
            "total",
            LimitsSettings {
                max_connections: 4,
                max_connections_per_ip: 100,
                ..LimitsSettings::default()
            },
            4,
        ),
    ] {
        let (node, addrs) = start_with(&h, name, vec![], vec![], limits).await;
        let mut clients = Vec::new();
        for i in 0..7 {
            let (client, task) = endpoint(&h, &format!("{name}-client{i}")).await;
            // Refused connections may fail the dial or close right after.
            let _ = client.dial(addrs[0].clone()).await;
            clients.push((client, task));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected = node.client().peers().await.len();
        assert_eq!(connected, cap, "{name}: the node keeps {cap} peers");
        let mut still = 0;
        for (client, _) in &clients {
            if client
                .peers()
                .await
                .iter()
                .any(|p| p.peer_id == node.peer_id())
            {
                still += 1;
            }
        }
        assert_eq!(still, cap, "{name}: the others were refused");
        // A refused peer is served again once a slot frees up.
        for (_, task) in clients.drain(..) {
            task.abort();
        }
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_rate_is_refused_while_others_are_served() {
    let h = Harness::new();
    let limits = LimitsSettings {
        chunk_requests_per_sec: 5,
        latest_requests_per_sec: 2,
        ..LimitsSettings::default()
    };
    let (node, addrs) = start_with(&h, "node", vec![], vec![], limits).await;
    let peer = node.peer_id();
    let (greedy, greedy_task) = endpoint(&h, "greedy").await;
    let (polite, polite_task) = endpoint(&h, "polite").await;
    greedy.dial(addrs[0].clone()).await.unwrap();
    polite.dial(addrs[0].clone()).await.unwrap();
    let c = MasterKey::generate().collection();

    // 60 chunk-protocol requests at once: the burst (10) and a little
    // refill are served, the rest refused.
    let results =
        futures::future::join_all((0..60).map(|_| greedy.fetch_have(peer, vec![Hash::of(b"x")])))
            .await;
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        (1..=20).contains(&served),
        "{served} of 60 served: {:?}",
        node.client().server_stats()
    );
    assert!(node.client().server_stats().requests_refused > 0);
    for _ in 0..8 {
        polite
            .fetch_have(peer, vec![Hash::of(b"x")])
            .await
            .expect("another peer is served");
    }

    // Same for latest-announcement requests, one after another so only the
    // rate can stop them.
    let mut served = 0;
    for _ in 0..20 {
        served += usize::from(greedy.request_latest(peer, c).await.is_ok());
    }
    assert!(
        (1..=8).contains(&served),
        "{served} of 20 latest requests served"
    );
    assert!(node.client().server_stats().latest_refused > 0);
    for _ in 0..3 {
        polite
            .request_latest(peer, c)
            .await
            .expect("another peer is served");
    }
    greedy_task.abort();
    polite_task.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_have_flood_is_not_forwarded_and_does_not_delay_an_announcement() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 1);
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    let mirror = h.start("mirror", master.addrs().to_vec(), vec![c]).await;

    // An observer behind the mirror counts the gossip the mirror forwards.
    let (observer, observer_task, forwarded) = endpoint_counting(&h, "observer").await;
    observer.dial(mirror.addrs()[0].clone()).await.unwrap();
    observer.subscribe(c).await.unwrap();
    // A peer subscribed to the collection floods the mirror with distinct
    // Have notes, as fast as it can, from several tasks.
    let (flooder, flooder_task) = endpoint(&h, "flooder").await;
    flooder.dial(mirror.addrs()[0].clone()).await.unwrap();
    flooder.subscribe(c).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let me = flooder.local_peer_id().to_bytes();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let floods: Vec<_> = (0..4u64)
        .map(|k| {
            let (flooder, me, sent) = (flooder.clone(), me.clone(), sent.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let note = GossipMessage::Have {
                        version: i * 4 + k + 1,
                        holder: me.clone(),
                    };
                    if flooder.publish(c, note.encode()).await.is_ok() {
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let start = Instant::now();
    let v = master.publish(&key, &src).await;
    let store = mirror.node().store().clone();
    let heard = eventually(Duration::from_secs(10), || {
        store
            .latest(&c)
            .ok()
            .flatten()
            .is_some_and(|a| a.body.version >= v)
    })
    .await;
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for f in floods {
        f.abort();
    }
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    let forwarded = forwarded.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent >= 1000, "the flood sent only {sent} notes");
    assert!(heard, "announcement not heard within 10 s of a flood");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The announcement, and at most one note per version the mirror holds.
    assert!(
        forwarded <= 3,
        "the mirror forwarded {forwarded} of {sent} flood messages"
    );
    flooder_task.abort();
    observer_task.abort();
    mirror.shutdown().await;
    master.shutdown().await;
}

/// Serves nothing, and answers latest-announcement requests only after
/// longer than the requester waits: a silent peer.
struct Silent;

impl net::ChunkProvider for Silent {
    fn chunk(&self, id: &Hash) -> Option<bytes::Bytes> {
        Empty.chunk(id)
    }
    fn have(&self, ids: &[Hash]) -> Vec<bool> {
        Empty.have(ids)
    }
    fn manifest_chunks(&self, id: &Hash) -> Option<Vec<ChunkRef>> {
        Empty.manifest_chunks(id)
    }
    fn latest_announcement(&self, _: &CollectionId) -> Option<Vec<u8>> {
        std::thread::sleep(Duration::from_secs(15));
        None
    }
}

/// Three silent peers cost a round of latest requests one timeout (10 s by
/// default), not one each: the peers are asked at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_cost_a_latest_round_one_timeout_not_one_each() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 1);
    let key = MasterKey::generate();
    let c = key.collection();
    let mut peers: Vec<Multiaddr> = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (dir, span) = h.node_span(&format!("silent{i}"));
        let (client, _events, lp) = span
            .in_scope(|| {
                net::new(
                    Keypair::generate_ed25519(),
                    NodeConfig::loopback(dir, vec![], vec![]).net,
                    Arc::new(Silent),
                )
            })
            .unwrap();
        tasks.push(tokio::spawn(
            lp.run(std::future::pending()).instrument(span),
        ));
        peers.extend(client.listen_addrs().await);
        std::mem::forget(client);
    }
    let master = h.start("master", vec![], vec![]).await;
    let v = master.publish(&key, &src).await;
    peers.extend(master.addrs().to_vec());
    let m = h.start("m", peers, vec![]).await;
    // Wait until all four peers are connected.
    let t = Instant::now();
    while m.node().client().peers().await.len() < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "peers never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.node().follow(c).await.unwrap();
    let t = Instant::now();
    let got = m.node().refresh_latest(c).await;
    let took = t.elapsed();
    assert_eq!(got, Some(v));
    assert!(
        took < Duration::from_secs(20),
        "a round with three silent peers took {took:?}"
    );
    for t in tasks {
        t.abort();
    }
}
