//! [`EventLoop`]: the task that owns the swarm. It reacts to swarm events,
//! executes [`Command`]s from clients, applies gossip verdicts, answers
//! latest-announcement requests, retries queued publishes, provides and
//! looks up followed collections in the DHT ([`discovery`]), keeps the
//! [`PeerBook`] and applies the NAT policy ([`nat`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    core::transport::ListenerId,
    gossipsub::{self, TopicHash},
    request_response::{self, OutboundRequestId, ResponseChannel},
    swarm::ConnectionId,
    Multiaddr, PeerId, Swarm,
};
use libp2p_stream::IncomingStreams;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{
    behaviour::{self, Behaviour},
    chunk_server,
    chunk_service::StreamPool,
    client::{Command, Report},
    discovery::Schedule,
    limits::Counters,
    nat::{self as nat_policy, NatState, PathKind},
    peer_book::{self, KnownPeer, PeerBook},
    rate::RateLimiter,
    ChunkProvider, NetError, NetLimits,
};
use crate::keys::CollectionId;

mod dials;
mod discovery;
mod nat;
mod swarm_events;

/// How often queued publishes are retried and idle streams swept.
const TICK: Duration = Duration::from_millis(500);
/// Queued publishes are dropped after this long without a subscribed peer.
const PUBLISH_RETRY_WINDOW: Duration = Duration::from_secs(600);
/// Most publishes kept waiting for peers; the oldest is dropped beyond this.
const MAX_QUEUED_PUBLISHES: usize = 1024;

/// Everything [`super::new`] hands to the event loop.
pub(crate) struct Parts {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) bootstrap: Vec<Multiaddr>,
    pub(crate) listeners: Vec<ListenerId>,
    pub(crate) cmd_rx: mpsc::Receiver<Command>,
    pub(crate) report_rx: mpsc::UnboundedReceiver<Report>,
    pub(crate) event_tx: mpsc::Sender<super::Event>,
    pub(crate) provider: Arc<dyn ChunkProvider>,
    pub(crate) pool: Arc<StreamPool>,
    pub(crate) incoming: IncomingStreams,
    pub(crate) server: Arc<chunk_server::Server>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) limits: NetLimits,
    pub(crate) low_priority_gossip: fn(&[u8]) -> bool,
    pub(crate) known_peers: Vec<KnownPeer>,
    pub(crate) external_given: bool,
}

/// A message waiting for a subscribed peer.
struct QueuedPublish {
    collection: CollectionId,
    data: Vec<u8>,
    since: Instant,
}

/// What we know about a connected peer.
#[derive(Default)]
struct PeerState {
    conns: HashMap<ConnectionId, Multiaddr>,
    /// Connections DCUtR made by hole punching.
    punched: HashSet<ConnectionId>,
    rtt: Option<Duration>,
}

impl PeerState {
    /// The kind of path connection `c` (at `addr`) is.
    fn path_of(&self, c: &ConnectionId, addr: &Multiaddr) -> PathKind {
        if self.punched.contains(c) {
            PathKind::HolePunched
        } else if nat_policy::is_relayed(addr) {
            PathKind::Relayed
        } else {
            PathKind::Direct
        }
    }

    /// The best path among the open connections.
    fn path(&self) -> PathKind {
        nat_policy::best_path(self.conns.iter().map(|(c, a)| self.path_of(c, a)))
            .unwrap_or(PathKind::Direct)
    }
}

/// A latest-announcement answer computed off the loop, ready to send.
type LatestAnswer = (ResponseChannel<Option<Vec<u8>>>, Option<Vec<u8>>);

/// Where the answer to an outbound latest-announcement request goes.
type LatestReply = oneshot::Sender<Result<Option<Vec<u8>>, NetError>>;

/// Owns the swarm; drive it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    bootstrap: Vec<Multiaddr>,
    cmd_rx: mpsc::Receiver<Command>,
    report_rx: mpsc::UnboundedReceiver<Report>,
    event_tx: mpsc::Sender<super::Event>,
    provider: Arc<dyn ChunkProvider>,
    pool: Arc<StreamPool>,
    incoming: Option<IncomingStreams>,
    server: Arc<chunk_server::Server>,
    counters: Arc<Counters>,
    low_priority_gossip: fn(&[u8]) -> bool,
    /// Inbound latest-announcement requests per peer.
    latest_rate: RateLimiter<PeerId>,
    latest_tx: mpsc::UnboundedSender<LatestAnswer>,
    latest_rx: mpsc::UnboundedReceiver<LatestAnswer>,
    /// Listeners that have not reported an address yet.
    unbound_listeners: HashSet<ListenerId>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    pending_dials: HashMap<ConnectionId, dials::PendingDial>,
    pending_latest: HashMap<OutboundRequestId, LatestReply>,
    topics: HashMap<TopicHash, CollectionId>,
    publish_queue: VecDeque<QueuedPublish>,
    peers: HashMap<PeerId, PeerState>,
    /// Banned peers and when each ban ends: their connections are closed
    /// as soon as they are established.
    banned: HashMap<PeerId, Instant>,
    /// Reachability and relay slot.
    nat: NatState,
    /// The listener holding our relay slot, and the relay.
    relay_listener: Option<(ListenerId, PeerId)>,
    /// Peers learned so far, with their dialable addresses.
    book: PeerBook,
    /// When each followed collection is next provided and looked up.
    discovery: Schedule,
    /// Outstanding provider lookups, for the logs.
    provider_queries: HashMap<libp2p::kad::QueryId, CollectionId>,
    /// libp2p's metrics, fed every swarm event, if kept.
    metrics: Option<Arc<libp2p::metrics::Metrics>>,
}

impl EventLoop {
    pub(crate) fn new(parts: Parts) -> Self {
        let (latest_tx, latest_rx) = mpsc::unbounded_channel();
        Self {
            swarm: parts.swarm,
            bootstrap: parts.bootstrap,
            cmd_rx: parts.cmd_rx,
            report_rx: parts.report_rx,
            event_tx: parts.event_tx,
            provider: parts.provider,
            pool: parts.pool,
            incoming: Some(parts.incoming),
            server: parts.server,
            counters: parts.counters,
            low_priority_gossip: parts.low_priority_gossip,
            latest_rate: RateLimiter::new(
                parts.limits.latest_requests_per_sec,
                parts.limits.latest_requests_per_sec.saturating_mul(2),
            ),
            latest_tx,
            latest_rx,
            unbound_listeners: parts.listeners.into_iter().collect(),
            listen_waiters: Vec::new(),
            pending_dials: HashMap::new(),
            pending_latest: HashMap::new(),
            topics: HashMap::new(),
            publish_queue: VecDeque::new(),
            peers: HashMap::new(),
            banned: HashMap::new(),
            nat: NatState::new(if parts.external_given {
                super::Reachability::Public
            } else {
                super::Reachability::Unknown
            }),
            relay_listener: None,
            book: PeerBook::new(parts.known_peers, peer_book::now_secs()),
            discovery: Schedule::default(),
            provider_queries: HashMap::new(),
            metrics: None,
        }
    }

    /// Records every swarm event (and the gossipsub, identify, ping and
    /// Kademlia events in it) in `metrics`, libp2p's own Prometheus metrics.
    pub fn record_metrics(&mut self, metrics: Arc<libp2p::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    fn record(&self, event: &libp2p::swarm::SwarmEvent<behaviour::BehaviourEvent>) {
        use behaviour::BehaviourEvent as B;
        use libp2p::metrics::Recorder;
        let Some(m) = &self.metrics else { return };
        m.record(event);
        if let libp2p::swarm::SwarmEvent::Behaviour(b) = event {
            match b {
                B::Gossipsub(e) => m.record(e),
                B::Identify(e) => m.record(e),
                B::Ping(e) => m.record(e),
                B::Kad(e) => m.record(e),
                _ => {}
            }
        }
    }

    /// Runs the node until `shutdown` completes: starts the chunk server,
    /// dials the bootstrap peers, then serves swarm events and commands.
    /// Dropping out of this function closes every connection.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let server = self.incoming.take().map(|incoming| {
            tokio::spawn(tracing::Instrument::in_current_span(chunk_server::serve(
                incoming,
                self.server.clone(),
            )))
        });
        for addr in std::mem::take(&mut self.bootstrap) {
            if let Err(e) = self.start_dial(addr.clone(), None) {
                warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        self.dial_known_peers();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = self.swarm.select_next_some() => {
                    self.record(&event);
                    self.on_swarm_event(event);
                }
                Some(cmd) = self.cmd_rx.recv() => self.on_command(cmd),
                Some(report) = self.report_rx.recv() => self.on_report(report),
                Some((channel, answer)) = self.latest_rx.recv() => {
                    if self.swarm.behaviour_mut().latest.send_response(channel, answer).is_err() {
                        debug!("latest-announcement requester went away");
                    }
                }
                _ = tick.tick() => {
                    self.retry_publishes();
                    self.pool.sweep();
                    self.expire_bans();
                    self.discovery_round();
                    self.maybe_reserve_relay();
                }
            }
        }
        if let Some(server) = server {
            server.abort();
        }
        debug!("network event loop stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs { reply } => {
                if self.unbound_listeners.is_empty() {
                    let _ = reply.send(self.listen_addrs());
                } else {
                    self.listen_waiters.push(reply);
                }
            }
            Command::Dial { addr, reply } => {
                if let Err(e) = self.start_dial(addr, Some(reply)) {
                    debug!(error = %e, "dial refused");
                }
            }
            Command::Subscribe { collection, reply } => {
                let _ = reply.send(self.subscribe(collection));
            }
            Command::Unsubscribe { collection, reply } => {
                let topic = super::collection_topic(&collection);
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
                self.topics.remove(&topic.hash());
                let _ = reply.send(());
            }
            Command::ExternalAddrs { reply } => {
                let local = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .external_addresses()
                    .map(|a| a.clone().with_p2p(local).unwrap_or_else(|a| a))
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Publish {
                collection,
                data,
                reply,
            } => {
                let _ = reply.send(self.publish(collection, data));
            }
            Command::RequestLatest {
                peer,
                collection,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .latest
                    .send_request(&peer, collection);
                self.pending_latest.insert(id, reply);
            }
            Command::Ban {
                peer,
                duration,
                reply,
            } => {
                self.ban(peer, duration);
                let _ = reply.send(());
            }
            Command::Peers { reply } => {
                let peers = self
                    .peers
                    .iter()
                    .map(|(id, state)| super::PeerInfo {
                        peer_id: *id,
                        addrs: state.conns.values().cloned().collect(),
                        rtt: state.rtt,
                        path: state.path(),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::NatStatus { reply } => {
                let _ = reply.send(super::NatStatus {
                    reachability: self.nat.reachability,
                    external_addrs: self.swarm.external_addresses().cloned().collect(),
                    relay: self.nat.reserved(),
                    known_peers: self.book.len(),
                });
            }
            Command::KnownPeers { reply } => {
                let now = peer_book::now_secs();
                for peer in self.peers.keys() {
                    self.book.touch(peer, now);
                }
                let _ = reply.send(self.book.peers());
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        let acceptance = match report.verdict {
            super::Verdict::Accept => gossipsub::MessageAcceptance::Accept,
            super::Verdict::Reject => gossipsub::MessageAcceptance::Reject,
            super::Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
        };
        let known = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&report.msg_id, &report.source, acceptance);
        if !known {
            debug!(msg_id = %report.msg_id, "verdict for a message no longer in the cache");
        }
    }

    /// Actual listen addresses with `/p2p/<local id>` appended.
    fn listen_addrs(&self) -> Vec<Multiaddr> {
        let local = *self.swarm.local_peer_id();
        self.swarm
            .listeners()
            .map(|a| a.clone().with_p2p(local).unwrap_or_else(|a| a))
            .collect()
    }

    /// Marks a listener as bound (or gone) and answers waiters once all are.
    fn listener_settled(&mut self, id: ListenerId) {
        self.unbound_listeners.remove(&id);
        if self.unbound_listeners.is_empty() && !self.listen_waiters.is_empty() {
            let addrs = self.listen_addrs();
            for waiter in self.listen_waiters.drain(..) {
                let _ = waiter.send(addrs.clone());
            }
        }
    }

    /// Starts dialing `addr`; `reply` is answered when the connection is
    /// established or the dial fails. A peer already connected counts as
    /// success.
    fn subscribe(&mut self, collection: CollectionId) -> Result<(), NetError> {
        let topic = super::collection_topic(&collection);
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        gossipsub
            .subscribe(&topic)
            .map_err(|e| NetError::Gossip(format!("subscribe: {e}")))?;
        gossipsub
            .set_topic_params(topic.clone(), behaviour::topic_score_params())
            .map_err(|e| NetError::Gossip(format!("topic score: {e}")))?;
        self.topics.insert(topic.hash(), collection);
        self.discovery.start(collection, Instant::now());
        Ok(())
    }

    /// Publishes now or queues the message until a peer subscribes.
    fn publish(&mut self, collection: CollectionId, data: Vec<u8>) -> Result<(), NetError> {
        if self.try_publish(collection, data.clone())? {
            return Ok(());
        }
        debug!(%collection, "no subscribed peer yet, publish queued");
        if self.publish_queue.len() >= MAX_QUEUED_PUBLISHES {
            self.publish_queue.pop_front();
            warn!("publish queue full, dropped the oldest message");
        }
        self.publish_queue.push_back(QueuedPublish {
            collection,
            data,
            since: Instant::now(),
        });
        Ok(())
    }

    /// `Ok(true)` if sent (or already sent), `Ok(false)` if it should be
    /// retried later.
    fn try_publish(&mut self, collection: CollectionId, data: Vec<u8>) -> Result<bool, NetError> {
        let topic = super::collection_topic(&collection);
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => Ok(true),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::AllQueuesFull(_)) => Ok(false),
            Err(e) => Err(NetError::Gossip(format!("publish: {e}"))),
        }
    }

    fn retry_publishes(&mut self) {
        let queued = std::mem::take(&mut self.publish_queue);
        for item in queued {
            if item.since.elapsed() > PUBLISH_RETRY_WINDOW {
                info!(collection = %item.collection, "gave up publishing: no subscribed peer");
                continue;
            }
            match self.try_publish(item.collection, item.data.clone()) {
                Ok(true) => debug!("queued message published"),
                Ok(false) => self.publish_queue.push_back(item),
                Err(e) => warn!(error = %e, "queued publish failed"),
            }
        }
    }

    /// Bans `peer` for `duration`: disconnects it, blacklists it in gossip
    /// and forgets its address in Kademlia.
    fn ban(&mut self, peer: PeerId, duration: Duration) {
        info!(%peer, ?duration, "banning peer");
        self.banned.insert(peer, Instant::now() + duration);
        self.book.forget(&peer);
        let behaviour = self.swarm.behaviour_mut();
        behaviour.gossipsub.blacklist_peer(&peer);
        if let Some(kad) = behaviour.kad.as_mut() {
            kad.remove_peer(&peer);
        }
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Whether `peer` is banned now.
    fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.get(peer).is_some_and(|t| *t > Instant::now())
    }

    /// Lifts bans that have ended.
    fn expire_bans(&mut self) {
        let now = Instant::now();
        let ended: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in ended {
            self.banned.remove(&peer);
            self.swarm
                .behaviour_mut()
                .gossipsub
                .remove_blacklisted_peer(&peer);
            debug!(%peer, "ban ended");
        }
    }

    /// Answers an inbound latest-announcement request from a blocking task.
    fn answer_latest(&self, collection: CollectionId, channel: ResponseChannel<Option<Vec<u8>>>) {
        let provider = self.provider.clone();
        let tx = self.latest_tx.clone();
        tokio::task::spawn_blocking(move || {
            let answer = provider
                .latest_announcement(&collection)
                .filter(|a| a.len() <= super::MAX_ANNOUNCEMENT_LEN);
            let _ = tx.send((channel, answer));
        });
    }

    fn on_latest_event(&mut self, event: request_response::Event<CollectionId, Option<Vec<u8>>>) {
        use request_response::{Event, Message, OutboundFailure};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if self.latest_rate.check(&peer, Instant::now()) {
                    self.answer_latest(request, channel);
                } else {
                    // Dropping the channel ends the exchange unanswered.
                    Counters::bump(&self.counters.latest_refused);
                    debug!(%peer, "peer over its latest-request rate, refused");
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_latest.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.pending_latest.remove(&request_id) {
                    let err = match error {
                        OutboundFailure::Timeout => NetError::Timeout,
                        OutboundFailure::UnsupportedProtocols => {
                            NetError::Unsupported(super::latest_protocol::PROTOCOL_NAME.into())
                        }
                        other => NetError::Request(other.to_string()),
                    };
                    let _ = reply.send(Err(err));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound latest-announcement request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Hands an event to the application without ever blocking the loop.
    fn emit(&mut self, event: super::Event) -> bool {
        match self.event_tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!("application is not consuming network events; event dropped");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
