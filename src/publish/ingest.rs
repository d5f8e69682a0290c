//! Reading the tree and storing what is new, on two threads.
//!
//! The reading thread walks the tree in manifest order, takes unchanged
//! files from the stat cache, and reads and cuts the others (small files
//! gathered into shared blocks, large ones a window at a time). The writing
//! thread hashes the chunks (blake3) and the files (SHA-256, from the same
//! buffers, so each byte is read once), stores new chunks in batches,
//! records what it read in the stat cache, and encodes each manifest entry
//! as soon as it is complete. Nothing is held per file once its entry is
//! encoded, so memory does not grow with the number of files.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::symlink::{classify, Link, Roots, SymlinkPolicy};
use super::walk::{Item, Kind, Walker};
use super::{Progress, PublishError};
use crate::chunk::{self, Block, ChunkerParams};
use crate::hash::Hash;
use crate::manifest::stream::{EntryWriter, StreamError};
use crate::manifest::{ChunkRef, Entry, EntryKind, FileMeta, ManifestError, Timestamp};
use crate::store::{Batch, CachedFile, FileStat, StatCacheWriter, Store, StoreError};

/// Commit a batch once this many new bytes are written, so a killed publish
/// loses little work.
const COMMIT_BYTES: u64 = 64 << 20;
/// ... or once this many new chunks are written (trees of small files).
const COMMIT_CHUNKS: usize = 4096;
/// Small files gathered into one block before hashing and writing, so a
/// tree of many small files costs one hand-off per few MiB, not per file.
const SMALL_BLOCK: usize = 4 << 20;
/// Entries handed over at most in one block (files taken from the stat
/// cache carry no bytes, so the byte bound alone would not do).
const BLOCK_ITEMS: usize = 4096;

/// What is published and how: everything both threads need to know.
pub(super) struct Source {
    pub root: std::path::PathBuf,
    pub roots: Roots,
    pub exclude: Option<ignore::gitignore::Gitignore>,
    pub symlinks: SymlinkPolicy,
    /// Device and inode of the master key file, never to be published.
    pub key_file: Option<(u64, u64)>,
    pub params: ChunkerParams,
    /// Count what would be stored, store nothing.
    pub dry_run: bool,
    /// Read every file even when the stat cache knows it.
    pub reread: bool,
    /// When the publish started: files changed since then (or just
    /// before) are not trusted to the stat cache.
    pub started: (i64, u32),
}

impl Source {
    /// What names the tree's stat cache: its resolved absolute path.
    fn cache_prefix(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let mut k = self.roots.real().as_os_str().as_bytes().to_vec();
        k.push(b'/');
        k
    }

    fn link_target(&self, item: &Item) -> Result<String, PublishError> {
        let path = self.root.join(&item.rel);
        let t = std::fs::read_link(&path).map_err(|source| PublishError::Read {
            path: path.clone(),
            source,
        })?;
        t.to_str()
            .map(str::to_string)
            .ok_or(PublishError::NonUtf8(path))
    }
}

/// A file's identity and stat fields as listed, for the manifest entry and
/// the stat cache.
struct Head {
    path: String,
    executable: bool,
    stat: FileStat,
    /// Whether what is read may be recorded in the stat cache.
    cache: bool,
}

enum Piece {
    Dir(String),
    Link(String, String),
    /// A file the stat cache knows, unchanged.
    Cached(Head, CachedFile),
    /// A small file, whole, at this range of the block.
    Small(Head, Range<usize>),
}

/// What the reading thread hands the writing thread.
enum Work {
    /// Entries in order, small files' bytes in the block.
    Block(Arc<Vec<u8>>, Vec<Piece>),
    /// A window of the large file being read.
    Window(Block),
    /// The large file being read ends.
    FileEnd(Head),
}

/// The totals of the checking pass.
pub(super) struct Checked {
    pub files: u64,
    pub bytes: u64,
}

/// Walks the tree once without reading any data: finds what would stop the
/// publish (special files, the key file, refused links, names that are not
/// UTF-8) and counts the bytes to read.
pub(super) fn check(src: &Source) -> Result<Checked, PublishError> {
    let mut c = Checked { files: 0, bytes: 0 };
    for item in Walker::new(&src.root, src.exclude.as_ref()) {
        let item = item?;
        match item.kind {
            Kind::Special => return Err(PublishError::SpecialFile(src.root.join(&item.rel))),
            Kind::File => {
                if src.key_file == Some((item.stat.dev, item.stat.ino)) {
                    return Err(PublishError::ContainsKey(src.root.join(&item.rel)));
                }
                c.files += 1;
                c.bytes += item.stat.size;
            }
            Kind::Symlink if src.symlinks == SymlinkPolicy::Refuse => {
                let target = src.link_target(&item)?;
                if classify(&src.roots, &src.root, &item.rel, &target) == Link::Outside {
                    return Err(ManifestError::SymlinkEscapes {
                        path: item.rel,
                        target,
                    }
                    .into());
                }
            }
            Kind::Symlink | Kind::Dir => {}
        }
    }
    Ok(c)
}

/// What [`ingest`] did.
#[derive(Default)]
pub(super) struct Counts {
    pub files: u64,
    pub bytes: u64,
    /// Bytes read from files (the rest came from the stat cache).
    pub read_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub links_rewritten: u64,
    pub links_skipped: u64,
    pub excluded: u64,
}

/// Reads the tree and stores what is new (or, in a dry run, counts it);
/// returns the encoded manifest and the counts.
pub(super) fn ingest(
    store: &Store,
    src: &Source,
    total: u64,
    progress: Progress<'_>,
) -> Result<(EntryWriter, Counts), PublishError> {
    let manifest = EntryWriter::new(src.params.clone(), store.root())?;
    // Two blocks queued at most: memory stays flat whatever the data size.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(2);
    std::thread::scope(|s| {
        let writer = s.spawn(move || Writer::new(store, src, manifest)?.run(rx));
        let read = read_tree(store, src, total, progress, &tx);
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // A store error stops the reader too; report the store's cause first.
        let (manifest, mut counts) = written?;
        let read = read?;
        counts.files = read.files;
        counts.bytes = read.bytes;
        counts.read_bytes = read.read_bytes;
        counts.links_rewritten = read.links_rewritten;
        counts.links_skipped = read.links_skipped;
        counts.excluded = read.excluded;
        Ok((manifest, counts))
    })
}

fn read_tree(
    store: &Store,
    src: &Source,
    total: u64,
    progress: Progress<'_>,
    tx: &SyncSender<Work>,
) -> Result<Counts, PublishError> {
    let send = |work: Work| {
        tx.send(work)
            .map_err(|_| io::Error::other("the chunk writer stopped"))
    };
    let mut cache = if src.reread {
        None
    } else {
        Some(store.stat_cache_reader(&src.cache_prefix())?)
    };
    let mut c = Counts::default();
    let mut done = 0u64;
    let mut data: Vec<u8> = Vec::with_capacity(SMALL_BLOCK);
    let mut pieces: Vec<Piece> = Vec::new();
    let flush = |data: &mut Vec<u8>, pieces: &mut Vec<Piece>| -> io::Result<()> {
        if pieces.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(data, Vec::with_capacity(SMALL_BLOCK));
        send(Work::Block(Arc::new(block), std::mem::take(pieces)))
    };
    let mut walker = Walker::new(&src.root, src.exclude.as_ref());
    for item in walker.by_ref() {
        let item = item?;
        let path = src.root.join(&item.rel);
        let read_err = |source| PublishError::Read {
            path: path.clone(),
            source,
        };
        match item.kind {
            Kind::Special => return Err(PublishError::SpecialFile(path)),
            Kind::Dir => pieces.push(Piece::Dir(item.rel)),
            Kind::Symlink => {
                let target = src.link_target(&item)?;
                match classify(&src.roots, &src.root, &item.rel, &target) {
                    Link::Inside { target, rewritten } => {
                        c.links_rewritten += u64::from(rewritten);
                        pieces.push(Piece::Link(item.rel, target));
                    }
                    Link::Outside => match src.symlinks {
                        SymlinkPolicy::Keep => pieces.push(Piece::Link(item.rel, target)),
                        SymlinkPolicy::Skip => {
                            tracing::warn!(link = %item.rel, %target, "skipping a symlink that points outside the tree (--symlinks keep to publish it)");
                            c.links_skipped += 1;
                        }
                        SymlinkPolicy::Refuse => {
                            return Err(ManifestError::SymlinkEscapes {
                                path: item.rel,
                                target,
                            }
                            .into())
                        }
                    },
                }
            }
            Kind::File => {
                let stat = item.stat;
                if src.key_file == Some((stat.dev, stat.ino)) {
                    return Err(PublishError::ContainsKey(path));
                }
                let head = Head {
                    cache: !src.dry_run && !racy(&stat, src.started),
                    path: item.rel,
                    executable: item.executable,
                    stat,
                };
                c.files += 1;
                if let Some(cache) = &mut cache {
                    if let Some(known) = cache.lookup(&head.path, &stat)? {
                        c.bytes += stat.size;
                        done += stat.size;
                        progress(done, total.max(done));
                        pieces.push(Piece::Cached(head, known));
                        if pieces.len() >= BLOCK_ITEMS {
                            flush(&mut data, &mut pieces).map_err(read_err)?;
                        }
                        continue;
                    }
                }
                let mut f = open_scanned(&path, (stat.dev, stat.ino))?;
                let min = src.params.min as u64;
                let mut actual = 0u64;
                let mut rest: Option<Box<dyn Read>> = None;
                if stat.size <= min {
                    let start = data.len();
                    let n = (&mut f)
                        .take(min + 1)
                        .read_to_end(&mut data)
                        .map_err(read_err)? as u64;
                    if n <= min {
                        actual = n;
                        pieces.push(Piece::Small(head, start..data.len()));
                        done += n;
                        progress(done, total.max(done));
                        if data.len() >= SMALL_BLOCK || pieces.len() >= BLOCK_ITEMS {
                            flush(&mut data, &mut pieces).map_err(read_err)?;
                        }
                        c.bytes += actual;
                        c.read_bytes += actual;
                        continue;
                    }
                    // It grew since it was listed: cut it like a large file.
                    let grown = data.split_off(start);
                    rest = Some(Box::new(io::Cursor::new(grown).chain(f)));
                } else {
                    rest.get_or_insert(Box::new(f));
                }
                // Entries before this file go first: the writer encodes in order.
                flush(&mut data, &mut pieces).map_err(read_err)?;
                let hint = Some(stat.size);
                let reader = rest.unwrap_or_else(|| Box::new(io::empty()));
                chunk::for_each_block(reader, hint, &src.params, |(buf, cs)| {
                    actual += buf.len() as u64;
                    done += buf.len() as u64;
                    progress(done, total.max(done));
                    send(Work::Window((buf, cs)))
                })
                .map_err(read_err)?;
                send(Work::FileEnd(head)).map_err(read_err)?;
                c.bytes += actual;
                c.read_bytes += actual;
            }
        }
        if pieces.len() >= BLOCK_ITEMS {
            flush(&mut data, &mut pieces).map_err(read_err)?;
        }
    }
    flush(&mut data, &mut pieces).map_err(|source| PublishError::Read {
        path: src.root.clone(),
        source,
    })?;
    c.excluded = walker.excluded;
    Ok(c)
}

/// Whether a file changed so close to the publish's start that a later
/// change could leave its stat fields as they are now (timestamps are
/// taken from a clock that ticks every few milliseconds; a file system
/// without nanoseconds records whole seconds, or two).
fn racy(s: &FileStat, started: (i64, u32)) -> bool {
    let coarse = s.mtime.1 == 0 && s.ctime.1 == 0;
    let margin_ns: i128 = if coarse { 2_000_000_000 } else { 50_000_000 };
    let ns = |(secs, nanos): (i64, u32)| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let limit = ns(started) - margin_ns;
    ns(s.ctime) >= limit || ns(s.mtime) >= limit
}

/// The writing thread's state.
struct Writer<'s> {
    store: &'s Store,
    manifest: EntryWriter,
    batch: Option<Batch<'s>>,
    /// The tree's new stat cache (none in a dry run).
    cache: Option<StatCacheWriter>,
    /// New chunks seen in a dry run (nothing is stored to remember them).
    seen: HashSet<Hash>,
    counts: Counts,
    since: (u64, usize),
    /// The large file being read: its SHA-256 so far, chunks and size.
    open: (sha2::Sha256, Vec<ChunkRef>, u64),
}

impl<'s> Writer<'s> {
    fn new(store: &'s Store, src: &'s Source, manifest: EntryWriter) -> Result<Self, PublishError> {
        let (batch, cache) = if src.dry_run {
            (None, None)
        } else {
            (
                Some(store.batch()),
                Some(store.stat_cache_writer(&src.cache_prefix())?),
            )
        };
        Ok(Writer {
            store,
            manifest,
            batch,
            cache,
            seen: HashSet::new(),
            counts: Counts::default(),
            since: (0, 0),
            open: Default::default(),
        })
    }

    fn run(mut self, rx: Receiver<Work>) -> Result<(EntryWriter, Counts), PublishError> {
        use sha2::Digest;
        for work in rx {
            match work {
                Work::Block(buf, pieces) => {
                    for p in pieces {
                        self.piece(&buf, p)?;
                    }
                }
                Work::Window((buf, ranges)) => {
                    self.open.0.update(&buf[..]);
                    self.open.2 += buf.len() as u64;
                    for r in ranges {
                        let c = self.chunk(&buf[r])?;
                        self.open.1.push(c);
                    }
                }
                Work::FileEnd(head) => {
                    let (mut sha, chunks, size) = std::mem::take(&mut self.open);
                    let sum = sha.finalize_reset().into();
                    self.file(head, size, chunks, sum, false)?;
                }
            }
            if self.since.0 >= COMMIT_BYTES || self.since.1 >= COMMIT_CHUNKS {
                self.commit()?;
            }
        }
        self.commit()?;
        if let Some(c) = self.cache.take() {
            c.finish()?;
        }
        if let Some(b) = &self.batch {
            self.counts.new_bytes = b.new_bytes();
        }
        Ok((self.manifest, self.counts))
    }

    fn piece(&mut self, buf: &[u8], p: Piece) -> Result<(), PublishError> {
        use sha2::Digest;
        match p {
            Piece::Dir(path) => self.entry(Entry {
                path,
                kind: EntryKind::Dir,
            }),
            Piece::Link(path, target) => self.entry(Entry {
                path,
                kind: EntryKind::Symlink { target },
            }),
            Piece::Cached(head, known) => {
                self.counts.chunks += known.chunks.len() as u64;
                self.file(head, known.stat.size, known.chunks, known.sha256, true)
            }
            Piece::Small(head, r) => {
                let data = &buf[r];
                let chunks = if data.is_empty() {
                    Vec::new()
                } else {
                    vec![self.chunk(data)?]
                };
                let sum = sha2::Sha256::digest(data).into();
                self.file(head, data.len() as u64, chunks, sum, false)
            }
        }
    }

    /// Stores one chunk (or, in a dry run, counts it if new).
    fn chunk(&mut self, data: &[u8]) -> Result<ChunkRef, PublishError> {
        let id = Hash::of(data);
        let len = data.len() as u64;
        self.counts.chunks += 1;
        let new = match &mut self.batch {
            Some(b) => b.add(&id, data)?,
            None => !self.seen.contains(&id) && !self.store.has_chunk(&id)? && self.seen.insert(id),
        };
        if new {
            self.counts.new_chunks += 1;
            self.counts.new_bytes += len;
            self.since.0 += len;
            self.since.1 += 1;
        }
        Ok(ChunkRef {
            id,
            len: len as u32,
        })
    }

    fn file(
        &mut self,
        head: Head,
        size: u64,
        chunks: Vec<ChunkRef>,
        sha256: [u8; 32],
        cached: bool,
    ) -> Result<(), PublishError> {
        if let Some(cache) = &mut self.cache {
            // Only what was read whole, as listed, is worth remembering.
            if (cached || head.cache) && size == head.stat.size {
                let known = CachedFile {
                    stat: head.stat,
                    sha256,
                    chunks: chunks.clone(),
                };
                cache.insert(&head.path, &known)?;
            }
        }
        self.entry(Entry {
            path: head.path,
            kind: EntryKind::File {
                size,
                executable: head.executable,
                chunks,
                meta: Some(FileMeta {
                    modified: Timestamp {
                        secs: head.stat.mtime.0,
                        nanos: head.stat.mtime.1,
                    },
                    sha256,
                }),
            },
        })
    }

    fn entry(&mut self, e: Entry) -> Result<(), PublishError> {
        self.manifest.push(&e).map_err(|e| match e {
            StreamError::Invalid(m) => PublishError::Manifest(m),
            StreamError::Io(source) => PublishError::Store(StoreError::Io {
                context: "writing the manifest".into(),
                source,
            }),
        })
    }

    /// Makes the chunks durable and indexed (the stat cache naming them is
    /// put in place once the last commit is done).
    fn commit(&mut self) -> Result<(), PublishError> {
        if let Some(b) = &mut self.batch {
            b.commit()?;
        }
        self.since = (0, 0);
        Ok(())
    }
}

/// Opens a listed file for reading, and makes sure it is still the file
/// that was listed. Without following a link (O_NOFOLLOW) and without
/// waiting for a writer (O_NONBLOCK: a FIFO swapped in would block the
/// publish for good), then checked on the open descriptor (fstat): a
/// regular file with the listed device and inode. The size may differ: the
/// bytes read are what is hashed and recorded.
fn open_scanned(path: &Path, (dev, ino): (u64, u64)) -> Result<File, PublishError> {
    use std::os::unix::fs::MetadataExt;
    let changed = || PublishError::Changed(path.to_path_buf());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENXIO) => changed(),
            _ => PublishError::Read {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    let md = f.metadata().map_err(|source| PublishError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !md.file_type().is_file() || md.dev() != dev || md.ino() != ino {
        return Err(changed());
    }
    Ok(f)
}
