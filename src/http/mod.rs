//! The HTTP file gateway: end users (curl, wget, browsers, apt, aria2) get
//! each collection's current version straight from the store, with no P2P
//! client and no export.
//!
//! # Layout
//!
//! - this file: [`HttpConfig`], [`Gateway`] and the request router.
//! - `server`: [`serve`], the accept loop and graceful shutdown.
//! - `conn`: the send timeout on a client that stops reading.
//! - `path`: request path to manifest entry, refusing every way out.
//! - `snapshot`: the version a request reads, fixed and leased at its start.
//! - `files`: GET/HEAD, conditional requests, byte ranges.
//! - `body`: bodies streamed chunk by chunk from the store, verified.
//! - `listing`: HTML and JSON listings, `/`, `SHA256SUMS`.
//! - `metrics`: `/metrics`, and counting every response and body byte.
//! - `range`: the `Range` header.
//! - `redirect`: `/r/<collection>/<path>`, sending clients to a mirror.
//! - `metalink`: `<path>.meta4` Metalink documents listing the mirrors.
//!
//! # URLs
//!
//! `/` lists collections. `/<collection id hex>/<path>` serves a path of a
//! collection's current version; `/<name>/<path>` does too while exactly one
//! collection with a current version has that name (several answer 300 with
//! the choices). Directories are listed (HTML, or JSON with `?format=json`
//! or `Accept: application/json`) at their path with a trailing `/`.
//! `/<collection>/SHA256SUMS` is generated from the manifest unless the
//! tree has its own. Every response about a collection carries
//! `X-Peermirror-Version` (the version whose bytes it holds) and
//! `X-Peermirror-Collection`.
//!
//! `/r/<collection>/<path>` answers 302 to a mirror that holds the newest
//! version (see `redirect`), and `/r/<collection>/<path>.meta4` and
//! `/<collection>/<path>.meta4` (when the tree has no such file) a
//! Metalink document listing them (see `metalink`). A collection named
//! `r` is therefore reachable by id only.
//!
//! # Versions and integrity
//!
//! A request reads one version from start to end, under a read lease that
//! gc honours. For [`HttpConfig::grace`] after a switch, a path missing from
//! the new version is served from the previous one while it is held. Every
//! chunk is re-hashed as it is read; a corrupt one is dropped from the index
//! through [`Store::drop_corrupt_chunk`] and reported to the hook given to
//! [`Gateway::with_corrupt_chunk_hook`], and is never sent.

mod body;
mod conn;
mod files;
mod listing;
mod metalink;
mod metrics;
mod path;
mod range;
mod redirect;
mod server;
mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

pub use body::Body;
pub use server::serve;
use snapshot::{Lookup, ManifestCache, Snapshot};

use crate::hash::Hash;
use crate::manifest::{EntryKind, Manifest};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The largest chunk a manifest may name: the budget always fits one.
const MAX_CHUNK_BYTES: usize = crate::chunk::MAX_CHUNK_LEN as usize;

/// Header naming the version whose bytes a response holds.
pub const VERSION_HEADER: &str = "x-peermirror-version";
/// Header naming the collection (hex id) a response is about.
pub const COLLECTION_HEADER: &str = "x-peermirror-collection";

/// How the gateway runs.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Where to listen (the node binds it and passes the listener to [`serve`]).
    pub listen: SocketAddr,
    /// After a version switch, how long a path missing from the new version
    /// is still served from the previous one (zero: never).
    pub grace: Duration,
    /// Connections served at once; more are closed right after accept.
    pub max_connections: usize,
    /// How long a shutdown waits for responses in flight before cutting them.
    pub shutdown_timeout: Duration,
    /// What the node advertises as a mirror, and the redirector's GeoIP
    /// database.
    pub mirror: crate::mirrors::MirrorSettings,
    /// Chunk bytes all responses together may hold in memory; a response
    /// waits (up to [`BUFFER_WAIT`]) for others to drain past this.
    pub max_buffer_bytes: usize,
}

impl HttpConfig {
    /// The gateway `[http]` describes, listening on `listen`; refuses
    /// mirror settings that cannot be used.
    pub fn from_settings(
        listen: SocketAddr,
        s: &crate::config::HttpSettings,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(HttpConfig {
            listen,
            grace: Duration::from_secs(s.grace_secs),
            max_connections: s.max_connections,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            mirror: crate::mirrors::MirrorSettings::from_settings(s)?,
            max_buffer_bytes: MAX_BUFFER_BYTES,
        })
    }
}

impl Default for HttpConfig {
    /// The `[http]` defaults, on loopback port 8080.
    fn default() -> Self {
        let s = crate::config::HttpSettings::default();
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grace: Duration::from_secs(s.grace_secs),
            max_connections: s.max_connections,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            mirror: Default::default(),
            max_buffer_bytes: MAX_BUFFER_BYTES,
        }
    }
}

/// How long a shutdown waits for responses in flight before cutting them.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`HttpConfig::max_buffer_bytes`]: 128 MiB, a second of a
/// 1 Gbit/s uplink several times over.
pub const MAX_BUFFER_BYTES: usize = 128 << 20;

/// How long a response waits for buffer budget before it fails (503 before
/// the headers, a cut transfer after).
pub const BUFFER_WAIT: Duration = Duration::from_secs(60);

/// Why the gateway stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listener failed in a way retrying cannot fix (passing shortages
    /// such as running out of file descriptors are waited out instead).
    #[error("http listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// The client's address, which the server puts in every request's
/// extensions (the redirector ranks mirrors by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Where the gateway answers `GET /.well-known/peermirror`.
pub const STATUS_PATH: &str = "/.well-known/peermirror";

/// Where the gateway serves Prometheus metrics (when given some with
/// [`Gateway::with_metrics`]). Exactly this path: a collection named
/// `metrics` is still served at `/metrics/` and below.
pub const METRICS_PATH: &str = "/metrics";

/// The node's status as JSON, for [`STATUS_PATH`].
pub type StatusHook = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>
        + Send
        + Sync,
>;

/// Called with each chunk the gateway found corrupt and dropped from the
/// index, so the node can fetch it again.
pub type CorruptChunkHook = Arc<dyn Fn(Hash) + Send + Sync>;

/// The gateway over one store: cheap to clone, one per server.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    grace: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
    /// The buffer budget, in bytes (see [`HttpConfig::max_buffer_bytes`]).
    buffers: Arc<tokio::sync::Semaphore>,
    on_corrupt: Option<CorruptChunkHook>,
    status: Option<StatusHook>,
    /// The mirrors the redirector chooses from (`None`: no `/r/`).
    mirrors: Option<Arc<crate::mirrors::Mirrors>>,
    metrics: Option<Metrics>,
    manifests: ManifestCache,
    /// The last generated SHA256SUMS, by manifest id.
    sums: std::sync::Mutex<Option<(Hash, Bytes)>>,
}

impl Gateway {
    /// A gateway serving `store` as `config` says.
    pub fn new(store: Arc<Store>, config: &HttpConfig) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                store,
                grace: config.grace,
                max_connections: config.max_connections.max(1),
                shutdown_timeout: config.shutdown_timeout,
                buffers: Arc::new(tokio::sync::Semaphore::new(
                    config
                        .max_buffer_bytes
                        .clamp(MAX_CHUNK_BYTES, tokio::sync::Semaphore::MAX_PERMITS),
                )),
                on_corrupt: None,
                status: None,
                mirrors: None,
                metrics: None,
                manifests: ManifestCache::default(),
                sums: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Calls `hook` with every chunk found corrupt (after it was dropped
    /// from the index), so the node can fetch it again.
    pub fn with_corrupt_chunk_hook(self, hook: impl Fn(Hash) + Send + Sync + 'static) -> Self {
        self.rebuilt(|i| i.on_corrupt = Some(Arc::new(hook)))
    }

    /// The same gateway with `change` made to its settings; built before
    /// it serves, so there are no caches to carry over.
    fn rebuilt(self, change: impl FnOnce(&mut Inner)) -> Self {
        let i = &self.inner;
        let mut inner = Inner {
            store: i.store.clone(),
            grace: i.grace,
            max_connections: i.max_connections,
            shutdown_timeout: i.shutdown_timeout,
            buffers: i.buffers.clone(),
            on_corrupt: i.on_corrupt.clone(),
            status: i.status.clone(),
            mirrors: i.mirrors.clone(),
            metrics: i.metrics.clone(),
            manifests: ManifestCache::default(),
            sums: std::sync::Mutex::new(None),
        };
        change(&mut inner);
        Gateway {
            inner: Arc::new(inner),
        }
    }

    /// Answers `/r/...` and `.meta4` from the records and health of
    /// `mirrors`.
    pub fn with_mirrors(self, mirrors: Arc<crate::mirrors::Mirrors>) -> Self {
        self.rebuilt(|i| i.mirrors = Some(mirrors))
    }

    /// The store served.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    fn grace(&self) -> Duration {
        self.inner.grace
    }

    fn manifests(&self) -> &ManifestCache {
        &self.inner.manifests
    }

    /// Answers [`STATUS_PATH`] with what `hook` returns (JSON): names
    /// never start with a dot, so the path cannot hide a collection.
    pub fn with_status_hook(self, hook: StatusHook) -> Self {
        self.rebuilt(|i| i.status = Some(hook))
    }

    /// Answers one request (any body is ignored). Never fails: errors
    /// become error responses.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        match &self.inner.metrics {
            None => self.respond(req).await,
            Some(m) if req.uri().path() == METRICS_PATH => {
                metrics::counted(m, metrics::scrape(m, &req).await)
            }
            Some(m) => metrics::counted(m, self.respond(req).await),
        }
    }

    async fn respond<B>(&self, req: Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        if req.uri().path() == STATUS_PATH {
            if let Some(hook) = &self.inner.status {
                let mut r = match hook().await {
                    Some(json) => {
                        let mut r = Response::new(body::full(Bytes::from(json)));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    None => text(StatusCode::SERVICE_UNAVAILABLE, "status unavailable\n"),
                };
                if req.method() == Method::HEAD {
                    *r.body_mut() = body::empty();
                }
                return r;
            }
        }
        let mut r = match path::parse(req.uri().path()) {
            Err(path::PathError::TooLong) => text(StatusCode::URI_TOO_LONG, "path too long\n"),
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            Ok(p) => match self.route(&req, &p).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, path = req.uri().path(), "request failed");
                    self.fault(crate::metrics::Fault::HttpStore);
                    text(StatusCode::SERVICE_UNAVAILABLE, "store error\n")
                }
            },
        };
        if req.method() == Method::HEAD {
            *r.body_mut() = body::empty();
        }
        r
    }

    async fn route<B>(
        &self,
        req: &Request<B>,
        p: &path::RequestPath,
    ) -> Result<Response<Body>, StoreError> {
        let Some(first) = p.segments.first() else {
            return self.root(req).await;
        };
        if let (Some(m), "r") = (&self.inner.mirrors, first.as_str()) {
            return redirect::handle(self, m, req, p).await;
        }
        let id = match self.lookup(first).await? {
            Lookup::Found(id) => id,
            Lookup::NotFound => return Ok(text(StatusCode::NOT_FOUND, "no such collection\n")),
            Lookup::Ambiguous(choices) => return Ok(choose(req, p, &choices)),
        };
        let rest = &p.segments[1..];
        if rest.is_empty() && !p.trailing_slash {
            return Ok(redirect_to_dir(req));
        }
        let Some(now) = self.current(id).await? else {
            return Ok(text(StatusCode::NOT_FOUND, "no such collection\n"));
        };
        Ok(match self.serve_in(req, p, &now, true).await {
            Some(r) => tag(r, &now),
            None => match self.previous(&now).await {
                Some(prev) => match self.serve_in(req, p, &prev, false).await {
                    Some(r) => tag(r, &prev),
                    None => tag(text(StatusCode::NOT_FOUND, "not found\n"), &now),
                },
                None => tag(text(StatusCode::NOT_FOUND, "not found\n"), &now),
            },
        })
    }

    /// Serves a path of one snapshot; `None` when it is not there.
    async fn serve_in<B>(
        &self,
        req: &Request<B>,
        p: &path::RequestPath,
        snap: &Snapshot,
        generated: bool,
    ) -> Option<Response<Body>> {
        let rest = &p.segments[1..];
        match path::resolve(&snap.manifest, rest) {
            path::Resolved::File(i) if !snap.filter.wants(&snap.manifest.entries[i].path) => {
                Some(text(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "not mirrored here: this node keeps only part of this collection ({})\n",
                        snap.filter
                    ),
                ))
            }
            path::Resolved::File(i) => Some(self.file(req, snap, i).await),
            path::Resolved::Dir(_) if !p.trailing_slash => Some(redirect_to_dir(req)),
            path::Resolved::Dir(dir) => Some(self.listing(req, snap, &dir)),
            path::Resolved::TooManyLinks => Some(text(
                StatusCode::NOT_FOUND,
                "too many levels of symbolic links\n",
            )),
            path::Resolved::NotFound if generated && rest == ["SHA256SUMS"] => {
                self.sums(req, snap).await
            }
            path::Resolved::NotFound if generated && metalink::target(rest).is_some() => {
                let m = self.inner.mirrors.as_ref()?;
                metalink::beside(self, m, req, snap, rest).await
            }
            path::Resolved::NotFound => None,
        }
    }

    async fn file<B>(&self, req: &Request<B>, snap: &Snapshot, i: usize) -> Response<Body> {
        let e = &snap.manifest.entries[i];
        let EntryKind::File {
            size, chunks, meta, ..
        } = &e.kind
        else {
            return text(StatusCode::NOT_FOUND, "not a file\n");
        };
        let etag = match meta {
            Some(m) => format!("\"{}\"", hex::encode(m.sha256)),
            None => {
                // Format 1: the chunk ids name the content just as well.
                let mut h = blake3::Hasher::new();
                for c in chunks {
                    h.update(c.id.as_bytes());
                }
                format!("\"b3-{}\"", &h.finalize().to_hex()[..32])
            }
        };
        let last_modified = match meta {
            Some(m) => u64::try_from(m.modified.secs).ok(),
            None => Some(snap.published_at),
        };
        let content_type = mime_guess::from_path(&e.path)
            .first_or_octet_stream()
            .to_string();
        let rep = files::Representation {
            len: *size,
            etag,
            last_modified,
            content_type,
        };
        let reader =
            body::FileReader::new(self.clone(), snap.manifest.clone(), i, snap.lease.clone());
        files::serve(req, rep, files::Source::File(reader)).await
    }

    async fn sums<B>(&self, req: &Request<B>, snap: &Snapshot) -> Option<Response<Body>> {
        let mid = snap.manifest_id;
        let cached = crate::task::lock(&self.inner.sums)
            .as_ref()
            .filter(|(k, _)| *k == mid)
            .map(|(_, b)| b.clone());
        let bytes = match cached {
            Some(b) => b,
            None => {
                let m: Arc<Manifest> = snap.manifest.clone();
                let b = Bytes::from(
                    tokio::task::spawn_blocking(move || listing::sha256sums(&m))
                        .await
                        .ok()??,
                );
                *crate::task::lock(&self.inner.sums) = Some((mid, b.clone()));
                b
            }
        };
        let rep = files::Representation {
            len: bytes.len() as u64,
            etag: format!("\"b3-{}\"", &blake3::hash(&bytes).to_hex()[..32]),
            last_modified: Some(snap.published_at),
            content_type: "text/plain; charset=utf-8".into(),
        };
        Some(files::serve(req, rep, files::Source::Memory(bytes)).await)
    }

    fn listing<B>(&self, req: &Request<B>, snap: &Snapshot, dir: &str) -> Response<Body> {
        let mut children = listing::children(&snap.manifest, dir);
        if !snap.filter.is_all() {
            // A partial mirror lists what it serves.
            children.retain(|c| {
                let path = if dir.is_empty() {
                    c.name.clone()
                } else {
                    format!("{dir}/{}", c.name)
                };
                match c.kind {
                    "dir" => snap.filter.holds(&path),
                    _ => snap.filter.wants(&path),
                }
            });
        }
        let collection = snap.collection.to_string();
        let heading = listing::Heading {
            collection: &collection,
            name: &snap.name,
            version: snap.version,
            path: req.uri().path(),
        };
        let mut r = if wants_json(req) {
            typed(
                StatusCode::OK,
                "application/json",
                listing::json(&heading, &children),
            )
        } else {
            typed(
                StatusCode::OK,
                "text/html; charset=utf-8",
                listing::html(&heading, &children),
            )
        };
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept"));
        r
    }

    async fn root<B>(&self, req: &Request<B>) -> Result<Response<Body>, StoreError> {
        let store = self.store().clone();
        let infos =
            crate::task::blocking("listing collections", move || store.collections()).await?;
        let mut rows: Vec<listing::CollectionRow> = infos
            .iter()
            .filter_map(|c| {
                let a = c.current.as_ref()?;
                let unique = infos
                    .iter()
                    .filter(|o| o.name == c.name && o.current.is_some())
                    .count()
                    == 1;
                let id = c.id.to_string();
                Some(listing::CollectionRow {
                    href: if unique {
                        format!("/{}/", listing::encode_segment(&c.name))
                    } else {
                        format!("/{id}/")
                    },
                    id,
                    name: c.name.clone(),
                    version: a.body.version,
                    files: a.body.files,
                    bytes: a.body.total_bytes,
                    published_at: a.body.published_at,
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(if wants_json(req) {
            typed(
                StatusCode::OK,
                "application/json",
                listing::collections_json(&rows),
            )
        } else {
            typed(
                StatusCode::OK,
                "text/html; charset=utf-8",
                listing::collections_html(&rows),
            )
        })
    }
}

/// 300 Multiple Choices: the same path under each collection's id.
fn choose<B>(
    req: &Request<B>,
    p: &path::RequestPath,
    choices: &[crate::store::CollectionInfo],
) -> Response<Body> {
    let rest: String = p.segments[1..]
        .iter()
        .map(|s| format!("/{}", listing::encode_segment(s)))
        .collect();
    let slash = if p.trailing_slash || p.segments.len() == 1 {
        "/"
    } else {
        ""
    };
    let links: Vec<(String, String, u64)> = choices
        .iter()
        .map(|c| {
            (
                format!("/{}{rest}{slash}", c.id),
                c.id.to_string(),
                c.current.as_ref().map_or(0, |a| a.body.version),
            )
        })
        .collect();
    let (ctype, body) = if wants_json(req) {
        let list: Vec<_> = links
            .iter()
            .map(|(href, id, v)| serde_json::json!({"href": href, "collection": id, "version": v}))
            .collect();
        (
            "application/json",
            serde_json::json!({ "choices": list }).to_string(),
        )
    } else {
        let items: String = links
            .iter()
            .map(|(href, id, v)| {
                format!(
                    "<li><a href=\"{}\">{}</a> (version {v})</li>\n",
                    listing::escape_html(href),
                    id
                )
            })
            .collect();
        (
            "text/html; charset=utf-8",
            listing::page(
                "Several collections have this name",
                &format!("<ul>\n{items}</ul>"),
            ),
        )
    };
    typed(StatusCode::MULTIPLE_CHOICES, ctype, body)
}

/// 301 to the same path with a trailing slash (the query kept).
fn redirect_to_dir<B>(req: &Request<B>) -> Response<Body> {
    let mut to = format!("{}/", req.uri().path());
    if let Some(q) = req.uri().query() {
        to.push('?');
        to.push_str(q);
    }
    let mut r = text(StatusCode::MOVED_PERMANENTLY, "moved\n");
    if let Ok(v) = HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Adds the version and collection headers.
fn tag(mut r: Response<Body>, snap: &Snapshot) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(VERSION_HEADER, HeaderValue::from(snap.version));
    if let Ok(v) = HeaderValue::from_str(&snap.collection.to_string()) {
        h.insert(COLLECTION_HEADER, v);
    }
    r
}

/// Whether the client asked for JSON (`?format=json` or by `Accept`).
fn wants_json<B>(req: &Request<B>) -> bool {
    let by_query = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
    let by_accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/html"));
    by_query || by_accept
}

/// A plain-text response.
fn text(status: StatusCode, msg: &str) -> Response<Body> {
    typed(status, "text/plain; charset=utf-8", msg.to_string())
}

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let len = body.len() as u64;
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}
