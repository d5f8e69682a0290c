//! What one node spends on its peers: the numbers ([`NetLimits`]) and the
//! counters that show them at work ([`ServerStats`]).
//!
//! Anyone can connect, so every resource a peer can make this node hold
//! (connections, streams, memory for replies, request handling) has a bound,
//! per peer where one peer could otherwise starve the rest, and in total.
//! See `docs/security/network.md` for the attack each one answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Resource limits of the network layer. The defaults are those of the
/// `[limits]` settings section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLimits {
    /// Established connections in total (inbound and outbound).
    pub max_connections: u32,
    /// Established inbound connections from one IP address.
    pub max_connections_per_ip: u32,
    /// Inbound chunk streams served at once, all peers together.
    pub max_inbound_streams: usize,
    /// Inbound chunk streams served at once for one peer.
    pub max_inbound_streams_per_peer: usize,
    /// Bytes of replies held in memory while being sent, all peers together.
    pub max_send_buffer: usize,
    /// Bytes of replies held in memory while being sent to one peer.
    pub max_send_buffer_per_peer: usize,
    /// Time allowed to send one reply (or to receive the rest of a request
    /// once it has begun): a peer that stops reading loses the stream.
    pub send_timeout: Duration,
    /// Chunk-protocol requests per second per peer (bursts of twice that);
    /// 0: unlimited.
    pub chunk_requests_per_sec: u32,
    /// Latest-announcement requests per second per peer (bursts of twice
    /// that); 0: unlimited.
    pub latest_requests_per_sec: u32,
    /// Latest-announcement requests in flight per connection, each way.
    pub latest_in_flight: usize,
    /// How long to wait for a peer's answer to a latest-announcement request.
    pub latest_timeout: Duration,
    /// Chunk bytes sent per second, all peers together, shared fairly
    /// between the peers downloading (see [`super::caps`]); 0: unlimited.
    pub upload_rate: u64,
    /// Chunk bytes taken from peers per second, all together; 0: unlimited.
    pub download_rate: u64,
    /// Distinct peers connected at once; 0: only `max_connections` applies.
    pub max_peers: u32,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_connections: 256,
            max_connections_per_ip: 16,
            max_inbound_streams: 1024,
            max_inbound_streams_per_peer: 64,
            max_send_buffer: 256 << 20,
            max_send_buffer_per_peer: 32 << 20,
            send_timeout: Duration::from_secs(30),
            chunk_requests_per_sec: 2000,
            latest_requests_per_sec: 20,
            latest_in_flight: 8,
            latest_timeout: Duration::from_secs(10),
            upload_rate: 0,
            download_rate: 0,
            max_peers: 0,
        }
    }
}

/// Counters of the serving side, read by [`super::Client::server_stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) buffered: AtomicU64,
    pub(crate) peak_buffered: AtomicU64,
    pub(crate) streams: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
    pub(crate) requests_refused: AtomicU64,
    pub(crate) send_timeouts: AtomicU64,
    pub(crate) latest_refused: AtomicU64,
    pub(crate) gossip_shed: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            buffered_bytes: get(&self.buffered),
            peak_buffered_bytes: get(&self.peak_buffered),
            open_streams: get(&self.streams),
            streams_refused: get(&self.streams_refused),
            requests_refused: get(&self.requests_refused),
            send_timeouts: get(&self.send_timeouts),
            latest_refused: get(&self.latest_refused),
            gossip_shed: get(&self.gossip_shed),
        }
    }
}

/// Bytes counted in [`Counters::buffered`] while this guard lives.
pub(crate) struct Held<'a> {
    counters: &'a Counters,
    bytes: u64,
}

impl<'a> Held<'a> {
    pub(crate) fn new(counters: &'a Counters, bytes: usize) -> Self {
        let bytes = bytes as u64;
        let now = counters.buffered.fetch_add(bytes, Ordering::Relaxed) + bytes;
        counters.peak_buffered.fetch_max(now, Ordering::Relaxed);
        Held { counters, bytes }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.counters
            .buffered
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What the serving side of a node is doing and has refused, so operators
/// and tests can see the limits at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Bytes of replies (chunk bodies, have-maps, chunk lists) held in memory
    /// right now, waiting to be sent.
    pub buffered_bytes: u64,
    /// The most [`Self::buffered_bytes`] has ever been.
    pub peak_buffered_bytes: u64,
    /// Inbound chunk streams being served.
    pub open_streams: u64,
    /// Inbound chunk streams dropped at once: too many for the peer or in total.
    pub streams_refused: u64,
    /// Chunk requests refused because the peer exceeded its rate.
    pub requests_refused: u64,
    /// Streams dropped because a reply could not be sent in time.
    pub send_timeouts: u64,
    /// Latest-announcement requests refused because the peer exceeded its rate.
    pub latest_refused: u64,
    /// Low-priority gossip messages ignored because the application was
    /// busy, to keep room for the others.
    pub gossip_shed: u64,
}
