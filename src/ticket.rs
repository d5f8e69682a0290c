//! Tickets: one copy-pastable string that is enough to mirror a collection.
//!
//! A ticket holds the collection id (which is the master's public key, so
//! it is all a mirror needs to check every version), the addresses of
//! nodes that serve it, and optionally the paths to mirror (`--only`).
//! Text form: `pm1` followed by lowercase base32 (RFC 4648 alphabet, no
//! padding) of the postcard encoding of the ticket and a 4-byte checksum
//! (the first bytes of blake3 over `peermirror/ticket/v1\0` and the
//! encoding), so a changed, lost or added character gives a clear error
//! instead of a wrong collection. The `1` is the format version. Byte
//! layout: docs/protocol.md, section 8.1.
//!
//! Also here: peers written for people ([`parse_addr`]: `host:port`, DNS
//! multiaddrs) and the choice of addresses worth putting in a ticket
//! ([`reachable_addrs`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::filter::PathFilter;
use crate::keys::CollectionId;

/// What every ticket starts with: `pm` and the format version.
pub const PREFIX: &str = "pm1";
/// Most addresses a ticket carries: enough for a node's v4/v6, TCP/QUIC and
/// a few public names, while the ticket stays short.
pub const MAX_ADDRS: usize = 16;
/// Longest ticket text accepted (characters).
pub const MAX_LEN: usize = 4096;
/// The checksum's domain separation.
const CHECK_DOMAIN: &[u8] = b"peermirror/ticket/v1\0";
/// Checksum bytes.
const CHECK_LEN: usize = 4;
/// The base32 alphabet (RFC 4648), lowercase: easy to read out and type.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a string is not a usable ticket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// It does not start with `pm`.
    #[error("not a ticket (tickets start with {PREFIX:?})")]
    NotATicket,
    /// A ticket of another format version (from a newer peermirror).
    #[error("ticket format {0:?} is not supported by this version (it reads {PREFIX:?}); upgrade peermirror")]
    UnsupportedVersion(String),
    /// A character outside the alphabet.
    #[error("character {ch:?} at position {pos} cannot be in a ticket")]
    BadCharacter {
        /// The character.
        ch: char,
        /// Its position in the ticket (0-based, whitespace removed).
        pos: usize,
    },
    /// The checksum does not match: the ticket was damaged.
    #[error("the ticket is damaged (a character was changed, lost or added): copy it again")]
    Checksum,
    /// Longer than [`MAX_LEN`], or too short to hold anything.
    #[error("ticket length {0} is out of range")]
    Length(usize),
    /// The checksum matches but the content does not decode: written by a
    /// broken program.
    #[error("ticket content is malformed: {0}")]
    Malformed(String),
}

/// A collection to mirror and where to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The collection (its id is the master's public key).
    pub collection: CollectionId,
    /// Addresses of nodes that serve it, dialled as peers (with
    /// `/p2p/<peer id>` when known).
    pub addrs: Vec<Multiaddr>,
    /// Paths to mirror (see [`PathFilter`]); empty: the whole collection.
    pub only: Vec<String>,
}

/// The encoded form: addresses grouped by peer id so the id (38 bytes) is
/// written once per node, not once per address.
#[derive(Serialize, Deserialize)]
struct Wire {
    collection: [u8; 32],
    peers: Vec<WirePeer>,
    only: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct WirePeer {
    #[serde(with = "serde_bytes")]
    id: Vec<u8>,
    addrs: Vec<serde_bytes::ByteBuf>,
}

impl Ticket {
    /// The ticket text (`pm1...`).
    pub fn encode(&self) -> String {
        let mut peers: Vec<WirePeer> = Vec::new();
        for a in self.addrs.iter().take(MAX_ADDRS) {
            let (base, id) = split_peer(a);
            let id = id.map(|p| p.to_bytes()).unwrap_or_default();
            let bytes = serde_bytes::ByteBuf::from(base.to_vec());
            match peers.iter_mut().find(|p| p.id == id) {
                Some(p) => p.addrs.push(bytes),
                None => peers.push(WirePeer {
                    id,
                    addrs: vec![bytes],
                }),
            }
        }
        let wire = Wire {
            collection: self.collection.0,
            peers,
            only: self.only.clone(),
        };
        let mut bytes = postcard::to_stdvec(&wire).unwrap_or_default();
        let check = checksum(&bytes);
        bytes.extend_from_slice(&check);
        let mut out = String::from(PREFIX);
        out.push_str(&base32_encode(&bytes));
        out
    }

    /// Reads a ticket; whitespace anywhere (a wrapped line) and case do not
    /// matter.
    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let t: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        if t.len() > MAX_LEN {
            return Err(TicketError::Length(t.len()));
        }
        let Some(rest) = t.strip_prefix("pm") else {
            return Err(TicketError::NotATicket);
        };
        if !t.starts_with(PREFIX) {
            // The format version is the digit after `pm`; base32 has digits
            // too, so only the one right after the prefix counts.
            let v: String = rest.chars().take(1).collect();
            return Err(TicketError::UnsupportedVersion(format!("pm{v}")));
        }
        let body = &t[PREFIX.len()..];
        let bytes = base32_decode(body, PREFIX.len())?;
        if bytes.len() < 32 + CHECK_LEN {
            return Err(TicketError::Length(t.len()));
        }
        let (payload, check) = bytes.split_at(bytes.len() - CHECK_LEN);
        if checksum(payload) != check {
            return Err(TicketError::Checksum);
        }
        let malformed = |e: String| TicketError::Malformed(e);
        let wire: Wire = postcard::from_bytes(payload).map_err(|e| malformed(e.to_string()))?;
        let collection = CollectionId(wire.collection);
        if collection.verifying_key().is_none() {
            return Err(malformed("not a collection id".into()));
        }
        let mut addrs = Vec::new();
        for p in wire.peers {
            let id = match p.id.as_slice() {
                [] => None,
                b => Some(PeerId::from_bytes(b).map_err(|e| malformed(format!("peer id: {e}")))?),
            };
            for a in p.addrs {
                let mut a = Multiaddr::try_from(a.into_vec())
                    .map_err(|e| malformed(format!("address: {e}")))?;
                if let Some(id) = id {
                    a.push(Protocol::P2p(id));
                }
                addrs.push(a);
            }
        }
        if addrs.len() > MAX_ADDRS {
            return Err(malformed(format!("more than {MAX_ADDRS} addresses")));
        }
        PathFilter::new(&wire.only).map_err(|e| malformed(e.to_string()))?;
        Ok(Ticket {
            collection,
            addrs,
            only: wire.only,
        })
    }
}

impl FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ticket::decode(s)
    }
}

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// What a `follow` argument names: a collection id or a ticket.
pub fn parse_target(s: &str) -> Result<Ticket, TicketError> {
    if let Ok(c) = s.trim().parse::<CollectionId>() {
        return Ok(Ticket {
            collection: c,
            addrs: Vec::new(),
            only: Vec::new(),
        });
    }
    Ticket::decode(s)
}

/// Splits a trailing `/p2p/<id>` off an address.
fn split_peer(a: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut base = a.clone();
    match base.pop() {
        Some(Protocol::P2p(id)) => (base, Some(id)),
        _ => (a.clone(), None),
    }
}

fn checksum(payload: &[u8]) -> [u8; CHECK_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(CHECK_DOMAIN);
    h.update(payload);
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK_LEN]);
    out
}

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes lowercase base32; `offset` positions errors in the whole text.
fn base32_decode(s: &str, offset: usize) -> Result<Vec<u8>, TicketError> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, ch) in s.chars().enumerate() {
        let v =
            ALPHABET
                .iter()
                .position(|&a| a as char == ch)
                .ok_or(TicketError::BadCharacter {
                    ch,
                    pos: offset + i,
                })?;
        acc = (acc << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    // Leftover bits are padding and must be zero (one text per ticket); a
    // whole extra character is not padding.
    if bits >= 5 {
        return Err(TicketError::Length(s.len() + offset));
    }
    if acc != 0 {
        return Err(TicketError::Checksum);
    }
    Ok(out)
}

/// A peer address written as a multiaddr that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a peer address: {addr:?}: {why} (want a multiaddr such as /ip4/192.0.2.1/tcp/4100 or /dns4/example.org/tcp/4100, or HOST:PORT)")]
pub struct AddrError {
    /// What was given.
    pub addr: String,
    /// What is wrong with it.
    pub why: String,
}

/// A peer as people write it: a multiaddr (`/ip4/...`, `/ip6/...`,
/// `/dns4/...`, `/dns6/...`, `/dns/...`), or `HOST:PORT` for TCP
/// (`192.0.2.1:4100`, `[2001:db8::1]:4100`, `mirror.example.org:4100`,
/// which becomes `/dns/mirror.example.org/tcp/4100`).
pub fn parse_addr(s: &str) -> Result<Multiaddr, AddrError> {
    let s = s.trim();
    let err = |why: &str| AddrError {
        addr: s.to_string(),
        why: why.to_string(),
    };
    if s.starts_with('/') {
        return s.parse().map_err(|e| err(&format!("{e}")));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| err("no port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err("the port must be 1-65535"))?;
    let ip = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Protocol::Ip6(v6.parse().map_err(|_| err("not an IPv6 address"))?)
    } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
        Protocol::Ip4(v4)
    } else if host.contains(':') {
        return Err(err("write an IPv6 address in brackets: [2001:db8::1]:4100"));
    } else {
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err(err("not a host name"));
        }
        Protocol::Dns(host.to_ascii_lowercase().into())
    };
    Ok(Multiaddr::empty().with(ip).with(Protocol::Tcp(port)))
}

/// The IP address an address starts with, if it starts with one.
fn ip_of(a: &Multiaddr) -> Option<IpAddr> {
    match a.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// How useful an address is to someone elsewhere: public first, then
/// private networks, then this machine only.
fn reach(a: &Multiaddr) -> u8 {
    match ip_of(a) {
        None => 0, // a DNS name: the operator chose it
        Some(ip) if ip.is_loopback() => 3,
        Some(IpAddr::V4(v4)) if v4.is_private() || v4.is_link_local() => 2,
        Some(IpAddr::V6(v6)) if is_local_v6(&v6) => 2,
        Some(_) => 1,
    }
}

/// Unique local (fc00::/7).
fn is_local_v6(ip: &Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xfe00) == 0xfc00
}

/// IPv6 link-local (fe80::/10): useless without a zone, which multiaddrs lack.
fn is_link_local_v6(ip: &Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

/// The addresses worth putting in a ticket, best first, and warnings for
/// the operator. `listed` (the operator's `--addr`) come first and are
/// always kept; of `own` (the node's listen, observed and external
/// addresses) unspecified (`0.0.0.0`, `::`) and IPv6 link-local ones are
/// dropped, and loopback ones are kept only when nothing else is left.
pub fn reachable_addrs(listed: &[Multiaddr], own: &[Multiaddr]) -> (Vec<Multiaddr>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out: Vec<Multiaddr> = Vec::new();
    for a in listed {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    let mut mine: Vec<Multiaddr> = own
        .iter()
        .filter(|a| match ip_of(a) {
            Some(ip) if ip.is_unspecified() => false,
            Some(IpAddr::V6(v6)) if is_link_local_v6(&v6) => false,
            _ => true,
        })
        .filter(|a| !out.contains(a))
        .cloned()
        .collect();
    mine.sort_by_key(reach);
    mine.dedup();
    let only_loopback = !mine.is_empty() && mine.iter().all(|a| reach(a) == 3);
    if only_loopback && out.is_empty() {
        warnings.push(
            "the node's only addresses are loopback ones: this ticket works on this machine \
             only; add --addr HOST:PORT (an address others can reach)"
                .to_string(),
        );
    } else {
        mine.retain(|a| reach(a) != 3);
    }
    out.extend(mine);
    if out.is_empty() {
        warnings.push(
            "no address to put in the ticket: mirrors must be given a peer (--peer); \
             add --addr HOST:PORT, or start the node first"
                .to_string(),
        );
    }
    if out.len() > MAX_ADDRS {
        warnings.push(format!("only the first {MAX_ADDRS} addresses are kept"));
        out.truncate(MAX_ADDRS);
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn ticket(addrs: &[&str], only: &[&str]) -> Ticket {
        Ticket {
            collection: MasterKey::generate().collection(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            only: only.iter().map(|s| s.to_string()).collect(),
        }
    }

    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    #[test]
    fn a_ticket_round_trips_and_stays_short() {
        let t = ticket(
            &[
                &format!("/ip4/192.0.2.7/tcp/4100/p2p/{PEER}"),
                &format!("/ip4/192.0.2.7/udp/4100/quic-v1/p2p/{PEER}"),
                "/dns4/mirror.example.org/tcp/4100",
            ],
            &["images"],
        );
        let text = t.encode();
        assert!(text.starts_with("pm1"), "{text}");
        assert!(text
            .bytes()
            .all(|b| ALPHABET.contains(&b) || b == b'1' || b == b'p' || b == b'm'));
        assert!(text.len() < 220, "{} characters: {text}", text.len());
        assert_eq!(Ticket::decode(&text).unwrap(), t);
        // Wrapped, upper-cased, padded with spaces: still the same ticket.
        let messy = format!("  {}\n{}  ", &text[..40].to_uppercase(), &text[40..]);
        assert_eq!(Ticket::decode(&messy).unwrap(), t);
        let bare = ticket(&[], &[]);
        assert_eq!(bare.encode().parse::<Ticket>().unwrap(), bare);
    }

    /// The vector in docs/protocol.md, section 4.7.
    pub(super) fn vector() -> Ticket {
        let peer = libp2p::identity::Keypair::ed25519_from_bytes([1u8; 32])
            .unwrap()
            .public()
            .to_peer_id();
        Ticket {
            collection: "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
                .parse()
                .unwrap(),
            addrs: ["/ip4/192.0.2.7/tcp/4100", "/ip4/192.0.2.7/udp/4100/quic-v1"]
                .iter()
                .map(|a| a.parse::<Multiaddr>().unwrap().with_p2p(peer).unwrap())
                .collect(),
            only: vec!["images".into()],
        }
    }

    #[test]
    fn the_documented_vector_is_pinned() {
        assert_eq!(vector().encode(), VECTOR);
        assert_eq!(Ticket::decode(VECTOR).unwrap(), vector());
    }

    const VECTOR: &str = "pm1aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4acjqaeqeacerarkeohxlubhyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5oaecaeyaaaebygcacawbgaaabapeiccacm2aybazuw2ylhmvzsgbvdjq";

    #[test]
    fn a_damaged_ticket_is_refused_with_a_clear_error() {
        let text = ticket(&[&format!("/ip4/192.0.2.7/tcp/4100/p2p/{PEER}")], &[]).encode();
        // Every single-character change is caught.
        for i in 3..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let e = Ticket::decode(std::str::from_utf8(&b).unwrap()).unwrap_err();
            assert!(
                matches!(
                    e,
                    TicketError::Checksum | TicketError::Length(_) | TicketError::Malformed(_)
                ),
                "change at {i}: {e:?}"
            );
        }
        let short = &text[..text.len() - 1];
        assert!(Ticket::decode(short).is_err());
        assert_eq!(
            Ticket::decode(&format!("{}0", &text[..10])).unwrap_err(),
            TicketError::BadCharacter { ch: '0', pos: 10 }
        );
        assert_eq!(
            Ticket::decode("pm2abcdef").unwrap_err(),
            TicketError::UnsupportedVersion("pm2".into())
        );
        assert_eq!(
            Ticket::decode("hello").unwrap_err(),
            TicketError::NotATicket
        );
        let e = Ticket::decode(&text[..text.len() - 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged") || e.contains("length"), "{e}");
    }

    #[test]
    fn a_collection_id_is_a_target_too() {
        let c = MasterKey::generate().collection();
        let t = parse_target(&c.to_string()).unwrap();
        assert_eq!(t.collection, c);
        assert!(t.addrs.is_empty());
        assert!(parse_target("nonsense").is_err());
    }

    #[test]
    fn host_port_and_dns_peers_become_multiaddrs() {
        let p = |s: &str| parse_addr(s).map(|a| a.to_string());
        assert_eq!(p("localhost:4100").unwrap(), "/dns/localhost/tcp/4100");
        assert_eq!(
            p("Mirror.Example.org:80").unwrap(),
            "/dns/mirror.example.org/tcp/80"
        );
        assert_eq!(p("192.0.2.1:4100").unwrap(), "/ip4/192.0.2.1/tcp/4100");
        assert_eq!(p("[::1]:4100").unwrap(), "/ip6/::1/tcp/4100");
        assert_eq!(
            p("/dns4/localhost/tcp/4100").unwrap(),
            "/dns4/localhost/tcp/4100"
        );
        for bad in [
            "localhost",
            "localhost:0",
            "::1:4100",
            "a b:1",
            "host:99999",
            "/nope/1",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tickets_leave_out_unspecified_addresses_and_loopback_unless_alone() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let own = [
            a("/ip4/0.0.0.0/tcp/4100"),
            a("/ip4/127.0.0.1/tcp/4100"),
            a("/ip4/10.1.2.3/tcp/4100"),
            a("/ip4/203.0.113.9/tcp/4100"),
            a("/ip6/fe80::1/tcp/4100"),
            a("/ip6/::/tcp/4100"),
        ];
        let (got, warn) = reachable_addrs(&[], &own);
        assert_eq!(
            got,
            [a("/ip4/203.0.113.9/tcp/4100"), a("/ip4/10.1.2.3/tcp/4100")]
        );
        assert!(warn.is_empty(), "{warn:?}");
        let (got, warn) =
            reachable_addrs(&[], &[a("/ip4/127.0.0.1/tcp/1"), a("/ip4/0.0.0.0/tcp/1")]);
        assert_eq!(got, [a("/ip4/127.0.0.1/tcp/1")]);
        assert_eq!(warn.len(), 1, "loopback only is warned about");
        let listed = [a("/dns/mirror.example.org/tcp/4100")];
        let (got, warn) = reachable_addrs(&listed, &[a("/ip4/127.0.0.1/tcp/1")]);
        assert_eq!(
            got, listed,
            "loopback dropped once the operator lists an address"
        );
        assert!(warn.is_empty());
        let (got, warn) = reachable_addrs(&[], &[a("/ip4/0.0.0.0/tcp/1")]);
        assert!(got.is_empty());
        assert_eq!(warn.len(), 1);
    }
}
