//! Signed announcements: "version N of collection C is manifest M".
//!
//! An announcement is small (it travels over gossip; the manifest travels
//! over the data protocol) and signed by the collection's master key over a
//! domain-separated encoding, so a signature made for anything else can never
//! pass as an announcement. Who forwarded it does not matter: this signature
//! is what a mirror trusts.

use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::keys::{CollectionId, MasterKey};

/// Prefix of every signed message, so signatures cannot be replayed across uses.
pub const DOMAIN: &[u8] = b"peermirror/announcement/v1\0";
/// Largest encoded announcement accepted.
pub const MAX_ENCODED: usize = 4096;
/// Longest collection name, in bytes.
pub const MAX_NAME: usize = 128;
/// Highest version number accepted: 2^53, far beyond any real use, and
/// exact in a JSON number. A version of `u64::MAX` would lock a collection
/// for good (nothing can be newer), and its successor would overflow.
pub const MAX_VERSION: u64 = 1 << 53;
/// Largest manifest accepted (its encoded size).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 30;

/// The signed content of an announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The collection (master public key).
    pub collection: CollectionId,
    /// Human name, also the directory name under which mirrors serve it.
    pub name: String,
    /// Version number; strictly increasing per collection.
    pub version: u64,
    /// blake3 of the encoded manifest.
    pub manifest: Hash,
    /// Encoded manifest length in bytes.
    pub manifest_size: u64,
    /// Sum of all file sizes.
    pub total_bytes: u64,
    /// Number of regular files.
    pub files: u64,
    /// Seconds since the Unix epoch.
    pub published_at: u64,
    /// After this (seconds since the epoch) the announcement is no longer acted on.
    pub expires_at: u64,
}

/// An announcement with its master signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    /// What is signed.
    pub body: Announcement,
    /// ed25519 signature over [`DOMAIN`] followed by the postcard encoding of `body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why an announcement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnounceError {
    /// Undecodable or oversized bytes.
    #[error("malformed announcement: {0}")]
    Malformed(String),
    /// The signature does not verify under the collection key.
    #[error("announcement signature does not verify for collection {0}")]
    BadSignature(CollectionId),
    /// Fields out of range.
    #[error("announcement field out of range: {0}")]
    OutOfRange(&'static str),
    /// Past its expiry time.
    #[error("announcement of version {version} expired at {expires_at}")]
    Expired {
        /// The version.
        version: u64,
        /// When it expired.
        expires_at: u64,
    },
    /// Not newer than what was already accepted (a replay or a rollback).
    #[error("version {version} is not newer than accepted version {accepted}")]
    NotNewer {
        /// The announced version.
        version: u64,
        /// The newest version accepted before.
        accepted: u64,
    },
}

/// Whether `name` can serve as a collection name (and a directory name).
/// ASCII only: a Cyrillic "а" must not pass for a Latin "a", so a name
/// cannot pose as another one by its looks.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// What a name looks like to a reader: lower case, with the ASCII
/// look-alikes folded together ("0"/"o", "1"/"l"/"i", "rn"/"m", "vv"/"w").
/// Two collections whose names share a skeleton cannot be told apart by
/// name, so a lookup by name refuses to choose between them.
pub fn name_skeleton(name: &str) -> String {
    let lower = name
        .to_ascii_lowercase()
        .replace("rn", "m")
        .replace("vv", "w");
    lower
        .chars()
        .map(|c| match c {
            '0' => 'o',
            '1' | 'i' | '|' => 'l',
            _ => c,
        })
        .collect()
}

impl Announcement {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = DOMAIN.to_vec();
        // Plain struct into a Vec: cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Signs with the master key; the key must be this collection's.
    pub fn sign(self, key: &MasterKey) -> SignedAnnouncement {
        debug_assert_eq!(key.collection(), self.collection);
        let signature = key.signing_key().sign(&self.signing_bytes());
        SignedAnnouncement {
            body: self,
            signature: signature.to_bytes().to_vec(),
        }
    }
}

impl SignedAnnouncement {
    /// Wire and storage encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and [`verify`](Self::verify)s.
    pub fn decode(bytes: &[u8], now: u64) -> Result<Self, AnnounceError> {
        if bytes.len() > MAX_ENCODED {
            return Err(AnnounceError::Malformed(format!("{} bytes", bytes.len())));
        }
        let a: SignedAnnouncement =
            postcard::from_bytes(bytes).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        // One announcement, one encoding (no trailing bytes, no overlong varints).
        if a.encode() != bytes {
            return Err(AnnounceError::Malformed(
                "not the canonical encoding".into(),
            ));
        }
        a.verify(now)?;
        Ok(a)
    }

    /// Checks the signature, the field ranges, and expiry at `now` (epoch seconds).
    pub fn verify(&self, now: u64) -> Result<(), AnnounceError> {
        let b = &self.body;
        let key = b
            .collection
            .verifying_key()
            .ok_or(AnnounceError::BadSignature(b.collection))?;
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| AnnounceError::BadSignature(b.collection))?;
        key.verify_strict(&b.signing_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| AnnounceError::BadSignature(b.collection))?;
        if !valid_name(&b.name) {
            return Err(AnnounceError::OutOfRange("name"));
        }
        if b.version == 0 || b.version > MAX_VERSION {
            return Err(AnnounceError::OutOfRange("version"));
        }
        if b.manifest_size == 0 || b.manifest_size > MAX_MANIFEST_SIZE {
            return Err(AnnounceError::OutOfRange("manifest_size"));
        }
        if b.total_bytes > crate::manifest::MAX_TOTAL_SIZE {
            return Err(AnnounceError::OutOfRange("total_bytes"));
        }
        if b.files > crate::manifest::MAX_ENTRIES as u64 {
            return Err(AnnounceError::OutOfRange("files"));
        }
        if b.expires_at <= b.published_at {
            return Err(AnnounceError::OutOfRange("expires_at"));
        }
        if now >= b.expires_at {
            return Err(AnnounceError::Expired {
                version: b.version,
                expires_at: b.expires_at,
            });
        }
        Ok(())
    }

    /// Refuses a version that is not newer than `accepted` (replays, rollbacks).
    pub fn check_newer(&self, accepted: Option<u64>) -> Result<(), AnnounceError> {
        match accepted {
            Some(a) if self.body.version <= a => Err(AnnounceError::NotNewer {
                version: self.body.version,
                accepted: a,
            }),
            _ => Ok(()),
        }
    }
}

/// How close an announcement is to its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Freshness {
    /// More than a tenth of its validity left.
    Fresh,
    /// A tenth of its validity or less left: the master should publish again.
    Expiring,
    /// Past its expiry: peers no longer act on it.
    Expired,
}

impl Announcement {
    /// Its freshness at `now` (epoch seconds): expiring once at most
    /// [`EXPIRING_FRACTION`] of its validity is left.
    pub fn freshness(&self, now: u64) -> Freshness {
        let validity = self.expires_at.saturating_sub(self.published_at);
        let left = self.expires_at.saturating_sub(now);
        if left == 0 {
            Freshness::Expired
        } else if left <= (validity / EXPIRING_FRACTION).max(1) {
            Freshness::Expiring
        } else {
            Freshness::Fresh
        }
    }
}

/// An announcement is expiring (warned about) once 1/`EXPIRING_FRACTION`
/// of its validity or less is left: 10%.
pub const EXPIRING_FRACTION: u64 = 10;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &MasterKey, version: u64) -> Announcement {
        Announcement {
            collection: key.collection(),
            name: "images".into(),
            version,
            manifest: Hash::of(b"m"),
            manifest_size: 100,
            total_bytes: 1 << 30,
            files: 3,
            published_at: 1_000,
            expires_at: 2_000,
        }
    }

    #[test]
    fn signed_round_trip() {
        let k = MasterKey::generate();
        let s = sample(&k, 1).sign(&k);
        let back = SignedAnnouncement::decode(&s.encode(), 1_500).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn forged_signature_is_refused() {
        let k = MasterKey::generate();
        let other = MasterKey::generate();
        // Signed by another key but claiming k's collection.
        let mut forged = sample(&other, 1).sign(&other);
        forged.body.collection = k.collection();
        assert!(matches!(
            forged.verify(1_500),
            Err(AnnounceError::BadSignature(_))
        ));
        // A field changed after signing.
        let mut tampered = sample(&k, 1).sign(&k);
        tampered.body.version = 99;
        assert!(matches!(
            tampered.verify(1_500),
            Err(AnnounceError::BadSignature(_))
        ));
        let mut short = sample(&k, 1).sign(&k);
        short.signature.truncate(10);
        assert!(short.verify(1_500).is_err());
    }

    #[test]
    fn signature_is_domain_separated() {
        let k = MasterKey::generate();
        let a = sample(&k, 1);
        // A signature over the bare encoding (no domain prefix) must not verify.
        let bare = k.signing_key().sign(&postcard::to_stdvec(&a).unwrap());
        let s = SignedAnnouncement {
            body: a,
            signature: bare.to_bytes().to_vec(),
        };
        assert!(matches!(
            s.verify(1_500),
            Err(AnnounceError::BadSignature(_))
        ));
    }

    #[test]
    fn replayed_and_old_versions_are_refused() {
        let k = MasterKey::generate();
        let s = sample(&k, 5).sign(&k);
        assert!(s.check_newer(None).is_ok());
        assert!(s.check_newer(Some(4)).is_ok());
        assert_eq!(
            s.check_newer(Some(5)),
            Err(AnnounceError::NotNewer {
                version: 5,
                accepted: 5
            })
        );
        assert!(s.check_newer(Some(7)).is_err());
    }

    #[test]
    fn freshness_warns_at_a_tenth_of_validity_left() {
        let k = MasterKey::generate();
        let a = sample(&k, 1); // published 1_000, expires 2_000
        assert_eq!(a.freshness(1_000), Freshness::Fresh);
        assert_eq!(a.freshness(1_899), Freshness::Fresh);
        assert_eq!(a.freshness(1_900), Freshness::Expiring);
        assert_eq!(a.freshness(1_999), Freshness::Expiring);
        assert_eq!(a.freshness(2_000), Freshness::Expired);
        assert_eq!(a.freshness(u64::MAX), Freshness::Expired);
    }

    #[test]
    fn expired_is_refused() {
        let k = MasterKey::generate();
        let s = sample(&k, 1).sign(&k);
        assert!(matches!(
            s.verify(2_000),
            Err(AnnounceError::Expired { .. })
        ));
    }

    #[test]
    fn insane_fields_are_refused() {
        let k = MasterKey::generate();
        let mut a = sample(&k, 1);
        a.manifest_size = MAX_MANIFEST_SIZE + 1;
        assert_eq!(
            a.sign(&k).verify(1_500),
            Err(AnnounceError::OutOfRange("manifest_size"))
        );
        let mut a = sample(&k, 1);
        a.name = "../etc".into();
        assert_eq!(
            a.sign(&k).verify(1_500),
            Err(AnnounceError::OutOfRange("name"))
        );
        for v in [0, MAX_VERSION + 1, u64::MAX] {
            let mut a = sample(&k, 1);
            a.version = v;
            assert_eq!(
                a.sign(&k).verify(1_500),
                Err(AnnounceError::OutOfRange("version"))
            );
        }
        let mut a = sample(&k, 1);
        a.version = MAX_VERSION;
        assert!(a.sign(&k).verify(1_500).is_ok());
        let mut a = sample(&k, 1);
        a.expires_at = a.published_at;
        assert!(a.sign(&k).verify(0).is_err());
        assert!(matches!(
            SignedAnnouncement::decode(&[0xff; 10], 1_500),
            Err(AnnounceError::Malformed(_))
        ));
        assert!(SignedAnnouncement::decode(&vec![0u8; MAX_ENCODED + 1], 1_500).is_err());
        let mut trailing = sample(&k, 1).sign(&k).encode();
        trailing.push(0);
        assert!(matches!(
            SignedAnnouncement::decode(&trailing, 1_500),
            Err(AnnounceError::Malformed(_))
        ));
    }

    #[test]
    fn names_are_ascii_and_look_alikes_share_a_skeleton() {
        assert!(valid_name("images-2024_v1.0+x"));
        // Cyrillic "а" (U+0430) and "і" (U+0456), full-width "Ｉ".
        for n in [
            "im\u{0430}ges",
            "\u{0456}mages",
            "\u{FF29}mages",
            "caf\u{e9}",
        ] {
            assert!(!valid_name(n), "{n}");
        }
        let k = MasterKey::generate();
        let mut a = sample(&k, 1);
        a.name = "im\u{0430}ges".into();
        assert_eq!(
            a.sign(&k).verify(1_500),
            Err(AnnounceError::OutOfRange("name"))
        );
        let s = name_skeleton("images");
        for n in ["Images", "1mages", "lmages", "IMAGES"] {
            assert_eq!(name_skeleton(n), s, "{n}");
        }
        assert_eq!(name_skeleton("modern"), name_skeleton("rnodern"));
        assert_eq!(name_skeleton("www"), name_skeleton("vvww"));
        assert_ne!(name_skeleton("images"), name_skeleton("imagess"));
    }
}
