//! Killed processes: a mirror SIGKILLed in the middle of a sync resumes
//! where it stopped.

use std::time::{Duration, Instant};

use peermirror::keys::MasterKey;
use peermirror::store::Store;

use super::disk::source_store;
use crate::harness::*;

/// A mirror (the `peermirror run` binary) SIGKILLed mid-sync and restarted
/// fetches again at most a tenth of what it had verified and stored, and
/// its store verifies after the kill and at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_killed_mid_sync_resumes_without_fetching_again() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 64);
    let key = MasterKey::generate();
    let c = key.collection();
    let (store, v) = source_store(&h, "source", &key, &src);
    let need = store.held_bytes().unwrap();
    let source = SlowSource::start(&h, "source", store, Duration::from_millis(60)).await;
    let peer = source.addrs()[0].to_string();
    let id = c.to_string();
    let mut m = h.binary("m", &["--peer", &peer, "--follow", &id]);

    let t = Instant::now();
    loop {
        let s = m.status().await;
        let done = s.collections.first().map_or(0, |c| c.done_bytes);
        if done >= need * 2 / 5 {
            assert!(s.collections[0].current.is_none(), "synced before the kill");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the sync never got going"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    m.kill();

    // What survived the kill is sound.
    let held = {
        let dir = m.dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let s = Store::open(&dir).unwrap();
            let r = s.verify(false).unwrap();
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            s.held_bytes().unwrap()
        })
        .await
        .unwrap()
    };
    assert!(held >= need / 4 && held < need, "held {held} of {need}");

    m.restart();
    let t = Instant::now();
    let status = loop {
        let s = m.status().await;
        if s.collections
            .first()
            .and_then(|c| c.current.as_ref())
            .map(|c| c.version)
            == Some(v)
        {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let down = status.node.unwrap().bytes_down;
    let again = down.saturating_sub(need - held);
    assert!(
        again <= held / 10,
        "fetched {down} after the restart: {again} of the {held} held before"
    );
    assert!(m.cli().run(&["verify"]).contains(" 0 problems"));
    m.stop();
    drop(source);
    let out = h.path("out");
    m.cli().run(&["export", &id, out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
}

/// Eight nodes: a slow source and seven mirrors (the `peermirror run`
/// binary); two mirrors picked at random are SIGKILLed while the swarm
/// syncs and restarted. Every mirror ends with the version, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_mirrors_killed_during_an_eight_node_sync_still_converge() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 32);
    let key = MasterKey::generate();
    let c = key.collection();
    let (store, _) = source_store(&h, "source", &key, &src);
    let source = SlowSource::start(&h, "source", store, Duration::from_millis(40)).await;
    let peer = source.addrs()[0].to_string();
    let id = c.to_string();
    let mut mirrors: Vec<TestNode> = (0..7)
        .map(|i| h.binary(&format!("m{i}"), &["--peer", &peer, "--follow", &id]))
        .collect();

    // Two victims, drawn from the clock: a different pair from run to run.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let a = seed % 7;
    let b = (a + 1 + (seed / 7) % 6) % 7;
    // Kill them once the swarm is under way, but before anyone is done.
    let t = Instant::now();
    'wait: loop {
        for m in &mirrors {
            let s = m.status().await;
            if s.collections.first().is_some_and(|c| c.done_bytes > 0) {
                break 'wait;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no sync started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &i in &[a, b] {
        mirrors[i].kill();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for &i in &[a, b] {
        mirrors[i].restart();
    }

    let t = Instant::now();
    for m in &mirrors {
        loop {
            let s = m.status().await;
            if s.collections
                .first()
                .and_then(|c| c.current.as_ref())
                .is_some()
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "{} never converged (killed: m{a}, m{b})",
                m.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for m in &mirrors {
        let dest = h.path(&format!("{}-out", m.name()));
        m.cli().run(&["export", &id, dest.to_str().unwrap()]);
        assert_same_tree(&src, &dest);
        assert!(m.cli().run(&["verify"]).contains(" 0 problems"));
    }
}
