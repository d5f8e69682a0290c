//! NAT traversal in the [`EventLoop`]: AutoNAT's verdict, the relay slot,
//! hole punching, UPnP, and keeping bulk transfers off relayed connections.

use libp2p::{autonat, dcutr, relay, swarm::ConnectionId, upnp, Multiaddr, PeerId};
use tracing::{debug, info, warn};

use super::EventLoop;
use crate::net::nat::{circuit_listen_addr, is_relayed, Reachability};

impl EventLoop {
    /// A connection to `peer` opened at `addr`. Once a peer is reachable
    /// directly its relayed connections are closed: chunk streams go to
    /// any open connection, and a relay allows only a trickle.
    pub(super) fn prefer_direct(&mut self, peer: PeerId, opened: ConnectionId, addr: &Multiaddr) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let has_direct = state.conns.values().any(|a| !is_relayed(a));
        if !has_direct {
            return;
        }
        let relayed: Vec<ConnectionId> = state
            .conns
            .iter()
            .filter(|(_, a)| is_relayed(a))
            .map(|(c, _)| *c)
            .collect();
        if !relayed.is_empty() {
            debug!(%peer, direct = !is_relayed(addr), ?opened, "closing relayed connections: a direct one exists");
        }
        for c in relayed {
            self.swarm.close_connection(c);
        }
    }

    /// Identify told us which protocols `peer` speaks: note whether it
    /// offers relay.
    pub(super) fn note_relay_capable(
        &mut self,
        peer: PeerId,
        protocols: &[libp2p::StreamProtocol],
    ) {
        let offers = protocols.contains(&relay::HOP_PROTOCOL_NAME);
        let addr = self
            .peers
            .get(&peer)
            .and_then(|s| s.conns.values().find(|a| !is_relayed(a)).cloned());
        self.nat.relay_capable(peer, addr, offers);
    }

    /// Reserves a slot on a relay if the policy says the node needs one.
    pub(super) fn maybe_reserve_relay(&mut self) {
        if self.relay_listener.is_some() {
            return;
        }
        let Some((relay, addr)) = self.nat.next_reservation() else {
            return;
        };
        let listen = circuit_listen_addr(relay, &addr);
        match self.swarm.listen_on(listen.clone()) {
            Ok(id) => {
                info!(%relay, addr = %listen, "unreachable from outside: reserving a relay slot");
                self.relay_listener = Some((id, relay));
            }
            Err(e) => {
                warn!(%relay, error = %e, "cannot listen through the relay");
                self.nat.reservation_lost(&relay, true);
            }
        }
    }

    /// A listener closed: if it was the relay slot, the slot is gone.
    pub(super) fn relay_listener_closed(&mut self, id: libp2p::core::transport::ListenerId) {
        if let Some((lid, relay)) = self.relay_listener {
            if lid == id {
                debug!(%relay, "relay slot closed");
                self.relay_listener = None;
                // Still connected: it refused or dropped us, try another.
                let refused = self.swarm.is_connected(&relay);
                self.nat.reservation_lost(&relay, refused);
            }
        }
    }

    pub(super) fn on_autonat_event(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            debug!(?event, "autonat");
            return;
        };
        let r = match &new {
            autonat::NatStatus::Public(_) => Reachability::Public,
            autonat::NatStatus::Private => Reachability::Private,
            autonat::NatStatus::Unknown => Reachability::Unknown,
        };
        info!(reachability = %r, ?old, ?new, "reachability changed");
        if let Some(relay) = self.nat.set_reachability(r) {
            if let Some((id, _)) = self.relay_listener.take() {
                debug!(%relay, "reachable now: giving the relay slot up");
                self.swarm.remove_listener(id);
            }
        }
        self.maybe_reserve_relay();
    }

    pub(super) fn on_relay_event(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                debug!(peer = %src_peer_id, "holding a relay slot for a peer")
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => debug!(src = %src_peer_id, dst = %dst_peer_id, "relaying a connection"),
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relayed connection closed")
            }
            other => debug!(?other, "relay"),
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    info!(relay = %relay_peer_id, "holding a relay slot: reachable through it");
                }
            }
            other => debug!(?other, "relay client"),
        }
    }

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(conn) => {
                info!(%peer, "hole punched: direct connection");
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.punched.insert(conn);
                }
            }
            Err(e) => debug!(%peer, error = %e, "hole punching failed"),
        }
    }

    pub(super) fn on_upnp_event(&mut self, event: upnp::Event) {
        match event {
            upnp::Event::NewExternalAddr { external_addr, .. } => {
                info!(addr = %external_addr, "UPnP: the router forwards a port")
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                info!(addr = %external_addr, "UPnP: port mapping expired")
            }
            upnp::Event::GatewayNotFound => info!("UPnP: no gateway found"),
            upnp::Event::NonRoutableGateway => {
                info!("UPnP: the gateway is not on the internet (a NAT behind a NAT)")
            }
        }
    }
}
