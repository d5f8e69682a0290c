//! A running node: the store, the network and the followers wired together.
//!
//! [`Node::start`] opens the store, builds the libp2p swarm (see [`crate::net`])
//! and spawns: the swarm's event loop; a task that validates gossip and asks
//! newly connected peers for the latest announcement of each followed
//! collection; one follower per collection, which fetches each newer version
//! and makes it current when complete; a poller that asks every peer for the
//! latest announcements every 30 seconds (a backup for missed gossip); and
//! the local control socket ([`crate::control`]).

mod follow;
mod provider;
mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{identity::Keypair, Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::announce::{self, AnnounceError, SignedAnnouncement};
use crate::gossip::GossipMessage;
use crate::keys::{CollectionId, MasterKey};
use crate::net::{self, Event, NetConfig, Verdict};
use crate::publish::{self, PublishError, PublishOptions, PublishReport};
use crate::store::{Store, StoreError};
pub(crate) use crate::task::{blocking, lock};
use follow::Follower;
pub use provider::StoreProvider;
pub use status::{CollectionStatus, NodeStatus, PeerStatus};

/// How often every peer is asked for the latest announcements.
const POLL: Duration = Duration::from_secs(30);

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory (store, node key, control socket).
    pub data: PathBuf,
    /// Network settings.
    pub net: NetConfig,
    /// Collections to follow (besides those already in the store).
    pub follow: Vec<CollectionId>,
    /// Versions to keep per collection.
    pub keep: usize,
    /// Serve the control socket.
    pub control: bool,
}

impl NodeConfig {
    /// A node on an ephemeral 127.0.0.1 TCP port without a control socket:
    /// what the demo, tests and benchmarks run.
    pub fn loopback(data: PathBuf, peers: Vec<Multiaddr>, follow: Vec<CollectionId>) -> Self {
        NodeConfig {
            data,
            net: NetConfig {
                listen: vec![Multiaddr::empty()
                    .with(libp2p::multiaddr::Protocol::Ip4(
                        std::net::Ipv4Addr::LOCALHOST,
                    ))
                    .with(libp2p::multiaddr::Protocol::Tcp(0))],
                bootstrap: peers,
                mdns: false,
                kademlia: true,
                idle_timeout: Duration::from_secs(60),
            },
            follow,
            keep: 2,
            control: false,
        }
    }
}

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
}

/// State shared by the node's tasks.
pub(crate) struct Inner {
    pub(crate) store: Arc<Store>,
    pub(crate) client: net::Client,
    pub(crate) keep: usize,
    pub(crate) bytes_up: Arc<AtomicU64>,
    pub(crate) followers: Mutex<HashMap<CollectionId, Arc<Follower>>>,
    pub(crate) stopping: AtomicBool,
    pub(crate) data: PathBuf,
    /// The span every task of this node runs in.
    pub(crate) span: tracing::Span,
}

impl Inner {
    /// Spawns a task of this node, inside its span.
    pub(crate) fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(fut.instrument(self.span.clone()))
    }
}

/// A running node. Dropping it without [`Node::shutdown`] stops its tasks abruptly.
pub struct Node {
    inner: Arc<Inner>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// Starts a node; must run inside a Tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Arc<Node>, NodeError> {
        // Every task of this node logs inside this span, so several nodes in
        // one process (demo, tests) can be told apart and their logs kept apart.
        let span = tracing::info_span!("node", data = %cfg.data.display());
        let data = cfg.data.clone();
        let store = Arc::new(
            blocking("opening the store", move || Store::open(&data))
                .instrument(span.clone())
                .await?,
        );
        let keypair = node_key(&cfg.data.join("node.key"))?;
        let bytes_up = Arc::new(AtomicU64::new(0));
        let provider = Arc::new(StoreProvider {
            store: store.clone(),
            bytes_up: bytes_up.clone(),
        });
        let (client, events, event_loop) = net::new(keypair, cfg.net.clone(), provider)?;
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            store,
            client,
            keep: cfg.keep.max(1),
            bytes_up,
            followers: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            data: cfg.data.clone(),
            span,
        });
        let mut tasks = Vec::new();
        let mut stop = rx.clone();
        tasks.push(inner.spawn(event_loop.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
        tasks.push(inner.spawn(handle_events(inner.clone(), events, rx.clone())));
        tasks.push(inner.spawn(poll_latest(inner.clone(), rx.clone())));
        let node = Arc::new(Node {
            inner: inner.clone(),
            shutdown,
            tasks: Mutex::new(tasks),
        });
        let mut follow = cfg.follow.clone();
        let s = inner.store.clone();
        let held = blocking("listing collections", move || s.collections()).await?;
        follow.extend(held.iter().map(|c| c.id));
        for c in follow {
            node.follow(c).await?;
        }
        if cfg.control {
            let _in_span = node.inner.span.enter();
            let t = crate::control::serve(node.clone(), rx).map_err(NodeError::Control)?;
            lock(&node.tasks).push(t);
        }
        Ok(node)
    }

    /// The store (shared with the node's tasks).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
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

    /// Follows a collection: subscribes to its topic and fetches each new version.
    pub async fn follow(&self, c: CollectionId) -> Result<(), NodeError> {
        let new = match lock(&self.inner.followers).entry(c) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Arc::new(Follower::default()));
                true
            }
        };
        if new {
            self.inner.client.subscribe(c).await?;
            let t = self.inner.spawn(follow::run(
                self.inner.clone(),
                c,
                self.shutdown.subscribe(),
            ));
            lock(&self.tasks).push(t);
            // Ask the peers we already have.
            for p in self.inner.client.peers().await {
                self.inner.spawn(ask_latest(self.inner.clone(), p.peer_id));
            }
        }
        Ok(())
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
            publish::publish(&store, &key, &src, &opts, &mut |_, _| {}).map_err(NodeError::from)
        })
        .await?;
        let c = report.announcement.body.collection;
        self.follow(c).await?;
        let msg = GossipMessage::announce(&report.announcement).encode();
        self.inner.client.publish(c, msg).await?;
        tracing::info!(collection = %c, version = report.announcement.body.version, "announced");
        Ok(report)
    }

    /// A snapshot of the node's state.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let s = self.inner.store.clone();
        let cols = blocking("status", move || s.collections()).await?;
        let followers = lock(&self.inner.followers).clone();
        let mut bytes_down = 0;
        for f in followers.values() {
            bytes_down += f.progress.bytes_down.load(Ordering::Relaxed);
        }
        let collections = cols
            .into_iter()
            .map(|c| {
                let f = followers.get(&c.id);
                let in_progress = f
                    .map(|f| f.in_progress.load(Ordering::Relaxed))
                    .filter(|v| *v > 0);
                CollectionStatus {
                    id: c.id.to_string(),
                    name: c.name,
                    current: c.current.map(|a| a.body.version),
                    in_progress,
                    done_bytes: f.map_or(0, |f| f.progress.done_bytes.load(Ordering::Relaxed)),
                    total_bytes: f.map_or(0, |f| f.progress.total_bytes.load(Ordering::Relaxed)),
                    versions: c.versions,
                    bytes_down: f.map_or(0, |f| f.progress.bytes_down.load(Ordering::Relaxed)),
                }
            })
            .collect();
        let peers = self
            .inner
            .client
            .peers()
            .await
            .into_iter()
            .map(|p| PeerStatus {
                id: p.peer_id.to_string(),
                addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        Ok(NodeStatus {
            peer_id: self.peer_id().to_string(),
            listen: self
                .listen_addrs()
                .await
                .iter()
                .map(|a| a.to_string())
                .collect(),
            bytes_up: self.inner.bytes_up.load(Ordering::Relaxed),
            bytes_down,
            collections,
            peers,
        })
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

    /// Asks connected peers for the latest announcement of `c` and records
    /// any newer one; returns the newest version now known.
    pub async fn refresh_latest(&self, c: CollectionId) -> Option<u64> {
        for p in self.inner.client.peers().await {
            ask_one(&self.inner, p.peer_id, c).await;
        }
        let s = self.inner.store.clone();
        blocking("reading the latest version", move || s.latest(&c))
            .await
            .ok()?
            .map(|a| a.body.version)
    }

    /// Waits until version `version` (or newer) of `c` is current.
    pub async fn wait_current(&self, c: CollectionId, version: u64) -> Option<SignedAnnouncement> {
        loop {
            if let Ok(Some(a)) = self.inner.store.current(&c) {
                if a.body.version >= version {
                    return Some(a);
                }
            }
            if self.inner.stopping.load(Ordering::Relaxed) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every task and waits for them (at most a few seconds).
    pub async fn shutdown(&self) {
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
        let _ = std::fs::remove_file(crate::control::socket_path(&self.inner.data));
    }
}

/// Validates gossip and greets new peers.
async fn handle_events(
    inner: Arc<Inner>,
    mut events: mpsc::Receiver<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
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
                data,
            } => {
                let verdict = on_gossip(&inner, collection, &data).await;
                if verdict == Verdict::Reject {
                    tracing::warn!(peer = %source, "rejected invalid gossip message");
                }
                inner.client.report(msg_id, source, verdict);
            }
            Event::PeerConnected(peer) => {
                inner.spawn(ask_latest(inner.clone(), peer));
            }
            Event::PeerDisconnected(_) => {}
        }
    }
}

async fn on_gossip(inner: &Arc<Inner>, topic: CollectionId, data: &[u8]) -> Verdict {
    match GossipMessage::decode(data) {
        Err(_) => Verdict::Reject,
        Ok(GossipMessage::Have { .. }) => {
            wake(inner, &topic);
            Verdict::Accept
        }
        Ok(GossipMessage::Announce(bytes)) => match accept(inner, &bytes, Some(topic)).await {
            Ok(_) => Verdict::Accept,
            // Signed, but sent on another collection's topic.
            Err(StoreError::UnknownCollection(_)) => Verdict::Reject,
            Err(StoreError::Announce(AnnounceError::NotNewer { .. })) => Verdict::Ignore,
            Err(StoreError::Announce(AnnounceError::Expired { .. })) => Verdict::Ignore,
            Err(StoreError::Announce(_)) => Verdict::Reject,
            Err(e) => {
                tracing::warn!(error = %e, "could not record an announcement");
                Verdict::Ignore
            }
        },
    }
}

/// Verifies and records an announcement of a followed collection (the
/// topic's own, when it came over gossip), waking its follower.
async fn accept(
    inner: &Arc<Inner>,
    bytes: &[u8],
    topic: Option<CollectionId>,
) -> Result<CollectionId, StoreError> {
    let a = SignedAnnouncement::decode(bytes, announce::now())?;
    let c = a.body.collection;
    if topic.is_some_and(|t| t != c) || !lock(&inner.followers).contains_key(&c) {
        // Not followed here: valid, but nothing to do.
        return Err(StoreError::UnknownCollection(c));
    }
    let store = inner.store.clone();
    blocking("recording an announcement", move || {
        store.accept_announcement(&a)
    })
    .await?;
    tracing::info!(collection = %c, "accepted a new announcement");
    wake(inner, &c);
    Ok(c)
}

fn wake(inner: &Inner, c: &CollectionId) {
    if let Some(f) = lock(&inner.followers).get(c) {
        f.wake.notify_one();
    }
}

/// Asks one peer for the latest announcement of every followed collection.
async fn ask_latest(inner: Arc<Inner>, peer: PeerId) {
    let cols: Vec<CollectionId> = lock(&inner.followers).keys().copied().collect();
    for c in cols {
        ask_one(&inner, peer, c).await;
    }
}

async fn ask_one(inner: &Arc<Inner>, peer: PeerId, c: CollectionId) {
    match inner.client.request_latest(peer, c).await {
        Ok(Some(bytes)) => match accept(inner, &bytes, Some(c)).await {
            Ok(_) | Err(StoreError::Announce(AnnounceError::NotNewer { .. })) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "latest announcement not taken"),
        },
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "latest-announcement request failed"),
    }
}

async fn poll_latest(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for p in inner.client.peers().await {
            ask_latest(inner.clone(), p.peer_id).await;
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
