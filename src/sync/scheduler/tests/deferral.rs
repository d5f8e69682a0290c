//! A source that sends a chunk elsewhere (its first copy went to another
//! downloader): the chunk waits for that downloader, never for long.

use super::*;

/// A download of `n` chunks of a MiB from one seeder; the chunks asked of it
/// in the first poll.
fn from_seeder(n: usize, others: usize) -> (Harness, Vec<PeerId>, Vec<u32>) {
    let rtts = vec![1; 1 + others];
    let (mut h, ids) = Harness::new(n, MIB, &rtts);
    h.all(ids[0]);
    let asked: Vec<u32> = h.fetches().into_iter().map(|(_, i)| i).collect();
    assert!(!asked.is_empty());
    (h, ids, asked)
}

fn elsewhere(h: &mut Harness, peer: PeerId, i: u32) {
    assert_eq!(h.answer(peer, i, Delivery::Elsewhere), 0);
}

#[test]
fn a_chunk_sent_elsewhere_is_asked_of_the_source_again_only_after_the_wait() {
    let (mut h, ids, asked) = from_seeder(100, 0);
    let (seeder, x) = (ids[0], asked[0]);
    elsewhere(&mut h, seeder, x);
    for &i in &asked[1..] {
        h.deliver(seeder, i);
    }
    // Its room is used for other chunks, not for this one.
    let mut again = Vec::new();
    let step = ms(250);
    let mut waited = Duration::ZERO;
    while waited < DECLINE_WAIT {
        for (_, i) in h.fetches() {
            assert_ne!(i, x, "asked again after {waited:?}");
            again.push(i);
            h.deliver(seeder, i);
        }
        h.advance(step);
        waited += step;
    }
    assert!(!again.is_empty(), "the freed room went to other chunks");
    // The only holder: asked again once the wait is over.
    let later = h.fetches();
    assert!(later.contains(&(seeder, x)), "{later:?}");
}

#[test]
fn a_chunk_sent_elsewhere_comes_from_the_mirror_that_got_it() {
    let (mut h, ids, asked) = from_seeder(100, 1);
    let (seeder, mirror, x) = (ids[0], ids[1], asked[0]);
    elsewhere(&mut h, seeder, x);
    h.advance(ms(300));
    h.add(mirror, &[x]);
    let f = h.fetches();
    assert!(f.contains(&(mirror, x)), "{f:?}");
    assert!(!f.contains(&(seeder, x)));
}

#[test]
fn deferrals_are_answers_not_failures() {
    let (mut h, ids, asked) = from_seeder(200, 0);
    let seeder = ids[0];
    // More deferrals than the failures that bench a peer, and past the
    // time requests without progress are given up.
    assert!(asked.len() > MAX_FAILURES as usize);
    for &i in &asked {
        h.advance(MIN_DEADLINE / 2);
        elsewhere(&mut h, seeder, i);
    }
    let p = &h.s.peers.map[&seeder];
    assert!(
        !p.benched(h.now) && p.late.is_empty(),
        "not benched, nothing late"
    );
    let next = h.fetches();
    assert!(!next.is_empty(), "still asked for other chunks");
    assert!(next.iter().all(|(p, i)| *p == seeder && !asked.contains(i)));
}

#[test]
fn the_download_completes_when_the_source_defers_every_first_ask() {
    let (mut h, ids, asked) = from_seeder(20, 0);
    let mut deferred = HashSet::new();
    let mut done = 0;
    for i in asked {
        deferred.insert(i);
        elsewhere(&mut h, ids[0], i);
    }
    for _ in 0..200 {
        h.advance(ms(250));
        let actions = h.poll();
        if actions.iter().any(|a| matches!(a, Action::Done)) {
            assert_eq!(done, 20);
            return;
        }
        let count = writes(&actions).len();
        if count > 0 {
            h.s.handle(Event::Written { count }, h.now);
        }
        for (p, i) in fetches(&actions) {
            if deferred.insert(i) {
                elsewhere(&mut h, p, i);
            } else {
                done += usize::from(h.deliver(p, i) > 0);
            }
        }
    }
    panic!("not done: {done} of 20 received");
}
