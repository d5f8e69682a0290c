//! Fetching a version from peers: the manifest first, then every chunk the
//! store lacks, from whichever peers hold it, many requests in flight.
//!
//! Peers are chosen per chunk: rarest chunk first across the swarm (from
//! have-maps refreshed every 250 ms while a download runs), and for each
//! chunk the holder expected to answer soonest (requests queued there times
//! its recent response time, then RTT). The last requests are duplicated on
//! a second holder (endgame). Every chunk is hashed before it is stored; a
//! peer that sends bytes that do not hash to what was asked is banned for
//! the rest of the download.
//!
//! # Layout
//!
//! - `scheduler`: the decisions, as a state machine without I/O or clock:
//!   events in, actions out (which chunk from which peer, when to refresh
//!   have-maps, when to write, when done).
//! - `peers`: what the scheduler knows of each peer (have-map, requests in
//!   flight, response time, RTT, failures, bench and ban).
//! - `driver`: [`fetch_chunks`], the I/O: runs the scheduler's actions on
//!   the network, the blocking pool and the store, and reports back.
//! - `manifest`: [`fetch_manifest`], the chunk list first, then the chunks.

mod driver;
mod manifest;
mod peers;
mod scheduler;

use std::sync::atomic::AtomicU64;

use crate::hash::Hash;
use crate::store::StoreError;

pub use driver::fetch_chunks;
pub use manifest::fetch_manifest;
pub use peers::MAX_PER_PEER;
pub use scheduler::MAX_TOTAL;

/// Why a download stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The store failed (disk full, ...): local, retrying will not help until fixed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No peer could provide the manifest.
    #[error("no peer provided manifest {0}")]
    ManifestUnavailable(Hash),
    /// The caller asked to stop (a newer version arrived, or shutdown).
    #[error("download cancelled")]
    Cancelled,
}

/// Counters a download updates, read by `status` and progress bars.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the version's files already present.
    pub done_bytes: AtomicU64,
    /// Bytes of the version's files.
    pub total_bytes: AtomicU64,
    /// Bytes received from peers (verified), all downloads together.
    pub bytes_down: AtomicU64,
}
