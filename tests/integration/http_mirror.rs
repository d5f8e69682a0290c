//! A mirror as people use it: `peermirror run --http` serving what it
//! synced, to curl and wget, and fetching again from a peer a chunk that
//! went bad on its disk.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Polls the mirror's status until its collection is current.
pub fn wait_current(mirror: &TestNode, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = mirror.cli().run(&["status"]);
        if s.contains(id) && s.contains("current: version 1") {
            return;
        }
        assert!(Instant::now() < deadline, "mirror never synced:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// curl, failing on HTTP errors.
pub fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--fail"])
        .args(args)
        .output()
        .expect("curl")
}

#[test]
fn a_mirror_serves_what_it_synced_and_refetches_a_corrupt_chunk() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 8);
    let master = h.binary("master", &[]);
    master
        .cli()
        .run(&["publish", "--key", &key, src.to_str().unwrap()]);
    let maddr = master.addrs()[0].to_string();
    let mirror = h.binary(
        "mirror",
        &["--peer", &maddr, "--follow", &id, "--http", "127.0.0.1:0"],
    );
    wait_current(&mirror, &id);
    let base = http_base(&mirror);
    let big = fs::read(src.join("big.img")).unwrap();

    // Its status, as JSON, for monitoring.
    let r = curl(&[&format!("{base}/.well-known/peermirror")]);
    assert!(r.status.success());
    let status: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        status["node"]["peer_id"].as_str(),
        Some(mirror.peer_id().to_string().as_str())
    );
    assert_eq!(status["collections"][0]["id"].as_str(), Some(id.as_str()));
    assert_eq!(status["collections"][0]["current"]["version"], 1);

    // curl, whole and resumed; wget -c.
    let out = h.path("big.curl");
    let r = curl(&["-o", out.to_str().unwrap(), &format!("{base}/src/big.img")]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(fs::read(&out).unwrap() == big);
    fs::write(&out, &big[..3 << 20]).unwrap();
    let r = curl(&[
        "-C",
        "-",
        "-o",
        out.to_str().unwrap(),
        &format!("{base}/{id}/big.img"),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(fs::read(&out).unwrap() == big, "resumed download differs");
    if Command::new("wget").arg("--version").output().is_ok() {
        let w = h.path("wget");
        fs::create_dir_all(&w).unwrap();
        fs::write(w.join("big.img"), &big[..1 << 20]).unwrap();
        let r = Command::new("wget")
            .current_dir(&w)
            .args(["-q", "-c", &format!("{base}/src/big.img")])
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(
            fs::read(w.join("big.img")).unwrap() == big,
            "wget -c differs"
        );
    }

    // A byte of big.img goes bad on the mirror's disk.
    let seg = fs::read_dir(mirror.dir().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    // The corrupt byte is never served: the transfer fails ...
    let bad = h.path("big.bad");
    let r = curl(&["-o", bad.to_str().unwrap(), &format!("{base}/src/big.img")]);
    let got = fs::read(&bad).unwrap_or_default();
    assert!(
        !r.status.success() && got.len() < big.len(),
        "a corrupt chunk was served"
    );
    assert!(big.starts_with(&got), "wrong bytes before the cut");
    // ... and the mirror fetches the chunk again from the master, after
    // which the file is whole again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = curl(&["-o", out.to_str().unwrap(), &format!("{base}/src/big.img")]);
        if r.status.success() && fs::read(&out).unwrap() == big {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never repaired:\n{}",
            mirror.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(mirror
        .log()
        .contains("fetching chunks of the current version again"));
    assert!(mirror.cli().run(&["verify"]).contains(" 0 problems"));
}
