//! Which of the addresses a peer reports about itself (identify) may go into
//! Kademlia, where they would be handed on to every node that asks.
//!
//! A peer can claim any address: a lie costs it nothing and turns the nodes
//! that believe it into a scanner of someone else's network. So an address is
//! kept only if it could be the peer's: never unspecified, multicast,
//! broadcast or reserved ranges; loopback only from a peer we reach over
//! loopback; private (RFC 1918, CGNAT, link-local, unique-local) only from a
//! peer we reach over loopback or a private network, that is when we are on
//! such a network ourselves.
//!
//! A relayed address (`<relay address>/p2p/<relay>/p2p-circuit[/p2p/<peer>]`)
//! is judged by its relay part, by the same rules: the peer names a relay it
//! holds a slot on, and the relay's address must be one it could reach.
//! Anything after `/p2p-circuit` other than one `/p2p/<id>` is refused, and so
//! is a circuit without a relay address (nothing to dial) or through two
//! relays.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use super::ip_limits::ip_of;

/// Most addresses taken from one identify message.
pub(crate) const MAX_ADDRS_PER_PEER: usize = 8;

/// Where an address points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// Nowhere a peer could listen: unspecified, multicast, reserved.
    Bogus,
    /// This machine.
    Loopback,
    /// A local network.
    Private,
    /// The internet, or a name we cannot judge.
    Global,
}

fn scope_v4(ip: Ipv4Addr) -> Scope {
    let o = ip.octets();
    if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0
        || o[0] >= 240
    {
        Scope::Bogus
    } else if ip.is_private() || ip.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Scope::Private
    } else {
        Scope::Global
    }
}

fn scope_v6(ip: Ipv6Addr) -> Scope {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return scope_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || first == 0x2001 && ip.segments()[1] == 0xdb8
    {
        Scope::Bogus
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        Scope::Private
    } else {
        Scope::Global
    }
}

fn scope(addr: &Multiaddr) -> Scope {
    match ip_of(addr) {
        Some(IpAddr::V4(ip)) => scope_v4(ip),
        Some(IpAddr::V6(ip)) => scope_v6(ip),
        None => match addr.iter().next() {
            Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h))
                if h.eq_ignore_ascii_case("localhost") =>
            {
                Scope::Loopback
            }
            Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => Scope::Global,
            _ => Scope::Bogus,
        },
    }
}

/// Whether `addr`, reported by a peer we are connected to over `seen_on`,
/// may be stored and handed on.
pub(crate) fn acceptable(addr: &Multiaddr, seen_on: &[Multiaddr]) -> bool {
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    if let Some(at) = parts.iter().position(|p| matches!(p, Protocol::P2pCircuit)) {
        let relay: Multiaddr = parts[..at].iter().cloned().collect();
        let tail = &parts[at + 1..];
        let relay_named = matches!(relay.iter().last(), Some(Protocol::P2p(_)));
        let tail_ok = matches!(tail, [] | [Protocol::P2p(_)]);
        return relay_named && tail_ok && acceptable_direct(&relay, seen_on);
    }
    acceptable_direct(addr, seen_on)
}

/// [`acceptable`] for an address that does not go through a relay.
fn acceptable_direct(addr: &Multiaddr, seen_on: &[Multiaddr]) -> bool {
    // The narrowest scope we reach the peer through: a peer reached over
    // loopback may name loopback and private addresses, and so on.
    let reach = seen_on.iter().map(scope).min().unwrap_or(Scope::Global);
    let has_transport = addr
        .iter()
        .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1 | Protocol::Udp(_)));
    match scope(addr) {
        Scope::Bogus => false,
        _ if !has_transport => false,
        Scope::Global => true,
        Scope::Private => reach <= Scope::Private,
        Scope::Loopback => reach == Scope::Loopback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_judged_by_where_the_peer_was_seen() {
        let public = [a("/ip4/93.184.216.34/tcp/4100")];
        let lan = [a("/ip4/192.168.1.20/tcp/51000")];
        let lo = [a("/ip4/127.0.0.1/tcp/51000")];
        // A public peer may name public addresses only.
        assert!(acceptable(&a("/ip4/1.1.1.1/tcp/4100"), &public));
        assert!(acceptable(&a("/dns4/mirror.example/tcp/4100"), &public));
        assert!(!acceptable(&a("/ip4/127.0.0.1/tcp/4100"), &public));
        assert!(!acceptable(&a("/ip4/10.0.0.5/tcp/4100"), &public));
        assert!(!acceptable(&a("/ip4/100.64.1.1/tcp/4100"), &public));
        assert!(!acceptable(&a("/ip6/fe80::1/tcp/4100"), &public));
        assert!(!acceptable(&a("/ip6/::1/tcp/4100"), &public));
        assert!(!acceptable(&a("/dns4/localhost/tcp/4100"), &public));
        // A LAN peer may name LAN addresses, not loopback.
        assert!(acceptable(&a("/ip4/10.0.0.5/udp/4100/quic-v1"), &lan));
        assert!(!acceptable(&a("/ip4/127.0.0.1/tcp/4100"), &lan));
        // A peer on this machine may name anything real.
        assert!(acceptable(&a("/ip4/127.0.0.1/tcp/4100"), &lo));
        assert!(acceptable(&a("/ip4/192.168.1.3/tcp/4100"), &lo));
        // Never: nowhere addresses, or no transport.
        for bogus in [
            "/ip4/0.0.0.0/tcp/4100",
            "/ip4/224.0.0.1/tcp/4100",
            "/ip4/255.255.255.255/tcp/4100",
            "/ip4/192.0.2.1/tcp/4100",
            "/ip6/::/tcp/4100",
            "/ip6/2001:db8::1/tcp/4100",
            "/ip4/1.1.1.1",
        ] {
            assert!(!acceptable(&a(bogus), &lo), "{bogus}");
        }
    }

    #[test]
    fn relayed_addresses_are_judged_by_their_relay() {
        let relay = libp2p::PeerId::random();
        let peer = libp2p::PeerId::random();
        let public = [a("/ip4/93.184.216.34/tcp/4100")];
        let lan = [a("/ip4/192.168.1.20/tcp/51000")];
        let via = |r: &str| a(&format!("{r}/p2p/{relay}/p2p-circuit/p2p/{peer}"));
        assert!(acceptable(&via("/ip4/1.1.1.1/tcp/4100"), &public));
        assert!(acceptable(
            &a(&format!(
                "/ip4/1.1.1.1/udp/4100/quic-v1/p2p/{relay}/p2p-circuit"
            )),
            &public
        ));
        // The relay part follows the same rules as any address.
        assert!(!acceptable(&via("/ip4/10.0.0.5/tcp/4100"), &public));
        assert!(acceptable(&via("/ip4/10.0.0.5/tcp/4100"), &lan));
        assert!(!acceptable(&via("/ip4/127.0.0.1/tcp/4100"), &lan));
        assert!(!acceptable(&via("/ip4/0.0.0.0/tcp/4100"), &public));
        // No relay address, no relay id, two relays, or junk after the circuit.
        for bad in [
            format!("/p2p/{relay}/p2p-circuit/p2p/{peer}"),
            "/ip4/1.1.1.1/tcp/4100/p2p-circuit".to_string(),
            format!("/ip4/1.1.1.1/tcp/4100/p2p/{relay}/p2p-circuit/p2p/{peer}/p2p-circuit"),
            format!("/ip4/1.1.1.1/tcp/4100/p2p/{relay}/p2p-circuit/ip4/10.0.0.1/tcp/1"),
        ] {
            assert!(!acceptable(&a(&bad), &public), "{bad}");
        }
    }
}
