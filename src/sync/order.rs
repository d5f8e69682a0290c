//! A manifest's chunk order, and what a download fetches.
//!
//! The *chunk order* of a manifest is its distinct chunks in order of first
//! appearance (files in manifest order, each file's chunks in order). Both
//! ends of the chunk protocol compute it from the manifest alone, so a
//! have-map can name chunk `i` with one bit instead of a 32-byte id.

use std::collections::HashSet;

use crate::filter::PathFilter;
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest};
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

/// What this store holds of the chunk order of manifest `id`, for peers
/// that subscribe to it; `None` if the manifest is not stored.
pub fn have_map(store: &Store, id: &Hash) -> Result<Option<HaveMap>, StoreError> {
    if !store.has_manifest(id)? {
        return Ok(None);
    }
    let order = chunk_order(&store.manifest(id)?);
    let Ok(len) = u32::try_from(order.len()) else {
        return Ok(None);
    };
    let mut bits = Bitmap::new(len);
    for (i, c) in order.iter().enumerate() {
        if c.len as usize <= MAX_CHUNK_LEN && store.has_chunk(&c.id)? {
            bits.set(i as u32);
        }
    }
    Ok(Some(if bits.is_full() {
        HaveMap::All(len)
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
    /// The chunks of manifest `id` (`m`) that `store` lacks, in chunk order,
    /// of the files `filter` keeps (blocking: looks each chunk up once).
    pub fn of_manifest(
        store: &Store,
        id: Hash,
        m: &Manifest,
        filter: &PathFilter,
    ) -> Result<Self, StoreError> {
        // A partial mirror wants only its files' chunks; the order (and so
        // the have-map positions) stays that of the whole manifest.
        let kept: Option<HashSet<Hash>> = (!filter.is_all()).then(|| {
            crate::filter::needed_files(m, filter)
                .flat_map(|(_, _, chunks)| chunks.iter().map(|c| c.id))
                .collect()
        });
        let order = chunk_order(m);
        let len = u32::try_from(order.len()).unwrap_or(u32::MAX);
        let mut held = Bitmap::new(len);
        let mut chunks = Vec::new();
        let mut positions = Vec::new();
        for (i, c) in order.into_iter().enumerate() {
            if store.has_chunk(&c.id)? {
                held.set(i as u32);
            } else if kept.as_ref().is_none_or(|k| k.contains(&c.id)) {
                chunks.push(c);
                positions.push(i as u32);
            }
        }
        Ok(Wanted {
            chunks,
            order: Some(OrderRef {
                manifest: id,
                len,
                held,
                positions,
            }),
        })
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
                meta: None,
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
}
