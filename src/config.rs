//! The node's settings: one struct with a section per concern and every
//! default in one place, read in layers with one rule for every command:
//! flag > environment > file > default.
//!
//! ```toml
//! follow = ["<collection id or ticket>"]
//!
//! [net]
//! listen = ["/ip4/0.0.0.0/tcp/4100", "/ip4/0.0.0.0/udp/4100/quic-v1",
//!           "/ip6/::/tcp/4100", "/ip6/::/udp/4100/quic-v1"]
//! peers = ["/ip4/192.0.2.10/tcp/4100/p2p/12D3KooW..."]
//! mdns = false
//! kademlia = true
//! idle_timeout_secs = 300
//! external_addresses = []   # e.g. ["/ip4/203.0.113.5/tcp/4100"] on a 1:1 NAT
//! autonat = true
//! autonat_private = false
//! relay = true
//! relay_max_reservations = 128
//! relay_max_circuits = 16
//! relay_circuit_bytes = 1048576
//! relay_circuit_secs = 120
//! upnp = false
//!
//! [store]
//! keep = 2
//!
//! [publish]
//! symlinks = "skip"      # links out of the tree: "keep", "skip" or "refuse"
//! exclude = []           # gitignore-style patterns, e.g. ["*.tmp", "/cache/"]
//!
//! [http]
//! listen = ""            # e.g. "0.0.0.0:8080"; empty: no HTTP
//! grace_secs = 600
//! max_connections = 1024
//! public_url = ""        # e.g. "https://mirror.example.org"; empty: no mirror records
//! region = ""            # e.g. "DE"
//! prefer = []            # client prefixes to serve first, e.g. ["10.1.0.0/16"]
//! capacity_mbps = 0      # declared capacity; 0: not declared
//! geoip_db = ""          # a MaxMind .mmdb file giving clients' countries
//!
//! [limits]
//! max_connections = 256
//! max_connections_per_ip = 16
//! max_store_bytes = 0
//! max_inbound_streams = 1024
//! max_inbound_streams_per_peer = 64
//! max_send_buffer_bytes = 268435456
//! max_send_buffer_bytes_per_peer = 33554432
//! send_timeout_secs = 30
//! chunk_requests_per_sec = 2000
//! latest_requests_per_sec = 20
//! latest_in_flight = 8
//! latest_timeout_secs = 10
//! have_notes_per_sec = 10
//! ban_secs = 600
//! upload_rate = "unlimited"    # chunk bytes sent per second, e.g. "2MiB"
//! download_rate = "unlimited"  # chunk bytes received per second
//! max_peers = 0                # distinct peers connected at once (0: no limit)
//!
//! [log]
//! level = "warn,libp2p_kad=error"   # `run`: "warn,peermirror=info,libp2p_kad=error"
//! format = "text"                   # or "json"
//! ```
//!
//! The file is `DATA/config.toml` unless `--config FILE` (or
//! `PEERMIRROR_CONFIG`) names another. Environment variables are
//! `PEERMIRROR_<SECTION>__<KEY>` (e.g. `PEERMIRROR_STORE__KEEP=3`), plus
//! `PEERMIRROR_PEERS`, a comma-separated list for `net.peers`. Flags are
//! passed in as a [`Layer`] by the command line. [`Settings::origin`] says
//! which layer each value came from, for `peermirror config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

pub use crate::human::ByteRate;

/// Every setting of a node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Collections to follow (ids or tickets, whose addresses become
    /// peers), at every start, besides the followed set the store records
    /// (`peermirror follow`, `run --follow`).
    pub follow: Vec<String>,
    /// Network.
    pub net: NetSettings,
    /// Store.
    pub store: StoreSettings,
    /// How `publish` reads a tree.
    pub publish: PublishSettings,
    /// The HTTP file gateway for end users.
    pub http: HttpSettings,
    /// Resource limits (each documented with its default in docs/security.md).
    pub limits: LimitsSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[net]`: how the node listens, whom it dials, how it finds peers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NetSettings {
    /// Listen addresses (multiaddrs).
    pub listen: Vec<String>,
    /// Peers to dial at start: multiaddrs (`/dns4/...` too) or `HOST:PORT`.
    /// No built-in bootstrap list.
    pub peers: Vec<String>,
    /// Find peers on the local network with mDNS (off unless asked for).
    pub mdns: bool,
    /// Learn peers' peers through Kademlia.
    pub kademlia: bool,
    /// Seconds a connection with no stream stays open.
    pub idle_timeout_secs: u64,
    /// Addresses peers reach this node at though it cannot see them itself
    /// (a 1:1 NAT, a forwarded port): announced as confirmed from the start.
    pub external_addresses: Vec<String>,
    /// Ask peers whether this node is reachable (AutoNAT): a reachable node
    /// offers relay, an unreachable one reserves a slot on a relay.
    pub autonat: bool,
    /// Let AutoNAT trust and serve peers at private addresses (a lab, or a
    /// NAT inside a larger private network); off on the internet.
    pub autonat_private: bool,
    /// Relay connections for peers behind NAT while this node is reachable.
    pub relay: bool,
    /// Peers that may hold a relay slot here at once.
    pub relay_max_reservations: u32,
    /// Relayed connections at once.
    pub relay_max_circuits: u32,
    /// Bytes one relayed connection may carry: enough for control traffic
    /// and hole punching, not for bulk data.
    pub relay_circuit_bytes: u64,
    /// Seconds one relayed connection may last.
    pub relay_circuit_secs: u64,
    /// Ask the home router to forward a port (UPnP); off unless asked for.
    pub upnp: bool,
}

impl Default for NetSettings {
    fn default() -> Self {
        NetSettings {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4100".into(),
                "/ip4/0.0.0.0/udp/4100/quic-v1".into(),
                "/ip6/::/tcp/4100".into(),
                "/ip6/::/udp/4100/quic-v1".into(),
            ],
            peers: Vec::new(),
            mdns: false,
            kademlia: true,
            idle_timeout_secs: 300,
            external_addresses: Vec::new(),
            autonat: true,
            autonat_private: false,
            relay: true,
            relay_max_reservations: 128,
            relay_max_circuits: 16,
            relay_circuit_bytes: 1 << 20,
            relay_circuit_secs: 120,
            upnp: false,
        }
    }
}

impl NetSettings {
    /// [`Self::idle_timeout_secs`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// `[store]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Versions kept per collection by gc (the current one and those before it).
    pub keep: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings { keep: 2 }
    }
}

/// `[publish]`: what `publish` takes from a tree (its flags add to or
/// override these).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PublishSettings {
    /// Symlinks pointing outside the tree: `keep`, `skip` (default, with a
    /// warning) or `refuse`. Absolute links into the tree are always stored
    /// as relative ones.
    pub symlinks: crate::publish::SymlinkPolicy,
    /// Paths never published: gitignore-style patterns relative to the
    /// tree's root; `--exclude` adds more.
    pub exclude: Vec<String>,
}

/// `[http]`: serving the files to people (curl, wget, browsers, apt).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to serve on (`0.0.0.0:8080`, `[::]:8080`); empty: no HTTP.
    pub listen: String,
    /// Seconds after a version switch during which a path the new version
    /// dropped is still served from the previous one.
    pub grace_secs: u64,
    /// Connections served at once; more are closed right after accept.
    pub max_connections: usize,
    /// The base URL people reach this node's HTTP at (`https://host`,
    /// `http://host:8080/mirror`); empty: the node advertises no mirror
    /// record, since others could not send anyone here.
    pub public_url: String,
    /// A region or country label (e.g. `DE`) the redirector matches with
    /// clients' regions; empty: none.
    pub region: String,
    /// Client address prefixes this mirror prefers to serve (e.g. its own
    /// network's): the redirector sends such clients here first.
    pub prefer: Vec<String>,
    /// Declared capacity in Mbit/s: the redirector spreads load among
    /// equally near mirrors in proportion to it (0: not declared).
    pub capacity_mbps: u32,
    /// A MaxMind GeoIP2/GeoLite2 database file (`.mmdb`) the redirector
    /// reads clients' countries from; empty: regions come only from
    /// `?region=`.
    pub geoip_db: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: String::new(),
            grace_secs: 600,
            max_connections: 1024,
            public_url: String::new(),
            region: String::new(),
            prefer: Vec::new(),
            capacity_mbps: 0,
            geoip_db: String::new(),
        }
    }
}

/// `[limits]`: what one node spends on its peers and its disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    /// Connections in total.
    pub max_connections: u32,
    /// Connections from one IP address.
    pub max_connections_per_ip: u32,
    /// Bytes of chunk data the store may hold (0, the default: no limit).
    /// A version whose missing chunks would take the store past it is
    /// refused before it is fetched (logged, and shown in `status`), so a
    /// quota should leave room for `store.keep + 1` versions during an
    /// update. See docs/security/faults.md.
    pub max_store_bytes: u64,
    // What a peer may make the network side spend; each is explained, with
    // the attack it answers, in docs/security/network.md.
    /// Inbound chunk streams served at once, all peers together (1024):
    /// more are dropped on arrival.
    pub max_inbound_streams: u32,
    /// Inbound chunk streams served at once for one peer (64; an honest
    /// peer uses at most 32).
    pub max_inbound_streams_per_peer: u32,
    /// Bytes of replies held in memory while being sent, all peers together
    /// (256 MiB): bounds what stalled readers can pin.
    pub max_send_buffer_bytes: u64,
    /// Bytes of replies held in memory while being sent to one peer
    /// (32 MiB): a peer that stops reading waits on its own budget only.
    pub max_send_buffer_bytes_per_peer: u64,
    /// Seconds to send one reply, or to receive the rest of a begun request
    /// (30): a peer that stops reading loses the stream and what it held.
    pub send_timeout_secs: u64,
    /// Chunk-protocol requests per second per peer, bursts of twice that
    /// (2000; 0: unlimited); requests over it end the stream unanswered.
    pub chunk_requests_per_sec: u32,
    /// Latest-announcement requests per second per peer, bursts of twice
    /// that (20; 0: unlimited); requests over it go unanswered.
    pub latest_requests_per_sec: u32,
    /// Latest-announcement requests in flight per connection, each way (8).
    pub latest_in_flight: u32,
    /// Seconds to wait for a peer's latest announcement (10): a silent peer
    /// costs a polling round no more than this.
    pub latest_timeout_secs: u64,
    /// Gossip `Have` notes taken per second from one relaying peer, bursts
    /// of twice that (10; 0: unlimited); the rest are ignored.
    pub have_notes_per_sec: u32,
    /// Seconds a peer is disconnected and refused once its offences in
    /// downloads (wrong bytes, false have-maps or chunk lists, stalls)
    /// reach the ban threshold. Default 600 (see docs/security/download.md).
    pub ban_secs: u64,
    /// Chunk bytes sent to peers per second, all peers together (default
    /// unlimited): what a volunteer donates. Peers downloading at once
    /// share it equally; a share one leaves idle goes to the others.
    pub upload_rate: ByteRate,
    /// Chunk bytes taken from peers per second, all downloads together
    /// (default unlimited), so a mirror leaves room on its owner's link.
    pub download_rate: ByteRate,
    /// Distinct peers connected at once (0, the default: only
    /// `max_connections` bounds them). A peer may hold several connections
    /// (TCP and QUIC, each direction), so this is the count volunteers think in.
    pub max_peers: u32,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            max_connections: 256,
            max_connections_per_ip: 16,
            max_store_bytes: 0,
            max_inbound_streams: 1024,
            max_inbound_streams_per_peer: 64,
            max_send_buffer_bytes: 256 << 20,
            max_send_buffer_bytes_per_peer: 32 << 20,
            send_timeout_secs: 30,
            chunk_requests_per_sec: 2000,
            latest_requests_per_sec: 20,
            latest_in_flight: 8,
            latest_timeout_secs: 10,
            have_notes_per_sec: 10,
            ban_secs: 600,
            upload_rate: ByteRate(0),
            download_rate: ByteRate(0),
            max_peers: 0,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter (`warn`, `peermirror=debug`, ...); `RUST_LOG` wins,
    /// and `-v`/`-q` move every level in it up or down a step.
    pub level: String,
    /// `text` (for people) or `json` (one object a line, for collectors).
    pub format: LogFormat,
}

/// The shape of log lines.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event for people; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for journald exporters and log collectors.
    Json,
}

/// The log filter `run` uses unless told otherwise: its own events at info
/// (versions accepted, fetched, made current; unreachable peers; limits
/// hit), everyone else's at warn.
pub const RUN_LOG_LEVEL: &str = "warn,peermirror=info,libp2p_kad=error";

impl Default for LogSettings {
    fn default() -> Self {
        // Quiet by default; kad's "no known peers" is routine for a first node.
        LogSettings {
            level: "warn,libp2p_kad=error".into(),
            format: LogFormat::Text,
        }
    }
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file named explicitly is missing or unreadable.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// A layer holds an unknown key or a value of the wrong type.
    #[error("{0}")]
    Invalid(String),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        // figment names the key and the layer it came from.
        ConfigError::Invalid(e.to_string())
    }
}

/// A named set of values (e.g. the command line's flags), one layer of [`Settings`].
#[derive(Clone, Debug)]
pub struct Layer {
    name: String,
    values: Dict,
}

impl Layer {
    /// An empty layer called `name` (shown by `peermirror config`).
    pub fn new(name: impl Into<String>) -> Self {
        Layer {
            name: name.into(),
            values: Dict::new(),
        }
    }

    /// Sets a dotted key (`net.peers`) to a value.
    pub fn set(mut self, key: &str, value: impl Serialize) -> Self {
        let Ok(v) = Value::serialize(value) else {
            return self;
        };
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or(key);
        let mut dict = &mut self.values;
        for p in parts {
            let entry = dict
                .entry(p.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            let Value::Dict(_, inner) = entry else {
                return self;
            };
            dict = inner;
        }
        dict.insert(last.to_string(), v);
        self
    }
}

impl Layer {
    /// Every field of [`Config::default`].
    fn defaults() -> Self {
        let values = match Value::serialize(Config::default()) {
            Ok(Value::Dict(_, d)) => d,
            _ => Dict::new(),
        };
        Layer {
            name: "default".into(),
            values,
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The effective settings, and where each came from.
pub struct Settings {
    /// The merged values.
    pub config: Config,
    figment: Figment,
}

/// Where the configuration file is looked for.
pub fn default_file(data: &Path) -> PathBuf {
    data.join("config.toml")
}

impl Settings {
    /// Reads defaults (with `defaults` on top: a command's own defaults),
    /// the file (`file`, or `DATA/config.toml` if it exists), the
    /// environment, then `flags`.
    pub fn load(
        data: &Path,
        file: Option<&Path>,
        defaults: Layer,
        flags: Layer,
    ) -> Result<Settings, ConfigError> {
        let path = match file {
            Some(p) => {
                // Named explicitly: it must exist.
                std::fs::metadata(p).map_err(|e| ConfigError::Read(p.to_path_buf(), e))?;
                p.to_path_buf()
            }
            None => default_file(data),
        };
        let mut figment = Figment::from(Layer::defaults()).merge(defaults);
        // The default file is optional; one named explicitly was checked above.
        if path.exists() {
            figment = figment.merge(Toml::file_exact(&path));
        }
        let figment = figment
            .merge(
                Env::prefixed("PEERMIRROR_")
                    .ignore(&["DATA", "CONFIG", "PEERS"])
                    .split("__"),
            )
            .merge(peers_from_env())
            .merge(flags);
        let config = figment.extract()?;
        Ok(Settings { config, figment })
    }

    /// Every setting as `(dotted key, value as TOML-like text, where it came from)`.
    pub fn origin(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let effective = serde_json::to_value(&self.config).unwrap_or_default();
        walk("", &effective, &mut |key, value| {
            let from = self
                .figment
                .find_metadata(key)
                .map(|m| describe(m, key))
                .unwrap_or_else(|| "default".into());
            out.push((key.to_string(), value.to_string(), from));
        });
        out
    }
}

/// `PEERMIRROR_PEERS=a,b`: the comma-separated form kept for convenience.
fn peers_from_env() -> Layer {
    let layer = Layer::new("environment variable PEERMIRROR_PEERS");
    match std::env::var("PEERMIRROR_PEERS") {
        Ok(v) if !v.trim().is_empty() => {
            let peers: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            layer.set("net.peers", peers)
        }
        _ => layer,
    }
}

/// Where a value came from, for people: the file, the exact environment
/// variable, or the layer's name.
fn describe(m: &Metadata, key: &str) -> String {
    match &m.source {
        Some(figment::Source::File(p)) => format!("file {}", p.display()),
        _ if m.name.contains("environment variable(s)") => format!(
            "environment variable PEERMIRROR_{}",
            key.replace('.', "__").to_uppercase()
        ),
        _ => m.name.to_string(),
    }
}

fn walk(prefix: &str, v: &serde_json::Value, f: &mut dyn FnMut(&str, &serde_json::Value)) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, v, f);
            }
        }
        _ => f(prefix, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, flags: Layer) -> Result<Settings, ConfigError> {
        Settings::load(dir, None, Layer::new("command default"), flags)
    }

    #[test]
    fn defaults_file_and_flags_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = load(dir.path(), Layer::new("flags")).unwrap();
        assert_eq!(s.config, Config::default());
        std::fs::write(
            default_file(dir.path()),
            "[net]\npeers = [\"/ip4/127.0.0.1/tcp/1\"]\n[store]\nkeep = 3\n",
        )
        .unwrap();
        let s = load(dir.path(), Layer::new("flags")).unwrap();
        assert_eq!(s.config.net.peers, vec!["/ip4/127.0.0.1/tcp/1"]);
        assert_eq!(s.config.store.keep, 3);
        assert_eq!(s.config.net.listen, NetSettings::default().listen);
        let s = load(dir.path(), Layer::new("flag --keep").set("store.keep", 5)).unwrap();
        assert_eq!(s.config.store.keep, 5);
        let origin = s.origin();
        let find = |k: &str| origin.iter().find(|(key, _, _)| key == k).unwrap().clone();
        assert_eq!(find("store.keep").2, "flag --keep");
        assert!(
            find("net.peers").2.starts_with("file "),
            "{:?}",
            find("net.peers")
        );
        assert_eq!(find("net.mdns").2, "default");
        // A command's own default sits between the defaults and the file.
        let s = Settings::load(
            dir.path(),
            None,
            Layer::new("sync default").set("net.mdns", true),
            Layer::new("flags"),
        )
        .unwrap();
        assert!(s.config.net.mdns);
    }

    #[test]
    fn unknown_keys_and_missing_named_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(default_file(dir.path()), "bogus = 1\n").unwrap();
        let e = load(dir.path(), Layer::new("flags")).err().unwrap();
        assert!(e.to_string().contains("bogus"), "{e}");
        std::fs::write(default_file(dir.path()), "[store]\nkeep = \"two\"\n").unwrap();
        assert!(load(dir.path(), Layer::new("flags")).is_err());
        let missing = dir.path().join("none.toml");
        let e = Settings::load(dir.path(), Some(&missing), Layer::new("d"), Layer::new("f"));
        assert!(matches!(e, Err(ConfigError::Read(..))));
    }

    #[test]
    fn rates_take_units_and_show_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            default_file(dir.path()),
            "[limits]\nupload_rate = \"4MiB\"\ndownload_rate = 1000\nmax_peers = 8\n",
        )
        .unwrap();
        let s = load(dir.path(), Layer::new("flags")).unwrap();
        assert_eq!(s.config.limits.upload_rate, ByteRate(4 << 20));
        assert_eq!(s.config.limits.download_rate, ByteRate(1000));
        assert_eq!(s.config.limits.max_peers, 8);
        let shown = s.origin();
        let up = shown.iter().find(|(k, _, _)| k == "limits.upload_rate");
        assert!(up.unwrap().1.contains("4 MiB/s"), "{up:?}");
        for n in [1, 1000, 1024, 1_500_000, 1_234_567, 3 << 30] {
            let r = ByteRate(n);
            assert_eq!(r.to_string().parse::<ByteRate>().unwrap(), r, "{r}");
        }
        // A flag wins, in words too.
        let flags = Layer::new("flags").set("limits.upload_rate", "unlimited");
        let s = load(dir.path(), flags).unwrap();
        assert_eq!(s.config.limits.upload_rate.get(), None);
        std::fs::write(
            default_file(dir.path()),
            "[limits]\nupload_rate = \"fast\"\n",
        )
        .unwrap();
        let e = load(dir.path(), Layer::new("flags")).err().unwrap();
        assert!(e.to_string().contains("not a size"), "{e}");
    }
}
