//! The binary as operators use it: `run` in the background, commands
//! reaching it through the control socket, `sync` from another store.

use crate::harness::*;

#[test]
fn run_publish_through_the_node_then_sync_once() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 8);
    let mut master = h.binary("master", &[]);
    let maddr = master.addrs()[0].to_string();

    // The running node owns the store; publish and status go through it.
    let out = master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(out.contains("published src version 1"), "{out}");
    let status = master.cli().run(&["status"]);
    assert!(
        status.contains("(running)") && status.contains("current: version 1"),
        "{status}"
    );

    // A one-shot sync from another store (`run` requires success and
    // prints stderr otherwise).
    let mirror = h.cli_at(&h.path("mirror"));
    let text = mirror.run(&["sync", &id, "--peer", &maddr]);
    assert!(text.contains("synced src version 1"), "{text}");
    let dest = h.path("dest");
    mirror.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);

    // Export and verify work through the running node too.
    let d2 = h.path("dest2");
    master.cli().run(&["export", &id, d2.to_str().unwrap()]);
    assert_same_tree(&src, &d2);
    assert!(master.cli().run(&["verify"]).contains(" 0 problems"));

    let status = master.stop();
    assert!(status.success(), "clean shutdown on SIGTERM: {status}");
    // With the node gone, commands open the store directly again.
    assert!(master.cli().run(&["status"]).contains("current: version 1"));
    // Its stderr went to its log: the announcement and the shutdown.
    let log = master.log();
    assert!(
        log.contains("announced") && log.contains("shutting down"),
        "{log}"
    );
}

#[test]
fn sync_without_reachable_peers_fails_clearly() {
    let h = Harness::new();
    let (_, id) = h.keygen();
    let err = h.fail(&["sync", &id, "--peer", "/ip4/127.0.0.1/tcp/9", "--wait", "2"]);
    assert!(err.contains("could not connect"), "{err}");
}
