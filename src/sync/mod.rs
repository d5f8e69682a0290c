//! Fetching a version from peers: the manifest first, then every chunk the
//! store lacks, from whichever peers hold it, many requests in flight.
//!
//! Peers are chosen per chunk ([`peers`]): rarest chunk first across the
//! swarm (from have-maps refreshed every 250 ms while a download runs), and
//! for each chunk the holder expected to answer soonest (requests queued
//! there times its recent response time, then RTT). The last requests are
//! duplicated on a second holder (endgame). Every chunk is hashed before it
//! is stored; a peer that sends bytes that do not hash to what was asked is
//! banned for the rest of the download.

mod peers;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;

use crate::announce::Announcement;
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest};
use crate::net::{self, NetError};
use crate::store::{Store, StoreError};
pub(crate) use crate::task::blocking;
use peers::Peers;

/// Requests in flight to one peer.
pub const MAX_PER_PEER: usize = 16;
/// Requests in flight in total.
pub const MAX_TOTAL: usize = 32;
/// How often have-maps and the peer list are refreshed during a download:
/// often, so chunks that other mirrors just received are fetched from them
/// rather than from the source...
const REFRESH: Duration = Duration::from_millis(250);
/// ... but less often for very large versions, whose have requests are big.
const REFRESH_LARGE: Duration = Duration::from_secs(1);
/// Needed chunks above which [`REFRESH_LARGE`] applies.
const LARGE: usize = 16_384;
/// Verified chunks are written and indexed in batches of about this size.
const WRITE_BATCH: usize = 16 << 20;
/// ... or after this long.
const WRITE_DELAY: Duration = Duration::from_millis(200);

/// Why a download stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The store failed (disk full, ...): local, retrying will not help until fixed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No peer could provide the manifest.
    #[error("no peer provided manifest {0}")]
    ManifestUnavailable(Hash),
    /// The caller asked to stop (a newer version arrived, or shutdown).
    #[error("download cancelled")]
    Cancelled,
}

/// Counters a download updates, read by `status` and progress bars.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the version's files already present.
    pub done_bytes: AtomicU64,
    /// Bytes of the version's files.
    pub total_bytes: AtomicU64,
    /// Bytes received from peers (verified), all downloads together.
    pub bytes_down: AtomicU64,
}

/// Fetches the manifest of `a` from peers (unless stored) and returns it.
pub async fn fetch_manifest(
    client: &net::Client,
    store: &Arc<Store>,
    a: &Announcement,
    progress: &Progress,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Manifest, SyncError> {
    let id = a.manifest;
    let s = store.clone();
    if blocking("checking for the manifest", move || s.has_manifest(&id)).await? {
        let s = store.clone();
        return Ok(blocking("reading the manifest", move || s.manifest(&id)).await?);
    }
    let mut tried = HashSet::new();
    loop {
        if cancelled() {
            return Err(SyncError::Cancelled);
        }
        let peers = client.peers().await;
        let Some(peer) = peers.iter().map(|p| p.peer_id).find(|p| !tried.contains(p)) else {
            if tried.is_empty() {
                tokio::time::sleep(REFRESH).await;
                continue;
            }
            // Everyone was asked once; start over after a pause.
            tried.clear();
            tokio::time::sleep(REFRESH).await;
            continue;
        };
        tried.insert(peer);
        let refs = match client.fetch_manifest_chunks(peer, id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "manifest chunk list not available");
                continue;
            }
        };
        let sum: u64 = refs.iter().map(|c| c.len as u64).sum();
        if sum != a.manifest_size || refs.iter().any(|c| c.len == 0) {
            tracing::warn!(%peer, "peer sent a manifest chunk list that does not match the announcement");
            continue;
        }
        let missing = {
            let s = store.clone();
            let refs = refs.clone();
            blocking("listing missing manifest chunks", move || {
                let mut out = Vec::new();
                for c in refs {
                    if !s.has_chunk(&c.id)? {
                        out.push(c);
                    }
                }
                Ok::<_, StoreError>(out)
            })
            .await?
        };
        fetch_chunks(client, store, missing, progress, cancelled).await?;
        let s = store.clone();
        let size = a.manifest_size;
        match blocking("assembling the manifest", move || {
            s.assemble_manifest(&id, size, &refs)
        })
        .await
        {
            Ok(m) => return Ok(m),
            Err(StoreError::Manifest(e)) => {
                // Signed by the master yet invalid: no peer can fix that.
                tracing::warn!(%peer, error = %e, "announced manifest is invalid");
                return Err(StoreError::Manifest(e).into());
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "assembling the manifest failed");
            }
        }
    }
}

/// Fetches `missing` (unique chunks not in the store) from connected peers
/// until all are stored, or `cancelled()` says stop.
pub async fn fetch_chunks(
    client: &net::Client,
    store: &Arc<Store>,
    missing: Vec<ChunkRef>,
    progress: &Progress,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(), SyncError> {
    if missing.is_empty() {
        return Ok(());
    }
    let n = missing.len();
    let mut state = vec![Slot::Needed; n];
    let mut remaining = n;
    let mut peers = Peers::new(n);
    let mut work = FuturesUnordered::new();
    let mut last_refresh: Option<Instant> = None;
    let mut buffer: Vec<(Hash, Vec<u8>)> = Vec::new();
    let mut buffered = 0usize;
    let mut writing = false;
    let mut last_write = Instant::now();
    let mut unwritten = n;
    // Rarest-first order, recomputed when have-maps change (not per request:
    // that would cost O(chunks x peers) for every chunk).
    let mut order: Vec<usize> = Vec::new();
    let mut order_dirty = true;

    while unwritten > 0 {
        if cancelled() {
            return Err(SyncError::Cancelled);
        }
        let every = if remaining > LARGE {
            REFRESH_LARGE
        } else {
            REFRESH
        };
        if last_refresh.is_none_or(|t| t.elapsed() >= every) {
            last_refresh = Some(Instant::now());
            for info in client.peers().await {
                peers.connected(info.peer_id, info.rtt);
            }
            peers.retain_connected();
            let needed: Vec<usize> = (0..n).filter(|&i| state[i] != Slot::Done).collect();
            for peer in peers.ids() {
                if peers.have_pending(&peer) {
                    continue;
                }
                peers.set_have_pending(&peer, true);
                for part in needed.chunks(net::MAX_HAVE_IDS) {
                    let ids: Vec<Hash> = part.iter().map(|&i| missing[i].id).collect();
                    let idx = part.to_vec();
                    let c = client.clone();
                    work.push(Box::pin(async move {
                        Done::Have(peer, idx, c.fetch_have(peer, ids).await)
                    }) as Task);
                }
            }
        }

        // Schedule: rarest needed chunk first, to the holder expected soonest;
        // paused while verified chunks wait for the disk (bounded memory).
        if remaining > 0 && buffered < 2 * WRITE_BATCH {
            if order_dirty {
                order = peers.rarest_first(&state);
                order_dirty = false;
            }
            order.retain(|&i| state[i] != Slot::Done);
            for &i in &order {
                if peers.total_inflight() >= MAX_TOTAL {
                    break;
                }
                if state[i] != Slot::Needed {
                    continue;
                }
                let Some(peer) = peers.best_holder(i, &[]) else {
                    continue;
                };
                state[i] = Slot::InFlight(1);
                work.push(fetch(client, peer, i, missing[i].id));
                peers.started(&peer, i);
            }
            // Endgame: nothing left to start, so duplicate what is in flight.
            if !state.contains(&Slot::Needed) {
                for i in 0..n {
                    if peers.total_inflight() >= MAX_TOTAL {
                        break;
                    }
                    if state[i] == Slot::InFlight(1) {
                        let busy = peers.fetching(i);
                        if let Some(peer) = peers.best_holder(i, &busy) {
                            state[i] = Slot::InFlight(2);
                            work.push(fetch(client, peer, i, missing[i].id));
                            peers.started(&peer, i);
                        }
                    }
                }
            }
        }

        // Write what has arrived, one batch at a time.
        if !writing
            && !buffer.is_empty()
            && (buffered >= WRITE_BATCH || last_write.elapsed() >= WRITE_DELAY || remaining == 0)
        {
            writing = true;
            let batch = std::mem::take(&mut buffer);
            buffered = 0;
            let s = store.clone();
            work.push(Box::pin(async move {
                let count = batch.len();
                let bytes: u64 = batch.iter().map(|(_, d)| d.len() as u64).sum();
                let r = blocking("writing chunks", move || s.put_chunks(&batch)).await;
                Done::Written(r.map(|_| (count, bytes)).map_err(SyncError::from))
            }) as Task);
        }

        let next = tokio::time::timeout(Duration::from_millis(100), work.next()).await;
        let Ok(Some(done)) = next else { continue };
        match done {
            Done::Have(peer, idx, Ok(bits)) => {
                peers.set_have_pending(&peer, false);
                peers.update_have(&peer, &idx, &bits);
                order_dirty = true;
            }
            Done::Have(peer, _, Err(e)) => {
                peers.set_have_pending(&peer, false);
                tracing::debug!(%peer, error = %e, "have-map request failed");
                peers.failed(&peer);
            }
            Done::Chunk(peer, i, started, result) => {
                peers.finished(&peer, i);
                let was = state[i];
                match result {
                    Ok((data, true)) => {
                        peers.succeeded(&peer, started.elapsed());
                        if was != Slot::Done {
                            state[i] = Slot::Done;
                            remaining -= 1;
                            progress
                                .bytes_down
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                            buffered += data.len();
                            buffer.push((missing[i].id, data));
                        }
                    }
                    Ok((_, false)) => {
                        tracing::warn!(%peer, chunk = %missing[i].id, "peer sent bytes that do not match the chunk id; banning it");
                        peers.ban(&peer);
                        release(&mut state, i);
                        order_dirty = true;
                    }
                    Err(NetError::NotFound) => {
                        peers.lacks(&peer, i);
                        release(&mut state, i);
                        order_dirty = true;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "chunk request failed");
                        peers.failed(&peer);
                        release(&mut state, i);
                    }
                }
            }
            Done::Written(r) => {
                writing = false;
                last_write = Instant::now();
                let (count, bytes) = r?;
                unwritten -= count;
                progress.done_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// A chunk's download state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Needed,
    /// Requests in flight for it (2 in the endgame).
    InFlight(u8),
    Done,
}

fn release(state: &mut [Slot], i: usize) {
    state[i] = match state[i] {
        Slot::InFlight(2) => Slot::InFlight(1),
        Slot::InFlight(_) => Slot::Needed,
        s => s,
    };
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

enum Done {
    Have(PeerId, Vec<usize>, Result<Vec<bool>, NetError>),
    Chunk(PeerId, usize, Instant, Result<(Vec<u8>, bool), NetError>),
    Written(Result<(usize, u64), SyncError>),
}

/// Fetches a chunk and hashes it off the async threads.
fn fetch(client: &net::Client, peer: PeerId, i: usize, id: Hash) -> Task {
    let c = client.clone();
    Box::pin(async move {
        let started = Instant::now();
        let r = match c.fetch_chunk(peer, id).await {
            Ok(data) => tokio::task::spawn_blocking(move || {
                let ok = Hash::of(&data) == id;
                (data, ok)
            })
            .await
            .map_err(|e| NetError::Stream(e.to_string())),
            Err(e) => Err(e),
        };
        Done::Chunk(peer, i, started, r)
    })
}
