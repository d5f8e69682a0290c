//! Have-maps over a manifest's chunk order, and the board that serves them.
//!
//! A *chunk order* is the list of a manifest's distinct chunks in order of
//! first appearance (see `docs/protocol.md` section 6.2); index `i` names
//! its `i`-th chunk. A [`Bitmap`] over that order says which chunks a node
//! holds in one bit each, so a million chunks cost 125 KiB, not 32 MiB of
//! ids.
//!
//! The [`HaveBoard`] is what the chunk server answers `Subscribe` requests
//! from. A download registers the manifest it fetches ([`HaveBoard::open`])
//! and reports each chunk it has stored ([`BoardHandle::add`]); the server
//! sends each subscriber the map once and then the indices newly held, in
//! batches, until the map is complete or the download stops. Manifests no
//! download has open are asked of the [`super::ChunkProvider`] and kept a
//! short while, so many peers subscribing at once cost one computation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::hash::Hash;
use crate::task::lock;

/// How long a map no download has open is kept after its last use; then it
/// is computed again, so what the store dropped in between is not claimed.
const SNAPSHOT_TTL: Duration = Duration::from_secs(60);
/// Maps kept that no download has open.
const MAX_SNAPSHOTS: usize = 16;

/// One bit per chunk of a chunk order: set means held. Bit `i` is bit
/// `i % 8` (least significant first) of byte `i / 8`; padding bits are zero.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitmap {
    len: u32,
    bytes: Vec<u8>,
    ones: u32,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitmap({} of {})", self.ones, self.len)
    }
}

impl Bitmap {
    /// `len` bits, all clear.
    pub fn new(len: u32) -> Self {
        Bitmap {
            len,
            bytes: vec![0; (len as usize).div_ceil(8)],
            ones: 0,
        }
    }

    /// `len` bits, all set.
    pub fn full(len: u32) -> Self {
        let mut b = Bitmap {
            len,
            bytes: vec![0xff; (len as usize).div_ceil(8)],
            ones: len,
        };
        b.clear_padding();
        b
    }

    /// From the wire form: `None` if `bytes` is not `ceil(len / 8)` long.
    /// Padding bits are ignored (cleared).
    pub fn from_bytes(len: u32, bytes: Vec<u8>) -> Option<Self> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let mut b = Bitmap {
            len,
            bytes,
            ones: 0,
        };
        b.clear_padding();
        b.ones = b.bytes.iter().map(|x| x.count_ones()).sum();
        Some(b)
    }

    fn clear_padding(&mut self) {
        let rem = self.len % 8;
        if rem != 0 {
            if let Some(last) = self.bytes.last_mut() {
                *last &= (1u8 << rem) - 1;
            }
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the map has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bits set.
    pub fn ones(&self) -> u32 {
        self.ones
    }

    /// Whether every bit is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Bit `i` (false beyond the end).
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i`; returns whether it was clear (false beyond the end).
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 1 << (i % 8);
        self.ones += 1;
        true
    }

    /// The wire form: `ceil(len / 8)` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Indices of the set bits, ascending; skips clear bytes whole.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(k, &b)| {
                (0..8u32)
                    .filter(move |bit| b & (1 << bit) != 0)
                    .map(move |bit| k as u32 * 8 + bit)
            })
    }
}

/// What a node holds of one manifest's chunk order, as a
/// [`super::ChunkProvider`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaveMap {
    /// Every chunk of an order of this many.
    All(u32),
    /// Some of them.
    Some(Bitmap),
}

impl HaveMap {
    /// The map as a bitmap.
    fn into_bitmap(self) -> Bitmap {
        match self {
            HaveMap::All(n) => Bitmap::full(n),
            HaveMap::Some(b) => b,
        }
    }
}

/// The map of one manifest and what changed in it.
pub(crate) struct Entry {
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

struct State {
    bits: Bitmap,
    /// Indices set since the entry was made, in order: subscribers keep a
    /// cursor into it. Dropped once the map is full.
    log: Vec<u32>,
    /// Downloads that have this entry open.
    live: u32,
    /// Last time a download or a subscriber used it.
    touched: Instant,
}

/// What a subscriber is sent next.
pub(crate) enum Next {
    /// Indices newly held (the cursor moved past them).
    Added(Vec<u32>),
    /// The map is full: send `All` and end.
    Full(u32),
    /// No download is updating the map any more: end.
    Closed,
    /// Nothing new yet.
    Wait,
}

impl Entry {
    fn new(bits: Bitmap, live: u32) -> Arc<Self> {
        Arc::new(Entry {
            state: Mutex::new(State {
                bits,
                log: Vec::new(),
                live,
                touched: Instant::now(),
            }),
            changed: watch::channel(()).0,
        })
    }

    /// The first frame for a new subscriber: the whole map (or `Err(len)`
    /// if it is full), and the cursor for [`Entry::next`].
    pub(crate) fn start(&self) -> (Result<Bitmap, u32>, usize) {
        let mut s = lock(&self.state);
        s.touched = Instant::now();
        if s.bits.is_full() {
            return (Err(s.bits.len()), 0);
        }
        (Ok(s.bits.clone()), s.log.len())
    }

    /// What follows `cursor`, at most `max` indices at a time.
    pub(crate) fn next(&self, cursor: &mut usize, max: usize) -> Next {
        let s = lock(&self.state);
        if *cursor < s.log.len() {
            let end = s.log.len().min(*cursor + max);
            let out = s.log[*cursor..end].to_vec();
            *cursor = end;
            return Next::Added(out);
        }
        if s.bits.is_full() {
            return Next::Full(s.bits.len());
        }
        if s.live == 0 {
            return Next::Closed;
        }
        Next::Wait
    }

    /// A receiver that wakes when the map changes or a download closes it.
    pub(crate) fn watch(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

/// The have-maps this node serves, by manifest id. Cheap to share.
#[derive(Default)]
pub struct HaveBoard {
    entries: Mutex<HashMap<Hash, Arc<Entry>>>,
    /// One snapshot computed at a time: peers that subscribe together wait
    /// for the first computation instead of each repeating it.
    computing: tokio::sync::Mutex<()>,
}

impl HaveBoard {
    /// Registers a download of `manifest` that holds `held` so far. What
    /// the returned handle adds is pushed to subscribed peers; when the
    /// last handle of a manifest drops, its subscribers are told no more
    /// will come.
    pub fn open(&self, manifest: Hash, held: Bitmap) -> BoardHandle {
        let mut entries = lock(&self.entries);
        prune(&mut entries);
        let entry = match entries.get(&manifest) {
            Some(e) if lock(&e.state).bits.len() == held.len() => {
                let mut s = lock(&e.state);
                s.live += 1;
                s.touched = Instant::now();
                for i in held.iter_ones() {
                    if s.bits.set(i) {
                        s.log.push(i);
                    }
                }
                drop(s);
                e.clone()
            }
            _ => {
                let e = Entry::new(held, 1);
                entries.insert(manifest, e.clone());
                e
            }
        };
        BoardHandle { entry }
    }

    /// The entry of `manifest`, if a download has it open or a snapshot is
    /// fresh.
    pub(crate) fn get(&self, manifest: &Hash) -> Option<Arc<Entry>> {
        let mut entries = lock(&self.entries);
        prune(&mut entries);
        entries.get(manifest).cloned()
    }

    /// The entry of `manifest`, computing a snapshot with `compute` (on the
    /// blocking pool) if there is none; `None` if the node lacks the
    /// manifest.
    pub(crate) async fn get_or_compute(
        &self,
        manifest: &Hash,
        compute: impl FnOnce() -> Option<HaveMap> + Send + 'static,
    ) -> Option<Arc<Entry>> {
        if let Some(e) = self.get(manifest) {
            return Some(e);
        }
        let _one = self.computing.lock().await;
        if let Some(e) = self.get(manifest) {
            return Some(e);
        }
        let map = tokio::task::spawn_blocking(compute).await.ok()??;
        let e = Entry::new(map.into_bitmap(), 0);
        lock(&self.entries).insert(*manifest, e.clone());
        Some(e)
    }
}

/// Drops snapshots past their time, then the oldest beyond the count.
fn prune(entries: &mut HashMap<Hash, Arc<Entry>>) {
    let now = Instant::now();
    entries.retain(|_, e| {
        let s = lock(&e.state);
        s.live > 0 || now.saturating_duration_since(s.touched) < SNAPSHOT_TTL
    });
    while entries.len() > MAX_SNAPSHOTS {
        let oldest = entries
            .iter()
            .filter(|(_, e)| lock(&e.state).live == 0)
            .min_by_key(|(_, e)| lock(&e.state).touched)
            .map(|(k, _)| *k);
        match oldest {
            Some(k) => entries.remove(&k),
            None => break,
        };
    }
}

/// A download's hold on its manifest's entry in the [`HaveBoard`].
pub struct BoardHandle {
    entry: Arc<Entry>,
}

impl BoardHandle {
    /// Chunks `indices` of the order are now stored (and served): tell
    /// subscribers.
    pub fn add(&self, indices: impl IntoIterator<Item = u32>) {
        let mut s = lock(&self.entry.state);
        let mut any = false;
        for i in indices {
            if s.bits.set(i) {
                s.log.push(i);
                any = true;
            }
        }
        s.touched = Instant::now();
        drop(s);
        if any {
            self.entry.changed.send_replace(());
        }
    }
}

impl Drop for BoardHandle {
    fn drop(&mut self) {
        let mut s = lock(&self.entry.state);
        s.live = s.live.saturating_sub(1);
        s.touched = Instant::now();
        drop(s);
        self.entry.changed.send_replace(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_set_count_and_iterate() {
        let mut b = Bitmap::new(20);
        assert!(b.set(0) && b.set(9) && b.set(19));
        assert!(!b.set(9), "already set");
        assert!(!b.set(20), "beyond the end");
        assert_eq!(b.ones(), 3);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 9, 19]);
        assert_eq!(b.as_bytes(), &[0x01, 0x02, 0x08]);
        let full = Bitmap::full(10);
        assert!(full.is_full());
        assert_eq!(full.as_bytes(), &[0xff, 0x03], "padding bits clear");
        // Padding bits from the wire are ignored.
        let w = Bitmap::from_bytes(10, vec![0xff, 0xff]).unwrap();
        assert_eq!(w, full);
        assert!(Bitmap::from_bytes(10, vec![0xff]).is_none());
    }

    #[test]
    fn subscribers_see_the_map_then_what_was_added_then_the_end() {
        let board = HaveBoard::default();
        let m = Hash::of(b"m");
        let mut held = Bitmap::new(5);
        held.set(1);
        let h = board.open(m, held);
        let e = board.get(&m).unwrap();
        let (first, mut cur) = e.start();
        assert_eq!(first.unwrap().iter_ones().collect::<Vec<_>>(), vec![1]);
        assert!(matches!(e.next(&mut cur, 10), Next::Wait));
        h.add([3, 1, 4]);
        match e.next(&mut cur, 1) {
            Next::Added(v) => assert_eq!(v, vec![3]),
            _ => panic!("expected an update"),
        }
        match e.next(&mut cur, 10) {
            Next::Added(v) => assert_eq!(v, vec![4], "1 was held already"),
            _ => panic!("expected an update"),
        }
        drop(h);
        assert!(matches!(e.next(&mut cur, 10), Next::Closed));
        // A new download of the same manifest reopens it; once full, the
        // end is `Full`.
        let h = board.open(m, Bitmap::new(5));
        h.add([0, 2]);
        let _ = e.next(&mut cur, 10);
        assert!(matches!(e.next(&mut cur, 10), Next::Full(5)));
        assert!(matches!(e.start().0, Err(5)));
    }
}
