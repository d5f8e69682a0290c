//! Manifests: one version of a collection, as a list of paths.
//!
//! A manifest lists every directory, file and symlink of a version with the
//! ordered chunk list of each file, and (since format 2) each file's
//! modification time and SHA-256, which HTTP clients and `sha256sum` need.
//! It is encoded deterministically with postcard (entries sorted by path
//! bytes, no maps), so its blake3 hash is its identity. Decoding re-encodes
//! and compares, so one manifest has exactly one encoding, and
//! [`Manifest::validate`] rejects anything that could write outside the
//! export directory or make a node allocate absurd amounts. [`stream`]
//! encodes, decodes and validates a manifest one entry at a time, for
//! versions of millions of files. Format 1
//! manifests (no file metadata) are still read, and keep their encoding and
//! id; new manifests are written in format 2. The byte layouts live in
//! [`wire`].

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkerParams;
use crate::hash::Hash;

pub mod stream;
mod wire;

/// Encoding version of the manifests this node writes.
pub const FORMAT: u32 = 2;
/// The first format: files without modification time or SHA-256. Still read.
pub const FORMAT_V1: u32 = 1;
/// Most entries a manifest may hold.
pub const MAX_ENTRIES: usize = 20_000_000;
/// Longest path, in bytes (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest path component, in bytes (Linux NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// Largest single file: 1 PiB.
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// Largest version in total: 4 PiB.
pub const MAX_TOTAL_SIZE: u64 = 1 << 52;

/// Most pieces an encoded manifest is cut into for transfer: what one
/// `ManifestChunks` answer may list (the chunk protocol's limit).
pub const MAX_PIECES: u64 = 65_536;
/// Smallest cut of a manifest's transfer chunker: manifests up to
/// `MAX_PIECES` times this (256 MiB, some 2.5 million files) are cut this
/// fine.
const PIECE_MIN: u32 = 4096;

/// How an encoded manifest of `size` bytes is cut into chunks for transfer:
/// small content-defined pieces (4 / 16 / 64 KiB), so that a few changed
/// entries change a few pieces and a mirror fetches little of a new
/// version's manifest; coarser in powers of two past 256 MiB, so every
/// piece but the last is at least `size / MAX_PIECES` and the list always
/// fits one `ManifestChunks` answer. Receivers never re-cut: only the
/// publisher's choice, not the protocol, depends on this.
pub fn transfer_chunker(size: u64) -> ChunkerParams {
    let floor = size.div_ceil(MAX_PIECES).next_power_of_two();
    let min = u32::try_from(floor)
        .unwrap_or(u32::MAX)
        .clamp(PIECE_MIN, crate::chunk::MAX_CHUNK_LEN / 16);
    ChunkerParams {
        algorithm: crate::chunk::ALGORITHM.to_string(),
        min,
        avg: min * 4,
        max: min * 16,
    }
}

/// A reference to one chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// blake3 of the chunk's bytes.
    pub id: Hash,
    /// Length in bytes.
    pub len: u32,
}

/// A point in time as seconds and nanoseconds since the Unix epoch (negative
/// seconds are before 1970), the precision file systems record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01 00:00:00 UTC.
    pub secs: i64,
    /// Nanoseconds within the second, below 1,000,000,000.
    pub nanos: u32,
}

impl Timestamp {
    /// The time as a `SystemTime`, if it can be represented.
    pub fn to_system_time(self) -> Option<std::time::SystemTime> {
        use std::time::{Duration, UNIX_EPOCH};
        if self.nanos >= 1_000_000_000 {
            return None;
        }
        let t = if self.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(self.secs as u64))?
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(self.secs.unsigned_abs()))?
        };
        t.checked_add(Duration::from_nanos(self.nanos as u64))
    }

    /// A `SystemTime` as a timestamp (times beyond ±2^63 s saturate).
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        use std::time::UNIX_EPOCH;
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                // Before the epoch: floor to whole seconds, nanos counted forward.
                let d = e.duration();
                let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs = secs.saturating_sub(1);
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }
}

/// What HTTP and checksum tools need about a file besides its bytes
/// (format 2 and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The source file's modification time when it was published; export
    /// restores it and the HTTP gateway sends it as `Last-Modified`.
    pub modified: Timestamp,
    /// SHA-256 of the file's bytes, for `SHA256SUMS` and strong ETags.
    pub sha256: [u8; 32],
}

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory (listed so empty directories survive).
    Dir,
    /// A regular file, the concatenation of its chunks.
    File {
        /// Length in bytes; equals the sum of the chunk lengths.
        size: u64,
        /// Whether the owner execute bit is set (exported as 0755, else 0644).
        executable: bool,
        /// The chunks, in order.
        chunks: Vec<ChunkRef>,
        /// Modification time and SHA-256: present in format 2, absent in format 1.
        meta: Option<FileMeta>,
    },
    /// A symbolic link. Its target is relative and inside the tree unless
    /// the publisher kept links as they were (`publish --symlinks keep`).
    Symlink {
        /// The link target, as stored in the link.
        target: String,
    },
}

/// One path of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path with `/` separators.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
}

/// One version of a collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// [`FORMAT`], or [`FORMAT_V1`] for a manifest read in the old format.
    pub format: u32,
    /// How the files were cut.
    pub chunker: ChunkerParams,
    /// Every path, sorted by bytes.
    pub entries: Vec<Entry>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The bytes do not decode, or are not the canonical encoding.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// A format version this node does not understand.
    #[error("unsupported manifest format {0}")]
    UnsupportedFormat(u32),
    /// Chunking this node cannot reproduce.
    #[error("unsupported chunker {0:?}")]
    UnsupportedChunker(ChunkerParams),
    /// A path that is absolute, empty, has `.`/`..`/empty components or NUL, or is too long.
    #[error("invalid path {path:?}: {why}")]
    InvalidPath {
        /// The offending path.
        path: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// The same path twice, or paths out of order.
    #[error("duplicate or unsorted path {0:?}")]
    DuplicatePath(String),
    /// A path below a file or a symlink.
    #[error("path {0:?} lies below a file or symlink")]
    ParentNotDir(String),
    /// A symlink whose target is absolute or leaves the tree: what
    /// `publish --symlinks refuse` reports (validation accepts such links,
    /// which only the publisher can ask for).
    #[error("symlink {path:?} -> {target:?} escapes the tree")]
    SymlinkEscapes {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A symlink target that is empty, too long or holds NUL.
    #[error("bad symlink {path:?} -> {target:?}: {why}")]
    BadSymlink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// Sizes that do not add up or exceed the limits.
    #[error("bad size for {path:?}: {why}")]
    BadSize {
        /// The offending path.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// More entries than [`MAX_ENTRIES`].
    #[error("too many entries: {0}")]
    TooManyEntries(usize),
    /// File metadata missing where the format requires it, present where it
    /// has no place, or out of range.
    #[error("bad metadata for {path:?}: {why}")]
    BadMeta {
        /// The offending path.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
}

impl Manifest {
    /// A manifest of `entries` (sorted here) in the current [`FORMAT`]:
    /// every file must carry its [`FileMeta`].
    pub fn new(mut entries: Vec<Entry>, chunker: ChunkerParams) -> Self {
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Manifest {
            format: FORMAT,
            chunker,
            entries,
        }
    }

    /// The canonical encoding, in the manifest's own format.
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes (either format) and validates; only the canonical encoding
    /// is accepted.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m = wire::decode(bytes)?;
        m.validate()?;
        if m.encode() != bytes {
            return Err(ManifestError::Malformed(
                "not the canonical encoding".into(),
            ));
        }
        Ok(m)
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, size, _, _)| size).sum()
    }

    /// Iterates over regular files: (path, size, executable, chunks).
    pub fn files(&self) -> impl Iterator<Item = (&str, u64, bool, &[ChunkRef])> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File {
                size,
                executable,
                chunks,
                ..
            } => Some((e.path.as_str(), *size, *executable, chunks.as_slice())),
            _ => None,
        })
    }

    /// Looks an entry up by path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Checks every rule a manifest from an untrusted peer must meet (the
    /// same checks, entry by entry, as [`stream::Validator`]).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(self.entries.len()));
        }
        let mut v = stream::Validator::new(self.format, &self.chunker)?;
        for e in &self.entries {
            v.push(e)?;
        }
        Ok(())
    }
}

fn check_path(path: &str) -> Result<(), ManifestError> {
    let bad = |why| {
        Err(ManifestError::InvalidPath {
            path: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > MAX_PATH {
        return bad("too long");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    for c in path.split('/') {
        match c {
            "" => return bad("empty component"),
            "." | ".." => return bad("dot component"),
            c if c.len() > MAX_COMPONENT => return bad("component too long"),
            _ => {}
        }
    }
    Ok(())
}

fn check_meta(path: &str, format: u32, meta: Option<&FileMeta>) -> Result<(), ManifestError> {
    let bad = |why| ManifestError::BadMeta {
        path: path.to_string(),
        why,
    };
    match (format, meta) {
        (FORMAT_V1, None) => Ok(()),
        (FORMAT_V1, Some(_)) => Err(bad("format 1 files carry no metadata")),
        (_, None) => Err(bad("file metadata missing")),
        (_, Some(m)) if m.modified.nanos >= 1_000_000_000 => {
            Err(bad("modification time nanoseconds out of range"))
        }
        (_, Some(_)) => Ok(()),
    }
}

fn check_file(
    path: &str,
    size: u64,
    chunks: &[ChunkRef],
    params: &ChunkerParams,
) -> Result<u64, ManifestError> {
    let bad = |why| ManifestError::BadSize {
        path: path.to_string(),
        why,
    };
    if size > MAX_FILE_SIZE {
        return Err(bad("file exceeds the size limit"));
    }
    let mut sum: u64 = 0;
    for c in chunks {
        if c.len == 0 || c.len > params.max {
            return Err(bad("chunk length outside the chunker's bounds"));
        }
        sum += c.len as u64;
    }
    if sum != size {
        return Err(bad("chunk lengths do not add up to the file size"));
    }
    Ok(size)
}

/// A symlink's target is stored as the link holds it and never resolved on
/// a file system by a mirror (export writes it as is; the HTTP gateway
/// follows it only lexically inside the manifest), so only its form is
/// checked here. Whether it stays inside the tree is the publisher's
/// choice (`publish --symlinks`).
fn check_symlink(path: &str, target: &str) -> Result<(), ManifestError> {
    let bad = |why| ManifestError::BadSymlink {
        path: path.to_string(),
        target: target.to_string(),
        why,
    };
    if target.is_empty() {
        return Err(bad("empty target"));
    }
    if target.len() > MAX_PATH {
        return Err(bad("target too long"));
    }
    if target.contains('\0') {
        return Err(bad("target contains NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
