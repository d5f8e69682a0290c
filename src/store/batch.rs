//! Batches: chunk bytes appended to segment files, made durable, then
//! indexed, in that order (see the crash-safety notes in [`super`]).

use std::collections::HashMap;
use std::sync::RwLockReadGuard;

use super::{io_ctx, Loc, ManifestRecord, Result, Store};
use crate::chunk::{self, ChunkerParams};
use crate::hash::Hash;
use crate::manifest::ChunkRef;

/// A group of chunk writes made durable and indexed together.
pub struct Batch<'a> {
    pub(super) store: &'a Store,
    pub(super) _gate: RwLockReadGuard<'a, ()>,
    pub(super) pending: HashMap<Hash, Loc>,
    pub(super) new_bytes: u64,
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
        for (seg, len) in synced {
            self.store
                .segment_lens
                .insert(seg.to_be_bytes(), &len.to_be_bytes())?;
        }
        self.store.chunks.insert(self.pending.drain())?;
        self.store.db.flush()?;
        Ok(())
    }

    /// Stores an encoded manifest as chunks, commits, and records it.
    pub fn add_manifest_bytes(&mut self, bytes: &[u8]) -> Result<(Hash, u64)> {
        let id = Hash::of(bytes);
        let mut refs = Vec::new();
        for c in chunk::chunks(bytes, Some(bytes.len() as u64), &ChunkerParams::default()) {
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

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            if let Err(e) = self.commit() {
                tracing::warn!(error = %e, "committing chunk batch on drop failed");
            }
        }
    }
}
