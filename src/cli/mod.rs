//! Subcommands. Each reports with context (anyhow) and picks the exit code.

mod node_cmds;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use peermirror::control::{self, Request, Response};
use peermirror::keys::MasterKey;
use peermirror::publish::{self, PublishOptions};
use peermirror::store::Store;

/// A peer-to-peer mirror network for large files.
#[derive(Parser, Debug)]
#[command(name = "peermirror", version, about)]
pub struct Cli {
    /// The node's data directory (store and settings).
    #[arg(long, global = true, env = "PEERMIRROR_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a new master key (mode 0600) and print its collection id.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        keyfile: PathBuf,
    },
    /// Print the collection id of a master key.
    Id {
        /// The master key file.
        keyfile: PathBuf,
    },
    /// Publish a directory as the next version of a collection.
    Publish {
        /// The master key of the collection.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        /// Collection name (defaults to the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Version number (defaults to one more than the newest held).
        #[arg(long)]
        version: Option<u64>,
        /// Days the announcement stays valid.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
        /// The directory to publish.
        src: PathBuf,
    },
    /// Write the current (or a given) version of a collection to a directory.
    Export {
        /// Collection id (or name).
        collection: String,
        /// Destination directory (written beside it, then renamed into place).
        dest: PathBuf,
        /// Version to write (defaults to the current one).
        #[arg(long)]
        version: Option<u64>,
        /// Swap out an existing non-empty destination.
        #[arg(long)]
        replace: bool,
    },
    /// Re-hash every stored chunk and check every version; exit 1 on any problem.
    Verify {
        /// Drop corrupt chunks from the index so they are fetched or published again.
        #[arg(long)]
        repair: bool,
    },
    /// Drop versions beyond the newest N and the data only they used.
    Gc {
        /// Versions to keep per collection (the current one and those before it).
        #[arg(long, default_value_t = 2)]
        keep: usize,
    },
    /// List collections, versions and sizes (and, on a running node, sync
    /// progress and peers).
    Status,
    /// Run a node: serve what the store holds and follow collections.
    Run {
        #[command(flatten)]
        net: node_cmds::NetArgs,
        /// Collection id to follow (repeatable).
        #[arg(long, value_name = "COLLECTION_ID")]
        follow: Vec<String>,
    },
    /// Fetch the latest version of a collection from peers once, then exit.
    Sync {
        /// The collection id.
        collection: String,
        #[command(flatten)]
        net: node_cmds::NetArgs,
        /// Give up if no peer answers within this many seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Start a master and three mirrors on loopback in a temporary
    /// directory, publish a generated sample (or --source), and watch them sync.
    Demo {
        /// Publish this directory instead of a generated sample.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Keep the temporary directory.
        #[arg(long)]
        keep: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let data = cli.data.clone().unwrap_or_else(default_data_dir);
    match cli.command {
        Command::Keygen { keyfile } => {
            let key = MasterKey::generate();
            key.save_new(&keyfile)?;
            eprintln!("wrote master key to {}", keyfile.display());
            println!("{}", key.collection());
        }
        Command::Id { keyfile } => println!("{}", MasterKey::load(&keyfile)?.collection()),
        Command::Publish {
            key,
            name,
            version,
            valid_days,
            src,
        } => {
            let valid_for = valid_days.saturating_mul(24 * 3600);
            let req = Request::Publish {
                key: absolute(&key)?,
                src: absolute(&src)?,
                name: name.clone(),
                version,
                valid_for,
            };
            if let Some(resp) = remote(&data, &req)? {
                let Response::Published(r) = resp else {
                    bail!("unexpected answer from the node");
                };
                print_published(&r);
                return Ok(ExitCode::SUCCESS);
            }
            let key = MasterKey::load(&key)?;
            let store = open_store(&data)?;
            let opts = PublishOptions {
                name,
                version,
                valid_for,
            };
            cmd_publish(&store, &key, &src, &opts)?;
        }
        Command::Export {
            collection,
            dest,
            version,
            replace,
        } => {
            let req = Request::Export {
                collection: collection.clone(),
                dest: absolute(&dest)?,
                version,
                replace,
            };
            let r = match remote(&data, &req)? {
                Some(Response::Exported(r)) => r,
                Some(_) => bail!("unexpected answer from the node"),
                None => {
                    let store = open_store(&data)?;
                    let id = store
                        .find_collection(&collection)?
                        .with_context(|| format!("no collection {collection:?} in this store"))?;
                    store
                        .export(&id, version, &dest, replace)
                        .with_context(|| format!("exporting to {}", dest.display()))?
                }
            };
            println!(
                "exported version {} to {}: {} files, {} dirs, {} symlinks, {}",
                r.version,
                dest.display(),
                r.files,
                r.dirs,
                r.symlinks,
                output::bytes(r.bytes)
            );
        }
        Command::Verify { repair } => {
            let r = match remote(&data, &Request::Verify { repair })? {
                Some(Response::Verified(r)) => r,
                Some(_) => bail!("unexpected answer from the node"),
                None => open_store(&data)?.verify(repair)?,
            };
            for p in &r.problems {
                println!("{p}");
            }
            println!(
                "verified {} chunks ({}) and {} versions: {} problems{}",
                r.chunks_checked,
                output::bytes(r.bytes_checked),
                r.versions_checked,
                r.problems.len(),
                if repair {
                    format!(", {} corrupt chunks dropped", r.repaired)
                } else {
                    String::new()
                }
            );
            if !r.problems.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Gc { keep } => {
            let r = match remote(&data, &Request::Gc { keep })? {
                Some(Response::Collected(r)) => r,
                Some(_) => bail!("unexpected answer from the node"),
                None => open_store(&data)?.gc(keep)?,
            };
            println!(
                "gc: dropped {} versions, {} manifests, {} chunks; removed {} segment files; freed {}",
                r.versions_dropped,
                r.manifests_dropped,
                r.chunks_dropped,
                r.segments_removed,
                output::bytes(r.bytes_freed)
            );
        }
        Command::Status => match remote(&data, &Request::Status)? {
            Some(Response::Status(s)) => output::node_status(&s),
            Some(_) => bail!("unexpected answer from the node"),
            None => output::status(&open_store(&data)?)?,
        },
        Command::Run { net, follow } => node_cmds::run(&data, &net, follow)?,
        Command::Sync {
            collection,
            net,
            wait,
        } => node_cmds::sync(&data, &net, &collection, wait)?,
        Command::Demo { source, keep } => node_cmds::demo(source.as_deref(), keep)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("peermirror")
}

fn open_store(data: &Path) -> Result<Store> {
    Store::open(data).with_context(|| format!("opening the store at {}", data.display()))
}

fn cmd_publish(
    store: &Store,
    key: &MasterKey,
    src: &Path,
    opts: &PublishOptions,
) -> Result<publish::PublishReport> {
    if !src.is_dir() {
        bail!("{} is not a directory", src.display());
    }
    let bar = output::progress_bar("publishing");
    let r = publish::publish(store, key, src, opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("publishing {}", src.display()))?;
    bar.finish_and_clear();
    print_published(&r);
    Ok(r)
}

fn print_published(r: &publish::PublishReport) {
    let a = &r.announcement.body;
    println!(
        "published {} version {}: {} files, {}, {} new stored (collection {})",
        a.name,
        a.version,
        r.files,
        output::bytes(r.bytes),
        output::bytes(r.new_bytes),
        a.collection
    );
}

/// Sends a request to a node running on `data`; None when none runs.
fn remote(data: &Path, req: &Request) -> Result<Option<Response>> {
    match control::call(data, req).context("talking to the running node")? {
        Some(Response::Error(e)) => bail!("{e}"),
        other => Ok(other),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}
