//! Volunteer caps on real nodes over loopback: a capped node stays within
//! 5% of its cap over every 10 s window, downloaders share an upload cap
//! equally (an idle share goes to the others), and `max_peers` holds.
//!
//! The published trees are many 128 KiB files, each one chunk, so the
//! received-bytes counter moves in small steps and a window's count is not
//! blurred by a 4 MiB chunk landing on either edge.

use std::path::Path;
use std::time::{Duration, Instant};

use peermirror::keys::MasterKey;
use peermirror::node::NodeConfig;

use crate::harness::*;

const MIB: u64 = 1 << 20;
/// The caps under test: a few MiB/s, so a 10 s window moves 40 MiB.
const CAP: u64 = 4 * MIB;
const FILE: usize = 128 << 10;
/// Allowed deviation from the cap over a window.
const TOLERANCE: f64 = 0.05;

/// Writes `mib` MiB of distinct one-chunk files under `dir` (random bytes
/// from blake3's output stream: generated in optimised code, so quickly).
fn small_files(dir: &Path, mib: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut bytes = vec![0u8; FILE];
    for i in 0..(mib << 20) / FILE {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes())
            .update(&(i as u64).to_le_bytes());
        h.finalize_xof().fill(&mut bytes);
        std::fs::write(dir.join(format!("f{i:05}")), &bytes).unwrap();
    }
}

/// Received-bytes samples: (seconds since the first, bytes) per node.
struct Samples {
    at: Vec<f64>,
    bytes: Vec<Vec<u64>>,
}

impl Samples {
    /// Samples each node's received bytes every second, from the moment
    /// every node has received some, for `secs` seconds or until `done`.
    async fn take(nodes: &[&TestNode], secs: u64, done: impl Fn(&[u64]) -> bool) -> Samples {
        let read = || {
            nodes
                .iter()
                .map(|n| n.node().bytes_down())
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while read().contains(&0) {
            assert!(Instant::now() < deadline, "no bytes moved in a minute");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t0 = Instant::now();
        let mut s = Samples {
            at: vec![0.0],
            bytes: vec![read()],
        };
        let mut next = t0;
        for _ in 0..secs {
            next += Duration::from_secs(1);
            tokio::time::sleep_until(next.into()).await;
            let b = read();
            s.at.push(t0.elapsed().as_secs_f64());
            let finished = done(&b);
            s.bytes.push(b);
            if finished {
                break;
            }
        }
        s
    }

    /// Bytes per second of `f(sample)` between samples `i` and `j`.
    fn rate(&self, i: usize, j: usize, f: impl Fn(&[u64]) -> u64) -> f64 {
        (f(&self.bytes[j]) - f(&self.bytes[i])) as f64 / (self.at[j] - self.at[i])
    }

    /// Every 10 s window from `from` to `to` (sample indices).
    fn windows(&self, from: usize, to: usize) -> Vec<(usize, usize)> {
        (from..=to.saturating_sub(10))
            .map(|i| (i, i + 10))
            .collect()
    }

    fn table(&self) -> String {
        let mut out = String::new();
        for (t, b) in self.at.iter().zip(&self.bytes) {
            out.push_str(&format!("{t:6.2}s {b:?}\n"));
        }
        out
    }
}

/// Asserts `rate` is within [`TOLERANCE`] of `want`.
fn near(rate: f64, want: f64, what: &str, s: &Samples) {
    let dev = (rate - want) / want;
    eprintln!("{what}: {:+.2}%", dev * 100.0);
    assert!(
        dev.abs() <= TOLERANCE,
        "{what}: {:.3} MiB/s, {:+.1}% off {:.3} MiB/s\n{}",
        rate / MIB as f64,
        dev * 100.0,
        want / MIB as f64,
        s.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_seeder_stays_within_five_percent_of_its_upload_cap() {
    let h = Harness::new();
    let src = h.path("src");
    small_files(&src, 64, 1);
    let key = MasterKey::generate();
    let c = key.collection();
    let seeder = h
        .start_with("seeder", vec![], vec![], |cfg: &mut NodeConfig| {
            cfg.net.limits.upload_rate = CAP;
        })
        .await;
    let v = seeder.publish(&key, &src).await;
    let mirror = h.start("mirror", seeder.addrs().to_vec(), vec![c]).await;

    // 1 s of warm-up, then every 10 s window of the next 12.
    let s = Samples::take(&[&mirror], 13, |_| false).await;
    for (i, j) in s.windows(1, s.at.len() - 1) {
        near(
            s.rate(i, j, |b| b[0]),
            CAP as f64,
            "mirror's receive rate",
            &s,
        );
    }
    // The seeder's status shows the cap and a current rate near it.
    let st = seeder.status().await;
    let caps = st.node.unwrap().caps;
    assert_eq!(caps.upload_cap, CAP);
    assert_eq!((caps.download_cap, caps.max_peers), (0, 0));
    assert!(
        (caps.upload_rate / CAP as f64 - 1.0).abs() < 0.15,
        "status upload rate {}",
        caps.upload_rate
    );
    let ms = mirror.status().await.node.unwrap().caps;
    assert!(ms.download_rate > 0.5 * CAP as f64, "{ms:?}");
    assert!(
        mirror.status().await.collections[0].current.is_none(),
        "the tree outlasts the measurement"
    );
    let _ = v;
    // And it says so in its log, once a minute at most.
    seeder
        .wait_log("limit hit: chunk uploads held back by the upload cap")
        .await;
    mirror.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_mirror_stays_within_five_percent_of_its_download_cap() {
    let h = Harness::new();
    let src = h.path("src");
    small_files(&src, 64, 2);
    let key = MasterKey::generate();
    let c = key.collection();
    let seeder = h.start("seeder", vec![], vec![]).await;
    seeder.publish(&key, &src).await;
    let mirror = h
        .start_with("mirror", seeder.addrs().to_vec(), vec![c], |cfg| {
            cfg.net.limits.download_rate = CAP;
        })
        .await;
    let s = Samples::take(&[&mirror], 13, |_| false).await;
    for (i, j) in s.windows(1, s.at.len() - 1) {
        near(
            s.rate(i, j, |b| b[0]),
            CAP as f64,
            "mirror's receive rate",
            &s,
        );
    }
    let caps = mirror.status().await.node.unwrap().caps;
    assert_eq!(caps.download_cap, CAP);
    mirror.shutdown().await;
    seeder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloaders_share_the_upload_cap_and_the_idle_share_moves() {
    const SMALL: usize = 26;
    const LARGE: usize = 50;
    let h = Harness::new();
    let (ka, kb) = (MasterKey::generate(), MasterKey::generate());
    let (ca, cb) = (ka.collection(), kb.collection());
    small_files(&h.path("a"), SMALL, 3);
    small_files(&h.path("b"), LARGE, 4);
    let seeder = h
        .start_with("seeder", vec![], vec![], |cfg| {
            cfg.net.limits.upload_rate = CAP;
        })
        .await;
    seeder.publish(&ka, &h.path("a")).await;
    seeder.publish(&kb, &h.path("b")).await;
    // Different collections: the two cannot trade chunks with each other,
    // so every byte they get comes through the seeder's cap.
    let addrs = seeder.addrs().to_vec();
    let (ma, mb) = tokio::join!(
        h.start("mirror-a", addrs.clone(), vec![ca]),
        h.start("mirror-b", addrs.clone(), vec![cb]),
    );
    let small = (SMALL as u64) * MIB;
    let large = (LARGE as u64) * MIB;
    let s = Samples::take(&[&ma, &mb], 30, |b| b[1] >= large).await;
    let a_done = s
        .bytes
        .iter()
        .position(|b| b[0] >= small)
        .unwrap_or_else(|| panic!("mirror a never finished\n{}", s.table()));
    assert!(
        a_done >= 11,
        "the overlap is too short to measure\n{}",
        s.table()
    );
    // Both busy: the total is the cap, each gets half.
    for (i, j) in s.windows(1, a_done - 1) {
        near(s.rate(i, j, |b| b[0] + b[1]), CAP as f64, "total", &s);
        near(
            s.rate(i, j, |b| b[0]),
            CAP as f64 / 2.0,
            "mirror a's share",
            &s,
        );
        near(
            s.rate(i, j, |b| b[1]),
            CAP as f64 / 2.0,
            "mirror b's share",
            &s,
        );
    }
    // Mirror a done: b takes the whole cap.
    let b_done = s
        .bytes
        .iter()
        .position(|b| b[1] >= large)
        .unwrap_or(s.at.len() - 1);
    let (from, to) = (a_done + 1, b_done - 1);
    assert!(to >= from + 4, "too little time alone\n{}", s.table());
    near(s.rate(from, to, |b| b[1]), CAP as f64, "mirror b alone", &s);
    for n in [ma, mb, seeder] {
        n.shutdown().await;
    }
}

#[test]
fn caps_are_flags_and_settings_with_units() {
    let h = Harness::new();
    let shown = h.run(&[
        "config",
        "--upload-rate",
        "2MiB",
        "--download-rate",
        "1500kB",
        "--max-peers",
        "9",
    ]);
    for line in [
        "limits.upload_rate = \"2 MiB/s\"",
        "limits.download_rate = \"1500 kB/s\"",
        "limits.max_peers = 9",
    ] {
        let row = shown.lines().find(|l| l.starts_with(line));
        assert!(
            row.is_some_and(|r| r.ends_with("# command line")),
            "{line} in\n{shown}"
        );
    }
    let e = h.fail(&["config", "--upload-rate", "fast"]);
    assert!(e.contains("not a size"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_peers_refuses_a_peer_too_many_but_not_a_second_connection() {
    let h = Harness::new();
    let hub = h
        .start_with("hub", vec![], vec![], |cfg| cfg.net.limits.max_peers = 1)
        .await;
    let a = h.start("a", hub.addrs().to_vec(), vec![]).await;
    let b = h.start("b", vec![], vec![]).await;
    let peers = |n: &TestNode| {
        let c = n.node().client().clone();
        async move { c.peers().await.len() }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while peers(&hub).await == 0 {
        assert!(Instant::now() < deadline, "a never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The hub dials b: refused on its own side.
    let e = hub.node().client().dial(b.addrs()[0].clone()).await;
    assert!(e.is_err(), "{e:?}");
    // b dials the hub: the hub drops it.
    let _ = b.node().client().dial(hub.addrs()[0].clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<_> = hub
        .node()
        .client()
        .peers()
        .await
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    assert_eq!(ids, vec![a.peer_id()]);
    // A further connection to the peer already there is fine.
    hub.node()
        .client()
        .dial(a.addrs()[0].clone())
        .await
        .unwrap();
    assert_eq!(hub.status().await.node.unwrap().caps.max_peers, 1);
    for n in [hub, a, b] {
        n.shutdown().await;
    }
}
