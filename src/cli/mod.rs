//! Subcommands. Each reports with context (anyhow); [`exit_code`] picks the
//! exit code from the typed error underneath.

mod follow_cmds;
pub mod log;
mod node_cmds;
mod output;
mod service;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use peermirror::config::{Layer, LogSettings, Settings};
use peermirror::control::{self, Commands, ErrorKind, Request, Response};
use peermirror::keys::MasterKey;
use peermirror::node::LocalStore;

/// A peer-to-peer mirror network for large files.
#[derive(Parser, Debug)]
#[command(name = "peermirror", version, about)]
pub struct Cli {
    /// The node's data directory (store and settings). Default:
    /// $STATE_DIRECTORY when systemd sets it, else ~/.local/share/peermirror.
    #[arg(long, global = true, env = "PEERMIRROR_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Configuration file (default: DATA/config.toml if it exists).
    #[arg(long, global = true, env = "PEERMIRROR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More log detail, one level per -v, relative to log.level (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log detail, one level per -q (-q: warnings and errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// Log lines as `text` (for people) or `json` (one object a line).
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,

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
        /// Symlinks pointing outside the tree: keep them as they are, skip
        /// them with a warning, or refuse to publish (default: the
        /// publish.symlinks setting, skip). Absolute links into the tree
        /// are stored as relative ones.
        #[arg(long, value_enum, value_name = "POLICY")]
        symlinks: Option<peermirror::publish::SymlinkPolicy>,
        /// Leave out paths matching this gitignore-style pattern, relative
        /// to the tree (repeatable; adds to publish.exclude).
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Say what would be published (files, bytes, new chunks) and
        /// write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Read every file, even those the stat cache says are unchanged.
        #[arg(long)]
        reread: bool,
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
        /// Versions to keep per collection (the current one and those
        /// before it; default: the store.keep setting, 2).
        #[arg(long)]
        keep: Option<usize>,
    },
    /// List collections, versions and sizes (and, on a running node, sync
    /// progress and peers).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective settings and where each came from.
    Config {
        #[command(flatten)]
        net: node_cmds::NetArgs,
        /// Collection id or ticket to follow (repeatable), as `run --follow`.
        #[arg(long, value_name = "TICKET|COLLECTION_ID")]
        follow: Vec<String>,
    },
    /// Run a node: serve what the store holds and follow collections.
    Run {
        #[command(flatten)]
        net: node_cmds::NetArgs,
        /// Collection id or ticket to follow (repeatable); added to the
        /// followed set, so later starts follow it too. A ticket's
        /// addresses are dialled as peers.
        #[arg(long, value_name = "TICKET|COLLECTION_ID")]
        follow: Vec<String>,
    },
    /// Fetch the latest version of a collection from peers once, then exit
    /// (it is not followed afterwards).
    Sync {
        /// A ticket, or a collection id (then give --peer).
        collection: String,
        #[command(flatten)]
        net: node_cmds::NetArgs,
        /// Give up if no peer answers within this many seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Fetch only these paths (prefix or glob; repeatable): a partial copy.
        #[arg(long, value_name = "PATTERN")]
        only: Vec<String>,
    },
    /// Print a ticket for a collection held or followed here: one string
    /// with which `run --follow`, `follow` and `sync` need nothing else.
    Ticket {
        /// Collection id or name.
        collection: String,
        /// An address others reach this node at (repeatable; multiaddr or
        /// HOST:PORT), put first in the ticket.
        #[arg(long, value_name = "ADDR")]
        addr: Vec<String>,
        /// Mirror only these paths (prefix or glob; repeatable).
        #[arg(long, value_name = "PATTERN")]
        only: Vec<String>,
    },
    /// Follow a collection (on the running node, and at every start).
    Follow {
        /// A ticket, a collection id, or the name of a collection held here.
        target: String,
        /// Mirror only these paths (prefix or glob; repeatable); without
        /// it, the ticket's paths, or the whole collection.
        #[arg(long, value_name = "PATTERN")]
        only: Vec<String>,
    },
    /// Stop following a collection; the next gc frees its space.
    Unfollow {
        /// Collection id or name.
        collection: String,
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
    /// Print a shell completion script, e.g. `peermirror completions bash >
    /// /etc/bash_completion.d/peermirror`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `peermirror man | man -l -`; it
    /// lists the subcommands, each with a page of its own (see --dir).
    Man {
        /// Write every page instead (peermirror.1, peermirror-run.1, ...)
        /// into this directory, e.g. /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The data directory: `--data` (or `PEERMIRROR_DATA`), else the state
/// directory systemd gives a service (`StateDirectory=`), else the user's
/// data directory.
pub fn data_dir(cli: &Cli) -> PathBuf {
    cli.data
        .clone()
        .or_else(|| {
            // systemd separates several state directories with colons.
            let dirs = std::env::var_os("STATE_DIRECTORY")?;
            let first = dirs.to_str()?.split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("peermirror")
        })
}

/// The `[log]` settings this command line runs with: `run` defaults to
/// [`log::RUN_LOG_LEVEL`]; `--log-format` is a flag like any other. A
/// settings file that does not load is reported by the command that needs
/// it, not here: logging then takes the defaults.
pub fn log_settings(cli: &Cli) -> LogSettings {
    let run = matches!(cli.command, Command::Run { .. });
    let mut defaults = Layer::new("default");
    if run {
        defaults = defaults.set("log.level", log::RUN_LOG_LEVEL);
    }
    let mut flags = Layer::new("command line");
    if let Some(f) = &cli.log_format {
        flags = flags.set("log.format", f);
    }
    match settings(cli.config.as_deref(), &data_dir(cli), defaults, flags) {
        Ok(s) => s.config.log,
        Err(_) => {
            let mut l = LogSettings::default();
            if run {
                l.level = log::RUN_LOG_LEVEL.to_string();
            }
            if cli.log_format.as_deref() == Some("json") {
                l.format = peermirror::config::LogFormat::Json;
            }
            l
        }
    }
}

/// The exit code for an error: from the first typed error in its chain.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let kind = match e.downcast_ref::<peermirror::node::NodeError>() {
        Some(n) => n.kind(),
        None => ErrorKind::of(e.as_ref()),
    };
    kind.exit_code()
}

/// Reads the settings for a command: defaults, `defaults` (the command's
/// own), the file, the environment, then `flags`.
pub fn settings(
    cli_config: Option<&Path>,
    data: &Path,
    defaults: Layer,
    flags: Layer,
) -> Result<Settings> {
    Settings::load(data, cli_config, defaults, flags).context("reading the settings")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let data = data_dir(&cli);
    let file = cli.config.as_deref();
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
            symlinks,
            exclude,
            dry_run,
            reread,
            src,
        } => {
            let mut flags = Layer::new("flags");
            if let Some(s) = symlinks {
                flags = flags.set("publish.symlinks", s);
            }
            let cfg = settings(file, &data, Layer::new("publish"), flags)?
                .config
                .publish;
            let mut patterns = cfg.exclude;
            patterns.extend(exclude);
            let req = Request::Publish {
                key: absolute(&key)?,
                src: absolute(&src)?,
                name,
                version,
                valid_for: valid_days.saturating_mul(24 * 3600),
                symlinks: cfg.symlinks,
                exclude: patterns,
                reread,
                dry_run,
            };
            let bar = output::progress_bar("publishing");
            let r = call(&data, req, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .with_context(|| format!("publishing {}", src.display()));
            bar.finish_and_clear();
            match r? {
                Response::Published(r) => output::published(&r),
                Response::DryRun(r) => output::dry_run(&r),
                _ => bail!("unexpected answer"),
            }
        }
        Command::Export {
            collection,
            dest,
            version,
            replace,
        } => {
            let req = Request::Export {
                collection,
                dest: absolute(&dest)?,
                version,
                replace,
            };
            let Response::Exported(r) = call(&data, req, &mut |_, _| {})? else {
                bail!("unexpected answer");
            };
            output::exported(&r, &dest);
        }
        Command::Verify { repair } => {
            let Response::Verified(r) = call(&data, Request::Verify { repair }, &mut |_, _| {})?
            else {
                bail!("unexpected answer");
            };
            output::verified(&r, repair);
            if !r.problems.is_empty() {
                return Ok(ExitCode::from(ErrorKind::Failed.exit_code()));
            }
        }
        Command::Gc { keep } => {
            let keep = match keep {
                Some(k) => k,
                None => {
                    settings(file, &data, Layer::new("gc"), Layer::new("flags"))?
                        .config
                        .store
                        .keep
                }
            };
            let Response::Collected(r) = call(&data, Request::Gc { keep }, &mut |_, _| {})? else {
                bail!("unexpected answer");
            };
            output::collected(&r);
        }
        Command::Status { json } => {
            let Response::Status(s) = call(&data, Request::Status, &mut |_, _| {})? else {
                bail!("unexpected answer");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                output::status(&s);
            }
        }
        Command::Config { net, follow } => {
            let s = node_cmds::settings_for(file, &data, &net, &follow, false)?;
            output::settings(&s);
        }
        Command::Run { net, follow } => node_cmds::run(file, &data, &net, &follow)?,
        Command::Sync {
            collection,
            net,
            wait,
            only,
        } => node_cmds::sync(file, &data, &net, &collection, &only, wait)?,
        Command::Ticket {
            collection,
            addr,
            only,
        } => follow_cmds::ticket(file, &data, collection, addr, only)?,
        Command::Follow { target, only } => follow_cmds::follow(&data, target, only)?,
        Command::Unfollow { collection } => follow_cmds::unfollow(file, &data, collection)?,
        Command::Demo { source, keep } => node_cmds::demo(source.as_deref(), keep)?,
        Command::Completions { shell } => {
            // Into a buffer first: the generator panics on a write error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "peermirror", &mut script);
            print_bytes(&script)?;
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_bytes(&page)?;
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing manual pages to {}", dir.display()))?;
            eprintln!("wrote manual pages to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a command on the node running on `data`, or on the store opened
/// directly when none runs: one code path for both.
pub(crate) fn call(
    data: &Path,
    req: Request,
    progress: control::Progress<'_>,
) -> Result<Response, control::CommandError> {
    let target: Box<dyn Commands> = match control::Client::connect(data) {
        Some(node) => Box::new(node),
        None => match control::wait_for_store(data, || LocalStore::open(data)) {
            Ok(Ok(node)) => Box::new(node),
            Ok(Err(store)) => Box::new(store),
            Err(e) => {
                let mut c = control::CommandError::from_error(&e);
                c.message = format!("opening the store at {}: {}", data.display(), c.message);
                return Err(c);
            }
        },
    };
    target.call(req, progress)
}

/// Writes generated text to stdout.
fn print_bytes(b: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(b)
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}
