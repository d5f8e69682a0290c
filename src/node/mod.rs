//! A running node: the one place where the store, the network, the
//! followers and the control socket are wired together.
//!
//! [`Node::start`] opens the store, builds the libp2p swarm (see
//! [`crate::net`]) and spawns: the swarm's event loop; a task that admits
//! gossip ([`admission`]) and greets newly connected peers; one follower per
//! followed collection ([`follow`]; the followed set is recorded in the
//! store, see [`crate::store::Interest`]), which fetches each newer version
//! (of the paths it mirrors) and makes it current when complete; a poller that asks every peer for the latest
//! announcements every 30 seconds ([`latest`], a backup for missed gossip);
//! a task that dials configured peers again while they are not connected
//! ([`redial`]); a task that advertises this node as an HTTP mirror and
//! probes the mirrors it knows ([`mirrors`]); one that saves the peers the
//! network learned ([`known_peers`]); one that logs the limits hit
//! ([`limits_log`]); and the control socket ([`control_server`]). It stops
//! when the shutdown
//! future it was given resolves, or on [`Node::shutdown`].

mod addrs;
pub mod admission;
mod config;
mod control_server;
mod follow;
mod following;
mod known_peers;
mod latest;
mod limits_log;
mod local;
mod metrics;
mod mirrors;
mod provider;
mod redial;
mod reputation;
mod space;
mod status;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{identity::Keypair, Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::announce::SignedAnnouncement;
use crate::control::status::Status;
use crate::control::{CommandError, ErrorKind, Request, Response};
use crate::gossip::GossipMessage;
use crate::http::Gateway;
use crate::keys::{CollectionId, KeyError, MasterKey};
use crate::net::{self, Event};
use crate::publish::{PublishError, PublishOptions, PublishReport};
use crate::store::{Store, StoreError};
pub(crate) use crate::task::{blocking, lock};
pub use admission::Admission;
pub use config::{net_limits, FollowSpec, NodeConfig};
use follow::Follower;
pub use local::LocalStore;
pub use provider::StoreProvider;

/// Why a node could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A master key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The node key could not be read or written.
    #[error("node key {path}: {why}")]
    NodeKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A background task panicked: a bug, not a disk fault.
    #[error(transparent)]
    Task(#[from] crate::task::TaskFailed),
    /// The control socket could not be served.
    #[error("control socket: {0}")]
    Control(std::io::Error),
    /// The HTTP address could not be bound.
    #[error("serving HTTP on {0}: {1}")]
    Http(std::net::SocketAddr, std::io::Error),
    /// The configured GeoIP database could not be read.
    #[error(transparent)]
    GeoIp(#[from] crate::mirrors::geoip::GeoIpError),
}

impl NodeError {
    /// What kind of failure, for exit codes and the control socket.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::Store(e) => ErrorKind::of(e),
            NodeError::Publish(e) => ErrorKind::of(e),
            NodeError::Key(e) => ErrorKind::of(e),
            _ => ErrorKind::Failed,
        }
    }
}

impl From<NodeError> for CommandError {
    fn from(e: NodeError) -> Self {
        let kind = e.kind();
        CommandError {
            kind,
            ..CommandError::from_error(&e)
        }
    }
}

/// State shared by the node's tasks.
pub(crate) struct Inner {
    pub(crate) store: Arc<Store>,
    pub(crate) client: net::Client,
    pub(crate) keep: usize,
    /// `limits.max_store_bytes`: the store quota followers check (0: none).
    pub(crate) max_store_bytes: u64,
    pub(crate) bytes_up: Arc<AtomicU64>,
    pub(crate) followers: Mutex<HashMap<CollectionId, Arc<Follower>>>,
    pub(crate) haves: admission::HaveFilter,
    pub(crate) stopping: AtomicBool,
    /// What peers did wrong, over the node's life; handed to every download
    /// (through [`Inner::accounting`], which counts on the way).
    pub(crate) reputation: reputation::Reputation,
    /// The node's Prometheus metrics.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Collections published through this node: it re-announces them.
    pub(crate) published: Mutex<std::collections::HashSet<CollectionId>>,
    /// The HTTP mirrors known, and what this node advertises as one.
    pub(crate) mirrors: Arc<crate::mirrors::Mirrors>,
    /// The node key, which signs this node's mirror records.
    pub(crate) keypair: Keypair,
    /// The span every task of this node runs in.
    pub(crate) span: tracing::Span,
}

impl Inner {
    /// Spawns a task of this node, inside its span.
    pub(crate) fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(fut.instrument(self.span.clone()))
    }

    /// Whether `c` is followed here.
    pub(crate) fn follows(&self, c: &CollectionId) -> bool {
        lock(&self.followers).contains_key(c)
    }

    /// Runs an admission on the blocking pool (it reads and writes the
    /// store), then wakes the follower of whatever it accepted.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&Store, &dyn Fn(&CollectionId) -> bool, u64) -> Admission + Send + 'static,
    ) -> Admission {
        let i = self.clone();
        let a = blocking(what, move || {
            Ok::<_, crate::task::TaskFailed>(f(&i.store, &|c| i.follows(c), crate::announce::now()))
        })
        .await
        .unwrap_or_else(|e| Admission::Ignore(admission::Reason::Local(e.to_string())));
        if let Admission::Accept(acc) = &a {
            self.wake(&acc.collection());
        }
        a
    }

    /// Asks every follower to look for chunks missing from its current
    /// version (one was found corrupt and dropped) and fetch them again.
    pub(crate) fn repair_all(&self) {
        for f in lock(&self.followers).values() {
            f.repair.store(true, Ordering::Relaxed);
            f.wake.notify_one();
        }
    }

    /// Wakes `c`'s follower, if any.
    pub(crate) fn wake(&self, c: &CollectionId) {
        if let Some(f) = lock(&self.followers).get(c) {
            f.wake.notify_one();
        }
    }
}

/// A running node. Dropping it without [`Node::shutdown`] stops its tasks abruptly.
pub struct Node {
    inner: Arc<Inner>,
    http_addr: Option<std::net::SocketAddr>,
    shutdown: Arc<watch::Sender<bool>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// Starts a node; must run inside a Tokio runtime. It stops when
    /// `shutdown` resolves (pass `std::future::pending()` to stop it only
    /// with [`Node::shutdown`]); [`Node::wait`] waits for that.
    pub async fn start(
        cfg: NodeConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Arc<Node>, NodeError> {
        // Every task of this node logs inside this span, so several nodes in
        // one process (demo, tests) can be told apart and their logs kept apart.
        let span = tracing::info_span!("node", data = %cfg.data.display());
        let data = cfg.data.clone();
        let store: Store = blocking("opening the store", move || open_store_waiting(&data))
            .instrument(span.clone())
            .await?;
        let store = Arc::new(store);
        // The followed set: recorded in the store, plus what this run names.
        let (s, specs) = (store.clone(), cfg.follow.clone());
        let (follow, recorded_peers) = blocking("reading the followed set", move || {
            following::apply_follows(&s, &specs)
        })
        .instrument(span.clone())
        .await?;
        let mut net_cfg = cfg.net.clone();
        for p in recorded_peers {
            if !net_cfg.bootstrap.contains(&p) {
                net_cfg.bootstrap.push(p);
            }
        }
        let keypair = node_key(&cfg.data.join("node.key"))?;
        let mirror_settings = cfg.http.as_ref().map(|h| h.mirror.clone());
        let mirrors = Arc::new(crate::mirrors::Mirrors::new(
            keypair.public().to_peer_id(),
            mirror_settings.unwrap_or_default(),
        )?);
        let bytes_up = Arc::new(AtomicU64::new(0));
        let provider = Arc::new(
            StoreProvider::new(store.clone(), bytes_up.clone()).with_mirrors(mirrors.clone()),
        );
        net_cfg.known_peers = known_peers::load(&store);
        let (client, events, mut event_loop) = {
            let _in_span = span.enter();
            net::new(keypair.clone(), net_cfg.clone(), provider)?
        };
        let metrics = crate::metrics::Metrics::new();
        event_loop.record_metrics(metrics.libp2p());
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let reputation =
            reputation::Reputation::new(client.clone(), Duration::from_secs(cfg.limits.ban_secs));
        let inner = Arc::new(Inner {
            store,
            reputation,
            metrics,
            client,
            keep: cfg.keep.max(1),
            max_store_bytes: cfg.limits.max_store_bytes,
            bytes_up,
            followers: Mutex::new(HashMap::new()),
            haves: admission::HaveFilter::new(cfg.limits.have_notes_per_sec),
            stopping: AtomicBool::new(false),
            published: Mutex::new(Default::default()),
            mirrors,
            keypair,
            span,
        });
        let mut tasks = Vec::new();
        let mut stop = rx.clone();
        tasks.push(inner.spawn(event_loop.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
        tasks.push(inner.spawn(handle_events(inner.clone(), events, rx.clone())));
        tasks.push(inner.spawn(latest::poll(inner.clone(), rx.clone())));
        tasks.push(inner.spawn(redial::run(
            inner.clone(),
            net_cfg.bootstrap.clone(),
            rx.clone(),
        )));
        tasks.push(inner.spawn(latest::freshness(inner.clone(), rx.clone())));
        tasks.push(inner.spawn(mirrors::run(inner.clone(), rx.clone())));
        tasks.push(inner.spawn(known_peers::run(inner.clone(), rx.clone())));
        tasks.push(inner.spawn(limits_log::run(inner.clone(), rx.clone())));
        let sampled = Arc::downgrade(&inner);
        inner.metrics.set_source(Arc::new(move || {
            let i = sampled.upgrade();
            Box::pin(async move { i?.metrics_sample().await })
        }));
        // The caller's shutdown future flips the same switch as shutdown().
        let trigger = tx.clone();
        inner.spawn(async move {
            tokio::select! {
                _ = shutdown => { let _ = trigger.send(true); }
                _ = trigger.closed() => {}
            }
        });
        let mut http_addr = None;
        if let Some(h) = &cfg.http {
            let listener = tokio::net::TcpListener::bind(h.listen)
                .await
                .map_err(|e| NodeError::Http(h.listen, e))?;
            http_addr = Some(
                listener
                    .local_addr()
                    .map_err(|e| NodeError::Http(h.listen, e))?,
            );
            let repair = inner.clone();
            let status = inner.clone();
            let gateway = Gateway::new(inner.store.clone(), h)
                .with_mirrors(inner.mirrors.clone())
                .with_corrupt_chunk_hook(move |id| {
                    tracing::warn!(chunk = %id, "a served chunk was corrupt on disk; fetching it again");
                    repair.repair_all();
                })
                .with_status_hook(Arc::new(move || {
                    let i = status.clone();
                    Box::pin(async move {
                        let s = i.status().await.ok()?;
                        serde_json::to_vec_pretty(&s).ok()
                    })
                }))
                .with_metrics(inner.metrics.clone());
            let mut stop = rx.clone();
            tasks.push(inner.spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = crate::http::serve(listener, gateway, stopped).await {
                    tracing::error!(error = %e, "the HTTP gateway stopped");
                }
            }));
        }
        let node = Arc::new(Node {
            inner: inner.clone(),
            http_addr,
            shutdown: tx,
            tasks: Mutex::new(tasks),
        });
        // Only what is followed: a collection merely held is served, not followed.
        for c in follow {
            node.start_follower(c).await?;
        }
        if cfg.control {
            let t = control_server::serve(node.clone(), rx).map_err(NodeError::Control)?;
            lock(&node.tasks).push(t);
        }
        Ok(node)
    }

    /// The store (shared with the node's tasks).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Where the HTTP gateway listens, if it runs.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    /// Whether `peer` is banned here for misbehaving in a download.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        crate::sync::PeerAccounting::is_banned(&self.inner.reputation, peer)
    }

    /// The node's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The network handle.
    pub fn client(&self) -> &net::Client {
        &self.inner.client
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.client.local_peer_id()
    }

    /// The addresses this node listens on, with `/p2p/<id>`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.inner.client.listen_addrs().await
    }

    /// Runs a control command: the same code path as on a store opened
    /// directly, plus announcing after a publish and the network's status.
    pub async fn call(&self, req: Request) -> Result<Response, CommandError> {
        match req {
            Request::Status => Ok(Response::Status(Box::new(self.status().await?))),
            Request::Ticket {
                collection,
                addrs,
                only,
                ..
            } => {
                // The addresses the node has: confirmed external ones first.
                let mut own = self.inner.client.external_addrs().await;
                own.extend(self.inner.client.listen_addrs().await);
                let store = self.inner.store.clone();
                let r = blocking("making a ticket", move || {
                    local::ticket(&store, &collection, &addrs, &only, &own)
                        .map_err(|e| CommandError::from_error(&*e))
                })
                .await?;
                Ok(Response::Ticket(r))
            }
            Request::Unfollow { collection } => {
                let store = self.inner.store.clone();
                let r = blocking("unfollowing", move || {
                    local::unfollow(&store, &collection).map_err(|e| CommandError::from_error(&*e))
                })
                .await?;
                if let Ok(c) = r.collection.parse() {
                    self.stop_follower(c).await;
                }
                Ok(Response::Unfollowed(r))
            }
            Request::Follow { target, only } => {
                let store = self.inner.store.clone();
                let r = blocking("following", move || {
                    local::follow(&store, &target, only).map_err(|e| CommandError::from_error(&*e))
                })
                .await?;
                self.followed(&r).await?;
                Ok(Response::Followed(r))
            }
            req => {
                let publishing = matches!(req, Request::Publish { .. });
                let store = self.inner.store.clone();
                let resp = blocking("control command", move || {
                    local::run(&store, req, &mut |_, _| {})
                        .map_err(|e| CommandError::from_error(&*e))
                })
                .await?;
                if publishing {
                    if let Response::Published(r) = &resp {
                        self.announce(&r.announcement).await?;
                    }
                }
                Ok(resp)
            }
        }
    }

    /// Publishes `src` as the next version of `key`'s collection and
    /// announces it to the network.
    pub async fn publish(
        &self,
        key: MasterKey,
        src: PathBuf,
        opts: PublishOptions,
    ) -> Result<PublishReport, NodeError> {
        let store = self.inner.store.clone();
        let report: PublishReport = blocking("publishing", move || {
            crate::publish::publish(&store, &key, &src, &opts, &mut |_, _| {})
                .map_err(NodeError::from)
        })
        .await?;
        self.announce(&report.announcement).await?;
        Ok(report)
    }

    /// Follows a version's collection and announces the version.
    async fn announce(&self, a: &SignedAnnouncement) -> Result<(), NodeError> {
        let c = a.body.collection;
        lock(&self.inner.published).insert(c);
        self.follow(c).await?;
        let msg = GossipMessage::announce(a).encode();
        self.inner.client.publish(c, msg).await?;
        tracing::info!(collection = %c, version = a.body.version, "announced");
        Ok(())
    }

    /// Admits an encoded announcement as if a peer had sent it: verified,
    /// checked against what was accepted, recorded if newer.
    pub async fn admit_announcement(&self, bytes: Vec<u8>) -> Admission {
        latest::admit(&self.inner, &bytes, None).await
    }

    /// A snapshot of the store's and the node's state.
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.inner.status().await
    }

    /// Chunk bytes received from peers so far.
    pub fn bytes_down(&self) -> u64 {
        lock(&self.inner.followers)
            .values()
            .map(|f| f.progress.bytes_down.load(Ordering::Relaxed))
            .sum()
    }

    /// Chunk bytes sent to peers so far.
    pub fn bytes_up(&self) -> u64 {
        self.inner.bytes_up.load(Ordering::Relaxed)
    }

    /// Asks connected peers (all at once) for the latest announcement of `c`
    /// and records any newer one; returns the newest version now known.
    pub async fn refresh_latest(&self, c: CollectionId) -> Option<u64> {
        let peers = self.inner.client.peers().await;
        futures::future::join_all(
            peers
                .iter()
                .map(|p| latest::ask_one(&self.inner, p.peer_id, c)),
        )
        .await;
        let s = self.inner.store.clone();
        blocking("reading the latest version", move || s.latest(&c))
            .await
            .ok()?
            .map(|a| a.body.version)
    }

    /// Waits until version `version` (or newer) of `c` is current; `None`
    /// if the node stops first.
    pub async fn wait_current(&self, c: CollectionId, version: u64) -> Option<SignedAnnouncement> {
        loop {
            if let Ok(Some(a)) = self.inner.store.current(&c) {
                if a.body.version >= version {
                    return Some(a);
                }
            }
            if self.inner.stopping.load(Ordering::Relaxed) || *self.shutdown.borrow() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the shutdown future resolves (or [`Node::shutdown`] is
    /// called), then stops every task.
    pub async fn wait(&self) {
        self.stop_requested().await;
        self.shutdown().await;
    }

    /// Resolves once the shutdown future has resolved (or
    /// [`Node::shutdown`] was called); the tasks may still be running.
    pub async fn stop_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops every task and waits for them (at most a few seconds each).
    pub async fn shutdown(&self) {
        if !self.inner.stopping.load(Ordering::Relaxed) {
            // While the network still runs: what it learned about peers.
            known_peers::save(&self.inner).await;
        }
        self.inner.stopping.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let _ = std::fs::remove_file(crate::control::socket_path(self.inner.store.root()));
    }
}

/// Admits gossip and greets new peers.
async fn handle_events(
    inner: Arc<Inner>,
    mut events: mpsc::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(ev) = ev else { return };
        match ev {
            Event::Gossip {
                collection,
                msg_id,
                source,
                author,
                data,
            } => {
                let i = inner.clone();
                let admission = inner
                    .admit("admitting gossip", move |store, followed, now| {
                        let msg = admission::Received {
                            topic: collection,
                            source,
                            author,
                            data: &data,
                        };
                        admission::gossip(store, followed, &i.haves, &i.mirrors.table, msg, now)
                    })
                    .await;
                latest::log(&admission, &source);
                inner.client.report(msg_id, source, admission.verdict());
            }
            Event::PeerConnected(peer) => {
                inner.spawn(latest::ask_all(inner.clone(), peer));
                inner.spawn(mirrors::ask(inner.clone(), peer));
            }
            Event::PeerDisconnected(peer) => {
                // It may have stopped: probe it again before sending anyone there.
                inner.mirrors.health.forget(&peer);
                inner.metrics.forget_peer(&peer);
            }
        }
    }
}

/// How long a starting node waits for the store while another process (a
/// CLI command run at the same moment) holds it.
pub const STORE_LOCK_WAIT: Duration = Duration::from_secs(20);

/// Opens the store, waiting up to [`STORE_LOCK_WAIT`] while another process
/// holds it: a command started just before the node finishes, and the
/// node starts, instead of exiting.
fn open_store_waiting(data: &Path) -> Result<Store, StoreError> {
    let start = std::time::Instant::now();
    let mut told = false;
    loop {
        match Store::open(data) {
            Err(StoreError::Locked(_)) if start.elapsed() < STORE_LOCK_WAIT => {
                if !std::mem::replace(&mut told, true) {
                    tracing::warn!(
                        data = %data.display(),
                        "the store is in use by another process; waiting for it"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// Loads the node's libp2p identity, creating it (mode 0600) on first start.
fn node_key(path: &Path) -> Result<Keypair, NodeError> {
    let err = |why: String| NodeError::NodeKey {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let k = Keypair::generate_ed25519();
            let bytes = k.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
            Ok(k)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_settings_give_the_default_network_limits() {
        let l = super::net_limits(&crate::config::LimitsSettings::default());
        assert_eq!(l, crate::net::NetLimits::default());
    }
}
