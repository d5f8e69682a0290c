//! peermirror: a peer-to-peer mirror network.
//!
//! # Layout
//!
//! - [`hash`]: blake3 content ids.
//! - [`chunk`]: content-defined chunking (FastCDC) of files into chunks.
//! - [`manifest`]: one version of a collection as paths and chunk lists, with validation.
//! - [`keys`]: master keys and collection ids.
//! - [`announce`]: signed announcements of versions.
//! - [`store`]: the content-addressed store (sled index, chunk bodies in segment files),
//!   with gc, verify and export.
//! - [`publish`]: turning a directory into a new version.
//! - [`http`]: the HTTP file gateway serving current versions to end users,
//!   the redirector (`/r/...`) and Metalink documents.
//! - [`mirrors`]: signed HTTP mirror records, their table, health checks and ranking.
//! - [`metrics`]: the Prometheus registry `/metrics` serves, and the handle
//!   the rest of the code records through.
//! - [`net`]: the libp2p swarm and wire protocols (chunks, have-maps, latest announcement).
//! - [`gossip`]: messages on a collection's gossip topic.
//! - [`sync`]: fetching a version's manifest and chunks from many peers at once.
//! - [`node`]: the one room that wires store, network, followers, admission and
//!   the control socket into a running node; also runs commands on a store directly.
//! - [`control`]: the commands the CLI sends (wire types, typed errors, status),
//!   the interface both a running node and a directly opened store answer, and
//!   the control-socket client.
//! - [`config`]: every setting and default, read in layers (flag > env > file > default).
//! - [`demo`]: sample trees and tree comparison for the demo and tests.
//! - [`ticket`]: tickets (one string to mirror a collection) and peers
//!   written as `HOST:PORT` or DNS multiaddrs.
//! - [`filter`]: partial mirrors: which paths of a collection a node keeps.
//! - [`task`]: blocking work off the async threads; poison-tolerant locks.
//! - [`human`]: sizes, rates, dates and durations as people read them (CLI and logs).
#![deny(missing_docs)]

pub mod announce;
pub mod chunk;
pub mod config;
pub mod control;
pub mod demo;
pub mod filter;
pub mod gossip;
pub mod hash;
pub mod http;
pub mod human;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod mirrors;
pub mod net;
pub mod node;
pub mod publish;
pub mod store;
pub mod sync;
pub mod task;
pub mod ticket;
