//! The bounded table of mirror records a node has taken: the newest record
//! per (mirror, collection), so a replayed older one is refused, and at
//! most [`MAX_RECORDS`] in all, the least recently taken evicted first.

use std::collections::HashMap;
use std::sync::Mutex;

use libp2p::PeerId;

use super::record::{RecordError, SignedMirrorRecord};
use crate::keys::CollectionId;
use crate::task::lock;

/// Most records kept. Each is at most 2 KiB; an honest node keeps one per
/// collection, so this covers thousands of mirrors. A flood of identities
/// can only push out records that their mirrors re-sign within
/// [`super::REPUBLISH`].
pub const MAX_RECORDS: usize = 4096;

/// A verified record as the table holds it.
#[derive(Clone, Debug)]
pub struct Held {
    /// The mirror.
    pub peer: PeerId,
    /// The record.
    pub record: SignedMirrorRecord,
    /// Its preferred prefixes, parsed.
    pub prefer: Vec<ipnet::IpNet>,
    /// Its wire encoding, to hand on to peers who ask.
    pub encoded: Vec<u8>,
    taken: u64,
}

/// The records taken, keyed by (mirror, collection).
pub struct MirrorTable {
    cap: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    map: HashMap<(PeerId, CollectionId), Held>,
    tick: u64,
}

impl Default for MirrorTable {
    fn default() -> Self {
        MirrorTable::with_capacity(MAX_RECORDS)
    }
}

impl MirrorTable {
    /// A table keeping at most `cap` records.
    pub fn with_capacity(cap: usize) -> Self {
        MirrorTable {
            cap: cap.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Takes a record that was verified, refusing it if the table holds
    /// one from the same mirror for the same collection with an equal or
    /// higher sequence (a replay). Evicts expired records, then the least
    /// recently taken one, when full.
    pub fn insert(&self, record: SignedMirrorRecord, now: u64) -> Result<(), RecordError> {
        let Some(peer) = record.body.peer_id() else {
            return Err(RecordError::OutOfRange("peer"));
        };
        let key = (peer, record.body.collection);
        let mut st = lock(&self.state);
        if let Some(old) = st.map.get(&key) {
            if record.body.seq <= old.record.body.seq {
                return Err(RecordError::Replayed {
                    seq: record.body.seq,
                    known: old.record.body.seq,
                });
            }
        }
        if !st.map.contains_key(&key) && st.map.len() >= self.cap {
            st.map.retain(|_, h| h.record.body.expires_at > now);
            if st.map.len() >= self.cap {
                if let Some(oldest) = st.map.iter().min_by_key(|(_, h)| h.taken).map(|(k, _)| *k) {
                    st.map.remove(&oldest);
                }
            }
        }
        st.tick += 1;
        let prefer = record.body.prefer.iter().filter_map(|p| p.net()).collect();
        let held = Held {
            peer,
            encoded: record.encode(),
            record,
            prefer,
            taken: st.tick,
        };
        st.map.insert(key, held);
        Ok(())
    }

    /// The unexpired records of collection `c`.
    pub fn of(&self, c: &CollectionId, now: u64) -> Vec<Held> {
        let mut v: Vec<Held> = lock(&self.state)
            .map
            .values()
            .filter(|h| h.record.body.collection == *c && h.record.body.expires_at > now)
            .cloned()
            .collect();
        v.sort_by_key(|h| h.peer.to_bytes());
        v
    }

    /// The record of `peer` for `c`, expired or not.
    pub fn get(&self, peer: &PeerId, c: &CollectionId) -> Option<Held> {
        lock(&self.state).map.get(&(*peer, *c)).cloned()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        lock(&self.state).map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
