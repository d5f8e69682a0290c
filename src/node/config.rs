//! How to run a node: [`NodeConfig`], built from the settings or, for the
//! demo, tests and benchmarks, for loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;

use super::admission;
use crate::config::{Config, ConfigError, LimitsSettings, NetSettings};
use crate::http::HttpConfig;
use crate::keys::CollectionId;
use crate::net::{self, NetConfig};

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory (store, node key, control socket).
    pub data: PathBuf,
    /// Network settings.
    pub net: NetConfig,
    /// Collections to follow (besides those the store records as followed).
    pub follow: Vec<FollowSpec>,
    /// Versions to keep per collection.
    pub keep: usize,
    /// Serve the control socket.
    pub control: bool,
    /// Resource limits.
    pub limits: LimitsSettings,
    /// Serve the files over HTTP.
    pub http: Option<HttpConfig>,
}

/// A collection a node is started to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowSpec {
    /// The collection.
    pub collection: CollectionId,
    /// Paths to mirror (see [`crate::filter::PathFilter`]); `None`: as the
    /// store records (everything if nothing is recorded).
    pub only: Option<Vec<String>>,
    /// Record it in the store's followed set, so that later starts follow
    /// it without being told (`run --follow`); otherwise it is followed for
    /// this run only (settings file entries, `sync`).
    pub remember: bool,
    /// Peers named with it (a ticket's addresses): dialled now, and at
    /// every start when it is remembered.
    pub peers: Vec<Multiaddr>,
}

impl FollowSpec {
    /// Follow `c` with what the store records of it, for this run only.
    pub fn new(collection: CollectionId) -> Self {
        FollowSpec {
            collection,
            only: None,
            remember: false,
            peers: Vec::new(),
        }
    }

    /// What a `follow` value names: a collection id or a ticket (whose
    /// paths, if it names any, replace those recorded).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let t = crate::ticket::parse_target(s).map_err(|e| {
            ConfigError::Invalid(format!(
                "follow {s:?}: not a collection id (64 hex digits) or a ticket: {e}"
            ))
        })?;
        Ok(FollowSpec {
            collection: t.collection,
            only: (!t.only.is_empty()).then_some(t.only),
            remember: false,
            peers: t.addrs,
        })
    }
}

impl NodeConfig {
    /// The node `cfg` describes, on `data`, with its control socket. Peers
    /// may be multiaddrs (`/dns4/...` too) or `HOST:PORT`; `follow` entries
    /// collection ids or tickets, whose addresses become peers.
    pub fn from_config(data: &Path, cfg: &Config) -> Result<NodeConfig, ConfigError> {
        let addrs = |v: &[String]| -> Result<Vec<Multiaddr>, ConfigError> {
            v.iter()
                .map(|a| {
                    a.parse()
                        .map_err(|e| ConfigError::Invalid(format!("not a multiaddr: {a}: {e}")))
                })
                .collect()
        };
        let follow = cfg
            .follow
            .iter()
            .map(|c| FollowSpec::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut bootstrap = cfg
            .net
            .peers
            .iter()
            .map(|a| crate::ticket::parse_addr(a).map_err(|e| ConfigError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        for a in follow.iter().flat_map(|f| &f.peers) {
            if !bootstrap.contains(a) {
                bootstrap.push(a.clone());
            }
        }
        Ok(NodeConfig {
            data: data.to_path_buf(),
            net: NetConfig {
                listen: addrs(&cfg.net.listen)?,
                bootstrap,
                mdns: cfg.net.mdns,
                kademlia: cfg.net.kademlia,
                idle_timeout: cfg.net.idle_timeout(),
                limits: net_limits(&cfg.limits),
                nat: nat_config(&cfg.net, addrs(&cfg.net.external_addresses)?),
                known_peers: Vec::new(),
                low_priority_gossip: admission::is_have,
            },
            follow,
            keep: cfg.store.keep,
            control: true,
            limits: cfg.limits.clone(),
            http: match cfg.http.listen.trim() {
                "" => None,
                a => Some(HttpConfig::from_settings(
                    a.parse().map_err(|e| {
                        ConfigError::Invalid(format!("http.listen {a:?}: {e} (want ADDRESS:PORT)"))
                    })?,
                    &cfg.http,
                )?),
            },
        })
    }

    /// The default settings on an ephemeral 127.0.0.1 TCP port, without a
    /// control socket: what the demo, tests and benchmarks run. Every node
    /// there shares one IP address, so the per-IP connection cap is the
    /// total cap.
    pub fn loopback(data: PathBuf, peers: Vec<Multiaddr>, follow: Vec<CollectionId>) -> Self {
        let mut d = Config::default();
        d.limits.max_connections_per_ip = d.limits.max_connections;
        NodeConfig {
            data,
            net: NetConfig {
                listen: vec![Multiaddr::empty()
                    .with(libp2p::multiaddr::Protocol::Ip4(
                        std::net::Ipv4Addr::LOCALHOST,
                    ))
                    .with(libp2p::multiaddr::Protocol::Tcp(0))],
                bootstrap: peers,
                mdns: false,
                kademlia: d.net.kademlia,
                idle_timeout: d.net.idle_timeout(),
                limits: net_limits(&d.limits),
                nat: nat_config(&d.net, Vec::new()),
                known_peers: Vec::new(),
                low_priority_gossip: admission::is_have,
            },
            // As `run --follow`: a restarted test node follows them still.
            follow: follow
                .into_iter()
                .map(|c| FollowSpec {
                    remember: true,
                    ..FollowSpec::new(c)
                })
                .collect(),
            keep: d.store.keep,
            control: false,
            limits: d.limits,
            http: None,
        }
    }
}

/// The NAT part of the `[net]` settings.
pub fn nat_config(n: &NetSettings, external_addresses: Vec<Multiaddr>) -> net::NatConfig {
    net::NatConfig {
        external_addresses,
        autonat: n.autonat,
        autonat_private: n.autonat_private,
        relay: n.relay.then(|| net::RelayLimits {
            max_reservations: n.relay_max_reservations as usize,
            max_circuits: n.relay_max_circuits as usize,
            circuit_bytes: n.relay_circuit_bytes,
            circuit_duration: Duration::from_secs(n.relay_circuit_secs),
        }),
        upnp: n.upnp,
    }
}

/// The network side of the `[limits]` settings.
pub fn net_limits(l: &LimitsSettings) -> net::NetLimits {
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    net::NetLimits {
        max_connections: l.max_connections,
        max_connections_per_ip: l.max_connections_per_ip,
        max_inbound_streams: l.max_inbound_streams as usize,
        max_inbound_streams_per_peer: l.max_inbound_streams_per_peer as usize,
        max_send_buffer: size(l.max_send_buffer_bytes),
        max_send_buffer_per_peer: size(l.max_send_buffer_bytes_per_peer),
        send_timeout: Duration::from_secs(l.send_timeout_secs),
        chunk_requests_per_sec: l.chunk_requests_per_sec,
        latest_requests_per_sec: l.latest_requests_per_sec,
        latest_in_flight: l.latest_in_flight as usize,
        latest_timeout: Duration::from_secs(l.latest_timeout_secs),
        upload_rate: l.upload_rate.0,
        download_rate: l.download_rate.0,
        max_peers: l.max_peers,
    }
}
