//! Integration tests: the built binary and in-process nodes, run in
//! temporary directories through one harness that keeps every node's log.

mod harness;

mod caps;
mod cli;
mod crash;
mod daemon;
mod discovery;
mod faults;
mod harness_selftest;
mod hostile;
mod http;
mod http_load;
mod http_metrics;
mod http_mirror;
mod join;
mod limits;
mod local_safety;
mod many_files;
mod nat;
mod network;
mod publish_trees;
mod redirect;
mod service;
mod settings;
mod store_model;
mod swarm;
