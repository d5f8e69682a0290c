//! The decisions of a chunk download, without I/O: which chunk to ask of
//! which peer, when to refresh have-maps, when to write what arrived, and
//! when the download is complete.
//!
//! [`Scheduler`] is a state machine. The driver feeds it [`Event`]s (the
//! peer list, have-map answers, chunk results, finished writes) and asks
//! [`Scheduler::poll`] what to do next, getting [`Action`]s back. Time is
//! passed in as `now` on every call, never read from the system clock, so
//! every rule (refresh intervals, write delay, benches) can be tested by
//! moving the clock by hand.
//!
//! The rules, in the order `poll` applies them:
//! 1. have-maps are refreshed every [`REFRESH`] (every [`REFRESH_LARGE`]
//!    while more than [`LARGE`] chunks are needed): the driver lists the
//!    connected peers, then each peer without an outstanding have request
//!    is asked about every chunk not yet received;
//! 2. unless [`MAX_BUFFERED`] bytes wait for the disk, the rarest needed
//!    chunks go to the holders expected to answer soonest ([`Peers`]), at
//!    most [`MAX_PER_PEER`](super::MAX_PER_PEER) per peer and [`MAX_TOTAL`] in all; once no
//!    chunk is left without a request, each one with a single request gets a
//!    second on another holder (endgame);
//! 3. verified chunks are handed out for writing in batches of
//!    [`WRITE_BATCH`] bytes, or after [`WRITE_DELAY`], one batch at a time.
//!
//! A request unanswered past its peer's deadline (see [`Peers`]) is given
//! up before step 2, so its chunk is asked of another holder. A chunk whose
//! bytes hash right but whose length is not the one listed stops the
//! download with [`Action::WrongLength`]: the list it came from lied.

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::peers::Peers;
use crate::hash::Hash;
use crate::manifest::ChunkRef;
use crate::net::MAX_HAVE_IDS;

/// Requests in flight in total.
pub const MAX_TOTAL: usize = 32;
/// How often have-maps and the peer list are refreshed during a download:
/// often, so chunks that other mirrors just received are fetched from them
/// rather than from the source...
pub(super) const REFRESH: Duration = Duration::from_millis(250);
/// ... but less often for very large versions, whose have requests are big.
const REFRESH_LARGE: Duration = Duration::from_secs(1);
/// Needed chunks above which [`REFRESH_LARGE`] applies.
const LARGE: usize = 16_384;
/// Verified chunks are written and indexed in batches of about this size.
const WRITE_BATCH: usize = 16 << 20;
/// ... or after this long.
const WRITE_DELAY: Duration = Duration::from_millis(200);
/// Verified bytes waiting for the disk (beyond the batch being written) at
/// which no new request starts: memory stays bounded when the disk is
/// slower than the network.
const MAX_BUFFERED: usize = 2 * WRITE_BATCH;

/// A chunk's download state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Not received, no request in flight.
    Needed,
    /// Requests in flight for it (2 in the endgame).
    InFlight(u8),
    /// Received and verified (perhaps not written yet).
    Done,
}

/// What happened, as the driver tells the scheduler.
#[derive(Debug)]
pub(crate) enum Event {
    /// The peers connected now, with their last ping RTT: the answer to
    /// [`Action::ListPeers`]. Peers missing from it are gone (once nothing
    /// is in flight to them).
    Peers(Vec<(PeerId, Option<Duration>)>),
    /// A peer's answer to [`Action::AskHave`]: `have[k]` is for `indices[k]`.
    Have {
        /// Who answered.
        peer: PeerId,
        /// The chunk indices asked about.
        indices: Vec<usize>,
        /// Which of them it holds.
        have: Vec<bool>,
    },
    /// A have request failed (counts as a failure of the peer).
    HaveFailed(PeerId),
    /// The result of an [`Action::Fetch`].
    Chunk {
        /// The peer asked.
        peer: PeerId,
        /// The chunk's index in the download.
        index: usize,
        /// What came back.
        result: Delivery,
    },
    /// A batch from [`Action::Write`] of `count` chunks is stored.
    Written {
        /// Chunks in the batch.
        count: usize,
    },
}

/// The result of one chunk request.
pub(crate) enum Delivery {
    /// Bytes that hash to the chunk id.
    Verified {
        /// The chunk.
        data: Vec<u8>,
        /// From sending the request to verifying the answer.
        took: Duration,
    },
    /// Bytes that do not hash to the chunk id: the peer is banned.
    WrongBytes,
    /// The peer does not hold the chunk after all.
    NotFound,
    /// Timeout, stream or protocol error.
    Failed,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delivery::Verified { data, took } => {
                write!(f, "Verified({} bytes in {took:?})", data.len())
            }
            Delivery::WrongBytes => f.write_str("WrongBytes"),
            Delivery::NotFound => f.write_str("NotFound"),
            Delivery::Failed => f.write_str("Failed"),
        }
    }
}

/// What the driver should do next.
pub(crate) enum Action {
    /// List the connected peers and answer with [`Event::Peers`] before
    /// polling again.
    ListPeers,
    /// Ask `peer` which of `ids` (chunks `indices`) it holds; answer with
    /// [`Event::Have`] or [`Event::HaveFailed`].
    AskHave {
        /// Whom to ask.
        peer: PeerId,
        /// The chunk indices, at most [`MAX_HAVE_IDS`].
        indices: Vec<usize>,
        /// Their ids, in the same order.
        ids: Vec<Hash>,
    },
    /// Fetch chunk `index` (`id`) from `peer`, verify it and answer with
    /// [`Event::Chunk`].
    Fetch {
        /// Whom to ask.
        peer: PeerId,
        /// The chunk's index in the download.
        index: usize,
        /// Its id.
        id: Hash,
    },
    /// Store these verified chunks and answer with [`Event::Written`].
    Write(Vec<(Hash, Vec<u8>)>),
    /// Chunk `id` arrived with the right hash but not the length listed:
    /// the chunk list is false, stop this download. Comes alone.
    WrongLength {
        /// The chunk.
        id: Hash,
        /// The length the list gave.
        listed: u32,
        /// Its real length.
        actual: usize,
    },
    /// Every chunk is stored: the download is complete.
    Done,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::ListPeers => f.write_str("ListPeers"),
            Action::AskHave { peer, indices, .. } => {
                write!(f, "AskHave({peer}, {} chunks)", indices.len())
            }
            Action::Fetch { peer, index, .. } => write!(f, "Fetch({peer}, {index})"),
            Action::Write(batch) => write!(f, "Write({} chunks)", batch.len()),
            Action::WrongLength { id, listed, actual } => {
                write!(f, "WrongLength({id}: {listed} listed, {actual} real)")
            }
            Action::Done => f.write_str("Done"),
        }
    }
}

/// The state of one download of a set of chunks.
pub(crate) struct Scheduler {
    chunks: Vec<ChunkRef>,
    state: Vec<Slot>,
    /// Chunks in [`Slot::Needed`].
    needed: usize,
    /// Chunks not yet [`Slot::Done`].
    remaining: usize,
    /// Chunks not yet reported written.
    unwritten: usize,
    peers: Peers,
    /// Rarest-first order, recomputed when have-maps change (not per
    /// request: that would cost O(chunks x peers) for every chunk).
    order: Vec<usize>,
    order_dirty: bool,
    last_refresh: Option<Instant>,
    /// The peer list was refreshed: ask have-maps at the next poll.
    ask_have: bool,
    /// Verified chunks not yet handed out for writing.
    buffer: Vec<(Hash, Vec<u8>)>,
    buffered: usize,
    writing: bool,
    last_write: Instant,
    /// A chunk arrived whose length is not the listed one: (index, length).
    wrong_length: Option<(usize, usize)>,
}

impl Scheduler {
    /// A download of `chunks` (unique, none in the store yet) starting at `now`.
    pub fn new(chunks: Vec<ChunkRef>, now: Instant) -> Self {
        let n = chunks.len();
        Scheduler {
            chunks,
            state: vec![Slot::Needed; n],
            needed: n,
            remaining: n,
            unwritten: n,
            peers: Peers::new(n),
            order: Vec::new(),
            order_dirty: true,
            last_refresh: None,
            ask_have: false,
            buffer: Vec::new(),
            buffered: 0,
            writing: false,
            last_write: now,
            wrong_length: None,
        }
    }

    /// Takes in what happened at `now`. Returns the bytes of a newly
    /// received chunk (0 for every other event and for duplicates), which
    /// the driver adds to the bytes received.
    pub fn handle(&mut self, event: Event, now: Instant) -> u64 {
        match event {
            Event::Peers(list) => {
                for (id, rtt) in list {
                    self.peers.connected(id, rtt);
                }
                self.peers.retain_connected();
            }
            Event::Have {
                peer,
                indices,
                have,
            } => {
                self.peers.set_have_pending(&peer, false);
                self.peers.update_have(&peer, &indices, &have);
                self.order_dirty = true;
            }
            Event::HaveFailed(peer) => {
                self.peers.set_have_pending(&peer, false);
                self.peers.failed(&peer, Duration::ZERO, now);
            }
            Event::Chunk {
                peer,
                index,
                result,
            } => return self.on_chunk(peer, index, result, now),
            Event::Written { count } => {
                self.writing = false;
                self.last_write = now;
                self.unwritten = self.unwritten.saturating_sub(count);
            }
        }
        0
    }

    fn on_chunk(&mut self, peer: PeerId, i: usize, result: Delivery, now: Instant) -> u64 {
        // A late request's chunk was already moved on: its answer changes
        // what is known of the peer, and a verified body is still taken,
        // but a failure must not release the chunk a second time.
        let (took, late) = self
            .peers
            .finished(&peer, i, now)
            .unwrap_or((Duration::ZERO, true));
        match result {
            Delivery::Verified { data, took } => {
                self.peers.succeeded(&peer, took);
                if self.state[i] != Slot::Done {
                    let len = data.len();
                    if len != self.chunks[i].len as usize {
                        self.wrong_length.get_or_insert((i, len));
                        return 0;
                    }
                    self.set(i, Slot::Done);
                    self.buffered += len;
                    self.buffer.push((self.chunks[i].id, data));
                    return len as u64;
                }
            }
            Delivery::WrongBytes => {
                self.peers.ban(&peer, now);
                if !late {
                    self.release(i);
                }
                self.order_dirty = true;
            }
            Delivery::NotFound => {
                self.peers.lacks(&peer, i, took, now);
                if !late {
                    self.release(i);
                }
                self.order_dirty = true;
            }
            Delivery::Failed => {
                self.peers.failed(&peer, took, now);
                if !late {
                    self.release(i);
                }
            }
        }
        0
    }

    /// What to do at `now`. [`Action::ListPeers`] comes alone, so the
    /// requests that follow use the fresh peer list; [`Action::Done`] comes
    /// alone once every chunk is written.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        if let Some((i, actual)) = self.wrong_length {
            let c = self.chunks[i];
            return vec![Action::WrongLength {
                id: c.id,
                listed: c.len,
                actual,
            }];
        }
        if self.unwritten == 0 {
            return vec![Action::Done];
        }
        let every = self.refresh_every();
        if self
            .last_refresh
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
        {
            self.last_refresh = Some(now);
            self.ask_have = true;
            return vec![Action::ListPeers];
        }
        // Requests past their peer's deadline: ask another holder.
        for (peer, i) in self.peers.take_overdue(now) {
            tracing::debug!(%peer, chunk = %self.chunks[i].id, "request late; asking another holder");
            self.release(i);
            self.order_dirty = true;
        }
        let mut out = Vec::new();
        if std::mem::take(&mut self.ask_have) {
            self.ask_have_maps(&mut out);
        }
        // Paused while verified chunks wait for the disk (bounded memory).
        if self.remaining > 0 && self.buffered < MAX_BUFFERED {
            self.start_requests(now, &mut out);
        }
        // Write what has arrived, one batch at a time.
        if !self.writing
            && !self.buffer.is_empty()
            && (self.buffered >= WRITE_BATCH
                || now.saturating_duration_since(self.last_write) >= WRITE_DELAY
                || self.remaining == 0)
        {
            self.writing = true;
            self.buffered = 0;
            out.push(Action::Write(std::mem::take(&mut self.buffer)));
        }
        out
    }

    /// The latest time the driver should poll again if nothing happens
    /// before: the next refresh, the write delay, a bench ending, or a
    /// request's deadline.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.last_refresh.map_or(now, |t| t + self.refresh_every());
        if !self.writing && !self.buffer.is_empty() {
            next = next.min(self.last_write + WRITE_DELAY);
        }
        if let Some(t) = self.peers.next_return(now) {
            next = next.min(t);
        }
        if let Some(t) = self.peers.next_overdue() {
            next = next.min(t.max(now));
        }
        next
    }

    fn refresh_every(&self) -> Duration {
        if self.remaining > LARGE {
            REFRESH_LARGE
        } else {
            REFRESH
        }
    }

    /// Asks every known peer without an outstanding have request about
    /// every chunk not yet received.
    fn ask_have_maps(&mut self, out: &mut Vec<Action>) {
        let needed: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| self.state[i] != Slot::Done)
            .collect();
        for peer in self.peers.ids() {
            if self.peers.have_pending(&peer) {
                continue;
            }
            self.peers.set_have_pending(&peer, true);
            for part in needed.chunks(MAX_HAVE_IDS) {
                out.push(Action::AskHave {
                    peer,
                    indices: part.to_vec(),
                    ids: part.iter().map(|&i| self.chunks[i].id).collect(),
                });
            }
        }
    }

    /// Rarest needed chunk first, to the holder expected soonest; then the
    /// endgame.
    fn start_requests(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.order_dirty {
            self.order = self.peers.rarest_first(&self.state);
            self.order_dirty = false;
        }
        let state = &self.state;
        self.order.retain(|&i| state[i] != Slot::Done);
        for k in 0..self.order.len() {
            let i = self.order[k];
            if self.peers.total_inflight() >= MAX_TOTAL {
                break;
            }
            if self.state[i] != Slot::Needed {
                continue;
            }
            let Some(peer) = self.peers.best_holder(i, &[], now) else {
                continue;
            };
            self.set(i, Slot::InFlight(1));
            self.request(peer, i, now, out);
        }
        // Endgame: nothing left to start, so duplicate what is in flight.
        if self.needed == 0 {
            for i in 0..self.chunks.len() {
                if self.peers.total_inflight() >= MAX_TOTAL {
                    break;
                }
                if self.state[i] == Slot::InFlight(1) {
                    let busy = self.peers.fetching(i);
                    if let Some(peer) = self.peers.best_holder(i, &busy, now) {
                        self.set(i, Slot::InFlight(2));
                        self.request(peer, i, now, out);
                    }
                }
            }
        }
    }

    fn request(&mut self, peer: PeerId, i: usize, now: Instant, out: &mut Vec<Action>) {
        self.peers.started(&peer, i, now);
        out.push(Action::Fetch {
            peer,
            index: i,
            id: self.chunks[i].id,
        });
    }

    /// Moves chunk `i` to `slot`, keeping the counters right.
    fn set(&mut self, i: usize, slot: Slot) {
        let old = std::mem::replace(&mut self.state[i], slot);
        if old == Slot::Needed {
            self.needed -= 1;
        }
        if slot == Slot::Needed {
            self.needed += 1;
        }
        if old != Slot::Done && slot == Slot::Done {
            self.remaining -= 1;
        }
    }

    /// One request for chunk `i` ended without the chunk.
    fn release(&mut self, i: usize) {
        match self.state[i] {
            Slot::InFlight(2) => self.set(i, Slot::InFlight(1)),
            Slot::InFlight(_) => self.set(i, Slot::Needed),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
