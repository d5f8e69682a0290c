//! Settings in layers (`peermirror config`) and the exit codes commands pick
//! from typed errors.

use std::fs;

use crate::harness::*;

#[test]
fn config_shows_each_value_and_its_layer() {
    let env = Harness::new();
    fs::create_dir_all(env.path("data")).unwrap();
    fs::write(
        env.path("data/config.toml"),
        "[store]\nkeep = 4\n[net]\nmdns = true\nidle_timeout_secs = 10\n",
    )
    .unwrap();
    let out = env
        .cmd()
        .args(["config", "--keep", "7"])
        .env("PEERMIRROR_NET__IDLE_TIMEOUT_SECS", "20")
        .env(
            "PEERMIRROR_PEERS",
            "/ip4/127.0.0.1/tcp/9,/ip4/127.0.0.1/tcp/10",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .to_string()
    };
    // flag > environment > file > default, for every key.
    assert!(line("store.keep").contains("= 7") && line("store.keep").contains("# command line"));
    assert!(line("net.idle_timeout_secs").contains("= 20"), "{text}");
    assert!(line("net.idle_timeout_secs").contains("PEERMIRROR_NET__IDLE_TIMEOUT_SECS"));
    assert!(line("net.mdns").contains("= true") && line("net.mdns").contains("# file "));
    assert!(line("net.peers").contains("tcp/10") && line("net.peers").contains("PEERMIRROR_PEERS"));
    assert!(line("net.kademlia").contains("# default"), "{text}");

    // An unknown key is a usage error naming the key.
    fs::write(env.path("data/config.toml"), "[store]\nkep = 4\n").unwrap();
    let out = env.run_any(&["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kep"));
    // gc takes store.keep from the settings when --keep is not given.
    fs::write(env.path("data/config.toml"), "[store]\nkeep = 0\n").unwrap();
    let (key, _) = env.keygen();
    let src = env.path("src");
    sample_tree(&src, 1);
    env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    env.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    fs::write(env.path("data/config.toml"), "[store]\nkeep = 1\n").unwrap();
    env.run(&["gc"]);
    assert!(env.run(&["status"]).contains("versions held: 2\n"));
}

#[test]
fn exit_codes_follow_the_kind_of_failure() {
    let env = Harness::new();
    let code = |args: &[&str]| env.run_any(args).status.code();
    // Usage: bad arguments, a source that is not a directory.
    assert_eq!(code(&["export"]), Some(2));
    let (key, id) = env.keygen();
    fs::write(env.path("file"), b"x").unwrap();
    assert_eq!(
        code(&["publish", "--key", &key, env.path("file").to_str().unwrap()]),
        Some(2)
    );
    assert_eq!(code(&["sync", &id]), Some(2), "sync without peers");
    // Not found: a collection the store does not hold, a missing key file.
    assert_eq!(
        code(&["export", &id, env.path("out").to_str().unwrap()]),
        Some(3)
    );
    assert_eq!(
        code(&[
            "publish",
            "--key",
            "/nonexistent/key",
            env.path(".").to_str().unwrap()
        ]),
        Some(3)
    );
    // Try later: the store is in use; no peer reachable.
    {
        let _held = peermirror::store::Store::open(&env.path("data")).unwrap();
        assert_eq!(code(&["status"]), Some(75));
    }
    assert_eq!(
        code(&["sync", &id, "--peer", "/ip4/127.0.0.1/tcp/9", "--wait", "1"]),
        Some(75)
    );
    // Status as JSON parses and names the data dir.
    let json: serde_json::Value = serde_json::from_str(&env.run(&["status", "--json"])).unwrap();
    assert!(json["data"].as_str().unwrap().ends_with("data"));
}
