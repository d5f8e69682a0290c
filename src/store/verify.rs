//! `verify`: re-hash every stored chunk and check that every complete
//! version held (the current one and older) has its manifest and all its
//! chunks; a newer version may still be being fetched. Manifests are read
//! entry by entry, so a version of millions of files is checked in memory
//! that does not grow with it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{Result, Store};
use crate::hash::Hash;
use crate::manifest::EntryKind;

/// One thing wrong with the store.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Problem {
    /// Stored bytes that do not hash to their id (or cannot be read).
    CorruptChunk {
        /// The chunk.
        id: Hash,
        /// A file that uses it, if any.
        used_by: Option<String>,
        /// What is wrong.
        why: String,
    },
    /// A chunk some version needs that is not stored.
    MissingChunk {
        /// The chunk.
        id: Hash,
        /// A file that uses it.
        used_by: String,
    },
    /// A version whose announcement or manifest cannot be read.
    BadVersion {
        /// Collection name and version.
        version: String,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptChunk { id, used_by, why } => {
                write!(f, "corrupt chunk {id}: {why}")?;
                if let Some(u) = used_by {
                    write!(f, " (used by {u})")?;
                }
                Ok(())
            }
            Problem::MissingChunk { id, used_by } => {
                write!(f, "missing chunk {id} (used by {used_by})")
            }
            Problem::BadVersion { version, why } => write!(f, "version {version}: {why}"),
        }
    }
}

/// What [`Store::verify`] found.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// Chunks re-hashed.
    pub chunks_checked: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Versions whose manifests were checked.
    pub versions_checked: u64,
    /// Everything wrong; empty when the store is sound.
    pub problems: Vec<Problem>,
    /// Corrupt chunks dropped from the index (with `repair`).
    pub repaired: u64,
}

impl Store {
    /// Re-hashes every chunk and checks every complete version. With `repair`, corrupt
    /// chunks are dropped from the index so that they are fetched or
    /// published again instead of being served.
    ///
    /// Chunks are re-hashed first, so that the manifests, streamed one
    /// entry at a time, only need to look up the few corrupt ones: memory
    /// does not grow with the number of files.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut corrupt: HashMap<Hash, (String, Option<String>)> = HashMap::new();
        let mut corrupt_order = Vec::new();
        for kv in self.chunks.iter() {
            let (id, loc) = kv?;
            let why = match self.segs.read(loc) {
                Err(e) => Some(format!("unreadable: {e}")),
                Ok(data) => {
                    report.chunks_checked += 1;
                    report.bytes_checked += data.len() as u64;
                    (Hash::of(&data) != id).then(|| "bytes do not hash to the chunk id".to_string())
                }
            };
            if let Some(why) = why {
                corrupt.insert(id, (why, None));
                corrupt_order.push(id);
            }
        }

        let mut bad_versions = Vec::new();
        let mut missing = Vec::new();
        let mut reported: HashSet<Hash> = HashSet::new();
        // Chunks that must be present: those of complete versions (a version
        // newer than the current one may still be being fetched) and every
        // stored manifest's own.
        let mut need = |id: &Hash, label: &dyn Fn() -> String, required: bool| -> Result<()> {
            if let Some((_, by)) = corrupt.get_mut(id) {
                by.get_or_insert_with(label);
            }
            if required && !reported.contains(id) && !self.has_chunk(id)? {
                reported.insert(*id);
                missing.push(Problem::MissingChunk {
                    id: *id,
                    used_by: label(),
                });
            }
            Ok(())
        };
        for info in self.collections()? {
            // A partial mirror requires only the chunks of the paths it keeps.
            let filter = self.filter(&info.id)?;
            let current = info.current.as_ref().map(|a| a.body.version);
            for v in &info.versions {
                let complete = current.is_some_and(|c| *v <= c);
                let label = format!("{} v{v}", info.name);
                report.versions_checked += 1;
                let a = match self.version(&info.id, *v) {
                    Ok(Some(a)) => a,
                    Ok(None) => continue,
                    Err(e) => {
                        bad_versions.push(Problem::BadVersion {
                            version: label,
                            why: e.to_string(),
                        });
                        continue;
                    }
                };
                // Expiry does not matter for what is already stored.
                if let Err(e) = a.verify(a.body.published_at) {
                    bad_versions.push(Problem::BadVersion {
                        version: label.clone(),
                        why: e.to_string(),
                    });
                }
                let m = a.body.manifest;
                if let Ok(rec) = self.manifest_record(&m) {
                    for c in rec.chunks {
                        need(&c.id, &|| format!("manifest of {label}"), true)?;
                    }
                }
                let entries = match self.manifest_entries(&m) {
                    Ok(entries) => entries,
                    Err(e) => {
                        bad_versions.push(Problem::BadVersion {
                            version: label,
                            why: format!("manifest {m}: {e}"),
                        });
                        continue;
                    }
                };
                for e in entries {
                    let e = match e {
                        Ok(e) => e,
                        Err(e) => {
                            bad_versions.push(Problem::BadVersion {
                                version: label.clone(),
                                why: format!("manifest {m}: {e}"),
                            });
                            break;
                        }
                    };
                    if let EntryKind::File { chunks, .. } = &e.kind {
                        for c in chunks {
                            let required = complete && filter.wants(&e.path);
                            need(&c.id, &|| format!("{label}: {}", e.path), required)?;
                        }
                    }
                }
            }
        }

        report.problems = bad_versions;
        for id in &corrupt_order {
            if let Some((why, used_by)) = corrupt.get(id) {
                report.problems.push(Problem::CorruptChunk {
                    id: *id,
                    used_by: used_by.clone(),
                    why: why.clone(),
                });
            }
        }
        report.problems.extend(missing);
        if repair {
            self.chunks.remove(corrupt_order.iter().copied())?;
            report.repaired += corrupt_order.len() as u64;
            self.db.flush()?;
        }
        Ok(report)
    }
}
