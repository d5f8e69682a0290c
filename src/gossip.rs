//! Messages on a collection's gossip topic (`peermirror/v1/collection/<hex>`).
//!
//! Three kinds, postcard-encoded, at most [`MAX_MESSAGE`] bytes:
//! - `Announce`: a signed announcement (see [`crate::announce`]). A node
//!   forwards it only after checking the master signature, the field ranges
//!   and that it is newer than what it accepted; a bad signature or
//!   malformed bytes make it reject the message (penalising the sender).
//! - `Have`: "this node now holds version N complete", a hint that a peer's
//!   have-map grew; it carries nothing to trust.
//! - `Mirror`: a signed mirror record (see [`crate::mirrors::record`]):
//!   "this node serves the topic's collection over HTTP at this URL".
//!
//! A message of a kind this node does not know ([`GossipError::UnknownKind`])
//! is ignored rather than rejected, so newer nodes can add kinds without
//! older ones penalising them.

use serde::{Deserialize, Serialize};

use crate::announce::SignedAnnouncement;

/// Largest gossip message accepted (gossipsub's own limit is 64 KiB).
pub const MAX_MESSAGE: usize = 8192;

/// How many kinds of message this version knows (postcard variant indices
/// 0..KINDS).
const KINDS: u32 = 3;

/// Gossip bytes that cannot be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GossipError {
    /// Larger than [`MAX_MESSAGE`].
    #[error("{0} byte gossip message")]
    Oversized(usize),
    /// A kind added by a newer version.
    #[error("gossip message of unknown kind {0}")]
    UnknownKind(u32),
    /// Not a canonical postcard `GossipMessage`.
    #[error("malformed gossip message: {0}")]
    Malformed(String),
}

/// One gossip message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMessage {
    /// A signed announcement, as encoded by [`SignedAnnouncement::encode`].
    Announce(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The sender holds this version complete.
    Have {
        /// The version.
        version: u64,
        /// The holder's peer id (bytes), which also keeps notes of different
        /// holders distinct under content-hash message ids.
        #[serde(with = "serde_bytes")]
        holder: Vec<u8>,
    },
    /// A signed mirror record, as encoded by
    /// [`crate::mirrors::SignedMirrorRecord::encode`].
    Mirror(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl GossipMessage {
    /// Wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes, refusing oversized, malformed or unknown bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, GossipError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(GossipError::Oversized(bytes.len()));
        }
        // The variant index leads as a varint: look at it first, so a kind
        // from a newer version is told apart from garbage.
        let (kind, _) = postcard::take_from_bytes::<u32>(bytes)
            .map_err(|e| GossipError::Malformed(e.to_string()))?;
        if kind >= KINDS {
            return Err(GossipError::UnknownKind(kind));
        }
        let m: GossipMessage =
            postcard::from_bytes(bytes).map_err(|e| GossipError::Malformed(e.to_string()))?;
        if m.encode() != bytes {
            return Err(GossipError::Malformed("not the canonical encoding".into()));
        }
        Ok(m)
    }

    /// An `Announce` message.
    pub fn announce(a: &SignedAnnouncement) -> Self {
        GossipMessage::Announce(a.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// protocol.md 9.6: a `Have` note of the node key with secret seed 42 x 32.
    #[test]
    fn have_note_test_vector() {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([42u8; 32]).unwrap();
        let peer = key.public().to_peer_id();
        let m = GossipMessage::Have {
            version: 3,
            holder: peer.to_bytes(),
        };
        let bytes = m.encode();
        assert_eq!(
            peer.to_string(),
            "12D3KooWBXu3uGPMkjjxViK6autSnFH5QaKJgTwW8CaSxYSD6yYL"
        );
        assert_eq!(
            hex::encode(&bytes),
            "010326002408011220197f6b23e16c8532c6abc838facd5ea789be0c76b292033403\
             9bfa8b3d368d61"
                .replace(' ', "")
        );
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            "fefc9e4142d088e117ab8f64d4775d5e251126e04e4e625f4ea2d1f4a19919e3"
        );
        assert_eq!(GossipMessage::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn round_trip_and_malformed() {
        for m in [
            GossipMessage::Announce(vec![1, 2, 3]),
            GossipMessage::Have {
                version: 7,
                holder: vec![1, 2],
            },
            GossipMessage::Mirror(vec![4, 5]),
        ] {
            assert_eq!(GossipMessage::decode(&m.encode()).unwrap(), m);
        }
        assert_eq!(
            GossipMessage::decode(&[9, 9]),
            Err(GossipError::UnknownKind(9))
        );
        assert!(matches!(
            GossipMessage::decode(&[1, 0xff]),
            Err(GossipError::Malformed(_))
        ));
        assert!(matches!(
            GossipMessage::decode(&[]),
            Err(GossipError::Malformed(_))
        ));
        let mut trailing = GossipMessage::Have {
            version: 1,
            holder: vec![],
        }
        .encode();
        trailing.push(0);
        assert!(GossipMessage::decode(&trailing).is_err());
        assert_eq!(
            GossipMessage::decode(&vec![0; MAX_MESSAGE + 1]),
            Err(GossipError::Oversized(MAX_MESSAGE + 1))
        );
    }
}
