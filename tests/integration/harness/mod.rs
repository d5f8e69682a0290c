//! The test harness: one temporary directory per test, nodes started in it
//! (in-process or as the built binary, see [`TestNode`]) each with its own
//! directory and log file, and CLI commands run against a data directory.
//!
//! When a test fails, the harness prints every node's log (its last lines)
//! and keeps the directory for inspection; CLI commands that do not do what
//! the test expects print their stdout and stderr.

mod fixtures;
mod logs;
mod node;
mod source;
mod tmpfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use libp2p::Multiaddr;
use peermirror::keys::CollectionId;
use peermirror::node::{Node, NodeConfig};

pub use fixtures::*;
pub use logs::{outside_log, LOG_FILE};
pub use node::{http_base, TestNode};
pub use source::SlowSource;
pub use tmpfs::Tmpfs;

/// The built binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_peermirror");

/// Lines of each node's log printed when a test fails.
const TAIL_LINES: usize = 200;

/// One test's work area. Create it first in a test, so that it is dropped
/// last: its drop reports on the nodes when the test fails.
pub struct Harness {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// (name, log file) of every node started, in order.
    logs: Mutex<Vec<(String, PathBuf)>>,
}

impl Harness {
    /// A fresh temporary directory; installs the per-node log routing.
    pub fn new() -> Harness {
        logs::install();
        let dir = tempfile::Builder::new()
            .prefix("pm-test-")
            .tempdir()
            .expect("tempdir");
        Harness {
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            logs: Mutex::new(Vec::new()),
        }
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// A path inside the test's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// CLI commands on the default data directory, `<test dir>/data`.
    pub fn cli(&self) -> Cli {
        self.cli_at(&self.path("data"))
    }

    /// CLI commands on another data directory.
    pub fn cli_at(&self, data: &Path) -> Cli {
        Cli {
            data: data.to_path_buf(),
            test_dir: self.path.clone(),
        }
    }

    /// The binary with `--data <test dir>/data`.
    pub fn cmd(&self) -> Command {
        self.cli().cmd()
    }

    /// See [`Cli::run_any`].
    pub fn run_any(&self, args: &[&str]) -> Output {
        self.cli().run_any(args)
    }

    /// See [`Cli::run`].
    pub fn run(&self, args: &[&str]) -> String {
        self.cli().run(args)
    }

    /// See [`Cli::fail`].
    pub fn fail(&self, args: &[&str]) -> String {
        self.cli().fail(args)
    }

    /// Writes a key and a sample tree (see [`sample_tree`]) and publishes
    /// it: returns (key path, collection id, source dir).
    pub fn publish_sample(&self, big_mib: usize) -> (String, String, PathBuf) {
        let (key, id) = self.keygen();
        let src = self.path("src");
        sample_tree(&src, big_mib);
        self.run(&["publish", "--key", &key, src.to_str().unwrap()]);
        (key, id, src)
    }

    /// Writes a master key and returns (path, collection id).
    pub fn keygen(&self) -> (String, String) {
        let key = self.path("master.key");
        let out = self.run(&["keygen", key.to_str().unwrap()]);
        let id = out.lines().last().unwrap().trim().to_string();
        (key.to_str().unwrap().to_string(), id)
    }

    /// Starts an in-process node in `<test dir>/<name>` on an ephemeral
    /// 127.0.0.1 port, dialling `peers` and following `follow`.
    pub async fn start(
        &self,
        name: &str,
        peers: Vec<Multiaddr>,
        follow: Vec<CollectionId>,
    ) -> TestNode {
        self.start_with(name, peers, follow, |_| {}).await
    }

    /// [`Harness::start`] with the node's configuration changed by `edit`
    /// first (limits, listen addresses, ...).
    pub async fn start_with(
        &self,
        name: &str,
        peers: Vec<Multiaddr>,
        follow: Vec<CollectionId>,
        edit: impl FnOnce(&mut NodeConfig),
    ) -> TestNode {
        let dir = self.node_dir(name);
        let mut cfg = NodeConfig::loopback(dir.clone(), peers, follow);
        edit(&mut cfg);
        let node = Node::start(cfg, std::future::pending())
            .await
            .unwrap_or_else(|e| panic!("node {name} did not start: {e}"));
        TestNode::in_process(name, dir, node).await
    }

    /// Starts `peermirror --data <test dir>/<name> run --listen
    /// /ip4/127.0.0.1/tcp/0 <extra>` and waits until it listens; its
    /// stdout and stderr go to its `node.log`.
    pub fn binary(&self, name: &str, extra: &[&str]) -> TestNode {
        let dir = self.node_dir(name);
        TestNode::binary(name, dir, extra)
    }

    /// A `node` span for something that is not a [`Node`] but should log
    /// like one (a bare network endpoint): its events, and those of tasks
    /// instrumented with it, go to `<test dir>/<name>/node.log`, which is
    /// printed like a node's when the test fails. Returns (dir, span).
    pub fn node_span(&self, name: &str) -> (PathBuf, tracing::Span) {
        let dir = self.node_dir(name);
        let span = node::span_for(&dir);
        (dir, span)
    }

    /// Prints `path` among the logs when the test fails.
    pub fn keep_log(&self, name: &str, path: PathBuf) {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), path));
    }

    /// Creates `<test dir>/<name>` and remembers its log for failure reports.
    fn node_dir(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), dir.join(LOG_FILE)));
        dir
    }

    /// What is printed when a test fails: the last lines of every node's
    /// log, and where to find everything.
    pub fn failure_report(&self) -> String {
        let mut out = String::new();
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        for (name, path) in logs.iter() {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})\n"));
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL_LINES);
            out.push_str(&format!(
                "==== node {name}: last {} of {} lines of {} ====\n",
                lines.len() - from,
                lines.len(),
                path.display()
            ));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "==== test directory kept: {}\n==== events outside any node (all tests): {}\n",
            self.path.display(),
            outside_log().display()
        ));
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.failure_report());
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

/// The binary run against one data directory, printing its output when a
/// command does not do what the test expects.
pub struct Cli {
    data: PathBuf,
    test_dir: PathBuf,
}

impl Cli {
    /// The binary with `--data <dir>` (and no `RUST_LOG`, so stderr holds
    /// only what the command itself says).
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data").arg(&self.data);
        c.env_remove("RUST_LOG");
        c
    }

    /// Runs and returns the output, whatever the exit status.
    pub fn run_any(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn peermirror")
    }

    /// Runs, requires success, returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.run_any(args);
        if !out.status.success() {
            panic!(
                "peermirror {args:?} failed ({})\nstdout:\n{}\nstderr:\n{}\n(work dir {})",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.test_dir.display()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs, requires failure, returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run_any(args);
        assert!(
            !out.status.success(),
            "peermirror {args:?} should fail\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}
