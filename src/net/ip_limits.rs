//! A [`NetworkBehaviour`] that caps the inbound connections from one IP
//! address, which `libp2p::connection_limits` (per peer id, and in total)
//! cannot: peer ids are free to make, addresses are not. It also caps the
//! distinct peers connected at once (`max_peers`), the number volunteers
//! think in, which connection counts miss: one peer may hold several
//! connections (TCP and QUIC, each direction).
//!
//! A connection over the cap is refused before its handshake when possible
//! (the count is checked when it arrives) and again once established, for
//! the ones that raced in together.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::{transport::PortUse, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, ListenFailure,
    NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// The IP address a multiaddr starts with, if any.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// Too many connections from one address.
#[derive(Debug, thiserror::Error)]
#[error("{count} inbound connections from {ip} already (limit {max})")]
pub struct TooManyFromIp {
    ip: IpAddr,
    count: u32,
    max: u32,
}

/// Too many distinct peers connected already.
#[derive(Debug, thiserror::Error)]
#[error("{count} peers connected already (max_peers {max})")]
pub struct TooManyPeers {
    count: usize,
    max: u32,
}

/// Caps established inbound connections per remote IP, and distinct peers.
pub(crate) struct Behaviour {
    max: u32,
    per_ip: HashMap<IpAddr, u32>,
    inbound: HashMap<ConnectionId, IpAddr>,
    /// 0: no cap on distinct peers.
    max_peers: u32,
    /// Connections per connected peer, and the peer of each connection.
    peers: HashMap<PeerId, u32>,
    conns: HashMap<ConnectionId, PeerId>,
}

impl Behaviour {
    pub(crate) fn new(max_per_ip: u32, max_peers: u32) -> Self {
        Behaviour {
            max: max_per_ip,
            per_ip: HashMap::new(),
            inbound: HashMap::new(),
            max_peers,
            peers: HashMap::new(),
            conns: HashMap::new(),
        }
    }

    /// Counts a connection to `peer`, unless it would be one peer too many
    /// (a further connection to a connected peer always fits).
    fn admit_peer(&mut self, id: ConnectionId, peer: PeerId) -> Result<(), ConnectionDenied> {
        if self.max_peers > 0
            && !self.peers.contains_key(&peer)
            && self.peers.len() >= self.max_peers as usize
        {
            return Err(ConnectionDenied::new(TooManyPeers {
                count: self.peers.len(),
                max: self.max_peers,
            }));
        }
        *self.peers.entry(peer).or_default() += 1;
        self.conns.insert(id, peer);
        Ok(())
    }

    /// Forgets a connection counted by [`Self::admit_peer`].
    fn release_peer(&mut self, id: ConnectionId) {
        if let Some(peer) = self.conns.remove(&id) {
            if let Some(n) = self.peers.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.peers.remove(&peer);
                }
            }
        }
    }

    fn check(&self, remote: &Multiaddr) -> Result<Option<IpAddr>, ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(None);
        };
        let count = self.per_ip.get(&ip).copied().unwrap_or(0);
        if count >= self.max {
            return Err(ConnectionDenied::new(TooManyFromIp {
                ip,
                count,
                max: self.max,
            }));
        }
        Ok(Some(ip))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote).map(|_| ())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let ip = self.check(remote)?;
        self.admit_peer(id, peer)?;
        if let Some(ip) = ip {
            *self.per_ip.entry(ip).or_default() += 1;
            self.inbound.insert(id, ip);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit_peer(id, peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A connection counted at establishment but then refused by another
        // behaviour ends as a listen failure rather than a close.
        let id = match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => connection_id,
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => connection_id,
            FromSwarm::DialFailure(DialFailure { connection_id, .. }) => connection_id,
            _ => return,
        };
        self.release_peer(id);
        {
            if let Some(ip) = self.inbound.remove(&id) {
                if let Some(n) = self.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
