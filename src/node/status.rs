//! The state a running node reports through `peermirror status`.

use serde::{Deserialize, Serialize};

/// A node's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// libp2p peer id.
    pub peer_id: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
    /// Chunk bytes sent to peers.
    pub bytes_up: u64,
    /// Chunk bytes received from peers (verified).
    pub bytes_down: u64,
    /// Collections held or followed.
    pub collections: Vec<CollectionStatus>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
}

/// One collection on a node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CollectionStatus {
    /// Collection id (hex).
    pub id: String,
    /// Name.
    pub name: String,
    /// The complete version served.
    pub current: Option<u64>,
    /// A newer version being fetched.
    pub in_progress: Option<u64>,
    /// Bytes of the in-progress version present.
    pub done_bytes: u64,
    /// Bytes of the in-progress version in total.
    pub total_bytes: u64,
    /// Versions held.
    pub versions: Vec<u64>,
    /// Chunk bytes received from peers for this collection.
    pub bytes_down: u64,
}

impl CollectionStatus {
    /// Percent of the in-progress version present (100 when none is in progress).
    pub fn percent(&self) -> f64 {
        if self.in_progress.is_none() || self.total_bytes == 0 {
            100.0
        } else {
            100.0 * self.done_bytes as f64 / self.total_bytes as f64
        }
    }
}

/// One connected peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer id.
    pub id: String,
    /// Addresses of the connections to it.
    pub addrs: Vec<String>,
    /// Last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
}
