//! Batches: chunk bytes appended to segment files, made durable, then
//! indexed, in that order (see the crash-safety notes in [`super`]); and
//! manifests recorded from their chunks, written here or fetched.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::RwLockReadGuard;

use super::{io_ctx, Loc, ManifestRecord, Result, Store, StoreError};
use crate::chunk;
use crate::hash::Hash;
use crate::manifest::stream::{EntryReader, StreamError};
use crate::manifest::ChunkRef;

/// A group of chunk writes made durable and indexed together.
pub struct Batch<'a> {
    pub(super) store: &'a Store,
    pub(super) _gate: RwLockReadGuard<'a, ()>,
    pub(super) pending: HashMap<Hash, Loc>,
    pub(super) new_bytes: u64,
    /// The segments' epoch when the first pending chunk was written: a
    /// failed sync since may have dropped it.
    pub(super) epoch: Option<u64>,
}

impl Batch<'_> {
    /// Writes a chunk unless the store (or this batch) already has it.
    /// `id` must be the blake3 of `data`: callers hash or verify first.
    /// Returns whether the bytes were new.
    pub fn add(&mut self, id: &Hash, data: &[u8]) -> Result<bool> {
        debug_assert_eq!(Hash::of(data), *id);
        if self.pending.contains_key(id) || self.store.has_chunk(id)? {
            return Ok(false);
        }
        self.store
            .check_room(data.len() as u64 + super::segments::RECORD_HEADER)?;
        if self.pending.is_empty() {
            self.epoch = Some(self.store.segs.epoch());
        }
        let loc = self
            .store
            .segs
            .append(id, data)
            .map_err(io_ctx("writing chunk data"))?;
        self.pending.insert(*id, loc);
        self.new_bytes += data.len() as u64;
        Ok(true)
    }

    /// Bytes written by this batch that were not in the store before.
    pub fn new_bytes(&self) -> u64 {
        self.new_bytes
    }

    /// Chunks waiting for [`Batch::commit`].
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Makes the written chunks durable, then indexes them.
    pub fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let synced = self
            .store
            .segs
            .sync()
            .map_err(io_ctx("syncing chunk data"))?;
        // Recorded whatever happens next: `sync` hands each closed
        // segment's durable length out once, and another batch's chunks may
        // lie in it.
        for (seg, len) in synced {
            self.store
                .segment_lens
                .insert(seg.to_be_bytes(), &len.to_be_bytes())?;
        }
        if self
            .epoch
            .take()
            .is_some_and(|e| e != self.store.segs.epoch())
        {
            // A failed sync dropped what this batch wrote: index none of it.
            self.pending.clear();
            self.store.db.flush()?;
            return Err(io_ctx("syncing chunk data")(io::Error::other(
                "an earlier sync failed and dropped this batch's chunks",
            )));
        }
        self.store.chunks.insert(self.pending.drain())?;
        self.store.db.flush()?;
        Ok(())
    }

    /// Stores an encoded manifest as chunks, commits, and records it.
    pub fn add_manifest_bytes(&mut self, bytes: &[u8]) -> Result<(Hash, u64)> {
        let id = Hash::of(bytes);
        let mut refs = Vec::new();
        let chunker = crate::manifest::transfer_chunker(bytes.len() as u64);
        for c in chunk::chunks(bytes, Some(bytes.len() as u64), &chunker) {
            let c = c.map_err(io_ctx("cutting manifest"))?;
            refs.push(ChunkRef {
                id: c.id,
                len: c.data.len() as u32,
            });
            self.add(&c.id, &c.data)?;
        }
        self.commit()?;
        let rec = ManifestRecord {
            size: bytes.len() as u64,
            chunks: refs,
        };
        self.store
            .manifests
            .insert(id.as_bytes(), postcard::to_stdvec(&rec).unwrap_or_default())?;
        self.store.db.flush()?;
        Ok((id, bytes.len() as u64))
    }
}

impl Store {
    /// Records a manifest whose chunks were fetched: checks the list,
    /// hashes the chunks in order and decodes and validates the manifest
    /// entry by entry as it goes, then indexes it. Memory stays at a chunk
    /// and an entry whatever the manifest's size: nothing is reassembled.
    ///
    /// `chunks` comes from a peer: each chunk must be stored with the
    /// length listed (checked for all of them before any is read) and the
    /// lengths must add up to `size` (the announced, signed size), so a
    /// list naming a large chunk many times with small lengths cannot make
    /// the check read more than `size` bytes. A false list is a
    /// [`StoreError::CorruptChunk`]; a list whose bytes hash to `id` but do
    /// not make a valid manifest is a [`StoreError::Manifest`] (the signed
    /// manifest itself is bad).
    pub fn assemble_manifest(&self, id: &Hash, size: u64, chunks: &[ChunkRef]) -> Result<()> {
        let false_list = |why: String| StoreError::CorruptChunk {
            id: *id,
            why: format!("manifest chunk list: {why}"),
        };
        let listed: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        if listed != size {
            return Err(false_list(format!(
                "lengths add up to {listed}, not {size}"
            )));
        }
        for c in chunks {
            let loc = self
                .chunk_loc(&c.id)?
                .ok_or(StoreError::MissingChunk(c.id))?;
            if loc.len != c.len {
                return Err(false_list(format!(
                    "chunk {} listed with length {}, stored with {}",
                    c.id, c.len, loc.len
                )));
            }
        }
        let mut bytes = ListedBytes {
            store: self,
            chunks: chunks.iter(),
            cur: io::Cursor::new(Vec::new()),
            hasher: blake3::Hasher::new(),
            error: None,
        };
        let decoded = EntryReader::new(&mut bytes).and_then(|mut r| {
            while r.next_entry()?.is_some() {}
            Ok(())
        });
        if let Some(e) = bytes.error.take() {
            return Err(e);
        }
        if decoded.is_err() {
            // Whether the bytes are the announced manifest decides whom
            // to blame: hash what the decoder left.
            io::copy(&mut bytes, &mut io::sink()).map_err(io_ctx("reading a manifest"))?;
            if let Some(e) = bytes.error.take() {
                return Err(e);
            }
        }
        if Hash(*bytes.hasher.finalize().as_bytes()) != *id {
            return Err(StoreError::CorruptChunk {
                id: *id,
                why: "manifest chunks do not reassemble to the announced manifest".into(),
            });
        }
        match decoded {
            Ok(()) => {}
            Err(StreamError::Invalid(e)) => return Err(e.into()),
            Err(StreamError::Io(e)) => return Err(io_ctx("reading a manifest")(e)),
        }
        let rec = ManifestRecord {
            size,
            chunks: chunks.to_vec(),
        };
        self.manifests
            .insert(id.as_bytes(), postcard::to_stdvec(&rec).unwrap_or_default())?;
        self.db.flush()?;
        Ok(())
    }
}

/// The bytes of a listed manifest, read from the store a chunk at a time
/// and hashed as they go; a store error is kept for the caller (a reader
/// can only return io errors).
struct ListedBytes<'a> {
    store: &'a Store,
    chunks: std::slice::Iter<'a, ChunkRef>,
    cur: io::Cursor<Vec<u8>>,
    hasher: blake3::Hasher,
    error: Option<StoreError>,
}

impl Read for ListedBytes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.cur.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(c) = self.chunks.next() else {
                return Ok(0);
            };
            let data = self.store.read_chunk(&c.id).map_err(|e| {
                let msg = e.to_string();
                self.error = Some(e);
                io::Error::other(msg)
            })?;
            if data.len() != c.len as usize {
                // The index said otherwise a moment ago: the store is at fault.
                let e = StoreError::CorruptIndex(format!("length of chunk {}", c.id));
                let msg = e.to_string();
                self.error = Some(e);
                return Err(io::Error::other(msg));
            }
            self.hasher.update(&data);
            self.cur = io::Cursor::new(data);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            if let Err(e) = self.commit() {
                tracing::warn!(error = %e, "committing chunk batch on drop failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkerParams;
    use crate::manifest::{Entry, EntryKind, FileMeta, Manifest, Timestamp};

    fn manifest(n: usize) -> Manifest {
        let entries = (0..n)
            .map(|i| Entry {
                path: format!("f{i:04}"),
                kind: EntryKind::File {
                    size: 1,
                    executable: false,
                    chunks: vec![ChunkRef {
                        id: Hash::of(&[i as u8]),
                        len: 1,
                    }],
                    meta: Some(FileMeta {
                        modified: Timestamp::default(),
                        sha256: [0; 32],
                    }),
                },
            })
            .collect();
        Manifest::new(entries, ChunkerParams::default())
    }

    /// Stores `bytes` cut at `cuts` as chunks; returns their list.
    fn put(store: &Store, bytes: &[u8], cuts: &[usize]) -> Vec<ChunkRef> {
        let mut list = Vec::new();
        let mut at = 0;
        for &end in cuts.iter().chain([&bytes.len()]) {
            let piece = &bytes[at..end];
            store
                .put_chunks(&[(Hash::of(piece), piece.to_vec())])
                .unwrap();
            list.push(ChunkRef {
                id: Hash::of(piece),
                len: piece.len() as u32,
            });
            at = end;
        }
        list
    }

    #[test]
    fn a_fetched_manifest_is_checked_and_recorded_from_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = manifest(300);
        let bytes = m.encode();
        let id = Hash::of(&bytes);
        let size = bytes.len() as u64;
        let third = bytes.len() / 3;
        let list = put(&store, &bytes, &[third, 2 * third]);
        // The same pieces in another order: the lengths add up, the bytes
        // do not decode (or not to this manifest): the list is false.
        let swapped = vec![list[1], list[0], list[2]];
        let e = store.assemble_manifest(&id, size, &swapped).unwrap_err();
        assert!(matches!(e, StoreError::CorruptChunk { .. }), "{e}");
        assert!(!store.has_manifest(&id).unwrap());
        // A piece not stored.
        let mut absent = list.clone();
        absent[2].id = Hash::of(b"absent");
        let e = store.assemble_manifest(&id, size, &absent).unwrap_err();
        assert!(matches!(e, StoreError::MissingChunk(_)), "{e}");
        // The right list: recorded, and read back whole.
        store.assemble_manifest(&id, size, &list).unwrap();
        assert_eq!(store.manifest(&id).unwrap(), m);
        assert_eq!(store.manifest_chunks(&id).unwrap(), Some(list));
    }

    #[test]
    fn bytes_that_hash_right_but_are_no_manifest_blame_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut bytes = manifest(3).encode();
        bytes.push(0);
        let id = Hash::of(&bytes);
        let list = put(&store, &bytes, &[10]);
        let e = store
            .assemble_manifest(&id, bytes.len() as u64, &list)
            .unwrap_err();
        assert!(matches!(e, StoreError::Manifest(_)), "{e}");
        assert!(!store.has_manifest(&id).unwrap());
    }
}
