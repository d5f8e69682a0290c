//! Finding the other holders of a collection without a shared bootstrap
//! peer: every node that follows a collection *provides* a Kademlia key
//! derived from the collection id, and looks up the providers of that key,
//! dialing those it is not connected to. One DHT node in common is then
//! enough for two mirrors to meet.
//!
//! [`Schedule`] says when to provide and look up again: soon after a
//! collection is followed (the routing table may still be empty, and a
//! provide that reached nobody is lost), then less and less often, down to
//! every [`STEADY`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::kad::RecordKey;

use crate::keys::CollectionId;

/// Waits between rounds after a collection is followed, then [`STEADY`].
const RAMP: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(6),
    Duration::from_secs(12),
    Duration::from_secs(30),
    Duration::from_secs(60),
];
/// Wait between rounds once settled. Provider records live 48 hours in
/// libp2p's defaults, so this is about finding new peers, not keeping
/// records alive.
pub(crate) const STEADY: Duration = Duration::from_secs(300);

/// The Kademlia key a collection's holders provide:
/// `blake3("peermirror/v1/providers/" || collection id bytes)`.
pub fn provider_key(c: &CollectionId) -> RecordKey {
    let mut h = blake3::Hasher::new();
    h.update(b"peermirror/v1/providers/");
    h.update(&c.0);
    RecordKey::new(h.finalize().as_bytes())
}

/// When each followed collection's next round (provide + look up) is due.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    due: HashMap<CollectionId, (Instant, usize)>,
}

impl Schedule {
    /// Starts (or restarts, e.g. after the first peer connected) the ramp
    /// of `c` at `now`.
    pub(crate) fn start(&mut self, c: CollectionId, now: Instant) {
        self.due.insert(c, (now, 0));
    }

    /// Restarts every collection's ramp: the node had no peer and has one
    /// now, so what it provided so far reached nobody.
    pub(crate) fn restart_all(&mut self, now: Instant) {
        for v in self.due.values_mut() {
            *v = (now, 0);
        }
    }

    /// The collections due at `now`; each is rescheduled.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<CollectionId> {
        let mut out = Vec::new();
        for (c, (at, step)) in self.due.iter_mut() {
            if *at <= now {
                out.push(*c);
                *at = now + RAMP.get(*step).copied().unwrap_or(STEADY);
                *step += 1;
            }
        }
        out.sort_unstable_by_key(|c| c.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_ramp_down_to_steady_and_restart_when_peers_arrive() {
        let c = CollectionId([7; 32]);
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.start(c, t0);
        assert_eq!(s.due(t0), vec![c]);
        assert!(s.due(t0).is_empty(), "rescheduled");
        let mut t = t0;
        for wait in RAMP {
            assert!(s.due(t + wait - Duration::from_millis(1)).is_empty());
            t += wait;
            assert_eq!(s.due(t), vec![c]);
        }
        assert!(s.due(t + STEADY - Duration::from_millis(1)).is_empty());
        s.restart_all(t);
        assert_eq!(s.due(t), vec![c]);
        assert_ne!(provider_key(&c), provider_key(&CollectionId([8; 32])));
    }
}
