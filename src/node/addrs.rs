//! The addresses a node that is not running would have, for a ticket made
//! from the settings: its configured listen addresses, with unspecified
//! ones (`0.0.0.0`, `::`) replaced by this machine's interface addresses,
//! each with `/p2p/<peer id>` when the node key exists.

use std::net::IpAddr;
use std::path::Path;

use libp2p::multiaddr::Protocol;
use libp2p::{identity::Keypair, Multiaddr, PeerId};

/// The node's peer id, if its key exists (it is made on first start).
pub(crate) fn peer_id(data: &Path) -> Option<PeerId> {
    let bytes = std::fs::read(data.join("node.key")).ok()?;
    Some(
        Keypair::from_protobuf_encoding(&bytes)
            .ok()?
            .public()
            .to_peer_id(),
    )
}

/// `listen` (multiaddr text; others skipped) as the addresses the node
/// would be reachable at.
pub(crate) fn from_settings(listen: &[String], data: &Path) -> Vec<Multiaddr> {
    let id = peer_id(data);
    let ips = interface_ips();
    let mut out = Vec::new();
    for a in listen.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
        let mut it = a.iter();
        let (first, rest): (Protocol, Multiaddr) = match it.next() {
            Some(p) => (p, it.collect()),
            None => continue,
        };
        // Port 0 is picked at start: nothing to put in a ticket.
        if rest
            .iter()
            .any(|p| matches!(p, Protocol::Tcp(0) | Protocol::Udp(0)))
        {
            continue;
        }
        let hosts: Vec<Protocol> = match first {
            Protocol::Ip4(ip) if ip.is_unspecified() => ips
                .iter()
                .filter_map(|i| match i {
                    IpAddr::V4(v4) => Some(Protocol::Ip4(*v4)),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            Protocol::Ip6(ip) if ip.is_unspecified() => ips
                .iter()
                .filter_map(|i| match i {
                    IpAddr::V6(v6) => Some(Protocol::Ip6(*v6)),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            p => vec![p],
        };
        for h in hosts {
            let mut m = Multiaddr::empty().with(h);
            for p in rest.iter() {
                m.push(p);
            }
            if let Some(id) = id {
                m = m.with_p2p(id).unwrap_or_else(|m| m);
            }
            out.push(m);
        }
    }
    out
}

/// This machine's interface addresses (getifaddrs(3)); empty on failure.
fn interface_ips() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn unspecified_listen_addresses_become_interface_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let got = super::from_settings(
            &[
                "/ip4/0.0.0.0/tcp/4100".into(),
                "/ip4/127.0.0.1/tcp/0".into(),
                "/ip4/192.0.2.1/udp/4100/quic-v1".into(),
            ],
            dir.path(),
        );
        let text: Vec<String> = got.iter().map(|a| a.to_string()).collect();
        assert!(
            text.contains(&"/ip4/127.0.0.1/tcp/4100".to_string()),
            "loopback is an interface: {text:?}"
        );
        assert!(text.contains(&"/ip4/192.0.2.1/udp/4100/quic-v1".to_string()));
        assert!(!text
            .iter()
            .any(|t| t.contains("0.0.0.0") || t.ends_with("/tcp/0")));
    }
}
