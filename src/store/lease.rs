//! Read leases: a reader that is still streaming a version's files (an HTTP
//! response that started before a version switch) holds a lease on that
//! version's manifest, and gc keeps the manifest and every chunk it names
//! until the lease is dropped.
//!
//! The race between taking a lease and gc is closed by one mutex: gc takes
//! the leased set as live and marks the manifests it is about to drop as
//! doomed in the same critical section; a lease on a doomed manifest is
//! refused, and after gc the dropped manifest is simply gone, which
//! [`super::Store::lease_manifest`] checks once the lease is registered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::hash::Hash;
use crate::task::lock;

#[derive(Default)]
struct State {
    /// Open leases per manifest.
    held: HashMap<Hash, usize>,
    /// Manifests a running gc is dropping.
    doomed: HashSet<Hash>,
}

/// The lease registry shared by a store and its leases.
#[derive(Clone, Default)]
pub(super) struct Leases(Arc<Mutex<State>>);

impl Leases {
    /// Registers a lease unless gc is dropping the manifest.
    pub(super) fn take(&self, id: &Hash) -> Option<ReadLease> {
        let mut s = lock(&self.0);
        if s.doomed.contains(id) {
            return None;
        }
        *s.held.entry(*id).or_default() += 1;
        Some(ReadLease {
            leases: self.clone(),
            id: *id,
        })
    }

    /// For gc: adds every leased manifest to `live`, marks the rest of
    /// `candidates` doomed, and returns them. The mark lasts until the
    /// returned guard is dropped.
    pub(super) fn doom(
        &self,
        live: &mut HashSet<Hash>,
        candidates: Vec<Hash>,
    ) -> (Vec<Hash>, DoomGuard) {
        let mut s = lock(&self.0);
        live.extend(s.held.keys().copied());
        let doomed: Vec<Hash> = candidates
            .into_iter()
            .filter(|id| !live.contains(id))
            .collect();
        s.doomed.extend(doomed.iter().copied());
        (
            doomed,
            DoomGuard {
                leases: self.clone(),
            },
        )
    }

    /// Manifests with open leases.
    #[cfg(test)]
    pub(super) fn held(&self) -> Vec<Hash> {
        lock(&self.0).held.keys().copied().collect()
    }
}

/// Clears gc's doomed marks when gc ends, however it ends.
pub(super) struct DoomGuard {
    leases: Leases,
}

impl Drop for DoomGuard {
    fn drop(&mut self) {
        lock(&self.leases.0).doomed.clear();
    }
}

/// Keeps a manifest and its chunks from gc while held. Cheap to hold for
/// the length of a download; released on drop.
pub struct ReadLease {
    leases: Leases,
    id: Hash,
}

impl ReadLease {
    /// The leased manifest.
    pub fn manifest(&self) -> &Hash {
        &self.id
    }
}

impl std::fmt::Debug for ReadLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadLease({:?})", self.id)
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        let mut s = lock(&self.leases.0);
        if let Some(n) = s.held.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                s.held.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leased_manifests_stay_live_and_doomed_ones_refuse_leases() {
        let l = Leases::default();
        let (a, b, c) = (Hash::of(b"a"), Hash::of(b"b"), Hash::of(b"c"));
        let lease_a = l.take(&a).unwrap();
        let mut live = HashSet::from([c]);
        let (doomed, guard) = l.doom(&mut live, vec![a, b, c]);
        assert_eq!(doomed, vec![b]);
        assert!(live.contains(&a));
        assert!(l.take(&b).is_none(), "b is being dropped");
        assert!(l.take(&a).is_some());
        drop(guard);
        assert!(l.take(&b).is_some(), "the mark ends with gc");
        assert_eq!(l.held(), vec![a]);
        drop(lease_a);
        assert!(l.held().is_empty(), "every lease was released");
    }

    fn publish(store: &super::super::Store, key: &crate::keys::MasterKey, seed: u8) -> Hash {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![seed; 300 << 10]).unwrap();
        let opts = crate::publish::PublishOptions {
            name: Some("c".into()),
            ..Default::default()
        };
        crate::publish::publish(store, key, dir.path(), &opts, &mut |_, _| {})
            .unwrap()
            .announcement
            .body
            .manifest
    }

    #[test]
    fn gc_keeps_what_a_lease_holds_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(dir.path()).unwrap();
        let key = crate::keys::MasterKey::generate();
        let c = key.collection();
        let m1 = publish(&store, &key, 1);
        let old_chunk = Hash::of(&vec![1u8; 300 << 10]);
        let lease = store.lease_manifest(&m1).unwrap();
        assert_eq!(lease.manifest(), &m1);
        publish(&store, &key, 2);
        let switch = store.last_switch(&c).unwrap().unwrap();
        assert_eq!(switch.previous, 1);
        assert!(switch.at.abs_diff(crate::announce::now()) < 60);
        let r = store.gc(1).unwrap();
        assert_eq!(r.versions_dropped, 1);
        assert_eq!(r.manifests_dropped, 0, "the leased manifest stays");
        assert_eq!(store.read_chunk(&old_chunk).unwrap().len(), 300 << 10);
        assert!(store.manifest(&m1).is_ok());
        drop(lease);
        let r = store.gc(1).unwrap();
        assert_eq!((r.manifests_dropped, r.chunks_dropped), (1, 2));
        assert!(!store.has_chunk(&old_chunk).unwrap());
        assert!(matches!(
            store.lease_manifest(&m1),
            Err(super::super::StoreError::MissingManifest(_))
        ));
    }

    #[test]
    fn a_corrupt_chunk_is_dropped_and_a_sound_one_kept() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(dir.path()).unwrap();
        let key = crate::keys::MasterKey::generate();
        publish(&store, &key, 3);
        let id = Hash::of(&vec![3u8; 300 << 10]);
        assert!(!store.drop_corrupt_chunk(&id).unwrap(), "sound chunks stay");
        let loc = store.chunk_loc(&id).unwrap().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.segs.path(loc.segment))
            .unwrap();
        f.seek(SeekFrom::Start(loc.offset + 1000)).unwrap();
        f.write_all(b"rot").unwrap();
        drop(f);
        assert!(store.drop_corrupt_chunk(&id).unwrap());
        assert!(!store.has_chunk(&id).unwrap());
        assert!(!store.drop_corrupt_chunk(&id).unwrap(), "already gone");
    }
}
