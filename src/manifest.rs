//! Manifests: one version of a collection, as a list of paths.
//!
//! A manifest lists every directory, file and symlink of a version with the
//! ordered chunk list of each file. It is encoded deterministically with
//! postcard (entries sorted by path bytes, no maps), so its blake3 hash is its
//! identity. Decoding re-encodes and compares, so one manifest has exactly one
//! encoding, and [`Manifest::validate`] rejects anything that could write
//! outside the export directory or make a node allocate absurd amounts.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkerParams;
use crate::hash::Hash;

/// Encoding version of [`Manifest`].
pub const FORMAT: u32 = 1;
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

/// A reference to one chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// blake3 of the chunk's bytes.
    pub id: Hash,
    /// Length in bytes.
    pub len: u32,
}

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    },
    /// A symbolic link with a relative target that stays inside the tree.
    Symlink {
        /// The link target, as stored in the link.
        target: String,
    },
}

/// One path of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
}

/// One version of a collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
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
    /// A symlink whose target is absolute or leaves the tree.
    #[error("symlink {path:?} -> {target:?} escapes the tree")]
    SymlinkEscapes {
        /// The link.
        path: String,
        /// Its target.
        target: String,
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
}

impl Manifest {
    /// A manifest of `entries` (sorted here) with the default chunker.
    pub fn new(mut entries: Vec<Entry>, chunker: ChunkerParams) -> Self {
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Manifest {
            format: FORMAT,
            chunker,
            entries,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs and vectors into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and validates; only the canonical encoding is accepted.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            postcard::from_bytes(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
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

    /// Checks every rule a manifest from an untrusted peer must meet.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::UnsupportedFormat(self.format));
        }
        if !self.chunker.is_supported() {
            return Err(ManifestError::UnsupportedChunker(self.chunker.clone()));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(self.entries.len()));
        }
        let mut kinds: HashMap<&str, &EntryKind> = HashMap::with_capacity(self.entries.len());
        let mut prev: Option<&str> = None;
        let mut total: u64 = 0;
        for e in &self.entries {
            check_path(&e.path)?;
            if prev.is_some_and(|p| p.as_bytes() >= e.path.as_bytes()) {
                return Err(ManifestError::DuplicatePath(e.path.clone()));
            }
            prev = Some(&e.path);
            kinds.insert(&e.path, &e.kind);
            if let EntryKind::File { size, chunks, .. } = &e.kind {
                total = total.saturating_add(check_file(&e.path, *size, chunks, &self.chunker)?);
                if total > MAX_TOTAL_SIZE {
                    return Err(ManifestError::BadSize {
                        path: e.path.clone(),
                        why: "version exceeds the total size limit",
                    });
                }
            }
        }
        for e in &self.entries {
            // Sorted order puts parents first, but parents need not be listed.
            let mut at = 0;
            while let Some(i) = e.path[at..].find('/') {
                let parent = &e.path[..at + i];
                if matches!(kinds.get(parent), Some(k) if !matches!(k, EntryKind::Dir)) {
                    return Err(ManifestError::ParentNotDir(e.path.clone()));
                }
                at += i + 1;
            }
            if let EntryKind::Symlink { target } = &e.kind {
                check_symlink(&e.path, target, &kinds)?;
            }
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

/// A symlink may point anywhere inside the tree, resolved lexically from its
/// directory. Because the OS resolves `..` after following a link, a `..`
/// that comes after a component which is itself a symlink could leave the
/// tree; such targets are refused.
fn check_symlink(
    path: &str,
    target: &str,
    kinds: &HashMap<&str, &EntryKind>,
) -> Result<(), ManifestError> {
    let escapes = || ManifestError::SymlinkEscapes {
        path: path.to_string(),
        target: target.to_string(),
    };
    if target.is_empty() || target.len() > MAX_PATH || target.contains('\0') {
        return Err(escapes());
    }
    if target.starts_with('/') {
        return Err(escapes());
    }
    let mut stack: Vec<&str> = path.split('/').collect();
    stack.pop();
    let mut through_link = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if through_link || stack.pop().is_none() {
                    return Err(escapes());
                }
            }
            c => {
                stack.push(c);
                let joined = stack.join("/");
                if matches!(kinds.get(joined.as_str()), Some(EntryKind::Symlink { .. })) {
                    through_link = true;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> Entry {
        let chunks = if data.is_empty() {
            vec![]
        } else {
            vec![ChunkRef {
                id: Hash::of(data),
                len: data.len() as u32,
            }]
        };
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: data.len() as u64,
                executable: false,
                chunks,
            },
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
        }
    }

    fn check(entries: Vec<Entry>) -> Result<(), ManifestError> {
        Manifest::new(entries, ChunkerParams::default()).validate()
    }

    fn invalid_path(p: &str) -> bool {
        matches!(
            check(vec![file(p, b"x")]),
            Err(ManifestError::InvalidPath { .. })
        )
    }

    #[test]
    fn round_trip_is_canonical() {
        let m = Manifest::new(
            vec![
                file("b/x.bin", b"hello"),
                dir("b"),
                link("a", "b/x.bin"),
                file("empty", b""),
            ],
            ChunkerParams::default(),
        );
        m.validate().unwrap();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.total_bytes(), 5);
        assert!(m.get("b/x.bin").is_some());
        assert!(m.get("nope").is_none());
    }

    #[test]
    fn rejects_absolute_paths() {
        assert!(invalid_path("/etc/passwd"));
    }

    #[test]
    fn rejects_dot_dot() {
        assert!(invalid_path("../x"));
        assert!(invalid_path("a/../../x"));
        assert!(invalid_path("a/./x"));
    }

    #[test]
    fn rejects_empty_components_and_empty_paths() {
        assert!(invalid_path("a//b"));
        assert!(invalid_path("a/"));
        assert!(invalid_path(""));
    }

    #[test]
    fn rejects_nul_and_overlong() {
        assert!(invalid_path("a\0b"));
        assert!(invalid_path(&"x".repeat(300)));
        assert!(invalid_path(&"abc/".repeat(1100)));
    }

    #[test]
    fn rejects_duplicate_paths() {
        let mut m = Manifest::new(
            vec![file("a", b"1"), file("b", b"2")],
            ChunkerParams::default(),
        );
        m.entries[1].path = "a".into();
        assert_eq!(m.validate(), Err(ManifestError::DuplicatePath("a".into())));
    }

    #[test]
    fn rejects_unsorted_paths() {
        let mut m = Manifest::new(
            vec![file("a", b"1"), file("b", b"2")],
            ChunkerParams::default(),
        );
        m.entries.swap(0, 1);
        assert!(matches!(m.validate(), Err(ManifestError::DuplicatePath(_))));
    }

    #[test]
    fn rejects_paths_below_files_and_links() {
        assert!(matches!(
            check(vec![file("a", b"1"), file("a/b", b"2")]),
            Err(ManifestError::ParentNotDir(_))
        ));
        assert!(matches!(
            check(vec![link("a", "."), file("a/b", b"2")]),
            Err(ManifestError::ParentNotDir(_))
        ));
    }

    #[test]
    fn rejects_escaping_symlinks() {
        let esc = |e| matches!(check(e), Err(ManifestError::SymlinkEscapes { .. }));
        assert!(esc(vec![link("a", "/etc/passwd")]));
        assert!(esc(vec![link("a", "../outside")]));
        assert!(esc(vec![dir("d"), link("d/a", "../../x")]));
        assert!(esc(vec![link("a", "")]));
        // `..` after a component that is itself a link: the OS would follow it first.
        assert!(esc(vec![
            dir("d"),
            dir("d/e"),
            link("d/e/up", "../.."),
            link("z", "d/e/up/../..")
        ]));
        // Inside the tree is fine, including `..` that stays within.
        assert!(check(vec![dir("d"), link("d/a", "../b"), file("b", b"1")]).is_ok());
        assert!(check(vec![link("a", "./b"), file("b", b"1")]).is_ok());
    }

    #[test]
    fn rejects_sizes_that_do_not_add_up() {
        let mut e = file("a", b"abc");
        if let EntryKind::File { size, .. } = &mut e.kind {
            *size = 4;
        }
        assert!(matches!(check(vec![e]), Err(ManifestError::BadSize { .. })));
    }

    #[test]
    fn rejects_absurd_sizes() {
        let id = Hash::of(b"x");
        let huge = Entry {
            path: "big".into(),
            kind: EntryKind::File {
                size: MAX_FILE_SIZE + 1,
                executable: false,
                chunks: vec![ChunkRef { id, len: 1 }],
            },
        };
        assert!(matches!(
            check(vec![huge]),
            Err(ManifestError::BadSize { .. })
        ));
        let oversized_chunk = Entry {
            path: "c".into(),
            kind: EntryKind::File {
                size: 64 << 20,
                executable: false,
                chunks: vec![ChunkRef { id, len: 64 << 20 }],
            },
        };
        assert!(matches!(
            check(vec![oversized_chunk]),
            Err(ManifestError::BadSize { .. })
        ));
    }

    #[test]
    fn rejects_unknown_format_and_chunker() {
        let mut m = Manifest::new(vec![], ChunkerParams::default());
        m.format = 9;
        assert_eq!(m.validate(), Err(ManifestError::UnsupportedFormat(9)));
        let mut m = Manifest::new(vec![], ChunkerParams::default());
        m.chunker.algorithm = "other".into();
        assert!(matches!(
            m.validate(),
            Err(ManifestError::UnsupportedChunker(_))
        ));
    }

    #[test]
    fn rejects_garbage_and_non_canonical_bytes() {
        assert!(matches!(
            Manifest::decode(b"\xff\xff\xff"),
            Err(ManifestError::Malformed(_))
        ));
        let m = Manifest::new(vec![file("a", b"1")], ChunkerParams::default());
        let mut bytes = m.encode();
        bytes.push(0);
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Malformed(_))
        ));
    }
}
