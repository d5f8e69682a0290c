//! The binary as operators use it: `run` in the background, commands
//! reaching it through the control socket, `sync` from another store.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A `peermirror run` process, killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(data: &std::path::Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(data)
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let addr = loop {
            let line = lines.next().expect("run exited early").unwrap();
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        Daemon { child, addr }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: sending SIGTERM to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_publish_through_the_node_then_sync_once() {
    let env = Env::new();
    let (key, id) = env.keygen();
    let src = env.path("src");
    sample_tree(&src, 8);
    let master = Daemon::start(&env.path("data"), &[]);

    // The running node owns the store; publish and status go through it.
    let out = env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(out.contains("published src version 1"), "{out}");
    let status = env.run(&["status"]);
    assert!(
        status.contains("(running)") && status.contains("current: version 1"),
        "{status}"
    );

    // A one-shot sync from another store.
    let out = Command::new(BIN)
        .arg("--data")
        .arg(env.path("mirror"))
        .args(["sync", &id, "--peer", &master.addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("synced src version 1"), "{text}");
    let dest = env.path("dest");
    let exp = Command::new(BIN)
        .arg("--data")
        .arg(env.path("mirror"))
        .args(["export", &id, dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(exp.status.success());
    assert_same_tree(&src, &dest);

    // Export and verify work through the running node too.
    let d2 = env.path("dest2");
    env.run(&["export", &id, d2.to_str().unwrap()]);
    assert_same_tree(&src, &d2);
    assert!(env.run(&["verify"]).contains(" 0 problems"));

    let status = master.stop();
    assert!(status.success(), "clean shutdown on SIGTERM: {status}");
    // With the node gone, commands open the store directly again.
    assert!(env.run(&["status"]).contains("current: version 1"));
}

#[test]
fn sync_without_reachable_peers_fails_clearly() {
    let env = Env::new();
    let (_, id) = env.keygen();
    let err = env.fail(&["sync", &id, "--peer", "/ip4/127.0.0.1/tcp/9", "--wait", "2"]);
    assert!(err.contains("could not connect"), "{err}");
}
