//! `peermirror demo`: a master and three mirrors on loopback in one
//! process, with the sample data and tree comparison it uses (shared with
//! the integration tests and the benchmarks). What happens is reported as
//! [`DemoEvent`]s; the command line turns them into text.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use rand::{Rng, SeedableRng};

use crate::keys::{CollectionId, MasterKey};
use crate::node::{Node, NodeConfig, NodeError};
use crate::publish::PublishOptions;

/// How long the mirrors may take to converge.
const CONVERGE: Duration = Duration::from_secs(120);

/// What the demo reports as it goes.
#[derive(Clone, Debug)]
pub enum DemoEvent {
    /// The collection the master publishes.
    Collection(CollectionId),
    /// A node started (`name` is `master` or `mirrorN`).
    Started {
        /// Its name in the demo.
        name: String,
        /// Its peer id.
        peer: PeerId,
        /// Its first listen address.
        addr: Multiaddr,
    },
    /// The master published.
    Published {
        /// The version.
        version: u64,
        /// Files in it.
        files: u64,
        /// Bytes of its files.
        bytes: u64,
    },
    /// Every mirror's share of the version, percent, at `elapsed`.
    Progress {
        /// Since the publish.
        elapsed: Duration,
        /// One per mirror.
        percent: Vec<f64>,
    },
    /// Every mirror holds the version.
    Converged {
        /// Since the publish.
        elapsed: Duration,
        /// Chunk bytes the master sent.
        master_sent: u64,
    },
    /// A mirror's copy was exported and matches the source byte for byte.
    Checked {
        /// Its name.
        name: String,
        /// Chunk bytes it received.
        received: u64,
        /// Chunk bytes it sent to other mirrors.
        sent: u64,
        /// Where its files are.
        files: PathBuf,
    },
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Writing the sample, exporting or comparing failed.
    #[error("{0}: {1}")]
    Io(String, io::Error),
    /// The mirrors did not converge in time.
    #[error("mirrors did not converge within {0:?}")]
    Timeout(Duration),
    /// A mirror's copy differs from the source.
    #[error("{0} differs from the source: {1}")]
    Differs(String, String),
}

/// Runs the demo in `root`: publishes `source` (or a generated sample) from
/// a master to three mirrors (the third knows only the first mirror, not
/// the master), waits until all hold it, exports each copy and compares it
/// with the source.
pub async fn run(
    root: &Path,
    source: Option<&Path>,
    report: &mut dyn FnMut(DemoEvent),
) -> Result<(), DemoError> {
    let src = match source {
        Some(s) => s
            .canonicalize()
            .map_err(|e| DemoError::Io(s.display().to_string(), e))?,
        None => {
            let s = root.join("sample");
            generate_sample(&s).map_err(|e| DemoError::Io("generating the sample".into(), e))?;
            s
        }
    };
    let key = MasterKey::generate();
    let c = key.collection();
    report(DemoEvent::Collection(c));
    let start = |name: &str, peers: Vec<Multiaddr>, follow: Vec<CollectionId>| {
        let cfg = NodeConfig::loopback(root.join(name), peers, follow);
        Node::start(cfg, std::future::pending())
    };
    let master = start("master", vec![], vec![]).await?;
    let maddr = master.listen_addrs().await;
    report(started("master", &master, &maddr));
    let mut mirrors: Vec<(Arc<Node>, Vec<Multiaddr>)> = Vec::new();
    for i in 1..=3 {
        let peers = match mirrors.first() {
            Some((_, first)) if i == 3 => first.clone(),
            _ => maddr.clone(),
        };
        let name = format!("mirror{i}");
        let m = start(&name, peers, vec![c]).await?;
        let addrs = m.listen_addrs().await;
        report(started(&name, &m, &addrs));
        mirrors.push((m, addrs));
    }
    let r = converge(&master, &mirrors, key, &src, root, report).await;
    master.shutdown().await;
    for (m, _) in &mirrors {
        m.shutdown().await;
    }
    r
}

fn started(name: &str, n: &Node, addrs: &[Multiaddr]) -> DemoEvent {
    DemoEvent::Started {
        name: name.into(),
        peer: n.peer_id(),
        addr: addrs.first().cloned().unwrap_or_else(Multiaddr::empty),
    }
}

async fn converge(
    master: &Node,
    mirrors: &[(Arc<Node>, Vec<Multiaddr>)],
    key: MasterKey,
    src: &Path,
    root: &Path,
    report: &mut dyn FnMut(DemoEvent),
) -> Result<(), DemoError> {
    let c = key.collection();
    let started = Instant::now();
    let opts = PublishOptions {
        name: Some("demo".into()),
        ..Default::default()
    };
    let r = master.publish(key, src.to_path_buf(), opts).await?;
    let v = r.announcement.body.version;
    report(DemoEvent::Published {
        version: v,
        files: r.files,
        bytes: r.bytes,
    });
    loop {
        let mut percent = Vec::new();
        for (m, _) in mirrors {
            let s = m.status().await?;
            let cs = s.collections.iter().find(|x| x.id == c.to_string());
            let current = cs.and_then(|x| x.current.as_ref()).map_or(0, |v| v.version);
            percent.push(match cs {
                Some(_) if current >= v => 100.0,
                Some(x) if x.in_progress.is_some() => x.percent().min(99.9),
                _ => 0.0,
            });
        }
        let done = percent.iter().all(|p| *p >= 100.0);
        report(DemoEvent::Progress {
            elapsed: started.elapsed(),
            percent,
        });
        if done {
            break;
        }
        if started.elapsed() > CONVERGE {
            return Err(DemoError::Timeout(CONVERGE));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    report(DemoEvent::Converged {
        elapsed: started.elapsed(),
        master_sent: master.bytes_up(),
    });
    for (i, (m, _)) in mirrors.iter().enumerate() {
        let name = format!("mirror{}", i + 1);
        let dest = root.join(format!("{name}-files"));
        let store = m.store().clone();
        let d = dest.clone();
        crate::task::blocking("exporting", move || {
            store.export(&c, None, &d, false).map_err(NodeError::from)
        })
        .await?;
        let diff = compare_trees(src, &dest).map_err(|e| DemoError::Io("comparing".into(), e))?;
        if let Some(diff) = diff {
            return Err(DemoError::Differs(name, diff));
        }
        report(DemoEvent::Checked {
            name,
            received: m.bytes_down(),
            sent: m.bytes_up(),
            files: dest,
        });
    }
    Ok(())
}

/// Writes a small but varied tree: a few MiB of random images, text files,
/// an executable script, an empty directory and symlinks.
pub fn generate_sample(dir: &Path) -> io::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    fs::create_dir_all(dir.join("images"))?;
    fs::create_dir_all(dir.join("pool/main"))?;
    fs::create_dir_all(dir.join("empty"))?;
    for (name, mib) in [("images/installer.iso", 12usize), ("images/netinst.iso", 4)] {
        let mut f = fs::File::create(dir.join(name))?;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf)?;
        }
    }
    for i in 0..20 {
        let mut body = vec![0u8; 1000 + i * 997];
        rng.fill_bytes(&mut body);
        fs::write(dir.join(format!("pool/main/pkg-{i:02}.deb")), body)?;
    }
    fs::write(
        dir.join("README.txt"),
        "Sample collection published by peermirror demo.\n",
    )?;
    let script = dir.join("install.sh");
    fs::write(&script, "#!/bin/sh\necho installing\n")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("images/installer.iso", dir.join("latest.iso"))?;
    std::os::unix::fs::symlink("../main", dir.join("pool/main/self"))?;
    Ok(())
}

/// Compares two trees: paths, kinds, bytes, exec bits and link targets.
/// Returns a description of the first difference, or None if identical.
pub fn compare_trees(a: &Path, b: &Path) -> io::Result<Option<String>> {
    let list = |root: &Path| -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
            let e = e.map_err(io::Error::other)?;
            let rel = e.path().strip_prefix(root).map_err(io::Error::other)?;
            v.push(rel.to_string_lossy().into_owned());
        }
        v.sort();
        Ok(v)
    };
    let (la, lb) = (list(a)?, list(b)?);
    if la != lb {
        let only_a: Vec<_> = la.iter().filter(|p| !lb.contains(p)).take(3).collect();
        let only_b: Vec<_> = lb.iter().filter(|p| !la.contains(p)).take(3).collect();
        return Ok(Some(format!(
            "paths differ: only in {}: {only_a:?}; only in {}: {only_b:?}",
            a.display(),
            b.display()
        )));
    }
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (fs::symlink_metadata(&pa)?, fs::symlink_metadata(&pb)?);
        if ma.file_type() != mb.file_type() {
            return Ok(Some(format!("{rel}: kind differs")));
        }
        if ma.file_type().is_symlink() {
            if fs::read_link(&pa)? != fs::read_link(&pb)? {
                return Ok(Some(format!("{rel}: link target differs")));
            }
        } else if ma.is_file() {
            if (ma.permissions().mode() & 0o100) != (mb.permissions().mode() & 0o100) {
                return Ok(Some(format!("{rel}: exec bit differs")));
            }
            if ma.len() != mb.len() || !same_bytes(&pa, &pb)? {
                return Ok(Some(format!("{rel}: contents differ")));
            }
        }
    }
    Ok(None)
}

fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
