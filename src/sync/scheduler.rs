//! The decisions of a chunk download, without I/O: which chunks to ask of
//! which peer, when to refresh the peer list, when to write what arrived,
//! and when the download is complete.
//!
//! [`Scheduler`] is a state machine. The driver feeds it [`Event`]s (the
//! peer list, have-map updates, chunk results, finished writes) and asks
//! [`Scheduler::poll`] what to do next, getting [`Action`]s back. Time is
//! passed in as `now` on every call, never read from the system clock, so
//! every rule can be tested by moving the clock by hand.
//!
//! The work per event does not grow with the number of chunks: how many
//! peers hold each chunk is kept up to date as have-maps change, chunks
//! wait in per-peer stacks by rarity class and in [`Pool`]s, and each poll
//! hands out at most [`PICKS_PER_POLL`] chunks. The rules:
//!
//! 1. the peer list is refreshed every [`REFRESH`]; peers without a
//!    have-map subscription are then asked about (a slice of) the chunks
//!    still needed;
//! 2. verified chunks are handed out for writing in batches of
//!    [`WRITE_BATCH`] bytes or [`WRITE_BATCH_CHUNKS`] chunks, or after
//!    [`WRITE_DELAY`], one batch at a time;
//! 3. unless [`MAX_BUFFERED`] bytes (or two batches' chunks) wait for the disk, every peer with a
//!    quarter of its window free pulls: a peer that holds only some chunks
//!    takes its rarest candidates, a seeder (a peer that holds every chunk)
//!    first the chunks no other peer holds. Each chunk pulled goes to the
//!    holder with the earliest expected delivery time that has room (a
//!    seeder counting [`SEEDER_FACTOR`](super::peers::SEEDER_FACTOR) times
//!    longer, so the source is the holder of last resort); the chunks
//!    pulled for a peer leave as one batch;
//! 4. once every chunk left is in flight, a request that waits longer than
//!    it should gets a second on another holder with room (endgame);
//! 5. a peer that answers `Elsewhere` for a chunk (a source that just gave
//!    its first copy to another downloader) is not asked for it again for
//!    [`DECLINE_WAIT`]: the chunk goes to the mirror that got it once that
//!    one announces it, or back to the source after the wait, which then
//!    serves it. Not a failure: the peer keeps its requests.
//!
//! Requests to a peer that make no progress for its deadline are given up
//! before step 3, so their chunks are asked of other holders. A chunk whose
//! bytes hash right but whose length is not the one listed stops the
//! download with [`Action::WrongLength`]: the list it came from lied.

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::peers::{Peer, Peers};
use crate::hash::Hash;
use crate::manifest::ChunkRef;

mod holders;
mod picks;
mod pool;
pub(crate) use pool::Pool;

/// How often the peer list is refreshed (and polled peers asked again).
pub(super) const REFRESH: Duration = Duration::from_millis(250);
/// ... every second while more than [`LARGE`] chunks are needed: polled
/// peers are asked about up to [`MAX_HAVE_IDS`](crate::net::MAX_HAVE_IDS) ids each time.
const REFRESH_LARGE: Duration = Duration::from_secs(1);
/// Needed chunks above which [`REFRESH_LARGE`] applies.
const LARGE: usize = 16_384;
/// Verified chunks are written and indexed in batches of about this size.
const WRITE_BATCH: usize = 16 << 20;
/// ... or of this many chunks: each batch rewrites the index buckets of its
/// chunks (see `store::index`), so a batch of tiny chunks as large as
/// [`WRITE_BATCH`] would rewrite the whole index every time.
const WRITE_BATCH_CHUNKS: usize = 4096;
/// ... or after this long.
const WRITE_DELAY: Duration = Duration::from_millis(200);
/// Verified bytes waiting for the disk (beyond the batch being written) at
/// which no new request starts: memory stays bounded when the disk is
/// slower than the network.
const MAX_BUFFERED: usize = 2 * WRITE_BATCH;
/// In the endgame, a request is duplicated on another holder once it has
/// waited twice as long as it should, and at least this long: so a small
/// download does not ask for everything twice.
const ENDGAME_WAIT: Duration = Duration::from_millis(50);
/// A chunk a peer sent elsewhere is not asked of it again for this long:
/// time for the downloader that got the first copy to announce it. The
/// source answers the next request for it (within at most one more refresh),
/// so a deferral delays a chunk, never withholds it.
pub(super) const DECLINE_WAIT: Duration = Duration::from_secs(4);
/// Chunks examined per poll at most: bounds the work of one poll whatever
/// the number of chunks.
pub(super) const PICKS_PER_POLL: usize = 16_384;

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

/// What happened, as the driver tells the scheduler. Chunk indices are
/// positions in the list the scheduler was made with.
#[derive(Debug)]
pub(crate) enum Event {
    /// The peers connected now, with their last ping RTT: the answer to
    /// [`Action::ListPeers`]. Peers missing from it are gone (once nothing
    /// is in flight to them).
    Peers(Vec<(PeerId, Option<Duration>)>),
    /// `peer` holds every chunk (a seeder).
    HaveAll(PeerId),
    /// Forget what `peer` was known to hold (a full map follows as
    /// [`Event::HaveAdd`]).
    HaveReset(PeerId),
    /// `peer` holds these chunks too.
    HaveAdd {
        /// Who.
        peer: PeerId,
        /// The chunks.
        indices: Vec<u32>,
    },
    /// Ask `peer` about chunk ids from now on (it has no have-map for this
    /// download).
    Poll(PeerId),
    /// A peer's answer to [`Action::AskHave`]: `have[k]` is for `indices[k]`.
    Have {
        /// Who answered.
        peer: PeerId,
        /// The chunk indices asked about.
        indices: Vec<u32>,
        /// Which of them it holds.
        have: Vec<bool>,
    },
    /// A have request failed (counts as a failure of the peer).
    HaveFailed(PeerId),
    /// One answer to an [`Action::Fetch`].
    Chunk {
        /// The peer asked.
        peer: PeerId,
        /// The chunk.
        index: u32,
        /// What came back.
        result: Delivery,
        /// For the first answer of a request: the time since it was sent.
        waited: Option<Duration>,
    },
    /// A request failed for these chunks (one failure of the peer).
    Failed {
        /// The peer asked.
        peer: PeerId,
        /// The chunks that got no answer.
        indices: Vec<u32>,
    },
    /// A batch from [`Action::Write`] of `count` chunks is stored.
    Written {
        /// Chunks in the batch.
        count: usize,
    },
}

/// The result of asking for one chunk.
pub(crate) enum Delivery {
    /// Bytes that hash to the chunk id.
    Verified(Vec<u8>),
    /// Bytes that do not hash to the chunk id: the peer is banned.
    WrongBytes,
    /// The peer does not hold the chunk after all.
    NotFound,
    /// The peer holds it but asks to be asked later (it sent its first copy
    /// to another downloader, which will serve it).
    Elsewhere,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delivery::Verified(data) => write!(f, "Verified({} bytes)", data.len()),
            Delivery::WrongBytes => f.write_str("WrongBytes"),
            Delivery::NotFound => f.write_str("NotFound"),
            Delivery::Elsewhere => f.write_str("Elsewhere"),
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
        /// The chunk indices, at most [`MAX_HAVE_IDS`](crate::net::MAX_HAVE_IDS).
        indices: Vec<u32>,
        /// Their ids, in the same order.
        ids: Vec<Hash>,
    },
    /// Ask `peer` for chunks `indices` (`ids`) in one request, verify each
    /// answer and report it with [`Event::Chunk`] (or [`Event::Failed`]).
    Fetch {
        /// Whom to ask.
        peer: PeerId,
        /// The chunks, at most [`crate::net::MAX_GET_IDS`].
        indices: Vec<u32>,
        /// Their ids, in the same order.
        ids: Vec<Hash>,
    },
    /// Store these verified chunks (index, id, bytes) and answer with
    /// [`Event::Written`].
    Write(Vec<(u32, Hash, Vec<u8>)>),
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
            Action::Fetch { peer, indices, .. } => write!(f, "Fetch({peer}, {indices:?})"),
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
    /// Peers other than seeders known to hold each chunk.
    avail: Vec<u16>,
    /// Chunks in [`Slot::Needed`].
    needed: Pool,
    /// Needed chunks no peer but a seeder holds: what a seeder serves first.
    orphans: Pool,
    /// Chunks with exactly one request in flight (endgame candidates).
    flying: Pool,
    /// Chunks not yet [`Slot::Done`].
    remaining: usize,
    /// Chunks not yet reported written.
    unwritten: usize,
    peers: Peers,
    /// Peers are asked about ids, not subscribed to (a plain chunk list).
    poll_all: bool,
    poll_cursor: usize,
    last_refresh: Option<Instant>,
    /// The peer list was refreshed: ask polled peers at the next poll.
    ask_have: bool,
    /// Verified chunks not yet handed out for writing.
    buffer: Vec<(u32, Hash, Vec<u8>)>,
    buffered: usize,
    writing: bool,
    last_write: Instant,
    /// A chunk arrived whose length is not the listed one: (index, length).
    wrong_length: Option<(u32, usize)>,
    /// Steps taken, for the tests that bound the work per event.
    pub(super) work: u64,
    /// Last debug summary of the download's state.
    last_summary: Instant,
}

impl Scheduler {
    /// A download of `chunks` (unique, none in the store yet) starting at
    /// `now`. With `poll_all`, every peer is asked about ids; otherwise
    /// only those the driver names with [`Event::Poll`].
    pub fn new(chunks: Vec<ChunkRef>, poll_all: bool, now: Instant) -> Self {
        let n = chunks.len();
        Scheduler {
            chunks,
            state: vec![Slot::Needed; n],
            avail: vec![0; n],
            needed: Pool::full_shuffled(n),
            orphans: Pool::full_shuffled(n),
            flying: Pool::new(n),
            remaining: n,
            unwritten: n,
            peers: Peers::default(),
            poll_all,
            poll_cursor: 0,
            last_refresh: None,
            ask_have: false,
            buffer: Vec::new(),
            buffered: 0,
            writing: false,
            last_write: now,
            wrong_length: None,
            work: 0,
            last_summary: now,
        }
    }

    /// The id of chunk `index` of the download, if there is one.
    pub fn chunk_id(&self, index: u32) -> Option<Hash> {
        self.chunks.get(index as usize).map(|c| c.id)
    }

    /// Takes in what happened at `now`. Returns the bytes of a newly
    /// received chunk (0 for every other event and for duplicates), which
    /// the driver adds to the bytes received.
    pub fn handle(&mut self, event: Event, now: Instant) -> u64 {
        match event {
            Event::Peers(list) => self.on_peers(list, now),
            Event::HaveAll(peer) => self.set_seeder(&peer),
            Event::HaveReset(peer) => self.reset_have(&peer),
            Event::HaveAdd { peer, mut indices } => {
                // A random order: mirrors pulling the same map take
                // different chunks first.
                use rand::seq::SliceRandom;
                indices.shuffle(&mut rand::rng());
                for i in indices {
                    self.learn(&peer, i, true);
                }
            }
            Event::Poll(peer) => {
                if let Some(p) = self.peers.map.get_mut(&peer) {
                    p.polled = true;
                    self.ask_have = true;
                }
            }
            Event::Have {
                peer,
                indices,
                have,
            } => {
                if let Some(p) = self.peers.map.get_mut(&peer) {
                    p.poll_pending = false;
                }
                for (i, b) in indices.into_iter().zip(have) {
                    self.learn(&peer, i, b);
                }
            }
            Event::HaveFailed(peer) => {
                if let Some(p) = self.peers.map.get_mut(&peer) {
                    p.poll_pending = false;
                    p.failed(now);
                }
            }
            Event::Chunk {
                peer,
                index,
                result,
                waited,
            } => return self.on_chunk(peer, index, result, waited, now),
            Event::Failed { peer, indices } => {
                let Some(p) = self.peers.map.get_mut(&peer) else {
                    return 0;
                };
                p.failed(now);
                let ended: Vec<(u32, Option<bool>)> =
                    indices.into_iter().map(|i| (i, p.finish(i))).collect();
                for (i, late) in ended {
                    self.ended_without(i, late != Some(false));
                }
            }
            Event::Written { count } => {
                self.writing = false;
                self.last_write = now;
                self.unwritten = self.unwritten.saturating_sub(count);
            }
        }
        0
    }

    fn on_chunk(
        &mut self,
        peer: PeerId,
        i: u32,
        result: Delivery,
        waited: Option<Duration>,
        now: Instant,
    ) -> u64 {
        if (i as usize) >= self.chunks.len() {
            return 0;
        }
        // A late request's chunk was already moved on: its answer changes
        // what is known of the peer, and a verified body is still taken,
        // but a failure must not release the chunk a second time.
        let late = self
            .peers
            .map
            .get_mut(&peer)
            .and_then(|p| p.finish(i))
            .unwrap_or(true);
        match result {
            Delivery::Verified(data) => {
                if let Some(p) = self.peers.map.get_mut(&peer) {
                    p.delivered(data.len(), now, waited);
                }
                if self.state[i as usize] != Slot::Done {
                    let len = data.len();
                    let c = self.chunks[i as usize];
                    if len != c.len as usize {
                        self.wrong_length.get_or_insert((i, len));
                        return 0;
                    }
                    self.set(i, Slot::Done);
                    self.buffered += len;
                    self.buffer.push((i, c.id, data));
                    return len as u64;
                }
            }
            Delivery::WrongBytes => {
                self.ban(&peer, now);
                self.ended_without(i, late);
            }
            Delivery::NotFound => {
                // It claimed the chunk: a failure, and the claim is gone.
                if self.peers.map.get(&peer).is_some_and(Peer::is_seeder) {
                    self.demote_seeder(&peer);
                }
                self.learn(&peer, i, false);
                if let Some(p) = self.peers.map.get_mut(&peer) {
                    p.failed(now);
                }
                self.ended_without(i, late);
            }
            Delivery::Elsewhere => {
                if let Some(p) = self.peers.map.get_mut(&peer) {
                    p.decline(i, now, now + DECLINE_WAIT);
                }
                self.ended_without(i, late);
            }
        }
        0
    }

    /// What to do at `now`. [`Action::ListPeers`] comes alone, so the
    /// requests that follow use the fresh peer list; [`Action::Done`] comes
    /// alone once every chunk is written.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        if let Some((i, actual)) = self.wrong_length {
            let c = self.chunks[i as usize];
            return vec![Action::WrongLength {
                id: c.id,
                listed: c.len,
                actual,
            }];
        }
        if self.unwritten == 0 {
            return vec![Action::Done];
        }
        if self
            .last_refresh
            .is_none_or(|t| now.saturating_duration_since(t) >= self.refresh_every())
        {
            self.last_refresh = Some(now);
            self.ask_have = true;
            return vec![Action::ListPeers];
        }
        self.take_overdue(now);
        if tracing::enabled!(tracing::Level::DEBUG)
            && now.saturating_duration_since(self.last_summary) >= Duration::from_secs(1)
        {
            self.last_summary = now;
            self.summary();
        }
        let mut out = Vec::new();
        if std::mem::take(&mut self.ask_have) {
            self.ask_polled(&mut out);
        }
        // Write what has arrived, one batch at a time.
        if !self.writing
            && !self.buffer.is_empty()
            && (self.buffered >= WRITE_BATCH
                || self.buffer.len() >= WRITE_BATCH_CHUNKS
                || now.saturating_duration_since(self.last_write) >= WRITE_DELAY
                || self.remaining == 0)
        {
            self.writing = true;
            self.buffered = 0;
            out.push(Action::Write(std::mem::take(&mut self.buffer)));
        }
        // Paused while verified chunks wait for the disk (bounded memory).
        if self.remaining > 0
            && self.buffered < MAX_BUFFERED
            && self.buffer.len() < 2 * WRITE_BATCH_CHUNKS
        {
            self.start_requests(now, &mut out);
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
        if self.needed.is_empty() && !self.flying.is_empty() {
            // Endgame: look again for requests that became slow.
            next = next.min(now + ENDGAME_WAIT);
        }
        for p in self.peers.map.values() {
            if let Some(t) = p.returns_at(now) {
                next = next.min(t);
            }
            if let Some(t) = p.overdue_at() {
                next = next.min(t.max(now));
            }
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

    /// Requests past their peer's deadline: ask other holders.
    fn take_overdue(&mut self, now: Instant) {
        let mut moved = Vec::new();
        for (id, p) in &mut self.peers.map {
            self.work += 1;
            if !p.declined.is_empty() {
                self.work += p.declined.len() as u64;
                p.declined.retain(|_, t| *t > now);
            }
            if p.overdue_at().is_some_and(|t| t <= now) {
                tracing::debug!(peer = %id, chunks = p.inflight.len(), "requests late; asking other holders");
                moved.extend(p.give_up(now));
            }
        }
        for i in moved {
            self.release_one(i);
        }
    }

    /// Moves chunk `i` to `slot`, keeping the counters and pools right.
    fn set(&mut self, i: u32, slot: Slot) {
        let old = std::mem::replace(&mut self.state[i as usize], slot);
        match old {
            Slot::Needed => {
                self.needed.remove(i);
                self.orphans.remove(i);
            }
            Slot::InFlight(1) => {
                self.flying.remove(i);
            }
            _ => {}
        }
        match slot {
            Slot::Needed => {
                self.needed.insert(i);
                if self.avail[i as usize] == 0 {
                    self.orphans.insert(i);
                }
            }
            Slot::InFlight(1) => {
                self.flying.insert(i);
            }
            Slot::Done => self.remaining -= 1,
            Slot::InFlight(_) => {}
        }
    }

    /// A request for chunk `i` ended without the chunk. A late one had
    /// released the chunk already; its holders get it on their stacks
    /// again, since those late on it may have dropped it.
    fn ended_without(&mut self, i: u32, late: bool) {
        if !late {
            self.release_one(i);
        } else if self.state[i as usize] == Slot::Needed {
            self.push_to_holders(i, None);
        }
    }

    /// One request for chunk `i` ended without the chunk.
    fn release_one(&mut self, i: u32) {
        match self.state[i as usize] {
            Slot::InFlight(1) => {
                self.set(i, Slot::Needed);
                self.push_to_holders(i, None);
            }
            Slot::InFlight(n) => self.set(i, Slot::InFlight(n - 1)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
