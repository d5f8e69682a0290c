//! Fetching a version from peers: the manifest first, then every chunk the
//! store lacks, from whichever peers hold it, many chunks per request.
//!
//! Peers tell what they hold as bitmaps over the manifest's chunk order and
//! push the chunks they add while they download, so a mirror that is itself
//! downloading is used as soon as it holds something, and no one is asked
//! about every id. Each chunk goes to the holder expected to deliver it
//! soonest (measured latency and throughput, bytes queued there), rarest
//! first, with as many bytes in flight per peer as its bandwidth-delay
//! product calls for; a peer holding everything (the source) is the holder
//! of last resort. The last requests are duplicated on a second holder
//! (endgame). Every chunk is hashed before it is stored; a peer that sends
//! bytes that do not hash to what was asked is banned for the rest of the
//! download.
//!
//! # Layout
//!
//! - `scheduler`: the decisions, as a state machine without I/O or clock:
//!   events in, actions out (which chunks from which peer, when to refresh
//!   the peer list, when to write, when done); its work per event does not
//!   grow with the number of chunks.
//! - `peers`: what the scheduler knows of each peer (have-map, requests in
//!   flight, latency, throughput, window, failures, bench).
//! - `order`: a manifest's chunk order, and [`Wanted`], what a download
//!   fetches.
//! - `driver`: [`fetch_chunks`], the I/O: runs the scheduler's actions on
//!   the network, the blocking pool and the store, and reports back.
//! - `manifest`: [`fetch_manifest`], the chunk list first, then the chunks.
//!
//! A partial mirror fetches the chunks of some files only: the caller
//! chooses them with [`needed_files`] (the files a path filter keeps)
//! before the download starts.
//!
//! What a peer does wrong is reported to a [`PeerAccounting`] the caller
//! owns (the node keeps one for its whole life and bans repeat offenders),
//! and peers it bans are left out of every download.

mod driver;
mod manifest;
mod order;
mod peers;
mod scheduler;

use std::sync::atomic::AtomicU64;

use libp2p::PeerId;

use crate::hash::Hash;
use crate::store::StoreError;

pub use crate::filter::{needed_bytes, needed_files};
pub use driver::fetch_chunks;
pub use manifest::fetch_manifest;
pub use order::{chunk_order, have_map, Wanted};
pub use peers::{MAX_WINDOW, MIN_WINDOW};

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
    /// A chunk arrived with the right hash but not the length its list
    /// gave: the list (a peer's manifest chunk list) is false.
    #[error("chunk {id} is {actual} bytes, not the {listed} listed")]
    WrongLength {
        /// The chunk.
        id: Hash,
        /// The length listed.
        listed: u32,
        /// The length it has.
        actual: usize,
    },
}

/// Something a peer did wrong during a download, as reported to a
/// [`PeerAccounting`]. Only what an honest peer would not do: slowness is
/// not an offence (a slow request is asked elsewhere, not held against
/// the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offence {
    /// Sent bytes that do not hash to the chunk asked for.
    WrongBytes,
    /// Sent a manifest chunk list that is false (lengths or ids that do not
    /// reassemble the announced manifest, or chunks no one can provide).
    FalseList,
    /// Answered NotFound for a chunk its have-map claimed.
    FalseHave,
    /// Let a request run to its timeout without answering.
    Stall,
    /// Sent a frame that breaks the protocol.
    Malformed,
}

/// Where a download reports offences and learns which peers to avoid: the
/// node keeps one over its lifetime and hands it to every download, so a
/// liar's record follows it from one version to the next.
pub trait PeerAccounting: Send + Sync {
    /// `peer` committed `offence`.
    fn offence(&self, peer: PeerId, offence: Offence);
    /// Whether `peer` is banned (then it is asked nothing).
    fn is_banned(&self, peer: &PeerId) -> bool;
    /// `peer` delivered a chunk that hashed right (for per-peer counts).
    fn delivered(&self, _peer: PeerId) {}
}

/// Accounting that keeps nothing, for downloads run outside a node.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAccounting;

impl PeerAccounting for NoAccounting {
    fn offence(&self, _: PeerId, _: Offence) {}
    fn is_banned(&self, _: &PeerId) -> bool {
        false
    }
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
    /// Chunks the current (or last) download fetched and stored.
    pub done_chunks: AtomicU64,
    /// Chunks the current (or last) download had to fetch.
    pub total_chunks: AtomicU64,
}
