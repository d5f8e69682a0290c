//! Master keys and collection ids.
//!
//! A collection is named by its master's ed25519 public key, so whoever holds
//! the id can check every announcement without a registry. The master key is
//! distinct from a node's libp2p identity: it signs versions and can be kept
//! offline between publishes.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A collection's id: its master's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CollectionId(pub [u8; 32]);

impl CollectionId {
    /// The key that checks this collection's announcements, if the bytes are a valid point.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }

    /// The first 8 hex digits, for human output.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for CollectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CollectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CollectionId({})", self.short())
    }
}

/// Problems with keys and collection ids.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a 64-digit hex ed25519 public key.
    #[error("not a collection id (64 hex digits of an ed25519 public key): {0:?}")]
    BadCollectionId(String),
    /// The key file exists; keys are never overwritten.
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    /// The key file is not in the expected format.
    #[error("{0} is not a peermirror master key file")]
    BadKeyFile(PathBuf),
    /// A master key file that others than its owner can read or change:
    /// the key may already have leaked, so it is not used until fixed.
    #[error(
        "{path} is accessible by group or others (mode {mode:o}); \
         a master key must be private: run `chmod 600 {path}`"
    )]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl FromStr for CollectionId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b)
            .map_err(|_| KeyError::BadCollectionId(s.to_string()))?;
        let id = CollectionId(b);
        id.verifying_key()
            .ok_or_else(|| KeyError::BadCollectionId(s.to_string()))?;
        Ok(id)
    }
}

/// A master signing key, and the file it was loaded from (device, inode),
/// so that publish can refuse a tree that contains the key itself.
#[derive(Clone)]
pub struct MasterKey(SigningKey, Option<(u64, u64)>);

const HEADER: &str = "# peermirror master key (ed25519 seed, hex). Keep it secret.";

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut os = rand::rand_core::UnwrapErr(rand::rngs::SysRng);
        MasterKey(SigningKey::generate(&mut os), None)
    }

    /// The collection this key publishes.
    pub fn collection(&self) -> CollectionId {
        CollectionId(self.0.verifying_key().to_bytes())
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The (device, inode) of the file the key was loaded from, if any.
    pub fn file_id(&self) -> Option<(u64, u64)> {
        self.1
    }

    /// Writes the key to a new file with mode 0600; never overwrites.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists(path.to_path_buf())
                } else {
                    io(e)
                }
            })?;
        let text = format!(
            "{HEADER}\n# collection {}\n{}\n",
            self.collection(),
            hex::encode(self.0.to_bytes())
        );
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a key file written by [`MasterKey::save_new`]. A file that
    /// group or others can read or write is refused ([`KeyError::Exposed`]).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = fs::File::open(path).map_err(io)?;
        // Checked on the opened file, so the file read is the file checked.
        let md = f.metadata().map_err(io)?;
        let mode = md.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(io)?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| KeyError::BadKeyFile(path.to_path_buf()))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(line, &mut seed)
            .map_err(|_| KeyError::BadKeyFile(path.to_path_buf()))?;
        Ok(MasterKey(
            SigningKey::from_bytes(&seed),
            Some((md.dev(), md.ino())),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let k = MasterKey::generate();
        k.save_new(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(MasterKey::load(&path).unwrap().collection(), k.collection());
        assert!(matches!(
            MasterKey::generate().save_new(&path),
            Err(KeyError::Exists(_))
        ));
        assert_eq!(MasterKey::load(&path).unwrap().collection(), k.collection());
    }

    #[test]
    fn collection_id_parsing() {
        let id = MasterKey::generate().collection();
        assert_eq!(id.to_string().parse::<CollectionId>().unwrap(), id);
        assert!("abcd".parse::<CollectionId>().is_err());
    }

    #[test]
    fn garbage_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "hello\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(KeyError::BadKeyFile(_))
        ));
    }

    #[test]
    fn exposed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let k = MasterKey::generate();
        k.save_new(&path).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = MasterKey::load(&path)
                .err()
                .expect("an exposed key must be refused");
            assert!(matches!(e, KeyError::Exposed { .. }), "{e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        let loaded = MasterKey::load(&path).unwrap();
        assert_eq!(loaded.collection(), k.collection());
        let md = fs::metadata(&path).unwrap();
        assert_eq!(loaded.file_id(), Some((md.dev(), md.ino())));
    }
}
