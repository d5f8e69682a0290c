//! The stat cache: what publish learnt about each source file last time,
//! so that republishing a tree reads only the files that changed.
//!
//! For each file it keeps the stat fields (size, modification and change
//! times, device, inode) and what reading it gave (chunk list, SHA-256). An
//! entry is used only when every stat field is unchanged and every chunk it
//! names is still indexed (gc may have dropped them).
//!
//! It is one file per source tree under `<store>/statcache/`, named by the
//! blake3 of the tree's real path, holding records sorted by path: the
//! publish walk yields paths in the same byte order, so a publish reads the
//! old file once front to back in step with its walk ([`StatCacheReader`])
//! and writes the new one as it goes ([`StatCacheWriter`]), renamed into
//! place only after the chunks it names are committed. Memory does not grow
//! with the number of files, and sled holds no key per file (its memory per
//! key is large: see `index`). Losing or damaging a file costs one full
//! read of the tree, nothing else: a record that does not check ends the
//! reading, so the file is neither fsynced nor locked.
//!
//! Record: `len: u32 LE`, `len` bytes of postcard `(path, CachedFile)`,
//! then the first 8 bytes of the blake3 of those bytes.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{io_ctx, Result, Store};
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

/// The directory of stat cache files, and the sled tree of older stores.
const DIR: &str = "statcache";
/// The start of every stat cache file.
const MAGIC: &[u8; 8] = b"pmstat1\n";
/// A record longer than this is damage, not a file entry.
const MAX_RECORD: u32 = 16 << 20;

impl Store {
    /// Drops the sled tree older stores kept the stat cache in, and files
    /// left by publishes that were killed (the store is open in one process
    /// only, so no other publish is writing).
    pub(super) fn tidy_stat_cache(db: &sled::Db, root: &Path) -> Result<()> {
        if db.tree_names().iter().any(|n| n.as_ref() == DIR.as_bytes()) {
            db.drop_tree(DIR)?;
        }
        if let Ok(dir) = fs::read_dir(root.join(DIR)) {
            for e in dir.flatten() {
                if e.path().extension().is_some_and(|e| e == "tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn stat_cache_path(&self, tree: &[u8]) -> PathBuf {
        self.root
            .join(DIR)
            .join(blake3::hash(tree).to_hex().as_str())
    }

    /// The stat cache of the source tree whose real path is `tree`, to
    /// look files up in walk order.
    pub fn stat_cache_reader(&self, tree: &[u8]) -> Result<StatCacheReader<'_>> {
        let path = self.stat_cache_path(tree);
        let file = match File::open(&path) {
            Ok(f) => Some(BufReader::with_capacity(256 << 10, f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_ctx(format!("opening {}", path.display()))(e)),
        };
        let mut r = StatCacheReader {
            store: self,
            file,
            next: None,
        };
        if let Some(f) = &mut r.file {
            let mut magic = [0u8; 8];
            if f.read_exact(&mut magic).is_err() || &magic != MAGIC {
                r.file = None;
            }
        }
        r.advance();
        Ok(r)
    }

    /// A new stat cache for the source tree `tree`, replacing the old one
    /// when [`StatCacheWriter::finish`]ed.
    pub fn stat_cache_writer(&self, tree: &[u8]) -> Result<StatCacheWriter> {
        let dir = self.root.join(DIR);
        crate::control::create_private_dir(&dir)
            .map_err(io_ctx(format!("creating {}", dir.display())))?;
        let path = self.stat_cache_path(tree);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("{n}.tmp"));
        let f = File::create(&tmp).map_err(io_ctx(format!("creating {}", tmp.display())))?;
        let mut out = BufWriter::with_capacity(256 << 10, f);
        out.write_all(MAGIC)
            .map_err(io_ctx("writing the stat cache"))?;
        Ok(StatCacheWriter {
            out: Some(out),
            tmp,
            path,
            entries: 0,
        })
    }

    /// Entries in all stat cache files (for tests and status).
    pub fn stat_cache_entries(&self) -> Result<u64> {
        let dir = self.root.join(DIR);
        let names = match fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_ctx(format!("listing {}", dir.display()))(e)),
        };
        let mut n = 0;
        for e in names {
            let e = e.map_err(io_ctx(format!("listing {}", dir.display())))?;
            if e.path().extension().is_some() {
                continue;
            }
            let mut f = BufReader::new(
                File::open(e.path()).map_err(io_ctx(format!("opening {}", e.path().display())))?,
            );
            let mut magic = [0u8; 8];
            if f.read_exact(&mut magic).is_ok() && &magic == MAGIC {
                while read_record(&mut f).is_some() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Reads one record; `None` at the end or at damage.
fn read_record(f: &mut impl Read) -> Option<(String, CachedFile)> {
    let mut len = [0u8; 4];
    f.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len);
    if len > MAX_RECORD {
        return None;
    }
    let mut body = vec![0u8; len as usize + 8];
    f.read_exact(&mut body).ok()?;
    let (body, sum) = body.split_at(len as usize);
    if blake3::hash(body).as_bytes()[..8] != *sum {
        return None;
    }
    postcard::from_bytes(body).ok()
}

/// The old stat cache of a tree, read in walk order.
pub struct StatCacheReader<'a> {
    store: &'a Store,
    file: Option<BufReader<File>>,
    /// The next record not yet passed.
    next: Option<(String, CachedFile)>,
}

impl StatCacheReader<'_> {
    fn advance(&mut self) {
        self.next = self.file.as_mut().and_then(read_record);
        if self.next.is_none() {
            self.file = None;
        }
    }

    /// What an earlier publish read at `path` (relative to the tree), if the
    /// file's stat fields are still `stat` and the store still holds every
    /// chunk. Paths must be asked in increasing byte order (the walk's):
    /// records before `path` are passed over for good.
    pub fn lookup(&mut self, path: &str, stat: &FileStat) -> Result<Option<CachedFile>> {
        while let Some((p, _)) = &self.next {
            if p.as_bytes() >= path.as_bytes() {
                break;
            }
            self.advance();
        }
        let Some((p, c)) = &self.next else {
            return Ok(None);
        };
        if p != path {
            return Ok(None);
        }
        let listed: u64 = c.chunks.iter().map(|c| u64::from(c.len)).sum();
        if c.stat != *stat || listed != stat.size {
            return Ok(None);
        }
        for ch in &c.chunks {
            if !self.store.has_chunk(&ch.id)? {
                return Ok(None);
            }
        }
        Ok(Some(c.clone()))
    }
}

/// The new stat cache of a tree, written as the publish goes.
pub struct StatCacheWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    entries: u64,
}

impl StatCacheWriter {
    /// Records what reading the file at `path` (relative to the tree) gave.
    /// Paths must come in increasing byte order.
    pub fn insert(&mut self, path: &str, file: &CachedFile) -> Result<()> {
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        let body = postcard::to_stdvec(&(path, file)).unwrap_or_default();
        let sum = blake3::hash(&body);
        out.write_all(&(body.len() as u32).to_le_bytes())
            .and_then(|()| out.write_all(&body))
            .and_then(|()| out.write_all(&sum.as_bytes()[..8]))
            .map_err(io_ctx("writing the stat cache"))?;
        self.entries += 1;
        Ok(())
    }

    /// Entries written.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Puts the new cache in place of the old one. Call only once every
    /// chunk it names is committed.
    pub fn finish(mut self) -> Result<()> {
        if let Some(out) = self.out.take() {
            out.into_inner()
                .map_err(|e| e.into_error())
                .map_err(io_ctx("writing the stat cache"))?;
            fs::rename(&self.tmp, &self.path)
                .map_err(io_ctx(format!("renaming {}", self.tmp.display())))?;
        }
        Ok(())
    }
}

impl Drop for StatCacheWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    fn stat(n: u64) -> FileStat {
        FileStat {
            size: n,
            mtime: (1, 2),
            ctime: (3, 4),
            dev: 5,
            ino: n,
        }
    }

    #[test]
    fn entries_are_found_in_walk_order_and_damage_ends_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut b = store.batch();
        let data = b"some bytes";
        let id = Hash::of(data);
        b.add(&id, data).unwrap();
        b.commit().unwrap();
        drop(b);
        let file = |n| CachedFile {
            stat: stat(n),
            sha256: [n as u8; 32],
            chunks: vec![ChunkRef { id, len: n as u32 }],
        };
        let mut w = store.stat_cache_writer(b"/t/").unwrap();
        for p in ["a", "b/c", "d"] {
            w.insert(p, &file(10)).unwrap();
        }
        // Not in place until finished.
        assert!(store.stat_cache_reader(b"/t/").unwrap().next.is_none());
        w.finish().unwrap();
        assert_eq!(store.stat_cache_entries().unwrap(), 3);

        let mut r = store.stat_cache_reader(b"/t/").unwrap();
        assert_eq!(r.lookup("a", &stat(10)).unwrap(), Some(file(10)));
        assert_eq!(r.lookup("b", &stat(10)).unwrap(), None, "not cached");
        assert_eq!(r.lookup("b/c", &stat(11)).unwrap(), None, "stat changed");
        assert_eq!(r.lookup("d", &stat(10)).unwrap(), Some(file(10)));
        // Another tree has its own cache.
        let mut other = store.stat_cache_reader(b"/u/").unwrap();
        assert_eq!(other.lookup("a", &stat(10)).unwrap(), None);

        // A flipped byte in the second record ends the reading there.
        let path = store.stat_cache_path(b"/t/");
        let mut bytes = fs::read(&path).unwrap();
        let first = 8 + 4 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize + 8;
        bytes[first + 6] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut r = store.stat_cache_reader(b"/t/").unwrap();
        assert_eq!(r.lookup("a", &stat(10)).unwrap(), Some(file(10)));
        assert_eq!(r.lookup("d", &stat(10)).unwrap(), None);
    }

    #[test]
    fn an_unfinished_writer_leaves_the_old_cache() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let f = CachedFile {
            stat: stat(0),
            sha256: [0; 32],
            chunks: vec![],
        };
        let mut w = store.stat_cache_writer(b"/t/").unwrap();
        w.insert("a", &f).unwrap();
        w.finish().unwrap();
        let mut w = store.stat_cache_writer(b"/t/").unwrap();
        w.insert("b", &f).unwrap();
        drop(w);
        let mut r = store.stat_cache_reader(b"/t/").unwrap();
        assert_eq!(r.lookup("a", &stat(0)).unwrap(), Some(f));
        let left: Vec<_> = fs::read_dir(d.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }
}
