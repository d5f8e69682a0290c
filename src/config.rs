//! The node's configuration file (TOML). Command-line flags and environment
//! variables override what it says.
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/4100", "/ip4/0.0.0.0/udp/4100/quic-v1"]
//! peers = ["/ip4/192.0.2.10/tcp/4100/p2p/12D3KooW..."]
//! follow = ["<collection id>"]
//! mdns = false
//! keep = 2
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings of `peermirror run` and `peermirror sync`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen addresses (multiaddrs).
    pub listen: Vec<String>,
    /// Peers to dial at start (multiaddrs).
    pub peers: Vec<String>,
    /// Collections to follow (ids).
    pub follow: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Versions kept per collection.
    pub keep: usize,
    /// Seconds an idle connection stays open.
    pub idle_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4100".into(),
                "/ip4/0.0.0.0/udp/4100/quic-v1".into(),
            ],
            peers: Vec::new(),
            follow: Vec::new(),
            mdns: false,
            keep: 2,
            idle_timeout_secs: 300,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Not valid TOML or unknown keys.
    #[error("{0}: {1}")]
    Parse(PathBuf, toml::de::Error),
}

impl Config {
    /// Reads `path`; a missing file at the default location is the defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                Ok(Config::default())
            }
            Err(e) => Err(ConfigError::Read(path.to_path_buf(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c: Config = toml::from_str("peers = [\"/ip4/127.0.0.1/tcp/1\"]\nkeep = 3\n").unwrap();
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.keep, 3);
        assert_eq!(c.listen, Config::default().listen);
        assert!(!c.mdns);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load(&dir.path().join("none.toml"), false).unwrap(),
            Config::default()
        );
        assert!(Config::load(&dir.path().join("none.toml"), true).is_err());
    }
}
