//! A manifest's chunk order, and what a download fetches.
//!
//! The *chunk order* of a manifest is its distinct chunks in order of first
//! appearance (files in manifest order, each file's chunks in order). Both
//! ends of the chunk protocol compute it from the manifest alone, so a
//! have-map can name chunk `i` with one bit instead of a 32-byte id.

use std::collections::HashSet;

use crate::filter::PathFilter;
use crate::hash::{Hash, IdPrefixSet};
use crate::manifest::{ChunkRef, EntryKind, Manifest};
use crate::net::{Bitmap, HaveMap, MAX_CHUNK_LEN};
use crate::store::{Store, StoreError};

/// The distinct chunks of `m` in order of first appearance.
pub fn chunk_order(m: &Manifest) -> Vec<ChunkRef> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (_, _, _, chunks) in m.files() {
        for c in chunks {
            if seen.insert(c.id) {
                out.push(*c);
            }
        }
    }
    out
}

/// Calls `f` with each file of stored manifest `id` (path, size, chunks),
/// decoding it an entry at a time: a decoded manifest of a million files
/// would take several times its encoding.
fn for_each_file(
    store: &Store,
    id: &Hash,
    mut f: impl FnMut(&str, u64, &[ChunkRef]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for e in store.manifest_entries(id)? {
        let e = e?;
        if let EntryKind::File { size, chunks, .. } = &e.kind {
            f(&e.path, *size, chunks)?;
        }
    }
    Ok(())
}

/// Chunk ids met so far ([`IdPrefixSet`]). Two distinct chunks sharing 128
/// bits would make the second look like a repeat on every node alike (so
/// have-maps still agree), and the version check before a switch, which
/// compares whole ids, would fetch it then.
type Seen = IdPrefixSet;

/// The number of entries of stored manifest `id`, as its header says.
fn entry_count(store: &Store, id: &Hash) -> Result<usize, StoreError> {
    Ok(store.manifest_entries(id)?.len())
}

/// A bitmap built one bit at a time, its length known only at the end.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    len: u32,
}

impl Bits {
    /// Appends a bit; returns its index.
    fn push(&mut self, set: bool) -> u32 {
        let i = self.len;
        if i % 8 == 0 {
            self.bytes.push(0);
        }
        if set {
            if let Some(b) = self.bytes.last_mut() {
                *b |= 1 << (i % 8);
            }
        }
        // A 4 GiB manifest names fewer than 2^27 distinct chunks.
        self.len = self.len.saturating_add(1);
        i
    }

    fn finish(self) -> Bitmap {
        let len = self.len;
        Bitmap::from_bytes(len, self.bytes).unwrap_or_else(|| Bitmap::new(len))
    }
}

/// What this store holds of the chunk order of manifest `id`, for peers
/// that subscribe to it; `None` if the manifest is not stored. Reads the
/// manifest entry by entry.
pub fn have_map(store: &Store, id: &Hash) -> Result<Option<HaveMap>, StoreError> {
    if !store.has_manifest(id)? {
        return Ok(None);
    }
    let mut seen = Seen::with_capacity(entry_count(store, id)?);
    let mut bits = Bits::default();
    for_each_file(store, id, |_, _, chunks| {
        for c in chunks {
            if seen.insert(&c.id) {
                bits.push(c.len as usize <= MAX_CHUNK_LEN && store.has_chunk(&c.id)?);
            }
        }
        Ok(())
    })?;
    let bits = bits.finish();
    Ok(Some(if bits.is_full() {
        HaveMap::All(bits.len())
    } else {
        HaveMap::Some(bits)
    }))
}

/// A manifest a download belongs to: its id, and for each chunk to fetch,
/// its index in the manifest's chunk order.
#[derive(Debug, Clone)]
pub(crate) struct OrderRef {
    pub manifest: Hash,
    /// Length of the chunk order.
    pub len: u32,
    /// What the store held of the order when the download was planned.
    pub held: Bitmap,
    /// `positions[k]` is the index in the order of `Wanted::chunks[k]`.
    pub positions: Vec<u32>,
}

/// The chunks a download fetches (unique, none in the store), and, when
/// they are a manifest's, where they sit in its chunk order: peers are then
/// asked for have-maps over that order, with pushed updates, instead of
/// being asked about every id.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub(crate) chunks: Vec<ChunkRef>,
    pub(crate) order: Option<OrderRef>,
}

impl From<Vec<ChunkRef>> for Wanted {
    /// A plain list of chunks: peers are asked about each id.
    fn from(chunks: Vec<ChunkRef>) -> Self {
        Wanted {
            chunks,
            order: None,
        }
    }
}

impl Wanted {
    /// The chunks of stored manifest `id` that `store` lacks, in chunk
    /// order, of the files `filter` keeps, and the bytes of those files
    /// (blocking: reads the manifest entry by entry, twice for a partial
    /// mirror, and looks each chunk up once). Per chunk to fetch it keeps
    /// its reference and its index in the order; per chunk of the order,
    /// one bit and, while it runs, the id to tell repeats.
    pub fn of_stored(
        store: &Store,
        id: Hash,
        filter: &PathFilter,
    ) -> Result<(Self, u64), StoreError> {
        // A partial mirror wants only its files' chunks; the order (and so
        // the have-map positions) stays that of the whole manifest.
        let entries = entry_count(store, &id)?;
        let kept = if filter.is_all() {
            None
        } else {
            let mut kept = Seen::default();
            for_each_file(store, &id, |path, _, chunks| {
                if filter.wants(path) {
                    for c in chunks {
                        kept.insert(&c.id);
                    }
                }
                Ok(())
            })?;
            Some(kept)
        };
        let mut seen = Seen::with_capacity(entries);
        let mut held = Bits::default();
        let mut chunks = Vec::new();
        let mut positions = Vec::new();
        let mut needed = 0u64;
        for_each_file(store, &id, |path, size, refs| {
            if filter.wants(path) {
                needed += size;
            }
            for c in refs {
                if !seen.insert(&c.id) {
                    continue;
                }
                let has = store.has_chunk(&c.id)?;
                let i = held.push(has);
                if !has && kept.as_ref().is_none_or(|k| k.contains(&c.id)) {
                    chunks.push(*c);
                    positions.push(i);
                }
            }
            Ok(())
        })?;
        drop((seen, kept));
        chunks.shrink_to_fit();
        positions.shrink_to_fit();
        let held = held.finish();
        let wanted = Wanted {
            chunks,
            order: Some(OrderRef {
                manifest: id,
                len: held.len(),
                held,
                positions,
            }),
        };
        Ok((wanted, needed))
    }

    /// Number of chunks to fetch.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether there is nothing to fetch.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes to fetch.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// The chunks to fetch.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkerParams;
    use crate::manifest::{Entry, EntryKind};

    fn file(path: &str, chunks: &[u8]) -> Entry {
        let chunks: Vec<ChunkRef> = chunks
            .iter()
            .map(|&n| ChunkRef {
                id: Hash::of(&[n]),
                len: 1,
            })
            .collect();
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: chunks.len() as u64,
                executable: false,
                chunks,
                meta: Some(crate::manifest::FileMeta {
                    modified: crate::manifest::Timestamp::default(),
                    sha256: [0; 32],
                }),
            },
        }
    }

    #[test]
    fn the_order_is_distinct_chunks_by_first_appearance() {
        let m = Manifest::new(
            vec![file("b", &[3, 1]), file("a", &[2, 3]), file("c", &[1, 4])],
            ChunkerParams::default(),
        );
        let order: Vec<Hash> = chunk_order(&m).iter().map(|c| c.id).collect();
        // Entries sort by path: a, b, c.
        let ids: Vec<Hash> = [2u8, 3, 1, 4].iter().map(|n| Hash::of(&[*n])).collect();
        assert_eq!(order, ids);
    }

    /// Read from the store entry by entry, the wanted list and the
    /// have-map follow the chunk order of the decoded manifest.
    #[test]
    fn the_stored_manifest_gives_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = Manifest::new(
            vec![file("b", &[3, 1]), file("a", &[2, 3]), file("c", &[1, 4])],
            ChunkerParams::default(),
        );
        let bytes = m.encode();
        let (id, _) = store
            .add_manifest_from(&bytes[..], bytes.len() as u64)
            .unwrap();
        // Chunk 3 is held: index 1 of the order (2, 3, 1, 4).
        store.put_chunks(&[(Hash::of(&[3]), vec![3])]).unwrap();
        let order = chunk_order(&m);
        let (w, needed) = Wanted::of_stored(&store, id, &PathFilter::all()).unwrap();
        assert_eq!(needed, 6);
        assert_eq!(w.chunks(), &[order[0], order[2], order[3]]);
        let o = w.order.unwrap();
        assert_eq!((o.len, o.positions), (4, vec![0, 2, 3]));
        assert_eq!(o.held, {
            let mut b = Bitmap::new(4);
            b.set(1);
            b
        });
        assert_eq!(have_map(&store, &id).unwrap(), Some(HaveMap::Some(o.held)));
        // A partial mirror keeping `c` wants its chunks 1 and 4 only, at
        // their places in the whole order.
        let only_c = PathFilter::new(&["c"]).unwrap();
        let (w, needed) = Wanted::of_stored(&store, id, &only_c).unwrap();
        assert_eq!(needed, 2);
        assert_eq!(w.chunks(), &[order[2], order[3]]);
        assert_eq!(w.order.unwrap().positions, vec![2, 3]);
        // Everything held: the map says so in one frame.
        store
            .put_chunks(&[1u8, 2, 4].map(|n| (Hash::of(&[n]), vec![n])))
            .unwrap();
        assert_eq!(have_map(&store, &id).unwrap(), Some(HaveMap::All(4)));
        assert!(Wanted::of_stored(&store, id, &PathFilter::all())
            .unwrap()
            .0
            .is_empty());
    }
}
