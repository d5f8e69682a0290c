//! Prometheus metrics: one registry per node, served at `/metrics` on the
//! HTTP listener in the OpenMetrics text format.
//!
//! [`Metrics`] owns the registry and every metric handle; the rest of the
//! code holds a clone (one `Arc`) and records through its methods. What
//! happens on hot paths (a response's body bytes, a chunk fetched from a
//! peer) is an atomic add on a counter found without allocating; what
//! describes state (sync progress, versions, announcement expiry, bytes
//! moved to and from peers) is sampled once per scrape from the node through
//! the [`Source`] it installs, so it costs nothing between scrapes.
//!
//! libp2p's own metrics (swarm, gossipsub, identify, ping, Kademlia),
//! recorded by the network event loop, live in the same registry under the
//! `libp2p_` prefix; ours are under `peermirror_`. docs/metrics.md lists
//! every metric.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use libp2p::PeerId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::sync::Offence;
use crate::task::lock;

/// The media type of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Peers with a chunk counter of their own; chunks from further peers are
/// counted under `peer="other"` until a scrape forgets disconnected ones.
pub const MAX_PEER_LABELS: usize = 512;

/// Something that went wrong, counted in `peermirror_errors_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// An HTTP request failed on a store error (answered 503).
    HttpStore,
    /// An HTTP response body was cut short (a chunk could not be read).
    HttpAborted,
    /// A stored chunk failed its hash when read for HTTP.
    CorruptChunk,
    /// A sync attempt failed and will be retried.
    SyncFailed,
    /// A sync waits for disk space.
    DiskFull,
    /// A peer sent bytes that do not hash to the chunk asked for.
    PeerWrongBytes,
    /// A peer sent a false manifest chunk list.
    PeerFalseList,
    /// A peer lacked a chunk its have-map claimed.
    PeerFalseHave,
    /// A peer let a request time out.
    PeerStall,
    /// A peer broke the chunk protocol.
    PeerMalformed,
}

impl Fault {
    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::HttpStore => "http_store",
            Fault::HttpAborted => "http_aborted",
            Fault::CorruptChunk => "corrupt_chunk",
            Fault::SyncFailed => "sync_failed",
            Fault::DiskFull => "disk_full",
            Fault::PeerWrongBytes => "peer_wrong_bytes",
            Fault::PeerFalseList => "peer_false_list",
            Fault::PeerFalseHave => "peer_false_have",
            Fault::PeerStall => "peer_stall",
            Fault::PeerMalformed => "peer_malformed",
        }
    }
}

impl From<Offence> for Fault {
    fn from(o: Offence) -> Self {
        match o {
            Offence::WrongBytes => Fault::PeerWrongBytes,
            Offence::FalseList => Fault::PeerFalseList,
            Offence::FalseHave => Fault::PeerFalseHave,
            Offence::Stall => Fault::PeerStall,
            Offence::Malformed => Fault::PeerMalformed,
        }
    }
}

impl EncodeLabelValue for Fault {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.as_str())
    }
}

/// A peer id as a label value, encoded only when scraped (`None`: the
/// `other` bucket past [`MAX_PEER_LABELS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PeerValue(Option<PeerId>);

impl EncodeLabelValue for PeerValue {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(p) => e.write_str(&p.to_base58()),
            None => e.write_str("other"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    peer: PeerValue,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: Fault,
}

/// The node's state as one scrape sees it (filled by the [`Source`]).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the epoch when sampled.
    pub now: u64,
    /// Every collection held or followed.
    pub collections: Vec<CollectionSample>,
    /// Chunk bytes sent to peers (the chunk protocol's server side).
    pub p2p_sent_bytes: u64,
    /// Verified chunk bytes received from peers.
    pub p2p_received_bytes: u64,
    /// Peers connected now (per-peer counters of others are dropped).
    pub peers: Vec<PeerId>,
}

/// One collection's versions and sync progress.
#[derive(Clone, Debug, Default)]
pub struct CollectionSample {
    /// Collection id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The version served, if any.
    pub current: Option<u64>,
    /// The newest version accepted (announced and verified).
    pub latest: Option<u64>,
    /// When the newest accepted version was published (epoch seconds).
    pub latest_published_at: Option<u64>,
    /// When the newest accepted announcement expires (epoch seconds).
    pub latest_expires_at: Option<u64>,
    /// The version being fetched, if any.
    pub in_progress: Option<u64>,
    /// Bytes of the version being (or last) fetched already present.
    pub done_bytes: u64,
    /// Bytes of that version.
    pub total_bytes: u64,
    /// Chunks that sync fetched and stored so far.
    pub done_chunks: u64,
    /// Chunks that sync had to fetch.
    pub total_chunks: u64,
}

/// Produces a [`Sample`] at each scrape (`None`: sampling failed; the
/// last sample is served again).
pub type Source =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Sample>> + Send>> + Send + Sync>;

/// A cheap, cloneable handle on the node's metrics.
#[derive(Clone)]
pub struct Metrics {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

struct Shared {
    registry: Registry,
    libp2p: Arc<libp2p::metrics::Metrics>,
    http_requests: Family<CodeLabels, Counter>,
    http_sent_bytes: Counter,
    http_connections: Gauge,
    http_refused: Counter,
    chunks_fetched: Family<PeerLabels, Counter>,
    /// The peers with a label in `chunks_fetched`, so a scrape can drop
    /// those no longer connected.
    labelled: Mutex<HashSet<PeerId>>,
    errors: Family<KindLabels, Counter>,
    sampled: Arc<Sampled>,
    source: OnceLock<Source>,
    /// One scrape at a time, so samples are not interleaved.
    scrape: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let libp2p = Arc::new(libp2p::metrics::Metrics::new(&mut registry));
        let http_requests = Family::<CodeLabels, Counter>::default();
        let http_sent_bytes = Counter::default();
        let http_connections = Gauge::default();
        let http_refused = Counter::default();
        let chunks_fetched = Family::<PeerLabels, Counter>::default();
        let errors = Family::<KindLabels, Counter>::default();
        let sampled = Arc::new(Sampled::default());
        let r = registry.sub_registry_with_prefix("peermirror");
        r.register(
            "http_requests",
            "HTTP responses by status code",
            http_requests.clone(),
        );
        r.register(
            "http_sent_bytes",
            "HTTP response body bytes sent (all responses)",
            http_sent_bytes.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open now",
            http_connections.clone(),
        );
        r.register(
            "http_refused_connections",
            "HTTP connections closed at once because max_connections were open",
            http_refused.clone(),
        );
        r.register(
            "p2p_fetched_chunks",
            "Verified chunks fetched from each connected peer (reset when it disconnects)",
            chunks_fetched.clone(),
        );
        r.register("errors", "Things that went wrong, by kind", errors.clone());
        r.register_collector(Box::new(sampled.clone()));
        Metrics {
            shared: Arc::new(Shared {
                registry,
                libp2p,
                http_requests,
                http_sent_bytes,
                http_connections,
                http_refused,
                chunks_fetched,
                labelled: Mutex::new(HashSet::new()),
                errors,
                sampled,
                source: OnceLock::new(),
                scrape: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// libp2p's recorders, for the event loop.
    pub fn libp2p(&self) -> Arc<libp2p::metrics::Metrics> {
        self.shared.libp2p.clone()
    }

    /// Installs what samples the node's state at each scrape (once; later
    /// calls are ignored).
    pub fn set_source(&self, source: Source) {
        let _ = self.shared.source.set(source);
    }

    /// Counts one HTTP response.
    pub fn http_response(&self, status: http::StatusCode) {
        self.shared
            .http_requests
            .get_or_create(&CodeLabels {
                code: status.as_u16(),
            })
            .inc();
    }

    /// The counter of HTTP body bytes, for a body to add to as it sends.
    pub fn http_sent_bytes(&self) -> Counter {
        self.shared.http_sent_bytes.clone()
    }

    /// An HTTP connection opened (`true`) or closed.
    pub fn http_connection(&self, open: bool) {
        if open {
            self.shared.http_connections.inc();
        } else {
            self.shared.http_connections.dec();
        }
    }

    /// An HTTP connection was refused for being over the cap.
    pub fn http_refused(&self) {
        self.shared.http_refused.inc();
    }

    /// Counts a verified chunk received from `peer`.
    pub fn chunk_fetched(&self, peer: PeerId) {
        let s = &self.shared;
        let label = PeerLabels {
            peer: PeerValue(Some(peer)),
        };
        if let Some(c) = s.chunks_fetched.get(&label) {
            c.inc();
            return;
        }
        let label = {
            let mut known = lock(&s.labelled);
            if known.len() < MAX_PEER_LABELS {
                known.insert(peer);
                label
            } else {
                PeerLabels {
                    peer: PeerValue(None),
                }
            }
        };
        s.chunks_fetched.get_or_create(&label).inc();
    }

    /// Drops `peer`'s chunk counter (it disconnected).
    pub fn forget_peer(&self, peer: &PeerId) {
        let s = &self.shared;
        if lock(&s.labelled).remove(peer) {
            s.chunks_fetched.remove(&PeerLabels {
                peer: PeerValue(Some(*peer)),
            });
        }
    }

    /// Counts one thing gone wrong.
    pub fn error(&self, kind: Fault) {
        self.shared.errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// How many times `kind` went wrong so far.
    pub fn errors(&self, kind: Fault) -> u64 {
        self.shared
            .errors
            .get(&KindLabels { kind })
            .map_or(0, |c| c.get())
    }

    /// Samples the node (if a source is installed) and encodes every
    /// metric, ours and libp2p's, as OpenMetrics text.
    pub async fn render(&self) -> String {
        let s = &self.shared;
        let _one = s.scrape.lock().await;
        if let Some(source) = s.source.get() {
            if let Some(sample) = source().await {
                self.keep_peers(&sample.peers);
                *lock(&s.sampled.0) = sample;
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Drops the chunk counters of peers not in `connected`.
    fn keep_peers(&self, connected: &[PeerId]) {
        let connected: HashSet<&PeerId> = connected.iter().collect();
        let gone: Vec<PeerId> = lock(&self.shared.labelled)
            .iter()
            .filter(|p| !connected.contains(p))
            .copied()
            .collect();
        for p in gone {
            self.forget_peer(&p);
        }
    }
}

/// The last [`Sample`], encoded at each scrape.
#[derive(Debug, Default)]
struct Sampled(Mutex<Sample>);

/// Labels of a collection's rows.
type CollectionLabels<'a> = [(&'static str, &'a str); 2];

impl Collector for Sampled {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = lock(&self.0);
        let e = &mut enc;
        counter(
            e,
            "p2p_sent_bytes",
            "Chunk bytes sent to peers.",
            s.p2p_sent_bytes,
        )?;
        counter(
            e,
            "p2p_received_bytes",
            "Verified chunk bytes received from peers.",
            s.p2p_received_bytes,
        )?;
        let peers = i64::try_from(s.peers.len()).unwrap_or(i64::MAX);
        let g = ConstGauge::new(peers);
        g.encode(e.encode_descriptor("peers", "Peers connected.", None, g.metric_type())?)?;
        let now = s.now;
        let rows = |f: &dyn Fn(&CollectionSample) -> Option<i64>| {
            s.collections
                .iter()
                .filter_map(|c| Some(([("collection", c.id.as_str()), ("name", &c.name)], f(c)?)))
                .collect::<Vec<(CollectionLabels, i64)>>()
        };
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            e,
            "collection_current_version",
            "The version served.",
            rows(&|c| c.current.map(int)),
        )?;
        gauge(
            e,
            "collection_latest_version",
            "The newest version announced and accepted.",
            rows(&|c| c.latest.map(int)),
        )?;
        gauge(
            e,
            "collection_lag_versions",
            "Versions between the one served and the newest accepted.",
            rows(&|c| Some(int(c.latest?.saturating_sub(c.current.unwrap_or(0))))),
        )?;
        gauge(
            e,
            "collection_lag_seconds",
            "Seconds since the newest accepted version was published, while it is not served (0 when it is).",
            rows(&|c| {
                let behind = c.latest? > c.current.unwrap_or(0);
                Some(if behind {
                    int(now.saturating_sub(c.latest_published_at?))
                } else {
                    0
                })
            }),
        )?;
        gauge(
            e,
            "announcement_expires_in_seconds",
            "Seconds until the newest accepted announcement expires (negative once expired).",
            rows(&|c| Some(int(c.latest_expires_at?) - int(now))),
        )?;
        gauge(
            e,
            "sync_in_progress_version",
            "The version being fetched (0: none).",
            rows(&|c| Some(int(c.in_progress.unwrap_or(0)))),
        )?;
        gauge(
            e,
            "sync_done_bytes",
            "Bytes of the version being (or last) fetched that are present.",
            rows(&|c| Some(int(c.done_bytes))),
        )?;
        gauge(
            e,
            "sync_total_bytes",
            "Bytes of the version being (or last) fetched.",
            rows(&|c| Some(int(c.total_bytes))),
        )?;
        gauge(
            e,
            "sync_done_chunks",
            "Chunks the current (or last) sync fetched and stored.",
            rows(&|c| Some(int(c.done_chunks))),
        )?;
        gauge(
            e,
            "sync_total_chunks",
            "Chunks the current (or last) sync had to fetch.",
            rows(&|c| Some(int(c.total_chunks))),
        )?;
        Ok(())
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// A gauge family; nothing at all when it has no rows.
fn gauge<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn hot_path_counters_and_samples_are_rendered() {
        let m = Metrics::new();
        m.http_response(http::StatusCode::OK);
        m.http_response(http::StatusCode::OK);
        m.http_response(http::StatusCode::NOT_FOUND);
        m.http_sent_bytes().inc_by(1234);
        m.error(Fault::CorruptChunk);
        let peer = PeerId::random();
        m.chunk_fetched(peer);
        m.chunk_fetched(peer);
        m.set_source(Arc::new(move || {
            Box::pin(async move {
                Some(Sample {
                    now: 1000,
                    collections: vec![CollectionSample {
                        id: "ab".into(),
                        name: "isos".into(),
                        current: Some(3),
                        latest: Some(5),
                        latest_published_at: Some(900),
                        latest_expires_at: Some(1600),
                        in_progress: Some(5),
                        done_bytes: 10,
                        total_bytes: 40,
                        done_chunks: 1,
                        total_chunks: 4,
                    }],
                    p2p_sent_bytes: 77,
                    p2p_received_bytes: 88,
                    peers: vec![peer],
                })
            })
        }));
        let t = m.render().await;
        let v = |s: &str| value(&t, s).unwrap_or_else(|| panic!("no {s} in\n{t}"));
        assert_eq!(v("peermirror_http_requests_total{code=\"200\"}"), 2.0);
        assert_eq!(v("peermirror_http_requests_total{code=\"404\"}"), 1.0);
        assert_eq!(v("peermirror_http_sent_bytes_total"), 1234.0);
        assert_eq!(v("peermirror_errors_total{kind=\"corrupt_chunk\"}"), 1.0);
        let p = format!("peermirror_p2p_fetched_chunks_total{{peer=\"{peer}\"}}");
        assert_eq!(v(&p), 2.0);
        assert_eq!(v("peermirror_p2p_sent_bytes_total"), 77.0);
        assert_eq!(v("peermirror_p2p_received_bytes_total"), 88.0);
        assert_eq!(v("peermirror_peers"), 1.0);
        let l = "{collection=\"ab\",name=\"isos\"}";
        assert_eq!(v(&format!("peermirror_collection_lag_versions{l}")), 2.0);
        assert_eq!(v(&format!("peermirror_collection_lag_seconds{l}")), 100.0);
        assert_eq!(
            v(&format!("peermirror_announcement_expires_in_seconds{l}")),
            600.0
        );
        assert_eq!(v(&format!("peermirror_sync_total_chunks{l}")), 4.0);
        assert!(t.contains("# TYPE libp2p_swarm"), "libp2p's metrics:\n{t}");
        assert!(t.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn peer_counters_are_dropped_on_disconnect_and_bounded() {
        let m = Metrics::new();
        let (a, b) = (PeerId::random(), PeerId::random());
        m.chunk_fetched(a);
        m.chunk_fetched(b);
        m.forget_peer(&a);
        let t = m.render().await;
        assert!(!t.contains(&a.to_base58()) && t.contains(&b.to_base58()));
        // A scrape drops peers no longer connected.
        m.set_source(Arc::new(|| Box::pin(async { Some(Sample::default()) })));
        let t = m.render().await;
        assert!(!t.contains(&b.to_base58()), "{t}");
        // Past the bound, further peers share one label.
        for _ in 0..MAX_PEER_LABELS + 3 {
            m.chunk_fetched(PeerId::random());
        }
        let t = m.render().await;
        let other = value(&t, "peermirror_p2p_fetched_chunks_total{peer=\"other\"}");
        assert_eq!(other, Some(3.0));
    }
}
