//! The stat cache: what publish learnt about each source file last time,
//! so that republishing a tree reads only the files that changed.
//!
//! A sled tree (`statcache`) maps a file's absolute path to its stat
//! fields (size, modification and change times, device, inode) and what
//! reading it gave (chunk list, SHA-256). An entry is used only when every
//! stat field is unchanged and every chunk it names is still indexed (gc
//! may have dropped them). Losing the tree costs one full read, nothing
//! else, so its writes are batched and not flushed on their own.

use serde::{Deserialize, Serialize};

use super::{Result, Store};
use crate::manifest::ChunkRef;

/// The stat fields that must all be unchanged for a cached entry to hold.
/// The change time is what catches a file rewritten with the same size
/// whose modification time was set back: no user can set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Inode change time (seconds, nanoseconds).
    pub ctime: (i64, u32),
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// A file as read by an earlier publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    /// Its stat fields then.
    pub stat: FileStat,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
    /// Its chunks.
    pub chunks: Vec<ChunkRef>,
}

/// The stat cache of a store ([`Store::stat_cache`]).
pub struct StatCache<'a> {
    store: &'a Store,
    /// Created by the first write, so reading (a dry run) changes nothing.
    tree: Option<sled::Tree>,
}

const TREE: &[u8] = b"statcache";

impl Store {
    /// The stat cache.
    pub fn stat_cache(&self) -> Result<StatCache<'_>> {
        let exists = self.db.tree_names().iter().any(|n| n.as_ref() == TREE);
        Ok(StatCache {
            store: self,
            tree: if exists {
                Some(self.db.open_tree(TREE)?)
            } else {
                None
            },
        })
    }
}

impl StatCache<'_> {
    /// What an earlier publish read at `path`, if the file's stat fields
    /// are still `stat` and the store still holds every chunk.
    pub fn lookup(&self, path: &[u8], stat: &FileStat) -> Result<Option<CachedFile>> {
        let Some(tree) = &self.tree else {
            return Ok(None);
        };
        let Some(v) = tree.get(path)? else {
            return Ok(None);
        };
        let Ok(c) = postcard::from_bytes::<CachedFile>(&v) else {
            return Ok(None);
        };
        if c.stat != *stat || c.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() != stat.size {
            return Ok(None);
        }
        for ch in &c.chunks {
            if !self.store.has_chunk(&ch.id)? {
                return Ok(None);
            }
        }
        Ok(Some(c))
    }

    /// Entries held (for tests and status).
    pub fn len(&self) -> usize {
        self.tree.as_ref().map_or(0, |t| t.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a batch of updates (after the chunks they name are committed).
    pub fn apply(&mut self, b: &mut StatCacheBatch) -> Result<()> {
        if b.n > 0 {
            if self.tree.is_none() {
                self.tree = Some(self.store.db.open_tree(TREE)?);
            }
            if let Some(t) = &self.tree {
                t.apply_batch(std::mem::take(&mut b.batch))?;
            }
            b.n = 0;
        }
        Ok(())
    }

    /// A walk over the entries under `prefix` in key order, to drop those
    /// of files no longer there ([`Sweep::visit`]).
    pub fn sweep(&self, prefix: &[u8]) -> Sweep {
        Sweep {
            keys: self.tree.as_ref().map(|t| t.scan_prefix(prefix).peekable()),
        }
    }
}

/// Updates to the stat cache, applied together.
#[derive(Default)]
pub struct StatCacheBatch {
    batch: sled::Batch,
    n: usize,
}

impl StatCacheBatch {
    /// Records what reading the file at `path` gave.
    pub fn insert(&mut self, path: &[u8], file: &CachedFile) {
        self.batch
            .insert(path, postcard::to_stdvec(file).unwrap_or_default());
        self.n += 1;
    }

    /// Forgets the file at `path`.
    pub fn remove(&mut self, path: &[u8]) {
        self.batch.remove(path);
        self.n += 1;
    }

    /// Updates waiting.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Drops entries of files a publish no longer saw: the publish visits its
/// files' keys in increasing order, and every key passed over is stale.
pub struct Sweep {
    keys: Option<std::iter::Peekable<sled::Iter>>,
}

impl Sweep {
    /// The publish reached `key`: entries before it that were not visited
    /// are queued for removal in `b`.
    pub fn visit(&mut self, key: &[u8], b: &mut StatCacheBatch) -> Result<()> {
        let Some(keys) = &mut self.keys else {
            return Ok(());
        };
        while let Some(next) = keys.peek() {
            let k = match next {
                Ok((k, _)) => k,
                Err(_) => {
                    // Surface the error.
                    if let Some(Err(e)) = keys.next() {
                        return Err(e.into());
                    }
                    continue;
                }
            };
            if k.as_ref() > key {
                break;
            }
            if k.as_ref() < key {
                b.remove(k);
            }
            keys.next();
        }
        Ok(())
    }

    /// The publish is over: every entry not visited is stale.
    pub fn finish(self, b: &mut StatCacheBatch) -> Result<()> {
        for kv in self.keys.into_iter().flatten() {
            b.remove(&kv?.0);
        }
        Ok(())
    }
}
