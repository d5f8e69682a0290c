//! A gateway over an in-process store on 127.0.0.1, and curl/wget to talk
//! to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peermirror::hash::Hash;
use peermirror::http::{serve, Gateway, HttpConfig};
use peermirror::keys::MasterKey;
use peermirror::publish::{publish, PublishOptions};
use peermirror::store::Store;

/// A store, a running gateway over it, and a scratch directory.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub servers: Vec<Server>,
    pub corrupt: Arc<Mutex<Vec<Hash>>>,
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Site {
    /// An empty store with one gateway (grace 10 minutes).
    pub fn new() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("pm-http-")
            .tempdir()
            .unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        let mut site = Site {
            dir,
            store,
            servers: Vec::new(),
            corrupt: Arc::default(),
        };
        site.start(Duration::from_secs(600));
        site
    }

    /// Starts another gateway over the same store; returns its index.
    pub fn start(&mut self, grace: Duration) -> usize {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let config = HttpConfig {
            listen: addr,
            grace,
            ..Default::default()
        };
        let seen = self.corrupt.clone();
        let gw = Gateway::new(self.store.clone(), &config)
            .with_corrupt_chunk_hook(move |id| seen.lock().unwrap().push(id));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            serve(listener, gw, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.servers.push(Server {
            addr,
            stop: Some(tx),
            rt: Some(rt),
        });
        self.servers.len() - 1
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Publishes `src` as the next version of `key`'s collection `name`.
    pub fn publish(&self, key: &MasterKey, name: &str, src: &Path) -> u64 {
        let opts = PublishOptions {
            name: Some(name.into()),
            ..Default::default()
        };
        publish(&self.store, key, src, &opts, &mut |_, _| {})
            .unwrap()
            .announcement
            .body
            .version
    }

    /// The URL of `path` on gateway 0.
    pub fn url(&self, path: &str) -> String {
        self.url_on(0, path)
    }

    pub fn url_on(&self, server: usize, path: &str) -> String {
        format!("http://{}{path}", self.servers[server].addr)
    }

    /// curl with `args`, then the URL of `path` taken as is.
    pub fn curl(&self, path: &str, args: &[&str]) -> Reply {
        self.curl_url(&self.url(path), args)
    }

    pub fn curl_url(&self, url: &str, args: &[&str]) -> Reply {
        let n = rand::random::<u64>();
        let (hdr, body) = (self.path(&format!("h{n}")), self.path(&format!("b{n}")));
        let out = Command::new("curl")
            .args(["-sS", "--path-as-is", "--max-time", "60", "-D"])
            .arg(&hdr)
            .arg("-o")
            .arg(&body)
            .args(args)
            .arg(url)
            .output()
            .expect("curl");
        let reply = Reply::read(&hdr, &body, out);
        let _ = std::fs::remove_file(hdr);
        let _ = std::fs::remove_file(body);
        reply
    }
}

/// What curl got.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub curl: Output,
}

impl Reply {
    fn read(hdr: &Path, body: &Path, curl: Output) -> Reply {
        let text = std::fs::read_to_string(hdr).unwrap_or_default();
        // The last response block (after any 100 Continue).
        let block = text
            .split("\r\n\r\n")
            .filter(|b| b.starts_with("HTTP/"))
            .last()
            .unwrap_or("");
        let mut lines = block.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: std::fs::read(body).unwrap_or_default(),
            curl,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Panics with what curl said unless the status is `status`.
    pub fn expect(self, status: u16) -> Reply {
        assert_eq!(
            self.status,
            status,
            "headers {:?}\nbody {:?}\ncurl stderr {}",
            self.headers,
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)]),
            String::from_utf8_lossy(&self.curl.stderr)
        );
        self
    }
}

/// Skips a test (with a message saying why) when a client is missing.
pub fn have(tool: &str) -> bool {
    let ok = Command::new("which")
        .arg(tool)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed (apt-get install {tool})");
    }
    ok
}
