//! `run` as a service and for people: systemd's readiness, watchdog and
//! stop notices on a `NOTIFY_SOCKET` the test listens on, `$STATE_DIRECTORY`
//! as the data directory, the default log lines of a sync, `--log-format
//! json`, `-q`, shell completions and the manual page.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A `peermirror run` started as a service manager would: the caller's
/// environment, no `RUST_LOG`, stderr (the log) to a file.
struct Service {
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `peermirror [--data DATA] run --listen 127.0.0.1:0 ARGS` with
    /// `env`, and waits until it prints its listen addresses.
    fn start(
        h: &Harness,
        name: &str,
        data: Option<&Path>,
        args: &[&str],
        env: &[(&str, OsString)],
    ) -> Service {
        let log = h.path(&format!("{name}.log"));
        h.keep_log(name, log.clone());
        let mut cmd = Command::new(BIN);
        if let Some(d) = data {
            cmd.arg("--data").arg(d);
        }
        cmd.args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(args);
        for var in [
            "RUST_LOG",
            "PEERMIRROR_DATA",
            "PEERMIRROR_CONFIG",
            "NOTIFY_SOCKET",
            "STATE_DIRECTORY",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn peermirror run");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60));
        assert!(
            matches!(&line, Ok(l) if l.starts_with("peer id")),
            "{name} did not start: {line:?}"
        );
        Service {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most a minute) until the log contains `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "never logged {needle:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(s.success(), "exit status {s}:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "no exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Receives one notification, as text.
fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn under_systemd_it_reports_ready_pets_the_watchdog_and_uses_the_state_directory() {
    let h = Harness::new();
    let state = h.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let sock_path = h.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut node = Service::start(
        &h,
        "service",
        None,
        &[],
        &[
            ("STATE_DIRECTORY", state.clone().into()),
            ("NOTIFY_SOCKET", sock_path.clone().into()),
            ("WATCHDOG_USEC", "1000000".into()),
        ],
    );
    let ready = recv(&sock);
    assert!(ready.contains("READY=1"), "{ready:?}");
    // Ready means listening (its addresses are printed before) and the
    // control socket up, in the state directory: no --data was given.
    assert!(peermirror::control::socket_path(&state).exists());
    assert!(state.join("node.key").exists());
    let status = h.cli_at(&state).run(&["status"]);
    assert!(status.contains("(running)"), "{status}");
    // WATCHDOG_USEC of 1 s: petted every half second.
    let started = Instant::now();
    let pet = recv(&sock);
    assert_eq!(pet.trim(), "WATCHDOG=1");
    assert!(started.elapsed() < Duration::from_secs(2));
    node.stop();
    let mut notes = Vec::new();
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(notes.iter().any(|n| n.contains("STOPPING=1")), "{notes:?}");
}

/// Starts a master binary holding a small published tree; returns it, its
/// address and the collection id.
fn master_with_tree(h: &Harness) -> (TestNode, String, String) {
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 3);
    let master = h.binary("master", &[]);
    let out = master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(out.contains("published"), "{out}");
    let addr = master.addrs()[0].to_string();
    (master, addr, id)
}

#[test]
fn run_logs_a_sync_for_people_by_default_as_json_when_asked_and_not_at_all_with_q() {
    let h = Harness::new();
    let (mut master, addr, id) = master_with_tree(&h);
    let start = |name: &str, extra: &[&str]| {
        let data = h.path(name);
        let mut args = vec!["--peer", &addr, "--follow", &id];
        args.extend_from_slice(extra);
        (Service::start(&h, name, Some(&data), &args, &[]), data)
    };
    // The text mirror also has a peer that is never there (loopback's
    // discard port, closed).
    let (mut text, _) = start("text", &["--peer", "/ip4/127.0.0.1/tcp/9"]);
    let (mut json, _) = start("json", &["--log-format", "json"]);
    let (mut quiet, quiet_data) = start("quiet", &["-q"]);

    // Default: info lines for people, with sizes and times in units.
    let log = text.wait_log("version is current");
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line:\n{log}"))
            .to_string()
    };
    let accepted = line("accepted a new version");
    assert!(accepted.contains(" INFO "), "{accepted}");
    for part in ["collection=src", "version=1", "size=3.", "MiB"] {
        assert!(accepted.contains(part), "{part:?} in {accepted}");
    }
    let fetched = line("fetched version");
    for part in [
        "collection=src",
        "version=1",
        // The master and the other mirrors syncing beside it may all serve.
        "peers=",
        "time=",
        "rate=",
        "/s",
    ] {
        assert!(fetched.contains(part), "{part:?} in {fetched}");
    }
    assert!(line("version is current").contains("collection=src"));
    // Dates, not epoch seconds: `2026-11-24 10:15:03Z  INFO ...`.
    let stamp: Vec<char> = accepted.chars().take(20).collect();
    assert!(
        stamp[4] == '-' && stamp[10] == ' ' && stamp[19] == 'Z',
        "{accepted}"
    );
    assert!(!log.contains("DEBUG"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour off a terminal:\n{log}");
    // The missing peer: said once, not at every retry (after 1, 3, 7 s).
    text.wait_log("cannot reach a configured peer");
    std::thread::sleep(Duration::from_secs(5));
    let log = text.log();
    assert_eq!(
        log.matches("cannot reach a configured peer").count(),
        1,
        "{log}"
    );

    // JSON: every line an object, the same events.
    let log = json.wait_log("version is current");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let fetched = events
        .iter()
        .find(|e| e["message"] == "fetched version")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(fetched["level"], "INFO");
    assert_eq!(fetched["collection"], "src");
    assert_eq!(fetched["version"], 1);

    // -q: warnings only, so a sync says nothing; it did sync.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = h.cli_at(&quiet_data).run(&["status"]);
        if s.contains("current: version 1") {
            break s;
        }
        assert!(Instant::now() < deadline, "the quiet mirror never synced");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Dates for people, when the announcement expires, the caps.
    for part in [
        "published 20",
        "Z (now)",
        "announcement expires 20",
        " days)",
        "(cap unlimited)",
        "(max no limit)",
    ] {
        assert!(status.contains(part), "{part:?} in\n{status}");
    }
    quiet.stop();
    let log = quiet.log();
    assert!(!log.contains("INFO"), "{log}");

    text.stop();
    json.stop();
    for l in json.log().lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    master.stop();
}

/// The subcommands `--help` lists.
fn subcommands(h: &Harness) -> Vec<String> {
    let help = h.run(&["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn completions_and_a_manual_page_cover_every_subcommand() {
    let h = Harness::new();
    let commands = subcommands(&h);
    assert!(commands.len() >= 10, "{commands:?}");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = h.run(&["completions", shell]);
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
    }
    let page = h.run(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH peermirror 1"),
        "{page}"
    );
    for c in &commands {
        assert!(
            page.contains(&format!("peermirror\\-{c}")),
            "man page lacks {c}"
        );
    }
    let dir = h.path("man1");
    std::fs::create_dir_all(&dir).unwrap();
    h.run(&["man", "--dir", dir.to_str().unwrap()]);
    for c in &commands {
        let p = dir.join(format!("peermirror-{c}.1"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(text.contains(&format!("peermirror\\-{c} \\-")), "{text}");
    }
}
