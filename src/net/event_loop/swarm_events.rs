//! Reactions of the [`EventLoop`] to swarm and behaviour events.

use libp2p::{
    gossipsub, identify, mdns,
    multiaddr::Protocol,
    ping,
    swarm::{dial_opts::DialOpts, SwarmEvent},
};
use tracing::{debug, trace, warn};

use super::EventLoop;
use crate::net::{
    addr_filter,
    behaviour::{BehaviourEvent, KAD_PROTOCOL},
    limits::Counters,
    peer_book, Event, NetError,
};

impl EventLoop {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                debug!(%address, "listening");
                self.listener_settled(listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                debug!(?reason, "listener closed");
                self.listener_settled(listener_id);
                self.relay_listener_closed(listener_id);
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                warn!(%error, "listener error");
                self.listener_settled(listener_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                if self.is_banned(&peer_id) {
                    debug!(peer = %peer_id, "closing a banned peer's connection");
                    self.swarm.close_connection(connection_id);
                    if let Some(dial) = self.pending_dials.remove(&connection_id) {
                        dial.answer(Err(NetError::Dial("peer is banned".into())));
                    }
                    return;
                }
                if let Some(dial) = self.pending_dials.remove(&connection_id) {
                    dial.answer(Ok(()));
                }
                let first_peer = self.peers.is_empty();
                let addr = endpoint.get_remote_address().clone();
                self.peers
                    .entry(peer_id)
                    .or_default()
                    .conns
                    .insert(connection_id, addr.clone());
                if endpoint.is_dialer() {
                    // An address we dialed and reached: worth remembering.
                    let mut dialable = addr.clone();
                    if matches!(dialable.iter().last(), Some(Protocol::P2p(_))) {
                        dialable.pop();
                    }
                    self.book.saw(peer_id, dialable, peer_book::now_secs());
                }
                if first_peer {
                    self.first_peer_connected();
                }
                self.prefer_direct(peer_id, connection_id, &addr);
                if num_established.get() == 1 {
                    self.emit(Event::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, ?cause, "connection closed");
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.conns.remove(&connection_id);
                    state.punched.remove(&connection_id);
                }
                if num_established == 0 {
                    self.nat.disconnected(&peer_id);
                    self.pool.forget(&peer_id);
                    // A banned peer's connection was never announced.
                    if self.peers.remove(&peer_id).is_some() {
                        self.emit(Event::PeerDisconnected(peer_id));
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                debug!(peer = ?peer_id, %error, "outgoing connection failed");
                self.dial_failed(connection_id, &error);
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!(%error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            other => trace!(?other, "swarm event"),
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossip_event(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                trace!(peer = %peer_id, agent = %info.agent_version, "identified");
                self.note_relay_capable(peer_id, &info.protocols);
                let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
                let seen_on: Vec<_> = self
                    .peers
                    .get(&peer_id)
                    .map(|s| s.conns.values().cloned().collect())
                    .unwrap_or_default();
                let (good, bad): (Vec<_>, Vec<_>) = info
                    .listen_addrs
                    .into_iter()
                    .partition(|a| addr_filter::acceptable(a, &seen_on));
                if !bad.is_empty() {
                    debug!(peer = %peer_id, ?bad, "ignoring addresses it cannot have");
                }
                let good: Vec<_> = good
                    .into_iter()
                    .take(addr_filter::MAX_ADDRS_PER_PEER)
                    .collect();
                let now = peer_book::now_secs();
                for addr in good.iter().rev() {
                    self.book.saw(peer_id, addr.clone(), now);
                }
                if let (true, Some(kad)) = (speaks_kad, self.swarm.behaviour_mut().kad.as_mut()) {
                    for addr in good {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Identify(other) => trace!(?other, "identify"),
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => match result {
                Ok(rtt) => {
                    if let Some(state) = self.peers.get_mut(&peer) {
                        state.rtt = Some(rtt);
                    }
                }
                Err(e) => debug!(%peer, error = %e, "ping failed"),
            },
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Autonat(event) => self.on_autonat_event(event),
            BehaviourEvent::Relay(event) => self.on_relay_event(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Dcutr(event) => self.on_dcutr_event(event),
            BehaviourEvent::Upnp(event) => self.on_upnp_event(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if self.swarm.is_connected(&peer) {
                        continue;
                    }
                    debug!(%peer, %addr, "mdns discovered peer");
                    if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                        kad.add_address(&peer, addr.clone());
                    }
                    let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
                    if let Err(e) = self.swarm.dial(opts) {
                        trace!(%peer, error = %e, "mdns dial skipped");
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Latest(event) => self.on_latest_event(event),
            BehaviourEvent::Stream(()) => {}
            BehaviourEvent::Limits(never) | BehaviourEvent::IpLimits(never) => match never {},
        }
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let Some(collection) = self.topics.get(&message.topic).copied() else {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            gossipsub::MessageAcceptance::Ignore,
                        );
                    return;
                };
                // Low-priority gossip may use only half the queue, so it can
                // never crowd out the rest.
                let crowded = self.event_tx.capacity() < self.event_tx.max_capacity() / 2;
                let delivered = if crowded && (self.low_priority_gossip)(&message.data) {
                    Counters::bump(&self.counters.gossip_shed);
                    trace!(peer = %propagation_source, "shedding low-priority gossip");
                    false
                } else {
                    self.emit(Event::Gossip {
                        collection,
                        msg_id: message_id.clone(),
                        source: propagation_source,
                        author: message.source,
                        data: message.data,
                    })
                };
                if !delivered {
                    // Nobody will judge it: do not leave it pending.
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            gossipsub::MessageAcceptance::Ignore,
                        );
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                debug!(peer = %peer_id, %topic, "peer subscribed");
                if !self.publish_queue.is_empty() {
                    self.retry_publishes();
                }
            }
            other => trace!(?other, "gossipsub"),
        }
    }
}
