//! Reachability behind NAT: what the node knows about itself (AutoNAT's
//! verdict, its external addresses), which relay it holds a slot on while it
//! cannot be reached, and what kind of path each connection is.
//!
//! The policy, in one place ([`NatState`]), kept free of the swarm so it is
//! tested without sockets:
//!
//! * a node AutoNAT finds **public** (or given `external_addresses`) offers
//!   circuit relay to others, within [`RelayLimits`];
//! * a node found **private** reserves a slot on one connected peer that
//!   offers relay (the hop protocol in its identify list), listens on
//!   `<relay address>/p2p/<relay>/p2p-circuit`, and so gets a relayed address
//!   peers can dial; DCUtR then upgrades relayed connections to direct ones
//!   by hole punching where the NATs allow it;
//! * once a peer is reachable directly, relayed connections to it are closed,
//!   so bulk transfers (whose streams go to any open connection) run direct.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// How this node handles NAT: AutoNAT, relay (both sides), UPnP, and the
/// external addresses it knows without asking anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Addresses at which peers reach this node though it cannot see them
    /// itself (a 1:1 NAT, a port forward): taken as confirmed at start.
    pub external_addresses: Vec<Multiaddr>,
    /// Ask peers whether this node is publicly reachable (AutoNAT v1), which
    /// decides whether it offers relay or reserves a slot on a relay.
    pub autonat: bool,
    /// Let AutoNAT use and serve peers seen at private addresses. Off on the
    /// internet, where such a verdict means nothing; on in a lab or behind
    /// a NAT inside a larger private network.
    pub autonat_private: bool,
    /// Offer circuit relay while publicly reachable, within these limits;
    /// `None`: never relay for others.
    pub relay: Option<RelayLimits>,
    /// Ask the home router for a port mapping (UPnP IGD).
    pub upnp: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            external_addresses: Vec::new(),
            autonat: true,
            autonat_private: false,
            relay: Some(RelayLimits::default()),
            upnp: false,
        }
    }
}

/// What relaying for others may cost this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Peers holding a relay slot here at once.
    pub max_reservations: usize,
    /// Relayed connections open at once.
    pub max_circuits: usize,
    /// Bytes one relayed connection may carry (both ways): enough for
    /// control traffic and hole punching, not for bulk data.
    pub circuit_bytes: u64,
    /// How long one relayed connection may last.
    pub circuit_duration: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: 128,
            max_circuits: 16,
            circuit_bytes: 1 << 20,
            circuit_duration: Duration::from_secs(120),
        }
    }
}

/// Whether peers can dial this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reachability {
    /// Not known yet (AutoNAT has not concluded, or is off).
    #[default]
    Unknown,
    /// Peers dialed it back on an address it reported.
    Public,
    /// Peers could not dial it back: it is behind a NAT or firewall.
    Private,
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        })
    }
}

/// What kind of path carries a connection to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A direct connection one side dialed normally.
    Direct,
    /// Through a relay (limited in bytes and time by the relay).
    Relayed,
    /// A direct connection made by DCUtR hole punching.
    HolePunched,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
            PathKind::HolePunched => "hole-punched",
        })
    }
}

/// Whether `addr` goes through a relay (`.../p2p-circuit/...`).
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The best path among a peer's connections: a hole-punched or direct one
/// if any (bulk streams run there), else relayed.
pub(crate) fn best_path(conns: impl IntoIterator<Item = PathKind>) -> Option<PathKind> {
    let rank = |p: &PathKind| match p {
        PathKind::HolePunched => 2,
        PathKind::Direct => 1,
        PathKind::Relayed => 0,
    };
    conns.into_iter().max_by_key(rank)
}

/// The address to listen on to hold a slot on `relay`, reached at `addr`.
pub(crate) fn circuit_listen_addr(relay: PeerId, addr: &Multiaddr) -> Multiaddr {
    let mut a: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    a.push(Protocol::P2p(relay));
    a.push(Protocol::P2pCircuit);
    a
}

/// The reachability policy's state: AutoNAT's verdict and the relays.
#[derive(Debug, Default)]
pub(crate) struct NatState {
    /// AutoNAT's verdict, or `Public` when external addresses were given.
    pub(crate) reachability: Reachability,
    /// Connected peers that offer relay, with an address we reach them at.
    relays: BTreeMap<PeerId, Multiaddr>,
    /// The relay we hold (or are asking for) a slot on.
    reserved: Option<PeerId>,
    /// Relays whose reservation failed; not asked again while connected.
    refused: HashSet<PeerId>,
}

impl NatState {
    /// Starts at `reachability` (public when external addresses were given).
    pub(crate) fn new(reachability: Reachability) -> Self {
        NatState {
            reachability,
            ..Default::default()
        }
    }

    /// `peer`, reached at `addr`, offers relay (or stopped offering it).
    pub(crate) fn relay_capable(&mut self, peer: PeerId, addr: Option<Multiaddr>, offers: bool) {
        match (offers, addr) {
            (true, Some(addr)) if !is_relayed(&addr) => {
                self.relays.insert(peer, addr);
            }
            _ => {
                self.relays.remove(&peer);
            }
        }
    }

    /// `peer`'s last connection closed.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.relays.remove(peer);
        self.refused.remove(peer);
        if self.reserved == Some(*peer) {
            self.reserved = None;
        }
    }

    /// The reservation on `relay` failed or ended.
    pub(crate) fn reservation_lost(&mut self, relay: &PeerId, refused: bool) {
        if self.reserved == Some(*relay) {
            self.reserved = None;
        }
        if refused {
            self.refused.insert(*relay);
        }
    }

    /// The relay we hold a slot on, if any.
    pub(crate) fn reserved(&self) -> Option<PeerId> {
        self.reserved
    }

    /// The relay to ask for a slot now, if the node needs one and one is
    /// available: only while private, one slot at a time. Marks it asked.
    pub(crate) fn next_reservation(&mut self) -> Option<(PeerId, Multiaddr)> {
        if self.reachability != Reachability::Private || self.reserved.is_some() {
            return None;
        }
        let (peer, addr) = self
            .relays
            .iter()
            .find(|(p, _)| !self.refused.contains(p))
            .map(|(p, a)| (*p, a.clone()))?;
        self.reserved = Some(peer);
        Some((peer, addr))
    }

    /// AutoNAT changed its verdict. Returns the relay to stop using when the
    /// node became public (it needs no slot any more).
    pub(crate) fn set_reachability(&mut self, r: Reachability) -> Option<PeerId> {
        self.reachability = r;
        if r == Reachability::Public {
            self.reserved.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_private_node_reserves_one_slot_on_a_relay_it_reaches_directly() {
        let (r1, r2) = (PeerId::random(), PeerId::random());
        let mut s = NatState::default();
        s.relay_capable(r1, Some(a("/ip4/198.51.100.7/tcp/4100")), true);
        // A relay reached only through another relay cannot carry a slot.
        s.relay_capable(r2, Some(a("/ip4/1.2.3.4/tcp/1/p2p-circuit")), true);
        assert_eq!(s.next_reservation(), None, "unknown: no slot");
        s.set_reachability(Reachability::Public);
        assert_eq!(s.next_reservation(), None, "public: no slot");
        s.set_reachability(Reachability::Private);
        let (peer, addr) = s.next_reservation().unwrap();
        assert_eq!(peer, r1);
        assert_eq!(addr, a("/ip4/198.51.100.7/tcp/4100"));
        assert_eq!(s.next_reservation(), None, "one slot at a time");
        // The relay refuses: not asked again while connected.
        s.reservation_lost(&r1, true);
        assert_eq!(s.next_reservation(), None);
        s.disconnected(&r1);
        s.relay_capable(r1, Some(a("/ip4/198.51.100.7/tcp/4100")), true);
        assert_eq!(s.next_reservation().map(|r| r.0), Some(r1));
        // Becoming public releases the slot.
        assert_eq!(s.set_reachability(Reachability::Public), Some(r1));
        assert_eq!(s.reserved(), None);
    }

    #[test]
    fn paths_and_circuit_addresses() {
        let relay = PeerId::random();
        assert!(is_relayed(&a("/ip4/1.2.3.4/tcp/1/p2p-circuit")));
        assert!(!is_relayed(&a("/ip4/1.2.3.4/tcp/1")));
        assert_eq!(
            circuit_listen_addr(relay, &a(&format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}"))),
            a(&format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit"))
        );
        use PathKind::*;
        assert_eq!(best_path([Relayed, Direct]), Some(Direct));
        assert_eq!(best_path([Relayed, HolePunched, Direct]), Some(HolePunched));
        assert_eq!(best_path([Relayed]), Some(Relayed));
        assert_eq!(best_path([]), None);
    }
}
