//! The harness itself: each node's log holds that node's lines only, a
//! binary's output reaches its log across restarts, and a failing test
//! keeps its directory.

use std::fs;
use std::panic::AssertUnwindSafe;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use peermirror::keys::MasterKey;

use crate::harness::*;

/// The line a node's network logs once it listens on `addr` (at debug).
fn listening_line(addr: &Multiaddr) -> String {
    let port = addr
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a TCP address");
    format!("listening address=/ip4/127.0.0.1/tcp/{port}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_in_process_node_logs_to_its_own_file() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 1);
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    let mirror = h.start("mirror", master.addrs().to_vec(), vec![c]).await;
    let v = master.publish(&key, &src).await;
    mirror.wait_version(c, v).await;
    assert_eq!(
        master.status().await.node.unwrap().peer_id,
        master.peer_id().to_string()
    );

    for n in [&master, &mirror] {
        assert!(n.dir().join(LOG_FILE).is_file(), "no log for {}", n.name());
    }
    // The mirror logs it made the version current just after doing so.
    mirror.wait_log("version is current").await;
    let (mlog, rlog) = (master.log(), mirror.log());
    // The same line from the same code in both nodes lands in each node's
    // own file, and only there.
    let (ml, rl) = (
        listening_line(&master.addrs()[0]),
        listening_line(&mirror.addrs()[0]),
    );
    assert!(mlog.contains(&ml) && !mlog.contains(&rl), "master:\n{mlog}");
    assert!(rlog.contains(&rl) && !rlog.contains(&ml), "mirror:\n{rlog}");
    // What only the master did, and what only the mirror did.
    assert!(mlog.contains("announced"), "master:\n{mlog}");
    assert!(!rlog.contains("announced"), "mirror:\n{rlog}");
    assert!(rlog.contains("version is current"), "mirror:\n{rlog}");
    assert!(!mlog.contains("version is current"), "master:\n{mlog}");
    master.shutdown().await;
    mirror.shutdown().await;
}

#[tokio::test]
async fn a_binary_logs_its_output_and_restarts_under_the_same_identity() {
    let h = Harness::new();
    let mut n = h.binary("n", &[]);
    let first = n.addrs().to_vec();
    let status = n.status().await.node.unwrap();
    assert_eq!(status.peer_id, n.peer_id().to_string());
    assert_eq!(status.listen, vec![first[0].to_string()]);

    n.restart();
    let second = n.addrs().to_vec();
    let status = n.status().await.node.unwrap();
    assert_eq!(status.peer_id, n.peer_id().to_string());
    assert_eq!(status.listen, vec![second[0].to_string()]);
    let killed = n.kill();
    assert!(!killed.success(), "{killed}");

    let log = n.log();
    // stdout (peer id, addresses) and stderr (debug logs, shutdown) of both runs.
    assert_eq!(log.matches("==== harness: starting").count(), 2, "{log}");
    assert_eq!(
        log.matches(&format!("peer id {}", n.peer_id())).count(),
        2,
        "{log}"
    );
    for a in first.iter().chain(&second) {
        assert!(log.contains(&format!("listening on {a}")), "{log}");
        assert!(log.contains(&listening_line(a)), "{log}");
    }
    assert_eq!(log.matches("shutting down").count(), 1, "{log}");
}

#[test]
fn events_go_to_the_log_of_their_node_span() {
    let h = Harness::new();
    let (dir, span) = h.node_span("endpoint");
    span.in_scope(|| {
        let inner = tracing::info_span!("inner", step = 1);
        inner.in_scope(|| tracing::info!(answer = 42, "inside"));
        // Below the filter: debug only for the crate under test.
        tracing::debug!("filtered out");
    });
    tracing::info!("outside every node span");
    // What libp2p does for a connection task: a span without a parent that
    // follows from the span current where it was opened.
    let conn = tracing::debug_span!(target: "libp2p_swarm", parent: None, "new_established_connection", id = 7);
    conn.follows_from(&span);
    conn.in_scope(|| tracing::info!("in a connection task"));
    let log = fs::read_to_string(dir.join(LOG_FILE)).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.contains("INFO inner{step=1}: integration::harness_selftest: inside answer=42\n"),
        "{log}"
    );
    assert!(
        log.contains("INFO new_established_connection{id=7}: integration::harness_selftest: in a connection task\n"),
        "{log}"
    );
    let report = h.failure_report();
    assert!(report.contains("==== node endpoint"), "{report}");
    assert!(report.contains("inside answer=42"), "{report}");
    assert!(report.contains(&h.dir().display().to_string()), "{report}");
}

#[test]
fn a_failing_test_keeps_its_directory_and_a_passing_one_does_not() {
    let mut kept = None;
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let h = Harness::new();
        let (_, span) = h.node_span("n");
        span.in_scope(|| tracing::warn!("about to fail"));
        kept = Some(h.dir().to_path_buf());
        panic!("a deliberate failure");
    }));
    assert!(r.is_err());
    let kept = kept.unwrap();
    let log = fs::read_to_string(kept.join("n").join(LOG_FILE));
    fs::remove_dir_all(&kept).unwrap();
    assert!(log.unwrap().contains("about to fail"));

    let gone = Harness::new().dir().to_path_buf();
    assert!(!gone.exists());
}
