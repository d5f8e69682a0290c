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
//! - [`demo`]: sample trees and tree comparison for the demo and tests.
#![deny(missing_docs)]

pub mod announce;
pub mod chunk;
pub mod demo;
pub mod hash;
pub mod keys;
pub mod manifest;
pub mod publish;
pub mod store;
