//! The I/O of a chunk download: carries out the [`Scheduler`]'s actions
//! (requests to peers, hashing on the blocking pool, batched store writes)
//! and feeds their results back to it as events.
//!
//! The loop sleeps until the next request, hash or write completes, or
//! until the deadline the scheduler names (next have-map refresh, write
//! delay, end of a bench), whichever comes first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;

use super::scheduler::{Action, Delivery, Event, Scheduler};
use super::{Offence, PeerAccounting, Progress, SyncError};
use crate::hash::Hash;
use crate::manifest::ChunkRef;
use crate::net::{self, NetError};
use crate::store::Store;
use crate::task::{blocking, TaskFailed};

/// Fetches `missing` (unique chunks not in the store) from connected peers
/// until all are stored, or `cancelled()` says stop. `cancelled` is checked
/// whenever something completes and at every deadline of the scheduler (at
/// least every second). Offences are reported to `accounting`, and the
/// peers it bans are left out.
pub async fn fetch_chunks(
    client: &net::Client,
    store: &Arc<Store>,
    missing: Vec<ChunkRef>,
    progress: &Progress,
    cancelled: &(dyn Fn() -> bool + Sync),
    accounting: &dyn PeerAccounting,
) -> Result<(), SyncError> {
    if missing.is_empty() {
        return Ok(());
    }
    let mut sched = Scheduler::new(missing, Instant::now());
    let mut work: FuturesUnordered<Task> = FuturesUnordered::new();
    loop {
        if cancelled() {
            return Err(SyncError::Cancelled);
        }
        let mut listed = false;
        for action in sched.poll(Instant::now()) {
            match action {
                Action::Done => return Ok(()),
                Action::ListPeers => {
                    let peers = client.peers().await;
                    let peers = peers
                        .into_iter()
                        .filter(|p| !accounting.is_banned(&p.peer_id))
                        .map(|p| (p.peer_id, p.rtt))
                        .collect();
                    sched.handle(Event::Peers(peers), Instant::now());
                    listed = true;
                }
                Action::AskHave { peer, indices, ids } => {
                    work.push(ask_have(client, peer, indices, ids));
                }
                Action::Fetch { peer, index, id } => work.push(fetch(client, peer, index, id)),
                Action::Write(batch) => work.push(write(store, batch)),
                Action::WrongLength { id, listed, actual } => {
                    return Err(SyncError::WrongLength { id, listed, actual });
                }
            }
        }
        if listed {
            // Poll again at once: the fresh peer list decides the requests.
            continue;
        }
        let deadline = tokio::time::Instant::from_std(sched.next_deadline(Instant::now()));
        let done = if work.is_empty() {
            tokio::time::sleep_until(deadline).await;
            None
        } else {
            tokio::select! {
                done = work.next() => done,
                () = tokio::time::sleep_until(deadline) => None,
            }
        };
        let Some(done) = done else { continue };
        let now = Instant::now();
        match done {
            Done::Have {
                peer,
                indices,
                result: Ok(have),
            } => {
                sched.handle(
                    Event::Have {
                        peer,
                        indices,
                        have,
                    },
                    now,
                );
            }
            Done::Have {
                peer,
                result: Err(e),
                ..
            } => {
                tracing::debug!(%peer, error = %e, "have-map request failed");
                report_error(accounting, peer, &e);
                sched.handle(Event::HaveFailed(peer), now);
            }
            Done::Chunk {
                peer,
                index,
                id,
                started,
                result,
            } => {
                let result = match result {
                    Ok((data, true)) => {
                        accounting.delivered(peer);
                        Delivery::Verified {
                            data,
                            took: now.saturating_duration_since(started),
                        }
                    }
                    Ok((_, false)) => {
                        tracing::warn!(%peer, chunk = %id, "peer sent bytes that do not match the chunk id; banning it");
                        accounting.offence(peer, Offence::WrongBytes);
                        Delivery::WrongBytes
                    }
                    Err(NetError::NotFound) => {
                        // Asked only because its have-map claimed the chunk.
                        tracing::debug!(%peer, chunk = %id, "peer lacks a chunk it claimed");
                        accounting.offence(peer, Offence::FalseHave);
                        Delivery::NotFound
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "chunk request failed");
                        report_error(accounting, peer, &e);
                        Delivery::Failed
                    }
                };
                let event = Event::Chunk {
                    peer,
                    index,
                    result,
                };
                let added = sched.handle(event, now);
                progress.bytes_down.fetch_add(added, Ordering::Relaxed);
            }
            Done::Written(r) => {
                let (count, bytes) = r?;
                sched.handle(Event::Written { count }, now);
                progress.done_bytes.fetch_add(bytes, Ordering::Relaxed);
                progress
                    .done_chunks
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Reports the offence a failed request shows, if any: a timeout or a
/// malformed answer is the peer's doing, a lost connection need not be.
fn report_error(accounting: &dyn PeerAccounting, peer: PeerId, e: &NetError) {
    match e {
        NetError::Timeout => accounting.offence(peer, Offence::Stall),
        NetError::Protocol(_) => accounting.offence(peer, Offence::Malformed),
        _ => {}
    }
}

/// A request, hash or write in progress.
type Task = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A completed [`Task`].
enum Done {
    Have {
        peer: PeerId,
        indices: Vec<usize>,
        result: Result<Vec<bool>, NetError>,
    },
    Chunk {
        peer: PeerId,
        index: usize,
        id: Hash,
        started: Instant,
        /// The bytes and whether they hash to `id`.
        result: Result<(Vec<u8>, bool), NetError>,
    },
    /// Chunks and bytes written.
    Written(Result<(usize, u64), SyncError>),
}

/// Asks `peer` which of `ids` it holds.
fn ask_have(client: &net::Client, peer: PeerId, indices: Vec<usize>, ids: Vec<Hash>) -> Task {
    let c = client.clone();
    Box::pin(async move {
        let result = c.fetch_have(peer, ids).await;
        Done::Have {
            peer,
            indices,
            result,
        }
    })
}

/// Fetches a chunk and hashes it off the async threads.
fn fetch(client: &net::Client, peer: PeerId, index: usize, id: Hash) -> Task {
    let c = client.clone();
    Box::pin(async move {
        let started = Instant::now();
        let result = match c.fetch_chunk(peer, id).await {
            Ok(data) => blocking("verifying a chunk", move || {
                let ok = Hash::of(&data) == id;
                Ok::<_, TaskFailed>((data, ok))
            })
            .await
            .map_err(|e| NetError::Stream(e.to_string())),
            Err(e) => Err(e),
        };
        Done::Chunk {
            peer,
            index,
            id,
            started,
            result,
        }
    })
}

/// Writes and indexes a batch of verified chunks on the blocking pool.
fn write(store: &Arc<Store>, batch: Vec<(Hash, Vec<u8>)>) -> Task {
    let s = store.clone();
    Box::pin(async move {
        let count = batch.len();
        let bytes: u64 = batch.iter().map(|(_, d)| d.len() as u64).sum();
        let r = blocking("writing chunks", move || s.put_chunks(&batch)).await;
        Done::Written(r.map(|_| (count, bytes)).map_err(SyncError::from))
    })
}
