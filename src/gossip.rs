//! Messages on a collection's gossip topic (`peermirror/v1/collection/<hex>`).
//!
//! Two kinds, postcard-encoded, at most [`MAX_MESSAGE`] bytes:
//! - `Announce`: a signed announcement (see [`crate::announce`]). A node
//!   forwards it only after checking the master signature, the field ranges
//!   and that it is newer than what it accepted; a bad signature or
//!   malformed bytes make it reject the message (penalising the sender).
//! - `Have`: "this node now holds version N complete", a hint that a peer's
//!   have-map grew; it carries nothing to trust.

use serde::{Deserialize, Serialize};

use crate::announce::{AnnounceError, SignedAnnouncement};

/// Largest gossip message accepted (gossipsub's own limit is 64 KiB).
pub const MAX_MESSAGE: usize = 8192;

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
}

impl GossipMessage {
    /// Wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes, refusing oversized or malformed bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, AnnounceError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(AnnounceError::Malformed(format!(
                "{} byte gossip message",
                bytes.len()
            )));
        }
        let m: GossipMessage =
            postcard::from_bytes(bytes).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        if m.encode() != bytes {
            return Err(AnnounceError::Malformed(
                "not the canonical encoding".into(),
            ));
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

    #[test]
    fn round_trip_and_malformed() {
        for m in [
            GossipMessage::Announce(vec![1, 2, 3]),
            GossipMessage::Have {
                version: 7,
                holder: vec![1, 2],
            },
        ] {
            assert_eq!(GossipMessage::decode(&m.encode()).unwrap(), m);
        }
        assert!(GossipMessage::decode(&[9, 9]).is_err());
        let mut trailing = GossipMessage::Have {
            version: 1,
            holder: vec![],
        }
        .encode();
        trailing.push(0);
        assert!(GossipMessage::decode(&trailing).is_err());
        assert!(GossipMessage::decode(&vec![0; MAX_MESSAGE + 1]).is_err());
    }
}
