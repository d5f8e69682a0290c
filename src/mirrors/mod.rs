//! HTTP mirrors and how users are sent to them.
//!
//! A node that serves HTTP at a public URL advertises it in a signed
//! [`record::MirrorRecord`] per collection it holds current, gossiped on
//! that collection's topic and handed to peers who ask
//! (`/peermirror/mirrors/1`). Every node keeps the records it took in a
//! bounded [`table::MirrorTable`]. The redirector (`/r/...` and Metalink
//! documents in [`crate::http`]) asks [`Mirrors::ranked`] which mirrors
//! qualify for a client: those whose record names the newest version this
//! node accepted and that pass a [`health`] check, ranked by [`rank`].
//!
//! # Layout
//!
//! - `record`: the signed record, its wire format and checks.
//! - `table`: the bounded table of records, refusing replays.
//! - `health`: HTTP probes of `/.well-known/peermirror`, cached.
//! - `rank`: preferred prefix, region, distance, capacity.
//! - `geoip`: the client's country from a MaxMind database.

pub mod geoip;
pub mod health;
pub mod rank;
pub mod record;
pub mod table;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::PeerId;

use crate::config::{ConfigError, HttpSettings};
use crate::keys::CollectionId;
pub use geoip::GeoIp;
pub use health::Health;
pub use rank::{Candidate, Client, Ranked};
pub use record::{MirrorRecord, Prefix, RecordError, SignedMirrorRecord};
pub use table::MirrorTable;

/// How long a node's own records are valid.
pub const RECORD_LIFETIME: Duration = Duration::from_secs(3600);
/// A node signs its records again when they are this old (well before
/// they expire), and at once when the version it holds changes.
pub const REPUBLISH: Duration = Duration::from_secs(20 * 60);
/// How often the node probes the mirrors it knows, so requests rarely wait
/// for a probe.
pub const REFRESH: Duration = Duration::from_secs(10);
/// The capacity counted for a mirror that declares none (Mbit/s).
pub const DEFAULT_CAPACITY_MBPS: u32 = 100;
/// Most records handed to a peer in one answer.
pub const MAX_ANSWER_RECORDS: usize = 64;
/// Probes run at once by a refresh round.
const PROBES_AT_ONCE: usize = 16;

/// What this node advertises as a mirror (`[http]` settings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorSettings {
    /// Public base URL; no records are signed without it.
    pub public_url: Option<String>,
    /// Region or country label.
    pub region: String,
    /// Client prefixes this node prefers to serve.
    pub prefer: Vec<ipnet::IpNet>,
    /// Declared capacity, Mbit/s (0: not declared).
    pub capacity_mbps: u32,
    /// A MaxMind database giving clients' countries.
    pub geoip_db: Option<PathBuf>,
}

impl MirrorSettings {
    /// Checks and converts the `[http]` mirror settings.
    pub fn from_settings(s: &HttpSettings) -> Result<MirrorSettings, ConfigError> {
        let url = s.public_url.trim().trim_end_matches('/');
        let public_url = match url {
            "" => None,
            u if record::valid_url(u) => Some(u.to_string()),
            u => {
                return Err(ConfigError::Invalid(format!(
                    "http.public_url {u:?}: want http:// or https://, a host, no query (at most {} bytes)",
                    record::MAX_URL
                )))
            }
        };
        if !record::valid_region(&s.region) {
            return Err(ConfigError::Invalid(format!(
                "http.region {:?}: want up to {} letters, digits, - or _ (e.g. DE)",
                s.region,
                record::MAX_REGION
            )));
        }
        if s.prefer.len() > record::MAX_PREFIXES {
            return Err(ConfigError::Invalid(format!(
                "http.prefer: at most {} prefixes",
                record::MAX_PREFIXES
            )));
        }
        let prefer = s
            .prefer
            .iter()
            .map(|p| {
                p.trim()
                    .parse::<ipnet::IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|e| {
                        ConfigError::Invalid(format!(
                            "http.prefer {p:?}: {e} (want e.g. 10.1.0.0/16)"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MirrorSettings {
            public_url,
            region: s.region.clone(),
            prefer,
            capacity_mbps: s.capacity_mbps,
            geoip_db: match s.geoip_db.trim() {
                "" => None,
                p => Some(PathBuf::from(p)),
            },
        })
    }
}

/// The mirrors a node knows, their health, and how it ranks them.
pub struct Mirrors {
    /// The records taken.
    pub table: MirrorTable,
    /// Probe results and ping times.
    pub health: Health,
    /// This node's peer id: its own record needs no probe.
    pub local: PeerId,
    /// What this node advertises.
    pub settings: MirrorSettings,
    geoip: Option<GeoIp>,
}

impl Mirrors {
    /// The mirrors of node `local`, advertising `settings`; opens the
    /// GeoIP database if one is configured.
    pub fn new(local: PeerId, settings: MirrorSettings) -> Result<Mirrors, geoip::GeoIpError> {
        let geoip = settings.geoip_db.as_deref().map(GeoIp::open).transpose()?;
        Ok(Mirrors {
            table: MirrorTable::default(),
            health: Health::default(),
            local,
            settings,
            geoip,
        })
    }

    /// Uses `geoip` for clients' regions.
    pub fn with_geoip(mut self, geoip: GeoIp) -> Self {
        self.geoip = Some(geoip);
        self
    }

    /// The client's region: `query` (from `?region=`) if given and valid,
    /// else its country from the GeoIP database, else none.
    pub fn client_region(&self, addr: Option<IpAddr>, query: Option<&str>) -> Option<String> {
        if let Some(q) = query.filter(|q| !q.is_empty() && record::valid_region(q)) {
            return Some(q.to_string());
        }
        self.geoip.as_ref()?.region(addr?)
    }

    /// Probes a record's mirror (an `https://` one is judged by its ping)
    /// and caches the result.
    pub async fn check(&self, h: &table::Held) -> health::State {
        let url = &h.record.body.url;
        let result = if url.starts_with("https://") {
            self.health
                .ping(&h.peer)
                .ok_or_else(|| health::ProbeError::Unsupported(url.clone()))
        } else {
            health::probe(url, &h.peer).await
        };
        if let Err(e) = &result {
            tracing::debug!(mirror = %h.peer, %url, error = %e, "mirror failed its health check");
        }
        self.health.record(h.peer, url, &result);
        self.health.state(&h.peer, url, Instant::now())
    }

    /// Probes every known mirror of `collections` whose last probe is older
    /// than [`REFRESH`], a few at a time.
    pub async fn refresh(&self, collections: &[CollectionId]) {
        let now = crate::announce::now();
        let t = Instant::now();
        let due: Vec<table::Held> = collections
            .iter()
            .flat_map(|c| self.table.of(c, now))
            .filter(|h| h.peer != self.local)
            .filter(|h| {
                self.health
                    .older_than(&h.peer, &h.record.body.url, REFRESH, t)
            })
            .collect();
        let probes: Vec<_> = due.iter().map(|h| Box::pin(self.check(h))).collect();
        futures::stream::iter(probes)
            .buffer_unordered(PROBES_AT_ONCE)
            .for_each(|_| async {})
            .await;
    }

    /// The mirrors that qualify for `client` to fetch collection `c`,
    /// ranked: their record names `latest` (the newest version this node
    /// accepted) and they are healthy (mirrors never probed are probed now,
    /// at once). `self_base`, if given, adds this node at that base URL
    /// (when it holds `latest` current but signs no record).
    pub async fn ranked(
        &self,
        c: &CollectionId,
        latest: u64,
        client: &Client,
        self_base: Option<String>,
    ) -> Vec<Ranked> {
        let fresh: Vec<table::Held> = self
            .table
            .of(c, crate::announce::now())
            .into_iter()
            .filter(|h| h.record.body.version == latest)
            .collect();
        let t = Instant::now();
        let unknown = fresh.iter().filter(|h| {
            h.peer != self.local
                && self.health.state(&h.peer, &h.record.body.url, t) == health::State::Unknown
        });
        futures::future::join_all(unknown.map(|h| self.check(h))).await;
        let t = Instant::now();
        let mut cands: Vec<Candidate> = fresh
            .iter()
            .filter_map(|h| {
                let b = &h.record.body;
                let rtt = if h.peer == self.local {
                    Duration::ZERO
                } else {
                    match self.health.state(&h.peer, &b.url, t) {
                        health::State::Healthy(rtt) => self.health.ping(&h.peer).unwrap_or(rtt),
                        _ => return None,
                    }
                };
                Some(Candidate {
                    peer: h.peer,
                    base: b.url.clone(),
                    region: b.region.clone(),
                    prefer: h.prefer.clone(),
                    capacity_mbps: capacity(b.capacity_mbps),
                    distance: rtt,
                })
            })
            .collect();
        if let Some(base) = self_base {
            if !cands.iter().any(|c| c.peer == self.local) {
                cands.push(Candidate {
                    peer: self.local,
                    base,
                    region: self.settings.region.clone(),
                    prefer: self.settings.prefer.clone(),
                    capacity_mbps: capacity(self.settings.capacity_mbps),
                    distance: Duration::ZERO,
                });
            }
        }
        rank::rank(cands, client, &mut || rand::random::<f64>())
    }

    /// The encoded records of `c` to hand a peer: the newest versions
    /// first, at most [`MAX_ANSWER_RECORDS`].
    pub fn answer(&self, c: &CollectionId) -> Vec<Vec<u8>> {
        let mut held = self.table.of(c, crate::announce::now());
        held.sort_by_key(|h| std::cmp::Reverse((h.record.body.version, h.record.body.issued_at)));
        held.into_iter()
            .take(MAX_ANSWER_RECORDS)
            .map(|h| h.encoded)
            .collect()
    }
}

/// A declared capacity, or the default for none.
fn capacity(mbps: u32) -> u32 {
    if mbps == 0 {
        DEFAULT_CAPACITY_MBPS
    } else {
        mbps
    }
}
