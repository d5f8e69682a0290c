//! Which version a request reads, fixed once at its start.
//!
//! A request resolves its collection's version and manifest once, takes a
//! read lease on the manifest (so gc keeps every chunk it names), and reads
//! only through that snapshot: a response that started on version N ends
//! with N's bytes, whatever switches or gc runs meanwhile. Decoded
//! manifests are cached by id (they never change), so a request costs a few
//! index reads, not a manifest decode.

use std::sync::Arc;
use std::time::Duration;

use super::Gateway;
use crate::filter::PathFilter;
use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::Manifest;
use crate::store::{CollectionInfo, ReadLease, StoreError};

/// Decoded manifests kept for reuse...
const CACHED_MANIFESTS: usize = 8;
/// ... as long as they hold this many entries together (the most recent is
/// always kept): a decoded entry costs a few hundred bytes, and a manifest
/// may hold millions.
const CACHED_ENTRIES: usize = 2_000_000;

/// One version of one collection, leased for the length of a response.
#[derive(Clone)]
pub struct Snapshot {
    /// The collection.
    pub collection: CollectionId,
    /// Its name.
    pub name: String,
    /// The version read.
    pub version: u64,
    /// When that version was published, seconds since the epoch.
    pub published_at: u64,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// The manifest's id.
    pub manifest_id: Hash,
    /// Keeps the manifest and its chunks from gc.
    pub lease: Arc<ReadLease>,
    /// The paths this node mirrors (a partial mirror serves only those).
    pub filter: Arc<PathFilter>,
}

/// What the first path segment names.
pub enum Lookup {
    /// One collection with a current version.
    Found(CollectionId),
    /// Several collections with this name: the client must choose.
    Ambiguous(Vec<CollectionInfo>),
    /// Nothing served under this name or id.
    NotFound,
}

/// A small most-recently-used cache of decoded manifests.
#[derive(Default)]
pub struct ManifestCache(std::sync::Mutex<Vec<(Hash, Arc<Manifest>)>>);

impl ManifestCache {
    pub(super) fn get(&self, id: &Hash) -> Option<Arc<Manifest>> {
        let mut v = crate::task::lock(&self.0);
        let i = v.iter().position(|(k, _)| k == id)?;
        let hit = v.remove(i);
        let m = hit.1.clone();
        v.insert(0, hit);
        Some(m)
    }

    pub(super) fn put(&self, id: Hash, m: Arc<Manifest>) {
        let mut v = crate::task::lock(&self.0);
        v.retain(|(k, _)| *k != id);
        v.insert(0, (id, m));
        v.truncate(CACHED_MANIFESTS);
        while v.len() > 1 && v.iter().map(|(_, m)| m.entries.len()).sum::<usize>() > CACHED_ENTRIES
        {
            v.pop();
        }
    }
}

impl Gateway {
    /// Finds the collection a path segment names: a 64-digit hex id, or a
    /// name held by exactly one collection with a current version.
    pub(super) async fn lookup(&self, segment: &str) -> Result<Lookup, StoreError> {
        let store = self.store().clone();
        let segment = segment.to_string();
        crate::task::blocking("finding a collection", move || {
            if segment.len() == 64 {
                if let Ok(id) = segment.parse::<CollectionId>() {
                    return Ok(match store.current(&id)? {
                        Some(_) => Lookup::Found(id),
                        None => Lookup::NotFound,
                    });
                }
            }
            let mut named: Vec<CollectionInfo> = store
                .collections()?
                .into_iter()
                .filter(|c| c.name == segment && c.current.is_some())
                .collect();
            Ok(match named.len() {
                0 => Lookup::NotFound,
                1 => Lookup::Found(named.remove(0).id),
                _ => Lookup::Ambiguous(named),
            })
        })
        .await
    }

    /// The current version of a collection, leased. `None` when it has no
    /// current version.
    pub(super) async fn current(&self, id: CollectionId) -> Result<Option<Snapshot>, StoreError> {
        // A gc that drops the manifest between reading `current` and taking
        // the lease can only happen across a switch: read `current` again.
        for _ in 0..3 {
            match self.snapshot(id, None).await {
                Err(StoreError::MissingManifest(_)) => continue,
                other => return other,
            }
        }
        self.snapshot(id, None).await
    }

    /// The version that was current before the last switch, if the switch
    /// happened less than the grace period ago and that version is still
    /// held.
    pub(super) async fn previous(&self, now: &Snapshot) -> Option<Snapshot> {
        if self.grace() == Duration::ZERO {
            return None;
        }
        let store = self.store().clone();
        let id = now.collection;
        let switch =
            crate::task::blocking("reading the last switch", move || store.last_switch(&id))
                .await
                .ok()??;
        let age = super::files::now_secs().saturating_sub(switch.at);
        if switch.previous >= now.version || age >= self.grace().as_secs() {
            return None;
        }
        match self.snapshot(id, Some(switch.previous)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "previous version not available");
                None
            }
        }
    }

    async fn snapshot(
        &self,
        id: CollectionId,
        version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let gw = self.clone();
        crate::task::blocking("reading a version", move || {
            let store = gw.store();
            let a = match version {
                None => store.current(&id)?,
                Some(v) => store.version(&id, v)?,
            };
            let Some(a) = a else {
                return Ok(None);
            };
            let lease = store.lease_manifest(&a.body.manifest)?;
            let manifest = match gw.manifests().get(&a.body.manifest) {
                Some(m) => m,
                None => {
                    let m = Arc::new(store.manifest(&a.body.manifest)?);
                    gw.manifests().put(a.body.manifest, m.clone());
                    m
                }
            };
            Ok(Some(Snapshot {
                filter: Arc::new(store.filter(&id)?),
                collection: id,
                name: a.body.name.clone(),
                version: a.body.version,
                published_at: a.body.published_at,
                manifest,
                manifest_id: a.body.manifest,
                lease: Arc::new(lease),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkerParams;

    #[test]
    fn the_cache_keeps_the_most_recent_manifests() {
        let c = ManifestCache::default();
        let m = Arc::new(Manifest::new(vec![], ChunkerParams::default()));
        for i in 0..CACHED_MANIFESTS as u8 + 1 {
            c.put(Hash::of(&[i]), m.clone());
        }
        assert!(c.get(&Hash::of(&[0])).is_none(), "the oldest was evicted");
        assert!(c.get(&Hash::of(&[1])).is_some());
        c.put(Hash::of(b"new"), m.clone());
        assert!(c.get(&Hash::of(&[1])).is_some(), "a hit counts as use");
        assert!(c.get(&Hash::of(&[2])).is_none());
        // Large manifests push the others out, but the newest stays.
        let e = crate::manifest::Entry {
            path: "d".into(),
            kind: crate::manifest::EntryKind::Dir,
        };
        let big = Arc::new(Manifest {
            entries: vec![e; CACHED_ENTRIES / 2 + 1],
            ..(*m).clone()
        });
        c.put(Hash::of(b"big1"), big.clone());
        c.put(Hash::of(b"big2"), big);
        assert!(c.get(&Hash::of(b"big2")).is_some());
        assert!(c.get(&Hash::of(b"big1")).is_none());
        assert!(c.get(&Hash::of(b"new")).is_none());
    }
}
