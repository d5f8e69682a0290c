//! A mirror under load: 200 curl transfers at once from a mirror that syncs
//! (and switches to) the next version meanwhile, keeping one version only.
//! Every download is byte-identical to the version it started on, nothing
//! fails, and the mirror's peak RSS stays bounded.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::http_metrics::Scrape;
use crate::http_mirror::wait_current;

/// Concurrent downloads.
const CLIENTS: usize = 200;
/// Files in each version, and their size.
const FILES: usize = 8;
const FILE_MIB: usize = 4;
/// Per-transfer rate, so every transfer is still running when the mirror
/// switches to the next version (4 MiB at 256 KiB/s: about sixteen seconds).
const RATE: &str = "256K";
/// The bound asserted on the mirror's peak RSS: the 128 MiB response buffer
/// budget, the sync's own ~100 MiB, and a margin. Measured: see
/// docs/design.md ("Serving people over HTTP").
const MAX_RSS_MIB: u64 = 320;

fn tree(dir: &std::path::Path, seed: u64, extra_mib: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..FILES {
        let data = random_bytes(FILE_MIB << 20, seed + i as u64);
        fs::write(dir.join(format!("f{i}.bin")), data).unwrap();
    }
    if extra_mib > 0 {
        fs::write(
            dir.join("extra.bin"),
            random_bytes(extra_mib << 20, seed + 99),
        )
        .unwrap();
    }
}

/// The mirror's peak resident set (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

#[test]
fn two_hundred_downloads_while_the_mirror_switches_versions() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let (v1, v2) = (h.path("v1"), h.path("v2"));
    tree(&v1, 1000, 0);
    tree(&v2, 2000, 64);
    let master = h.binary("master", &[]);
    master.cli().run(&[
        "publish",
        "--key",
        &key,
        "--name",
        "load",
        v1.to_str().unwrap(),
    ]);
    let maddr = master.addrs()[0].to_string();
    let mut mirror = h.binary(
        "mirror",
        &[
            "--peer",
            &maddr,
            "--follow",
            &id,
            "--http",
            "127.0.0.1:0",
            "--keep",
            "1",
        ],
    );
    wait_current(&mirror, &id);
    let base = http_base(&mirror);

    // 200 transfers at once, one connection each, from one curl.
    let out = h.path("out");
    fs::create_dir_all(&out).unwrap();
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--parallel", "--parallel-immediate"])
        .args(["--parallel-max", &CLIENTS.to_string(), "--limit-rate", RATE])
        .args([
            "-w",
            "%{http_code} %{size_download} %header{x-peermirror-version} %{filename_effective}\\n",
        ]);
    for n in 0..CLIENTS {
        curl.arg("-o")
            .arg(out.join(format!("{n}")))
            .arg(format!("{base}/load/f{}.bin", n % FILES));
    }
    let started = Instant::now();
    let mut clients = curl
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");

    // Once they are all connected, the next version is published; the
    // mirror fetches it and switches while every transfer still runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = Scrape::of(&base).value("peermirror_http_connections");
        if open > CLIENTS as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {open} connections open");
        std::thread::sleep(Duration::from_millis(50));
    }
    master.cli().run(&[
        "publish",
        "--key",
        &key,
        "--name",
        "load",
        v2.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = mirror.cli().run(&["status"]);
        if s.contains("current: version 2") {
            break;
        }
        assert!(Instant::now() < deadline, "mirror never switched:\n{s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let switched = started.elapsed();
    let during = Scrape::of(&base).value("peermirror_http_connections");
    assert!(
        clients.try_wait().unwrap().is_none() && during > (CLIENTS / 2) as f64,
        "the switch came after the downloads ({during} connections open)"
    );

    let done = clients.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(
        done.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let lines = String::from_utf8(done.stdout).unwrap();
    assert_eq!(lines.lines().count(), CLIENTS, "{lines}");
    for l in lines.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(
            (f[0], f[1], f[2]),
            ("200", (FILE_MIB << 20).to_string().as_str(), "1"),
            "{l}"
        );
    }
    for n in 0..CLIENTS {
        let got = fs::read(out.join(format!("{n}"))).unwrap();
        let want = fs::read(v1.join(format!("f{}.bin", n % FILES))).unwrap();
        assert!(got == want, "download {n} differs from version 1");
    }

    let m = Scrape::of(&base);
    assert_eq!(m.sum("peermirror_errors_total"), 0.0, "{}", m.0);
    assert_eq!(m.value("peermirror_http_refused_connections_total"), 0.0);
    assert!(m.value("peermirror_http_requests_total{code=\"200\"}") >= CLIENTS as f64);
    // And version 2 is what a new request gets.
    let v2_first = fs::read(v2.join("f0.bin")).unwrap();
    let r = crate::http_mirror::curl(&[&format!("{base}/load/f0.bin")]);
    assert!(r.stdout == v2_first);

    let rss = peak_rss_mib(mirror.pid());
    eprintln!(
        "{CLIENTS} downloads of {FILE_MIB} MiB: switched after {switched:?}, all done after \
         {took:?}; mirror peak RSS {rss} MiB"
    );
    assert!(rss < MAX_RSS_MIB, "mirror peak RSS {rss} MiB");
    mirror.stop();
}
