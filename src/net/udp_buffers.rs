//! Larger receive buffers for the QUIC sockets.
//!
//! libp2p-quic binds its UDP sockets itself and offers no hook for socket
//! options, so they get the system's default receive buffer (208 KiB on
//! Linux). A bulk transfer overruns it whenever the receiving process is
//! briefly off the CPU: the kernel drops datagrams, which QUIC takes as
//! congestion and slows down for (measured: about 500 drops per GiB on
//! loopback with two busy cores). TCP has no such problem (the kernel sizes
//! its buffers itself). So once a QUIC socket exists (a listener, or the
//! socket a dial bound), the node finds it among its own descriptors by its
//! local port and raises its receive buffer to [`RECV_BUFFER`], as far as
//! `net.core.rmem_max` allows.

use std::collections::HashSet;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// Receive buffer asked for a QUIC socket: a few milliseconds of a
/// gigabit-class link (the kernel caps it at `net.core.rmem_max`).
pub const RECV_BUFFER: usize = 8 << 20;

/// The UDP port of a QUIC address (`.../udp/PORT/quic-v1`), if it is one.
pub fn quic_port(addr: &Multiaddr) -> Option<u16> {
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Udp(n) => port = Some(n),
            Protocol::QuicV1 => return port,
            _ => {}
        }
    }
    None
}

/// How often a new QUIC connection may trigger a look at the sockets.
const RESCAN: Duration = Duration::from_secs(10);

/// The sockets already raised (descriptor and port), so each is set once.
#[derive(Default)]
pub struct Raised {
    done: HashSet<(RawFd, u16)>,
    scanned: Option<Instant>,
}

impl Raised {
    /// Raises the receive buffer of every UDP socket of this process not
    /// raised yet (QUIC listeners, the socket a QUIC dial bound; mDNS's
    /// socket too, which costs nothing until datagrams queue). Best effort:
    /// failures are logged at debug level.
    pub fn raise_all(&mut self) {
        self.scanned = Some(Instant::now());
        for (fd, port) in udp_sockets() {
            if !self.done.insert((fd, port)) {
                continue;
            }
            match set_recv_buffer(fd, RECV_BUFFER) {
                Ok(got) => tracing::debug!(port, fd, bytes = got, "raised a UDP receive buffer"),
                Err(e) => {
                    tracing::debug!(port, fd, error = %e, "could not raise a UDP receive buffer")
                }
            }
        }
    }

    /// [`Raised::raise_all`] for a new connection over `addr`, if it is
    /// QUIC and the sockets were not looked at in the last few seconds (a
    /// dial may have bound a new socket; connections come far more often
    /// than sockets).
    pub fn on_connection(&mut self, addr: &Multiaddr) {
        if quic_port(addr).is_none() {
            return;
        }
        if self.scanned.is_some_and(|t| t.elapsed() < RESCAN) {
            return;
        }
        self.raise_all();
    }
}

/// This process's UDP sockets: descriptor and local port.
fn udp_sockets() -> Vec<(RawFd, u16)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if is_socket && is_udp(fd) {
            if let Some(port) = local_port(fd) {
                out.push((fd, port));
            }
        }
    }
    out
}

fn is_udp(fd: RawFd) -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`, a c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && ty == libc::SOCK_DGRAM
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
    if rc != 0 {
        return None;
    }
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast() };
            Some(u16::from_be(a.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast() };
            Some(u16::from_be(a.sin6_port))
        }
        _ => None,
    }
}

/// Sets SO_RCVBUF (the kernel caps it at `net.core.rmem_max`); returns
/// what the socket has afterwards.
fn set_recv_buffer(fd: RawFd, bytes: usize) -> std::io::Result<usize> {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
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
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(recv_buffer(fd))
}

/// The socket's SO_RCVBUF (0 if it cannot be read).
fn recv_buffer(fd: RawFd) -> usize {
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `got`, a c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    usize::try_from(got).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_ports_are_read_from_addresses() {
        let a: Multiaddr = "/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap();
        assert_eq!(quic_port(&a), Some(4001));
        let t: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(quic_port(&t), None);
    }

    #[test]
    fn the_receive_buffer_of_a_bound_udp_socket_is_raised() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let found = udp_sockets();
        assert!(found.contains(&(fd, port)));
        assert!(
            !found.iter().any(|&(f, _)| f == tcp_fd),
            "a TCP socket is not UDP"
        );
        let before = recv_buffer(fd);
        let mut r = Raised::default();
        let tcp_addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        r.on_connection(&tcp_addr);
        assert_eq!(recv_buffer(fd), before, "not for a TCP connection");
        let quic_addr: Multiaddr = "/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap();
        r.on_connection(&quic_addr);
        let after = recv_buffer(fd);
        // Linux doubles what is asked, up to twice net.core.rmem_max.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let expect = 2 * RECV_BUFFER.min(rmem_max);
        if expect > before {
            assert_eq!(after, expect);
        } else {
            assert!(after >= before);
        }
    }
}
