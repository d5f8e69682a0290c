//! The scheduler's rules, driven by hand: no sockets, no tokio, and a clock
//! that moves only when a test moves it.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::sync::peers::{BENCH, FLOOR_WINDOW, HORIZON, MAX_FAILURES, MIN_DEADLINE, MIN_WINDOW};

mod deferral;
mod endgame;
mod windows;

const KIB: u32 = 1 << 10;
const MIB: u32 = 1 << 20;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn chunks(n: usize, len: u32) -> Vec<ChunkRef> {
    (0..n)
        .map(|i| ChunkRef {
            id: Hash::of(&(i as u64).to_be_bytes()),
            len,
        })
        .collect()
}

/// A scheduler with a hand-moved clock and a fixed list of connected peers.
struct Harness {
    s: Scheduler,
    len: u32,
    now: Instant,
    peers: Vec<(PeerId, Option<Duration>)>,
}

impl Harness {
    /// A download of `n` chunks of `len` bytes; `rtts` gives each connected
    /// peer's ping RTT in ms.
    fn new(n: usize, len: u32, rtts: &[u64]) -> (Self, Vec<PeerId>) {
        Self::with(n, len, rtts, false)
    }

    fn with(n: usize, len: u32, rtts: &[u64], poll_all: bool) -> (Self, Vec<PeerId>) {
        let now = Instant::now();
        let ids: Vec<PeerId> = rtts.iter().map(|_| PeerId::random()).collect();
        let peers = ids
            .iter()
            .zip(rtts)
            .map(|(id, rtt)| (*id, Some(ms(*rtt))))
            .collect();
        let mut h = Harness {
            s: Scheduler::new(chunks(n, len), poll_all, now),
            len,
            now,
            peers,
        };
        h.s.handle(Event::Peers(h.peers.clone()), now);
        (h, ids)
    }

    /// Polls, answering [`Action::ListPeers`] with the peer list, and
    /// returns the other actions.
    fn poll(&mut self) -> Vec<Action> {
        loop {
            let actions = self.s.poll(self.now);
            if matches!(actions.as_slice(), [Action::ListPeers]) {
                self.s.handle(Event::Peers(self.peers.clone()), self.now);
                continue;
            }
            return actions;
        }
    }

    /// Polls and keeps only the requests, as (peer, chunk); writes are
    /// reported done at once.
    fn fetches(&mut self) -> Vec<(PeerId, u32)> {
        let actions = self.poll();
        let count = writes(&actions).len();
        if count > 0 {
            self.s.handle(Event::Written { count }, self.now);
        }
        fetches(&actions)
    }

    fn all(&mut self, peer: PeerId) {
        self.s.handle(Event::HaveAll(peer), self.now);
    }

    fn add(&mut self, peer: PeerId, indices: &[u32]) {
        let event = Event::HaveAdd {
            peer,
            indices: indices.to_vec(),
        };
        self.s.handle(event, self.now);
    }

    fn answer(&mut self, peer: PeerId, index: u32, result: Delivery) -> u64 {
        let event = Event::Chunk {
            peer,
            index,
            result,
            waited: None,
        };
        self.s.handle(event, self.now)
    }

    fn deliver(&mut self, peer: PeerId, index: u32) -> u64 {
        let data = vec![0u8; self.len as usize];
        self.answer(peer, index, Delivery::Verified(data))
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn inflight(&self, peer: PeerId) -> u64 {
        let p = &self.s.peers.map[&peer];
        p.inflight_bytes
    }
}

fn fetches(actions: &[Action]) -> Vec<(PeerId, u32)> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Fetch { peer, indices, .. } => indices.iter().map(|i| (*peer, *i)).collect(),
            _ => vec![],
        })
        .collect()
}

fn per_peer(f: &[(PeerId, u32)]) -> HashMap<PeerId, usize> {
    let mut m = HashMap::new();
    for (p, _) in f {
        *m.entry(*p).or_default() += 1;
    }
    m
}

fn writes(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Write(b) => b.iter().map(|(i, _, _)| *i).collect(),
            _ => vec![],
        })
        .collect()
}

#[test]
fn nothing_is_requested_before_anyone_is_known_to_hold_it() {
    let (mut h, ids) = Harness::new(4, KIB, &[1, 1]);
    assert!(h.fetches().is_empty());
    h.add(ids[0], &[2]);
    assert_eq!(h.fetches(), vec![(ids[0], 2)]);
}

#[test]
fn many_small_chunks_leave_in_one_batch_within_the_window() {
    let (mut h, ids) = Harness::new(10_000, 2 * KIB, &[1]);
    h.all(ids[0]);
    let actions = h.poll();
    let f = fetches(&actions);
    let batches = actions
        .iter()
        .filter(|a| matches!(a, Action::Fetch { .. }))
        .count();
    // The window (MIN_WINDOW before any measurement) in one request.
    assert_eq!(f.len() as u64, MIN_WINDOW / u64::from(2 * KIB));
    assert_eq!(batches, 1, "one request, not one per chunk");
    assert_eq!(h.inflight(ids[0]), MIN_WINDOW);
    // Nothing more until a quarter of the window is answered.
    assert!(h.fetches().is_empty());
    let quarter = f.len() / 4;
    for &(_, i) in &f[..quarter - 1] {
        h.deliver(ids[0], i);
    }
    assert!(h.fetches().is_empty(), "less than a quarter free");
    h.deliver(ids[0], f[quarter - 1].1);
    assert_eq!(h.fetches().len(), quarter, "refilled in one batch");
}

#[test]
fn rarest_chunks_first() {
    let (mut h, ids) = Harness::new(3, 2 * MIB, &[1, 1, 1]);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    // Chunk 0 is held by three peers, 1 by two, 2 by one; b and c are
    // benched, so a alone pulls, rarest first: its window takes two.
    h.add(a, &[0, 1, 2]);
    h.add(b, &[0, 1]);
    h.add(c, &[0]);
    for p in [b, c] {
        for _ in 0..MAX_FAILURES {
            h.s.handle(
                Event::Failed {
                    peer: p,
                    indices: vec![],
                },
                h.now,
            );
        }
    }
    assert_eq!(h.fetches(), vec![(a, 2), (a, 1)]);
}

#[test]
fn each_chunk_goes_to_the_holder_expected_soonest() {
    // Two peers hold the first 100 chunks; near answers in 1 ms, far in
    // 80 ms. (No one holds the rest, so the endgame does not start.)
    let (mut h, ids) = Harness::new(200, 16 * KIB, &[1, 80]);
    let (near, far) = (ids[0], ids[1]);
    let all: Vec<u32> = (0..100).collect();
    h.add(near, &all);
    h.add(far, &all);
    let f = per_peer(&h.fetches());
    assert!(
        f[&near] > f.get(&far).copied().unwrap_or(0),
        "the near peer gets more: {f:?}"
    );
    // Once the near one is full, the far one still gets work: nobody
    // idles while there is something to fetch.
    assert!(f.get(&far).copied().unwrap_or(0) > 0, "{f:?}");
}

#[test]
fn the_window_grows_with_the_bandwidth_delay_product() {
    // A peer 100 ms away that delivers 40 MiB/s: its window grows past the
    // minimum; one that delivers 1 MiB/s is slow: a quarter second of its
    // rate is less than the smallest window, which it gets.
    let (mut h, ids) = Harness::new(4000, 64 * KIB, &[100, 100]);
    let (fast, slow) = (ids[0], ids[1]);
    h.add(fast, &(0..2000).collect::<Vec<_>>());
    h.add(slow, &(2000..4000).collect::<Vec<_>>());
    let mut queue: HashMap<PeerId, Vec<u32>> = HashMap::new();
    for (p, i) in h.fetches() {
        queue.entry(p).or_default().push(i);
    }
    // 2 s of deliveries: 40 MiB/s from fast (a chunk every 1.6 ms), 1 MiB/s
    // from slow (one every 64 ms).
    for step in 0..1250u32 {
        h.advance(Duration::from_micros(1600));
        if let Some(i) = queue.get_mut(&fast).and_then(|q| q.pop()) {
            h.deliver(fast, i);
        }
        if step % 40 == 0 {
            if let Some(i) = queue.get_mut(&slow).and_then(|q| q.pop()) {
                h.deliver(slow, i);
            }
        }
        for (p, i) in h.fetches() {
            queue.entry(p).or_default().push(i);
        }
    }
    let wf = h.s.peers.map[&fast].window();
    let ws = h.s.peers.map[&slow].window();
    // BDP = 40 MiB/s x 100 ms = 4 MiB; twice that, within the bounds.
    assert!(wf > MIN_WINDOW, "fast window {wf}");
    assert_eq!(ws, FLOOR_WINDOW, "slow window {ws}");
    assert!(h.inflight(fast) > MIN_WINDOW, "{}", h.inflight(fast));
}

#[test]
fn a_peer_holding_everything_is_the_last_resort() {
    let (mut h, ids) = Harness::new(200, MIB, &[1, 1]);
    let (seeder, mirror) = (ids[0], ids[1]);
    h.all(seeder);
    h.add(mirror, &(0..100).collect::<Vec<_>>());
    let f = h.fetches();
    for (p, i) in &f {
        if *i < 100 {
            assert_eq!(*p, mirror, "chunk {i} is at the mirror: {f:?}");
        } else {
            assert_eq!(*p, seeder, "chunk {i} only at the seeder");
        }
    }
    assert!(
        f.iter().any(|(p, _)| *p == seeder),
        "the seeder serves what only it holds"
    );
}

#[test]
fn mirrors_starting_together_ask_the_source_for_different_chunks() {
    let seeder = PeerId::random();
    let first = |_: usize| {
        let now = Instant::now();
        let mut s = Scheduler::new(chunks(10_000, 2 * KIB), false, now);
        s.handle(Event::Peers(vec![(seeder, Some(ms(1)))]), now);
        s.handle(Event::HaveAll(seeder), now);
        let _ = s.poll(now);
        let f: HashSet<u32> = fetches(&s.poll(now)).into_iter().map(|x| x.1).collect();
        f
    };
    let (a, b) = (first(0), first(1));
    let common = a.intersection(&b).count();
    assert!(common < a.len() / 2, "{common} of {} in common", a.len());
}

#[test]
fn updates_pushed_by_a_mirror_move_chunks_off_the_source() {
    let (mut h, ids) = Harness::new(1000, 64 * KIB, &[1, 1]);
    let (seeder, mirror) = (ids[0], ids[1]);
    h.all(seeder);
    let f = h.fetches();
    assert!(f.iter().all(|(p, _)| *p == seeder));
    let asked: HashSet<u32> = f.iter().map(|x| x.1).collect();
    // The mirror now holds chunks the seeder was not asked for.
    let fresh: Vec<u32> = (0..1000).filter(|i| !asked.contains(i)).take(20).collect();
    h.add(mirror, &fresh);
    let next = h.fetches();
    for i in &fresh {
        assert!(
            next.contains(&(mirror, *i)),
            "{i} from the mirror: {next:?}"
        );
    }
}

#[test]
fn the_endgame_duplicates_requests_and_counts_the_chunk_once() {
    let (mut h, ids) = Harness::new(2, MIB, &[1, 1]);
    let (a, b) = (ids[0], ids[1]);
    h.add(a, &[0, 1]);
    let f = h.fetches();
    assert_eq!(f.len(), 2);
    // b appears holding both: both chunks are in flight, so each gets a
    // second request there once it is slow.
    h.add(b, &[0, 1]);
    assert!(h.fetches().is_empty(), "not at once");
    // Past twice the time the second should take behind the first.
    h.advance(ms(1100));
    let dup = h.fetches();
    assert_eq!(per_peer(&dup).get(&b), Some(&2), "{dup:?}");
    assert_eq!(h.deliver(a, 0), u64::from(MIB));
    assert_eq!(h.deliver(b, 0), 0, "the second copy does not count");
}

#[test]
fn a_peer_that_sent_wrong_bytes_is_never_asked_again() {
    let (mut h, ids) = Harness::new(2, MIB, &[1, 50]);
    let (liar, honest) = (ids[0], ids[1]);
    h.add(liar, &[0, 1]);
    h.add(honest, &[0, 1]);
    let f = h.fetches();
    let (_, i) = *f
        .iter()
        .find(|(p, _)| *p == liar)
        .expect("the near liar is asked");
    h.answer(liar, i, Delivery::WrongBytes);
    for _ in 0..5 {
        h.advance(Duration::from_secs(3));
        assert!(h.fetches().iter().all(|(p, _)| *p != liar));
    }
    // It stays out even when listed and claiming chunks again.
    h.add(liar, &[0, 1]);
    assert!(h.fetches().iter().all(|(p, _)| *p != liar));
    assert!(h.s.peers.banned.contains(&liar));
}

#[test]
fn a_peer_is_benched_after_repeated_failures_and_comes_back() {
    let (mut h, ids) = Harness::new(10, MIB, &[1]);
    let p = ids[0];
    h.add(p, &(0..10).collect::<Vec<_>>());
    for _ in 0..MAX_FAILURES {
        let f = h.fetches();
        assert!(!f.is_empty());
        h.s.handle(
            Event::Failed {
                peer: p,
                indices: f.iter().map(|x| x.1).collect(),
            },
            h.now,
        );
    }
    assert!(h.fetches().is_empty(), "benched");
    assert!(h.s.next_deadline(h.now) <= h.now + BENCH);
    h.advance(BENCH);
    assert!(!h.fetches().is_empty(), "back after the bench");
}

#[test]
fn a_not_found_moves_the_chunk_to_another_holder() {
    let (mut h, ids) = Harness::new(1, MIB, &[1, 30]);
    let (a, b) = (ids[0], ids[1]);
    h.add(a, &[0]);
    assert_eq!(h.fetches(), vec![(a, 0)]);
    h.answer(a, 0, Delivery::NotFound);
    assert!(!h.s.peers.map[&a].holds(0), "its claim is dropped");
    assert!(h.fetches().is_empty(), "no one else holds it");
    h.add(b, &[0]);
    assert_eq!(h.fetches(), vec![(b, 0)]);
    // A seeder that lacks a chunk is a seeder no more.
    let (mut h, ids) = Harness::new(3, MIB, &[1, 30]);
    let (s, m) = (ids[0], ids[1]);
    h.all(s);
    let f = h.fetches();
    h.answer(s, f[0].1, Delivery::NotFound);
    assert!(!h.s.peers.map[&s].is_seeder());
    assert!(!h.s.peers.map[&s].holds(f[0].1));
    h.add(m, &[f[0].1]);
    assert!(h.fetches().contains(&(m, f[0].1)));
}

#[test]
fn chunks_are_written_after_the_delay_or_at_the_end() {
    let (mut h, ids) = Harness::new(3, KIB, &[1]);
    let p = ids[0];
    h.all(p);
    let f = h.fetches();
    h.deliver(p, f[0].1);
    assert!(writes(&h.poll()).is_empty(), "not yet");
    h.advance(WRITE_DELAY);
    assert_eq!(writes(&h.poll()), vec![f[0].1]);
    h.deliver(p, f[1].1);
    h.deliver(p, f[2].1);
    assert!(writes(&h.poll()).is_empty(), "one batch at a time");
    h.s.handle(Event::Written { count: 1 }, h.now);
    let mut last = writes(&h.poll());
    last.sort_unstable();
    let mut want = vec![f[1].1, f[2].1];
    want.sort_unstable();
    assert_eq!(last, want, "everything arrived: written at once");
    h.s.handle(Event::Written { count: 2 }, h.now);
    assert!(matches!(h.poll().as_slice(), [Action::Done]));
}

#[test]
fn the_memory_bound_pauses_requests_until_the_disk_catches_up() {
    let (mut h, ids) = Harness::new(100, 4 * MIB, &[1]);
    let p = ids[0];
    h.all(p);
    let mut written = 0;
    let mut paused = false;
    for _ in 0..50 {
        let a = h.poll();
        written += writes(&a).len();
        let f = fetches(&a);
        if f.is_empty() && h.inflight(p) == 0 {
            paused = true;
            break;
        }
        for (_, i) in f {
            h.deliver(p, i);
        }
    }
    assert!(written > 0, "a batch went to the disk");
    assert!(paused, "requests wait while the disk is behind");
    // Twice the write batch waits beyond the batch being written.
    assert_eq!(h.s.buffered, MAX_BUFFERED);
    h.s.handle(Event::Written { count: written }, h.now);
    h.advance(WRITE_DELAY);
    let a = h.poll();
    assert!(!writes(&a).is_empty());
    assert!(!fetches(&a).is_empty(), "going on once the disk caught up");
}

#[test]
fn peers_that_leave_are_forgotten() {
    let (mut h, ids) = Harness::new(2, MIB, &[1, 1]);
    h.add(ids[0], &[0]);
    h.add(ids[1], &[1]);
    let f = h.fetches();
    for (p, i) in f {
        h.deliver(p, i);
    }
    h.peers.retain(|(id, _)| *id != ids[1]);
    h.advance(REFRESH);
    let _ = h.poll();
    assert!(!h.s.peers.map.contains_key(&ids[1]));
    assert!(h.s.peers.map.contains_key(&ids[0]));
}

#[test]
fn a_stalled_peer_is_dropped_and_its_late_answer_still_counts() {
    // The staller is nearer, so it is asked first; it never answers.
    // (Chunks 4 and 5 are held by no one, so the endgame does not start.)
    let (mut h, ids) = Harness::new(6, MIB, &[1, 20]);
    let (staller, good) = (ids[0], ids[1]);
    let all = [0, 1, 2, 3];
    h.add(staller, &all);
    h.add(good, &all);
    let f = h.fetches();
    let stalled: Vec<u32> = f
        .iter()
        .filter(|(p, _)| *p == staller)
        .map(|x| x.1)
        .collect();
    assert!(!stalled.is_empty());
    for (p, i) in &f {
        if *p == good {
            h.deliver(good, *i);
        }
    }
    // Past the deadline: its chunks go to the other holder...
    h.advance(MIN_DEADLINE);
    let again = h.fetches();
    for i in &stalled {
        assert!(again.contains(&(good, *i)), "{i} re-asked: {again:?}");
    }
    // ... and the staller gets nothing more while its requests hang.
    h.advance(MIN_DEADLINE);
    assert!(h.fetches().iter().all(|(p, _)| *p != staller));
    // Its late answer is still taken if it comes first.
    assert_eq!(h.deliver(staller, stalled[0]), u64::from(MIB));
    assert_eq!(h.deliver(good, stalled[0]), 0);
}

#[test]
fn polled_peers_are_asked_on_refresh_and_not_twice_at_once() {
    let (mut h, ids) = Harness::with(5, KIB, &[1], true);
    let asks = |a: &[Action]| {
        a.iter()
            .filter(|x| matches!(x, Action::AskHave { .. }))
            .count()
    };
    assert_eq!(asks(&h.poll()), 1);
    h.advance(REFRESH);
    assert_eq!(asks(&h.poll()), 0, "the first answer is still pending");
    h.s.handle(
        Event::Have {
            peer: ids[0],
            indices: vec![0, 1, 2, 3, 4],
            have: vec![true, false, true, false, false],
        },
        h.now,
    );
    let mut f: Vec<u32> = h.fetches().into_iter().map(|x| x.1).collect();
    f.sort_unstable();
    assert_eq!(f, vec![0, 2]);
    h.advance(REFRESH);
    assert_eq!(asks(&h.poll()), 1);
}

#[test]
fn a_chunk_of_another_length_than_listed_stops_the_download() {
    let (mut h, ids) = Harness::new(1, 10, &[1]);
    h.all(ids[0]);
    assert_eq!(h.fetches(), vec![(ids[0], 0)]);
    h.answer(ids[0], 0, Delivery::Verified(vec![0; 11]));
    assert!(matches!(
        h.poll().as_slice(),
        [Action::WrongLength {
            listed: 10,
            actual: 11,
            ..
        }]
    ));
}

/// A million chunks, a seeder and three mirrors whose maps grow: each event
/// and each poll costs work bounded by the batch sizes and the number of
/// peers, not by the number of chunks.
#[test]
fn a_million_chunk_schedule_takes_bounded_work_per_event() {
    const N: usize = 1_000_000;
    const BOUND: u64 = 8 * PICKS_PER_POLL as u64;
    let (mut h, ids) = Harness::new(N, 2 * KIB, &[1, 1, 1, 1]);
    let (seeder, mirrors) = (ids[0], ids[1..].to_vec());
    let mut worst = 0u64;
    let mut measure = |h: &mut Harness, f: &mut dyn FnMut(&mut Harness)| {
        let before = h.s.work;
        f(h);
        worst = worst.max(h.s.work - before);
    };
    measure(&mut h, &mut |h| {
        let _ = h.poll();
    });
    measure(&mut h, &mut |h| h.all(seeder));
    let mut next_add = 0u32;
    let mut fetched = 0;
    for round in 0..30 {
        // Each mirror reports a thousand new chunks.
        for m in &mirrors {
            let add: Vec<u32> = (next_add..next_add + 1000).collect();
            next_add += 1000;
            measure(&mut h, &mut |h| h.add(*m, &add));
        }
        let mut actions = Vec::new();
        measure(&mut h, &mut |h| actions = h.poll());
        for a in &actions {
            if let Action::Write(batch) = a {
                let count = batch.len();
                measure(&mut h, &mut |h| {
                    h.s.handle(Event::Written { count }, h.now);
                });
            }
        }
        let f = fetches(&actions);
        assert!(!f.is_empty(), "round {round}");
        fetched += f.len();
        for (p, i) in f {
            measure(&mut h, &mut |h| {
                h.deliver(p, i);
            });
        }
        h.advance(ms(10));
    }
    assert!(fetched > 100_000, "{fetched} chunks fetched");
    assert!(
        worst <= BOUND,
        "{worst} steps for one event (bound {BOUND})"
    );
}
