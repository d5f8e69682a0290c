//! Super-seeding on the serving side: a node that holds a whole version
//! while several peers download it hands its first copy of each chunk to
//! one of them and answers the others [`Response::Elsewhere`] for a short
//! while, so that they take the chunk from the one that got it. The
//! source's upload then goes to chunks no downloader has yet, and it sends
//! each chunk about once however many mirrors start together.
//!
//! A requester is deferred at most once per chunk, and only within
//! [`HOLD`] of the first copy, to a peer that still downloads: its next
//! request for the chunk is answered. So a deferral delays a chunk, never
//! withholds it, even when this node is the only holder.
//!
//! [`Response::Elsewhere`]: super::chunk_protocol::Response::Elsewhere

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::hash::Hash;
use crate::task::lock;

/// How long after a chunk's first copy left for one downloader others are
/// sent elsewhere for it: the time for that copy to arrive, be written and
/// be announced in an `Added` frame, with margin.
pub(super) const HOLD: Duration = Duration::from_secs(6);
/// A peer counts as a downloader of a whole version held here for this
/// long after it was last answered `All` (downloaders subscribe again every
/// few seconds while they run).
pub(super) const ACTIVE: Duration = Duration::from_secs(10);
/// Entries kept at most per table; beyond, expired ones are dropped, then
/// all (which only means fewer deferrals).
const MAX_ENTRIES: usize = 1 << 16;

/// Whether to serve a chunk or send the requester elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Send the body.
    Serve,
    /// Answer `Elsewhere`.
    Defer,
}

#[derive(Default)]
struct Tables {
    /// Peers answered `All` (they download a version held whole here),
    /// and when last.
    downloaders: HashMap<PeerId, Instant>,
    /// Chunk -> the downloader its first recent copy went to, and when.
    firsts: HashMap<Hash, (PeerId, Instant)>,
    /// (peer, chunk) deferred once: served next time.
    deferred: HashMap<(PeerId, Hash), Instant>,
}

/// The first copies this node sent lately; shared by every stream.
#[derive(Default)]
pub(super) struct FirstCopies {
    tables: Mutex<Tables>,
}

impl FirstCopies {
    /// `peer` was answered `All` at `now`: it downloads something this node
    /// holds whole.
    pub fn downloader(&self, peer: PeerId, now: Instant) {
        let mut t = lock(&self.tables);
        if t.downloaders.len() >= MAX_ENTRIES {
            t.downloaders
                .retain(|_, at| now.saturating_duration_since(*at) < ACTIVE);
        }
        t.downloaders.insert(peer, now);
    }

    /// Whether to serve chunk `id` to `peer` at `now`. A chunk served to a
    /// downloader becomes its first copy; a chunk whose first copy went to
    /// another downloader less than [`HOLD`] ago is deferred, once per
    /// requester. Peers that are not downloaders (they never subscribed:
    /// a plain list of chunks) are always served and leave no first copy.
    pub fn verdict(&self, peer: PeerId, id: Hash, now: Instant) -> Verdict {
        let mut guard = lock(&self.tables);
        let t = &mut *guard;
        let active = |at: &Instant| now.saturating_duration_since(*at) < ACTIVE;
        if !t.downloaders.get(&peer).is_some_and(active) {
            return Verdict::Serve;
        }
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < HOLD;
        match t.firsts.get(&id) {
            Some((first, at))
                if *first != peer && fresh(at) && t.downloaders.get(first).is_some_and(active) =>
            {
                if t.deferred.len() >= MAX_ENTRIES {
                    t.deferred.retain(|_, at| fresh(at));
                    if t.deferred.len() >= MAX_ENTRIES {
                        t.deferred.clear();
                    }
                }
                match t.deferred.insert((peer, id), now) {
                    None => Verdict::Defer,
                    Some(_) => Verdict::Serve,
                }
            }
            Some((_, at)) if fresh(at) => Verdict::Serve,
            _ => {
                if t.firsts.len() >= MAX_ENTRIES {
                    t.firsts.retain(|_, (_, at)| fresh(at));
                    if t.firsts.len() >= MAX_ENTRIES {
                        t.firsts.clear();
                    }
                }
                t.firsts.insert(id, (peer, now));
                Verdict::Serve
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Hash {
        Hash::of(&[n])
    }

    #[test]
    fn first_copies_go_to_distinct_downloaders() {
        let f = FirstCopies::default();
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        f.downloader(a, now);
        f.downloader(b, now);
        assert_eq!(f.verdict(a, id(1), now), Verdict::Serve);
        // b asks for what a just got: elsewhere, once.
        assert_eq!(f.verdict(b, id(1), now), Verdict::Defer);
        assert_eq!(f.verdict(b, id(2), now), Verdict::Serve);
        assert_eq!(f.verdict(b, id(1), now), Verdict::Serve, "asked twice");
        // a may ask again (its request was lost or late).
        assert_eq!(f.verdict(a, id(1), now), Verdict::Serve);
        assert_eq!(f.verdict(a, id(2), now), Verdict::Defer);
    }

    #[test]
    fn deferrals_end_with_the_hold_or_the_first_downloader() {
        let f = FirstCopies::default();
        let now = Instant::now();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        for p in [a, b] {
            f.downloader(p, now);
        }
        assert_eq!(f.verdict(a, id(1), now), Verdict::Serve);
        // Past the hold, the chunk is served to anyone.
        let later = now + HOLD;
        f.downloader(b, later);
        assert_eq!(f.verdict(b, id(1), later), Verdict::Serve);
        // A peer that is not a downloader (no subscription) is served.
        assert_eq!(f.verdict(c, id(1), later), Verdict::Serve);
        // A first copy whose downloader went quiet defers no one.
        let t = now + Duration::from_secs(8);
        assert_eq!(f.verdict(a, id(3), t), Verdict::Serve);
        let quiet = now + ACTIVE + Duration::from_secs(1);
        f.downloader(b, quiet);
        assert_eq!(f.verdict(b, id(3), quiet), Verdict::Serve);
        // While it downloads, the same request would have been deferred.
        f.downloader(a, quiet);
        assert_eq!(
            f.verdict(c, id(3), quiet),
            Verdict::Serve,
            "not a downloader"
        );
        f.downloader(c, quiet);
        assert_eq!(f.verdict(c, id(3), quiet), Verdict::Defer);
    }
}
