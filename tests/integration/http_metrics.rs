//! `/metrics` on real nodes: after a sync and downloads over HTTP, the
//! counters on both ends moved by exactly what was sent.

use std::fs;
use std::process::Command;

use crate::harness::*;
use crate::http_mirror::{curl, wait_current};

/// Every sample of a Prometheus text exposition, by series (name and labels).
pub struct Scrape(pub String);

impl Scrape {
    /// Scrapes `base/metrics`.
    pub fn of(base: &str) -> Scrape {
        let r = curl(&["-D", "-", &format!("{base}/metrics")]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let text = String::from_utf8(r.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"), "no EOF:\n{body}");
        Scrape(body.to_string())
    }

    /// The value of one series, if present.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// The value of one series; panics when absent.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.0))
    }

    /// The sum of every series of a metric (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Body bytes and status of a GET, with curl.
fn get(url: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "%{http_code}", "-o", "-"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let mut body = out.stdout;
    let code = body.split_off(body.len() - 3);
    (String::from_utf8(code).unwrap().parse().unwrap(), body)
}

#[test]
fn metrics_count_what_a_sync_and_http_downloads_moved() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    sample_tree(&src, 8);
    let master = h.binary("master", &["--http", "127.0.0.1:0"]);
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

    // A whole file, a range and a miss.
    let (code, whole) = get(&format!("{base}/src/big.img"), &[]);
    assert_eq!(code, 200);
    assert!(whole == big);
    let (code, part) = get(&format!("{base}/src/big.img"), &["-r", "1000-1099"]);
    assert_eq!((code, part.as_slice()), (206, &big[1000..1100]));
    let (code, miss) = get(&format!("{base}/src/nope"), &[]);
    assert_eq!(code, 404);

    let m = Scrape::of(&base);
    // Body bytes: exactly what the three responses carried.
    let sent = (whole.len() + part.len() + miss.len()) as f64;
    assert_eq!(m.value("peermirror_http_sent_bytes_total"), sent);
    assert_eq!(m.value("peermirror_http_requests_total{code=\"200\"}"), 1.0);
    assert_eq!(m.value("peermirror_http_requests_total{code=\"206\"}"), 1.0);
    assert_eq!(m.value("peermirror_http_requests_total{code=\"404\"}"), 1.0);
    assert_eq!(m.sum("peermirror_http_requests_total"), 3.0);
    // This scrape's own connection is open while it is rendered.
    assert_eq!(m.value("peermirror_http_connections"), 1.0);

    // P2P: every chunk the mirror holds came from the master, verified.
    let status: serde_json::Value =
        serde_json::from_str(&mirror.cli().run(&["status", "--json"])).unwrap();
    let chunks = status["store"]["chunks"].as_f64().unwrap();
    let chunk_bytes = status["store"]["chunk_bytes"].as_f64().unwrap();
    let from_master = format!(
        "peermirror_p2p_fetched_chunks_total{{peer=\"{}\"}}",
        master.peer_id()
    );
    assert_eq!(m.value(&from_master), chunks);
    assert_eq!(m.value("peermirror_p2p_received_bytes_total"), chunk_bytes);
    let master_m = Scrape::of(&http_base(&master));
    assert_eq!(
        master_m.value("peermirror_p2p_sent_bytes_total"),
        chunk_bytes,
        "the master sent what the mirror received"
    );
    assert_eq!(m.value("peermirror_peers"), 1.0);

    // Versions and sync progress: current, complete, not behind.
    let l = format!("{{collection=\"{id}\",name=\"src\"}}");
    let total = status["collections"][0]["current"]["bytes"]
        .as_f64()
        .unwrap();
    assert_eq!(
        m.value(&format!("peermirror_collection_current_version{l}")),
        1.0
    );
    assert_eq!(
        m.value(&format!("peermirror_collection_latest_version{l}")),
        1.0
    );
    assert_eq!(
        m.value(&format!("peermirror_collection_lag_versions{l}")),
        0.0
    );
    assert_eq!(
        m.value(&format!("peermirror_collection_lag_seconds{l}")),
        0.0
    );
    assert_eq!(m.value(&format!("peermirror_sync_total_bytes{l}")), total);
    assert_eq!(m.value(&format!("peermirror_sync_done_bytes{l}")), total);
    let expected_chunks = m.value(&format!("peermirror_sync_total_chunks{l}"));
    assert!(expected_chunks > 1.0);
    assert_eq!(
        m.value(&format!("peermirror_sync_done_chunks{l}")),
        expected_chunks
    );
    let expires = m.value(&format!("peermirror_announcement_expires_in_seconds{l}"));
    let expires_at = status["collections"][0]["expires_at"].as_f64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expires - (expires_at - now)).abs() < 30.0 && expires > 0.0,
        "expires in {expires}"
    );
    assert_eq!(m.sum("peermirror_errors_total"), 0.0);

    // libp2p's own metrics, from the same registry.
    assert!(m.sum("libp2p_swarm_connections_established_total") >= 1.0);
    assert!(m.sum("libp2p_identify_received_total") >= 1.0);

    // The next scrape counts the previous one's response.
    let again = Scrape::of(&base);
    assert_eq!(
        again.value("peermirror_http_sent_bytes_total"),
        sent + m.0.len() as f64
    );
    assert_eq!(
        again.value("peermirror_http_requests_total{code=\"200\"}"),
        2.0
    );
}
