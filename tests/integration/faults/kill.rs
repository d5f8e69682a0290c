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
