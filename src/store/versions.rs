//! Collections and their versions: announcements accepted (newest only
//! moves forward), the current version (switched in one step when whole),
//! switch times, and lookup by name.

use serde::{Deserialize, Serialize};

use super::{be_u64, Result, Store, StoreError};
use crate::announce::SignedAnnouncement;
use crate::keys::CollectionId;

/// What [`Store::record_announcement`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded as the newest accepted version.
    New,
    /// Not newer than the version already accepted: nothing written.
    NotNewer {
        /// The newest version accepted before.
        accepted: u64,
    },
}

/// Per-collection state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CollectionRecord {
    name: String,
    /// The complete version export and peers serve.
    current: Option<u64>,
    /// The newest version whose announcement was accepted.
    accepted: Option<u64>,
}

/// What [`Store::collections`] reports about one collection.
#[derive(Clone, Debug)]
pub struct CollectionInfo {
    /// The collection.
    pub id: CollectionId,
    /// Its name.
    pub name: String,
    /// The current (complete) version's announcement.
    pub current: Option<SignedAnnouncement>,
    /// The newest accepted version.
    pub accepted: Option<u64>,
    /// Every version held, oldest first.
    pub versions: Vec<u64>,
}

/// The last time a collection's current version changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    /// The version that was current before.
    pub previous: u64,
    /// When the new version became current, in seconds since the Unix epoch.
    pub at: u64,
}

impl Store {
    fn collection_record(&self, id: &CollectionId) -> Result<Option<CollectionRecord>> {
        self.collections
            .get(id.0)?
            .map(|v| {
                postcard::from_bytes(&v)
                    .map_err(|e| StoreError::CorruptIndex(format!("collection {id}: {e}")))
            })
            .transpose()
    }

    fn put_collection_record(&self, id: &CollectionId, rec: &CollectionRecord) -> Result<()> {
        self.collections
            .insert(id.0, postcard::to_stdvec(rec).unwrap_or_default())?;
        Ok(())
    }

    /// Records an announcement that the caller has verified (the node's
    /// admission, or publish, which signed it) if it is newer than every
    /// version accepted before. The check and the write happen under one
    /// lock, so two racing announcements cannot roll a collection back.
    pub fn record_announcement(&self, a: &SignedAnnouncement) -> Result<Recorded> {
        let id = a.body.collection;
        let _one_writer = crate::task::lock(&self.records);
        let mut rec = self.collection_record(&id)?.unwrap_or_default();
        if let Some(accepted) = rec.accepted.filter(|&v| a.body.version <= v) {
            return Ok(Recorded::NotNewer { accepted });
        }
        self.versions
            .insert(version_key(&id, a.body.version), a.encode())?;
        rec.accepted = Some(a.body.version);
        if rec.current.is_none() {
            rec.name = a.body.name.clone();
        }
        self.put_collection_record(&id, &rec)?;
        self.db.flush()?;
        Ok(Recorded::New)
    }

    /// Makes an accepted version current, in one atomic step, once its
    /// manifest and every chunk are present (every chunk of the paths kept,
    /// for a partial mirror).
    pub fn set_current(&self, id: &CollectionId, version: u64) -> Result<()> {
        let a = self
            .version(id, version)?
            .ok_or(StoreError::UnknownVersion(*id, version))?;
        // A partial mirror's version is whole when the paths it keeps are.
        let missing = self
            .missing_wanted(&a.body.manifest, &self.filter(id)?)?
            .len();
        if missing > 0 {
            return Err(StoreError::Incomplete { version, missing });
        }
        let _one_writer = crate::task::lock(&self.records);
        let mut rec = self.collection_record(id)?.unwrap_or_default();
        if rec.current.is_some_and(|c| c >= version) {
            return Ok(());
        }
        if let Some(previous) = rec.current {
            let switch = Switch {
                previous,
                at: crate::announce::now(),
            };
            self.switches
                .insert(id.0, postcard::to_stdvec(&switch).unwrap_or_default())?;
        }
        rec.current = Some(version);
        rec.name = a.body.name.clone();
        self.put_collection_record(id, &rec)?;
        self.db.flush()?;
        Ok(())
    }

    /// The last change of a collection's current version, if it ever changed.
    pub fn last_switch(&self, id: &CollectionId) -> Result<Option<Switch>> {
        self.switches
            .get(id.0)?
            .map(|v| {
                postcard::from_bytes(&v)
                    .map_err(|e| StoreError::CorruptIndex(format!("switch of {id}: {e}")))
            })
            .transpose()
    }

    /// A stored announcement of one version.
    pub fn version(&self, id: &CollectionId, version: u64) -> Result<Option<SignedAnnouncement>> {
        self.versions
            .get(version_key(id, version))?
            .map(|v| decode_announcement(&v))
            .transpose()
    }

    /// The current version's announcement.
    pub fn current(&self, id: &CollectionId) -> Result<Option<SignedAnnouncement>> {
        match self.collection_record(id)?.and_then(|r| r.current) {
            None => Ok(None),
            Some(v) => self.version(id, v),
        }
    }

    /// The newest accepted announcement (possibly not yet complete).
    pub fn latest(&self, id: &CollectionId) -> Result<Option<SignedAnnouncement>> {
        match self.collection_record(id)?.and_then(|r| r.accepted) {
            None => Ok(None),
            Some(v) => self.version(id, v),
        }
    }

    /// Versions held for a collection, oldest first.
    pub fn versions(&self, id: &CollectionId) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for kv in self.versions.scan_prefix(id.0) {
            let (k, _) = kv?;
            out.push(be_u64(&k[32..])?);
        }
        Ok(out)
    }

    /// Every collection this store knows.
    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        let mut out = Vec::new();
        for kv in self.collections.iter() {
            let (k, v) = kv?;
            let id = CollectionId(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::CorruptIndex("collection key".into()))?,
            );
            let rec: CollectionRecord = postcard::from_bytes(&v)
                .map_err(|e| StoreError::CorruptIndex(format!("collection {id}: {e}")))?;
            out.push(CollectionInfo {
                id,
                name: rec.name,
                current: self.current(&id)?,
                accepted: rec.accepted,
                versions: self.versions(&id)?,
            });
        }
        Ok(out)
    }

    /// Finds a collection by id or by name. A name is anyone's to claim, so
    /// one that several collections answer to (the same name, or one that
    /// looks alike, see [`crate::announce::name_skeleton`]) is refused
    /// with [`StoreError::AmbiguousName`] rather than resolved to whichever
    /// comes first.
    pub fn find_collection(&self, what: &str) -> Result<Option<CollectionId>> {
        if let Ok(id) = what.parse::<CollectionId>() {
            return Ok(Some(id));
        }
        let all = self.collections()?;
        if !all.iter().any(|c| c.name == what) {
            return Ok(None);
        }
        let skeleton = crate::announce::name_skeleton(what);
        let ids: Vec<CollectionId> = all
            .iter()
            .filter(|c| crate::announce::name_skeleton(&c.name) == skeleton)
            .map(|c| c.id)
            .collect();
        match ids.as_slice() {
            [one] => Ok(Some(*one)),
            _ => Err(StoreError::AmbiguousName {
                name: what.to_string(),
                ids,
            }),
        }
    }
}

pub(super) fn version_key(id: &CollectionId, version: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&id.0);
    k[32..].copy_from_slice(&version.to_be_bytes());
    k
}

pub(super) fn decode_announcement(v: &[u8]) -> Result<SignedAnnouncement> {
    postcard::from_bytes(v).map_err(|e| StoreError::CorruptIndex(format!("announcement: {e}")))
}
