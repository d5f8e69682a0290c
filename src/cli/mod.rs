//! Subcommands. Each reports with context (anyhow) and picks the exit code.

mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

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
    /// List collections, versions and sizes.
    Status,
    /// Publish a generated sample (or --source) and export it again, in a
    /// temporary directory, checking the round trip.
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
            let key = MasterKey::load(&key)?;
            let store = open_store(&data)?;
            let opts = PublishOptions {
                name,
                version,
                valid_for: valid_days.saturating_mul(24 * 3600),
            };
            cmd_publish(&store, &key, &src, &opts)?;
        }
        Command::Export {
            collection,
            dest,
            version,
            replace,
        } => {
            let store = open_store(&data)?;
            let id = store
                .find_collection(&collection)?
                .with_context(|| format!("no collection {collection:?} in this store"))?;
            let r = store
                .export(&id, version, &dest, replace)
                .with_context(|| format!("exporting to {}", dest.display()))?;
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
            let store = open_store(&data)?;
            let r = store.verify(repair)?;
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
            let store = open_store(&data)?;
            let r = store.gc(keep)?;
            println!(
                "gc: dropped {} versions, {} manifests, {} chunks; removed {} segment files; freed {}",
                r.versions_dropped,
                r.manifests_dropped,
                r.chunks_dropped,
                r.segments_removed,
                output::bytes(r.bytes_freed)
            );
        }
        Command::Status => {
            let store = open_store(&data)?;
            output::status(&store)?;
        }
        Command::Demo { source, keep } => demo(source.as_deref(), keep)?,
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
    Ok(r)
}

fn demo(source: Option<&Path>, keep: bool) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("peermirror-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path();
    let src = match source {
        Some(s) => s.to_path_buf(),
        None => {
            let s = root.join("sample");
            peermirror::demo::generate_sample(&s).context("generating the sample tree")?;
            s
        }
    };
    let key = MasterKey::generate();
    key.save_new(&root.join("master.key"))?;
    let store = open_store(&root.join("master"))?;
    println!("master key: {}", root.join("master.key").display());
    println!("collection: {}", key.collection());
    let opts = PublishOptions {
        name: Some("demo".into()),
        ..Default::default()
    };
    let r = cmd_publish(&store, &key, &src, &opts)?;
    let dest = root.join("export");
    let e = store.export(&key.collection(), None, &dest, false)?;
    println!(
        "exported version {} to {} ({} files, {})",
        e.version,
        dest.display(),
        e.files,
        output::bytes(e.bytes)
    );
    let diff = peermirror::demo::compare_trees(&src, &dest)?;
    if let Some(d) = diff {
        bail!("exported tree differs from the source: {d}");
    }
    println!("round trip checked: the export is byte-identical to the source");
    // A second publish of the same tree stores nothing new.
    let r2 = cmd_publish(&store, &key, &src, &opts)?;
    println!(
        "republishing unchanged data stored {} new (first publish stored {})",
        output::bytes(r2.new_bytes),
        output::bytes(r.new_bytes)
    );
    if keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}
