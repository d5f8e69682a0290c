//! Publishing: turn a directory into the next signed version of a collection.
//!
//! The tree is scanned and checked (paths, symlinks) before any data is read,
//! then every file is cut into chunks that the store does not already hold,
//! committed in batches, and finally the manifest is stored, signed and made
//! current. A publish killed at any point leaves a consistent store, and
//! running it again reuses every chunk already committed.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::announce::{self, valid_name, AnnounceError, Announcement, SignedAnnouncement};
use crate::chunk::{self, Block, ChunkerParams};
use crate::hash::Hash;
use crate::keys::MasterKey;
use crate::manifest::{ChunkRef, Entry, EntryKind, FileMeta, Manifest, ManifestError, Timestamp};
use crate::store::{Recorded, Store, StoreError};

/// Commit a batch once this many new bytes are written, so a killed publish
/// loses little work.
const COMMIT_BYTES: u64 = 64 << 20;
/// ... or once this many new chunks are written (trees of small files).
const COMMIT_CHUNKS: usize = 4096;

/// How to publish.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Collection name; defaults to the source directory's name.
    pub name: Option<String>,
    /// Version number; defaults to one more than the newest held.
    pub version: Option<u64>,
    /// How long the announcement stays valid, in seconds.
    pub valid_for: u64,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            name: None,
            version: None,
            valid_for: 365 * 24 * 3600,
        }
    }
}

/// What a publish did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PublishReport {
    /// The signed announcement of the new version.
    pub announcement: SignedAnnouncement,
    /// Regular files.
    pub files: u64,
    /// File bytes.
    pub bytes: u64,
    /// Bytes written to the store that it did not hold before.
    pub new_bytes: u64,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Reading the source tree failed.
    #[error("reading {path}: {source}")]
    Read {
        /// Where.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The source is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A device, socket or FIFO in the tree.
    #[error("{0} is not a regular file, directory or symlink")]
    SpecialFile(PathBuf),
    /// A file that was replaced (by a link, a FIFO, another file) between
    /// the scan and the read: what was checked is not what would be read.
    #[error("{0} changed while it was being published (replaced by another file, link or FIFO); publish again")]
    Changed(PathBuf),
    /// The tree holds the master key that signs it: publishing it would
    /// hand the key to every mirror.
    #[error("{0} is the master key file: refusing to publish the key (move it out of the tree)")]
    ContainsKey(PathBuf),
    /// A name that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NonUtf8(PathBuf),
    /// A collection name that cannot be used.
    #[error(
        "invalid collection name {0:?} (use letters, digits, '-', '_', '.', '+'; pass --name)"
    )]
    BadName(String),
    /// A version number out of range: above [`announce::MAX_VERSION`], or
    /// no version left after the newest accepted one.
    #[error("version {0} is out of range (at most {max})", max = announce::MAX_VERSION)]
    BadVersion(u64),
    /// The tree breaks a manifest rule (escaping symlink, ...).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Progress callback arguments: bytes read so far, total bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Publishes `src` as the next version of `key`'s collection.
pub fn publish(
    store: &Store,
    key: &MasterKey,
    src: &Path,
    opts: &PublishOptions,
    progress: Progress<'_>,
) -> Result<PublishReport, PublishError> {
    if !src.is_dir() {
        return Err(PublishError::NotADirectory(src.to_path_buf()));
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => src
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    };
    if !valid_name(&name) {
        return Err(PublishError::BadName(name));
    }
    // Refused before any data is read (checked again once the default is known).
    if let Some(v) = opts
        .version
        .filter(|&v| v == 0 || v > announce::MAX_VERSION)
    {
        return Err(PublishError::BadVersion(v));
    }
    let params = ChunkerParams::default();
    let (mut entries, ids) = scan_with_ids(src)?;
    if let Some(key_id) = key.file_id() {
        if let Some(i) = ids.iter().position(|f| f.is_some_and(|f| f.same(key_id))) {
            return Err(PublishError::ContainsKey(src.join(&entries[i].path)));
        }
    }
    // Check paths and links before reading any data (sizes are checked at the end).
    let skeleton = entries.iter().map(|e| Entry {
        path: e.path.clone(),
        kind: match &e.kind {
            EntryKind::File {
                executable, meta, ..
            } => EntryKind::File {
                size: 0,
                executable: *executable,
                chunks: Vec::new(),
                meta: *meta,
            },
            k => k.clone(),
        },
    });
    Manifest::new(skeleton.collect(), params.clone()).validate()?;
    let total: u64 = entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        })
        .sum();

    let (files, bytes, new_bytes) =
        ingest(store, src, &mut entries, &ids, &params, total, progress)?;

    let manifest = Manifest::new(entries, params);
    manifest.validate()?;
    let (manifest_id, manifest_size) = store.batch().add_manifest_bytes(&manifest.encode())?;

    let collection = key.collection();
    let version = match opts.version {
        Some(v) => v,
        None => match store.latest(&collection)? {
            None => 1,
            Some(a) => a
                .body
                .version
                .checked_add(1)
                .ok_or(PublishError::BadVersion(a.body.version))?,
        },
    };
    if version == 0 || version > announce::MAX_VERSION {
        return Err(PublishError::BadVersion(version));
    }
    let published_at = announce::now();
    let announcement = Announcement {
        collection,
        name,
        version,
        manifest: manifest_id,
        manifest_size,
        total_bytes: bytes,
        files,
        published_at,
        expires_at: published_at.saturating_add(opts.valid_for.max(1)),
    }
    .sign(key);
    if let Recorded::NotNewer { accepted } = store.record_announcement(&announcement)? {
        return Err(StoreError::Announce(AnnounceError::NotNewer { version, accepted }).into());
    }
    store.set_current(&collection, version)?;
    Ok(PublishReport {
        announcement,
        files,
        bytes,
        new_bytes,
    })
}

/// What the reading thread hands the writer thread.
enum Work {
    /// A window of the large file being read: its chunks, and bytes for the
    /// file's running SHA-256.
    Window(Block),
    /// The large file being read ends (entry index): finish its SHA-256.
    FileEnd(usize),
    /// Small files gathered in one buffer: each range is one whole file,
    /// whose entry index is alongside.
    Small(Block, Vec<usize>),
}

/// What the writer thread returns: new bytes, chunk ids in send order, and
/// (entry index, SHA-256) of every non-empty file.
type Written = (u64, Vec<Hash>, Vec<(usize, [u8; 32])>);

/// Reads and cuts every file on this thread while a writer thread hashes
/// the chunks (blake3) and the files (SHA-256, from the same buffers, so
/// each byte is read once), stores the new chunks and commits them in
/// batches. Fills in each file's chunk list and SHA-256. Returns (files,
/// bytes, new bytes).
fn ingest(
    store: &Store,
    src: &Path,
    entries: &mut [Entry],
    ids: &[Option<FileId>],
    params: &ChunkerParams,
    total: u64,
    progress: Progress<'_>,
) -> Result<(u64, u64, u64), PublishError> {
    // Two windows queued at most: memory stays flat whatever the data size.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(2);
    std::thread::scope(|s| {
        // The writer hashes too: cutting (reader) and hashing plus writing
        // (writer) then run on separate cores.
        let writer = s.spawn(move || -> Result<Written, StoreError> {
            use sha2::Digest;
            let mut batch = store.batch();
            let mut since = (0u64, 0usize);
            let mut ids = Vec::new();
            let mut sums = Vec::new();
            let mut open_file = sha2::Sha256::new();
            for work in rx {
                let (buf, ranges) = match work {
                    Work::Window(block) => {
                        open_file.update(&block.0[..]);
                        block
                    }
                    Work::FileEnd(i) => {
                        sums.push((i, open_file.finalize_reset().into()));
                        continue;
                    }
                    Work::Small(block, owners) => {
                        for (r, i) in block.1.iter().zip(owners) {
                            sums.push((i, sha2::Sha256::digest(&block.0[r.clone()]).into()));
                        }
                        block
                    }
                };
                for r in ranges {
                    let len = r.len() as u64;
                    let data = &buf[r];
                    let id = Hash::of(data);
                    ids.push(id);
                    if batch.add(&id, data)? {
                        since.0 += len;
                        since.1 += 1;
                    }
                    if since.0 >= COMMIT_BYTES || since.1 >= COMMIT_CHUNKS {
                        batch.commit()?;
                        since = (0, 0);
                    }
                }
            }
            batch.commit()?;
            Ok((batch.new_bytes(), ids, sums))
        });
        let read = read_files(src, entries, ids, params, total, progress, &tx);
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // A store error stops the reader too; report the store's cause first.
        let (new_bytes, ids, sums) = written?;
        let (files, bytes) = read?;
        set_sha256(entries, sums)?;
        // Blocks went out in entry order, so the ids come back in that order.
        let mut ids = ids.into_iter();
        for e in entries.iter_mut() {
            if let EntryKind::File { chunks, .. } = &mut e.kind {
                for c in chunks.iter_mut() {
                    c.id = ids.next().ok_or_else(|| StoreError::Io {
                        context: "publish".into(),
                        source: io::Error::other("fewer chunk ids than chunks"),
                    })?;
                }
            }
        }
        Ok((files, bytes, new_bytes))
    })
}

/// Records each file's SHA-256 (a file with no entry in `sums` was empty).
fn set_sha256(entries: &mut [Entry], sums: Vec<(usize, [u8; 32])>) -> Result<(), PublishError> {
    use sha2::Digest;
    let empty: [u8; 32] = sha2::Sha256::digest(b"").into();
    let mut sums: std::collections::HashMap<usize, [u8; 32]> = sums.into_iter().collect();
    for (i, e) in entries.iter_mut().enumerate() {
        if let EntryKind::File {
            size,
            meta: Some(meta),
            ..
        } = &mut e.kind
        {
            meta.sha256 = match sums.remove(&i) {
                Some(sum) => sum,
                None if *size == 0 => empty,
                None => {
                    return Err(PublishError::Store(StoreError::Io {
                        context: "publish".into(),
                        source: io::Error::other(format!("no SHA-256 for {}", e.path)),
                    }))
                }
            };
        }
    }
    Ok(())
}

/// Small files gathered into one block before hashing and writing, so a
/// tree of many small files costs one hand-off per few MiB, not per file.
const SMALL_BLOCK: usize = 4 << 20;

fn read_files(
    src: &Path,
    entries: &mut [Entry],
    ids: &[Option<FileId>],
    params: &ChunkerParams,
    total: u64,
    progress: Progress<'_>,
    tx: &std::sync::mpsc::SyncSender<Work>,
) -> Result<(u64, u64), PublishError> {
    let send = |work: Work| {
        tx.send(work)
            .map_err(|_| io::Error::other("the chunk writer stopped"))
    };
    let mut done = 0u64;
    let mut files = 0u64;
    let mut bytes = 0u64;
    // Files no larger than the minimum chunk are one chunk each: read them
    // into a shared buffer (entry index, byte range) and hash them together.
    let mut small = (Vec::with_capacity(SMALL_BLOCK), Vec::new());
    let flush_small = |small: &mut (Vec<u8>, Vec<(usize, Range<usize>)>),
                       entries: &mut [Entry]|
     -> io::Result<()> {
        if small.1.is_empty() {
            return Ok(());
        }
        let (buf, list) = std::mem::take(small);
        let mut ranges = Vec::with_capacity(list.len());
        let mut owners = Vec::with_capacity(list.len());
        for (i, r) in list {
            if let EntryKind::File { chunks, .. } = &mut entries[i].kind {
                chunks.push(placeholder(r.len()));
            }
            ranges.push(r);
            owners.push(i);
        }
        small.0 = Vec::with_capacity(SMALL_BLOCK);
        send(Work::Small((Arc::new(buf), ranges), owners))
    };
    for i in 0..entries.len() {
        let EntryKind::File { size, .. } = entries[i].kind else {
            continue;
        };
        let path = src.join(&entries[i].path);
        let read_err = |source| PublishError::Read {
            path: path.clone(),
            source,
        };
        let mut f = open_scanned(&path, ids[i])?;
        let mut actual = 0u64;
        if size <= params.min as u64 {
            let start = small.0.len();
            let n = (&mut f)
                .take(params.min as u64 + 1)
                .read_to_end(&mut small.0)
                .map_err(read_err)?;
            if n <= params.min as usize {
                if n > 0 {
                    small.1.push((i, start..start + n));
                }
                actual = n as u64;
                done += actual;
                progress(done, total.max(done));
                if small.0.len() >= SMALL_BLOCK {
                    flush_small(&mut small, entries).map_err(read_err)?;
                }
            } else {
                // It grew since the scan: cut it like a large file, after
                // the small files before it (ids come back in send order).
                let head = small.0.split_off(start);
                flush_small(&mut small, entries).map_err(read_err)?;
                let EntryKind::File { chunks, .. } = &mut entries[i].kind else {
                    continue;
                };
                chunk::for_each_block(io::Cursor::new(head).chain(f), None, params, |(buf, cs)| {
                    chunks.extend(cs.iter().map(|r| placeholder(r.len())));
                    actual += buf.len() as u64;
                    done += buf.len() as u64;
                    progress(done, total.max(done));
                    send(Work::Window((buf, cs)))
                })
                .map_err(read_err)?;
                send(Work::FileEnd(i)).map_err(read_err)?;
            }
        } else {
            // Small files before this one go first: ids come back in send order.
            flush_small(&mut small, entries).map_err(read_err)?;
            let EntryKind::File { chunks, .. } = &mut entries[i].kind else {
                continue;
            };
            chunk::for_each_block(f, Some(size), params, |(buf, cs)| {
                chunks.extend(cs.iter().map(|r| placeholder(r.len())));
                actual += buf.len() as u64;
                done += buf.len() as u64;
                progress(done, total.max(done));
                send(Work::Window((buf, cs)))
            })
            .map_err(read_err)?;
            send(Work::FileEnd(i)).map_err(read_err)?;
        }
        // The file may have changed size since the scan: record what was read.
        if let EntryKind::File { size, .. } = &mut entries[i].kind {
            *size = actual;
        }
        files += 1;
        bytes += actual;
    }
    flush_small(&mut small, entries).map_err(|source| PublishError::Read {
        path: src.to_path_buf(),
        source,
    })?;
    Ok((files, bytes))
}

/// A chunk reference whose id the writer thread fills in after hashing.
fn placeholder(len: usize) -> ChunkRef {
    ChunkRef {
        id: Hash([0; 32]),
        len: len as u32,
    }
}

/// Which file a scanned entry was: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(md: &std::fs::Metadata) -> FileId {
        FileId {
            dev: md.dev(),
            ino: md.ino(),
        }
    }

    fn same(self, (dev, ino): (u64, u64)) -> bool {
        self.dev == dev && self.ino == ino
    }
}

/// Opens a scanned file for reading, and makes sure it is still the file
/// that was scanned. Without following a link (O_NOFOLLOW) and without
/// waiting for a writer (O_NONBLOCK: a FIFO swapped in would block the
/// publish for good), then checked on the open descriptor (fstat): a
/// regular file with the scanned device and inode. The size may differ: the
/// bytes read are what is hashed and recorded.
fn open_scanned(path: &Path, scanned: Option<FileId>) -> Result<File, PublishError> {
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
    if !md.file_type().is_file() || Some(FileId::of(&md)) != scanned {
        return Err(changed());
    }
    Ok(f)
}

/// Lists a tree as manifest entries (files with their scanned size and
/// modification time, no chunks and no SHA-256 yet), sorted.
pub fn scan(src: &Path) -> Result<Vec<Entry>, PublishError> {
    Ok(scan_with_ids(src)?.0)
}

/// [`scan`], with the identity of each regular file (`None` for the others),
/// in the same order.
fn scan_with_ids(src: &Path) -> Result<(Vec<Entry>, Vec<Option<FileId>>), PublishError> {
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(src).follow_links(false).min_depth(1) {
        let item = item.map_err(|e| PublishError::Read {
            path: e.path().unwrap_or(src).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk failed")),
        })?;
        let rel = item
            .path()
            .strip_prefix(src)
            .unwrap_or(item.path())
            .to_str()
            .ok_or_else(|| PublishError::NonUtf8(item.path().to_path_buf()))?
            .to_string();
        let read_err = |source| PublishError::Read {
            path: item.path().to_path_buf(),
            source,
        };
        let ft = item.file_type();
        let mut id = None;
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(read_err)?;
            EntryKind::Symlink {
                target: target
                    .to_str()
                    .ok_or_else(|| PublishError::NonUtf8(item.path().to_path_buf()))?
                    .to_string(),
            }
        } else if ft.is_file() {
            let md = item.metadata().map_err(|e| read_err(e.into()))?;
            id = Some(FileId::of(&md));
            EntryKind::File {
                size: md.len(),
                executable: md.permissions().mode() & 0o100 != 0,
                chunks: Vec::new(),
                // The SHA-256 is filled in as the file is read.
                meta: Some(FileMeta {
                    modified: md
                        .modified()
                        .map(Timestamp::from_system_time)
                        .unwrap_or_default(),
                    sha256: [0; 32],
                }),
            }
        } else {
            return Err(PublishError::SpecialFile(item.path().to_path_buf()));
        };
        out.push((Entry { path: rel, kind }, id));
    }
    out.sort_by(|a, b| a.0.path.as_bytes().cmp(b.0.path.as_bytes()));
    Ok(out.into_iter().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use sha2::Digest;
    use std::time::{Duration, UNIX_EPOCH};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    /// Every kind of file (empty, gathered small ones, one cut over several
    /// windows) gets its SHA-256 and modification time, and export restores
    /// the times.
    #[test]
    fn files_carry_sha256_and_mtime_through_export() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        std::fs::create_dir_all(src.join("d")).unwrap();
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("big", random(chunk::WINDOW + (3 << 20), 1)),
            ("d/small1", random(1000, 2)),
            ("d/small2", random(200 << 10, 3)),
            ("empty", Vec::new()),
            ("mid", random(300 << 10, 4)),
        ];
        for (i, (p, data)) in files.iter().enumerate() {
            let path = src.join(p);
            std::fs::write(&path, data).unwrap();
            let t = UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 1000, 123_456_789);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let store = Store::open(&dir.path().join("store")).unwrap();
        let key = MasterKey::generate();
        let opts = PublishOptions {
            name: Some("t".into()),
            ..Default::default()
        };
        let report = publish(&store, &key, &src, &opts, &mut |_, _| {}).unwrap();
        let m = store.manifest(&report.announcement.body.manifest).unwrap();
        assert_eq!(m.format, crate::manifest::FORMAT);
        for (i, (p, data)) in files.iter().enumerate() {
            let EntryKind::File {
                meta: Some(meta), ..
            } = &m.get(p).unwrap().kind
            else {
                panic!("{p} has no metadata");
            };
            let want: [u8; 32] = sha2::Sha256::digest(data).into();
            assert_eq!(meta.sha256, want, "{p}");
            assert_eq!(
                meta.modified,
                Timestamp {
                    secs: 1_600_000_000 + i as i64 * 1000,
                    nanos: 123_456_789
                },
                "{p}"
            );
        }
        let out = dir.path().join("out");
        store.export(&key.collection(), None, &out, false).unwrap();
        for (i, (p, data)) in files.iter().enumerate() {
            let md = std::fs::metadata(out.join(p)).unwrap();
            assert_eq!(std::fs::read(out.join(p)).unwrap(), *data);
            assert_eq!(
                md.modified().unwrap(),
                UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 1000, 123_456_789),
                "{p}"
            );
        }
    }
}
