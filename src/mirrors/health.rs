//! Health checks of mirrors: an HTTP probe of `<url>/.well-known/peermirror`
//! that must answer 200 with JSON naming the record's own peer id (so a
//! URL that points at some other server does not pass), within
//! [`PROBE_TIMEOUT`]. Results are cached: a healthy answer for
//! [`HEALTHY_TTL`]; a failure marks the mirror dead, and it stays skipped
//! until a later probe (the node's background round, every
//! [`super::REFRESH`]) finds it answering again.
//!
//! Probes go only to URLs from verified records, only to that one path,
//! follow no redirects and read at most [`MAX_STATUS_BODY`] bytes. Only
//! `http://` URLs are probed (the node has no TLS client); an `https://`
//! mirror counts as healthy while this node is connected to it over
//! libp2p and has measured its ping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use libp2p::PeerId;

use crate::task::lock;

/// Deadline for one probe: connect, request, whole answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a healthy answer counts.
pub const HEALTHY_TTL: Duration = Duration::from_secs(30);
/// Largest status document read.
pub const MAX_STATUS_BODY: usize = 1 << 20;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not an `http://` URL this node can probe.
    #[error("cannot probe {0}")]
    Unsupported(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or talking HTTP failed.
    #[error("{0}")]
    Io(String),
    /// An answer, but not a 200.
    #[error("status {0}")]
    Status(u16),
    /// A 200, but not a peermirror status of the record's peer.
    #[error("answered as {0}")]
    WrongPeer(String),
}

/// What is known of a mirror's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Answered lately, in this round-trip time.
    Healthy(Duration),
    /// Failed its last probe: skipped until one succeeds.
    Dead,
    /// Never probed, or the last answer is too old: probe before use.
    Unknown,
}

#[derive(Clone, Debug)]
struct Entry {
    url: String,
    rtt: Option<Duration>,
    at: Instant,
}

/// Cached probe results and ping round-trip times, per mirror.
#[derive(Default)]
pub struct Health {
    probes: Mutex<HashMap<PeerId, Entry>>,
    pings: Mutex<HashMap<PeerId, Duration>>,
}

impl Health {
    /// What is known of `peer` serving at `url`, at `now`.
    pub fn state(&self, peer: &PeerId, url: &str, now: Instant) -> State {
        match lock(&self.probes).get(peer) {
            Some(e) if e.url == url => match e.rtt {
                None => State::Dead,
                Some(rtt) if now.duration_since(e.at) < HEALTHY_TTL => State::Healthy(rtt),
                Some(_) => State::Unknown,
            },
            _ => State::Unknown,
        }
    }

    /// Records a probe result.
    pub fn record(&self, peer: PeerId, url: &str, result: &Result<Duration, ProbeError>) {
        let rtt = result.as_ref().ok().copied();
        lock(&self.probes).insert(
            peer,
            Entry {
                url: url.to_string(),
                rtt,
                at: Instant::now(),
            },
        );
    }

    /// Forgets what is known of `peer` (its libp2p connection closed: it
    /// may have stopped), so it is probed again before it is used.
    pub fn forget(&self, peer: &PeerId) {
        lock(&self.probes).remove(peer);
    }

    /// Replaces the ping round-trip times of connected peers.
    pub fn set_pings(&self, pings: HashMap<PeerId, Duration>) {
        *lock(&self.pings) = pings;
    }

    /// The libp2p ping round-trip time of `peer`, if connected.
    pub fn ping(&self, peer: &PeerId) -> Option<Duration> {
        lock(&self.pings).get(peer).copied()
    }

    /// Whether `peer`'s last probe is older than `age` (or missing).
    pub fn older_than(&self, peer: &PeerId, url: &str, age: Duration, now: Instant) -> bool {
        lock(&self.probes)
            .get(peer)
            .is_none_or(|e| e.url != url || now.duration_since(e.at) >= age)
    }
}

/// Aborts a spawned task when dropped (a probe's connection driver).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes `base` (a record's URL): `GET <base>/.well-known/peermirror`,
/// which must answer 200 with a status naming `expect`. Returns the time
/// to the answer's headers.
pub async fn probe(base: &str, expect: &PeerId) -> Result<Duration, ProbeError> {
    let uri: http::Uri = format!("{base}{}", crate::http::STATUS_PATH)
        .parse()
        .map_err(|_| ProbeError::Unsupported(base.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(ProbeError::Unsupported(base.to_string()));
    }
    let (Some(host), Some(authority)) = (uri.host(), uri.authority().cloned()) else {
        return Err(ProbeError::Unsupported(base.to_string()));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let start = Instant::now();
    let io = |e: &dyn std::fmt::Display| ProbeError::Io(e.to_string());
    let work = async {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| io(&e))?
            .next()
            .ok_or_else(|| ProbeError::Io(format!("{host}: no address")))?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| io(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let req = http::Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::USER_AGENT, "peermirror-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| io(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| io(&e))?;
        let rtt = start.elapsed();
        if resp.status() != http::StatusCode::OK {
            return Err(ProbeError::Status(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_STATUS_BODY)
            .collect()
            .await
            .map_err(|e| io(&e))?
            .to_bytes();
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ProbeError::WrongPeer(e.to_string()))?;
        let id = v["node"]["peer_id"].as_str().unwrap_or("nobody");
        if id != expect.to_string() {
            return Err(ProbeError::WrongPeer(id.to_string()));
        }
        Ok(rtt)
    };
    tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .map_err(|_| ProbeError::Timeout(PROBE_TIMEOUT))?
}
