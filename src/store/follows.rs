//! What the operator wants of each collection, kept with the store so it
//! survives restarts: followed or not, which paths (partial mirrors), and
//! the peers a ticket named. Only collections recorded as
//! [`InterestState::Followed`] are followed by a node that starts; one the
//! store merely holds (synced once, or published elsewhere into this store
//! by hand) is served but not followed. An unfollowed collection keeps its
//! versions until the next gc, which drops them all, and the record.

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::filter::PathFilter;
use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::ChunkRef;

/// Whether a collection is followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterestState {
    /// Followed: every node started on this store follows it.
    #[default]
    Followed,
    /// Held but not followed (a one-off `sync` that named paths): the
    /// record only keeps its paths.
    Held,
    /// Unfollowed: the next gc drops every version and this record.
    Unfollowed,
}

/// One collection's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    /// Followed, held, or unfollowed.
    pub state: InterestState,
    /// Paths kept (`--only`; see [`PathFilter`]); empty: all of them.
    pub only: Vec<String>,
    /// Peers to dial for it (from a ticket), as multiaddr text.
    pub peers: Vec<String>,
}

impl Interest {
    /// The paths kept.
    pub fn filter(&self) -> PathFilter {
        // Patterns were checked when recorded; a record that no longer
        // parses keeps everything rather than nothing.
        PathFilter::new(&self.only).unwrap_or_default()
    }
}

/// Set in sled's default tree once the followed set is recorded.
const FOLLOWED_SET_MARKER: &[u8] = b"followed-set-v1";

impl Store {
    /// The record of `id`, if any.
    pub fn interest(&self, id: &CollectionId) -> Result<Option<Interest>> {
        self.follows
            .get(id.0)?
            .map(|v| {
                postcard::from_bytes(&v)
                    .map_err(|e| StoreError::CorruptIndex(format!("follow record of {id}: {e}")))
            })
            .transpose()
    }

    /// Records what is wanted of `id` (durably: a restart follows it).
    pub fn set_interest(&self, id: &CollectionId, interest: &Interest) -> Result<()> {
        self.follows
            .insert(id.0, postcard::to_stdvec(interest).unwrap_or_default())?;
        self.db.flush()?;
        Ok(())
    }

    /// Forgets the record of `id`.
    pub fn remove_interest(&self, id: &CollectionId) -> Result<()> {
        self.follows.remove(id.0)?;
        self.db.flush()?;
        Ok(())
    }

    /// Every record.
    pub fn interests(&self) -> Result<Vec<(CollectionId, Interest)>> {
        let mut out = Vec::new();
        for kv in self.follows.iter() {
            let (k, v) = kv?;
            let id = CollectionId(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::CorruptIndex("follow record key".into()))?,
            );
            let rec = postcard::from_bytes(&v)
                .map_err(|e| StoreError::CorruptIndex(format!("follow record of {id}: {e}")))?;
            out.push((id, rec));
        }
        Ok(out)
    }

    /// The collections recorded as followed.
    pub fn followed(&self) -> Result<Vec<CollectionId>> {
        Ok(self
            .interests()?
            .into_iter()
            .filter(|(_, i)| i.state == InterestState::Followed)
            .map(|(id, _)| id)
            .collect())
    }

    /// Records `id` as followed, keeping its paths and peers if recorded.
    pub fn mark_followed(&self, id: &CollectionId) -> Result<()> {
        let old = self.interest(id)?;
        if old.as_ref().map(|i| i.state) != Some(InterestState::Followed) {
            let i = Interest {
                state: InterestState::Followed,
                ..old.unwrap_or_default()
            };
            self.set_interest(id, &i)?;
        }
        Ok(())
    }

    /// For a store made before the followed set was recorded, where a
    /// node followed every collection held: records each as followed, so
    /// an upgraded node goes on following them. Runs once per store (a
    /// marker in sled's default tree says it ran).
    pub(super) fn record_held_as_followed_once(&self) -> Result<()> {
        if self.db.contains_key(FOLLOWED_SET_MARKER)? {
            return Ok(());
        }
        for c in self.collections()? {
            self.mark_followed(&c.id)?;
        }
        self.db.insert(FOLLOWED_SET_MARKER, &[1u8][..])?;
        self.db.flush()?;
        Ok(())
    }

    /// The paths of `id` this store keeps (everything unless recorded).
    pub fn filter(&self, id: &CollectionId) -> Result<PathFilter> {
        Ok(self.interest(id)?.map(|i| i.filter()).unwrap_or_default())
    }

    /// Chunks of stored manifest `id` that a node with `filter` needs and
    /// the store lacks, each once. The manifest is read an entry at a time
    /// and only missing chunks are remembered, so memory follows what is
    /// missing, not the number of files.
    pub fn missing_wanted(&self, id: &Hash, filter: &PathFilter) -> Result<Vec<ChunkRef>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in self.manifest_entries(id)? {
            let e = e?;
            if let crate::manifest::EntryKind::File { chunks, .. } = &e.kind {
                if !filter.wants(&e.path) {
                    continue;
                }
                for c in chunks {
                    if !self.has_chunk(&c.id)? && seen.insert(c.id) {
                        out.push(*c);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Drops every record of an unfollowed collection but its chunks (gc
    /// frees those): versions, collection record, switch, follow record.
    /// Returns the versions dropped.
    pub(super) fn forget_collection(&self, id: &CollectionId) -> Result<usize> {
        let _one_writer = crate::task::lock(&self.records);
        let versions = self.versions(id)?;
        for v in &versions {
            self.versions.remove(super::version_key(id, *v))?;
        }
        self.collections.remove(id.0)?;
        self.switches.remove(id.0)?;
        self.follows.remove(id.0)?;
        self.db.flush()?;
        Ok(versions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    /// A store holding one version of a three-directory tree (2 chunks of
    /// distinct bytes per directory): (store, collection, source).
    fn three_dirs() -> (tempfile::TempDir, Store, CollectionId) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for (i, d) in ["alpha", "beta", "gamma"].iter().enumerate() {
            std::fs::create_dir_all(src.join(d)).unwrap();
            let bytes: Vec<u8> = (0..600_000u32)
                .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i as u32 * 7919) >> 13) as u8)
                .collect();
            std::fs::write(src.join(d).join("f.bin"), bytes).unwrap();
        }
        let store = Store::open(&dir.path().join("data")).unwrap();
        let key = MasterKey::generate();
        let opts = crate::publish::PublishOptions::default();
        crate::publish::publish(&store, &key, &src, &opts, &mut |_, _| {}).unwrap();
        (dir, store, key.collection())
    }

    #[test]
    fn a_partial_collection_keeps_verifies_and_exports_only_its_paths() {
        let (dir, store, c) = three_dirs();
        let all = store.stats().unwrap().chunk_bytes;
        let i = Interest {
            only: vec!["beta".into()],
            ..Interest::default()
        };
        store.set_interest(&c, &i).unwrap();
        store.gc(2).unwrap();
        let kept = store.stats().unwrap().chunk_bytes;
        assert!(kept < all / 2, "gc kept {kept} of {all} bytes");
        assert!(store.verify(false).unwrap().problems.is_empty());
        let out = dir.path().join("out");
        let r = store.export(&c, None, &out, false).unwrap();
        assert_eq!(r.files, 1);
        assert!(out.join("beta/f.bin").exists());
        assert!(!out.join("alpha").exists());
        // Whole again: verify now misses the other directories' chunks.
        store.set_interest(&c, &Interest::default()).unwrap();
        let v = store.verify(false).unwrap();
        assert!(!v.problems.is_empty());
        assert!(store
            .export(&c, None, &dir.path().join("o2"), false)
            .is_err());
    }

    #[test]
    fn a_store_from_before_the_followed_set_follows_what_it_holds_once() {
        let (dir, store, c) = three_dirs();
        assert_eq!(store.interest(&c).unwrap(), None, "publish records nothing");
        let data = store.root().to_path_buf();
        drop(store);
        let store = Store::open(&data).unwrap();
        assert_eq!(store.interest(&c).unwrap(), None, "held, not followed");
        // As made by an older version: no followed set recorded.
        store.db.remove(FOLLOWED_SET_MARKER).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let store = Store::open(&data).unwrap();
        assert_eq!(store.followed().unwrap(), [c]);
        // Once: unfollowed and reopened, it stays unfollowed.
        store.remove_interest(&c).unwrap();
        drop(store);
        let store = Store::open(&data).unwrap();
        assert!(store.followed().unwrap().is_empty());
        drop((store, dir));
    }

    #[test]
    fn an_unfollowed_collection_is_dropped_whole_by_gc() {
        let (_dir, store, c) = three_dirs();
        assert!(store.stats().unwrap().chunk_bytes > 1_000_000);
        let i = Interest {
            state: InterestState::Unfollowed,
            ..Interest::default()
        };
        store.set_interest(&c, &i).unwrap();
        let r = store.gc(2).unwrap();
        assert_eq!(r.versions_dropped, 1);
        assert_eq!(store.stats().unwrap().chunks, 0);
        assert!(store.collections().unwrap().is_empty());
        assert_eq!(store.interest(&c).unwrap(), None);
        // A held collection with no record is kept.
        let (_dir, store, c) = three_dirs();
        store.gc(1).unwrap();
        assert!(store.current(&c).unwrap().is_some());
    }
}
