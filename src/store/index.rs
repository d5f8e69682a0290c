//! The chunk index: chunk id -> where its body lives ([`Loc`]).
//!
//! sled 0.34 keeps memory per key far above its cache capacity: a million
//! random 32-byte keys held nearly 4 GiB resident with a 16 MiB cache, while
//! the same entries grouped under 65,536 keys held under 90 MiB. A store of
//! a million small files has a million chunks, so the index groups entries
//! into buckets keyed by the first two bytes of the id. A bucket's value is
//! its entries sorted by id, each the id (32 bytes) then the encoded
//! [`Loc`] (16 bytes); a lookup is a binary search in one value.
//!
//! Writers read, merge and rewrite whole buckets, so they take one lock;
//! the buckets of one write are replaced a few at a time, each few in one
//! sled batch ([`BUCKETS_PER_BATCH`]). Stores written
//! before buckets kept one key per chunk in the tree `chunks`; it is moved
//! into the buckets when the store opens (idempotent: a move cut short by a
//! crash is redone).

use std::sync::Mutex;

use super::{Loc, Result, StoreError};
use crate::hash::Hash;
use crate::task::lock;

/// Bytes of one entry: id then location.
const ENTRY: usize = 32 + 16;
/// Buckets rewritten per sled batch. sled keeps every page version a
/// batch replaces (and every page it reads in) until the batch ends, so
/// one batch over thousands of buckets held hundreds of MiB; an index
/// write is not atomic as a whole anyway (a chunk it misses after a crash
/// is fetched again).
const BUCKETS_PER_BATCH: usize = 16;
/// Entries moved from the old per-chunk tree per batch when a store opens.
const MIGRATE_BATCH: usize = 65_536;

/// The bucket key of a chunk id.
fn bucket(id: &Hash) -> [u8; 2] {
    [id.0[0], id.0[1]]
}

/// Fails unless `v` is a whole number of entries.
fn check(v: &[u8]) -> Result<()> {
    if v.len() % ENTRY != 0 {
        return Err(StoreError::CorruptIndex(format!(
            "chunk index bucket of {} bytes",
            v.len()
        )));
    }
    Ok(())
}

/// The entries of a bucket value, checked for shape.
fn entries(v: &[u8]) -> Result<impl Iterator<Item = (Hash, Loc)> + '_> {
    check(v)?;
    Ok(v.chunks_exact(ENTRY).map(|e| {
        let id = Hash(e[..32].try_into().unwrap_or([0; 32]));
        // 16 bytes always decode.
        let loc = Loc::decode(&e[32..]).unwrap_or(Loc {
            segment: 0,
            offset: 0,
            len: 0,
        });
        (id, loc)
    }))
}

/// Index of the entry for `id` in a checked bucket value, or where it goes.
fn search(v: &[u8], id: &Hash) -> std::result::Result<usize, usize> {
    let n = v.len() / ENTRY;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match v[mid * ENTRY..mid * ENTRY + 32].cmp(id.as_bytes()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// The chunk index of a store.
pub(super) struct ChunkIndex {
    tree: sled::Tree,
    /// Held while buckets are read, merged and rewritten.
    write: Mutex<()>,
}

impl ChunkIndex {
    /// Opens the index in `db`, moving entries of the old per-chunk tree in.
    pub(super) fn open(db: &sled::Db) -> Result<ChunkIndex> {
        let index = ChunkIndex {
            tree: db.open_tree("chunk_index")?,
            write: Mutex::new(()),
        };
        if db.tree_names().iter().any(|n| n.as_ref() == b"chunks") {
            let old = db.open_tree("chunks")?;
            let mut moved = 0u64;
            let mut part = Vec::with_capacity(MIGRATE_BATCH);
            for kv in old.iter() {
                let (k, v) = kv?;
                let (Ok(id), Some(loc)) = (<[u8; 32]>::try_from(k.as_ref()), Loc::decode(&v))
                else {
                    tracing::warn!("skipping a malformed entry of the old chunk index");
                    continue;
                };
                part.push((Hash(id), loc));
                if part.len() == MIGRATE_BATCH {
                    moved += part.len() as u64;
                    index.insert(part.drain(..))?;
                }
            }
            moved += part.len() as u64;
            index.insert(part)?;
            db.flush()?;
            db.drop_tree("chunks")?;
            db.flush()?;
            tracing::info!(chunks = moved, "chunk index moved to buckets");
        }
        Ok(index)
    }

    /// Where a chunk's body lives, if it is indexed.
    pub(super) fn get(&self, id: &Hash) -> Result<Option<Loc>> {
        let Some(v) = self.tree.get(bucket(id))? else {
            return Ok(None);
        };
        check(&v)?;
        Ok(search(&v, id)
            .ok()
            .and_then(|i| Loc::decode(&v[i * ENTRY + 32..(i + 1) * ENTRY])))
    }

    /// Whether a chunk is indexed.
    pub(super) fn contains(&self, id: &Hash) -> Result<bool> {
        Ok(self.get(id)?.is_some())
    }

    /// Indexes chunks (a later location of the same id replaces the
    /// earlier one).
    pub(super) fn insert(&self, new: impl IntoIterator<Item = (Hash, Loc)>) -> Result<()> {
        self.rewrite(new.into_iter().map(|(id, loc)| (id, Some(loc))).collect())
    }

    /// Drops chunks from the index.
    pub(super) fn remove(&self, ids: impl IntoIterator<Item = Hash>) -> Result<()> {
        self.rewrite(ids.into_iter().map(|id| (id, None)).collect())
    }

    /// Applies changes (`None` removes; of one id, the last given wins),
    /// rewriting each bucket they touch once. The changes are kept in one
    /// flat list, sorted by id so that each bucket's are one run.
    fn rewrite(&self, mut changes: Vec<(Hash, Option<Loc>)>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        // Reversed, then stably sorted: of equal ids the last given comes
        // first and is the one kept.
        changes.reverse();
        changes.sort_by_key(|a| a.0);
        changes.dedup_by(|later, first| later.0 == first.0);
        let _w = lock(&self.write);
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for run in changes.chunk_by(|a, b| bucket(&a.0) == bucket(&b.0)) {
            if in_batch == BUCKETS_PER_BATCH {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
            in_batch += 1;
            let key = bucket(&run[0].0);
            let old = self.tree.get(key)?;
            let old = old.as_deref().unwrap_or(&[]);
            let mut out = Vec::with_capacity(old.len() + run.len() * ENTRY);
            let mut change = run.iter().copied().peekable();
            for (id, loc) in entries(old)? {
                while let Some((cid, cloc)) = change.next_if(|(cid, _)| *cid < id) {
                    push(&mut out, &cid, cloc);
                }
                match change.next_if(|(cid, _)| *cid == id) {
                    Some((cid, cloc)) => push(&mut out, &cid, cloc),
                    None => push(&mut out, &id, Some(loc)),
                }
            }
            for (cid, cloc) in change {
                push(&mut out, &cid, cloc);
            }
            if out.is_empty() {
                batch.remove(&key[..]);
            } else {
                batch.insert(&key[..], out);
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Every indexed chunk, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Result<(Hash, Loc)>> + '_ {
        self.tree.iter().flat_map(|kv| {
            let items: Vec<Result<(Hash, Loc)>> = match kv {
                Err(e) => vec![Err(e.into())],
                Ok((_, v)) => match entries(&v) {
                    Ok(es) => es.map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                },
            };
            items
        })
    }
}

/// Appends an entry unless it is a removal.
fn push(out: &mut Vec<u8>, id: &Hash, loc: Option<Loc>) {
    if let Some(loc) = loc {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&loc.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u64) -> Loc {
        Loc {
            segment: 1,
            offset: n,
            len: n as u32,
        }
    }

    fn id(b0: u8, b1: u8, rest: u8) -> Hash {
        let mut h = [rest; 32];
        h[0] = b0;
        h[1] = b1;
        Hash(h)
    }

    fn open() -> (tempfile::TempDir, sled::Db) {
        let d = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(d.path()).open().unwrap();
        (d, db)
    }

    #[test]
    fn entries_in_one_bucket_stay_sorted_and_findable() {
        let (_d, db) = open();
        let ix = ChunkIndex::open(&db).unwrap();
        ix.insert([(id(1, 2, 9), loc(9)), (id(1, 2, 3), loc(3))])
            .unwrap();
        ix.insert([(id(1, 2, 5), loc(5)), (id(7, 7, 1), loc(1))])
            .unwrap();
        assert_eq!(ix.get(&id(1, 2, 5)).unwrap(), Some(loc(5)));
        assert_eq!(ix.get(&id(1, 2, 4)).unwrap(), None);
        let all: Vec<_> = ix.iter().map(|r| r.unwrap().0).collect();
        assert_eq!(
            all,
            vec![id(1, 2, 3), id(1, 2, 5), id(1, 2, 9), id(7, 7, 1)]
        );
        // A newer location replaces the old one; removal drops only its id.
        ix.insert([(id(1, 2, 5), loc(50))]).unwrap();
        ix.remove([id(1, 2, 3), id(7, 7, 1)]).unwrap();
        assert_eq!(ix.get(&id(1, 2, 5)).unwrap(), Some(loc(50)));
        assert!(!ix.contains(&id(1, 2, 3)).unwrap());
        assert_eq!(ix.iter().count(), 2);
        assert!(
            ix.tree.get([7, 7]).unwrap().is_none(),
            "empty bucket removed"
        );
    }

    #[test]
    fn of_one_id_given_twice_the_last_wins_across_many_buckets() {
        let (_d, db) = open();
        let ix = ChunkIndex::open(&db).unwrap();
        // More buckets than one sled batch takes, each id given twice.
        let n = (BUCKETS_PER_BATCH * 3) as u64;
        let first = (0..n).map(|k| (id(k as u8, (k >> 8) as u8 + 1, 7), loc(k)));
        let second = (0..n).map(|k| (id(k as u8, (k >> 8) as u8 + 1, 7), loc(k + 1000)));
        ix.insert(first.chain(second)).unwrap();
        assert_eq!(ix.iter().count(), n as usize);
        for k in 0..n {
            let got = ix.get(&id(k as u8, (k >> 8) as u8 + 1, 7)).unwrap();
            assert_eq!(got, Some(loc(k + 1000)), "entry {k}");
        }
        // A removal after an insert of the same id in one call removes it.
        ix.rewrite(vec![(id(3, 1, 7), Some(loc(1))), (id(3, 1, 7), None)])
            .unwrap();
        assert_eq!(ix.get(&id(3, 1, 7)).unwrap(), None);
        assert_eq!(ix.iter().count(), n as usize - 1);
    }

    #[test]
    fn a_malformed_bucket_is_a_corrupt_index_not_a_miss() {
        let (_d, db) = open();
        let ix = ChunkIndex::open(&db).unwrap();
        ix.tree.insert([1, 2], vec![0u8; ENTRY + 1]).unwrap();
        assert!(matches!(
            ix.get(&id(1, 2, 3)),
            Err(StoreError::CorruptIndex(_))
        ));
        assert!(ix.iter().any(|r| r.is_err()));
    }

    #[test]
    fn the_old_per_chunk_tree_is_moved_in_once() {
        let (_d, db) = open();
        let old = db.open_tree("chunks").unwrap();
        for i in 0..300u32 {
            let h = Hash::of(&i.to_be_bytes());
            old.insert(h.as_bytes(), &loc(i as u64).encode()).unwrap();
        }
        drop(old);
        let ix = ChunkIndex::open(&db).unwrap();
        assert_eq!(ix.iter().count(), 300);
        assert_eq!(
            ix.get(&Hash::of(&7u32.to_be_bytes())).unwrap(),
            Some(loc(7))
        );
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"chunks"));
        // Opening again finds nothing to move and keeps everything.
        let ix = ChunkIndex::open(&db).unwrap();
        assert_eq!(ix.iter().count(), 300);
    }
}
