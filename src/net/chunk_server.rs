//! The serving side of `/peermirror/chunk/2`: accepts inbound streams and
//! answers the requests on each one in turn until the remote closes it; a
//! `Get` is answered chunk by chunk, a `Subscribe` with the have-map and
//! then its updates for as long as this node's download of that manifest
//! runs. A node that holds a version whole while several peers download
//! it hands its first copy of each chunk to one of them and answers the
//! others `Elsewhere` for a moment (`first_copies`), so a source sends each
//! chunk about once.
//!
//! Anyone may open streams, so what a peer can make the server hold is
//! bounded (see [`NetLimits`]):
//!
//! * streams: at most so many at once per peer and in total; a stream over
//!   either bound is dropped on arrival;
//! * memory: every reply (a group of chunk bodies, a have-map, the ids of a
//!   request) is paid for from a per-peer and a global byte budget before
//!   it is built, and the payment is returned once it is sent. A peer that
//!   stops reading holds its own budget, never anyone else's: its next
//!   requests wait;
//! * time: a reply must be sent, and a request that has begun must arrive,
//!   within the send timeout, or the stream is dropped with what it held;
//! * rate: requests beyond the peer's rate end the stream unanswered (a
//!   `Get` counts as one request whatever its number of ids: its cost is
//!   bounded by the bytes it moves, which the budget and the link bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use libp2p_stream::IncomingStreams;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use self::first_copies::{FirstCopies, Verdict};
use super::caps::Caps;
use super::chunk_board::{HaveBoard, Next};
use super::chunk_protocol::{self, Request, RequestHead, Response, MAX_CHUNK_LEN};
use super::limits::{Counters, Held, NetLimits};
use super::rate::RateLimiter;
use super::ChunkProvider;
use crate::hash::Hash;
use crate::task::lock;

mod first_copies;

/// How long the server waits for the next request on an open stream.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Chunk bodies of a `Get` are read from the provider and sent in groups of
/// about this many bytes; a group never holds more body bytes than one
/// chunk may have, so it costs the budget no more than a single chunk did.
const GROUP: usize = 256 << 10;
/// Chunks of a `Get` read from the provider per group at most.
const GROUP_CHUNKS: usize = 256;
/// A subscriber is sent updates at most this often, so a download that
/// stores chunks one by one costs its peers a frame per interval, not one
/// per chunk.
const PUSH_EVERY: Duration = Duration::from_millis(150);

/// The largest reply a request can produce, reserved before the reply is
/// built and trimmed to its real size after.
const MAX_REPLY: usize = {
    let have = 5 + chunk_protocol::MAX_HAVE_IDS * 2;
    let manifest = 5 + chunk_protocol::MAX_MANIFEST_CHUNKS * 36;
    let group = MAX_CHUNK_LEN + GROUP_CHUNKS * 5;
    let m = if have > manifest { have } else { manifest };
    if group > m {
        group
    } else {
        m
    }
};

/// What the server keeps per peer while it has streams open.
struct PeerEntry {
    streams: usize,
    budget: Arc<Semaphore>,
}

/// Shared state of the server.
pub(crate) struct Server {
    provider: Arc<dyn ChunkProvider>,
    board: Arc<HaveBoard>,
    limits: NetLimits,
    streams: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    peers: Mutex<HashMap<PeerId, PeerEntry>>,
    rate: Mutex<RateLimiter<PeerId>>,
    counters: Arc<Counters>,
    caps: Arc<Caps>,
    /// Which downloader got the first copy of each chunk lately.
    firsts: Arc<FirstCopies>,
}

/// A stream slot: returns the peer's and the global count on drop.
struct Slot {
    server: Arc<Server>,
    peer: PeerId,
    _global: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut peers = lock(&self.server.peers);
        if let Some(e) = peers.get_mut(&self.peer) {
            e.streams -= 1;
            if e.streams == 0 {
                peers.remove(&self.peer);
            }
        }
        self.server
            .counters
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Budget bytes (a usize count) as semaphore permits.
fn permits(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl Server {
    pub(crate) fn new(
        provider: Arc<dyn ChunkProvider>,
        board: Arc<HaveBoard>,
        limits: NetLimits,
        counters: Arc<Counters>,
        caps: Arc<Caps>,
    ) -> Arc<Self> {
        let per_sec = limits.chunk_requests_per_sec;
        Arc::new(Server {
            provider,
            board,
            streams: Arc::new(Semaphore::new(limits.max_inbound_streams)),
            budget: Arc::new(Semaphore::new(limits.max_send_buffer.max(MAX_REPLY))),
            peers: Mutex::new(HashMap::new()),
            rate: Mutex::new(RateLimiter::new(per_sec, per_sec.saturating_mul(2))),
            counters,
            caps,
            limits,
            firsts: Arc::default(),
        })
    }

    /// Takes a stream slot for `peer`, or `None` if it has too many streams
    /// open or the server as a whole has.
    fn admit(self: &Arc<Self>, peer: PeerId) -> Option<(Slot, Arc<Semaphore>)> {
        let global = self.streams.clone().try_acquire_owned().ok()?;
        let per_peer_budget = self.limits.max_send_buffer_per_peer.max(MAX_REPLY);
        let budget = {
            let mut peers = lock(&self.peers);
            let e = peers.entry(peer).or_insert_with(|| PeerEntry {
                streams: 0,
                budget: Arc::new(Semaphore::new(per_peer_budget)),
            });
            if e.streams >= self.limits.max_inbound_streams_per_peer {
                return None;
            }
            e.streams += 1;
            e.budget.clone()
        };
        Counters::bump(&self.counters.streams);
        let slot = Slot {
            server: self.clone(),
            peer,
            _global: global,
        };
        Some((slot, budget))
    }

    /// Reserves `bytes` from the peer's budget, then the global one, waiting
    /// at most the send timeout.
    async fn reserve(
        &self,
        peer_budget: &Arc<Semaphore>,
        bytes: usize,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let n = permits(bytes);
        let both = async {
            let mine = peer_budget.clone().acquire_many_owned(n).await.ok()?;
            let all = self.budget.clone().acquire_many_owned(n).await.ok()?;
            Some((mine, all))
        };
        tokio::time::timeout(self.limits.send_timeout, both)
            .await
            .ok()
            .flatten()
    }
}

/// Answers every inbound chunk stream until `incoming` ends.
pub(crate) async fn serve(mut incoming: IncomingStreams, server: Arc<Server>) {
    while let Some((peer, stream)) = incoming.next().await {
        let Some((slot, budget)) = server.admit(peer) else {
            Counters::bump(&server.counters.streams_refused);
            debug!(%peer, "too many chunk streams, dropping one");
            continue;
        };
        // Hand off at once: streams arriving while this loop is busy are dropped.
        tokio::spawn(tracing::Instrument::in_current_span(serve_stream(
            slot, budget, stream,
        )));
    }
}

/// Why a stream stops being served.
enum Stop {
    /// Clean end, idle, or an error already logged.
    Done,
    /// A deadline passed while receiving or sending.
    Timeout,
    /// The peer exceeded its request rate.
    Rate,
}

async fn serve_stream(slot: Slot, budget: Arc<Semaphore>, mut stream: Stream) {
    let server = slot.server.clone();
    let peer = slot.peer;
    loop {
        match serve_one(&server, peer, &budget, &mut stream).await {
            Ok(()) => continue,
            Err(Stop::Done) => {}
            Err(Stop::Timeout) => {
                Counters::bump(&server.counters.send_timeouts);
                debug!(%peer, "chunk stream too slow, dropping it");
            }
            Err(Stop::Rate) => {
                Counters::bump(&server.counters.requests_refused);
                debug!(%peer, "peer over its chunk request rate, dropping its stream");
                // Unanswered: the stream is reset, not closed cleanly.
                return;
            }
        }
        break;
    }
    let _ = stream.close().await;
    drop(slot);
}

/// Reads, answers and sends one request.
async fn serve_one(
    server: &Server,
    peer: PeerId,
    budget: &Arc<Semaphore>,
    stream: &mut Stream,
) -> Result<(), Stop> {
    let limits = &server.limits;
    let head =
        match tokio::time::timeout(IDLE_TIMEOUT, chunk_protocol::read_request_head(stream)).await {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) | Err(_) => return Err(Stop::Done),
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "bad chunk request, closing stream");
                return Err(Stop::Done);
            }
        };
    if !lock(&server.rate).check(&peer, Instant::now()) {
        return Err(Stop::Rate);
    }
    let req = match head {
        RequestHead::ManifestChunks(id) => Request::ManifestChunks(id),
        RequestHead::Subscribe(id) => return subscribe(server, peer, budget, stream, id).await,
        RequestHead::Get(count) | RequestHead::Have(count) => {
            // The ids are paid for while they are read (then they are a
            // few hundred KiB at most per stream).
            let paid = server
                .reserve(budget, count * 32)
                .await
                .ok_or(Stop::Timeout)?;
            let read = chunk_protocol::read_ids(stream, count);
            let ids = match tokio::time::timeout(limits.send_timeout, read).await {
                Ok(Ok(ids)) => ids,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "bad request ids, closing stream");
                    return Err(Stop::Done);
                }
                Err(_) => return Err(Stop::Timeout),
            };
            drop(paid);
            match head {
                RequestHead::Get(_) => return get(server, peer, budget, stream, ids).await,
                _ => Request::Have(ids),
            }
        }
    };
    // Pay for the largest reply up front; the payment is trimmed to the
    // real size once the reply exists.
    let (mine, all) = server
        .reserve(budget, MAX_REPLY)
        .await
        .ok_or(Stop::Timeout)?;
    let provider = server.provider.clone();
    let resp = match tokio::task::spawn_blocking(move || answer(&*provider, req)).await {
        Ok(resp) => resp,
        Err(e) => {
            warn!(%peer, error = %e, "chunk provider task failed");
            return Err(Stop::Done);
        }
    };
    send(server, peer, stream, (mine, all), &[resp]).await
}

/// Sends `frames`, holding `paid` trimmed to their size until they are out.
async fn send(
    server: &Server,
    peer: PeerId,
    stream: &mut Stream,
    paid: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    frames: &[Response],
) -> Result<(), Stop> {
    let (mut mine, mut all) = paid;
    let size: usize = frames.iter().map(Response::held_bytes).sum();
    let keep = permits(size) as usize;
    drop(mine.split(mine.num_permits().saturating_sub(keep)));
    drop(all.split(all.num_permits().saturating_sub(keep)));
    let held = Held::new(&server.counters, size);
    // The upload cap: outside the send timeout, which is for the peer.
    let body_bytes: usize = frames
        .iter()
        .map(|f| match f {
            Response::Found(body) => body.len(),
            _ => 0,
        })
        .sum();
    if body_bytes > 0 {
        server.caps.upload(peer, body_bytes).await;
    }
    let write = async {
        for f in frames {
            chunk_protocol::write_response_unflushed(stream, f).await?;
        }
        stream.flush().await
    };
    let sent = tokio::time::timeout(server.limits.send_timeout, write).await;
    drop(held);
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "failed to send chunk response");
            Err(Stop::Done)
        }
        Err(_) => Err(Stop::Timeout),
    }
}

/// Answers a `Get`: the bodies are read in groups of about [`GROUP`] bytes
/// on the blocking pool and sent one frame per id, in order.
async fn get(
    server: &Server,
    peer: PeerId,
    budget: &Arc<Semaphore>,
    stream: &mut Stream,
    ids: Vec<Hash>,
) -> Result<(), Stop> {
    let ids = Arc::new(ids);
    let mut next = 0;
    while next < ids.len() {
        let paid = server
            .reserve(budget, MAX_REPLY)
            .await
            .ok_or(Stop::Timeout)?;
        let provider = server.provider.clone();
        let firsts = server.firsts.clone();
        let group = ids.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut frames: Vec<Response> = Vec::new();
            let mut body = 0;
            let mut i = next;
            while i < group.len() && body < GROUP && frames.len() < GROUP_CHUNKS {
                let f = match firsts.verdict(peer, group[i], Instant::now()) {
                    Verdict::Serve => chunk_frame(&*provider, &group[i]),
                    Verdict::Defer => Response::Elsewhere,
                };
                let len = f.held_bytes() - 1;
                if !frames.is_empty() && body + len > MAX_CHUNK_LEN {
                    // Read again as the first of the next group.
                    break;
                }
                body += len;
                frames.push(f);
                i += 1;
            }
            (frames, i)
        });
        let (frames, end) = match read.await {
            Ok(r) => r,
            Err(e) => {
                warn!(%peer, error = %e, "chunk provider task failed");
                return Err(Stop::Done);
            }
        };
        next = end;
        send(server, peer, stream, paid, &frames).await?;
    }
    Ok(())
}

/// Answers a `Subscribe`: the map (or `All`), then the indices this node
/// newly holds, at most every [`PUSH_EVERY`], until the map is full (`All`,
/// then the stream is closed) or no download updates it any more (the
/// stream is closed). A manifest the node does not hold gets `NotFound`
/// and the stream goes on.
async fn subscribe(
    server: &Server,
    peer: PeerId,
    budget: &Arc<Semaphore>,
    stream: &mut Stream,
    manifest: Hash,
) -> Result<(), Stop> {
    let provider = server.provider.clone();
    let entry = server
        .board
        .get_or_compute(&manifest, move || provider.have_map(&manifest))
        .await;
    let Some(entry) = entry else {
        debug!(%peer, %manifest, "subscription to a manifest not held");
        let paid = server.reserve(budget, 1).await.ok_or(Stop::Timeout)?;
        return send(server, peer, stream, paid, &[Response::NotFound]).await;
    };
    let mut changed = entry.watch();
    let (first, mut cursor) = entry.start();
    let frame = match first {
        Ok(bits) => Response::Map(bits),
        Err(len) => Response::All(len),
    };
    let full = matches!(frame, Response::All(_));
    if full {
        // It downloads what this node holds whole: its first copies count.
        server.firsts.downloader(peer, Instant::now());
    }
    let paid = server
        .reserve(budget, frame.held_bytes())
        .await
        .ok_or(Stop::Timeout)?;
    send(server, peer, stream, paid, &[frame]).await?;
    if full {
        return Err(Stop::Done);
    }
    loop {
        changed.borrow_and_update();
        match entry.next(&mut cursor, chunk_protocol::MAX_ADDED) {
            Next::Added(list) => {
                let frame = Response::Added(list);
                let paid = server
                    .reserve(budget, frame.held_bytes())
                    .await
                    .ok_or(Stop::Timeout)?;
                send(server, peer, stream, paid, &[frame]).await?;
                tokio::time::sleep(PUSH_EVERY).await;
            }
            Next::Full(len) => {
                let paid = server.reserve(budget, 5).await.ok_or(Stop::Timeout)?;
                send(server, peer, stream, paid, &[Response::All(len)]).await?;
                return Err(Stop::Done);
            }
            Next::Closed => return Err(Stop::Done),
            Next::Wait => {
                if changed.changed().await.is_err() {
                    return Err(Stop::Done);
                }
            }
        }
    }
}

/// The frame answering one id of a `Get` (blocking: the provider may hit
/// disk).
fn chunk_frame(provider: &dyn ChunkProvider, id: &Hash) -> Response {
    match provider.chunk(id) {
        Some(body) if body.len() > MAX_CHUNK_LEN => {
            warn!(
                chunk = %id,
                len = body.len(),
                "chunk exceeds the protocol limit, reporting not found"
            );
            Response::NotFound
        }
        Some(body) => Response::Found(body),
        None => Response::NotFound,
    }
}

/// Computes the response to a single-frame request (blocking: the provider
/// may hit disk).
fn answer(provider: &dyn ChunkProvider, req: Request) -> Response {
    match req {
        Request::Have(ids) => {
            let mut flags = provider.have(&ids);
            flags.resize(ids.len(), false);
            Response::Have(flags)
        }
        Request::ManifestChunks(id) => match provider.manifest_chunks(&id) {
            Some(list) if list.len() <= chunk_protocol::MAX_MANIFEST_CHUNKS => {
                Response::ManifestChunks(list)
            }
            _ => Response::NotFound,
        },
        // Answered frame by frame by `get` and `subscribe`, never here.
        Request::Get(_) | Request::Subscribe(_) => Response::NotFound,
    }
}
