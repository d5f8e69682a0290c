//! What a download knows about one peer: which chunks it holds, the
//! requests queued there, how fast it delivers, and whether it misbehaved.
//! The [`super::scheduler`] keeps one [`Peer`] per connected peer; time
//! comes in from the caller, so every rule is tested without waiting.
//!
//! Speed is measured, not assumed: `latency` is the time to the first
//! answer of a request (biased to its minimum, so queueing at the peer does
//! not inflate it), `rate` a moving average of the bytes delivered per
//! second while requests were outstanding. From them come the bytes a peer
//! may have in flight (its *window*: twice the bandwidth-delay product,
//! within [`MIN_WINDOW`]..=[`MAX_WINDOW`], or down to a quarter second of
//! its rate for a slow peer) and the *expected delivery
//! time* of one more chunk there, which decides who gets each chunk.
//!
//! A peer earns requests only by answering them: a NotFound for a chunk it
//! claimed and a failed request count against it. A peer whose requests
//! make no progress for longer than its deadline has them given up
//! ("late"): their chunks are asked elsewhere, while the late requests keep
//! occupying its window, so a peer that accepts requests and never answers
//! soon gets none.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Bytes a peer may always have in flight, whatever its measured speed:
/// enough for a few batches of small chunks (the server reads a batch from
/// disk before the first byte leaves) and for two of the largest chunks.
pub const MIN_WINDOW: u64 = 4 << 20;
/// Bytes in flight to one peer at most.
pub const MAX_WINDOW: u64 = 64 << 20;
/// Seconds of its measured rate a slow peer may have in flight beyond its
/// bandwidth-delay product: see [`Peer::window`].
pub(super) const HORIZON: f64 = 0.25;
/// The smallest window of a measured peer: a chunk of average size (and
/// two requests always fit, whatever their size).
pub(super) const FLOOR_WINDOW: u64 = 1 << 20;
/// A peer is benched for this long after repeated failures.
pub(super) const BENCH: Duration = Duration::from_secs(5);
/// Requests without progress are given up after this long at least...
pub(super) const MIN_DEADLINE: Duration = Duration::from_secs(2);
/// ... or after this many times the time the peer should need, if longer.
const DEADLINE_FACTOR: f64 = 4.0;
/// The estimates never make one chunk look slower than this (seconds):
/// one request's own timeout.
const MAX_SECS: f64 = 60.0;
/// Failures in a row before a peer is benched.
pub(super) const MAX_FAILURES: u32 = 3;
/// How much longer a peer that holds everything may look before a peer
/// that holds only part is preferred: such a peer is the source (or a
/// finished mirror), and the source should be the holder of last resort so
/// that it uploads each chunk about once however many mirrors there are.
pub(super) const SEEDER_FACTOR: f64 = 3.0;
/// Latency assumed before any is measured (seconds).
const DEFAULT_LATENCY: f64 = 0.05;
/// Delivery rate assumed before any is measured (bytes per second).
const DEFAULT_RATE: f64 = (4 << 20) as f64;
/// A rate sample spans at least this long.
const SAMPLE: Duration = Duration::from_millis(100);
/// Rarity classes of the per-peer candidate stacks: chunks held by one
/// peer, two, three or four, five or more.
pub(super) const CLASSES: usize = 4;

/// The rarity class of a chunk with `holders` peers holding it (seeders
/// aside).
pub(super) fn class(holders: u16) -> usize {
    match holders {
        0 | 1 => 0,
        2 => 1,
        3 | 4 => 2,
        _ => 3,
    }
}

/// One bit per chunk of the download.
pub(super) struct Bits(Vec<u64>);

impl Bits {
    pub fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    pub fn get(&self, i: u32) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Sets bit `i`; whether it was clear.
    pub fn set(&mut self, i: u32) -> bool {
        let w = &mut self.0[(i / 64) as usize];
        let was = *w & (1 << (i % 64)) != 0;
        *w |= 1 << (i % 64);
        !was
    }
    /// Clears bit `i`; whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        let w = &mut self.0[(i / 64) as usize];
        let was = *w & (1 << (i % 64)) != 0;
        *w &= !(1 << (i % 64));
        was
    }
    /// The set bits, ascending.
    pub fn ones(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (k, &w) in self.0.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let b = w.trailing_zeros();
                out.push(k as u32 * 64 + b);
                w &= w - 1;
            }
        }
        out
    }
}

/// One peer of a download.
pub(super) struct Peer {
    /// The chunks it holds; `None` for a seeder (it holds every chunk).
    pub have: Option<Bits>,
    /// Candidate chunks per rarity class, most recently learned on top.
    /// Entries go stale (chunk taken, class changed) and are skipped when
    /// popped, so keeping them right costs nothing per event.
    pub stacks: [Vec<u32>; CLASSES],
    /// Requests in flight: chunk -> its length, when it was asked, and how
    /// long it should take given the bytes queued here before it.
    pub inflight: HashMap<u32, (u32, Instant, Duration)>,
    pub inflight_bytes: u64,
    /// Requests given up as late but not answered: they occupy the peer's
    /// window, not the download.
    pub late: HashMap<u32, u32>,
    pub late_bytes: u64,
    /// Chunks it sent elsewhere (it gave its first copy to another
    /// downloader), and until when not to ask it for them again.
    pub declined: HashMap<u32, Instant>,
    /// Seconds to a first answer (biased to the minimum seen).
    latency: f64,
    /// Bytes per second while busy (moving average); 0 until measured.
    rate: f64,
    /// A rate sample being taken: since when, bytes so far.
    sample: Option<(Instant, u64)>,
    /// Last answer, or the start of the current busy period.
    pub last_progress: Instant,
    /// Largest chunk in flight recently (for the deadline).
    biggest: u32,
    failures: u32,
    benched_until: Option<Instant>,
    /// Listed in the last peer list.
    pub seen: bool,
    /// Asked about ids (no have-map subscription), and whether an answer
    /// is awaited.
    pub polled: bool,
    pub poll_pending: bool,
}

impl Peer {
    pub fn new(n: usize, rtt: Option<Duration>, polled: bool, now: Instant) -> Self {
        Peer {
            have: Some(Bits::new(n)),
            stacks: Default::default(),
            inflight: HashMap::new(),
            inflight_bytes: 0,
            late: HashMap::new(),
            late_bytes: 0,
            declined: HashMap::new(),
            latency: rtt.map_or(DEFAULT_LATENCY, |r| r.as_secs_f64().max(0.0001)),
            rate: 0.0,
            sample: None,
            last_progress: now,
            biggest: 0,
            failures: 0,
            benched_until: None,
            seen: true,
            polled,
            poll_pending: false,
        }
    }

    pub fn is_seeder(&self) -> bool {
        self.have.is_none()
    }

    pub fn holds(&self, i: u32) -> bool {
        self.have.as_ref().is_none_or(|h| h.get(i))
    }

    /// A ping RTT: a latency sample.
    pub fn ping(&mut self, rtt: Option<Duration>) {
        if let Some(r) = rtt {
            self.latency_sample(r);
        }
    }

    fn latency_sample(&mut self, d: Duration) {
        let s = d.as_secs_f64().clamp(0.0001, MAX_SECS);
        self.latency = if s < self.latency {
            s
        } else {
            0.95 * self.latency + 0.05 * s
        };
    }

    /// Measured bytes per second, or the default guess.
    fn rate(&self) -> f64 {
        if self.rate > 0.0 {
            self.rate
        } else {
            DEFAULT_RATE
        }
    }

    /// Whether its rate has been measured.
    #[cfg(test)]
    pub fn measured(&self) -> bool {
        self.rate > 0.0
    }

    /// Bytes this peer may have in flight: twice its bandwidth-delay
    /// product (one for the pipe, one for the batch being prepared).
    pub fn window(&self) -> u64 {
        let bdp = self.rate * self.latency;
        ((2.0 * bdp) as u64).clamp(self.least_window(), MAX_WINDOW)
    }

    /// The window however short the latency: [`MIN_WINDOW`] for a fast peer
    /// or one not measured yet, [`HORIZON`] of its rate for a slow one (at
    /// least [`FLOOR_WINDOW`]). A peer that shares its upload among many
    /// downloaders is slow for each of them; requests piled up there wait
    /// for seconds while a peer that got the chunk since could send it at
    /// once, so the chunks stay unassigned until a holder can start on
    /// them soon.
    fn least_window(&self) -> u64 {
        if self.rate > 0.0 {
            ((self.rate * HORIZON) as u64).clamp(FLOOR_WINDOW, MIN_WINDOW)
        } else {
            MIN_WINDOW
        }
    }

    fn queued(&self) -> u64 {
        self.inflight_bytes + self.late_bytes
    }

    pub fn benched(&self, now: Instant) -> bool {
        self.benched_until.is_some_and(|t| t > now)
    }

    /// Whether one more request fits (at least two always do).
    pub fn has_space(&self, now: Instant) -> bool {
        !self.benched(now)
            && (self.queued() < self.window() || self.inflight.len() + self.late.len() < 2)
    }

    /// Whether to give this peer more work now: a quarter of its window is
    /// free, so requests go out in batches rather than one per answer.
    pub fn wants_more(&self, now: Instant) -> bool {
        let w = self.window();
        self.has_space(now) && (self.queued() == 0 || self.queued() + w / 4 <= w)
    }

    /// How long the request for chunk `i` has waited here, if there is one,
    /// and how long it should take: on its own, or behind the bytes queued
    /// here when it was sent if that is longer. The endgame duplicates it
    /// once it has waited twice that, so a request that is merely queued
    /// behind others (a window of many MiB) is not asked twice.
    pub fn waiting(&self, i: u32, now: Instant) -> Option<(Duration, Duration)> {
        let (len, sent, queued) = self.inflight.get(&i)?;
        let alone = self.latency + f64::from(*len) / self.rate();
        let should = alone.max(queued.as_secs_f64());
        Some((
            now.saturating_duration_since(*sent),
            Duration::from_secs_f64((2.0 * should).min(MAX_SECS)),
        ))
    }

    /// Seconds until one more chunk of `len` bytes would arrive from here.
    pub fn expected(&self, len: u32) -> f64 {
        let t = self.latency + (self.queued() + u64::from(len)) as f64 / self.rate();
        if self.is_seeder() {
            t * SEEDER_FACTOR
        } else {
            t
        }
    }

    /// A request for chunk `i` of `len` bytes is sent at `now`.
    pub fn start(&mut self, i: u32, len: u32, now: Instant) {
        if self.inflight.is_empty() && self.late.is_empty() {
            self.last_progress = now;
            self.sample = None;
        }
        let should = Duration::from_secs_f64(
            (self.latency + (self.queued() + u64::from(len)) as f64 / self.rate()).min(MAX_SECS),
        );
        if self.inflight.insert(i, (len, now, should)).is_none() {
            self.inflight_bytes += u64::from(len);
        }
        self.biggest = self.biggest.max(len);
    }

    /// The request for chunk `i` ended (any outcome): `Some(false)` if it
    /// was in flight, `Some(true)` if it had been given up as late, `None`
    /// if no such request was known.
    pub fn finish(&mut self, i: u32) -> Option<bool> {
        if let Some((len, _, _)) = self.inflight.remove(&i) {
            self.inflight_bytes -= u64::from(len);
            return Some(false);
        }
        let len = self.late.remove(&i)?;
        self.late_bytes -= u64::from(len);
        Some(true)
    }

    /// `len` verified bytes arrived at `now`; `waited` is the time from the
    /// request to this first answer of it, if it is one.
    pub fn delivered(&mut self, len: usize, now: Instant, waited: Option<Duration>) {
        self.failures = 0;
        self.last_progress = now;
        if let Some(w) = waited {
            self.latency_sample(w);
        }
        match &mut self.sample {
            None => self.sample = Some((now, 0)),
            Some((since, bytes)) => {
                *bytes += len as u64;
                let dt = now.saturating_duration_since(*since);
                if dt >= SAMPLE {
                    let r = *bytes as f64 / dt.as_secs_f64();
                    self.rate = if self.rate > 0.0 {
                        0.7 * self.rate + 0.3 * r
                    } else {
                        r
                    };
                    self.sample = Some((now, 0));
                }
            }
        }
        if self.inflight.is_empty() && self.late.is_empty() {
            self.sample = None;
        }
    }

    /// It answered `Elsewhere` for chunk `i` at `now`: an answer (progress,
    /// not a failure), and the chunk is not asked of it again before
    /// `until`.
    pub fn decline(&mut self, i: u32, now: Instant, until: Instant) {
        self.last_progress = now;
        self.declined.insert(i, until);
    }

    /// Whether it sent chunk `i` elsewhere and is not to be asked yet.
    pub fn declines(&self, i: u32, now: Instant) -> bool {
        self.declined.get(&i).is_some_and(|&t| t > now)
    }

    /// A request failed at `now`: after [`MAX_FAILURES`] in a row the peer
    /// is benched for [`BENCH`].
    pub fn failed(&mut self, now: Instant) {
        self.failures += 1;
        self.rate *= 0.5;
        if self.failures >= MAX_FAILURES {
            self.benched_until = Some(now + BENCH);
            self.failures = 0;
        }
    }

    /// How long requests here may go without progress.
    pub fn deadline(&self) -> Duration {
        let need = self.latency + f64::from(self.biggest.max(1)) / self.rate();
        MIN_DEADLINE.max(Duration::from_secs_f64(
            (need * DEADLINE_FACTOR).min(MAX_SECS),
        ))
    }

    /// When requests in flight here become late, if any are.
    pub fn overdue_at(&self) -> Option<Instant> {
        (!self.inflight.is_empty()).then(|| self.last_progress + self.deadline())
    }

    /// Moves every request in flight to the late set (their chunks are to
    /// be asked elsewhere) and returns their chunks. Not a failure: a slow
    /// peer is not a faulty one, but it is now known to be slow.
    pub fn give_up(&mut self, now: Instant) -> Vec<u32> {
        let waited = now.saturating_duration_since(self.last_progress);
        let out: Vec<u32> = self.inflight.keys().copied().collect();
        for (i, (len, _, _)) in self.inflight.drain() {
            self.late.insert(i, len);
        }
        self.late_bytes += self.inflight_bytes;
        self.inflight_bytes = 0;
        // It delivered nothing for `waited`: the rate is at most what it
        // would take to deliver the biggest chunk in that time.
        let cap = f64::from(self.biggest.max(1)) / waited.as_secs_f64().max(0.001);
        self.rate = if self.rate > 0.0 {
            self.rate.min(cap)
        } else {
            cap
        };
        out
    }

    /// One line for the periodic debug summary: held chunks (`all` for a
    /// seeder), bytes queued, window, measured rate and latency.
    pub fn summary(&self) -> String {
        let held = self.have.as_ref().map_or("all".to_string(), |h| {
            h.0.iter().map(|w| w.count_ones()).sum::<u32>().to_string()
        });
        format!(
            "{held} q{:.1}M w{:.1}M r{:.2}MB/s l{:.0}ms",
            self.queued() as f64 / f64::from(1u32 << 20),
            self.window() as f64 / f64::from(1u32 << 20),
            self.rate / 1e6,
            self.latency * 1e3
        )
    }

    /// Benched until `until`.
    pub fn bench_until(&mut self, until: Instant) {
        self.benched_until = Some(until);
    }

    /// When the bench running at `now` ends.
    pub fn returns_at(&self, now: Instant) -> Option<Instant> {
        self.benched_until.filter(|&t| t > now)
    }
}

/// The peers of a download, by id, and those banned from it.
#[derive(Default)]
pub(super) struct Peers {
    pub map: HashMap<PeerId, Peer>,
    pub banned: std::collections::HashSet<PeerId>,
}
