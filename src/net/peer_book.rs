//! What a node learned about its peers, kept across downloads and restarts:
//! each peer's id, the addresses it can be dialed at, and when it was last
//! seen. Bounded ([`MAX_PEERS`], [`MAX_ADDRS`]) and aged out ([`MAX_AGE`]),
//! so a node that met thousands of peers keeps the recent ones only.
//!
//! The network layer fills the book (addresses it dialed successfully, and
//! those a peer reported that passed the address filter); the node saves it
//! in the store's metadata ([`PeerBook::encode`]) and hands it back at the
//! next start, when the [`REDIAL_AT_START`] most recently seen are dialed.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Most peers remembered; the least recently seen go first.
pub const MAX_PEERS: usize = 256;
/// Most addresses remembered per peer; the newest are kept.
pub const MAX_ADDRS: usize = 8;
/// Peers not seen for this long are forgotten.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Peers dialed at start from the book.
pub const REDIAL_AT_START: usize = 8;

/// One remembered peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    /// Its identity.
    pub peer: PeerId,
    /// Addresses it may be dialed at, newest first.
    pub addrs: Vec<Multiaddr>,
    /// When it was last connected (seconds since the epoch).
    pub last_seen: u64,
}

/// The remembered peers.
#[derive(Debug, Clone, Default)]
pub struct PeerBook {
    peers: HashMap<PeerId, KnownPeer>,
}

/// The stored form: text, so it survives a change of libp2p's binary forms.
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    peers: Vec<(String, Vec<String>, u64)>,
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PeerBook {
    /// A book holding `peers` (bounded, aged out as of `now`).
    pub fn new(peers: Vec<KnownPeer>, now: u64) -> Self {
        let mut book = PeerBook::default();
        for p in peers {
            for a in p.addrs.iter().rev() {
                book.saw(p.peer, a.clone(), p.last_seen);
            }
        }
        book.prune(now);
        book
    }

    /// `peer` was seen at `now`, dialable at `addr`.
    pub(crate) fn saw(&mut self, peer: PeerId, addr: Multiaddr, now: u64) {
        let e = self.peers.entry(peer).or_insert_with(|| KnownPeer {
            peer,
            addrs: Vec::new(),
            last_seen: now,
        });
        e.last_seen = e.last_seen.max(now);
        e.addrs.retain(|a| a != &addr);
        e.addrs.insert(0, addr);
        e.addrs.truncate(MAX_ADDRS);
        if self.peers.len() > MAX_PEERS {
            self.prune(now);
        }
    }

    /// `peer` is still connected at `now`.
    pub(crate) fn touch(&mut self, peer: &PeerId, now: u64) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.last_seen = e.last_seen.max(now);
        }
    }

    /// Forgets `peer` (banned).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// Drops peers older than [`MAX_AGE`], then the oldest beyond [`MAX_PEERS`].
    fn prune(&mut self, now: u64) {
        let oldest = now.saturating_sub(MAX_AGE.as_secs());
        self.peers.retain(|_, p| p.last_seen >= oldest);
        if self.peers.len() > MAX_PEERS {
            let mut seen: Vec<u64> = self.peers.values().map(|p| p.last_seen).collect();
            seen.sort_unstable_by(|a, b| b.cmp(a));
            let cut = seen[MAX_PEERS - 1];
            self.peers.retain(|_, p| p.last_seen >= cut);
            // Ties at the cut: drop arbitrary ones until within bounds.
            let extra: Vec<PeerId> = self
                .peers
                .values()
                .filter(|p| p.last_seen == cut)
                .map(|p| p.peer)
                .take(self.peers.len().saturating_sub(MAX_PEERS))
                .collect();
            for p in extra {
                self.peers.remove(&p);
            }
        }
    }

    /// The peers, most recently seen first.
    pub fn peers(&self) -> Vec<KnownPeer> {
        let mut v: Vec<KnownPeer> = self.peers.values().cloned().collect();
        v.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.peer.cmp(&b.peer)));
        v
    }

    /// Number of peers remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The stored form (JSON).
    pub fn encode(&self) -> Vec<u8> {
        let stored = Stored {
            version: 1,
            peers: self
                .peers()
                .into_iter()
                .map(|p| {
                    (
                        p.peer.to_string(),
                        p.addrs.iter().map(|a| a.to_string()).collect(),
                        p.last_seen,
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// Reads the stored form; entries that do not parse are skipped, and an
    /// unreadable book is an empty one (it is only a hint).
    pub fn decode(bytes: &[u8], now: u64) -> PeerBook {
        let Ok(stored) = serde_json::from_slice::<Stored>(bytes) else {
            return PeerBook::default();
        };
        let peers = stored
            .peers
            .into_iter()
            .filter_map(|(id, addrs, last_seen)| {
                Some(KnownPeer {
                    peer: id.parse().ok()?,
                    addrs: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                    last_seen,
                })
            })
            .filter(|p| !p.addrs.is_empty())
            .collect();
        PeerBook::new(peers, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{}", 1000 + i).parse().unwrap()
    }

    #[test]
    fn the_book_is_bounded_aged_out_and_survives_encoding() {
        let now = 10 * MAX_AGE.as_secs();
        let mut book = PeerBook::default();
        let old = PeerId::random();
        book.saw(old, addr(0), now - MAX_AGE.as_secs() - 1);
        let ids: Vec<PeerId> = (0..MAX_PEERS as u32 + 10)
            .map(|_| PeerId::random())
            .collect();
        for (i, p) in ids.iter().enumerate() {
            book.saw(*p, addr(i as u32), now - 1000 + i as u64);
        }
        assert_eq!(book.len(), MAX_PEERS);
        let kept = book.peers();
        assert_eq!(kept[0].peer, *ids.last().unwrap(), "newest first");
        assert!(!kept.iter().any(|p| p.peer == old || p.peer == ids[0]));
        // Addresses: newest first, bounded, no duplicates.
        let p = ids[20];
        for i in 0..20 {
            book.saw(p, addr(i % 12), now);
        }
        let e = book.peers().into_iter().find(|k| k.peer == p).unwrap();
        assert_eq!(e.addrs.len(), MAX_ADDRS);
        assert_eq!(e.addrs[0], addr(19 % 12));
        // Round trip, and a corrupt book is empty rather than an error.
        let back = PeerBook::decode(&book.encode(), now);
        assert_eq!(back.peers(), book.peers());
        assert!(PeerBook::decode(b"{not json", now).is_empty());
        // Aged out on load too.
        let later = now + MAX_AGE.as_secs() + 2000;
        assert!(PeerBook::decode(&book.encode(), later).is_empty());
    }
}
