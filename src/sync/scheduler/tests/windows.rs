//! A slow peer (one whose upload is shared among many downloaders) gets a
//! short window: chunks are not piled up where they would wait for seconds
//! while another holder could send them at once.

use super::*;

/// Measures `peer` at one chunk of `h.len` bytes per `every`: `chunks`
/// (already asked of it) are delivered that far apart.
fn measure(h: &mut Harness, peer: PeerId, chunks: &[u32], every: Duration) {
    for &i in chunks {
        h.advance(every);
        h.deliver(peer, i);
    }
}

fn asked_of(f: &[(PeerId, u32)], peer: PeerId) -> Vec<u32> {
    f.iter()
        .filter(|(p, _)| *p == peer)
        .map(|(_, i)| *i)
        .collect()
}

#[test]
fn the_least_window_is_a_quarter_second_of_the_rate_within_bounds() {
    for (len, every, want) in [
        // 1 MiB/s: a quarter second is less than a chunk; the floor.
        (MIB, ms(1000), FLOOR_WINDOW),
        // 10 MiB/s: a quarter second of it.
        (MIB, ms(100), (f64::from(MIB) / 0.1 * HORIZON) as u64),
        // 25 MiB/s: more than the minimum; the minimum.
        (MIB / 4, ms(10), MIN_WINDOW),
    ] {
        let (mut h, ids) = Harness::new(64, len, &[1]);
        let a = ids[0];
        h.add(a, &(0..64).collect::<Vec<_>>());
        let asked = asked_of(&h.fetches(), a);
        assert_eq!(
            asked.len() as u64,
            MIN_WINDOW / u64::from(len),
            "not measured yet"
        );
        measure(&mut h, a, &asked, every);
        assert!(h.s.peers.map[&a].measured(), "one chunk per {every:?}");
        let w = h.s.peers.map[&a].window();
        let off = w.abs_diff(want);
        assert!(
            off < want / 50,
            "one chunk per {every:?}: window {w}, want {want}"
        );
    }
}

#[test]
fn a_slow_holder_gets_no_more_than_its_window_and_a_new_holder_the_rest() {
    // a delivers 1 MiB/s (its upload shared among many): measured, it keeps
    // two chunks in flight, not four.
    let (mut h, ids) = Harness::new(40, MIB, &[1, 1]);
    let (a, b) = (ids[0], ids[1]);
    h.add(a, &(0..40).collect::<Vec<_>>());
    let first = asked_of(&h.fetches(), a);
    measure(&mut h, a, &first, ms(1000));
    let again = asked_of(&h.fetches(), a);
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(h.inflight(a), 2 * u64::from(MIB));
    // b gets the same chunks since: it gets its own window of them, while
    // the chunks beyond both windows stay unassigned.
    h.add(b, &(0..40).collect::<Vec<_>>());
    let f = h.fetches();
    assert!(asked_of(&f, a).is_empty(), "{f:?}");
    assert_eq!(asked_of(&f, b).len() as u64, MIN_WINDOW / u64::from(MIB));
    assert_eq!(h.s.needed.len(), 40 - first.len() - 2 - 4);
    // As a delivers, it gets one more at a time.
    h.advance(ms(1000));
    h.deliver(a, again[0]);
    h.advance(ms(1000));
    h.deliver(a, again[1]);
    assert_eq!(asked_of(&h.fetches(), a).len(), 2);
}
