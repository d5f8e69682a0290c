//! [`Client`], the application's handle on a running node.
//!
//! Control operations travel as [`Command`]s to the event loop, each with a
//! oneshot channel for the reply. Chunk and have-map requests bypass the
//! event loop and go straight to the peer over pooled streams.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::{
    caps::{Caps, CapsStats},
    chunk_board::HaveBoard,
    chunk_service::{ChunkStream, HaveSubscription, StreamPool},
    limits::Counters,
    KnownPeer, MessageId, NatStatus, NetError, PeerInfo, ServerStats, Verdict,
};
use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::ChunkRef;

/// A request from a [`Client`] to the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Subscribe {
        collection: CollectionId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Unsubscribe {
        collection: CollectionId,
        reply: oneshot::Sender<()>,
    },
    ExternalAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Publish {
        collection: CollectionId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    RequestLatest {
        peer: PeerId,
        collection: CollectionId,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, NetError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Ban {
        peer: PeerId,
        duration: Duration,
        reply: oneshot::Sender<()>,
    },
    NatStatus {
        reply: oneshot::Sender<NatStatus>,
    },
    KnownPeers {
        reply: oneshot::Sender<Vec<KnownPeer>>,
    },
}

/// A gossip verdict from the application.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) msg_id: MessageId,
    pub(crate) source: PeerId,
    pub(crate) verdict: Verdict,
}

/// Handle on a running node. Cheap to clone; every clone talks to the same
/// event loop. Calls fail with [`NetError::Shutdown`] once the loop stops.
#[derive(Clone)]
pub struct Client {
    pub(super) local_peer_id: PeerId,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) reports: mpsc::UnboundedSender<Report>,
    pub(super) pool: Arc<StreamPool>,
    pub(super) counters: Arc<Counters>,
    /// Opens `/peermirror/mirrors/1` streams.
    pub(super) mirrors: libp2p_stream::Control,
    pub(super) caps: Arc<Caps>,
    pub(super) board: Arc<HaveBoard>,
}

impl Client {
    /// Asks `peer` for the mirror records it holds for `collection`
    /// (`/peermirror/mirrors/1`). The bytes are not verified here.
    pub async fn request_mirrors(
        &self,
        peer: PeerId,
        collection: CollectionId,
    ) -> Result<Vec<Vec<u8>>, NetError> {
        super::mirrors_protocol::request(&self.mirrors, peer, collection).await
    }

    /// Sends a command and waits for its reply.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Shutdown)?;
        rx.await.map_err(|_| NetError::Shutdown)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The addresses this node actually listens on, each with `/p2p/<id>`
    /// appended. Waits until every configured listener has bound (or
    /// failed). Empty if the event loop has stopped.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.call(|reply| Command::ListenAddrs { reply })
            .await
            .unwrap_or_default()
    }

    /// Dials `addr` (with or without a `/p2p/` suffix) and waits until the
    /// connection is established or the dial fails.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Subscribes to the gossip topic of `collection`
    /// (`peermirror/v1/collection/<hex>`). Subscribing twice is harmless.
    pub async fn subscribe(&self, collection: CollectionId) -> Result<(), NetError> {
        self.call(|reply| Command::Subscribe { collection, reply })
            .await?
    }

    /// Leaves the gossip topic of `collection` (a collection no longer
    /// followed). Leaving one not joined is harmless.
    pub async fn unsubscribe(&self, collection: CollectionId) -> Result<(), NetError> {
        self.call(|reply| Command::Unsubscribe { collection, reply })
            .await
    }

    /// The addresses others are known to reach this node at (confirmed
    /// external addresses: configured, or confirmed by peers), each with
    /// `/p2p/<id>`. Empty if none, or if the event loop has stopped.
    pub async fn external_addrs(&self) -> Vec<Multiaddr> {
        self.call(|reply| Command::ExternalAddrs { reply })
            .await
            .unwrap_or_default()
    }

    /// Publishes `msg` on the topic of `collection`. If no peer is subscribed
    /// yet, the message is queued and retried until it goes out (or is
    /// dropped after a while); `Ok` means accepted for delivery. Publishing
    /// the same bytes again is a no-op (message ids are content hashes).
    pub async fn publish(&self, collection: CollectionId, msg: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Publish {
            collection,
            data: msg,
            reply,
        })
        .await?
    }

    /// Reports the application's verdict on a gossip message received as
    /// [`super::Event::Gossip`]. Never blocks; ignored if the loop stopped.
    pub fn report(&self, msg_id: MessageId, source: PeerId, verdict: Verdict) {
        let _ = self.reports.send(Report {
            msg_id,
            source,
            verdict,
        });
    }

    /// Asks `peer` for the latest announcement it holds for `collection`.
    /// The bytes are not validated here.
    pub async fn request_latest(
        &self,
        peer: PeerId,
        collection: CollectionId,
    ) -> Result<Option<Vec<u8>>, NetError> {
        self.call(|reply| Command::RequestLatest {
            peer,
            collection,
            reply,
        })
        .await?
    }

    /// Fetches chunk `id` from `peer`. The bytes are NOT verified here: the
    /// caller must hash them. [`NetError::NotFound`] if the peer lacks it.
    /// Returns only once the download cap allows the bytes.
    pub async fn fetch_chunk(&self, peer: PeerId, id: Hash) -> Result<Vec<u8>, NetError> {
        let body = self.pool.fetch_chunk(peer, id).await?;
        self.caps.download(peer, body.len()).await;
        Ok(body)
    }

    /// Asks `peer` for many chunks in one request (1 to
    /// [`super::MAX_GET_IDS`] ids), so small chunks cost no round trip
    /// each. The answers are read in order from the returned stream, as
    /// they arrive; the bytes are NOT verified here.
    pub async fn fetch_chunks(
        &self,
        peer: PeerId,
        ids: Vec<Hash>,
    ) -> Result<ChunkStream, NetError> {
        let stream = self.pool.get(peer, ids).await?;
        Ok(stream.with_caps(self.caps.clone()))
    }

    /// Subscribes to what `peer` holds of the chunk order (`len` chunks) of
    /// manifest `manifest`: its map first, then the chunks it adds while it
    /// downloads them. [`NetError::NotFound`] if the peer does not know the
    /// manifest (it may still hold some chunks: ask with
    /// [`Client::fetch_have`]).
    pub async fn subscribe_have(
        &self,
        peer: PeerId,
        manifest: Hash,
        len: u32,
    ) -> Result<HaveSubscription, NetError> {
        self.pool.subscribe(peer, manifest, len).await
    }

    /// The have-maps this node serves: a download registers its manifest
    /// here, so peers subscribed to it learn of each chunk it stores.
    pub fn have_board(&self) -> &Arc<HaveBoard> {
        &self.board
    }

    /// Fetches the chunk list of an encoded manifest from `peer`
    /// (unverified). [`NetError::NotFound`] if the peer lacks it.
    pub async fn fetch_manifest_chunks(
        &self,
        peer: PeerId,
        id: Hash,
    ) -> Result<Vec<ChunkRef>, NetError> {
        self.pool.fetch_manifest_chunks(peer, id).await
    }

    /// Asks `peer` which of `ids` it holds (`result[i]` is for `ids[i]`), at
    /// most [`super::MAX_HAVE_IDS`] ids per call.
    pub async fn fetch_have(&self, peer: PeerId, ids: Vec<Hash>) -> Result<Vec<bool>, NetError> {
        self.pool.fetch_have(peer, ids).await
    }

    /// Disconnects `peer` and refuses its connections for `duration` (a
    /// later ban replaces an earlier one); it is also blacklisted in
    /// gossip and dropped from Kademlia's routing table meanwhile. For
    /// peers caught lying: an honest node never needs this.
    pub async fn ban(&self, peer: PeerId, duration: Duration) -> Result<(), NetError> {
        self.call(|reply| Command::Ban {
            peer,
            duration,
            reply,
        })
        .await
    }

    /// The currently connected peers. Empty if the event loop has stopped.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.call(|reply| Command::Peers { reply })
            .await
            .unwrap_or_default()
    }

    /// Whether this node is reachable, at which external addresses, and
    /// through which relay. Default (unknown) if the event loop has stopped.
    pub async fn nat_status(&self) -> NatStatus {
        self.call(|reply| Command::NatStatus { reply })
            .await
            .unwrap_or_default()
    }

    /// The peers this node has learned about (its [`super::PeerBook`]),
    /// most recently seen first, for the application to save.
    pub async fn known_peers(&self) -> Vec<KnownPeer> {
        self.call(|reply| Command::KnownPeers { reply })
            .await
            .unwrap_or_default()
    }

    /// What this node's serving side holds and has refused so far.
    pub fn server_stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// The upload and download caps and the current chunk rates.
    pub fn caps_stats(&self) -> CapsStats {
        self.caps.stats()
    }

    /// How many peers sent this node chunk bodies since `since`: the peers
    /// a download used.
    pub fn chunk_senders_since(&self, since: std::time::Instant) -> usize {
        self.caps.senders_since(since)
    }

    /// Opens a fresh `/peermirror/chunk/2` stream to `peer`, outside the
    /// pool, for tools and tests that speak the wire format (see
    /// `docs/protocol.md`) themselves.
    pub async fn open_chunk_stream(&self, peer: PeerId) -> Result<super::Stream, NetError> {
        self.pool.open(peer).await
    }
}
