//! Multi-node tests of the network layer, on 127.0.0.1 only.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use libp2p::identity::Keypair;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::*;
use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::ChunkRef;

/// A HashMap-backed provider.
#[derive(Default)]
struct MapProvider {
    chunks: HashMap<Hash, Bytes>,
    latest: HashMap<CollectionId, Vec<u8>>,
    manifests: HashMap<Hash, Vec<ChunkRef>>,
    maps: HashMap<Hash, HaveMap>,
}

impl ChunkProvider for MapProvider {
    fn chunk(&self, id: &Hash) -> Option<Bytes> {
        self.chunks.get(id).cloned()
    }
    fn have(&self, ids: &[Hash]) -> Vec<bool> {
        ids.iter().map(|id| self.chunks.contains_key(id)).collect()
    }
    fn latest_announcement(&self, collection: &CollectionId) -> Option<Vec<u8>> {
        self.latest.get(collection).cloned()
    }
    fn manifest_chunks(&self, id: &Hash) -> Option<Vec<ChunkRef>> {
        self.manifests.get(id).cloned()
    }
    fn have_map(&self, id: &Hash) -> Option<HaveMap> {
        self.maps.get(id).cloned()
    }
}

/// A running node; dropping it stops the event loop.
struct Node {
    client: Client,
    events: mpsc::Receiver<Event>,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<()>,
}

fn tcp_addr() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

fn quic_addr() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

fn config(listen: Vec<Multiaddr>, kademlia: bool) -> NetConfig {
    NetConfig {
        listen,
        bootstrap: vec![],
        mdns: false,
        kademlia,
        idle_timeout: Duration::from_secs(60),
        limits: super::NetLimits::default(),
        nat: NatConfig::default(),
        known_peers: Vec::new(),
        low_priority_gossip: super::no_low_priority_gossip,
    }
}

fn start(cfg: NetConfig, provider: MapProvider) -> Node {
    let (client, events, event_loop) =
        new(Keypair::generate_ed25519(), cfg, Arc::new(provider)).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(event_loop.run(async move {
        let _ = stopped.await;
    }));
    Node {
        client,
        events,
        _stop: stop,
        _task: task,
    }
}

/// Dials the first listen address of `to` from `from`.
async fn connect(from: &Node, to: &Node) {
    let addrs = to.client.listen_addrs().await;
    assert!(!addrs.is_empty(), "no listen address");
    for a in &addrs {
        assert!(a.to_string().starts_with("/ip4/127.0.0.1/"), "{a}");
    }
    from.client.dial(addrs[0].clone()).await.unwrap();
}

/// Next gossip event (other events skipped), or `None` after `wait`.
async fn next_gossip(
    events: &mut mpsc::Receiver<Event>,
    wait: Duration,
) -> Option<(MessageId, PeerId, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Gossip {
                msg_id,
                source,
                data,
                ..
            })) => return Some((msg_id, source, data)),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

fn id(n: u8) -> Hash {
    Hash([n; 32])
}

fn col(n: u8) -> CollectionId {
    CollectionId([n; 32])
}

fn chunk_ref(n: u8, len: u32) -> ChunkRef {
    ChunkRef { id: id(n), len }
}

/// Node A serves one 1 MiB chunk and an announcement; B fetches over the
/// given transport.
async fn fetch_roundtrip(listen: Multiaddr) {
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut provider = MapProvider::default();
    provider.chunks.insert(id(1), Bytes::from(body.clone()));
    provider.chunks.insert(id(3), Bytes::from(vec![3; 10]));
    provider
        .latest
        .insert(col(9), b"signed announcement".to_vec());
    provider
        .manifests
        .insert(id(5), vec![chunk_ref(1, 1 << 20), chunk_ref(3, 10)]);
    let a = start(config(vec![listen.clone()], true), provider);
    let mut b = start(config(vec![listen], true), MapProvider::default());
    connect(&b, &a).await;
    let pa = a.client.local_peer_id();

    assert_eq!(b.client.fetch_chunk(pa, id(1)).await.unwrap(), body);
    assert!(matches!(
        b.client.fetch_chunk(pa, id(2)).await,
        Err(NetError::NotFound)
    ));
    // The stream is still usable after NotFound.
    assert_eq!(b.client.fetch_chunk(pa, id(3)).await.unwrap(), vec![3; 10]);
    // Many ids in one request, answered in order as they come.
    let mut batch = b
        .client
        .fetch_chunks(pa, vec![id(3), id(2), id(1), id(3)])
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(r) = batch.next().await {
        got.push(match r.unwrap() {
            ChunkAnswer::Found(b) => Some(b.len()),
            _ => None,
        });
    }
    assert_eq!(got, vec![Some(10), None, Some(body.len()), Some(10)]);
    assert!(matches!(
        b.client.fetch_chunks(pa, vec![]).await,
        Err(NetError::TooLarge(_))
    ));
    assert_eq!(
        b.client
            .fetch_have(pa, vec![id(1), id(2), id(3), id(4)])
            .await
            .unwrap(),
        vec![true, false, true, false]
    );
    assert_eq!(
        b.client.fetch_have(pa, vec![]).await.unwrap(),
        Vec::<bool>::new()
    );
    assert!(matches!(
        b.client.fetch_have(pa, vec![id(0); MAX_HAVE_IDS + 1]).await,
        Err(NetError::TooLarge(_))
    ));
    assert_eq!(
        b.client.request_latest(pa, col(9)).await.unwrap(),
        Some(b"signed announcement".to_vec())
    );
    assert_eq!(b.client.request_latest(pa, col(8)).await.unwrap(), None);
    assert_eq!(
        b.client.fetch_manifest_chunks(pa, id(5)).await.unwrap(),
        vec![chunk_ref(1, 1 << 20), chunk_ref(3, 10)]
    );
    assert!(matches!(
        b.client.fetch_manifest_chunks(pa, id(6)).await,
        Err(NetError::NotFound)
    ));

    let peers = b.client.peers().await;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer_id, pa);
    assert!(!peers[0].addrs.is_empty());
    let mut connected = false;
    while let Ok(ev) = b.events.try_recv() {
        connected |= matches!(ev, Event::PeerConnected(p) if p == pa);
    }
    assert!(connected, "PeerConnected event missing");
}

/// Have-maps: from the provider for a manifest no download has open, from
/// the board (with pushed updates, then `All`) for one that is being
/// downloaded, `NotFound` for one the peer lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn have_map_subscriptions() {
    let mut provider = MapProvider::default();
    let mut held = Bitmap::new(10);
    held.set(3);
    provider.maps.insert(id(7), HaveMap::Some(held.clone()));
    provider.maps.insert(id(8), HaveMap::All(10));
    let a = start(config(vec![tcp_addr()], false), provider);
    let b = start(config(vec![tcp_addr()], false), MapProvider::default());
    connect(&b, &a).await;
    let pa = a.client.local_peer_id();

    let mut s = b.client.subscribe_have(pa, id(7), 10).await.unwrap();
    assert_eq!(s.next().await.unwrap(), Some(HaveUpdate::Map(held.clone())));
    assert_eq!(s.next().await.unwrap(), None, "no download updates it");
    let mut s = b.client.subscribe_have(pa, id(8), 10).await.unwrap();
    assert_eq!(s.next().await.unwrap(), Some(HaveUpdate::All));
    assert_eq!(s.next().await.unwrap(), None);
    assert!(matches!(
        b.client.subscribe_have(pa, id(9), 10).await,
        Err(NetError::NotFound)
    ));
    // A map of another length than the requester's order is refused.
    assert!(matches!(
        b.client.subscribe_have(pa, id(7), 11).await,
        Err(NetError::Protocol(_))
    ));

    // A download on a: its progress reaches b as it is posted.
    let board = a.client.have_board().open(id(6), held.clone());
    let mut s = b.client.subscribe_have(pa, id(6), 10).await.unwrap();
    assert_eq!(s.next().await.unwrap(), Some(HaveUpdate::Map(held)));
    board.add([5, 1]);
    assert_eq!(s.next().await.unwrap(), Some(HaveUpdate::Added(vec![5, 1])));
    board.add((0..10).collect::<Vec<u32>>());
    let mut rest = Vec::new();
    loop {
        match s.next().await.unwrap() {
            Some(HaveUpdate::Added(v)) => rest.extend(v),
            Some(HaveUpdate::All) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    rest.sort_unstable();
    assert_eq!(rest, vec![0, 2, 4, 6, 7, 8, 9]);
    assert_eq!(s.next().await.unwrap(), None);
}

/// A source that several downloaders subscribe to sends its first copy of
/// a chunk to one of them and sends the others elsewhere, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_sends_each_first_copy_to_one_downloader() {
    let mut provider = MapProvider::default();
    provider.chunks.insert(id(1), Bytes::from(vec![1u8; 1000]));
    provider.maps.insert(id(8), HaveMap::All(1));
    let a = start(config(vec![tcp_addr()], false), provider);
    let (b, c, d) = (
        start(config(vec![tcp_addr()], false), MapProvider::default()),
        start(config(vec![tcp_addr()], false), MapProvider::default()),
        start(config(vec![tcp_addr()], false), MapProvider::default()),
    );
    let pa = a.client.local_peer_id();
    for n in [&b, &c, &d] {
        connect(n, &a).await;
    }
    let answer = |n: &Node| {
        let client = n.client.clone();
        async move {
            let mut s = client.fetch_chunks(pa, vec![id(1)]).await.unwrap();
            s.next().await.unwrap().unwrap()
        }
    };
    // d never subscribed (it asks about ids): always served.
    assert!(matches!(answer(&d).await, ChunkAnswer::Found(_)));
    for n in [&b, &c] {
        let mut s = n.client.subscribe_have(pa, id(8), 1).await.unwrap();
        assert_eq!(s.next().await.unwrap(), Some(HaveUpdate::All));
    }
    assert!(matches!(answer(&b).await, ChunkAnswer::Found(_)));
    assert_eq!(answer(&c).await, ChunkAnswer::Elsewhere);
    assert!(
        matches!(answer(&c).await, ChunkAnswer::Found(_)),
        "asked again"
    );
    assert!(matches!(answer(&b).await, ChunkAnswer::Found(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_over_tcp() {
    fetch_roundtrip(tcp_addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_over_quic() {
    fetch_roundtrip(quic_addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_failure_is_reported() {
    let a = start(config(vec![tcp_addr()], false), MapProvider::default());
    // Port 1 on loopback: nothing listens there.
    let r = a.client.dial("/ip4/127.0.0.1/tcp/1".parse().unwrap()).await;
    assert!(matches!(r, Err(NetError::Dial(_))), "{r:?}");
}

/// A - B - C in a line (Kademlia off so A and C do not meet): B's verdict
/// decides whether C sees A's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_is_forwarded_only_after_accept() {
    let col = col(42);
    let a = start(config(vec![tcp_addr()], false), MapProvider::default());
    let mut b = start(config(vec![tcp_addr()], false), MapProvider::default());
    let mut c = start(config(vec![tcp_addr()], false), MapProvider::default());
    for n in [&a, &b, &c] {
        n.client.subscribe(col).await.unwrap();
    }
    connect(&b, &a).await;
    connect(&c, &b).await;
    // Let subscriptions propagate and meshes form (heartbeat 500 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a
        .client
        .peers()
        .await
        .iter()
        .all(|p| p.peer_id != c.client.local_peer_id()));

    let wait = Duration::from_secs(10);
    a.client.publish(col, b"bad".to_vec()).await.unwrap();
    let (msg, src, data) = next_gossip(&mut b.events, wait).await.expect("B got bad");
    assert_eq!(data, b"bad");
    assert_eq!(src, a.client.local_peer_id());
    b.client.report(msg, src, Verdict::Reject);

    a.client.publish(col, b"good".to_vec()).await.unwrap();
    let (msg, src, data) = next_gossip(&mut b.events, wait).await.expect("B got good");
    assert_eq!(data, b"good");
    b.client.report(msg, src, Verdict::Accept);

    let (msg, src, data) = next_gossip(&mut c.events, wait).await.expect("C got good");
    assert_eq!(data, b"good", "the rejected message must not reach C");
    assert_eq!(src, b.client.local_peer_id());
    c.client.report(msg, src, Verdict::Accept);
    assert!(
        next_gossip(&mut c.events, Duration::from_secs(2))
            .await
            .is_none(),
        "C received the rejected message"
    );
}

/// Publishing before anyone subscribed is queued, then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_queued_until_peers_subscribe() {
    let col = col(7);
    let a = start(config(vec![tcp_addr()], false), MapProvider::default());
    let mut b = start(config(vec![tcp_addr()], false), MapProvider::default());
    a.client.publish(col, b"early".to_vec()).await.unwrap();
    b.client.subscribe(col).await.unwrap();
    connect(&b, &a).await;
    let (msg, src, data) = next_gossip(&mut b.events, Duration::from_secs(10))
        .await
        .expect("queued message delivered");
    assert_eq!(data, b"early");
    b.client.report(msg, src, Verdict::Accept);
}

/// Fetches every id from `peer` with `CONCURRENCY` requests in flight and
/// returns the bytes received per second.
async fn fetch_all(client: &Client, peer: PeerId, ids: &[Hash], chunk: usize) -> f64 {
    const CONCURRENCY: usize = 16;
    let started = Instant::now();
    let total: usize = futures::stream::iter(ids.to_vec())
        .map(|cid| async move { client.fetch_chunk(peer, cid).await.unwrap().len() })
        .buffer_unordered(CONCURRENCY)
        .fold(0, |acc, n| async move { acc + n })
        .await;
    assert_eq!(total, ids.len() * chunk);
    total as f64 / started.elapsed().as_secs_f64()
}

/// Prints chunk throughput (not asserted): 256 chunks of 1 MiB, 16 requests
/// in flight, first on fresh streams, then again on the warmed pool.
/// Meaningful in release builds: `cargo test --release -- --nocapture throughput`.
async fn throughput(listen: Multiaddr, label: &str) {
    const CHUNK: usize = 1024 * 1024;
    let count: u32 = if cfg!(debug_assertions) { 32 } else { 256 };
    let mut provider = MapProvider::default();
    let ids: Vec<Hash> = (0..count).map(|i| Hash::of(&i.to_be_bytes())).collect();
    for (i, cid) in ids.iter().enumerate() {
        provider
            .chunks
            .insert(*cid, Bytes::from(vec![i as u8; CHUNK]));
    }
    let a = start(config(vec![listen.clone()], false), provider);
    let b = start(config(vec![listen], false), MapProvider::default());
    connect(&b, &a).await;
    let pa = a.client.local_peer_id();

    let cold = fetch_all(&b.client, pa, &ids, CHUNK).await;
    let warm = fetch_all(&b.client, pa, &ids, CHUNK).await;
    println!(
        "throughput {label}: {count} x 1 MiB, 16 in flight: {:.0} MB/s (fresh streams), {:.0} MB/s (warm pool)",
        cold / 1e6,
        warm / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_tcp() {
    throughput(tcp_addr(), "tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_quic() {
    throughput(quic_addr(), "quic").await;
}

/// A peer floods low-priority gossip at a node whose application is busy
/// (it reads no events for a while): the message that matters, sent after
/// the flood, still finds room in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_priority_gossip_cannot_crowd_out_the_rest() {
    let col = col(5);
    let a = start(config(vec![tcp_addr()], false), MapProvider::default());
    let mut cfg = config(vec![tcp_addr()], false);
    cfg.low_priority_gossip = |d| d.first() == Some(&b'L');
    let mut b = start(cfg, MapProvider::default());
    for n in [&a, &b] {
        n.client.subscribe(col).await.unwrap();
    }
    connect(&b, &a).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..(EVENT_CHANNEL_CAPACITY + 500) {
        a.client
            .publish(col, format!("L{i}").into_bytes())
            .await
            .unwrap();
    }
    a.client.publish(col, b"H".to_vec()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.client.server_stats().gossip_shed < 500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the last message time to arrive behind the flood.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut got_h = false;
    let mut low = 0;
    while let Some((msg, src, data)) = next_gossip(&mut b.events, Duration::from_millis(500)).await
    {
        got_h |= data == b"H";
        low += usize::from(data.first() == Some(&b'L'));
        b.client.report(msg, src, Verdict::Ignore);
    }
    assert!(got_h, "the flood crowded out the message that matters");
    assert!(
        low <= EVENT_CHANNEL_CAPACITY / 2 + 1,
        "{low} low-priority messages queued"
    );
    assert!(b.client.server_stats().gossip_shed >= 500);
}

/// A swarm of a node that speaks noise and not TLS on TCP (as older
/// versions did), with nothing but ping, listening on loopback.
fn noise_only_swarm() -> libp2p::Swarm<libp2p::ping::Behaviour> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p::ping::Behaviour::default())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on(tcp_addr()).unwrap();
    swarm
}

/// Drives `swarm` until a ping over a connection with `peer` succeeds: the
/// security upgrade and the muxer both work.
async fn ping_succeeds(swarm: &mut libp2p::Swarm<libp2p::ping::Behaviour>, peer: PeerId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("no ping with the node within 20 s");
        match event {
            libp2p::swarm::SwarmEvent::Behaviour(libp2p::ping::Event {
                peer: p,
                result: Ok(_),
                ..
            }) if p == peer => return,
            libp2p::swarm::SwarmEvent::OutgoingConnectionError { error, .. } => {
                panic!("dial failed: {error}")
            }
            _ => {}
        }
    }
}

/// TCP connections offer TLS first; a node with noise alone still connects,
/// whichever side dials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_peers_that_speak_only_noise_connect_both_ways() {
    let a = start(config(vec![tcp_addr()], false), MapProvider::default());
    let pa = a.client.local_peer_id();
    let a_addr = a.client.listen_addrs().await[0].clone();

    // The noise-only node dials.
    let mut old = noise_only_swarm();
    old.dial(a_addr).unwrap();
    ping_succeeds(&mut old, pa).await;

    // The node dials the noise-only one.
    let mut old = noise_only_swarm();
    let old_addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            old.select_next_some().await
        {
            break address;
        }
    };
    let dial = a.client.dial(old_addr);
    let (dialed, ()) = tokio::join!(dial, ping_succeeds(&mut old, pa));
    dialed.unwrap();
}

/// TLS offers AES-GCM first where the CPU has AES instructions (several
/// times cheaper per byte than ChaCha20-Poly1305 there), ChaCha20 first
/// elsewhere. The order is a patch of libp2p-tls (vendor/README.md).
#[test]
fn tls_prefers_aes_gcm_where_the_cpu_has_it() {
    let key = Keypair::generate_ed25519();
    let config = libp2p::tls::make_client_config(&key, None).unwrap();
    let first = format!("{:?}", config.crypto_provider().cipher_suites[0].suite());
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    let hardware = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let hardware = std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    let hardware = false;
    if hardware {
        assert_eq!(first, "TLS13_AES_128_GCM_SHA256");
    } else {
        assert!(first.contains("CHACHA20"), "{first}");
    }
}

mod quic;
