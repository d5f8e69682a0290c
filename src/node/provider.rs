//! What a node serves to its peers, straight from its store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::ChunkRef;
use crate::net::ChunkProvider;
use crate::store::Store;

/// Serves verified chunks, have-maps, manifest chunk lists and the latest
/// announcement from a [`Store`], counting bytes sent.
pub struct StoreProvider {
    pub(crate) store: Arc<Store>,
    pub(crate) bytes_up: Arc<AtomicU64>,
    /// The mirror records handed to peers who ask.
    pub(crate) mirrors: Option<Arc<crate::mirrors::Mirrors>>,
}

impl StoreProvider {
    /// Serves `store`, counting bytes sent in `bytes_up`.
    pub fn new(store: Arc<Store>, bytes_up: Arc<AtomicU64>) -> Self {
        StoreProvider {
            store,
            bytes_up,
            mirrors: None,
        }
    }

    /// Also hands out the mirror records of `mirrors`.
    pub fn with_mirrors(mut self, mirrors: Arc<crate::mirrors::Mirrors>) -> Self {
        self.mirrors = Some(mirrors);
        self
    }
}

impl ChunkProvider for StoreProvider {
    fn chunk(&self, id: &Hash) -> Option<bytes::Bytes> {
        // Header-checked and sampled, not re-hashed each time: the peer
        // hashes what it gets (see Store::read_chunk_for_peer).
        match self.store.read_chunk_for_peer(id) {
            Ok(data) => {
                self.bytes_up
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Some(data)
            }
            Err(e) => {
                if !matches!(e, crate::store::StoreError::MissingChunk(_)) {
                    tracing::warn!(chunk = %id, error = %e, "not serving chunk");
                }
                None
            }
        }
    }

    fn have(&self, ids: &[Hash]) -> Vec<bool> {
        ids.iter()
            .map(|id| self.store.has_chunk(id).unwrap_or(false))
            .collect()
    }

    fn manifest_chunks(&self, id: &Hash) -> Option<Vec<ChunkRef>> {
        self.store.manifest_chunks(id).ok()?
    }

    fn have_map(&self, id: &Hash) -> Option<crate::net::HaveMap> {
        crate::sync::have_map(&self.store, id).ok()?
    }

    fn latest_announcement(&self, collection: &CollectionId) -> Option<Vec<u8>> {
        self.store
            .latest(collection)
            .ok()
            .flatten()
            .map(|a| a.encode())
    }

    fn mirror_records(&self, collection: &CollectionId) -> Vec<Vec<u8>> {
        self.mirrors
            .as_ref()
            .map(|m| m.answer(collection))
            .unwrap_or_default()
    }
}
