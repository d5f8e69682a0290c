//! Handing out requests: peers with room pull, each chunk goes to the
//! holder expected to deliver it soonest, then the endgame.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

use super::{Action, Scheduler, Slot, ENDGAME_WAIT, PICKS_PER_POLL};
use crate::net::MAX_GET_IDS;
use crate::sync::peers::class;

impl Scheduler {
    /// Step 2 and 3 of the rules: peers with room pull chunks, each going
    /// to its best holder; then the endgame.
    pub(super) fn start_requests(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut budget = PICKS_PER_POLL;
        let mut batches: HashMap<PeerId, Vec<u32>> = HashMap::new();
        // Peers that hold part first, so seeders get what is left.
        let mut pullers: Vec<(bool, PeerId)> = self
            .peers
            .map
            .iter()
            .filter(|(_, p)| p.wants_more(now))
            .map(|(id, p)| (p.is_seeder(), *id))
            .collect();
        pullers.sort_unstable_by_key(|(seeder, _)| *seeder);
        for (seeder, id) in pullers {
            if seeder {
                self.pull_seeder(id, now, &mut budget, &mut batches);
            } else {
                self.pull_partial(id, now, &mut budget, &mut batches);
            }
        }
        if self.needed.is_empty() {
            self.endgame(now, &mut budget, &mut batches);
        }
        for (peer, indices) in batches {
            for part in indices.chunks(MAX_GET_IDS) {
                out.push(Action::Fetch {
                    peer,
                    indices: part.to_vec(),
                    ids: part.iter().map(|&i| self.chunks[i as usize].id).collect(),
                });
            }
        }
    }

    pub(super) fn has_space(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers.map.get(peer).is_some_and(|p| p.has_space(now))
    }

    /// A peer holding part pulls its rarest candidates.
    pub(super) fn pull_partial(
        &mut self,
        id: PeerId,
        now: Instant,
        budget: &mut usize,
        batches: &mut HashMap<PeerId, Vec<u32>>,
    ) {
        while *budget > 0 && self.has_space(&id, now) {
            let Some(p) = self.peers.map.get_mut(&id) else {
                return;
            };
            let Some((c, i)) = p
                .stacks
                .iter_mut()
                .enumerate()
                .find_map(|(c, s)| s.pop().map(|i| (c, i)))
            else {
                return;
            };
            *budget -= 1;
            self.work += 1;
            if self.state[i as usize] != Slot::Needed
                || !p.holds(i)
                || class(self.avail[i as usize]) != c
            {
                continue; // stale
            }
            // None: no holder with room will do (this one, too, has a
            // late request for it); the chunk waits for the next push.
            if let Some(to) = self.best_holder(i, now, &[]) {
                self.assign(i, to, now, batches);
            }
        }
    }

    /// A seeder pulls what no other peer holds, then what the holders
    /// cannot deliver sooner; never what it sent elsewhere lately.
    pub(super) fn pull_seeder(
        &mut self,
        id: PeerId,
        now: Instant,
        budget: &mut usize,
        batches: &mut HashMap<PeerId, Vec<u32>>,
    ) {
        let mut cursor = Cursor::Orphans(self.orphans.len());
        while *budget > 0 && self.has_space(&id, now) {
            let Some(i) = self.seeder_candidate(&id, now, budget, &mut cursor) else {
                return;
            };
            match self.best_holder(i, now, &[]) {
                Some(to) => self.assign(i, to, now, batches),
                None => return,
            }
        }
    }

    /// The next chunk seeder `id` may be asked for: the orphans from the
    /// top of their pool down, then the other needed chunks, skipping those
    /// it declined. Each chunk examined costs one of `budget`. Taking the
    /// chunk returned out of its pool moves only chunks already examined
    /// (the pool's last) into its place, so the cursor stays right.
    fn seeder_candidate(
        &mut self,
        id: &PeerId,
        now: Instant,
        budget: &mut usize,
        cursor: &mut Cursor,
    ) -> Option<u32> {
        let p = self.peers.map.get(id)?;
        while *budget > 0 {
            let (pool, left) = match cursor {
                Cursor::Orphans(0) => {
                    *cursor = Cursor::Needed(self.needed.len());
                    continue;
                }
                Cursor::Needed(0) => return None,
                Cursor::Orphans(left) => (&self.orphans, left),
                Cursor::Needed(left) => (&self.needed, left),
            };
            let n = (*left).min(pool.len());
            if n == 0 {
                *left = 0;
                continue;
            }
            *budget -= 1;
            self.work += 1;
            *left = n - 1;
            let i = pool.items()[*left];
            if !p.declines(i, now) {
                return Some(i);
            }
        }
        None
    }

    /// The holder of chunk `i` with room that is expected to deliver it
    /// soonest, skipping `exclude`. A seeder qualifies for a chunk another
    /// peer holds only once it has no orphans left to serve, and only if
    /// it beats every other holder, room or not, by [`SEEDER_FACTOR`]
    /// (`expected` counts that factor in).
    ///
    /// [`SEEDER_FACTOR`]: crate::sync::peers::SEEDER_FACTOR
    pub(super) fn best_holder(
        &mut self,
        i: u32,
        now: Instant,
        exclude: &[PeerId],
    ) -> Option<PeerId> {
        let len = self.chunks[i as usize].len;
        let seeders_too = self.avail[i as usize] == 0 || self.orphans.is_empty();
        let mut best: Option<(f64, PeerId)> = None;
        let mut best_partial = f64::INFINITY;
        let mut best_seeder: Option<(f64, PeerId)> = None;
        for (id, p) in &self.peers.map {
            self.work += 1;
            if !p.holds(i)
                || exclude.contains(id)
                || p.benched(now)
                || p.late.contains_key(&i)
                || p.declines(i, now)
            {
                continue;
            }
            let t = p.expected(len);
            if p.is_seeder() {
                if seeders_too && p.has_space(now) && best_seeder.is_none_or(|(b, _)| t < b) {
                    best_seeder = Some((t, *id));
                }
                continue;
            }
            best_partial = best_partial.min(t);
            if p.has_space(now) && best.is_none_or(|(b, _)| t < b) {
                best = Some((t, *id));
            }
        }
        match (best, best_seeder) {
            (_, Some((s, sid))) if s < best_partial => Some(sid),
            (Some((_, id)), _) => Some(id),
            _ => None,
        }
    }

    /// Endgame: every chunk left is in flight; a request that has waited
    /// longer than it should (at least [`ENDGAME_WAIT`]) gets a second on
    /// another holder with room.
    pub(super) fn endgame(
        &mut self,
        now: Instant,
        budget: &mut usize,
        batches: &mut HashMap<PeerId, Vec<u32>>,
    ) {
        let flying: Vec<u32> = self.flying.items().iter().take(*budget).copied().collect();
        for i in flying {
            if *budget == 0 {
                return;
            }
            *budget -= 1;
            let mut busy = Vec::new();
            let mut slow = false;
            for (id, p) in &self.peers.map {
                self.work += 1;
                if let Some((waited, should)) = p.waiting(i, now) {
                    busy.push(*id);
                    slow |= waited >= should.max(ENDGAME_WAIT);
                }
            }
            if !slow {
                continue;
            }
            if let Some(to) = self.best_holder(i, now, &busy) {
                self.assign(i, to, now, batches);
            }
        }
    }

    /// Sends a request for chunk `i` to `peer` (in this poll's batch).
    pub(super) fn assign(
        &mut self,
        i: u32,
        peer: PeerId,
        now: Instant,
        batches: &mut HashMap<PeerId, Vec<u32>>,
    ) {
        let next = match self.state[i as usize] {
            Slot::Needed => Slot::InFlight(1),
            Slot::InFlight(n) => Slot::InFlight(n.saturating_add(1)),
            Slot::Done => return,
        };
        self.set(i, next);
        if let Some(p) = self.peers.map.get_mut(&peer) {
            p.start(i, self.chunks[i as usize].len, now);
        }
        batches.entry(peer).or_default().push(i);
    }
}

/// Where a seeder's scan of the needed chunks stands: the items of the
/// pool not examined yet are those below the count.
enum Cursor {
    Orphans(usize),
    Needed(usize),
}
