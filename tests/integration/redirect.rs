//! The redirector and Metalink with real clients: three `peermirror run`
//! mirrors on loopback, each with `--http` and a public URL, and a master
//! whose own HTTP redirects. curl (with 127.0.0.x source addresses) is sent
//! to the mirror that prefers its prefix, or is in its region; killed and
//! stale mirrors are skipped; with none left the node serves the file
//! itself; aria2c given a `.meta4` fetches from several mirrors at once.

mod records;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls the node's status until `id` is current at `version`.
fn wait_current(node: &TestNode, id: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = format!("current: version {version}");
    loop {
        let s = node.cli().run(&["status"]);
        if s.contains(id) && s.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached {version}:\n{s}",
            node.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A mirror following `id` from `master`, serving HTTP on `port` and
/// advertising `url`, with `config` as its `config.toml`.
fn mirror(
    h: &Harness,
    name: &str,
    master: &TestNode,
    id: &str,
    port: u16,
    url: &str,
    config: &str,
) -> TestNode {
    fs::create_dir_all(h.path(name)).unwrap();
    fs::write(h.path(name).join("config.toml"), config).unwrap();
    let maddr = master.addrs()[0].to_string();
    let http = format!("127.0.0.1:{port}");
    h.binary(
        name,
        &[
            "--peer",
            &maddr,
            "--follow",
            id,
            "--http",
            &http,
            "--public-url",
            url,
        ],
    )
}

/// curl's answer: status code, Location, and the body.
struct Answer {
    code: u16,
    location: String,
    headers: String,
    body: Vec<u8>,
}

fn curl(url: &str, source: &str) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-sS", "--interface", source, "-D"])
        .arg(&hdr)
        .args(["-w", "%{http_code} %{redirect_url}", "-o"])
        .arg(dir.path().join("b"))
        .arg(url)
        .output()
        .expect("curl");
    let w = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, location) = w.split_once(' ').unwrap_or((&w, ""));
    Answer {
        code: code.trim().parse().unwrap_or(0),
        location: location.trim().to_string(),
        headers: fs::read_to_string(hdr)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        body: fs::read(dir.path().join("b")).unwrap_or_default(),
    }
}

/// Polls until `ok` holds for curl's answer.
fn until(what: &str, secs: u64, mut f: impl FnMut() -> Option<Answer>) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(a) = f() {
            return a;
        }
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_redirector_prefers_prefix_then_region_and_skips_dead_and_stale_mirrors() {
    if !have("curl") {
        return;
    }
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 4);
    let master = h.binary("master", &["--http", "127.0.0.1:0"]);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let r = http_base(&master);
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let (ua, ub, uc) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
        format!("http://127.0.0.1:{pc}"),
    );
    let mut a = mirror(&h, "a", &master, &id, pa, &ua, "");
    let mut b = mirror(
        &h,
        "b",
        &master,
        &id,
        pb,
        &ub,
        "[http]\nprefer = [\"127.0.0.2/32\"]\n",
    );
    // c holds version 1 but has no room for a second version of big.img.
    let c = mirror(
        &h,
        "c",
        &master,
        &id,
        pc,
        &uc,
        "[http]\nregion = \"DE\"\n[limits]\nmax_store_bytes = 6291456\n",
    );
    for m in [&a, &b, &c] {
        wait_current(m, &id, 1);
    }
    let file = format!("{r}/r/{id}/big.img");
    // The master has taken all three records and found them healthy.
    until("three mirrors in the metalink", 60, || {
        let m = curl(&format!("{file}.meta4"), "127.0.0.1");
        let x = String::from_utf8_lossy(&m.body).to_string();
        (m.code == 200 && [&ua, &ub, &uc].iter().all(|u| x.contains(u.as_str()))).then_some(m)
    });

    // A client inside b's preferred prefix goes to b, every time.
    for _ in 0..5 {
        let x = curl(&file, "127.0.0.2");
        assert_eq!(x.code, 302);
        assert_eq!(x.location, format!("{ub}/{id}/big.img"));
        assert!(
            x.headers.contains("cache-control: no-store"),
            "{}",
            x.headers
        );
        assert!(x.headers.contains("rel=duplicate"), "{}", x.headers);
    }
    // A client in c's region goes to c; by name as well as by id.
    for _ in 0..5 {
        let x = curl(&format!("{r}/r/src/big.img?region=de"), "127.0.0.1");
        assert_eq!(
            (x.code, x.location.as_str()),
            (302, format!("{uc}/{id}/big.img").as_str())
        );
    }
    // Where it sends people, they get the file.
    let big = fs::read(src.join("big.img")).unwrap();
    let got = curl(&format!("{ub}/{id}/big.img"), "127.0.0.2");
    assert!(got.code == 200 && got.body == big);

    // b dies: its clients go elsewhere.
    b.kill();
    let x = until("b skipped", 60, || {
        let x = curl(&file, "127.0.0.2");
        (x.code == 302 && !x.location.starts_with(&ub)).then_some(x)
    });
    assert!(
        x.location.starts_with(&ua) || x.location.starts_with(&uc),
        "{}",
        x.location
    );
    for _ in 0..5 {
        assert!(!curl(&file, "127.0.0.2").location.starts_with(&ub));
    }

    // Version 2: a syncs it, c cannot (its quota), so c is stale.
    fs::write(src.join("big.img"), random_bytes(4 << 20, 99)).unwrap();
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    wait_current(&a, &id, 2);
    until("a's record of version 2", 60, || {
        let x = curl(&format!("{file}?region=DE"), "127.0.0.1");
        (x.code == 302 && x.location.starts_with(&ua)).then_some(x)
    });
    for _ in 0..5 {
        let x = curl(&format!("{file}?region=DE"), "127.0.0.1");
        assert!(
            x.location.starts_with(&ua),
            "stale c chosen: {}",
            x.location
        );
    }
    assert!(c.cli().run(&["status"]).contains("current: version 1"));

    // a dies too: nobody fresh and alive is left, so the master serves it.
    a.kill();
    let v2 = fs::read(src.join("big.img")).unwrap();
    let x = until("the master serving the file itself", 60, || {
        let x = curl(&format!("{file}?region=DE"), "127.0.0.1");
        (x.code == 200).then_some(x)
    });
    assert!(x.body == v2, "the fallback served other bytes");
    assert!(x.headers.contains("x-peermirror-version: 2"));
    // A path not in the version is a 404, not a redirect.
    assert_eq!(curl(&format!("{r}/r/{id}/nope"), "127.0.0.1").code, 404);
    assert_eq!(curl(&format!("{r}/r/nope/big.img"), "127.0.0.1").code, 404);
}

/// A TCP relay on `ip` to `port` on 127.0.0.1 that counts the bytes sent
/// back to clients.
fn counting_proxy(ip: &str, port: u16) -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let me = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let n = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut down) = conn else { continue };
            let n = n.clone();
            std::thread::spawn(move || {
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let (mut up2, mut down2) = (up.try_clone().unwrap(), down.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down2, &mut up2);
                    let _ = up2.shutdown(std::net::Shutdown::Write);
                });
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match up.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n.fetch_add(k as u64, Ordering::Relaxed);
                            if down.write_all(&buf[..k]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = down.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (me, count)
}

#[test]
fn aria2c_downloads_from_several_mirrors_through_a_metalink() {
    if !have("aria2c") || !have("curl") {
        return;
    }
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 16);
    let master = h.binary("master", &["--http", "127.0.0.1:0"]);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let r = http_base(&master);
    let mut counters = Vec::new();
    let mut urls = Vec::new();
    let mut mirrors = Vec::new();
    // aria2c counts connections per host name: one address per mirror.
    for (name, ip) in [
        ("m1", "127.0.0.11"),
        ("m2", "127.0.0.12"),
        ("m3", "127.0.0.13"),
    ] {
        let port = free_port();
        let (proxy, count) = counting_proxy(ip, port);
        let url = format!("http://{ip}:{proxy}");
        mirrors.push(mirror(&h, name, &master, &id, port, &url, ""));
        counters.push(count);
        urls.push(url);
    }
    for m in &mirrors {
        wait_current(m, &id, 1);
    }
    let meta = format!("{r}/r/{id}/big.img.meta4");
    let doc = until("three mirrors in the metalink", 60, || {
        let m = curl(&meta, "127.0.0.1");
        let x = String::from_utf8_lossy(&m.body).to_string();
        (m.code == 200 && urls.iter().all(|u| x.contains(u.as_str()))).then_some(m)
    });
    assert!(doc
        .headers
        .contains("content-type: application/metalink4+xml"));
    let doc = String::from_utf8_lossy(&doc.body).to_string();
    let big = fs::read(src.join("big.img")).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big));
    assert!(
        doc.contains(&format!("<hash type=\"sha-256\">{sha}</hash>")),
        "{doc}"
    );
    assert!(doc.contains(&format!("<size>{}</size>", big.len())));
    // Beside the file on the gateway, too.
    let beside = curl(&format!("{r}/{id}/big.img.meta4"), "127.0.0.1");
    assert_eq!(beside.code, 200);

    let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let out = h.path("aria2");
    let run = Command::new("aria2c")
        .args([
            "--split=4",
            "--max-connection-per-server=1",
            "--min-split-size=1M",
            "--file-allocation=none",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--check-certificate=false",
            "-d",
        ])
        .arg(&out)
        .arg(&meta)
        .output()
        .expect("aria2c");
    assert!(
        run.status.success(),
        "aria2c failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        fs::read(out.join("big.img")).unwrap() == big,
        "aria2c got other bytes"
    );
    let served: Vec<u64> = counters
        .iter()
        .zip(&before)
        .map(|(c, b)| c.load(Ordering::Relaxed) - b)
        .collect();
    eprintln!("bytes served per mirror: {served:?}");
    let busy = served.iter().filter(|&&n| n >= 512 << 10).count();
    assert!(
        busy >= 2,
        "bytes per mirror {served:?}: aria2c did not spread"
    );
}
