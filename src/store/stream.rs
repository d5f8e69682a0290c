//! Manifests as streams of bytes and entries: stored from a reader and
//! read back chunk by chunk, so a manifest of millions of entries is never
//! held whole in memory (publish, export and verify go through here).

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use super::{io_ctx, ManifestRecord, Result, Store, StoreError};
use crate::chunk;
use crate::hash::Hash;
use crate::manifest::stream::{EntryReader, StreamError};
use crate::manifest::{ChunkRef, Entry};

impl Store {
    /// Stores the encoded manifest `bytes` (`len` long) as chunks, commits
    /// them and records the manifest; returns its id and size. Memory stays
    /// at a chunking window whatever the manifest's size.
    pub fn add_manifest_from(&self, bytes: impl Read, len: u64) -> Result<(Hash, u64)> {
        let mut batch = self.batch();
        let mut hasher = blake3::Hasher::new();
        let mut refs = Vec::new();
        let mut add = |(buf, ranges): chunk::Block| -> io::Result<()> {
            hasher.update(&buf);
            for r in ranges {
                let data = &buf[r];
                let id = Hash::of(data);
                refs.push(ChunkRef {
                    id,
                    len: data.len() as u32,
                });
                batch.add(&id, data).map_err(io::Error::other)?;
            }
            Ok(())
        };
        let chunker = crate::manifest::transfer_chunker(len);
        let read = chunk::for_each_block(bytes, Some(len), &chunker, &mut add);
        read.map_err(|e| match e.downcast::<StoreError>() {
            Ok(s) => s,
            Err(e) => io_ctx("storing the manifest")(e),
        })?;
        let size: u64 = refs.iter().map(|c| u64::from(c.len)).sum();
        if size != len {
            return Err(io_ctx("storing the manifest")(io::Error::other(format!(
                "{size} bytes read, {len} expected"
            ))));
        }
        batch.commit()?;
        let id = Hash(*hasher.finalize().as_bytes());
        let rec = ManifestRecord { size, chunks: refs };
        self.manifests
            .insert(id.as_bytes(), postcard::to_stdvec(&rec).unwrap_or_default())?;
        self.db.flush()?;
        Ok((id, size))
    }

    /// The bytes of a stored manifest, read a chunk at a time, each chunk
    /// checked against its id and the whole against the manifest id.
    pub fn manifest_bytes(&self, id: &Hash) -> Result<ManifestBytes<'_>> {
        let rec = self.manifest_record(id)?;
        Ok(ManifestBytes {
            store: self,
            id: *id,
            chunks: rec.chunks.into_iter(),
            cur: io::Cursor::new(Vec::new()),
            hasher: blake3::Hasher::new(),
            error: Arc::default(),
        })
    }

    /// The entries of a stored manifest, decoded, checked and validated one
    /// at a time.
    pub fn manifest_entries(&self, id: &Hash) -> Result<ManifestEntries<'_>> {
        let bytes = self.manifest_bytes(id)?;
        let error = bytes.error.clone();
        let reader = EntryReader::new(bytes).map_err(|e| stream_error(&error, e))?;
        Ok(ManifestEntries { reader, error })
    }
}

/// A store error met while reading, kept for the caller: the reader itself
/// can only return io errors.
type Slot = Arc<Mutex<Option<StoreError>>>;

fn stream_error(slot: &Slot, e: StreamError) -> StoreError {
    if let Some(s) = crate::task::lock(slot).take() {
        return s;
    }
    match e {
        StreamError::Invalid(m) => StoreError::Manifest(m),
        StreamError::Io(e) => io_ctx("reading a manifest")(e),
    }
}

/// The bytes of a stored manifest ([`Store::manifest_bytes`]).
pub struct ManifestBytes<'a> {
    store: &'a Store,
    id: Hash,
    chunks: std::vec::IntoIter<ChunkRef>,
    cur: io::Cursor<Vec<u8>>,
    hasher: blake3::Hasher,
    error: Slot,
}

impl Read for ManifestBytes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.cur.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(c) = self.chunks.next() else {
                if Hash(*self.hasher.finalize().as_bytes()) != self.id {
                    let e = StoreError::CorruptIndex(format!(
                        "manifest {} does not hash to its id",
                        self.id
                    ));
                    *crate::task::lock(&self.error) = Some(e);
                    return Err(io::Error::other("manifest does not hash to its id"));
                }
                return Ok(0);
            };
            let data = self.store.read_chunk(&c.id).map_err(|e| {
                let msg = e.to_string();
                *crate::task::lock(&self.error) = Some(e);
                io::Error::other(msg)
            })?;
            self.hasher.update(&data);
            self.cur = io::Cursor::new(data);
        }
    }
}

/// The entries of a stored manifest ([`Store::manifest_entries`]).
pub struct ManifestEntries<'a> {
    reader: EntryReader<ManifestBytes<'a>>,
    error: Slot,
}

impl ManifestEntries<'_> {
    /// Entries the manifest holds (as its header says).
    pub fn len(&self) -> usize {
        self.reader.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.reader.is_empty()
    }

    /// The manifest's format.
    pub fn format(&self) -> u32 {
        self.reader.format()
    }
}

impl Iterator for ManifestEntries<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.reader.next_entry() {
            Ok(e) => e.map(Ok),
            Err(e) => Some(Err(stream_error(&self.error, e))),
        }
    }
}
