//! Content identifiers: the blake3 hash of some bytes.
//!
//! Chunks and manifests are named by the hash of their bytes, so anything
//! fetched from anywhere can be checked against the name it was asked for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 32-byte blake3 hash naming a chunk or a manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, the form used on the command line and in logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, for human output.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

/// A set of chunk ids kept by their first 16 bytes: a million ids take about
/// 20 MB instead of 70 MB or more as whole ids in a `HashSet<Hash>`. Two
/// distinct ids sharing 128 bits count as one, so a caller uses it only
/// where that errs the safe way (see the callers).
#[derive(Default)]
pub(crate) struct IdPrefixSet(std::collections::HashSet<u128>);

impl IdPrefixSet {
    /// Sized for `n` ids.
    pub(crate) fn with_capacity(n: usize) -> IdPrefixSet {
        IdPrefixSet(std::collections::HashSet::with_capacity(n.min(1 << 24)))
    }

    fn key(id: &Hash) -> u128 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&id.0[..16]);
        u128::from_le_bytes(b)
    }

    /// Whether `id` is new (and remembers it).
    pub(crate) fn insert(&mut self, id: &Hash) -> bool {
        self.0.insert(Self::key(id))
    }

    /// Whether `id` (or an id with its first 16 bytes) is in the set.
    pub(crate) fn contains(&self, id: &Hash) -> bool {
        self.0.contains(&Self::key(id))
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a 64-digit hex hash: {0:?}")]
pub struct ParseHashError(pub String);

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseHashError(s.to_string()))?;
        Ok(Hash(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"peermirror");
        let parsed: Hash = h.to_hex().parse().unwrap();
        assert_eq!(parsed, h);
        assert_eq!(h.short().len(), 8);
        assert!("xyz".parse::<Hash>().is_err());
        assert!(h.to_hex()[..62].parse::<Hash>().is_err());
    }
}
