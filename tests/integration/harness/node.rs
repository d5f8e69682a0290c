//! A node under test, in-process or the built binary, behind one handle.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use peermirror::control::{Commands, Status};
use peermirror::control::{Request, Response};
use peermirror::keys::{CollectionId, MasterKey};
use peermirror::node::Node;
use peermirror::publish::PublishOptions;
use tracing::Instrument;

use super::{assert_same_tree, logs, Cli, BIN, LOG_FILE};

/// How long a node may take to reach a version before the test fails.
const WAIT: Duration = Duration::from_secs(180);

/// How long a binary may take to print its listen addresses.
const START: Duration = Duration::from_secs(60);

/// How long a binary may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(20);

/// The span an in-process node's tasks run in (see `Node::start`): events
/// inside it go to `<dir>/node.log`.
pub(super) fn span_for(dir: &Path) -> tracing::Span {
    tracing::info_span!("node", data = %dir.display())
}

/// A running node. Common to both kinds: name, directory (its data
/// directory, holding `node.log`), peer id, listen addresses, status, CLI
/// commands on its data directory. In-process nodes give access to the
/// [`Node`]; binaries can be stopped, killed and restarted.
pub struct TestNode {
    name: String,
    dir: PathBuf,
    peer_id: PeerId,
    addrs: Vec<Multiaddr>,
    /// A `node` span for this node, for what the test does on its behalf.
    span: tracing::Span,
    kind: Kind,
}

enum Kind {
    InProcess(Arc<Node>),
    Binary(Proc),
}

/// A `peermirror run` child and the thread copying its stdout to the log.
struct Proc {
    extra: Vec<String>,
    child: Option<Child>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl TestNode {
    pub(super) async fn in_process(name: &str, dir: PathBuf, node: Arc<Node>) -> TestNode {
        let addrs = node.listen_addrs().await;
        assert!(!addrs.is_empty(), "node {name} listens nowhere");
        TestNode {
            name: name.to_string(),
            peer_id: node.peer_id(),
            span: span_for(&dir),
            dir,
            addrs,
            kind: Kind::InProcess(node),
        }
    }

    pub(super) fn binary(name: &str, dir: PathBuf, extra: &[&str]) -> TestNode {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, peer_id, addrs) = Proc::spawn(name, &dir, extra);
        TestNode {
            name: name.to_string(),
            peer_id,
            span: span_for(&dir),
            dir,
            addrs,
            kind: Kind::Binary(proc),
        }
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its data directory, which also holds its log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its libp2p identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where it listens (with `/p2p/<id>`), as of its last start.
    pub fn addrs(&self) -> &[Multiaddr] {
        &self.addrs
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits (at most half a minute) until its log contains `needle`:
    /// a node may log what it did a moment after the effect is visible.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?}:\n{log}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// CLI commands on its data directory (through its control socket
    /// while a binary runs).
    pub fn cli(&self) -> Cli {
        Cli {
            data: self.dir.clone(),
            test_dir: self.dir.parent().unwrap().to_path_buf(),
        }
    }

    /// Its state: asked in-process, or through the control socket.
    pub async fn status(&self) -> Status {
        match &self.kind {
            Kind::InProcess(n) => n
                .status()
                .instrument(self.span.clone())
                .await
                .unwrap_or_else(|e| panic!("status of {}: {e}", self.name)),
            Kind::Binary(_) => {
                let dir = self.dir.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let node = peermirror::control::Client::connect(&dir)?;
                    Some(node.call(Request::Status, &mut |_, _| {}))
                })
                .await
                .unwrap();
                match r {
                    Some(Ok(Response::Status(s))) => *s,
                    other => panic!("status of {}: {other:?}", self.name),
                }
            }
        }
    }

    /// The in-process node. Panics for a binary.
    pub fn node(&self) -> &Arc<Node> {
        match &self.kind {
            Kind::InProcess(n) => n,
            Kind::Binary(_) => panic!("{} is a binary, not an in-process node", self.name),
        }
    }

    /// Publishes `src` as the next version of `key`'s collection; returns
    /// the version. In-process only.
    pub async fn publish(&self, key: &MasterKey, src: &Path) -> u64 {
        let r = self
            .node()
            .publish(key.clone(), src.to_path_buf(), PublishOptions::default())
            .instrument(self.span.clone())
            .await
            .unwrap_or_else(|e| panic!("{} could not publish: {e}", self.name));
        r.announcement.body.version
    }

    /// Waits (at most a few minutes) until version `v` of `c` is current.
    /// In-process only.
    pub async fn wait_version(&self, c: CollectionId, v: u64) {
        tokio::time::timeout(WAIT, self.node().wait_current(c, v))
            .instrument(self.span.clone())
            .await
            .unwrap_or_else(|_| panic!("node {} did not reach version {v}", self.name))
            .unwrap();
    }

    /// Exports the current version of `c` to `dest` and compares it with
    /// `src`. In-process only.
    pub async fn export_and_compare(&self, c: CollectionId, src: &Path, dest: PathBuf) {
        let store = self.node().store().clone();
        let d = dest.clone();
        tokio::task::spawn_blocking(move || store.export(&c, None, &d, true))
            .await
            .unwrap()
            .unwrap();
        assert_same_tree(src, &dest);
    }

    /// Stops an in-process node's tasks.
    pub async fn shutdown(&self) {
        self.node().shutdown().instrument(self.span.clone()).await;
    }

    /// The process id of a running binary (for /proc). Binary only.
    pub fn pid(&mut self) -> u32 {
        self.proc().child.as_ref().expect("not running").id()
    }

    /// Sends a binary SIGTERM and waits for it to exit. Binary only.
    pub fn stop(&mut self) -> ExitStatus {
        let name = self.name.clone();
        self.proc().stop(&name)
    }

    /// Kills a binary with SIGKILL. Binary only.
    pub fn kill(&mut self) -> ExitStatus {
        self.proc().kill()
    }

    /// Stops a binary (SIGTERM) if it runs and starts it again with the
    /// same arguments, on a new port. Binary only.
    pub fn restart(&mut self) {
        let (name, dir) = (self.name.clone(), self.dir.clone());
        let proc = self.proc();
        if proc.child.is_some() {
            proc.stop(&name);
        }
        let (new, peer_id, addrs) = Proc::spawn(&name, &dir, std::mem::take(&mut proc.extra));
        *proc = new;
        self.peer_id = peer_id;
        self.addrs = addrs;
    }

    fn proc(&mut self) -> &mut Proc {
        match &mut self.kind {
            Kind::Binary(p) => p,
            Kind::InProcess(_) => panic!("{} is an in-process node, not a binary", self.name),
        }
    }
}

impl Proc {
    /// Starts `peermirror run` and waits for its peer id and listen addresses.
    fn spawn(name: &str, dir: &Path, extra: Vec<String>) -> (Proc, PeerId, Vec<Multiaddr>) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap();
        writeln!(log, "==== harness: starting `peermirror run` {extra:?}").unwrap();
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(dir)
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(&extra)
            .env("RUST_LOG", logs::FILTER)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .expect("spawn peermirror run");
        let (tx, rx) = mpsc::channel();
        let reader = copy_lines(child.stdout.take().unwrap(), log, tx);
        let mut proc = Proc {
            extra,
            child: Some(child),
            reader: Some(reader),
        };
        let deadline = Instant::now() + START;
        let mut peer_id = None;
        let mut addrs: Vec<Multiaddr> = Vec::new();
        loop {
            // Addresses come one per line right after each other: once the
            // first is in, a short pause means they are all in.
            let wait = if addrs.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(300)
            };
            let line = match rx.recv_timeout(wait) {
                Ok(line) => line,
                Err(_) if !addrs.is_empty() => break,
                Err(e) => {
                    let status = proc.kill();
                    panic!("node {name} did not start ({e:?}, {status}); see its log below");
                }
            };
            if let Some(id) = line.strip_prefix("peer id ") {
                peer_id = Some(id.trim().parse().expect("peer id"));
            } else if let Some(a) = line.strip_prefix("listening on ") {
                addrs.push(a.trim().parse().expect("listen address"));
            }
        }
        let peer_id = peer_id.unwrap_or_else(|| panic!("node {name} printed no peer id"));
        (proc, peer_id, addrs)
    }

    fn stop(&mut self, name: &str) -> ExitStatus {
        let child = self.child.as_mut().expect("not running");
        // SAFETY: sending SIGTERM to our own child, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "node {name} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.reaped();
        status
    }

    fn kill(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("not running");
        let _ = child.kill();
        let status = child.wait().unwrap();
        self.reaped();
        status
    }

    /// Forgets the exited child once its output is all in the log.
    fn reaped(&mut self) {
        self.child = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

/// Copies `out` line by line to `log` and to `tx` (while anyone listens).
fn copy_lines(
    out: std::process::ChildStdout,
    mut log: File,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = log.write_all(format!("{line}\n").as_bytes());
            let _ = tx.send(line);
        }
    })
}

/// The base URL of a binary node's HTTP gateway, from its log.
pub fn http_base(node: &TestNode) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = node
            .log()
            .lines()
            .find_map(|l| l.strip_prefix("serving HTTP on "))
        {
            return l.trim().trim_end_matches('/').to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP address:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
