//! The libp2p network layer of a peermirror node.
//!
//! [`new`] builds a node from a keypair, a [`NetConfig`] and a
//! [`ChunkProvider`], and returns three parts:
//!
//! * a [`Client`], a cheap cloneable handle the application uses to dial,
//!   subscribe, publish, report gossip verdicts and fetch data from peers;
//! * a receiver of [`Event`]s (gossip to validate, peers coming and going);
//! * an [`EventLoop`] that owns the swarm and must be driven with
//!   [`EventLoop::run`] (typically in its own task).
//!
//! Protocols: identify, ping, gossipsub (one topic per collection, every
//! message validated by the application), Kademlia (peer routing and one
//! provider record per followed collection, see [`discovery`]), optional
//! mDNS, AutoNAT, circuit relay (server while reachable, client while not),
//! DCUtR hole punching and optional UPnP (see [`nat`]), the
//! `/peermirror/latest/1` request-response protocol for the latest
//! announcement of a collection, the `/peermirror/chunk/2` stream protocol
//! for chunk bodies (many per request) and have-maps (bitmaps over a
//! manifest's chunk order, with updates pushed as a download proceeds), and
//! the `/peermirror/mirrors/1` stream protocol for a collection's HTTP mirror
//! records. Chunk transfers run on their own streams outside the event loop,
//! several in parallel per peer.
//!
//! Of the rest of the crate, this module uses only the leaf types that name
//! what travels: [`Hash`] for chunks and manifests, [`CollectionId`] for
//! collections, [`ChunkRef`] for a manifest's chunk list. Announcements are
//! opaque bytes that the application validates.

mod addr_filter;
mod behaviour;
mod caps;
mod chunk_board;
mod chunk_protocol;
mod chunk_server;
mod chunk_service;
mod client;
mod discovery;
mod event_loop;
mod ip_limits;
mod latest_protocol;
mod limits;
mod mirrors_protocol;
mod nat;
mod peer_book;
mod rate;
#[cfg(test)]
mod tests;

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
/// wire decoder over a byte slice. Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use futures::executor::block_on;
    use futures::io::Cursor;

    /// Decodes chunk-protocol request frames until the bytes end or one fails.
    pub fn chunk_requests(data: &[u8]) {
        let mut c = Cursor::new(data);
        while let Ok(Some(_)) = block_on(super::chunk_protocol::read_request(&mut c)) {}
    }

    /// Decodes chunk-protocol response frames until the bytes end or one
    /// fails, as the answer to a request (the first byte's parity picks
    /// whether a subscription to a 1000-chunk order is being read).
    pub fn chunk_response(data: &[u8]) {
        let order = data.first().and_then(|b| (b & 1 == 1).then_some(1000));
        let mut c = Cursor::new(data.get(1..).unwrap_or_default());
        while block_on(super::chunk_protocol::read_response(&mut c, order)).is_ok() {}
    }

    /// Decodes a latest-protocol request and response.
    pub fn latest(data: &[u8]) {
        let _ = super::latest_protocol::decode_request(data);
        let _ = super::latest_protocol::decode_response(data);
    }
}

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use libp2p::identity::Keypair;
use tokio::sync::mpsc;

use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::ChunkRef;

pub use behaviour::{IDENTIFY_PROTOCOL, KAD_PROTOCOL};
pub use caps::CapsStats;
pub use chunk_board::{Bitmap, BoardHandle, HaveBoard, HaveMap};
pub use chunk_protocol::{MAX_CHUNK_LEN, MAX_GET_IDS, MAX_HAVE_IDS};
pub use chunk_service::{ChunkAnswer, ChunkStream, HaveSubscription, HaveUpdate};
pub use client::Client;
pub use discovery::provider_key;
pub use event_loop::EventLoop;
pub use latest_protocol::MAX_ANNOUNCEMENT_LEN;
pub use libp2p::{gossipsub::MessageId, Multiaddr, PeerId, Stream};
pub use limits::{NetLimits, ServerStats};
pub use mirrors_protocol::PROTOCOL_NAME as MIRRORS_PROTOCOL;
pub use nat::{NatConfig, PathKind, Reachability, RelayLimits};
pub use peer_book::{KnownPeer, PeerBook};
pub use rate::RateLimiter;

/// Capacity of the event channel handed to the application.
const EVENT_CHANNEL_CAPACITY: usize = 1024;
/// Capacity of the command channel from [`Client`]s to the event loop.
const COMMAND_CHANNEL_CAPACITY: usize = 256;

/// How a node listens, whom it dials first, and how it discovers peers.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on, e.g. `/ip4/127.0.0.1/tcp/0` and
    /// `/ip4/127.0.0.1/udp/0/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Peers dialed at start, with or without a `/p2p/<id>` suffix.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Run Kademlia (server mode) and feed it addresses learned from
    /// identify. When on, nodes find and connect to their peers' peers.
    pub kademlia: bool,
    /// Close connections that carry no stream for this long.
    pub idle_timeout: Duration,
    /// What peers may make this node spend.
    pub limits: NetLimits,
    /// NAT traversal: AutoNAT, relay, UPnP, external addresses.
    pub nat: NatConfig,
    /// Peers learned in earlier runs (the saved [`PeerBook`]): the most
    /// recently seen are dialed at start, and the book goes on from them.
    pub known_peers: Vec<KnownPeer>,
    /// Whether a gossip payload is low priority (e.g. a progress note): such
    /// messages are handed to the application only while its event queue is
    /// at most half full, and ignored otherwise, so a flood of them cannot
    /// crowd out the messages that matter.
    pub low_priority_gossip: fn(&[u8]) -> bool,
}

/// The default [`NetConfig::low_priority_gossip`]: every message matters.
pub fn no_low_priority_gossip(_: &[u8]) -> bool {
    false
}

/// The data a node serves to its peers. Called on a blocking thread pool, so
/// implementations may read from disk.
pub trait ChunkProvider: Send + Sync + 'static {
    /// Bytes of a chunk this node holds (already verified by the store), or
    /// `None`. `Bytes` lets a cache hand out shared buffers without copying;
    /// a `Vec<u8>` converts for free with `Bytes::from`.
    fn chunk(&self, id: &Hash) -> Option<Bytes>;
    /// Which of the given chunk ids this node holds (`result[i]` is for
    /// `ids[i]`); used for have-maps of chunk lists (a manifest's own
    /// chunks) and by peers that cannot get a manifest's map.
    fn have(&self, ids: &[Hash]) -> Vec<bool>;
    /// What this node holds of the chunk order of manifest `id` (its
    /// distinct chunks in order of first appearance), or `None` if it does
    /// not hold that manifest. Asked only when no download of this node has
    /// the manifest open on the [`HaveBoard`]; the answer is kept a minute.
    /// The default holds no manifest: peers then ask with `have` instead.
    fn have_map(&self, id: &Hash) -> Option<HaveMap> {
        let _ = id;
        None
    }
    /// The chunks (id, length) of an encoded manifest this node holds, in
    /// order, so peers can fetch a manifest like any other data.
    fn manifest_chunks(&self, id: &Hash) -> Option<Vec<ChunkRef>>;
    /// The latest accepted signed announcement of a collection (opaque
    /// bytes), for late joiners.
    fn latest_announcement(&self, collection: &CollectionId) -> Option<Vec<u8>>;
    /// The signed mirror records (opaque bytes) held for a collection, for
    /// peers who ask which HTTP mirrors serve it. None by default.
    fn mirror_records(&self, _collection: &CollectionId) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

/// The application's verdict on a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: deliver and forward it.
    Accept,
    /// Invalid: drop it and penalise the peer that sent it.
    Reject,
    /// Not forwarded, but no penalty (e.g. stale or duplicate version).
    Ignore,
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's identity.
    pub peer_id: PeerId,
    /// Remote addresses of the open connections to it.
    pub addrs: Vec<Multiaddr>,
    /// Last measured ping round-trip time.
    pub rtt: Option<Duration>,
    /// The best path among the open connections (bulk streams use it:
    /// relayed connections are closed once a direct one exists).
    pub path: PathKind,
}

/// What the node knows about its own reachability.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatStatus {
    /// AutoNAT's verdict (public when external addresses were configured).
    pub reachability: Reachability,
    /// Confirmed external addresses: configured, found by AutoNAT or UPnP,
    /// or relayed ones while holding a relay slot.
    pub external_addrs: Vec<Multiaddr>,
    /// The relay this node holds a slot on, if any.
    pub relay: Option<PeerId>,
    /// Peers in the [`PeerBook`].
    pub known_peers: usize,
}

/// What the network tells the application.
#[derive(Debug, Clone)]
pub enum Event {
    /// A gossip message on a subscribed collection topic. It is neither
    /// delivered further nor forwarded until the application calls
    /// [`Client::report`] with `msg_id` and `source`: it must always do so.
    Gossip {
        /// The collection whose topic carried the message.
        collection: CollectionId,
        /// Gossipsub message id (hash of `data`).
        msg_id: MessageId,
        /// The peer that relayed the message to us.
        source: PeerId,
        /// The peer that wrote and signed the message (checked by gossipsub).
        author: Option<PeerId>,
        /// The opaque payload.
        data: Vec<u8>,
    },
    /// The first connection to a peer opened.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
}

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The swarm could not be built.
    #[error("failed to build the network: {0}")]
    Build(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Dialing failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// Subscribing or publishing failed.
    #[error("gossip error: {0}")]
    Gossip(String),
    /// The peer does not hold the requested chunk.
    #[error("chunk not found on peer")]
    NotFound,
    /// The peer does not speak the protocol.
    #[error("peer does not support {0}")]
    Unsupported(String),
    /// A stream failed (connection lost, reset, refused).
    #[error("stream error: {0}")]
    Stream(String),
    /// The peer sent something that breaks the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A request exceeds a protocol limit.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// A request-response exchange failed.
    #[error("request failed: {0}")]
    Request(String),
    /// The peer did not answer in time.
    #[error("request timed out")]
    Timeout,
    /// The event loop is not running any more.
    #[error("the network event loop has stopped")]
    Shutdown,
}

/// The gossipsub topic of a collection: `peermirror/v1/collection/<hex id>`.
pub fn collection_topic(collection: &CollectionId) -> libp2p::gossipsub::IdentTopic {
    libp2p::gossipsub::IdentTopic::new(format!("peermirror/v1/collection/{collection}"))
}

/// Builds a node: the swarm, its listeners and the chunk server (started by
/// [`EventLoop::run`]). Must be called inside a Tokio runtime.
pub fn new(
    keypair: Keypair,
    cfg: NetConfig,
    provider: Arc<dyn ChunkProvider>,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), NetError> {
    let local_peer_id = keypair.public().to_peer_id();
    let mut swarm = behaviour::build_swarm(keypair, &cfg)?;

    let mut control = swarm.behaviour().stream.new_control();
    let incoming = control
        .accept(libp2p::StreamProtocol::new(chunk_protocol::PROTOCOL_NAME))
        .map_err(|e| NetError::Build(format!("chunk protocol: {e:?}")))?;

    let mirrors_control = swarm.behaviour().stream.new_control();
    let mirrors_incoming = control
        .accept(mirrors_protocol::protocol())
        .map_err(|e| NetError::Build(format!("mirrors protocol: {e:?}")))?;
    // Ends when the swarm (and so the incoming stream queue) goes away.
    tokio::spawn(tracing::Instrument::in_current_span(
        mirrors_protocol::serve(
            mirrors_incoming,
            provider.clone(),
            cfg.limits.latest_requests_per_sec,
        ),
    ));

    let mut listeners = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        match swarm.listen_on(addr.clone()) {
            Ok(id) => listeners.push(id),
            // Hosts without IPv6 exist: an IPv6 listener is best effort.
            Err(e) if is_ip6(addr) => {
                tracing::warn!(%addr, error = %e, "cannot listen on IPv6; going on without it")
            }
            Err(e) => {
                return Err(NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }
    for addr in &cfg.nat.external_addresses {
        swarm.add_external_address(addr.clone());
    }

    let pool = Arc::new(chunk_service::StreamPool::new(control));
    let counters = Arc::new(limits::Counters::default());
    let caps = Arc::new(caps::Caps::new(
        cfg.limits.upload_rate,
        cfg.limits.download_rate,
        cfg.limits.max_peers,
    ));
    let board = Arc::new(HaveBoard::default());
    let server = chunk_server::Server::new(
        provider.clone(),
        board.clone(),
        cfg.limits.clone(),
        counters.clone(),
        caps.clone(),
    );
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);

    let client = Client {
        local_peer_id,
        commands: cmd_tx,
        reports: report_tx,
        pool: pool.clone(),
        counters: counters.clone(),
        mirrors: mirrors_control,
        caps,
        board,
    };
    let event_loop = EventLoop::new(event_loop::Parts {
        swarm,
        bootstrap: cfg.bootstrap,
        listeners,
        cmd_rx,
        report_rx,
        event_tx,
        provider,
        pool,
        incoming,
        server,
        counters,
        limits: cfg.limits,
        low_priority_gossip: cfg.low_priority_gossip,
        known_peers: cfg.known_peers,
        external_given: !cfg.nat.external_addresses.is_empty(),
    });
    Ok((client, event_rx, event_loop))
}

/// Whether `addr` is an IPv6 address.
fn is_ip6(addr: &Multiaddr) -> bool {
    matches!(
        addr.iter().next(),
        Some(libp2p::multiaddr::Protocol::Ip6(_))
    )
}
