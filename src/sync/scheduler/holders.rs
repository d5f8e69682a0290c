//! Who holds what: the peer list, have-map updates and what follows from
//! them (holder counts, orphans, candidate stacks), polls of peers without
//! a map, seeders, bans.

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{Action, Scheduler, Slot};
use crate::hash::Hash;
use crate::net::MAX_HAVE_IDS;
use crate::sync::peers::{class, Bits, Peer};

impl Scheduler {
    pub(super) fn on_peers(&mut self, list: Vec<(PeerId, Option<Duration>)>, now: Instant) {
        let n = self.chunks.len();
        for (id, rtt) in list {
            if self.peers.banned.contains(&id) {
                continue;
            }
            let p = self
                .peers
                .map
                .entry(id)
                .or_insert_with(|| Peer::new(n, rtt, self.poll_all, now));
            p.seen = true;
            p.ping(rtt);
        }
        let gone: Vec<PeerId> = self
            .peers
            .map
            .iter_mut()
            .filter_map(|(id, p)| {
                let keep =
                    std::mem::take(&mut p.seen) || !p.inflight.is_empty() || !p.late.is_empty();
                (!keep).then_some(*id)
            })
            .collect();
        for id in gone {
            self.reset_have(&id);
            self.peers.map.remove(&id);
        }
    }

    /// Records that `peer` holds (or not) chunk `i`, keeping the holder
    /// counts, the orphans and the candidate stacks right.
    pub(super) fn learn(&mut self, peer: &PeerId, i: u32, held: bool) {
        self.work += 1;
        let Some(p) = self.peers.map.get_mut(peer) else {
            return;
        };
        if (i as usize) >= self.chunks.len() {
            return;
        }
        let Some(have) = p.have.as_mut() else {
            return; // a seeder holds everything already
        };
        let changed = if held { have.set(i) } else { have.clear(i) };
        if !changed {
            return;
        }
        let before = self.avail[i as usize];
        let after = if held { before + 1 } else { before - 1 };
        self.avail[i as usize] = after;
        if self.state[i as usize] != Slot::Needed {
            return;
        }
        match (before, after) {
            (0, _) => {
                self.orphans.remove(i);
            }
            (_, 0) => {
                self.orphans.insert(i);
            }
            _ => {}
        }
        if held {
            p.stacks[class(after)].push(i);
        }
        if after > 0 && class(after) != class(before) {
            self.push_to_holders(i, Some(*peer));
        }
    }

    /// Puts needed chunk `i` on the stack of every peer holding it (but
    /// `except`), at its current class.
    pub(super) fn push_to_holders(&mut self, i: u32, except: Option<PeerId>) {
        let c = class(self.avail[i as usize]);
        for (id, p) in &mut self.peers.map {
            self.work += 1;
            if Some(*id) != except && !p.is_seeder() && p.holds(i) {
                p.stacks[c].push(i);
            }
        }
    }

    /// `peer` holds everything: it counts as a seeder, not as a holder.
    pub(super) fn set_seeder(&mut self, peer: &PeerId) {
        let held = match self.peers.map.get(peer) {
            Some(p) => p.have.as_ref().map(|h| h.ones()).unwrap_or_default(),
            None => return,
        };
        for i in held {
            self.learn(peer, i, false);
        }
        if let Some(p) = self.peers.map.get_mut(peer) {
            p.have = None;
            p.stacks = Default::default();
        }
    }

    /// Forgets what `peer` holds (a seeder becomes a peer holding nothing).
    pub(super) fn reset_have(&mut self, peer: &PeerId) {
        let held = match self.peers.map.get_mut(peer) {
            Some(p) if p.is_seeder() => {
                p.have = Some(Bits::new(self.chunks.len()));
                return;
            }
            Some(p) => p.have.as_ref().map(|h| h.ones()).unwrap_or_default(),
            None => return,
        };
        for i in held {
            self.learn(peer, i, false);
        }
    }

    /// A seeder turned out to lack a chunk: it becomes a peer that holds
    /// every chunk still to come, one by one (rare: costs one pass).
    pub(super) fn demote_seeder(&mut self, peer: &PeerId) {
        self.reset_have(peer);
        for i in 0..self.chunks.len() as u32 {
            if self.state[i as usize] != Slot::Done {
                self.learn(peer, i, true);
            }
        }
    }

    /// Asks each polled peer without an answer pending about the next
    /// slice of the chunks not yet received.
    pub(super) fn ask_polled(&mut self, out: &mut Vec<Action>) {
        let targets: Vec<PeerId> = self
            .peers
            .map
            .iter()
            .filter(|(_, p)| p.polled && !p.poll_pending && !p.is_seeder())
            .map(|(id, _)| *id)
            .collect();
        if targets.is_empty() {
            return;
        }
        let total = self.needed.len() + self.flying.len();
        let take = total.min(MAX_HAVE_IDS);
        let mut indices = Vec::with_capacity(take);
        for k in 0..take {
            let at = (self.poll_cursor + k) % total.max(1);
            let i = match self.needed.items().get(at) {
                Some(&i) => i,
                None => self.flying.items()[at - self.needed.len()],
            };
            indices.push(i);
        }
        self.work += take as u64;
        self.poll_cursor = (self.poll_cursor + take) % total.max(1);
        if indices.is_empty() {
            return;
        }
        let ids: Vec<Hash> = indices
            .iter()
            .map(|&i| self.chunks[i as usize].id)
            .collect();
        for peer in targets {
            if let Some(p) = self.peers.map.get_mut(&peer) {
                p.poll_pending = true;
            }
            out.push(Action::AskHave {
                peer,
                indices: indices.clone(),
                ids: ids.clone(),
            });
        }
    }

    /// `peer` sent wrong bytes: it is never asked again in this download.
    pub(super) fn ban(&mut self, peer: &PeerId, now: Instant) {
        self.peers.banned.insert(*peer);
        self.reset_have(peer);
        if let Some(p) = self.peers.map.get_mut(peer) {
            p.bench_until(now + Duration::from_secs(24 * 3600));
            p.stacks = Default::default();
        }
    }

    /// A debug line on where the download stands, peer by peer.
    pub(super) fn summary(&self) {
        let peers: Vec<String> = self
            .peers
            .map
            .iter()
            .map(|(id, p)| {
                let id = id.to_string();
                format!("{}: {}", &id[id.len().saturating_sub(6)..], p.summary())
            })
            .collect();
        tracing::debug!(
            remaining = self.remaining,
            needed = self.needed.len(),
            orphans = self.orphans.len(),
            flying = self.flying.len(),
            peers = %peers.join("; "),
            "download state"
        );
    }
}
