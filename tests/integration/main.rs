//! Integration tests: the built binary, run in temporary directories.

mod util;

mod cli;
mod crash;
mod daemon;
mod http;
mod network;
mod store_model;
