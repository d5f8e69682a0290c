//! Peer accounting over the node's lifetime: every download reports what
//! peers did wrong (see [`Offence`]); each offence adds points to the
//! peer's record, points fade with time, and a peer whose points reach
//! [`BAN_AT`] is banned: disconnected, refused and blacklisted in gossip
//! for `[limits] ban_secs`, and asked nothing by any download meanwhile.
//!
//! Slowness is never an offence (downloads ask a slow peer's chunks
//! elsewhere instead); only what an honest peer does not do counts, and
//! fading points forgive the rare honest mistake (a chunk collected just
//! after a have-map said it was there).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::Instrument;

use crate::net;
use crate::sync::{Offence, PeerAccounting};
use crate::task::lock;

/// Points at which a peer is banned.
pub(crate) const BAN_AT: f64 = 100.0;
/// Points forgiven per second: one every ten seconds.
const FADE_PER_SEC: f64 = 0.1;
/// Records kept before those with nothing against them are dropped.
const MAX_RECORDS: usize = 4096;

/// Points one offence costs: wrong bytes ban at once; a false chunk list
/// or a malformed frame twice; a NotFound for a claimed chunk or a request
/// left to time out ten times in a short while.
fn points(o: Offence) -> f64 {
    match o {
        Offence::WrongBytes => BAN_AT,
        Offence::FalseList | Offence::Malformed => BAN_AT / 2.0,
        Offence::FalseHave | Offence::Stall => BAN_AT / 10.0,
    }
}

/// One peer's record.
#[derive(Clone, Copy, Debug)]
struct Record {
    points: f64,
    /// When `points` was last brought up to date.
    at: Instant,
    banned_until: Option<Instant>,
}

impl Record {
    fn fade(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.points = (self.points - secs * FADE_PER_SEC).max(0.0);
        self.at = now;
    }
}

/// The records, without I/O or clock: time comes in as `now`.
#[derive(Debug)]
pub(crate) struct Scores {
    records: HashMap<PeerId, Record>,
    ban_for: Duration,
}

impl Scores {
    pub(crate) fn new(ban_for: Duration) -> Self {
        Scores {
            records: HashMap::new(),
            ban_for,
        }
    }

    /// Records `o` by `peer` at `now`; returns whether the peer is banned
    /// by it (not if it already was).
    pub(crate) fn offence(&mut self, peer: PeerId, o: Offence, now: Instant) -> bool {
        if self.records.len() >= MAX_RECORDS {
            self.records.retain(|_, r| {
                r.fade(now);
                r.points > 0.0 || r.banned_until.is_some_and(|t| t > now)
            });
        }
        if self.records.len() >= MAX_RECORDS {
            // Flooded with fresh ids: keep the bans, forget the rest.
            self.records
                .retain(|_, r| r.banned_until.is_some_and(|t| t > now));
        }
        let r = self.records.entry(peer).or_insert(Record {
            points: 0.0,
            at: now,
            banned_until: None,
        });
        r.fade(now);
        r.points += points(o);
        if r.points >= BAN_AT && r.banned_until.is_none_or(|t| t <= now) {
            r.banned_until = Some(now + self.ban_for);
            return true;
        }
        false
    }

    pub(crate) fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.records
            .get(peer)
            .and_then(|r| r.banned_until)
            .is_some_and(|t| t > now)
    }
}

/// The node's [`PeerAccounting`]: [`Scores`] plus the network, which
/// enforces a ban.
pub(crate) struct Reputation {
    scores: Mutex<Scores>,
    client: net::Client,
    ban_for: Duration,
}

impl Reputation {
    pub(crate) fn new(client: net::Client, ban_for: Duration) -> Self {
        Reputation {
            scores: Mutex::new(Scores::new(ban_for)),
            client,
            ban_for,
        }
    }
}

impl PeerAccounting for Reputation {
    fn offence(&self, peer: PeerId, offence: Offence) {
        let ban = lock(&self.scores).offence(peer, offence, Instant::now());
        tracing::debug!(%peer, ?offence, "peer offence");
        if ban {
            tracing::warn!(%peer, ?offence, secs = self.ban_for.as_secs(), "banning a misbehaving peer");
            let client = self.client.clone();
            let d = self.ban_for;
            tokio::spawn(
                async move {
                    if let Err(e) = client.ban(peer, d).await {
                        tracing::debug!(%peer, error = %e, "could not ban");
                    }
                }
                .in_current_span(),
            );
        }
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        lock(&self.scores).is_banned(peer, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAN: Duration = Duration::from_secs(600);

    #[test]
    fn wrong_bytes_ban_at_once_for_the_ban_time() {
        let t = Instant::now();
        let p = PeerId::random();
        let mut s = Scores::new(BAN);
        assert!(s.offence(p, Offence::WrongBytes, t));
        assert!(s.is_banned(&p, t + BAN - Duration::from_secs(1)));
        assert!(!s.is_banned(&p, t + BAN), "the ban ends");
        assert!(!s.is_banned(&PeerId::random(), t));
    }

    #[test]
    fn repeated_small_offences_ban_and_rare_ones_fade() {
        let t = Instant::now();
        let (liar, unlucky) = (PeerId::random(), PeerId::random());
        let mut s = Scores::new(BAN);
        for k in 0..9 {
            assert!(!s.offence(liar, Offence::FalseHave, t), "offence {k}");
        }
        assert!(s.offence(liar, Offence::FalseHave, t), "the tenth bans");
        assert!(
            !s.offence(liar, Offence::FalseHave, t),
            "banned once, not again"
        );
        // One NotFound every two minutes never adds up.
        for k in 0..100 {
            let now = t + Duration::from_secs(120 * k);
            assert!(!s.offence(unlucky, Offence::FalseHave, now));
            assert!(!s.is_banned(&unlucky, now));
        }
        // Two false lists in a row ban.
        let l = PeerId::random();
        assert!(!s.offence(l, Offence::FalseList, t));
        assert!(s.offence(l, Offence::FalseList, t));
    }

    #[test]
    fn records_stay_bounded() {
        let t = Instant::now();
        let mut s = Scores::new(BAN);
        for _ in 0..3 * MAX_RECORDS {
            s.offence(PeerId::random(), Offence::Stall, t);
        }
        assert!(s.records.len() <= MAX_RECORDS + 1);
    }
}
