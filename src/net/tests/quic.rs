//! QUIC socket settings, checked on real sockets: the receive buffer the
//! node asks for, and datagrams larger than Ethernet's where the path
//! carries them.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::UdpSocket;

use super::*;
use crate::net::behaviour::{QUIC_MAX_UDP_PAYLOAD, QUIC_RECV_BUFFER};

/// The UDP port of a QUIC address.
fn quic_port(addr: &Multiaddr) -> u16 {
    use libp2p::multiaddr::Protocol;
    addr.iter()
        .find_map(|p| match p {
            Protocol::Udp(n) => Some(n),
            _ => None,
        })
        .expect("a UDP address")
}

/// The descriptors of this process's UDP sockets bound to `port`.
fn udp_sockets_on(port: u16) -> Vec<RawFd> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if sockopt(fd, libc::SO_TYPE) == Some(libc::SOCK_DGRAM) && local_port(fd) == Some(port) {
            out.push(fd);
        }
    }
    out
}

/// An integer socket option (`None` if `fd` is not a socket).
fn sockopt(fd: RawFd, name: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, a c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

fn local_port(fd: RawFd) -> Option<u16> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 || addr.ss_family as libc::c_int != libc::AF_INET {
        return None;
    }
    // SAFETY: the family says the storage holds a sockaddr_in.
    let a: &libc::sockaddr_in = unsafe { &*(&addr as *const libc::sockaddr_storage).cast() };
    Some(u16::from_be(a.sin_port))
}

/// What a UDP socket's receive buffer is once the node has raised it: the
/// kernel's answer to the same request on a fresh socket, or the default if
/// that is larger (the node never lowers it).
fn raised_recv_buffer() -> libc::c_int {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&probe);
    let default = sockopt(fd, libc::SO_RCVBUF).unwrap();
    let want = libc::c_int::try_from(QUIC_RECV_BUFFER).unwrap();
    // SAFETY: setsockopt reads a c_int from `want`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&want as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    default.max(sockopt(fd, libc::SO_RCVBUF).unwrap())
}

/// Every socket of this process on `port` has the raised receive buffer.
fn assert_raised(port: u16, what: &str) {
    let fds = udp_sockets_on(port);
    assert!(!fds.is_empty(), "no UDP socket on port {port} ({what})");
    let expect = raised_recv_buffer();
    for fd in fds {
        let got = sockopt(fd, libc::SO_RCVBUF).unwrap();
        assert_eq!(got, expect, "receive buffer of the {what} socket");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_listeners_get_the_larger_receive_buffer() {
    let a = start(config(vec![quic_addr()], false), MapProvider::default());
    let addrs = a.client.listen_addrs().await;
    assert_raised(quic_port(&addrs[0]), "listener");
}

/// What the relay saw.
#[derive(Default)]
struct Seen {
    /// The dialer's address, once it has sent something.
    client: std::sync::Mutex<Option<std::net::SocketAddr>>,
    /// Largest datagram in either direction.
    largest: AtomicUsize,
    /// Bytes from the listener to the dialer: all, and in datagrams over 4000 bytes.
    down: AtomicUsize,
    down_large: AtomicUsize,
}

/// Forwards datagrams between one client and `upstream`, recording sizes.
async fn relay(front: UdpSocket, upstream: std::net::SocketAddr, seen: Arc<Seen>) {
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(upstream).await.unwrap();
    let mut client = None;
    let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    loop {
        tokio::select! {
            r = front.recv_from(&mut up) => {
                let Ok((n, from)) = r else { continue };
                client = Some(from);
                *seen.client.lock().unwrap() = Some(from);
                seen.largest.fetch_max(n, Ordering::Relaxed);
                let _ = back.send(&up[..n]).await;
            }
            r = back.recv(&mut down) => {
                // An ICMP error from a closed port shows up here: not data.
                let Ok(n) = r else { continue };
                seen.largest.fetch_max(n, Ordering::Relaxed);
                seen.down.fetch_add(n, Ordering::Relaxed);
                if n > 4000 {
                    seen.down_large.fetch_add(n, Ordering::Relaxed);
                }
                if let Some(c) = client {
                    let _ = front.send_to(&down[..n], c).await;
                }
            }
        }
    }
}

/// Loopback carries 64 KiB datagrams: path-MTU discovery takes QUIC past
/// Ethernet's 1472-byte payloads up to the node's bound (quinn's endpoint
/// stops at 1472 unless told otherwise), most bytes travel in the large
/// datagrams, and they still arrive whole. The dialer listens on TCP only,
/// so it dials from a socket of its own, which gets the larger receive
/// buffer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_finds_datagrams_larger_than_ethernet_where_the_path_carries_them() {
    const CHUNK: usize = 256 * 1024;
    let mut provider = MapProvider::default();
    let ids: Vec<Hash> = (0..32u32).map(|i| Hash::of(&i.to_be_bytes())).collect();
    for (i, cid) in ids.iter().enumerate() {
        provider
            .chunks
            .insert(*cid, Bytes::from(vec![i as u8; CHUNK]));
    }
    let a = start(config(vec![quic_addr()], false), provider);
    let b = start(config(vec![tcp_addr()], false), MapProvider::default());
    let listen = a.client.listen_addrs().await;
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], quic_port(&listen[0])));
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let via: Multiaddr = format!(
        "/ip4/127.0.0.1/udp/{}/quic-v1",
        front.local_addr().unwrap().port()
    )
    .parse()
    .unwrap();
    let seen = Arc::new(Seen::default());
    let relay = tokio::spawn(relay(front, upstream, seen.clone()));
    b.client.dial(via).await.unwrap();
    let pa = a.client.local_peer_id();
    for (i, cid) in ids.iter().enumerate() {
        let got = b.client.fetch_chunk(pa, *cid).await.unwrap();
        assert_eq!(got, Bytes::from(vec![i as u8; CHUNK]));
    }
    assert!(!relay.is_finished(), "the relay stopped");
    relay.abort();
    let largest = seen.largest.load(Ordering::Relaxed);
    assert!(
        largest > 1472 && largest <= QUIC_MAX_UDP_PAYLOAD as usize,
        "largest datagram {largest} bytes"
    );
    let (down, large) = (
        seen.down.load(Ordering::Relaxed),
        seen.down_large.load(Ordering::Relaxed),
    );
    assert!(
        large * 2 > down,
        "{large} of {down} bytes in datagrams over 4000 bytes"
    );
    let client = seen
        .client
        .lock()
        .unwrap()
        .expect("the dialer sent something");
    assert_raised(client.port(), "dialer");
}
