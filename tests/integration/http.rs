//! The HTTP gateway, driven by real clients (curl, wget, sha256sum) over
//! 127.0.0.1, serving a store the test publishes into.

mod client;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use peermirror::keys::MasterKey;
use peermirror::manifest::EntryKind;
use sha2::Digest;

use crate::harness::{random_bytes, sample_tree};
use client::{have, Site};

/// A site with the sample tree published as collection `sample`.
fn sample(big_mib: usize) -> (Site, MasterKey, PathBuf) {
    let site = Site::new();
    let key = MasterKey::generate();
    let src = site.path("src");
    sample_tree(&src, big_mib);
    site.publish(&key, "sample", &src);
    (site, key, src)
}

fn mtime_secs(p: &std::path::Path) -> u64 {
    fs::metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn get_and_head_serve_exact_bytes_with_validators() {
    if !have("curl") {
        return;
    }
    let (s, key, src) = sample(6);
    let big = fs::read(src.join("big.img")).unwrap();
    let r = s.curl("/sample/big.img", &[]).expect(200);
    assert!(r.body == big, "GET returned other bytes");
    let etag = format!("\"{}\"", hex::encode(sha2::Sha256::digest(&big)));
    let lm = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + Duration::from_secs(mtime_secs(&src.join("big.img"))),
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("last-modified"), Some(lm.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("x-peermirror-version"), Some("1"));
    let id = key.collection().to_string();
    assert_eq!(r.header("x-peermirror-collection"), Some(id.as_str()));

    let h = s.curl("/sample/big.img", &["-I"]).expect(200);
    assert_eq!(
        h.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    assert_eq!(h.header("etag"), Some(etag.as_str()));
    // On the wire, HEAD ends with the headers.
    let mut conn = std::net::TcpStream::connect(s.servers[0].addr).unwrap();
    conn.write_all(b"HEAD /sample/big.img HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut raw).unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(raw.ends_with(b"\r\n\r\n"), "HEAD sent a body");

    // By id as well as by name; types by extension.
    let f1 = s.curl(&format!("/{id}/a/b/f1.txt"), &[]).expect(200);
    assert_eq!(f1.body, fs::read(src.join("a/b/f1.txt")).unwrap());
    assert_eq!(f1.header("content-type"), Some("text/plain"));
    let empty = s.curl("/sample/zero-length", &[]).expect(200);
    assert!(empty.body.is_empty());
    s.curl("/sample/nope", &[]).expect(404);
    s.curl("/nope/big.img", &[]).expect(404);
    s.curl("/sample/big.img", &["-X", "POST"]).expect(405);
}

#[test]
fn single_multiple_suffix_and_unsatisfiable_ranges() {
    if !have("curl") {
        return;
    }
    let (s, _, src) = sample(6);
    let big = fs::read(src.join("big.img")).unwrap();
    let len = big.len();
    let r = s.curl("/sample/big.img", &["-r", "100-199"]).expect(206);
    assert_eq!(r.body, &big[100..200]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{len}").as_str())
    );
    // Across chunk boundaries (chunks are at most 4 MiB).
    let r = s
        .curl("/sample/big.img", &["-r", "1000000-5500000"])
        .expect(206);
    assert!(r.body == big[1_000_000..5_500_001]);
    let r = s.curl("/sample/big.img", &["-r", "-100"]).expect(206);
    assert_eq!(r.body, &big[len - 100..]);

    let r = s
        .curl("/sample/big.img", &["-r", "0-9,5000000-5000009"])
        .expect(206);
    let ctype = r.header("content-type").unwrap().to_string();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart response");
    let parts: Vec<&[u8]> = split(&r.body, format!("--{boundary}").as_bytes());
    // Before the first delimiter, two parts, then the closing "--".
    assert_eq!(parts.len(), 4, "{}", r.text());
    for (part, (at, want)) in parts[1..3]
        .iter()
        .zip([(0, &big[0..10]), (5_000_000, &big[5_000_000..5_000_010])])
    {
        let text = String::from_utf8_lossy(part);
        assert!(
            text.contains(&format!("Content-Range: bytes {at}-{}/{len}", at + 9)),
            "{text}"
        );
        let data = &part[part.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        assert_eq!(&data[..10], want);
        assert_eq!(&data[10..], b"\r\n");
    }
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );

    let r = s
        .curl("/sample/big.img", &["-r", &format!("{len}-")])
        .expect(416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
}

fn split<'a>(hay: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + sep.len() <= hay.len() {
        if &hay[i..i + sep.len()] == sep {
            out.push(&hay[start..i]);
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&hay[start..]);
    out
}

#[test]
fn conditional_requests() {
    if !have("curl") {
        return;
    }
    let (s, _, src) = sample(1);
    let big = fs::read(src.join("big.img")).unwrap();
    let r = s.curl("/sample/big.img", &[]).expect(200);
    let etag = r.header("etag").unwrap().to_string();
    let lm = r.header("last-modified").unwrap().to_string();
    let h = |k: &str, v: &str| format!("{k}: {v}");

    let r = s
        .curl("/sample/big.img", &["-H", &h("If-None-Match", &etag)])
        .expect(304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    s.curl("/sample/big.img", &["-H", &h("If-None-Match", "\"other\"")])
        .expect(200);
    s.curl("/sample/big.img", &["-H", &h("If-Modified-Since", &lm)])
        .expect(304);
    let old = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000));
    s.curl("/sample/big.img", &["-H", &h("If-Modified-Since", &old)])
        .expect(200);
    // A stale validator in If-Range: the whole, current file.
    let r = s
        .curl(
            "/sample/big.img",
            &["-r", "0-9", "-H", &h("If-Range", "\"stale\"")],
        )
        .expect(200);
    assert!(r.body == big);
    let r = s
        .curl(
            "/sample/big.img",
            &["-r", "0-9", "-H", &h("If-Range", &etag)],
        )
        .expect(206);
    assert_eq!(r.body, &big[..10]);
    s.curl("/sample/big.img", &["-H", &h("If-Match", "\"other\"")])
        .expect(412);
}

#[test]
fn curl_and_wget_resume_partial_downloads() {
    if !have("curl") {
        return;
    }
    let (s, _, src) = sample(6);
    let big = fs::read(src.join("big.img")).unwrap();
    let out = s.path("resumed-curl");
    fs::write(&out, &big[..1_234_567]).unwrap();
    let st = Command::new("curl")
        .args(["-sS", "-C", "-", "-o"])
        .arg(&out)
        .arg(s.url("/sample/big.img"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(fs::read(&out).unwrap() == big, "curl -C - result differs");

    if !have("wget") {
        return;
    }
    let out = s.path("resumed-wget");
    fs::write(&out, &big[..3_000_001]).unwrap();
    let st = Command::new("wget")
        .args(["-q", "-c", "-O"])
        .arg(&out)
        .arg(s.url("/sample/big.img"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(fs::read(&out).unwrap() == big, "wget -c result differs");
}

#[test]
fn listings_in_html_and_json() {
    if !have("curl") {
        return;
    }
    let (s, key, _) = sample(1);
    let r = s.curl("/sample", &[]).expect(301);
    assert_eq!(r.header("location"), Some("/sample/"));
    let r = s.curl("/sample/a/b?x=1", &[]).expect(301);
    assert_eq!(r.header("location"), Some("/sample/a/b/?x=1"));

    let html = s.curl("/sample/", &[]).expect(200);
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let t = html.text();
    for needle in [
        "href=\"./big.img\"",
        "href=\"./a/\"",
        "href=\"./empty/\"",
        "latest -&gt; big.img",
    ] {
        assert!(t.contains(needle), "{needle} missing from\n{t}");
    }

    let j: serde_json::Value =
        serde_json::from_slice(&s.curl("/sample/?format=json", &[]).expect(200).body).unwrap();
    assert_eq!(j["version"], 1);
    assert_eq!(j["collection"], key.collection().to_string());
    let entries = j["entries"].as_array().unwrap();
    let find = |n: &str| entries.iter().find(|e| e["name"] == n).unwrap().clone();
    assert_eq!(find("big.img")["type"], "file");
    assert_eq!(find("big.img")["size"], 1 << 20);
    assert_eq!(find("a")["type"], "dir");
    assert_eq!(find("latest")["target"], "big.img");

    let r = s
        .curl("/sample/a/b/", &["-H", "Accept: application/json"])
        .expect(200);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let f0 = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "f0.txt")
        .unwrap()
        .clone();
    assert_eq!(f0["size"], 100);
    assert_eq!(f0["sha256"].as_str().unwrap().len(), 64);

    let root: serde_json::Value =
        serde_json::from_slice(&s.curl("/?format=json", &[]).expect(200).body).unwrap();
    assert_eq!(root["collections"][0]["name"], "sample");
    assert_eq!(root["collections"][0]["href"], "/sample/");
    assert!(s
        .curl("/", &[])
        .expect(200)
        .text()
        .contains("href=\"/sample/\""));
}

#[test]
fn traversal_attempts_never_leave_the_collection() {
    if !have("curl") {
        return;
    }
    let (s, _, _) = sample(1);
    let other = s.path("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("secret.txt"), "TOP-SECRET-OTHER").unwrap();
    s.publish(&MasterKey::generate(), "other", &other);
    s.curl("/other/secret.txt", &[]).expect(200);
    let long = format!("/sample/{}", "a/".repeat(5000));
    for path in [
        "/sample/../other/secret.txt",
        "/sample/a/../../other/secret.txt",
        "/sample/%2e%2e/other/secret.txt",
        "/sample/%2E%2E/other/secret.txt",
        "/sample/.%2e/other/secret.txt",
        "/sample/..%2fother%2fsecret.txt",
        "/sample/a%2f..%2f..%2fother/secret.txt",
        "/sample/big.img%00",
        "/sample/%00/../other/secret.txt",
        "/sample/../../../../etc/passwd",
        "/sample/etc/passwd",
        "/sample/latest/../other/secret.txt",
        long.as_str(),
    ] {
        let r = s.curl(path, &[]);
        assert!(
            [400, 404, 414].contains(&r.status),
            "{} answered {}",
            &path[..path.len().min(80)],
            r.status
        );
        let t = r.text();
        assert!(
            !t.contains("TOP-SECRET") && !t.contains("root:"),
            "{path}: {t}"
        );
    }
    assert_eq!(s.curl(&long, &[]).status, 414);
}

#[test]
fn symlinks_are_served_as_the_manifest_says() {
    if !have("curl") {
        return;
    }
    let (s, _, src) = sample(1);
    let r = s.curl("/sample/latest", &[]).expect(200);
    assert!(r.body == fs::read(src.join("big.img")).unwrap());
    let r = s.curl("/sample/a/b/link-up", &[]).expect(200);
    assert_eq!(r.body, fs::read(src.join("a/b/f1.txt")).unwrap());
}

#[test]
fn sha256sums_pass_sha256sum_check() {
    if !have("curl") || !have("sha256sum") {
        return;
    }
    let (s, _, src) = sample(6);
    let r = s.curl("/sample/SHA256SUMS", &[]).expect(200);
    assert_eq!(r.header("x-peermirror-version"), Some("1"));
    let sums = s.path("SUMS");
    fs::write(&sums, &r.body).unwrap();
    // 30 small files, big.img, zero-length, run.sh; symlinks are not files.
    assert_eq!(r.text().lines().count(), 33);
    let out = Command::new("sha256sum")
        .args(["-c", "--strict"])
        .arg(&sums)
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Ranges work on it like on any file.
    let r = s.curl("/sample/SHA256SUMS", &["-r", "0-63"]).expect(206);
    assert_eq!(r.body.len(), 64);

    // A tree's own SHA256SUMS wins.
    let own = s.path("own");
    fs::create_dir_all(&own).unwrap();
    fs::write(own.join("SHA256SUMS"), "mine\n").unwrap();
    s.publish(&MasterKey::generate(), "own", &own);
    assert_eq!(s.curl("/own/SHA256SUMS", &[]).expect(200).body, b"mine\n");
}

#[test]
fn a_download_spanning_a_version_switch_ends_with_the_old_bytes() {
    if !have("curl") {
        return;
    }
    let s = Site::new();
    let key = MasterKey::generate();
    let src = s.path("src");
    fs::create_dir_all(&src).unwrap();
    let v1 = random_bytes(24 << 20, 1);
    fs::write(src.join("big.img"), &v1).unwrap();
    s.publish(&key, "c", &src);

    // A client that reads the headers and the first MiB, then stops
    // reading (the server is held back by TCP flow control, its response
    // open) until the switch and a gc are done, then reads the rest.
    let mut conn = std::net::TcpStream::connect(s.servers[0].addr).unwrap();
    conn.write_all(b"GET /c/big.img HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < 1 << 20 {
        let n = std::io::Read::read(&mut conn, &mut buf).unwrap();
        assert!(n > 0, "response ended early");
        got.extend_from_slice(&buf[..n]);
    }

    let v2 = random_bytes(24 << 20, 2);
    fs::write(src.join("big.img"), &v2).unwrap();
    assert_eq!(s.publish(&key, "c", &src), 2);
    let gc = s.store.gc(1).unwrap();
    assert_eq!(gc.versions_dropped, 1);
    assert_eq!(gc.manifests_dropped, 0, "a reader holds version 1");
    let now = s.curl("/c/big.img", &[]).expect(200);
    assert_eq!(now.header("x-peermirror-version"), Some("2"));
    assert!(now.body == v2);

    std::io::Read::read_to_end(&mut conn, &mut got).unwrap();
    let split = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers")
        + 4;
    let head = String::from_utf8_lossy(&got[..split]).to_ascii_lowercase();
    assert!(head.contains("x-peermirror-version: 1"), "{head}");
    assert!(
        got[split..] == v1[..],
        "the download did not finish with version 1's bytes"
    );
    // Once the reader is gone, version 1 is freed.
    let t0 = Instant::now();
    loop {
        let gc = s.store.gc(1).unwrap();
        if gc.manifests_dropped == 1 {
            assert!(gc.chunks_dropped >= 4, "{gc:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the lease was never released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_grace_period_serves_paths_dropped_by_a_switch() {
    if !have("curl") {
        return;
    }
    let mut s = Site::new();
    let strict = s.start(Duration::ZERO);
    let key = MasterKey::generate();
    let src = s.path("src");
    fs::create_dir_all(src.join("old-dir")).unwrap();
    fs::write(src.join("keep.txt"), "keep v1").unwrap();
    fs::write(src.join("gone.txt"), "gone v1").unwrap();
    fs::write(src.join("old-dir/x"), "x").unwrap();
    s.publish(&key, "c", &src);
    fs::remove_file(src.join("gone.txt")).unwrap();
    fs::remove_dir_all(src.join("old-dir")).unwrap();
    fs::write(src.join("keep.txt"), "keep v2").unwrap();
    s.publish(&key, "c", &src);

    let r = s.curl("/c/gone.txt", &[]).expect(200);
    assert_eq!(r.body, b"gone v1");
    assert_eq!(r.header("x-peermirror-version"), Some("1"));
    let r = s.curl("/c/old-dir/", &[]).expect(200);
    assert_eq!(r.header("x-peermirror-version"), Some("1"));
    let r = s.curl("/c/keep.txt", &[]).expect(200);
    assert_eq!(r.body, b"keep v2");
    assert_eq!(r.header("x-peermirror-version"), Some("2"));

    let r = s
        .curl_url(&s.url_on(strict, "/c/gone.txt"), &[])
        .expect(404);
    assert_eq!(r.header("x-peermirror-version"), Some("2"));
    // Nor once the previous version is no longer held.
    s.store.gc(1).unwrap();
    s.curl("/c/gone.txt", &[]).expect(404);
}

#[test]
fn corrupt_chunks_never_reach_the_client() {
    if !have("curl") {
        return;
    }
    let s = Site::new();
    let key = MasterKey::generate();
    let src = s.path("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(12 << 20, 7);
    fs::write(src.join("big.img"), &data).unwrap();
    s.publish(&key, "c", &src);
    let a = s.store.current(&key.collection()).unwrap().unwrap();
    let m = s.store.manifest(&a.body.manifest).unwrap();
    let EntryKind::File { chunks, .. } = &m.get("big.img").unwrap().kind else {
        panic!("not a file");
    };
    assert!(chunks.len() >= 3, "want several chunks");
    let corrupt = |i: usize| {
        let loc = s.store.chunk_loc(&chunks[i].id).unwrap().unwrap();
        let seg = s
            .store
            .root()
            .join(format!("segments/{:08}.seg", loc.segment));
        let mut f = fs::OpenOptions::new().write(true).open(seg).unwrap();
        f.seek(SeekFrom::Start(loc.offset + 1000)).unwrap();
        f.write_all(b"bit rot").unwrap();
    };
    let start_of = |i: usize| chunks[..i].iter().map(|c| c.len as usize).sum::<usize>();

    // Found mid-response: the connection is cut, the bytes sent are right.
    corrupt(2);
    let r = s.curl("/c/big.img", &[]);
    assert_eq!(r.status, 200);
    assert!(!r.curl.status.success(), "curl should see a short transfer");
    assert!(
        r.body.len() <= start_of(2),
        "bytes of the corrupt chunk were sent"
    );
    assert!(r.body[..] == data[..r.body.len()], "wrong bytes were sent");
    let t0 = Instant::now();
    while !s.corrupt.lock().unwrap().contains(&chunks[2].id) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "corrupt chunk not reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!s.store.has_chunk(&chunks[2].id).unwrap(), "not dropped");
    // Until it is fetched again, a request starting there fails before headers.
    let r = s
        .curl("/c/big.img", &["-r", &format!("{}-", start_of(2))])
        .expect(503);
    assert!(r.header("retry-after").is_some());

    // Found before the headers: an error status, and no bytes.
    corrupt(0);
    let r = s.curl("/c/big.img", &[]).expect(503);
    assert!(!r.body.windows(16).any(|w| w == &data[..16]));
    let t0 = Instant::now();
    while !s.corrupt.lock().unwrap().contains(&chunks[0].id) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "corrupt chunk not reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_ambiguous_name_lists_the_choices() {
    if !have("curl") {
        return;
    }
    let s = Site::new();
    let (k1, k2) = (MasterKey::generate(), MasterKey::generate());
    for (k, text) in [(&k1, "one"), (&k2, "two")] {
        let src = s.path(text);
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), text).unwrap();
        s.publish(k, "dup", &src);
    }
    let r = s.curl("/dup/f", &[]).expect(300);
    let t = r.text();
    for k in [&k1, &k2] {
        assert!(t.contains(&format!("/{}/f", k.collection())), "{t}");
    }
    let r = s.curl("/dup/f?format=json", &[]).expect(300);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["choices"].as_array().unwrap().len(), 2);
    let by_id = s.curl(&format!("/{}/f", k2.collection()), &[]).expect(200);
    assert_eq!(by_id.body, b"two");
}
