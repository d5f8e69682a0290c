//! Commands that run a node: `run`, `sync` and `demo`, and the settings
//! they read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use peermirror::config::{Layer, Settings};
use peermirror::control::{CommandError, ErrorKind};
use peermirror::demo::DemoEvent;
use peermirror::keys::CollectionId;
use peermirror::node::{FollowSpec, Node, NodeConfig};

use super::output;

/// Network flags shared by `run`, `sync` and `config`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NetArgs {
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4100.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Peer to dial at start (repeatable): a multiaddr (/ip4, /ip6, /dns4,
    /// /dns6, /dns) or HOST:PORT.
    #[arg(long, value_name = "MULTIADDR|HOST:PORT")]
    pub peer: Vec<String>,
    /// Find peers on the local network with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Address peers reach this node at although it cannot see it itself,
    /// e.g. a 1:1 NAT's public address (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub external_address: Vec<String>,
    /// Ask the router to forward a port (UPnP).
    #[arg(long)]
    pub upnp: bool,
    /// Versions to keep per collection.
    #[arg(long)]
    pub keep: Option<usize>,
    /// Serve the files to people over HTTP on ADDRESS:PORT (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub http: Option<String>,
    /// The base URL people reach this node's HTTP at (e.g.
    /// https://mirror.example.org): the node then advertises itself as a
    /// mirror, and redirectors on other nodes send users here.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// This mirror's region or country label (e.g. DE), matched with clients'.
    #[arg(long, value_name = "LABEL")]
    pub region: Option<String>,
    /// Chunk bytes sent to peers per second at most, e.g. 2MiB (limits.upload_rate).
    #[arg(long, value_name = "RATE")]
    pub upload_rate: Option<peermirror::config::ByteRate>,
    /// Chunk bytes taken from peers per second at most, e.g. 10MiB (limits.download_rate).
    #[arg(long, value_name = "RATE")]
    pub download_rate: Option<peermirror::config::ByteRate>,
    /// Distinct peers connected at once at most (limits.max_peers; 0: no limit).
    #[arg(long, value_name = "N")]
    pub max_peers: Option<u32>,
}

/// The settings of a node command: flags on top of the environment, the
/// file and the defaults. `sync` listens on an ephemeral loopback port
/// unless told otherwise: it only fetches.
pub fn settings_for(
    file: Option<&Path>,
    data: &Path,
    args: &NetArgs,
    follow: &[String],
    one_shot: bool,
) -> Result<Settings> {
    let mut defaults = Layer::new(if one_shot {
        "sync's default"
    } else {
        "default"
    });
    if one_shot {
        defaults = defaults.set("net.listen", ["/ip4/127.0.0.1/tcp/0"]);
    } else {
        defaults = defaults.set("log.level", super::log::RUN_LOG_LEVEL);
    }
    let mut flags = Layer::new("command line");
    if !args.listen.is_empty() {
        flags = flags.set("net.listen", &args.listen);
    }
    if !args.peer.is_empty() {
        flags = flags.set("net.peers", &args.peer);
    }
    if args.mdns {
        flags = flags.set("net.mdns", true);
    }
    if !args.external_address.is_empty() {
        flags = flags.set("net.external_addresses", &args.external_address);
    }
    if args.upnp {
        flags = flags.set("net.upnp", true);
    }
    if let Some(k) = args.keep {
        flags = flags.set("store.keep", k);
    }
    if let Some(h) = &args.http {
        flags = flags.set("http.listen", h);
    }
    if let Some(u) = &args.public_url {
        flags = flags.set("http.public_url", u);
    }
    if let Some(r) = &args.region {
        flags = flags.set("http.region", r);
    }
    if let Some(r) = args.upload_rate {
        flags = flags.set("limits.upload_rate", r);
    }
    if let Some(r) = args.download_rate {
        flags = flags.set("limits.download_rate", r);
    }
    if let Some(n) = args.max_peers {
        flags = flags.set("limits.max_peers", n);
    }
    let mut s = super::settings(file, data, defaults, flags)?;
    // Collections named on the command line add to those of the file.
    s.config.follow.extend(follow.iter().cloned());
    Ok(s)
}

fn node_config(settings: &Settings, data: &Path) -> Result<NodeConfig> {
    Ok(NodeConfig::from_config(data, &settings.config)?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// `peermirror run`. Collections named with `--follow` join the followed
/// set recorded in the store.
pub fn run(file: Option<&Path>, data: &Path, args: &NetArgs, follow: &[String]) -> Result<()> {
    let mut cfg = node_config(&settings_for(file, data, args, follow, false)?, data)?;
    let named = follow
        .iter()
        .map(|f| FollowSpec::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    for spec in &mut cfg.follow {
        if named.iter().any(|n| n.collection == spec.collection) {
            spec.remember = true;
        }
    }
    runtime()?.block_on(async {
        let node = Node::start(cfg, shutdown_signal())
            .await
            .context("starting the node")?;
        println!("peer id {}", node.peer_id());
        for a in node.listen_addrs().await {
            println!("listening on {a}");
        }
        if let Some(a) = node.http_addr() {
            println!("serving HTTP on http://{a}/");
        }
        use std::io::Write;
        std::io::stdout().flush().ok();
        // Listening, control socket up: ready for systemd (Type=notify).
        super::service::ready(&node).await;
        node.stop_requested().await;
        super::service::stopping();
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

/// `peermirror sync`: fetch the latest version once and exit. `collection`
/// is a ticket or an id; `only` makes a partial copy (recorded with the
/// store, so gc, export and verify know it is partial).
pub fn sync(
    file: Option<&Path>,
    data: &Path,
    args: &NetArgs,
    collection: &str,
    only: &[String],
    wait: u64,
) -> Result<()> {
    let target = FollowSpec::parse(collection)?;
    let c: CollectionId = target.collection;
    peermirror::filter::PathFilter::new(only)?;
    let settings = settings_for(file, data, args, &[collection.trim().to_string()], true)?;
    let mut cfg = node_config(&settings, data)?;
    if !only.is_empty() {
        for spec in cfg.follow.iter_mut().filter(|s| s.collection == c) {
            spec.only = Some(only.to_vec());
        }
    }
    if cfg.net.bootstrap.is_empty() {
        return Err(CommandError::new(
            ErrorKind::Usage,
            "sync needs a ticket, or at least one --peer (or net.peers in the settings)",
        )
        .into());
    }
    // Peers, not addresses: a ticket lists several addresses of one node.
    let mut ids: Vec<String> = cfg
        .net
        .bootstrap
        .iter()
        .map(|a| match a.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(id)) => id.to_string(),
            _ => a.to_string(),
        })
        .collect();
    ids.sort();
    ids.dedup();
    let wanted = ids.len();
    runtime()?.block_on(async {
        let node = Node::start(cfg, shutdown_signal())
            .await
            .context("starting the node")?;
        let r = sync_inner(&node, c, wanted, Duration::from_secs(wait)).await;
        node.shutdown().await;
        r
    })
}

fn interrupted() -> anyhow::Error {
    CommandError::new(ErrorKind::Interrupted, "interrupted").into()
}

async fn sync_inner(
    node: &Arc<Node>,
    c: CollectionId,
    wanted: usize,
    wait: Duration,
) -> Result<()> {
    let start = Instant::now();
    // Give every configured peer a moment to connect, so the newest version is heard of.
    loop {
        let n = node.client().peers().await.len();
        if n >= wanted || (n > 0 && start.elapsed() > Duration::from_secs(3)) {
            break;
        }
        if start.elapsed() > wait {
            return Err(CommandError::new(
                ErrorKind::Busy,
                format!("could not connect to any peer within {}s", wait.as_secs()),
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let latest = loop {
        if let Some(v) = node.refresh_latest(c).await {
            break v;
        }
        if start.elapsed() > wait {
            return Err(CommandError::new(
                ErrorKind::NotFound,
                format!("no peer knows collection {c}"),
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let bar = output::progress_bar("syncing");
    let done = loop {
        tokio::select! {
            a = node.wait_current(c, latest) => break a,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Ok(s) = node.status().await {
                    if let Some(cs) = s.collections.iter().find(|x| x.id == c.to_string()) {
                        bar.set_length(cs.total_bytes);
                        bar.set_position(cs.done_bytes);
                    }
                }
            }
        }
    };
    bar.finish_and_clear();
    // The node stops early only when the shutdown signal arrived.
    let a = done.ok_or_else(interrupted)?;
    println!(
        "synced {} version {}: {} files, {}, {} received from peers in {:.1}s",
        a.body.name,
        a.body.version,
        a.body.files,
        output::bytes(a.body.total_bytes),
        output::bytes(node.bytes_down()),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `peermirror demo`: a master and three mirrors on loopback.
pub fn demo(source: Option<&Path>, keep: bool) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("peermirror-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path().to_path_buf();
    let r = runtime()?
        .block_on(peermirror::demo::run(&root, source, &mut print_demo))
        .map_err(|e| anyhow!(e));
    if keep {
        let kept: PathBuf = dir.keep();
        println!("kept {}", kept.display());
    } else {
        println!("removing {}", root.display());
    }
    r
}

fn print_demo(ev: DemoEvent) {
    match ev {
        DemoEvent::Collection(c) => println!("collection {c}"),
        DemoEvent::Started { name, peer, addr } => println!("{name:<7} {peer} on {addr}"),
        DemoEvent::Published {
            version,
            files,
            bytes,
        } => println!(
            "master published version {version}: {files} files, {}",
            output::bytes(bytes)
        ),
        DemoEvent::Progress { elapsed, percent } => {
            let mut line = format!("{:5.1}s", elapsed.as_secs_f64());
            for (i, p) in percent.iter().enumerate() {
                line.push_str(&format!("  mirror{}: {p:5.1}%", i + 1));
            }
            println!("{line}");
        }
        DemoEvent::Converged {
            elapsed,
            master_sent,
        } => {
            println!(
                "all mirrors hold the version ({:.1}s)",
                elapsed.as_secs_f64()
            );
            println!("master uploaded {}", output::bytes(master_sent));
        }
        DemoEvent::Checked {
            name,
            received,
            sent,
            files,
        } => println!(
            "{name}: received {}, sent {}; files at {} (byte-identical to the source)",
            output::bytes(received),
            output::bytes(sent),
            files.display()
        ),
    }
}
