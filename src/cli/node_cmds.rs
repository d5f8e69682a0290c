//! Commands that run a node: `run`, `sync` and `demo`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use libp2p::Multiaddr;

use peermirror::config::Config;
use peermirror::keys::{CollectionId, MasterKey};
use peermirror::net::NetConfig;
use peermirror::node::{Node, NodeConfig};
use peermirror::publish::PublishOptions;

use super::output;

/// Network flags shared by `run` and `sync`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NetArgs {
    /// Configuration file (default: DATA/config.toml if it exists).
    #[arg(long, env = "PEERMIRROR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4100.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Peer to dial at start (repeatable).
    #[arg(
        long,
        env = "PEERMIRROR_PEERS",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    pub peer: Vec<String>,
    /// Find peers on the local network with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Versions to keep per collection.
    #[arg(long)]
    pub keep: Option<usize>,
}

/// Merges the file with the flags (flags win) into a node configuration.
fn node_config(
    data: &Path,
    args: &NetArgs,
    follow: Vec<String>,
    listen_default: Option<&str>,
) -> Result<NodeConfig> {
    let (path, must) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (data.join("config.toml"), false),
    };
    let mut cfg = Config::load(&path, must)?;
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    } else if let Some(d) = listen_default {
        if args.config.is_none() {
            cfg.listen = vec![d.to_string()];
        }
    }
    if !args.peer.is_empty() {
        cfg.peers = args.peer.clone();
    }
    cfg.follow.extend(follow);
    cfg.mdns |= args.mdns;
    if let Some(k) = args.keep {
        cfg.keep = k;
    }
    let addrs = |v: &[String]| -> Result<Vec<Multiaddr>> {
        v.iter()
            .map(|a| a.parse().with_context(|| format!("not a multiaddr: {a}")))
            .collect()
    };
    let follow = cfg
        .follow
        .iter()
        .map(|c| c.parse::<CollectionId>().map_err(|e| anyhow!(e)))
        .collect::<Result<Vec<_>>>()?;
    Ok(NodeConfig {
        data: data.to_path_buf(),
        net: NetConfig {
            listen: addrs(&cfg.listen)?,
            bootstrap: addrs(&cfg.peers)?,
            mdns: cfg.mdns,
            kademlia: true,
            idle_timeout: Duration::from_secs(cfg.idle_timeout_secs),
        },
        follow,
        keep: cfg.keep,
        control: true,
    })
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

/// `peermirror run`.
pub fn run(data: &Path, args: &NetArgs, follow: Vec<String>) -> Result<()> {
    let cfg = node_config(data, args, follow, None)?;
    runtime()?.block_on(async {
        let node = Node::start(cfg).await.context("starting the node")?;
        println!("peer id {}", node.peer_id());
        for a in node.listen_addrs().await {
            println!("listening on {a}");
        }
        use std::io::Write;
        std::io::stdout().flush().ok();
        shutdown_signal().await;
        eprintln!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

/// `peermirror sync`: fetch the latest version once and exit.
pub fn sync(data: &Path, args: &NetArgs, collection: &str, wait: u64) -> Result<()> {
    let c: CollectionId = collection.parse().map_err(|e| anyhow!("{e}"))?;
    let cfg = node_config(
        data,
        args,
        vec![c.to_string()],
        Some("/ip4/127.0.0.1/tcp/0"),
    )?;
    if cfg.net.bootstrap.is_empty() {
        bail!("sync needs at least one --peer (or peers in the config file)");
    }
    let wanted = cfg.net.bootstrap.len();
    runtime()?.block_on(async {
        let node = Node::start(cfg).await.context("starting the node")?;
        let r = sync_inner(&node, c, wanted, Duration::from_secs(wait)).await;
        node.shutdown().await;
        r
    })
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
            bail!("could not connect to any peer within {}s", wait.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let latest = loop {
        if let Some(v) = node.refresh_latest(c).await {
            break v;
        }
        if start.elapsed() > wait {
            bail!("no peer knows collection {c}");
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
            _ = shutdown_signal() => bail!("interrupted"),
        }
    };
    bar.finish_and_clear();
    let a = done.ok_or_else(|| anyhow!("node stopped"))?;
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
    let r = runtime()?.block_on(demo_inner(&root, source));
    if keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    } else {
        println!("removing {}", root.display());
    }
    r
}

async fn demo_inner(root: &Path, source: Option<&Path>) -> Result<()> {
    let src = match source {
        Some(s) => s
            .canonicalize()
            .with_context(|| format!("{}", s.display()))?,
        None => {
            let s = root.join("sample");
            peermirror::demo::generate_sample(&s).context("generating the sample tree")?;
            s
        }
    };
    let key = MasterKey::generate();
    let c = key.collection();
    println!("collection {c}");
    let master = Node::start(NodeConfig::loopback(root.join("master"), vec![], vec![])).await?;
    let maddr = master.listen_addrs().await;
    println!("master  {} on {}", master.peer_id(), maddr[0]);
    let mut mirrors = Vec::new();
    for i in 1..=3 {
        // The third mirror knows only the first one, not the master.
        let peers = if i == 3 {
            mirrors
                .first()
                .map(|(_, a): &(Arc<Node>, Vec<Multiaddr>)| a.clone())
                .unwrap_or_default()
        } else {
            maddr.clone()
        };
        let m = Node::start(NodeConfig::loopback(
            root.join(format!("mirror{i}")),
            peers,
            vec![c],
        ))
        .await?;
        let addrs = m.listen_addrs().await;
        println!("mirror{i} {} on {}", m.peer_id(), addrs[0]);
        mirrors.push((m, addrs));
    }
    let started = Instant::now();
    let r = master
        .publish(
            key,
            src.clone(),
            PublishOptions {
                name: Some("demo".into()),
                ..Default::default()
            },
        )
        .await?;
    let v = r.announcement.body.version;
    println!(
        "master published version {v}: {} files, {}",
        r.files,
        output::bytes(r.bytes)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut line = String::new();
        let mut all = true;
        for (i, (m, _)) in mirrors.iter().enumerate() {
            let s = m.status().await?;
            let cs = s.collections.iter().find(|x| x.id == c.to_string());
            let current = cs.and_then(|x| x.current).unwrap_or(0);
            let pct = match cs {
                Some(_) if current >= v => 100.0,
                Some(x) => x.percent().min(99.9),
                None => 0.0,
            };
            all &= current >= v;
            line.push_str(&format!("  mirror{}: {:5.1}%", i + 1, pct));
        }
        println!("{:5.1}s{line}", started.elapsed().as_secs_f64());
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!("mirrors did not converge within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "all mirrors hold version {v} ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    println!("master uploaded {}", output::bytes(master.bytes_up()));
    for (i, (m, _)) in mirrors.iter().enumerate() {
        let dest = root.join(format!("mirror{}-files", i + 1));
        let store = m.store().clone();
        let d = dest.clone();
        tokio::task::spawn_blocking(move || store.export(&c, None, &d, false)).await??;
        if let Some(diff) = peermirror::demo::compare_trees(&src, &dest)? {
            bail!("mirror{} differs from the source: {diff}", i + 1);
        }
        println!(
            "mirror{}: received {}, sent {}; files at {} (byte-identical to the source)",
            i + 1,
            output::bytes(m.bytes_down()),
            output::bytes(m.bytes_up()),
            dest.display()
        );
    }
    master.shutdown().await;
    for (m, _) in mirrors {
        m.shutdown().await;
    }
    Ok(())
}
