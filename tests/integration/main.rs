//! Integration tests: the built binary and in-process nodes, run in
//! temporary directories through one harness that keeps every node's log.

mod harness;

mod cli;
mod crash;
mod daemon;
mod faults;
mod harness_selftest;
mod hostile;
mod http;
mod http_mirror;
mod limits;
mod local_safety;
mod many_files;
mod network;
mod settings;
mod store_model;
