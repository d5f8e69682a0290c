//! The content-addressed store: chunk bodies in segment files, everything
//! else in sled.
//!
//! Nothing outside this module touches sled or the segment files. sled holds
//! eight trees: `meta` (small named records of the node, e.g. the peers it
//! knows), `follows` (collection id -> followed or not, the paths kept,
//! peers from a ticket; see [`Interest`]), `chunk_index` (chunk ids -> [`Loc`], in buckets: see [`index`]), `segments` (segment -> durable
//! length), `manifests` (manifest id -> the chunks of its encoding),
//! `collections` (collection id -> name, current and newest accepted
//! version), `versions` (collection id + version -> signed announcement) and
//! `switches` (collection id -> the version current before the last switch,
//! and when it happened, for readers that serve the previous version for a
//! while), and publish's stat cache is in files of its own ([`StatCacheReader`]).
//!
//! Crash safety follows from the order of writes: chunk bytes are appended
//! and fsynced before their index entries are written and flushed
//! ([`Batch::commit`]); a version becomes current in one key write, only
//! after every chunk it needs is indexed. Anything written but not indexed is
//! cut off or ignored when the store opens.

mod batch;
pub mod buffers;
mod export;
mod follows;
mod gc;
mod index;
mod lease;
mod segments;
mod space;
mod statcache;
mod stream;
mod verify;
mod versions;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::announce::AnnounceError;
use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::{ChunkRef, Manifest, ManifestError};

pub use batch::Batch;
pub use export::ExportReport;
pub use follows::{Interest, InterestState};
pub use gc::GcReport;
use index::ChunkIndex;
pub use lease::ReadLease;
pub use segments::Loc;
use segments::Segments;
pub(crate) use space::mib;
pub use space::{Fit, DISK_RESERVE};
pub use statcache::{CachedFile, FileStat, StatCacheReader, StatCacheWriter};
pub use stream::{ManifestBytes, ManifestEntries};
pub use verify::{Problem, VerifyReport};
use versions::version_key;
pub use versions::{CollectionInfo, Recorded, Switch};

/// What went wrong in the store, grouped by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open.
    #[error("the store at {0} is in use by another peermirror process (is a node running?)")]
    Locked(PathBuf),
    /// A file system operation failed (disk full, permissions, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: io::Error,
    },
    /// A background task doing store work panicked: a bug, not a disk fault.
    #[error(transparent)]
    Task(#[from] crate::task::TaskFailed),
    /// The index database failed.
    #[error("index database: {0}")]
    Db(#[from] sled::Error),
    /// Stored bytes do not hash to their id.
    #[error("chunk {id} is corrupt: {why}")]
    CorruptChunk {
        /// The chunk.
        id: Hash,
        /// What is wrong.
        why: String,
    },
    /// An index value that does not decode.
    #[error("corrupt index entry: {0}")]
    CorruptIndex(String),
    /// A chunk that is not in the store.
    #[error("chunk {0} is not in the store")]
    MissingChunk(Hash),
    /// A manifest that is not in the store.
    #[error("manifest {0} is not in the store")]
    MissingManifest(Hash),
    /// A manifest that fails validation.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An announcement that fails validation.
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    /// A collection this store does not know.
    #[error("unknown collection {0}")]
    UnknownCollection(CollectionId),
    /// A version this store does not hold.
    #[error("collection {0} has no version {1} in this store")]
    UnknownVersion(CollectionId, u64),
    /// A version some of whose chunks are missing.
    #[error("version {version} is incomplete: {missing} chunks missing")]
    Incomplete {
        /// The version.
        version: u64,
        /// How many chunks are missing.
        missing: usize,
    },
    /// A chunk write refused because it would leave less than
    /// [`DISK_RESERVE`] free (the index needs room to commit).
    #[error(
        "disk full: {} needed (with {} kept free for the index), {} available",
        space::mib(*.needed),
        space::mib(DISK_RESERVE),
        space::mib(*.available)
    )]
    DiskFull {
        /// Bytes needed, the reserve included.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// A name that more than one collection answers to (the same name, or
    /// names that look alike): only the id can say which is meant.
    #[error(
        "the name {name:?} is ambiguous: it matches collections {}; use the id",
        ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousName {
        /// The name asked for.
        name: String,
        /// Every collection it could mean.
        ids: Vec<CollectionId>,
    },
    /// An export destination that would be overwritten without being asked to.
    #[error("{0} exists and is not empty (pass --replace to swap it atomically)")]
    DestinationNotEmpty(PathBuf),
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// The chunks that hold an encoded manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ManifestRecord {
    size: u64,
    chunks: Vec<ChunkRef>,
}

/// Totals for `status`.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// Chunks indexed.
    pub chunks: u64,
    /// Bytes of chunk bodies indexed.
    pub chunk_bytes: u64,
    /// Bytes the segment files occupy on disk.
    pub disk_bytes: u64,
}

/// An open store. One process at a time (a lock file enforces it).
pub struct Store {
    root: PathBuf,
    db: sled::Db,
    chunks: ChunkIndex,
    segment_lens: sled::Tree,
    manifests: sled::Tree,
    collections: sled::Tree,
    versions: sled::Tree,
    switches: sled::Tree,
    meta: sled::Tree,
    follows: sled::Tree,
    segs: Segments,
    /// Manifests that readers are still streaming from; gc keeps them.
    leases: lease::Leases,
    /// Batches hold it shared; gc holds it exclusively, so it never frees
    /// space that an uncommitted batch has just written.
    gate: RwLock<()>,
    /// Serialises read-modify-write of collection records (announcements
    /// arrive from gossip and from several peers at once).
    records: std::sync::Mutex<()>,
    /// Free space chunk writes leave for the index (see [`space`]).
    disk_reserve: AtomicU64,
    /// Chunks read by [`Store::read_chunk_for_peer`], to pick which to re-hash.
    peer_reads: AtomicU64,
    _lock: File,
}

/// [`Store::read_chunk_for_peer`] re-hashes about one read in this many (a
/// power of two): enough
/// that a chunk gone bad on disk is found out (and no longer sent) after a
/// few dozen requests for it, for about 1/32 of the cost of hashing all.
pub const PEER_REHASH_EVERY: u64 = 32;

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Store> {
        crate::control::create_private_dir(root)
            .map_err(io_ctx(format!("creating {}", root.display())))?;
        let lock = lock_dir(root)?;
        let db = sled::Config::new()
            .path(root.join("index"))
            .cache_capacity(16 << 20)
            .open()?;
        Store::tidy_stat_cache(&db, root)?;
        let segment_lens = db.open_tree("segments")?;
        let mut durable = HashMap::new();
        for kv in segment_lens.iter() {
            let (k, v) = kv?;
            durable.insert(be_u32(&k)?, be_u64(&v)?);
        }
        let segs = Segments::open(&root.join("segments"), &durable)
            .map_err(io_ctx("opening segment files"))?;
        let store = Store {
            root: root.to_path_buf(),
            chunks: ChunkIndex::open(&db)?,
            manifests: db.open_tree("manifests")?,
            collections: db.open_tree("collections")?,
            versions: db.open_tree("versions")?,
            switches: db.open_tree("switches")?,
            meta: db.open_tree("meta")?,
            follows: db.open_tree("follows")?,
            segment_lens,
            segs,
            leases: lease::Leases::default(),
            db,
            gate: RwLock::new(()),
            records: std::sync::Mutex::new(()),
            disk_reserve: AtomicU64::new(DISK_RESERVE),
            peer_reads: AtomicU64::new(0),
            _lock: lock,
        };
        store.record_held_as_followed_once()?;
        Ok(store)
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A named metadata record (e.g. `peers`), if set: state of the node
    /// that outlives a restart but is not part of any collection.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    /// Sets a named metadata record and flushes it.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(key, value)?;
        self.meta.flush()?;
        Ok(())
    }

    /// Where a chunk's body lives, if it is indexed.
    pub fn chunk_loc(&self, id: &Hash) -> Result<Option<Loc>> {
        self.chunks.get(id)
    }

    /// Whether a chunk is indexed.
    pub fn has_chunk(&self, id: &Hash) -> Result<bool> {
        self.chunks.contains(id)
    }

    /// Reads a chunk and checks it hashes to `id`.
    pub fn read_chunk(&self, id: &Hash) -> Result<Vec<u8>> {
        let loc = self.chunk_loc(id)?.ok_or(StoreError::MissingChunk(*id))?;
        let data = self.segs.read(loc).map_err(|e| StoreError::CorruptChunk {
            id: *id,
            why: format!("unreadable: {e}"),
        })?;
        if Hash::of(&data) != *id {
            return Err(StoreError::CorruptChunk {
                id: *id,
                why: "bytes do not hash to the chunk id".into(),
            });
        }
        Ok(data)
    }

    /// Reads a chunk to send to a peer, into a recycled buffer (given back
    /// to [`buffers`] when the returned bytes are dropped).
    ///
    /// A peer hashes every body it receives and bans a sender whose bytes
    /// do not match, so the body is not re-hashed here on every read (that
    /// was a tenth of a seeder's CPU): the record header in front of it must
    /// name the chunk and its length (see `Segments::read_checked`), and one
    /// read in [`PEER_REHASH_EVERY`] is hashed in full, so a chunk that rots
    /// on disk is found out and reported corrupt (the caller then answers
    /// "not found" for it) rather than sent again and again. End users, who
    /// cannot check, are served through [`Store::read_chunk`], which hashes
    /// every chunk.
    pub fn read_chunk_for_peer(&self, id: &Hash) -> Result<bytes::Bytes> {
        let loc = self.chunk_loc(id)?.ok_or(StoreError::MissingChunk(*id))?;
        let data = self
            .segs
            .read_checked(id, loc)
            .map_err(|e| StoreError::CorruptChunk {
                id: *id,
                why: format!("unreadable: {e}"),
            })?;
        let n = self
            .peer_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Which reads are hashed is picked by a cheap mix of the count and
        // the id, so it does not follow the order of the requests.
        let mut head = [0u8; 8];
        head.copy_from_slice(&id.as_bytes()[..8]);
        let mix = (n ^ u64::from_le_bytes(head)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if mix >> (64 - PEER_REHASH_EVERY.trailing_zeros()) == 0 && Hash::of(&data) != *id {
            buffers::give(data);
            return Err(StoreError::CorruptChunk {
                id: *id,
                why: "bytes do not hash to the chunk id".into(),
            });
        }
        Ok(buffers::into_bytes(data))
    }

    /// Drops a chunk from the index if it is still corrupt on disk (what
    /// `verify --repair` does for every corrupt chunk), so it is served to no
    /// one and fetched or published again. A reader that met a corrupt chunk
    /// calls this; the chunk is read and hashed once more first, so a chunk
    /// that reads back fine stays. Returns whether it was dropped.
    pub fn drop_corrupt_chunk(&self, id: &Hash) -> Result<bool> {
        match self.read_chunk(id) {
            Ok(_) | Err(StoreError::MissingChunk(_)) => Ok(false),
            Err(StoreError::CorruptChunk { why, .. }) => {
                tracing::warn!(chunk = %id, %why, "dropping corrupt chunk from the index");
                self.chunks.remove([*id])?;
                self.db.flush()?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes a read lease on a stored manifest: until it is dropped, gc
    /// keeps the manifest and every chunk it names, even once its version is
    /// no longer retained. Fails with [`StoreError::MissingManifest`] if the
    /// manifest is not stored or a running gc is dropping it.
    pub fn lease_manifest(&self, id: &Hash) -> Result<ReadLease> {
        let lease = self
            .leases
            .take(id)
            .ok_or(StoreError::MissingManifest(*id))?;
        // Registered first, checked second: a gc that ran before the lease
        // may already have dropped it.
        if !self.has_manifest(id)? {
            return Err(StoreError::MissingManifest(*id));
        }
        Ok(lease)
    }

    /// Starts a batch of chunk writes.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            _gate: crate::task::read(&self.gate),
            pending: HashMap::new(),
            new_bytes: 0,
            epoch: None,
        }
    }

    /// Reads, checks and decodes a manifest.
    pub fn manifest(&self, id: &Hash) -> Result<Manifest> {
        let rec = self.manifest_record(id)?;
        let mut bytes = Vec::with_capacity(rec.size as usize);
        for c in &rec.chunks {
            bytes.extend(self.read_chunk(&c.id)?);
        }
        if Hash::of(&bytes) != *id {
            return Err(StoreError::CorruptIndex(format!(
                "manifest {id} does not hash to its id"
            )));
        }
        Ok(Manifest::decode(&bytes)?)
    }

    fn manifest_record(&self, id: &Hash) -> Result<ManifestRecord> {
        let v = self
            .manifests
            .get(id.as_bytes())?
            .ok_or(StoreError::MissingManifest(*id))?;
        postcard::from_bytes(&v)
            .map_err(|e| StoreError::CorruptIndex(format!("manifest {id}: {e}")))
    }

    /// Whether the manifest is stored.
    pub fn has_manifest(&self, id: &Hash) -> Result<bool> {
        Ok(self.manifests.contains_key(id.as_bytes())?)
    }

    /// Writes chunks whose bytes the caller has already checked against
    /// their ids, and indexes them. Returns the bytes that were new.
    pub fn put_chunks(&self, chunks: &[(Hash, Vec<u8>)]) -> Result<u64> {
        let mut b = self.batch();
        for (id, data) in chunks {
            b.add(id, data)?;
        }
        b.commit()?;
        Ok(b.new_bytes())
    }

    /// The chunks holding a stored manifest's encoding (what peers ask for
    /// before fetching a manifest like data).
    pub fn manifest_chunks(&self, id: &Hash) -> Result<Option<Vec<ChunkRef>>> {
        match self.manifest_record(id) {
            Ok(r) => Ok(Some(r.chunks)),
            Err(StoreError::MissingManifest(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Chunks of a manifest's files that are not in the store, each once.
    pub fn missing_chunks(&self, m: &Manifest) -> Result<Vec<ChunkRef>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (_, _, _, chunks) in m.files() {
            for c in chunks {
                if seen.insert(c.id) && !self.has_chunk(&c.id)? {
                    out.push(*c);
                }
            }
        }
        Ok(out)
    }

    /// Chunk and disk totals.
    pub fn stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats::default();
        for kv in self.chunks.iter() {
            let (_, loc) = kv?;
            s.chunks += 1;
            s.chunk_bytes += loc.len as u64;
        }
        s.disk_bytes = self
            .segs
            .list()
            .map_err(io_ctx("listing segments"))?
            .iter()
            .map(|(_, b)| b)
            .sum();
        Ok(s)
    }
}

fn be_u32(b: &[u8]) -> Result<u32> {
    Ok(u32::from_be_bytes(
        b.try_into()
            .map_err(|_| StoreError::CorruptIndex("u32 key".into()))?,
    ))
}

fn be_u64(b: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| {
        StoreError::CorruptIndex("u64 value".into())
    })?))
}

/// Takes an exclusive advisory lock on `root/LOCK` for the life of the store.
fn lock_dir(root: &Path) -> Result<File> {
    let path = root.join("LOCK");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_ctx(format!("opening {}", path.display())))?;
    // SAFETY: flock on a valid open descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(root.to_path_buf()));
        }
        return Err(io_ctx(format!("locking {}", path.display()))(e));
    }
    Ok(f)
}
