//! The scheduler's rules, driven by hand: no sockets, no tokio, and a clock
//! that moves only when a test moves it.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::sync::MAX_PER_PEER;

const MIB: usize = 1 << 20;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn chunks(n: usize) -> Vec<ChunkRef> {
    (0..n)
        .map(|i| ChunkRef {
            id: Hash::of(&(i as u64).to_be_bytes()),
            len: 1,
        })
        .collect()
}

/// A scheduler with a hand-moved clock and a fixed list of connected peers.
struct Harness {
    s: Scheduler,
    n: usize,
    now: Instant,
    start: Instant,
    peers: Vec<(PeerId, Option<Duration>)>,
}

impl Harness {
    /// A download of `n` chunks; `rtts` gives each connected peer's RTT in ms.
    fn new(n: usize, rtts: &[u64]) -> (Self, Vec<PeerId>) {
        let start = Instant::now();
        let ids: Vec<PeerId> = rtts.iter().map(|_| PeerId::random()).collect();
        let peers = ids
            .iter()
            .zip(rtts)
            .map(|(id, rtt)| (*id, Some(ms(*rtt))))
            .collect();
        let h = Harness {
            s: Scheduler::new(chunks(n), start),
            n,
            now: start,
            start,
            peers,
        };
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

    /// Polls and keeps only the requests, as (peer, chunk).
    fn fetches(&mut self) -> Vec<(PeerId, usize)> {
        fetches(self.poll())
    }

    /// `peer` answers a have request: it holds `held`.
    fn have(&mut self, peer: PeerId, held: &[usize]) {
        let have = (0..self.n).map(|i| held.contains(&i)).collect();
        let event = Event::Have {
            peer,
            indices: (0..self.n).collect(),
            have,
        };
        self.s.handle(event, self.now);
    }

    fn answer(&mut self, peer: PeerId, index: usize, result: Delivery) -> u64 {
        self.s.handle(
            Event::Chunk {
                peer,
                index,
                result,
            },
            self.now,
        )
    }

    fn deliver(&mut self, peer: PeerId, index: usize, len: usize) -> u64 {
        // Zeroed memory is mapped lazily, so large chunks cost no RAM here.
        let data = vec![0u8; len];
        // Sizes are chosen at delivery; the list agrees with them.
        self.s.chunks[index].len = len as u32;
        self.answer(peer, index, Delivery::Verified { data, took: ms(1) })
    }
}

fn fetches(actions: Vec<Action>) -> Vec<(PeerId, usize)> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Fetch { peer, index, .. } => Some((peer, index)),
            _ => None,
        })
        .collect()
}

fn writes(actions: &[Action]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Write(batch) => Some(batch.len()),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_is_requested_before_have_maps_arrive() {
    let (mut h, ids) = Harness::new(3, &[1, 1]);
    let asked: HashSet<PeerId> = h
        .poll()
        .into_iter()
        .map(|a| match a {
            Action::AskHave { peer, indices, ids } => {
                assert_eq!(indices, vec![0, 1, 2]);
                assert_eq!(ids, chunks(3).iter().map(|c| c.id).collect::<Vec<_>>());
                peer
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(asked, ids.iter().copied().collect());
}

#[test]
fn rarest_chunk_first_to_the_least_loaded_holder() {
    let (mut h, ids) = Harness::new(3, &[1, 1]);
    let (a, b) = (ids[0], ids[1]);
    h.poll();
    h.have(a, &[0, 1]);
    h.have(b, &[0]);
    // Chunk 1 has one holder, chunk 0 two (a is then busier than b), chunk
    // 2 none: it waits, and so does the endgame.
    assert_eq!(h.fetches(), vec![(a, 1), (b, 0)]);
    assert_eq!(h.fetches(), vec![]);
}

#[test]
fn at_most_16_per_peer_and_32_in_total() {
    let (mut h, ids) = Harness::new(100, &[1, 1, 1]);
    h.poll();
    for p in &ids {
        h.have(*p, &(0..100).collect::<Vec<_>>());
    }
    let first = h.fetches();
    assert_eq!(first.len(), MAX_TOTAL);
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    for (p, _) in &first {
        *per_peer.entry(*p).or_default() += 1;
    }
    assert!(
        per_peer.values().all(|&n| n <= MAX_PER_PEER),
        "{per_peer:?}"
    );
    let distinct: HashSet<usize> = first.iter().map(|(_, i)| *i).collect();
    assert_eq!(distinct.len(), MAX_TOTAL);
    // One answer frees one slot.
    let (p, i) = first[0];
    h.deliver(p, i, 10);
    assert_eq!(h.fetches().len(), 1);
}

#[test]
fn a_peer_holding_everything_is_the_last_resort() {
    let (mut h, ids) = Harness::new(4, &[1, 1]);
    let (seeder, mirror) = (ids[0], ids[1]);
    h.poll();
    h.have(seeder, &[0, 1, 2, 3]);
    h.have(mirror, &[0, 1, 2]);
    let mut first: HashMap<usize, PeerId> = HashMap::new();
    for (p, i) in h.fetches() {
        first.entry(i).or_insert(p);
    }
    // Only the seeder holds chunk 3; the mirror gets the rest although it
    // is three requests deep by then.
    assert_eq!(first[&3], seeder);
    for i in 0..3 {
        assert_eq!(first[&i], mirror, "chunk {i}");
    }
}

#[test]
fn the_endgame_duplicates_requests_and_counts_the_chunk_once() {
    let (mut h, ids) = Harness::new(2, &[1, 1]);
    h.poll();
    for p in &ids {
        h.have(*p, &[0, 1]);
    }
    let f = h.fetches();
    assert_eq!(f.len(), 4, "{f:?}");
    for i in 0..2 {
        let on: HashSet<PeerId> = f.iter().filter(|(_, c)| *c == i).map(|(p, _)| *p).collect();
        assert_eq!(on, ids.iter().copied().collect(), "chunk {i} on both peers");
    }
    assert_eq!(h.deliver(ids[0], 0, 100), 100);
    assert_eq!(h.deliver(ids[1], 0, 100), 0, "the duplicate is not counted");
    assert_eq!(h.fetches(), vec![], "no third request");
}

#[test]
fn a_peer_that_sent_wrong_bytes_is_never_asked_again() {
    let (mut h, ids) = Harness::new(1, &[1]);
    let liar = ids[0];
    h.poll();
    h.have(liar, &[0]);
    assert_eq!(h.fetches(), vec![(liar, 0)]);
    h.answer(liar, 0, Delivery::WrongBytes);
    assert_eq!(h.fetches(), vec![]);
    // Still connected, long after any bench, claiming the chunk again.
    h.now += Duration::from_secs(3 * 24 * 3600);
    let actions = h.poll();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::AskHave { peer, .. } if *peer == liar)),
        "{actions:?}"
    );
    h.have(liar, &[0]);
    assert_eq!(h.fetches(), vec![]);
    // An honest peer appears and gets the chunk.
    let honest = PeerId::random();
    h.peers.push((honest, Some(ms(1))));
    h.now += REFRESH;
    h.poll();
    h.have(honest, &[0]);
    assert_eq!(h.fetches(), vec![(honest, 0)]);
}

#[test]
fn a_benched_peer_comes_back_after_the_bench() {
    let (mut h, ids) = Harness::new(1, &[1]);
    let p = ids[0];
    h.poll();
    h.have(p, &[0]);
    for _ in 0..3 {
        assert_eq!(h.fetches(), vec![(p, 0)]);
        h.answer(p, 0, Delivery::Failed);
    }
    let benched_at = h.now;
    assert_eq!(h.fetches(), vec![]);
    h.now = benched_at + ms(4_900);
    assert_eq!(h.fetches(), vec![]);
    h.now = benched_at + Duration::from_secs(5);
    assert_eq!(h.fetches(), vec![(p, 0)]);
}

#[test]
fn a_not_found_moves_the_chunk_to_another_holder() {
    // a answers faster, so it would be chosen again without the NotFound.
    let (mut h, ids) = Harness::new(1, &[1, 10]);
    let (a, b) = (ids[0], ids[1]);
    h.poll();
    h.have(a, &[0]);
    h.have(b, &[0]);
    assert_eq!(h.fetches(), vec![(a, 0), (b, 0)], "first a, then endgame");
    h.answer(a, 0, Delivery::NotFound);
    h.answer(b, 0, Delivery::Failed);
    assert_eq!(h.fetches(), vec![(b, 0)]);
}

#[test]
fn chunks_are_written_after_the_delay_or_at_the_end() {
    let (mut h, ids) = Harness::new(2, &[1]);
    let p = ids[0];
    h.poll();
    h.have(p, &[0, 1]);
    assert_eq!(h.fetches().len(), 2);
    h.deliver(p, 0, 10);
    assert_eq!(writes(&h.poll()), Vec::<usize>::new());
    assert_eq!(h.s.next_deadline(h.now), h.start + WRITE_DELAY);
    h.now = h.start + WRITE_DELAY;
    assert_eq!(writes(&h.poll()), vec![1]);
    // One batch at a time.
    h.deliver(p, 1, 10);
    assert!(h.poll().is_empty());
    // Once the disk is free the last chunk goes at once, without waiting
    // for the delay; completion waits for it to be written.
    h.s.handle(Event::Written { count: 1 }, h.now);
    let actions = h.poll();
    assert_eq!(writes(&actions), vec![1]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Done)));
    assert!(h.poll().is_empty());
    h.s.handle(Event::Written { count: 1 }, h.now);
    assert!(matches!(h.poll().as_slice(), [Action::Done]));
}

#[test]
fn the_memory_bound_pauses_requests_until_the_disk_catches_up() {
    let (mut h, ids) = Harness::new(200, &[1]);
    let p = ids[0];
    h.poll();
    h.have(p, &(0..200).collect::<Vec<_>>());
    let mut inflight: std::collections::VecDeque<usize> =
        h.fetches().into_iter().map(|(_, i)| i).collect();
    let (mut started, mut delivered, mut batches) = (inflight.len(), 0, Vec::new());
    while let Some(i) = inflight.pop_front() {
        h.deliver(p, i, MIB);
        delivered += 1;
        let actions = h.poll();
        batches.extend(writes(&actions));
        for (_, i) in fetches(actions) {
            inflight.push_back(i);
            started += 1;
        }
    }
    // The first 16 MiB went to the disk, which never answered; requests
    // stopped once 32 MiB more waited, and what was in flight arrived.
    assert_eq!(batches, vec![16]);
    assert_eq!(started, 16 + 16 + 31);
    assert_eq!(delivered, started);
    // The disk catches up: the waiting chunks go out, then requests resume.
    h.s.handle(Event::Written { count: 16 }, h.now);
    let actions = h.poll();
    assert_eq!(writes(&actions), vec![delivered - 16]);
    assert_eq!(fetches(actions), vec![]);
    assert_eq!(h.fetches().len(), MAX_PER_PEER);
}

#[test]
fn have_maps_are_refreshed_on_time_and_not_asked_twice() {
    for (n, every) in [(3, REFRESH), (LARGE + 1, REFRESH_LARGE)] {
        let start = Instant::now();
        let mut s = Scheduler::new(chunks(n), start);
        let p = PeerId::random();
        assert!(matches!(s.poll(start).as_slice(), [Action::ListPeers]));
        s.handle(Event::Peers(vec![(p, None)]), start);
        assert!(matches!(s.poll(start).as_slice(), [Action::AskHave { .. }]));
        assert!(s.poll(start + every - ms(1)).is_empty());
        let later = start + every;
        assert!(matches!(s.poll(later).as_slice(), [Action::ListPeers]));
        s.handle(Event::Peers(vec![(p, None)]), later);
        // The first have request is still unanswered: no second one.
        assert!(s.poll(later).is_empty());
        s.handle(Event::HaveFailed(p), later);
        let again = later + every;
        assert!(matches!(s.poll(again).as_slice(), [Action::ListPeers]));
        s.handle(Event::Peers(vec![(p, None)]), again);
        assert!(matches!(s.poll(again).as_slice(), [Action::AskHave { .. }]));
    }
}

#[test]
fn peers_that_leave_are_forgotten() {
    let (mut h, ids) = Harness::new(1, &[1]);
    let p = ids[0];
    h.poll();
    h.have(p, &[0]);
    h.peers.clear();
    h.now += REFRESH;
    assert_eq!(h.fetches(), vec![], "a peer gone is not asked");
}

#[test]
fn not_found_for_a_claimed_chunk_benches_and_have_maps_do_not_clear_it() {
    let (mut h, ids) = Harness::new(1, &[1]);
    let liar = ids[0];
    h.poll();
    for _ in 0..3 {
        // It claims the chunk (again), is asked, and has nothing.
        h.have(liar, &[0]);
        assert_eq!(h.fetches(), vec![(liar, 0)]);
        h.answer(liar, 0, Delivery::NotFound);
    }
    h.have(liar, &[0]);
    assert_eq!(h.fetches(), vec![], "benched after three NotFounds");
}

#[test]
fn failures_slow_the_estimate_down() {
    // a looks 10x faster by RTT, but its request fails.
    let (mut h, ids) = Harness::new(2, &[1, 10]);
    let (a, b) = (ids[0], ids[1]);
    h.poll();
    h.have(a, &[0]);
    assert_eq!(h.fetches(), vec![(a, 0)]);
    h.answer(a, 0, Delivery::Failed);
    h.have(a, &[0, 1]);
    h.have(b, &[0, 1]);
    // Both chunks go to b first; a gets only the endgame duplicates.
    let f = h.fetches();
    assert_eq!(f.len(), 4, "{f:?}");
    assert!(f[..2].iter().all(|(p, _)| *p == b), "{f:?}");
}

#[test]
fn a_late_request_is_asked_elsewhere_and_its_late_answer_still_counts() {
    // 17 chunks: the slow peer takes 16 (its limit), so one stays needed
    // and the endgame does not start.
    let (mut h, ids) = Harness::new(MAX_PER_PEER + 1, &[1, 1]);
    let (slow, other) = (ids[0], ids[1]);
    h.poll();
    h.have(slow, &(0..MAX_PER_PEER + 1).collect::<Vec<_>>());
    let f = h.fetches();
    assert_eq!(f.len(), MAX_PER_PEER, "{f:?}");
    let sent: Vec<usize> = f.iter().map(|(_, i)| *i).collect();
    h.have(other, &sent);
    // Nothing is late before the deadline...
    h.now += ms(1_900);
    assert_eq!(h.fetches(), vec![]);
    assert!(h.s.next_deadline(h.now) <= h.start + crate::sync::peers::MIN_DEADLINE);
    // ... then every chunk sent goes to the other holder, and the late
    // requests leave the download's slots.
    h.now = h.start + crate::sync::peers::MIN_DEADLINE;
    let f = h.fetches();
    let mut again: Vec<usize> = f.iter().map(|(_, i)| *i).collect();
    again.sort_unstable();
    let mut want = sent.clone();
    want.sort_unstable();
    assert_eq!(again, want);
    assert!(f.iter().all(|(p, _)| *p == other), "{f:?}");
    assert_eq!(h.s.peers.total_inflight(), MAX_PER_PEER);
    // The slow peer's late answer is taken; its late failure does not
    // release the request running on `other`.
    let (s0, s1) = (sent[0], sent[1]);
    assert_eq!(h.deliver(slow, s0, 10), 10);
    h.answer(slow, s1, Delivery::Failed);
    assert_eq!(h.s.state[s1], Slot::InFlight(1));
    assert_eq!(h.deliver(other, s0, 10), 0, "duplicate");
    assert_eq!(h.deliver(other, s1, 10), 10);
}

#[test]
fn a_slow_peer_gets_a_longer_deadline() {
    let (mut h, ids) = Harness::new(2, &[1]);
    let p = ids[0];
    h.poll();
    h.have(p, &[0, 1]);
    assert_eq!(h.fetches().len(), 2);
    h.now += ms(1_000);
    h.deliver(p, 0, 10);
    // Its answers take about a second.
    for _ in 0..20 {
        h.s.peers.succeeded(&p, Duration::from_secs(1));
    }
    // 4 x ~1 s: the request sent at the start is not late at 3 s...
    h.now = h.start + ms(3_000);
    assert_eq!(h.fetches(), vec![]);
    assert_eq!(h.s.state[1], Slot::InFlight(1));
    // ... but is at 4 s, and not asked of the same peer again.
    h.now = h.start + ms(4_100);
    assert_eq!(h.fetches(), vec![]);
    assert_eq!(h.s.state[1], Slot::Needed);
}

#[test]
fn a_chunk_of_another_length_than_listed_stops_the_download() {
    let (mut h, ids) = Harness::new(1, &[1]);
    h.poll();
    h.have(ids[0], &[0]);
    assert_eq!(h.fetches(), vec![(ids[0], 0)]);
    let data = vec![0u8; 8 << 20];
    assert_eq!(
        h.answer(ids[0], 0, Delivery::Verified { data, took: ms(1) }),
        0
    );
    let actions = h.poll();
    assert!(
        matches!(actions.as_slice(), [Action::WrongLength { listed: 1, actual, .. }] if *actual == 8 << 20),
        "{actions:?}"
    );
}
