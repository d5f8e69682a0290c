//! What a download knows about each peer: which chunks it holds (its
//! have-map), how many requests are queued there, how fast it answers, and
//! whether it misbehaved. The [`super::scheduler`] asks it who holds what
//! and who should get the next request; time comes in from the caller, so
//! benches can be tested without waiting.
//!
//! A peer earns requests only by answering them: a NotFound for a chunk it
//! claimed and a failed request count against it (a fresh have-map does not
//! clear them), and both slow its response-time estimate down, so a peer
//! that claims everything and delivers nothing does not look fast. A request
//! still unanswered past a deadline derived from the peer's own speed is
//! given up ("late") and the chunk asked elsewhere; the late answer is still
//! taken if it comes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::scheduler::Slot;

/// Requests in flight to one peer.
pub const MAX_PER_PEER: usize = 16;

/// A peer is benched for this long after repeated failures.
const BENCH: Duration = Duration::from_secs(5);
/// A request is given up and re-issued elsewhere after this long at least...
pub(super) const MIN_DEADLINE: Duration = Duration::from_secs(2);
/// ... or after this many times the peer's average response time, if longer.
const DEADLINE_FACTOR: f64 = 4.0;
/// The response-time estimate never grows beyond this (seconds): one
/// chunk request's own timeout.
const MAX_SECS: f64 = 60.0;
/// A failed request counts as at least this long (seconds) in the estimate.
const FAIL_SECS: f64 = 0.1;
/// Failures in a row before a peer is benched.
const MAX_FAILURES: u32 = 3;
/// How much longer a peer that holds everything still needed may look
/// before another holder is preferred: such a peer is the source (or a
/// finished mirror), and the source should be the holder of last resort so
/// that it uploads about one copy however many mirrors there are.
const SEEDER_FACTOR: f64 = 3.0;

struct Peer {
    have: Vec<bool>,
    /// Requests in flight, with when each was sent.
    inflight: HashMap<usize, Instant>,
    /// Requests given up after their deadline but not answered yet: they
    /// still occupy the peer (its per-peer limit) but not the download.
    late: HashSet<usize>,
    /// Moving average of seconds per answered request.
    secs: f64,
    rtt: Option<Duration>,
    failures: u32,
    benched_until: Option<Instant>,
    have_pending: bool,
    seen: bool,
    /// Held every chunk still needed at the last have-map.
    complete: bool,
}

/// The peers of one download.
pub(super) struct Peers {
    n: usize,
    /// A random rank per chunk, breaking rarity ties differently on every
    /// node, so mirrors starting together fetch different chunks from the
    /// same source and then trade them.
    tiebreak: Vec<u32>,
    peers: HashMap<PeerId, Peer>,
    banned: HashSet<PeerId>,
}

impl Peers {
    pub fn new(n: usize) -> Self {
        use rand::seq::SliceRandom;
        let mut tiebreak: Vec<u32> = (0..n as u32).collect();
        tiebreak.shuffle(&mut rand::rng());
        Peers {
            n,
            tiebreak,
            peers: HashMap::new(),
            banned: HashSet::new(),
        }
    }

    /// Marks a peer as currently connected (adding it if new).
    pub fn connected(&mut self, id: PeerId, rtt: Option<Duration>) {
        if self.banned.contains(&id) {
            return;
        }
        let n = self.n;
        let p = self.peers.entry(id).or_insert_with(|| Peer {
            have: vec![false; n],
            inflight: HashMap::new(),
            late: HashSet::new(),
            secs: rtt.map_or(0.05, |r| r.as_secs_f64().max(0.001)),
            rtt,
            failures: 0,
            benched_until: None,
            have_pending: false,
            seen: false,
            complete: false,
        });
        p.rtt = rtt.or(p.rtt);
        p.seen = true;
    }

    /// Drops peers not reported since the last call (disconnected).
    pub fn retain_connected(&mut self) {
        self.peers.retain(|_, p| {
            std::mem::take(&mut p.seen) || !p.inflight.is_empty() || !p.late.is_empty()
        });
    }

    pub fn ids(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    pub fn have_pending(&self, id: &PeerId) -> bool {
        self.peers.get(id).is_some_and(|p| p.have_pending)
    }

    pub fn set_have_pending(&mut self, id: &PeerId, v: bool) {
        if let Some(p) = self.peers.get_mut(id) {
            p.have_pending = v;
        }
    }

    /// Records a have-map answer. It does not clear the peer's failures:
    /// claiming chunks is cheap, delivering them is what counts.
    pub fn update_have(&mut self, id: &PeerId, idx: &[usize], bits: &[bool]) {
        if let Some(p) = self.peers.get_mut(id) {
            for (&i, &b) in idx.iter().zip(bits) {
                p.have[i] = b;
            }
            p.complete = !bits.is_empty() && bits.iter().all(|b| *b);
        }
    }

    /// Needed chunks ordered by how few peers hold them (rarest first);
    /// chunks nobody holds are left out.
    pub fn rarest_first(&self, state: &[Slot]) -> Vec<usize> {
        let mut counts: Vec<(u32, u32, usize)> = (0..self.n)
            .filter(|&i| state[i] == Slot::Needed)
            .map(|i| {
                let holders = self.peers.values().filter(|p| p.have[i]).count() as u32;
                (holders, self.tiebreak[i], i)
            })
            .filter(|(c, _, _)| *c > 0)
            .collect();
        counts.sort_unstable();
        counts.into_iter().map(|(_, _, i)| i).collect()
    }

    /// The holder of chunk `i` expected to deliver it soonest at `now`,
    /// skipping `exclude`, full, benched and banned peers.
    pub fn best_holder(&self, i: usize, exclude: &[PeerId], now: Instant) -> Option<PeerId> {
        self.peers
            .iter()
            .filter(|(id, p)| {
                p.have[i]
                    && p.inflight.len() + p.late.len() < MAX_PER_PEER
                    && p.benched_until.is_none_or(|t| t <= now)
                    && !p.late.contains(&i)
                    && !exclude.contains(id)
            })
            .min_by(|(_, a), (_, b)| cost(a).total_cmp(&cost(b)).then(a.rtt.cmp(&b.rtt)))
            .map(|(id, _)| *id)
    }

    /// Peers with a request for chunk `i` in flight.
    pub fn fetching(&self, i: usize) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.inflight.contains_key(&i))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Requests the download waits for (late ones excluded: they no longer
    /// hold a slot of the download, only of their peer).
    pub fn total_inflight(&self) -> usize {
        self.peers.values().map(|p| p.inflight.len()).sum()
    }

    pub fn started(&mut self, id: &PeerId, i: usize, now: Instant) {
        if let Some(p) = self.peers.get_mut(id) {
            p.inflight.insert(i, now);
        }
    }

    /// A request for chunk `i` to `id` ended (any outcome). Returns how
    /// long it took, and whether it had been given up as late (the
    /// scheduler already moved the chunk on); `None` if no such request
    /// was known.
    pub fn finished(&mut self, id: &PeerId, i: usize, now: Instant) -> Option<(Duration, bool)> {
        let p = self.peers.get_mut(id)?;
        if let Some(t) = p.inflight.remove(&i) {
            return Some((now.saturating_duration_since(t), false));
        }
        p.late.remove(&i).then_some((Duration::ZERO, true))
    }

    pub fn succeeded(&mut self, id: &PeerId, took: Duration) {
        if let Some(p) = self.peers.get_mut(id) {
            p.secs = 0.8 * p.secs + 0.2 * took.as_secs_f64().max(0.0001);
            p.failures = 0;
        }
    }

    /// The peer does not hold chunk `i` after all, though it claimed it: a
    /// failure like any other, so a peer that claims everything and sends
    /// nothing is benched rather than asked again and again.
    pub fn lacks(&mut self, id: &PeerId, i: usize, took: Duration, now: Instant) {
        if let Some(p) = self.peers.get_mut(id) {
            p.have[i] = false;
        }
        self.failed(id, took, now);
    }

    /// Requests past their deadline at `now`, as (peer, chunk): each is
    /// moved to the peer's late set and slows its estimate down to at
    /// least the time already waited. Not a failure: a slow peer is not a
    /// faulty one.
    pub fn take_overdue(&mut self, now: Instant) -> Vec<(PeerId, usize)> {
        let mut out = Vec::new();
        for (id, p) in &mut self.peers {
            let limit = deadline(p);
            let over: Vec<(usize, Duration)> = p
                .inflight
                .iter()
                .map(|(&i, &t)| (i, now.saturating_duration_since(t)))
                .filter(|(_, waited)| *waited >= limit)
                .collect();
            for (i, waited) in over {
                p.inflight.remove(&i);
                p.late.insert(i);
                p.secs = p.secs.max(waited.as_secs_f64()).min(MAX_SECS);
                out.push((*id, i));
            }
        }
        out
    }

    /// When the next request in flight passes its deadline.
    pub fn next_overdue(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                let limit = deadline(p);
                p.inflight.values().map(move |&t| t + limit)
            })
            .min()
    }

    /// A request failed at `now` after `took` (stream reset, timeout,
    /// NotFound): the estimate slows down (at least doubles), and the peer
    /// is benched after repeated failures.
    pub fn failed(&mut self, id: &PeerId, took: Duration, now: Instant) {
        if let Some(p) = self.peers.get_mut(id) {
            p.secs = (p.secs * 2.0)
                .max(took.as_secs_f64())
                .clamp(FAIL_SECS, MAX_SECS);
            p.failures += 1;
            if p.failures >= MAX_FAILURES {
                p.benched_until = Some(now + BENCH);
                p.failures = 0;
            }
        }
    }

    /// The peer sent wrong bytes: never ask it again in this download.
    pub fn ban(&mut self, id: &PeerId, now: Instant) {
        self.banned.insert(*id);
        if let Some(p) = self.peers.get_mut(id) {
            p.have.iter_mut().for_each(|h| *h = false);
            p.benched_until = Some(now + Duration::from_secs(3600 * 24));
        }
    }

    /// When the earliest bench still running at `now` ends, so the caller
    /// can wake up then rather than poll.
    pub fn next_return(&self, now: Instant) -> Option<Instant> {
        self.peers
            .iter()
            .filter(|(id, _)| !self.banned.contains(id))
            .filter_map(|(_, p)| p.benched_until)
            .filter(|&t| t > now)
            .min()
    }
}

/// How long a request to `p` may take before it is given up as late.
fn deadline(p: &Peer) -> Duration {
    MIN_DEADLINE.max(Duration::from_secs_f64(
        (p.secs * DEADLINE_FACTOR).min(MAX_SECS),
    ))
}

/// Expected wait for one more request to `p`.
fn cost(p: &Peer) -> f64 {
    let wait = (p.inflight.len() + p.late.len() + 1) as f64 * p.secs;
    if p.complete {
        wait * SEEDER_FACTOR
    } else {
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarest_first_and_least_loaded_holder() {
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut p = Peers::new(3);
        p.connected(a, Some(Duration::from_millis(1)));
        p.connected(b, Some(Duration::from_millis(1)));
        p.update_have(&a, &[0, 1, 2], &[true, true, false]);
        p.update_have(&b, &[0, 1, 2], &[true, false, false]);
        let state = [Slot::Needed; 3];
        // Chunk 1 has one holder, chunk 0 two, chunk 2 none.
        assert_eq!(p.rarest_first(&state), vec![1, 0]);
        // Equally rare chunks come in a random order, all of them.
        let mut q = Peers::new(100);
        q.connected(a, None);
        q.update_have(&a, &(0..100).collect::<Vec<_>>(), &[true; 100]);
        let order = q.rarest_first(&[Slot::Needed; 100]);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(order, sorted, "ties are shuffled");
        assert_eq!(p.best_holder(1, &[], now), Some(a));
        p.started(&a, 1, now);
        // a is now busier than b.
        assert_eq!(p.best_holder(0, &[], now), Some(b));
        assert_eq!(p.best_holder(0, &[b], now), Some(a));
        assert_eq!(p.best_holder(2, &[], now), None);
    }

    #[test]
    fn a_peer_holding_everything_is_the_last_resort() {
        let now = Instant::now();
        let (seeder, mirror) = (PeerId::random(), PeerId::random());
        let mut p = Peers::new(2);
        p.connected(seeder, Some(Duration::from_millis(1)));
        p.connected(mirror, Some(Duration::from_millis(1)));
        p.update_have(&seeder, &[0, 1], &[true, true]);
        p.update_have(&mirror, &[0, 1], &[true, false]);
        assert_eq!(p.best_holder(0, &[], now), Some(mirror));
        assert_eq!(p.best_holder(1, &[], now), Some(seeder));
        // Until the mirror is much busier than the seeder.
        for i in 0..3 {
            p.started(&mirror, 100 + i, now);
        }
        assert_eq!(p.best_holder(0, &[], now), Some(seeder));
    }

    #[test]
    fn banned_and_benched_peers_are_skipped() {
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut p = Peers::new(1);
        p.connected(a, None);
        p.connected(b, None);
        p.update_have(&a, &[0], &[true]);
        p.update_have(&b, &[0], &[true]);
        p.ban(&a, now);
        assert_eq!(p.best_holder(0, &[], now), Some(b));
        for _ in 0..MAX_FAILURES {
            p.failed(&b, Duration::ZERO, now);
        }
        assert_eq!(p.best_holder(0, &[], now), None);
        // A banned peer stays out even when it reconnects.
        p.update_have(&a, &[0], &[true]);
        p.connected(a, None);
        assert!(p.peers[&a].benched_until.is_some());
    }

    #[test]
    fn the_end_of_a_bench_is_known_and_a_ban_has_none() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let mut p = Peers::new(1);
        p.connected(a, None);
        p.connected(b, None);
        assert_eq!(p.next_return(now), None);
        for _ in 0..MAX_FAILURES {
            p.failed(&a, Duration::ZERO, now);
        }
        p.ban(&b, now);
        assert_eq!(p.next_return(now), Some(now + BENCH));
        assert_eq!(p.next_return(now + BENCH), None, "the bench is over");
    }
}
