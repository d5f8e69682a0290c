//! Integration tests: the built binary, run in temporary directories.

mod util;

mod cli;
mod crash;
mod daemon;
mod network;
mod settings;
mod store_model;
