//! The I/O of a chunk download: carries out the [`Scheduler`]'s actions
//! (batched requests to peers, have-map subscriptions and polls, batched
//! store writes) and feeds their results back to it as events.
//!
//! Every request, subscription and write runs as a task of its own and
//! reports on one channel; the loop takes whatever has arrived, all of it,
//! before asking the scheduler what to do next, so ten thousand small
//! chunks a second cost a few hundred polls, not ten thousand. It sleeps
//! until something arrives or until the deadline the scheduler names.
//!
//! When the chunks are a manifest's, each peer is subscribed to for its
//! have-map over the manifest's chunk order (updates are pushed by the
//! peer), and this node's own progress is posted on the
//! [`crate::net::HaveBoard`] for the peers subscribed to it. Peers that have
//! no map for the manifest are asked about ids instead.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::order::{OrderRef, Wanted};
use super::scheduler::{Action, Delivery, Event, Scheduler};
use super::{Offence, PeerAccounting, Progress, SyncError};
use crate::hash::Hash;
use crate::net::{self, BoardHandle, ChunkAnswer, HaveUpdate, NetError};
use crate::store::Store;
use crate::task::blocking;

/// A peer whose subscription ended is subscribed to again after this long.
const RESUBSCRIBE: Duration = Duration::from_secs(2);
/// Chunks at least this large are hashed on the blocking pool.
const HASH_OFF_THREAD: usize = 64 << 10;
/// Notes taken in one go before the scheduler is polled again.
const MAX_NOTES: usize = 8192;

/// Fetches `wanted` (unique chunks not in the store) from connected peers
/// until all are stored, or `cancelled()` says stop. `cancelled` is checked
/// whenever something completes and at every deadline of the scheduler (at
/// least every second). Offences are reported to `accounting`, and the
/// peers it bans are left out.
pub async fn fetch_chunks(
    client: &net::Client,
    store: &Arc<Store>,
    wanted: impl Into<Wanted>,
    progress: &Progress,
    cancelled: &(dyn Fn() -> bool + Sync),
    accounting: &dyn PeerAccounting,
) -> Result<(), SyncError> {
    let Wanted { chunks, order } = wanted.into();
    if chunks.is_empty() {
        return Ok(());
    }
    let mut sched = Scheduler::new(chunks, order.is_none(), Instant::now());
    let mut d = Driver {
        client,
        store,
        accounting,
        progress,
        links: order.map(|o| Links::new(client, o)),
        tasks: JoinSet::new(),
        notes: mpsc::unbounded_channel(),
    };
    loop {
        if cancelled() {
            return Err(SyncError::Cancelled);
        }
        let mut listed = false;
        for action in sched.poll(Instant::now()) {
            match action {
                Action::Done => return Ok(()),
                Action::ListPeers => {
                    d.list_peers(&mut sched).await;
                    listed = true;
                }
                Action::AskHave { peer, indices, ids } => d.ask_have(peer, indices, ids),
                Action::Fetch { peer, indices, ids } => d.fetch(peer, indices, ids),
                Action::Write(batch) => d.write(batch),
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
        let first = tokio::select! {
            note = d.notes.1.recv() => note,
            () = tokio::time::sleep_until(deadline) => None,
        };
        let Some(first) = first else { continue };
        d.take(&mut sched, first)?;
        for _ in 1..MAX_NOTES {
            match d.notes.1.try_recv() {
                Ok(note) => d.take(&mut sched, note)?,
                Err(_) => break,
            }
        }
    }
}

/// What the tasks report.
enum Note {
    Chunk {
        peer: PeerId,
        index: u32,
        result: Delivery,
        waited: Option<Duration>,
    },
    Failed {
        peer: PeerId,
        indices: Vec<u32>,
        error: NetError,
    },
    Have {
        peer: PeerId,
        indices: Vec<u32>,
        result: Result<Vec<bool>, NetError>,
    },
    Sub {
        peer: PeerId,
        update: Result<Option<HaveUpdate>, NetError>,
    },
    /// Chunks (indices) and bytes written.
    Written(Result<(Vec<u32>, u64), SyncError>),
}

/// The subscriptions of a download of a manifest's chunks.
struct Links {
    manifest: Hash,
    len: u32,
    /// Index in the chunk order of each chunk of the download.
    positions: Vec<u32>,
    /// Chunk of the download at each index of the order (`u32::MAX`: not
    /// part of it).
    locals: Vec<u32>,
    /// Per peer: subscribed (`None`), or when to subscribe again.
    subs: HashMap<PeerId, Option<Instant>>,
    /// This node's own map, for its subscribers.
    board: BoardHandle,
}

impl Links {
    fn new(client: &net::Client, o: OrderRef) -> Self {
        let mut locals = vec![u32::MAX; o.len as usize];
        for (k, &g) in o.positions.iter().enumerate() {
            locals[g as usize] = k as u32;
        }
        let board = client.have_board().open(o.manifest, o.held);
        Links {
            manifest: o.manifest,
            len: o.len,
            positions: o.positions,
            locals,
            subs: HashMap::new(),
            board,
        }
    }

    /// Chunks of the download among indices of the order.
    fn local(&self, order: impl IntoIterator<Item = u32>) -> Vec<u32> {
        order
            .into_iter()
            .filter_map(|g| self.locals.get(g as usize).copied())
            .filter(|&k| k != u32::MAX)
            .collect()
    }
}

struct Driver<'a> {
    client: &'a net::Client,
    store: &'a Arc<Store>,
    accounting: &'a dyn PeerAccounting,
    progress: &'a Progress,
    links: Option<Links>,
    /// Every task of the download: aborted when it ends, however it ends.
    tasks: JoinSet<()>,
    notes: (mpsc::UnboundedSender<Note>, mpsc::UnboundedReceiver<Note>),
}

impl Driver<'_> {
    /// Lists the peers for the scheduler, and subscribes to those not
    /// subscribed to yet.
    async fn list_peers(&mut self, sched: &mut Scheduler) {
        let peers: Vec<(PeerId, Option<Duration>)> = self
            .client
            .peers()
            .await
            .into_iter()
            .filter(|p| !self.accounting.is_banned(&p.peer_id))
            .map(|p| (p.peer_id, p.rtt))
            .collect();
        let now = Instant::now();
        if let Some(links) = &mut self.links {
            for (peer, _) in &peers {
                let due = links
                    .subs
                    .get(peer)
                    .is_none_or(|at| at.is_some_and(|t| t <= now));
                if !due {
                    continue;
                }
                links.subs.insert(*peer, None);
                let (c, tx, peer, m, len) = (
                    self.client.clone(),
                    self.notes.0.clone(),
                    *peer,
                    links.manifest,
                    links.len,
                );
                self.tasks
                    .spawn(subscribe(c, tx, peer, m, len).in_current_span());
            }
        }
        sched.handle(Event::Peers(peers), now);
    }

    fn ask_have(&mut self, peer: PeerId, indices: Vec<u32>, ids: Vec<Hash>) {
        let (c, tx) = (self.client.clone(), self.notes.0.clone());
        self.tasks.spawn(
            async move {
                let result = c.fetch_have(peer, ids).await;
                let _ = tx.send(Note::Have {
                    peer,
                    indices,
                    result,
                });
            }
            .in_current_span(),
        );
    }

    fn fetch(&mut self, peer: PeerId, indices: Vec<u32>, ids: Vec<Hash>) {
        let (c, tx) = (self.client.clone(), self.notes.0.clone());
        self.tasks
            .spawn(fetch_batch(c, tx, peer, indices, ids).in_current_span());
    }

    fn write(&mut self, batch: Vec<(u32, Hash, Vec<u8>)>) {
        let (s, tx) = (self.store.clone(), self.notes.0.clone());
        self.tasks.spawn(
            async move {
                let indices: Vec<u32> = batch.iter().map(|(i, _, _)| *i).collect();
                let bytes: u64 = batch.iter().map(|(_, _, d)| d.len() as u64).sum();
                let chunks: Vec<(Hash, Vec<u8>)> =
                    batch.into_iter().map(|(_, id, d)| (id, d)).collect();
                let r = blocking("writing chunks", move || {
                    let r = s.put_chunks(&chunks);
                    // The bodies' buffers come round again for the next reads.
                    for (_, data) in chunks {
                        crate::store::buffers::give(data);
                    }
                    r
                })
                .await;
                let r = r.map(|_| (indices, bytes)).map_err(SyncError::from);
                let _ = tx.send(Note::Written(r));
            }
            .in_current_span(),
        );
    }

    /// Hands one note to the scheduler (and the accounting, and the board).
    fn take(&mut self, sched: &mut Scheduler, note: Note) -> Result<(), SyncError> {
        let now = Instant::now();
        match note {
            Note::Chunk {
                peer,
                index,
                result,
                waited,
            } => {
                match &result {
                    Delivery::WrongBytes => {
                        let id = sched.chunk_id(index);
                        tracing::warn!(%peer, chunk = ?id, "peer sent bytes that do not match the chunk id; banning it");
                        self.accounting.offence(peer, Offence::WrongBytes);
                    }
                    Delivery::NotFound => {
                        // Asked only because its have-map claimed the chunk.
                        tracing::debug!(%peer, "peer lacks a chunk it claimed");
                        self.accounting.offence(peer, Offence::FalseHave);
                    }
                    Delivery::Verified(_) => self.accounting.delivered(peer),
                    // It gave its first copy to another downloader: no fault.
                    Delivery::Elsewhere => {}
                }
                let event = Event::Chunk {
                    peer,
                    index,
                    result,
                    waited,
                };
                let added = sched.handle(event, now);
                self.progress.bytes_down.fetch_add(added, Ordering::Relaxed);
            }
            Note::Failed {
                peer,
                indices,
                error,
            } => {
                tracing::debug!(%peer, %error, chunks = indices.len(), "chunk request failed");
                report_error(self.accounting, peer, &error);
                sched.handle(Event::Failed { peer, indices }, now);
            }
            Note::Have {
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
            Note::Have {
                peer,
                result: Err(e),
                ..
            } => {
                tracing::debug!(%peer, error = %e, "have request failed");
                report_error(self.accounting, peer, &e);
                sched.handle(Event::HaveFailed(peer), now);
            }
            Note::Sub { peer, update } => self.on_sub(sched, peer, update, now),
            Note::Written(r) => {
                let (indices, bytes) = r?;
                sched.handle(
                    Event::Written {
                        count: indices.len(),
                    },
                    now,
                );
                self.progress.done_bytes.fetch_add(bytes, Ordering::Relaxed);
                self.progress
                    .done_chunks
                    .fetch_add(indices.len() as u64, Ordering::Relaxed);
                if let Some(l) = &self.links {
                    l.board
                        .add(indices.iter().map(|&k| l.positions[k as usize]));
                }
            }
        }
        Ok(())
    }

    fn on_sub(
        &mut self,
        sched: &mut Scheduler,
        peer: PeerId,
        update: Result<Option<HaveUpdate>, NetError>,
        now: Instant,
    ) {
        let Some(l) = &mut self.links else { return };
        let event = match update {
            Ok(Some(HaveUpdate::All)) => Event::HaveAll(peer),
            Ok(Some(HaveUpdate::Map(bits))) => {
                sched.handle(Event::HaveReset(peer), now);
                Event::HaveAdd {
                    peer,
                    indices: l.local(bits.iter_ones()),
                }
            }
            Ok(Some(HaveUpdate::Added(list))) => Event::HaveAdd {
                peer,
                indices: l.local(list),
            },
            Ok(None) => {
                // Its download stopped (or it completed): what it holds
                // stays known; ask again in a while.
                l.subs.insert(peer, Some(now + RESUBSCRIBE));
                return;
            }
            Err(NetError::NotFound) => {
                // No map for this manifest: ask it about ids instead.
                l.subs.insert(peer, Some(now + Duration::from_secs(3600)));
                Event::Poll(peer)
            }
            Err(NetError::Unsupported(_)) => {
                // An older node: nothing this download can ask it.
                l.subs.insert(peer, Some(now + Duration::from_secs(3600)));
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "have-map subscription failed");
                report_error(self.accounting, peer, &e);
                l.subs.insert(peer, Some(now + RESUBSCRIBE));
                return;
            }
        };
        sched.handle(event, now);
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

/// Follows `peer`'s have-map over the order until it ends.
async fn subscribe(
    client: net::Client,
    tx: mpsc::UnboundedSender<Note>,
    peer: PeerId,
    manifest: Hash,
    len: u32,
) {
    let mut sub = match client.subscribe_have(peer, manifest, len).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Note::Sub {
                peer,
                update: Err(e),
            });
            return;
        }
    };
    loop {
        let update = sub.next().await;
        let end = !matches!(update, Ok(Some(_)));
        if tx.send(Note::Sub { peer, update }).is_err() || end {
            return;
        }
    }
}

/// One batched request: every answer is verified and reported as it
/// arrives; a failure reports the chunks left unanswered. A large body is
/// hashed on the blocking pool while the next one is read (the hashing
/// task reports it), so reading the stream never waits for a hash.
async fn fetch_batch(
    client: net::Client,
    tx: mpsc::UnboundedSender<Note>,
    peer: PeerId,
    indices: Vec<u32>,
    ids: Vec<Hash>,
) {
    let sent = Instant::now();
    let mut stream = match client.fetch_chunks(peer, ids.clone()).await {
        Ok(s) => s,
        Err(error) => {
            let _ = tx.send(Note::Failed {
                peer,
                indices,
                error,
            });
            return;
        }
    };
    let mut waited = Some(sent.elapsed());
    for (k, (&index, id)) in indices.iter().zip(ids).enumerate() {
        let result = match stream.next().await {
            Some(Ok(ChunkAnswer::Found(body))) => {
                let data = Vec::from(body);
                if data.len() >= HASH_OFF_THREAD {
                    verify_off_thread(tx.clone(), peer, index, id, data, waited.take());
                    continue;
                }
                Ok(verify(data, id))
            }
            Some(Ok(ChunkAnswer::NotFound)) => Ok(Delivery::NotFound),
            Some(Ok(ChunkAnswer::Elsewhere)) => Ok(Delivery::Elsewhere),
            Some(Err(e)) => Err(e),
            None => Err(NetError::Protocol("answer ended early".into())),
        };
        let note = match result {
            Ok(result) => Note::Chunk {
                peer,
                index,
                result,
                waited: waited.take(),
            },
            Err(error) => {
                let _ = tx.send(Note::Failed {
                    peer,
                    indices: indices[k..].to_vec(),
                    error,
                });
                return;
            }
        };
        if tx.send(note).is_err() {
            return;
        }
    }
}

/// Whether `data` hashes to `id`.
fn verify(data: Vec<u8>, id: Hash) -> Delivery {
    if Hash::of(&data) == id {
        Delivery::Verified(data)
    } else {
        Delivery::WrongBytes
    }
}

/// Hashes a body on the blocking pool and reports it from there: one task
/// hop per chunk, and the stream is read on meanwhile.
fn verify_off_thread(
    tx: mpsc::UnboundedSender<Note>,
    peer: PeerId,
    index: u32,
    id: Hash,
    data: Vec<u8>,
    waited: Option<Duration>,
) {
    /// Reports the chunk failed if the hashing never reports it (a panic):
    /// the scheduler must hear about every chunk it asked for.
    struct Report(Option<(mpsc::UnboundedSender<Note>, PeerId, u32)>);
    impl Drop for Report {
        fn drop(&mut self) {
            if let Some((tx, peer, index)) = self.0.take() {
                let _ = tx.send(Note::Failed {
                    peer,
                    indices: vec![index],
                    error: NetError::Stream("verifying a chunk failed".into()),
                });
            }
        }
    }
    let span = tracing::Span::current();
    let mut report = Report(Some((tx, peer, index)));
    tokio::task::spawn_blocking(move || {
        let result = span.in_scope(|| verify(data, id));
        if let Some((tx, peer, index)) = report.0.take() {
            let _ = tx.send(Note::Chunk {
                peer,
                index,
                result,
                waited,
            });
        }
    });
}
