//! The endgame asks a second holder only for requests that are late, not
//! for those merely queued behind others at their peer.

use super::*;

#[test]
fn requests_queued_behind_others_are_not_duplicated_early() {
    // Four chunks of a MiB queued at a (measured at nothing yet: 4 MiB/s
    // assumed), so they should arrive after about 0.25, 0.5, 0.75 and 1 s.
    let (mut h, ids) = Harness::new(4, MIB, &[1, 1]);
    let (a, b) = (ids[0], ids[1]);
    h.add(a, &[0, 1, 2, 3]);
    assert_eq!(h.fetches().len(), 4);
    h.add(b, &[0, 1, 2, 3]);
    // Twice the time of one chunk alone has passed: only the first is late.
    h.advance(ms(600));
    let dup = h.fetches();
    assert_eq!(dup.len(), 1, "{dup:?}");
    assert_eq!(dup[0].0, b);
    // Twice the time of the first two: the second is late too.
    h.advance(ms(600));
    let dup = h.fetches();
    assert_eq!(dup.len(), 1, "{dup:?}");
}
