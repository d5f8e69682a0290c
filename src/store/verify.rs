//! `verify`: re-hash every stored chunk and check that every complete
//! version held (the current one and older) has its manifest and all its
//! chunks; a newer version may still be being fetched.

use std::collections::HashMap;
use std::fmt;

use super::segments::Loc;
use super::{Result, Store};
use crate::hash::Hash;

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
    pub fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut used_by: HashMap<Hash, String> = HashMap::new();
        let mut manifest_chunks: Vec<(Hash, String)> = Vec::new();
        // Chunks that must be present: those of complete versions. A version
        // newer than the current one may still be being fetched.
        let mut required: HashMap<Hash, String> = HashMap::new();
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
                        report.problems.push(Problem::BadVersion {
                            version: label,
                            why: e.to_string(),
                        });
                        continue;
                    }
                };
                // Expiry does not matter for what is already stored.
                if let Err(e) = a.verify(a.body.published_at) {
                    report.problems.push(Problem::BadVersion {
                        version: label.clone(),
                        why: e.to_string(),
                    });
                }
                if let Ok(rec) = self.manifest_record(&a.body.manifest) {
                    for c in rec.chunks {
                        manifest_chunks.push((c.id, format!("manifest of {label}")));
                    }
                }
                match self.manifest(&a.body.manifest) {
                    Ok(m) => {
                        for (path, _, _, chunks) in m.files() {
                            for c in chunks {
                                let by = || format!("{label}: {path}");
                                used_by.entry(c.id).or_insert_with(by);
                                if complete && filter.wants(path) {
                                    required.entry(c.id).or_insert_with(by);
                                }
                            }
                        }
                    }
                    Err(e) => report.problems.push(Problem::BadVersion {
                        version: label,
                        why: format!("manifest {}: {e}", a.body.manifest),
                    }),
                }
            }
        }
        for (id, label) in manifest_chunks {
            used_by.entry(id).or_insert_with(|| label.clone());
            required.entry(id).or_insert(label);
        }

        let mut corrupt = Vec::new();
        for kv in self.chunks.iter() {
            let (k, v) = kv?;
            let id = Hash(k.as_ref().try_into().unwrap_or([0; 32]));
            let why = match Loc::decode(&v) {
                None => Some("index entry does not decode".to_string()),
                Some(loc) => match self.segs.read(loc) {
                    Err(e) => Some(format!("unreadable: {e}")),
                    Ok(data) => {
                        report.chunks_checked += 1;
                        report.bytes_checked += data.len() as u64;
                        (Hash::of(&data) != id)
                            .then(|| "bytes do not hash to the chunk id".to_string())
                    }
                },
            };
            if let Some(why) = why {
                report.problems.push(Problem::CorruptChunk {
                    id,
                    used_by: used_by.get(&id).cloned(),
                    why,
                });
                corrupt.push(id);
            }
        }
        for (id, label) in &required {
            if !self.has_chunk(id)? {
                report.problems.push(Problem::MissingChunk {
                    id: *id,
                    used_by: label.clone(),
                });
            }
        }
        if repair {
            for id in &corrupt {
                self.chunks.remove(id.as_bytes())?;
                report.repaired += 1;
            }
            self.db.flush()?;
        }
        Ok(report)
    }
}
