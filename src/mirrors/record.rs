//! Signed mirror records: "peer P serves version V of collection C over
//! HTTP at URL U", signed with P's node key so the record binds to the
//! peer id and no one can advertise a URL in another node's name.
//!
//! One record names one collection: records travel on that collection's
//! gossip topic, and gossipsub message ids are content hashes, so one
//! record for several topics would be dropped as a duplicate on all but
//! the first. A node serving three collections signs three records.

use libp2p::identity::{ed25519, Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::keys::CollectionId;

/// Domain prefix of the signed bytes, so no other signature made with a
/// node key passes for a mirror record.
pub const DOMAIN: &[u8] = b"peermirror/mirror-record/v1\0";
/// Largest encoded [`SignedMirrorRecord`].
pub const MAX_ENCODED: usize = 2048;
/// Longest base URL, in bytes.
pub const MAX_URL: usize = 512;
/// Longest region label, in bytes.
pub const MAX_REGION: usize = 32;
/// Most preferred client prefixes in one record.
pub const MAX_PREFIXES: usize = 16;
/// Longest a record may be valid: a node re-signs well before, so a
/// record of a node that vanished soon stops counting.
pub const MAX_LIFETIME: u64 = 24 * 3600;
/// How far in the future `issued_at` may lie (clock skew between nodes).
pub const MAX_SKEW: u64 = 600;

/// A client address prefix, e.g. `10.1.0.0/16`: 4 or 16 address bytes and
/// the prefix length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefix {
    /// The network address (4 bytes for IPv4, 16 for IPv6).
    #[serde(with = "serde_bytes")]
    pub addr: Vec<u8>,
    /// Prefix length in bits (at most 32 or 128).
    pub len: u8,
}

impl Prefix {
    /// The prefix as an [`ipnet::IpNet`], if well-formed.
    pub fn net(&self) -> Option<ipnet::IpNet> {
        let ip = match self.addr.len() {
            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(self.addr.as_slice()).ok()?),
            16 => std::net::IpAddr::from(<[u8; 16]>::try_from(self.addr.as_slice()).ok()?),
            _ => return None,
        };
        ipnet::IpNet::new(ip, self.len).ok().map(|n| n.trunc())
    }

    /// The wire form of `net` (host bits cleared).
    pub fn from_net(net: &ipnet::IpNet) -> Self {
        let net = net.trunc();
        let addr = match net.addr() {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        };
        Prefix {
            addr,
            len: net.prefix_len(),
        }
    }
}

/// What a mirror advertises about itself for one collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorRecord {
    /// The mirror's peer id (`PeerId::to_bytes`).
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// Public HTTP base URL (`http://` or `https://`, no trailing `/`):
    /// the collection is served at `<url>/<collection id>/`.
    pub url: String,
    /// Region or country label (e.g. `DE`), empty for none.
    pub region: String,
    /// Client address prefixes this mirror prefers to serve.
    pub prefer: Vec<Prefix>,
    /// Declared capacity in Mbit/s, a weight for spreading load (0: not
    /// declared, counted as [`super::DEFAULT_CAPACITY_MBPS`]).
    pub capacity_mbps: u32,
    /// The collection served.
    pub collection: CollectionId,
    /// The version of it the mirror holds current.
    pub version: u64,
    /// Strictly increasing per mirror: a record with a lower or equal
    /// sequence than one already taken is a replay.
    pub seq: u64,
    /// When it was signed, seconds since the epoch.
    pub issued_at: u64,
    /// When it stops counting, seconds since the epoch.
    pub expires_at: u64,
}

/// A [`MirrorRecord`] with its signer's key and signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMirrorRecord {
    /// The record.
    pub body: MirrorRecord,
    /// The signer's 32-byte ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// ed25519 signature over [`DOMAIN`] followed by `postcard(body)`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why a mirror record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Undecodable, oversized or not canonical bytes.
    #[error("malformed mirror record: {0}")]
    Malformed(String),
    /// A field out of range.
    #[error("mirror record field out of range: {0}")]
    OutOfRange(&'static str),
    /// The signature does not verify under the key it carries.
    #[error("mirror record signature does not verify")]
    BadSignature,
    /// Signed by another key than the record's peer's: someone
    /// advertising a URL in another node's name.
    #[error("mirror record of {peer} signed by {signer}")]
    SignerMismatch {
        /// The peer id the key belongs to.
        signer: String,
        /// The peer id the record names.
        peer: String,
    },
    /// Past its expiry.
    #[error("mirror record expired at {0}")]
    Expired(u64),
    /// Gossiped by another peer than the one it describes: a node gossips
    /// only its own records.
    #[error("mirror record of {peer} gossiped by {author}")]
    NotFromAuthor {
        /// The record's peer.
        peer: String,
        /// Who wrote the gossip message.
        author: String,
    },
    /// Not newer than the record already taken from that mirror.
    #[error("mirror record sequence {seq} is not newer than {known}")]
    Replayed {
        /// The record's sequence.
        seq: u64,
        /// The newest sequence taken.
        known: u64,
    },
}

impl MirrorRecord {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = DOMAIN.to_vec();
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Signs with the node key `key`, which must be the record's peer's
    /// (ed25519, as every peermirror node key is).
    pub fn sign(self, key: &Keypair) -> Option<SignedMirrorRecord> {
        let public = key.public().try_into_ed25519().ok()?.to_bytes().to_vec();
        let signature = key.sign(&self.signing_bytes()).ok()?;
        Some(SignedMirrorRecord {
            body: self,
            key: public,
            signature,
        })
    }

    /// The record's peer id, if its bytes are one.
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.peer).ok()
    }
}

/// Whether `url` is a usable base URL: `http://` or `https://`, a host,
/// no query, fragment, whitespace or control characters, no trailing `/`.
pub fn valid_url(url: &str) -> bool {
    if url.is_empty() || url.len() > MAX_URL || url.ends_with('/') {
        return false;
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '"' | '<' | '>'))
    {
        return false;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
}

/// Whether `region` is a usable label: empty, or up to [`MAX_REGION`]
/// ASCII letters, digits, `-` and `_`.
pub fn valid_region(region: &str) -> bool {
    region.len() <= MAX_REGION
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

impl SignedMirrorRecord {
    /// Wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and [`verify`](Self::verify)s.
    pub fn decode(bytes: &[u8], now: u64) -> Result<Self, RecordError> {
        if bytes.len() > MAX_ENCODED {
            return Err(RecordError::Malformed(format!("{} bytes", bytes.len())));
        }
        let r: SignedMirrorRecord =
            postcard::from_bytes(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if r.encode() != bytes {
            return Err(RecordError::Malformed("not the canonical encoding".into()));
        }
        r.verify(now)?;
        Ok(r)
    }

    /// Checks, in this order: field ranges, that the key is the record's
    /// peer's, the signature, and expiry at `now` (epoch seconds).
    pub fn verify(&self, now: u64) -> Result<(), RecordError> {
        let b = &self.body;
        let Some(peer) = b.peer_id() else {
            return Err(RecordError::OutOfRange("peer"));
        };
        if !valid_url(&b.url) {
            return Err(RecordError::OutOfRange("url"));
        }
        if !valid_region(&b.region) {
            return Err(RecordError::OutOfRange("region"));
        }
        if b.prefer.len() > MAX_PREFIXES || b.prefer.iter().any(|p| p.net().is_none()) {
            return Err(RecordError::OutOfRange("prefer"));
        }
        if b.version == 0 || b.seq == 0 {
            return Err(RecordError::OutOfRange("version"));
        }
        if b.expires_at <= b.issued_at || b.expires_at - b.issued_at > MAX_LIFETIME {
            return Err(RecordError::OutOfRange("expires_at"));
        }
        if b.issued_at > now.saturating_add(MAX_SKEW) {
            return Err(RecordError::OutOfRange("issued_at"));
        }
        let key = ed25519::PublicKey::try_from_bytes(&self.key)
            .map(PublicKey::from)
            .map_err(|_| RecordError::BadSignature)?;
        let signer = key.to_peer_id();
        if signer != peer {
            return Err(RecordError::SignerMismatch {
                signer: signer.to_string(),
                peer: peer.to_string(),
            });
        }
        if !key.verify(&b.signing_bytes(), &self.signature) {
            return Err(RecordError::BadSignature);
        }
        if now >= b.expires_at {
            return Err(RecordError::Expired(b.expires_at));
        }
        Ok(())
    }
}
