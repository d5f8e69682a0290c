//! Both ends of the `/peermirror/chunk/1` protocol, running beside the swarm
//! rather than inside its event loop so chunk bytes never pass through it.
//!
//! * [`StreamPool`] (client side) keeps a few open streams per peer. Each
//!   stream serves one request at a time, strictly request-then-response, so
//!   many requests to one peer run in parallel on separate streams.
//!
//! The server side lives in [`super::chunk_server`].

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::Semaphore;
use tracing::debug;

use super::{
    chunk_protocol::{self, Request, Response},
    NetError,
};
use crate::hash::Hash;
use crate::manifest::ChunkRef;
use crate::task::lock;

/// Requests in flight to one peer at once; further callers wait.
const MAX_IN_FLIGHT_PER_PEER: usize = 32;
/// Idle pooled streams are closed after this long.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for one exchange (write request, read full response).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra attempts on a fresh stream when a stream fails at the transport level
/// (a pooled stream may have been closed by the remote, or an inbound stream
/// dropped while the remote was busy). Requests are idempotent.
const MAX_RETRIES: usize = 2;

fn protocol() -> StreamProtocol {
    StreamProtocol::new(chunk_protocol::PROTOCOL_NAME)
}

/// Per-peer state of the client side.
#[derive(Default)]
struct PeerStreams {
    idle: Vec<(Stream, Instant)>,
    limit: Option<Arc<Semaphore>>,
}

/// Client side: a pool of open chunk streams per peer.
pub(crate) struct StreamPool {
    control: Control,
    peers: Mutex<HashMap<PeerId, PeerStreams>>,
}

impl StreamPool {
    pub(crate) fn new(control: Control) -> Self {
        Self {
            control,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, peer: PeerId) -> Arc<Semaphore> {
        lock(&self.peers)
            .entry(peer)
            .or_default()
            .limit
            .get_or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PEER)))
            .clone()
    }

    fn take_idle(&self, peer: PeerId) -> Option<Stream> {
        let mut peers = lock(&self.peers);
        let entry = peers.get_mut(&peer)?;
        let now = Instant::now();
        while let Some((stream, since)) = entry.idle.pop() {
            if now.duration_since(since) < POOL_IDLE_TIMEOUT {
                return Some(stream);
            }
        }
        None
    }

    fn put_idle(&self, peer: PeerId, stream: Stream) {
        let mut peers = lock(&self.peers);
        let entry = peers.entry(peer).or_default();
        if entry.idle.len() < MAX_IN_FLIGHT_PER_PEER {
            entry.idle.push((stream, Instant::now()));
        }
    }

    /// Forgets every pooled stream of `peer` (called when it disconnects).
    pub(crate) fn forget(&self, peer: &PeerId) {
        lock(&self.peers).remove(peer);
    }

    /// Drops pooled streams idle for longer than [`POOL_IDLE_TIMEOUT`], so
    /// they stop keeping connections alive.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        for entry in peers.values_mut() {
            entry
                .idle
                .retain(|(_, since)| now.duration_since(*since) < POOL_IDLE_TIMEOUT);
        }
        peers.retain(|_, e| !e.idle.is_empty() || e.limit.is_some());
    }

    /// Opens a fresh chunk stream to `peer`, outside the pool.
    pub(crate) async fn open(&self, peer: PeerId) -> Result<Stream, NetError> {
        let mut control = self.control.clone();
        match control.open_stream(peer, protocol()).await {
            Ok(s) => Ok(s),
            Err(OpenStreamError::UnsupportedProtocol(p)) => {
                Err(NetError::Unsupported(p.to_string()))
            }
            Err(e) => Err(NetError::Stream(e.to_string())),
        }
    }

    /// Sends one request to `peer` and returns its response.
    pub(crate) async fn request(&self, peer: PeerId, req: Request) -> Result<Response, NetError> {
        let limit = self.limit(peer);
        // The semaphore is never closed, so acquiring fails only if it were.
        let _permit = limit.acquire().await.map_err(|_| NetError::Shutdown)?;
        let mut attempt = 0;
        loop {
            let mut stream = match self.take_idle(peer) {
                Some(s) => s,
                None => self.open(peer).await?,
            };
            let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut stream, &req)).await;
            match result {
                Ok(Ok(resp)) => {
                    self.put_idle(peer, stream);
                    return Ok(resp);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    debug!(%peer, error = %e, "malformed chunk response");
                    return Err(NetError::Protocol(e.to_string()));
                }
                Ok(Err(e)) if attempt < MAX_RETRIES => {
                    debug!(%peer, error = %e, attempt, "chunk stream failed, retrying");
                    attempt += 1;
                }
                Ok(Err(e)) => return Err(NetError::Stream(e.to_string())),
                Err(_) => return Err(NetError::Timeout),
            }
        }
    }

    /// Fetches the body of chunk `id` from `peer` (not verified here).
    pub(crate) async fn fetch_chunk(&self, peer: PeerId, id: Hash) -> Result<Vec<u8>, NetError> {
        match self.request(peer, Request::Chunk(id)).await? {
            Response::Found(body) => Ok(Vec::from(body)),
            Response::NotFound => Err(NetError::NotFound),
            _ => Err(NetError::Protocol(
                "wrong response kind to a chunk request".into(),
            )),
        }
    }

    /// Asks `peer` for the chunk list of an encoded manifest (unverified:
    /// the caller checks the reassembled bytes against the manifest id).
    pub(crate) async fn fetch_manifest_chunks(
        &self,
        peer: PeerId,
        id: Hash,
    ) -> Result<Vec<ChunkRef>, NetError> {
        match self.request(peer, Request::ManifestChunks(id)).await? {
            Response::ManifestChunks(list) if list.is_empty() => Err(NetError::NotFound),
            Response::ManifestChunks(list) => Ok(list),
            Response::NotFound => Err(NetError::NotFound),
            _ => Err(NetError::Protocol(
                "wrong response kind to a manifest request".into(),
            )),
        }
    }

    /// Asks `peer` which of `ids` it holds.
    pub(crate) async fn fetch_have(
        &self,
        peer: PeerId,
        ids: Vec<Hash>,
    ) -> Result<Vec<bool>, NetError> {
        let n = ids.len();
        if n > chunk_protocol::MAX_HAVE_IDS {
            return Err(NetError::TooLarge(format!(
                "{n} ids in one have request (max {})",
                chunk_protocol::MAX_HAVE_IDS
            )));
        }
        match self.request(peer, Request::Have(ids)).await? {
            Response::Have(flags) if flags.len() == n => Ok(flags),
            Response::Have(flags) => Err(NetError::Protocol(format!(
                "have bitmap of {} entries for {n} ids",
                flags.len()
            ))),
            _ => Err(NetError::Protocol(
                "chunk response sent in answer to a have request".into(),
            )),
        }
    }
}

async fn exchange(stream: &mut Stream, req: &Request) -> io::Result<Response> {
    chunk_protocol::write_request(stream, req).await?;
    chunk_protocol::read_response(stream).await
}
