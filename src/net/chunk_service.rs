//! The client side of `/peermirror/chunk/2`, running beside the swarm
//! rather than inside its event loop so chunk bytes never pass through it.
//!
//! * [`StreamPool`] keeps a few open streams per peer. Each stream carries
//!   one exchange at a time, strictly request-then-response, so several
//!   exchanges with one peer run in parallel on separate streams.
//! * [`ChunkStream`] is one `Get` exchange: many chunk ids asked at once,
//!   their bodies read one frame at a time as they arrive.
//! * [`HaveSubscription`] is one `Subscribe` exchange on a stream of its
//!   own: a peer's have-map over a manifest's chunk order, then its updates.
//!
//! The server side lives in [`super::chunk_server`].

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::{
    chunk_board::Bitmap,
    chunk_protocol::{self, Request, Response},
    NetError,
};
use crate::hash::Hash;
use crate::manifest::ChunkRef;
use crate::task::lock;

/// Exchanges in flight to one peer at once; further callers wait.
const MAX_IN_FLIGHT_PER_PEER: usize = 32;
/// Idle pooled streams are closed after this long.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for one exchange (write request, read full response), and in a
/// `Get` for each frame after the previous one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra attempts on a fresh stream when a stream fails at the transport level
/// before any answer (a pooled stream may have been closed by the remote, or an
/// inbound stream dropped while the remote was busy). Requests are idempotent.
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

    /// Writes `req` on a pooled or fresh stream and reads the first frame
    /// of the answer, retrying on a fresh stream if the stream fails before
    /// that frame. Returns the stream (to read the rest from) and the frame.
    async fn start(
        &self,
        peer: PeerId,
        req: &Request,
        order: Option<u32>,
        pooled: bool,
    ) -> Result<(Stream, Response), NetError> {
        let mut attempt = 0;
        loop {
            let mut stream = match pooled.then(|| self.take_idle(peer)).flatten() {
                Some(s) => s,
                None => self.open(peer).await?,
            };
            let exchange = async {
                chunk_protocol::write_request(&mut stream, req).await?;
                chunk_protocol::read_response(&mut stream, order).await
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(resp)) => return Ok((stream, resp)),
                Ok(Err(e)) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        debug!(%peer, error = %e, "malformed chunk response");
                        return Err(NetError::Protocol(e.to_string()));
                    }
                    if attempt >= MAX_RETRIES {
                        return Err(NetError::Stream(e.to_string()));
                    }
                    debug!(%peer, error = %e, attempt, "chunk stream failed, retrying");
                    attempt += 1;
                }
                Err(_) => return Err(NetError::Timeout),
            }
        }
    }

    /// Sends one single-frame request to `peer` and returns its response.
    pub(crate) async fn request(&self, peer: PeerId, req: Request) -> Result<Response, NetError> {
        let limit = self.limit(peer);
        // The semaphore is never closed, so acquiring fails only if it were.
        let _permit = limit.acquire().await.map_err(|_| NetError::Shutdown)?;
        let (stream, resp) = self.start(peer, &req, None, true).await?;
        self.put_idle(peer, stream);
        Ok(resp)
    }

    /// Asks `peer` for the bodies of `ids` (1 to [`chunk_protocol::MAX_GET_IDS`]);
    /// the answers are read from the returned stream one by one.
    pub(crate) async fn get(
        self: &Arc<Self>,
        peer: PeerId,
        ids: Vec<Hash>,
    ) -> Result<ChunkStream, NetError> {
        if ids.is_empty() || ids.len() > chunk_protocol::MAX_GET_IDS {
            return Err(NetError::TooLarge(format!(
                "{} ids in one get request (1..={})",
                ids.len(),
                chunk_protocol::MAX_GET_IDS
            )));
        }
        let permit = self
            .limit(peer)
            .acquire_owned()
            .await
            .map_err(|_| NetError::Shutdown)?;
        let count = ids.len();
        let (stream, first) = self.start(peer, &Request::Get(ids), None, true).await?;
        Ok(ChunkStream {
            pool: self.clone(),
            peer,
            stream: Some(stream),
            first: Some(first),
            left: count,
            _permit: permit,
            caps: None,
        })
    }

    /// Fetches the body of chunk `id` from `peer` (not verified here).
    pub(crate) async fn fetch_chunk(
        self: &Arc<Self>,
        peer: PeerId,
        id: Hash,
    ) -> Result<Vec<u8>, NetError> {
        let mut s = self.get(peer, vec![id]).await?;
        match s.next().await {
            Some(Ok(ChunkAnswer::Found(body))) => Ok(Vec::from(body)),
            // One id asked alone: a deferral is as good as a miss here.
            Some(Ok(ChunkAnswer::NotFound | ChunkAnswer::Elsewhere)) => Err(NetError::NotFound),
            Some(Err(e)) => Err(e),
            None => Err(NetError::Protocol("no answer to a get request".into())),
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
                "wrong response kind to a have request".into(),
            )),
        }
    }

    /// Subscribes to `peer`'s have-map over the chunk order (of `len`
    /// chunks) of `manifest`, on a stream of its own.
    /// [`NetError::NotFound`] if the peer does not know the manifest.
    pub(crate) async fn subscribe(
        &self,
        peer: PeerId,
        manifest: Hash,
        len: u32,
    ) -> Result<HaveSubscription, NetError> {
        let req = Request::Subscribe(manifest);
        let (stream, first) = self.start(peer, &req, Some(len), false).await?;
        let first = match first {
            Response::NotFound => return Err(NetError::NotFound),
            Response::Map(bits) => HaveUpdate::Map(bits),
            Response::All(_) => HaveUpdate::All,
            _ => {
                return Err(NetError::Protocol(
                    "wrong response kind to a subscription".into(),
                ))
            }
        };
        Ok(HaveSubscription {
            stream: Some(stream),
            first: Some(first),
            len,
        })
    }
}

/// The answer to one id of a `Get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAnswer {
    /// The body (not verified here).
    Found(Bytes),
    /// The peer lacks the chunk.
    NotFound,
    /// The peer holds it but sent it to another downloader moments ago:
    /// ask other peers first, and this one again only later. Not a fault.
    Elsewhere,
}

/// The answer to one `Get` request: one item per id asked, in order.
pub struct ChunkStream {
    pool: Arc<StreamPool>,
    peer: PeerId,
    stream: Option<Stream>,
    first: Option<Response>,
    left: usize,
    _permit: OwnedSemaphorePermit,
    /// The download cap each body waits for, if any.
    caps: Option<Arc<super::caps::Caps>>,
}

impl ChunkStream {
    /// Makes each body wait until the download cap allows its bytes.
    pub(super) fn with_caps(mut self, caps: Arc<super::caps::Caps>) -> Self {
        self.caps = Some(caps);
        self
    }

    /// The next answer, `None` once every id is answered. After an error,
    /// the rest is lost.
    pub async fn next(&mut self) -> Option<Result<ChunkAnswer, NetError>> {
        if self.left == 0 {
            return None;
        }
        let resp = match self.first.take() {
            Some(r) => Ok(r),
            None => {
                let stream = self.stream.as_mut()?;
                match tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    chunk_protocol::read_response(stream, None),
                )
                .await
                {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                        Err(NetError::Protocol(e.to_string()))
                    }
                    Ok(Err(e)) => Err(NetError::Stream(e.to_string())),
                    Err(_) => Err(NetError::Timeout),
                }
            }
        };
        let out = match resp {
            Ok(Response::Found(body)) => {
                if let Some(caps) = &self.caps {
                    caps.download(self.peer, body.len()).await;
                }
                Ok(ChunkAnswer::Found(body))
            }
            Ok(Response::NotFound) => Ok(ChunkAnswer::NotFound),
            Ok(Response::Elsewhere) => Ok(ChunkAnswer::Elsewhere),
            Ok(_) => Err(NetError::Protocol(
                "wrong response kind to a get request".into(),
            )),
            Err(e) => Err(e),
        };
        if out.is_err() {
            self.stream = None;
            self.left = 0;
            return Some(out);
        }
        self.left -= 1;
        if self.left == 0 {
            if let Some(s) = self.stream.take() {
                self.pool.put_idle(self.peer, s);
            }
        }
        Some(out)
    }

    /// Answers not read yet.
    pub fn remaining(&self) -> usize {
        self.left
    }
}

/// What a [`HaveSubscription`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaveUpdate {
    /// The peer's whole map (what it held before replaces this).
    Map(Bitmap),
    /// The peer holds every chunk of the order.
    All,
    /// The peer now holds these chunks too.
    Added(Vec<u32>),
}

/// A peer's have-map over a manifest's chunk order, kept up to date by the
/// peer for as long as it is downloading that manifest.
pub struct HaveSubscription {
    stream: Option<Stream>,
    first: Option<HaveUpdate>,
    len: u32,
}

impl HaveSubscription {
    /// The next update; `Ok(None)` once the peer ended the subscription
    /// (after `All`, or when its own download stopped). Waits as long as
    /// the peer has nothing new: there is no timeout.
    pub async fn next(&mut self) -> Result<Option<HaveUpdate>, NetError> {
        if let Some(first) = self.first.take() {
            if first == HaveUpdate::All {
                self.stream = None;
            }
            return Ok(Some(first));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        let resp = match chunk_protocol::read_response(stream, Some(self.len)).await {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.stream = None;
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.stream = None;
                return Err(NetError::Protocol(e.to_string()));
            }
            Err(e) => {
                self.stream = None;
                return Err(NetError::Stream(e.to_string()));
            }
        };
        match resp {
            Response::Added(list) => Ok(Some(HaveUpdate::Added(list))),
            Response::All(_) => {
                self.stream = None;
                Ok(Some(HaveUpdate::All))
            }
            _ => {
                self.stream = None;
                Err(NetError::Protocol(
                    "wrong response kind in a subscription".into(),
                ))
            }
        }
    }
}
