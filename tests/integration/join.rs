//! Joining as a volunteer does: one ticket, DNS and `host:port` peers,
//! follow and unfollow on a running node (remembered across restarts, space
//! freed by gc), and partial mirrors. Real binaries on loopback.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Polls `node`'s status until `id` is at `current: version v`.
fn wait_current(node: &TestNode, id: &str, v: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = format!("current: version {v} ");
    loop {
        let s = node.cli().run(&["status"]);
        if s.contains(id) && s.contains(&want) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached version {v}:\n{s}",
            node.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last line of `ticket`'s output.
fn ticket(node: &TestNode, args: &[&str]) -> String {
    let mut a = vec!["ticket"];
    a.extend_from_slice(args);
    let out = node.cli().run(&a);
    out.lines().last().unwrap().trim().to_string()
}

/// The store's chunk bytes, from `status`.
fn chunk_bytes(node: &TestNode) -> u64 {
    let s = node.cli().run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    v["store"]["chunk_bytes"].as_u64().unwrap()
}

#[test]
fn a_mirror_started_with_only_a_ticket_syncs_from_the_master() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 8);
    let mut master = h.binary("master", &[]);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let out = master.cli().run_any(&["ticket", &id]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loopback"),
        "loopback-only warned: {stderr}"
    );
    let t = ticket(&master, &[&id]);
    assert!(t.starts_with("pm1"), "{t}");
    // Also by name, on the running node.
    assert_eq!(ticket(&master, &["src"]), t);

    // No --peer, no collection id: the ticket is enough.
    let mirror = h.binary("mirror", &["--follow", &t]);
    wait_current(&mirror, &id, 1);
    let dest = h.path("dest");
    mirror.cli().run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);

    // And for a one-off copy.
    let once = h.cli_at(&h.path("once"));
    let text = once.run(&["sync", &t]);
    assert!(text.contains("synced src version 1"), "{text}");
    // A one-off copy is not followed.
    let s = once.run(&["status"]);
    assert!(s.contains("not followed"), "{s}");

    // A damaged ticket says so, with the usage exit code.
    let mut bad = t.clone().into_bytes();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    let out = h
        .cli_at(&h.path("bad"))
        .run_any(&["sync", &bad, "--wait", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged"), "{err}");

    // What a node publishes it follows, also after a restart.
    assert!(master.stop().success());
    let s = master.cli().run(&["status"]);
    assert!(
        s.contains("current: version 1") && !s.contains("not followed"),
        "{s}"
    );
}

#[test]
fn peers_may_be_dns_multiaddrs_or_host_port() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 1);
    let master = h.binary("master", &[]);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let port = master.addrs()[0]
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(p) => Some(p),
            _ => None,
        })
        .unwrap();
    for (i, peer) in [
        format!("localhost:{port}"),
        format!("/dns4/localhost/tcp/{port}"),
    ]
    .iter()
    .enumerate()
    {
        let m = h.cli_at(&h.path(&format!("m{i}")));
        let text = m.run(&["sync", &id, "--peer", peer, "--wait", "30"]);
        assert!(text.contains("synced src version 1"), "{peer}: {text}");
        let dest = h.path(&format!("dest{i}"));
        m.run(&["export", &id, dest.to_str().unwrap()]);
        assert_same_tree(&src, &dest);
    }
    // `--addr host:port` goes into a ticket as a DNS address.
    let out = master
        .cli()
        .run(&["ticket", &id, "--addr", &format!("localhost:{port}")]);
    assert!(
        out.contains(&format!("peer /dns/localhost/tcp/{port}")),
        "{out}"
    );
}

#[test]
fn follow_survives_restarts_and_unfollow_frees_the_space() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 8);
    let master = h.binary("master", &[]);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let t = ticket(&master, &[&id]);

    // A running mirror that follows nothing yet.
    let mut mirror = h.binary("mirror", &[]);
    let out = mirror.cli().run(&["follow", &t]);
    assert!(
        out.contains(&format!("following collection {id} (all paths)")),
        "{out}"
    );
    wait_current(&mirror, &id, 1);

    // Restarted without flags: still followed, still reaching the master
    // (the ticket's peers were recorded), so version 2 arrives.
    mirror.restart();
    fs::write(src.join("new.txt"), b"version two").unwrap();
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let s = wait_current(&mirror, &id, 2);
    assert!(!s.contains("not followed"), "{s}");
    let held = chunk_bytes(&mirror);
    assert!(held >= 8 << 20, "{held}");

    // Unfollowed: gc gives the space back, and a restart does not follow it.
    let out = mirror.cli().run(&["unfollow", &id]);
    assert!(out.contains("dropped by the next gc"), "{out}");
    let s = mirror.cli().run(&["status"]);
    assert!(s.contains("unfollowed"), "{s}");
    let out = mirror.cli().run(&["gc"]);
    assert!(chunk_bytes(&mirror) < 64 << 10, "{out}");
    let freed = out.split("freed ").nth(1).unwrap().trim();
    assert!(freed.ends_with("MiB"), "{out}");
    mirror.restart();
    let s = mirror.cli().run(&["status"]);
    assert!(!s.contains(&id), "forgotten for good: {s}");
    // Unfollowing what is not here is a not-found error.
    let out = mirror.cli().run_any(&["unfollow", &id]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_partial_mirror_fetches_keeps_and_serves_only_its_paths() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    for (i, d) in ["alpha", "beta", "gamma"].iter().enumerate() {
        fs::create_dir_all(src.join(d).join("sub")).unwrap();
        fs::write(src.join(d).join("big.bin"), random_bytes(2 << 20, i as u64)).unwrap();
        fs::write(src.join(d).join("sub/small.txt"), format!("{d}\n")).unwrap();
    }
    let master = h.binary("master", &[]);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    // The ticket carries the paths.
    let t = ticket(&master, &[&id, "--only", "beta"]);
    let mirror = h.binary("mirror", &["--http", "127.0.0.1:0"]);
    let out = mirror.cli().run(&["follow", &t]);
    assert!(out.contains("partial: beta"), "{out}");
    let s = wait_current(&mirror, &id, 1);
    assert!(s.contains("partial (patterns beta)"), "{s}");
    let held = chunk_bytes(&mirror);
    assert!(
        (2 << 20..3 << 20).contains(&held),
        "holds one directory's chunks, not three: {held}"
    );

    // Export writes the paths mirrored; verify finds nothing missing.
    let dest = h.path("dest");
    mirror.cli().run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src.join("beta"), &dest.join("beta"));
    let names: Vec<String> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["beta"]);
    assert!(mirror.cli().run(&["verify"]).contains(" 0 problems"));

    // HTTP serves beta, and says plainly that alpha is not mirrored here.
    let base = http_base(&mirror);
    let ok = curl(&[&format!("{base}/{id}/beta/sub/small.txt")]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "beta\n");
    let missing = curl(&["-w", "%{http_code}", &format!("{base}/{id}/alpha/big.bin")]);
    let body = String::from_utf8_lossy(&missing.stdout);
    assert!(
        body.contains("not mirrored here") && body.ends_with("404"),
        "{body}"
    );
    let listing = curl(&[&format!("{base}/{id}/?format=json")]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("beta") && !listing.contains("alpha"),
        "{listing}"
    );

    // Following the whole collection again fetches the rest.
    mirror.cli().run(&["follow", &id]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while chunk_bytes(&mirror) < 6 << 20 {
        assert!(Instant::now() < deadline, "the rest never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = h.path("all");
    mirror.cli().run(&["export", &id, all.to_str().unwrap()]);
    assert_same_tree(&src, &all);
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .expect("curl")
}
