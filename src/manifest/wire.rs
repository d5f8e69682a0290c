//! The byte layouts of manifest formats 1 and 2 (docs/protocol.md, 4.4).
//!
//! Both are postcard structs that start with the format number, so the
//! decoder reads that varint first and picks the layout. Encoding borrows
//! the in-memory manifest instead of copying it (a manifest may hold
//! millions of entries). The two layouts differ only in the `File` variant:
//! format 2 adds the modification time and the SHA-256 before the chunks.

use serde::{Deserialize, Serialize, Serializer};

use super::{ChunkRef, Entry, EntryKind, FileMeta, Manifest, ManifestError, Timestamp, FORMAT_V1};
use crate::chunk::ChunkerParams;

/// The canonical encoding of `m` in `m.format` (format 1 drops file
/// metadata, format 2 writes zeros where it is missing: validation refuses
/// both cases, so a valid manifest round-trips).
pub(super) fn encode(m: &Manifest) -> Vec<u8> {
    let out = ManifestOut {
        format: m.format,
        chunker: &m.chunker,
        entries: EntriesOut {
            entries: &m.entries,
            v1: m.format == FORMAT_V1,
        },
    };
    // Serialising plain structs and slices into a Vec cannot fail.
    postcard::to_stdvec(&out).unwrap_or_default()
}

/// The bytes before the entries: format, chunker, and the entry count (a
/// postcard sequence length), so entries can be encoded one at a time and
/// the whole still equals [`encode`].
pub(super) fn encode_header(format: u32, chunker: &ChunkerParams, count: usize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Header<'a> {
        format: u32,
        chunker: &'a ChunkerParams,
        count: usize,
    }
    let h = Header {
        format,
        chunker,
        count,
    };
    postcard::to_stdvec(&h).unwrap_or_default()
}

/// Appends one entry's canonical encoding in `format` to `out`.
pub(super) fn encode_entry(format: u32, e: &Entry, out: &mut Vec<u8>) {
    let taken = std::mem::take(out);
    *out = if format == FORMAT_V1 {
        let v = EntryOut {
            path: &e.path,
            kind: KindV1Out::from(&e.kind),
        };
        postcard::to_extend(&v, taken)
    } else {
        let v = EntryOut {
            path: &e.path,
            kind: KindV2Out::from(&e.kind),
        };
        postcard::to_extend(&v, taken)
    }
    // Serialising into a Vec cannot fail.
    .unwrap_or_default();
}

/// Decodes one entry of `format` from the front of `bytes`: the entry and
/// the bytes after it.
pub(super) fn take_entry(format: u32, bytes: &[u8]) -> Result<(Entry, &[u8]), postcard::Error> {
    fn take<'a, K: Deserialize<'a> + Into<EntryKind>>(
        bytes: &'a [u8],
    ) -> Result<(Entry, &'a [u8]), postcard::Error> {
        let (e, rest) = postcard::take_from_bytes::<EntryIn<K>>(bytes)?;
        Ok((
            Entry {
                path: e.path,
                kind: e.kind.into(),
            },
            rest,
        ))
    }
    if format == FORMAT_V1 {
        take::<KindV1>(bytes)
    } else {
        take::<KindV2>(bytes)
    }
}

/// What [`encode_header`] writes: format, chunker, entry count.
pub(super) type Header = (u32, ChunkerParams, usize);

/// Decodes the header [`encode_header`] writes and the bytes after it.
pub(super) fn take_header(bytes: &[u8]) -> Result<(Header, &[u8]), postcard::Error> {
    postcard::take_from_bytes::<(u32, ChunkerParams, usize)>(bytes)
}

/// Decodes either layout; the caller validates and checks canonical form.
pub(super) fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let malformed = |e: postcard::Error| ManifestError::Malformed(e.to_string());
    let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(malformed)?;
    match format {
        FORMAT_V1 => {
            let m: ManifestIn<KindV1> = postcard::from_bytes(bytes).map_err(malformed)?;
            Ok(m.into_manifest())
        }
        super::FORMAT => {
            let m: ManifestIn<KindV2> = postcard::from_bytes(bytes).map_err(malformed)?;
            Ok(m.into_manifest())
        }
        other => Err(ManifestError::UnsupportedFormat(other)),
    }
}

#[derive(Serialize)]
struct ManifestOut<'a> {
    format: u32,
    chunker: &'a ChunkerParams,
    entries: EntriesOut<'a>,
}

struct EntriesOut<'a> {
    entries: &'a [Entry],
    v1: bool,
}

impl Serialize for EntriesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.v1 {
            s.collect_seq(self.entries.iter().map(|e| EntryOut {
                path: &e.path,
                kind: KindV1Out::from(&e.kind),
            }))
        } else {
            s.collect_seq(self.entries.iter().map(|e| EntryOut {
                path: &e.path,
                kind: KindV2Out::from(&e.kind),
            }))
        }
    }
}

#[derive(Serialize)]
struct EntryOut<'a, K> {
    path: &'a str,
    kind: K,
}

#[derive(Serialize)]
enum KindV1Out<'a> {
    Dir,
    File {
        size: u64,
        executable: bool,
        chunks: &'a [ChunkRef],
    },
    Symlink {
        target: &'a str,
    },
}

impl<'a> From<&'a EntryKind> for KindV1Out<'a> {
    fn from(k: &'a EntryKind) -> Self {
        match k {
            EntryKind::Dir => KindV1Out::Dir,
            EntryKind::File {
                size,
                executable,
                chunks,
                ..
            } => KindV1Out::File {
                size: *size,
                executable: *executable,
                chunks,
            },
            EntryKind::Symlink { target } => KindV1Out::Symlink { target },
        }
    }
}

#[derive(Serialize)]
enum KindV2Out<'a> {
    Dir,
    File {
        size: u64,
        executable: bool,
        modified: Timestamp,
        sha256: [u8; 32],
        chunks: &'a [ChunkRef],
    },
    Symlink {
        target: &'a str,
    },
}

impl<'a> From<&'a EntryKind> for KindV2Out<'a> {
    fn from(k: &'a EntryKind) -> Self {
        match k {
            EntryKind::Dir => KindV2Out::Dir,
            EntryKind::File {
                size,
                executable,
                chunks,
                meta,
            } => {
                let meta = meta.unwrap_or(FileMeta {
                    modified: Timestamp::default(),
                    sha256: [0; 32],
                });
                KindV2Out::File {
                    size: *size,
                    executable: *executable,
                    modified: meta.modified,
                    sha256: meta.sha256,
                    chunks,
                }
            }
            EntryKind::Symlink { target } => KindV2Out::Symlink { target },
        }
    }
}

#[derive(Deserialize)]
struct ManifestIn<K> {
    format: u32,
    chunker: ChunkerParams,
    entries: Vec<EntryIn<K>>,
}

#[derive(Deserialize)]
struct EntryIn<K> {
    path: String,
    kind: K,
}

impl<K: Into<EntryKind>> ManifestIn<K> {
    fn into_manifest(self) -> Manifest {
        Manifest {
            format: self.format,
            chunker: self.chunker,
            entries: self
                .entries
                .into_iter()
                .map(|e| Entry {
                    path: e.path,
                    kind: e.kind.into(),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
enum KindV1 {
    Dir,
    File {
        size: u64,
        executable: bool,
        chunks: Vec<ChunkRef>,
    },
    Symlink {
        target: String,
    },
}

impl From<KindV1> for EntryKind {
    fn from(k: KindV1) -> Self {
        match k {
            KindV1::Dir => EntryKind::Dir,
            KindV1::File {
                size,
                executable,
                chunks,
            } => EntryKind::File {
                size,
                executable,
                chunks,
                meta: None,
            },
            KindV1::Symlink { target } => EntryKind::Symlink { target },
        }
    }
}

#[derive(Deserialize)]
enum KindV2 {
    Dir,
    File {
        size: u64,
        executable: bool,
        modified: Timestamp,
        sha256: [u8; 32],
        chunks: Vec<ChunkRef>,
    },
    Symlink {
        target: String,
    },
}

impl From<KindV2> for EntryKind {
    fn from(k: KindV2) -> Self {
        match k {
            KindV2::Dir => EntryKind::Dir,
            KindV2::File {
                size,
                executable,
                modified,
                sha256,
                chunks,
            } => EntryKind::File {
                size,
                executable,
                chunks,
                meta: Some(FileMeta { modified, sha256 }),
            },
            KindV2::Symlink { target } => EntryKind::Symlink { target },
        }
    }
}
