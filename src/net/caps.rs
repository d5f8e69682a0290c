//! Volunteer caps: how many chunk bytes per second this node sends to its
//! peers and takes from them, all peers together, as its owner decided
//! (`[limits] upload_rate`, `download_rate`).
//!
//! Each direction is a [`FairBucket`]: a token bucket (the long-run rate
//! is the cap, bursts are a tenth of a second of it) whose waiting callers
//! are served by start-time fair queueing, so that when several peers
//! download at once each gets an equal share of the upload cap, and a share
//! one peer leaves idle goes to the others at once (an idle peer earns no
//! credit to burst with later). A chunk larger than the burst is let through
//! once the bucket is full and leaves it in debt, so the rate holds for any
//! chunk size.
//!
//! The hooks are one call each: the chunk server calls [`Caps::upload`]
//! before it writes a chunk body, the client calls [`Caps::download`] after
//! it reads one (the next request waits for it, so the link settles at the
//! cap after the first requests of a download). Have-maps and manifest
//! lists are not counted: they are small and the protocol needs them.
//!
//! Written here rather than taken from `governor`: governor's keyed limiter
//! gives each key its own quota, not an equal share of one quota that
//! follows who is active, and its waits are not fair between keys.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::oneshot;

use crate::task::lock;

/// Seconds of the cap a full bucket holds: small, so no 10 s window sees
/// more than 1% above the cap.
const BURST_SECS: f64 = 0.1;
/// Smallest burst, so tiny caps still move a protocol frame at once.
const MIN_BURST: f64 = 16.0 * 1024.0;
/// Keys remembered before those that have nothing queued are forgotten.
const MAX_KEYS: usize = 4096;
/// Seconds of history behind a current rate.
const RATE_SECS: u64 = 5;

/// Where the caps stand, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CapsStats {
    /// The upload cap in bytes per second (`None`: unlimited).
    pub upload_cap: Option<u64>,
    /// The download cap in bytes per second (`None`: unlimited).
    pub download_cap: Option<u64>,
    /// The cap on distinct peers (`None`: only the connection limit),
    /// enforced where connections are admitted; here to be shown with the rest.
    pub max_peers: Option<u32>,
    /// Chunk bytes sent per second over the last few seconds.
    pub upload_rate: f64,
    /// Chunk bytes received per second over the last few seconds.
    pub download_rate: f64,
    /// Chunk bodies that had to wait for the upload cap, since start.
    pub upload_waits: u64,
    /// Chunk bodies that had to wait for the download cap, since start.
    pub download_waits: u64,
}

/// Both caps of a node, shared by its chunk server and its client.
pub(crate) struct Caps {
    up: Option<FairBucket<PeerId>>,
    down: Option<FairBucket<PeerId>>,
    up_meter: Meter,
    down_meter: Meter,
    up_waits: AtomicU64,
    down_waits: AtomicU64,
    max_peers: Option<u32>,
    /// When each peer last sent this node a chunk body.
    senders: Mutex<HashMap<PeerId, Instant>>,
}

impl Caps {
    /// Caps of `upload` and `download` bytes per second (0: unlimited);
    /// `max_peers` (0: none) is only reported.
    pub(crate) fn new(upload: u64, download: u64, max_peers: u32) -> Self {
        let bucket = |rate: u64| (rate > 0).then(|| FairBucket::new(rate));
        Caps {
            up: bucket(upload),
            down: bucket(download),
            up_meter: Meter::default(),
            down_meter: Meter::default(),
            up_waits: AtomicU64::new(0),
            down_waits: AtomicU64::new(0),
            max_peers: (max_peers > 0).then_some(max_peers),
            senders: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `n` bytes of a chunk body may be sent to `peer`.
    pub(crate) async fn upload(&self, peer: PeerId, n: usize) {
        if let Some(b) = &self.up {
            if b.acquire(peer, n as u64).await {
                self.up_waits.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.up_meter.record(n as u64, Instant::now());
    }

    /// Waits until `n` bytes of a chunk body received from `peer` may be
    /// taken, and remembers that `peer` sent some.
    pub(crate) async fn download(&self, peer: PeerId, n: usize) {
        if let Some(b) = &self.down {
            if b.acquire(peer, n as u64).await {
                self.down_waits.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        self.down_meter.record(n as u64, now);
        let mut senders = lock(&self.senders);
        if senders.len() >= MAX_KEYS && !senders.contains_key(&peer) {
            let old = now.checked_sub(Duration::from_secs(600));
            senders.retain(|_, t| old.is_none_or(|o| *t > o));
            if senders.len() >= MAX_KEYS {
                senders.clear();
            }
        }
        senders.insert(peer, now);
    }

    /// How many peers sent chunk bodies since `since`.
    pub(crate) fn senders_since(&self, since: Instant) -> usize {
        lock(&self.senders)
            .values()
            .filter(|t| **t >= since)
            .count()
    }

    /// Where the caps stand now.
    pub(crate) fn stats(&self) -> CapsStats {
        let now = Instant::now();
        CapsStats {
            upload_cap: self.up.as_ref().map(|b| b.rate as u64),
            download_cap: self.down.as_ref().map(|b| b.rate as u64),
            max_peers: self.max_peers,
            upload_rate: self.up_meter.rate(now),
            download_rate: self.down_meter.rate(now),
            upload_waits: self.up_waits.load(Ordering::Relaxed),
            download_waits: self.down_waits.load(Ordering::Relaxed),
        }
    }
}

/// A token bucket shared fairly between keys (peers): see the module docs.
pub(crate) struct FairBucket<K> {
    rate: f64,
    state: Mutex<Fair<K>>,
}

impl<K: Hash + Eq + Clone> FairBucket<K> {
    /// `rate` bytes per second (at least 1).
    pub(crate) fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        FairBucket {
            rate,
            state: Mutex::new(Fair::new(rate, tokio::time::Instant::now().into_std())),
        }
    }

    /// Waits for `n` bytes on behalf of `key`; whether it had to wait.
    /// Dropping the future gives its place (and, if already granted, its
    /// bytes) back.
    pub(crate) async fn acquire(&self, key: K, n: u64) -> bool {
        let mut rx = {
            let mut s = lock(&self.state);
            let now = tokio::time::Instant::now().into_std();
            if s.try_take(&key, n, now) {
                return false;
            }
            s.enqueue(key, n)
        };
        // Every waiter runs the queue when its timer fires, so no task is
        // needed: whoever wakes first grants what is due, its own or not.
        loop {
            let next = lock(&self.state).pump(tokio::time::Instant::now().into_std());
            if rx.try_recv().is_ok() {
                return true;
            }
            let Some(at) = next else { return true };
            tokio::select! {
                _ = &mut rx => return true,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            }
        }
    }
}

/// One caller waiting for bytes.
struct Waiter {
    n: u64,
    tx: oneshot::Sender<()>,
}

/// The state of a [`FairBucket`], a pure state machine: time is passed in.
///
/// Fairness: each key has a finish tag, the bytes it has been granted
/// counted on a virtual clock; a request starts at the later of the virtual
/// clock and its key's finish tag, and requests are granted in order of
/// start. A key that was idle starts at the virtual clock, so it neither
/// lost nor saved anything while away.
struct Fair<K> {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// The start tag of the last grant.
    vtime: u64,
    finish: HashMap<K, u64>,
    /// Waiting requests by (start tag, arrival).
    queue: BTreeMap<(u64, u64), Waiter>,
    seq: u64,
}

impl<K: Hash + Eq + Clone> Fair<K> {
    fn new(rate: f64, now: Instant) -> Self {
        let burst = (rate * BURST_SECS).max(MIN_BURST);
        Fair {
            rate,
            burst,
            tokens: burst,
            at: now,
            vtime: 0,
            finish: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Bytes needed in the bucket before `n` may go: all of them, or a full
    /// bucket for a request larger than it (which then leaves a debt).
    fn need(&self, n: u64) -> f64 {
        (n as f64).min(self.burst)
    }

    /// The start tag of a new request of `key` for `n` bytes, and its
    /// finish tag recorded.
    fn tag(&mut self, key: &K, n: u64) -> u64 {
        if self.finish.len() >= MAX_KEYS && !self.finish.contains_key(key) {
            let v = self.vtime;
            self.finish.retain(|_, f| *f > v);
        }
        let f = self.finish.entry(key.clone()).or_insert(0);
        let start = (*f).max(self.vtime);
        *f = start + n;
        start
    }

    /// Takes `n` bytes at once if nobody waits and the bucket holds them.
    fn try_take(&mut self, key: &K, n: u64, now: Instant) -> bool {
        self.refill(now);
        if !self.queue.is_empty() || self.tokens < self.need(n) {
            return false;
        }
        self.tokens -= n as f64;
        self.vtime = self.tag(key, n);
        true
    }

    /// Queues a request; the receiver fires when it is granted.
    fn enqueue(&mut self, key: K, n: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let start = self.tag(&key, n);
        self.seq += 1;
        self.queue.insert((start, self.seq), Waiter { n, tx });
        rx
    }

    /// Grants every request that is due, in order; returns when the next
    /// one will be, if any waits.
    fn pump(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        loop {
            let (_, w) = self.queue.first_key_value()?;
            let need = self.need(w.n);
            if self.tokens < need {
                let secs = (need - self.tokens) / self.rate;
                return Some(now + Duration::from_secs_f64(secs));
            }
            let ((start, _), w) = self.queue.pop_first()?;
            self.vtime = self.vtime.max(start);
            self.tokens -= w.n as f64;
            if w.tx.send(()).is_err() {
                // The caller gave up: its bytes go back.
                self.tokens += w.n as f64;
            }
        }
    }
}

/// Bytes per second over the last [`RATE_SECS`] seconds, from per-second
/// totals.
#[derive(Default)]
struct Meter {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    origin: Option<Instant>,
    /// The second `slots` ends at (since `origin`).
    sec: u64,
    slots: [u64; RATE_SECS as usize + 1],
}

impl Ring {
    /// Moves the ring forward to `now`'s second, clearing skipped seconds.
    fn advance(&mut self, now: Instant) {
        let origin = *self.origin.get_or_insert(now);
        let sec = now.saturating_duration_since(origin).as_secs();
        let len = self.slots.len() as u64;
        if sec > self.sec {
            for s in (self.sec + 1)..=sec.min(self.sec + len) {
                self.slots[(s % len) as usize] = 0;
            }
            self.sec = sec;
        }
    }
}

impl Meter {
    fn record(&self, n: u64, now: Instant) {
        let mut r = lock(&self.ring);
        r.advance(now);
        let len = r.slots.len() as u64;
        let i = (r.sec % len) as usize;
        r.slots[i] += n;
    }

    /// The mean of the last complete seconds (at most [`RATE_SECS`]).
    fn rate(&self, now: Instant) -> f64 {
        let mut r = lock(&self.ring);
        if r.origin.is_none() {
            return 0.0;
        }
        r.advance(now);
        let len = r.slots.len() as u64;
        let secs = r.sec.clamp(1, RATE_SECS);
        let sum: u64 = (1..=secs)
            .map(|back| r.slots[((r.sec + len - back) % len) as usize])
            .sum();
        sum as f64 / secs as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Runs `fair` for `secs` seconds in 1 ms steps with `keys` each keeping
    /// `depth` requests of `size` bytes queued; returns bytes granted per key.
    fn run(rate: u64, keys: &[(u32, u64, f64)], secs: f64) -> Vec<u64> {
        let t0 = Instant::now();
        let mut f: Fair<u32> = Fair::new(rate as f64, t0);
        let mut granted = vec![0u64; keys.len()];
        let mut waiting: Vec<Vec<(u64, oneshot::Receiver<()>)>> =
            keys.iter().map(|_| Vec::new()).collect();
        let steps = (secs * 1000.0) as u64;
        for ms in 0..steps {
            let now = t0 + Duration::from_millis(ms);
            for (i, &(key, size, until)) in keys.iter().enumerate() {
                if (ms as f64) < until * 1000.0 {
                    while waiting[i].len() < 4 {
                        waiting[i].push((size, f.enqueue(key, size)));
                    }
                } else {
                    // Gone: its queued requests are dropped.
                    waiting[i].clear();
                }
            }
            f.pump(now);
            for (i, w) in waiting.iter_mut().enumerate() {
                w.retain_mut(|(n, rx)| match rx.try_recv() {
                    Ok(()) => {
                        granted[i] += *n;
                        false
                    }
                    Err(_) => true,
                });
            }
        }
        granted
    }

    #[test]
    fn one_key_gets_the_rate() {
        let g = run(4 * MIB, &[(1, 256 << 10, 100.0)], 10.0);
        let expect = 40.0 * MIB as f64;
        let err = (g[0] as f64 - expect).abs() / expect;
        assert!(err < 0.02, "{} vs {expect}", g[0]);
    }

    #[test]
    fn chunks_larger_than_the_burst_still_get_the_rate() {
        // 3 MiB bodies against a 0.4 MiB burst: each leaves a debt.
        let g = run(4 * MIB, &[(1, 3 * MIB, 100.0)], 12.0);
        let expect = 48.0 * MIB as f64;
        let err = (g[0] as f64 - expect).abs() / expect;
        assert!(err < 0.08, "{} vs {expect}", g[0]);
    }

    #[test]
    fn busy_keys_share_equally_whatever_their_sizes_and_idle_shares_move() {
        // Key 1 asks in 1 MiB pieces, key 2 in 128 KiB ones: bytes, not
        // requests, are shared. Key 1 stops after 5 s.
        let g = run(4 * MIB, &[(1, MIB, 5.0), (2, 128 << 10, 100.0)], 10.0);
        let (a, b) = (g[0] as f64 / MIB as f64, g[1] as f64 / MIB as f64);
        // 5 s shared (10 MiB each), then 5 s for key 2 alone (20 MiB).
        assert!((a - 10.0).abs() < 1.1, "key 1 got {a} MiB");
        assert!((b - 30.0).abs() < 1.1, "key 2 got {b} MiB");
    }

    #[test]
    fn a_key_that_was_alone_and_a_newcomer_then_alternate() {
        const K64: u64 = 64 << 10;
        let mut t = Instant::now();
        let mut f: Fair<u32> = Fair::new(MIB as f64, t);
        // Key 1 is served alone for a while: its finish tag runs ahead.
        for _ in 0..20 {
            let mut r = f.enqueue(1, K64);
            t += Duration::from_millis(100);
            f.pump(t);
            assert!(r.try_recv().is_ok());
        }
        // Then both keep four requests queued: the newcomer is not paid back
        // for key 1's past, nor is key 1 held back for it. Four grants'
        // worth of time: two each.
        let mut r1: Vec<_> = (0..4).map(|_| f.enqueue(1, K64)).collect();
        let mut r2: Vec<_> = (0..4).map(|_| f.enqueue(2, K64)).collect();
        for ms in (0..=260).step_by(5) {
            f.pump(t + Duration::from_millis(ms));
        }
        let granted = |rs: &mut Vec<oneshot::Receiver<()>>| {
            rs.iter_mut()
                .map(|r| r.try_recv().is_ok())
                .filter(|ok| *ok)
                .count()
        };
        assert_eq!((granted(&mut r1), granted(&mut r2)), (2, 2));
    }

    #[test]
    fn a_caller_that_gives_up_returns_its_bytes() {
        let t0 = Instant::now();
        let mut f: Fair<u32> = Fair::new(MIB as f64, t0);
        assert!(f.try_take(&1, f.burst as u64, t0));
        drop(f.enqueue(1, 100 << 10));
        let mut keep = f.enqueue(2, 100 << 10);
        // 100 KiB at 1 MiB/s: about 98 ms each. The dropped one is granted
        // first, refunded, and the next gets its bytes at once.
        f.pump(t0 + Duration::from_millis(100));
        assert!(keep.try_recv().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_on_the_clock() {
        let b = FairBucket::new(MIB);
        let burst = (MIB as f64 * BURST_SECS) as u64;
        let t0 = tokio::time::Instant::now();
        let near = |secs: f64| {
            let e = t0.elapsed().as_secs_f64();
            assert!((e - secs).abs() < 0.01, "{e} s, not {secs} s");
        };
        // A full bucket goes at once.
        assert!(!b.acquire(1u32, burst).await);
        near(0.0);
        // A body larger than the bucket waits for a full bucket...
        assert!(b.acquire(1u32, 512 << 10).await);
        near(0.1);
        // ... and leaves a debt the next one waits for.
        assert!(b.acquire(1u32, 1).await);
        near(0.5);
    }

    #[test]
    fn the_meter_averages_recent_seconds() {
        let t0 = Instant::now();
        let m = Meter::default();
        for s in 0..10u64 {
            m.record(MIB, t0 + Duration::from_secs(s));
        }
        let r = m.rate(t0 + Duration::from_millis(10_500));
        assert!((r - MIB as f64).abs() < 1.0, "{r}");
        // Nothing for a minute: back to zero.
        assert_eq!(m.rate(t0 + Duration::from_secs(70)), 0.0);
    }
}
