//! What `peermirror status` reports, the same shape whether a running node
//! answers or the store is opened directly (then `node` is `None`).

use serde::{Deserialize, Serialize};

/// The state of a store and, if one runs on it, its node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// The data directory.
    pub data: String,
    /// The running node, if the status came from one.
    pub node: Option<NodeInfo>,
    /// Collections held or followed.
    pub collections: Vec<CollectionStatus>,
    /// Store totals.
    pub store: StoreTotals,
}

/// A running node's network side.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
    /// Chunk bytes sent to peers.
    pub bytes_up: u64,
    /// Chunk bytes received from peers (verified).
    pub bytes_down: u64,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Whether peers can dial this node: `public`, `private` (behind NAT)
    /// or `unknown` (AutoNAT has not concluded).
    #[serde(default)]
    pub reachability: String,
    /// Confirmed external addresses (configured, found by AutoNAT or UPnP,
    /// or relayed through the relay it holds a slot on).
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// The relay it holds a slot on, if any.
    #[serde(default)]
    pub relay: Option<String>,
    /// Peers remembered from earlier connections (saved across restarts).
    #[serde(default)]
    pub known_peers: usize,
    /// The volunteer caps and the chunk rates right now.
    #[serde(default)]
    pub caps: CapsStatus,
}

/// What a node donates ([`crate::config::LimitsSettings`]) and what it is
/// moving now, so an operator sees whether the caps are what limits it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CapsStatus {
    /// Chunk bytes per second sent to peers at most (0: unlimited).
    pub upload_cap: u64,
    /// Chunk bytes per second taken from peers at most (0: unlimited).
    pub download_cap: u64,
    /// Distinct peers connected at most (0: only the connection limit).
    pub max_peers: u32,
    /// Chunk bytes per second sent over the last few seconds.
    pub upload_rate: f64,
    /// Chunk bytes per second received over the last few seconds.
    pub download_rate: f64,
}

/// Store totals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoreTotals {
    /// Chunks indexed.
    pub chunks: u64,
    /// Bytes of chunk bodies indexed.
    pub chunk_bytes: u64,
    /// Bytes the segment files occupy on disk.
    pub disk_bytes: u64,
}

/// One collection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CollectionStatus {
    /// Collection id (hex).
    pub id: String,
    /// Name.
    pub name: String,
    /// The complete version served.
    pub current: Option<VersionInfo>,
    /// The newest version accepted (may still be fetched).
    pub accepted: Option<u64>,
    /// A newer version being fetched right now (running node only).
    pub in_progress: Option<u64>,
    /// Bytes of the in-progress version present.
    pub done_bytes: u64,
    /// Bytes of the in-progress version in total.
    pub total_bytes: u64,
    /// Versions held, oldest first.
    pub versions: Vec<u64>,
    /// Chunk bytes received from peers for this collection (running node only).
    pub bytes_down: u64,
    /// How fresh the newest accepted announcement is: `Expired` means peers
    /// no longer act on it until the master publishes again.
    #[serde(default)]
    pub freshness: Option<crate::announce::Freshness>,
    /// When the newest accepted announcement expires (epoch seconds).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// A newer version the node does not fetch, and why (running node only).
    #[serde(default)]
    pub refused: Option<Refused>,
    /// Whether it is in the followed set (followed at every start).
    #[serde(default)]
    pub followed: bool,
    /// Unfollowed: the next gc drops its versions.
    #[serde(default)]
    pub unfollowed: bool,
    /// A partial mirror's paths (empty: the whole collection).
    #[serde(default)]
    pub partial: Vec<String>,
}

/// A version a node will not fetch: over the store quota (refused until the
/// quota or the store changes), or not enough disk space (retried).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refused {
    /// The version.
    pub version: u64,
    /// Why, for people.
    pub reason: String,
}

/// The current version of a collection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// Files in it.
    pub files: u64,
    /// Bytes of its files.
    pub bytes: u64,
    /// When the master published it (epoch seconds).
    pub published_at: u64,
    /// When its announcement expires (epoch seconds).
    pub expires_at: u64,
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
    /// The path bulk data takes: `direct`, `relayed` or `hole-punched`.
    #[serde(default)]
    pub path: String,
}
