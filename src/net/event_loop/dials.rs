//! Dials this node starts itself (bootstrap and configured peers, the
//! control socket's `connect`), and the one retry a dial gets when its
//! local port is taken.
//!
//! TCP dials bind the listening port (port reuse, so that peers and NATs
//! see the address we listen on). When a connection between the same two
//! ports exists already (the far side dialed us from its listening port)
//! or is still in TIME_WAIT after a close, that 4-tuple is taken and the
//! connect fails with "address in use" for as long as it lasts; libp2p
//! retries only "address not available" by itself. Such a dial is retried
//! at once from a fresh port.

use std::{error::Error, io};

use libp2p::{
    core::transport::TransportError,
    multiaddr::Protocol,
    swarm::{dial_opts::DialOpts, ConnectionId, DialError},
    Multiaddr,
};
use tokio::sync::oneshot;
use tracing::debug;

use super::EventLoop;
use crate::net::NetError;

/// A dial in flight, kept until its connection is established or fails.
pub(super) struct PendingDial {
    addr: Multiaddr,
    reply: Option<oneshot::Sender<Result<(), NetError>>>,
    fresh_port: bool,
}

impl PendingDial {
    /// Tells the caller, if one waits.
    pub(super) fn answer(self, result: Result<(), NetError>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(result);
        }
    }
}

impl EventLoop {
    /// Dials `addr`; `reply` hears whether a connection came of it.
    pub(super) fn start_dial(
        &mut self,
        addr: Multiaddr,
        reply: Option<oneshot::Sender<Result<(), NetError>>>,
    ) -> Result<(), NetError> {
        self.dial(addr, reply, false)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        reply: Option<oneshot::Sender<Result<(), NetError>>>,
        fresh_port: bool,
    ) -> Result<(), NetError> {
        if let (Some(Protocol::P2p(peer)), Some(kad)) =
            (addr.iter().last(), self.swarm.behaviour_mut().kad.as_mut())
        {
            kad.add_address(&peer, addr.clone());
        }
        let opts = dial_opts(&addr, fresh_port);
        let connection_id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending_dials.insert(
                    connection_id,
                    PendingDial {
                        addr,
                        reply,
                        fresh_port,
                    },
                );
                Ok(())
            }
            Err(DialError::DialPeerConditionFalse(_)) => {
                // Connected or being dialed already.
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                Ok(())
            }
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(NetError::Dial(e.to_string())));
                }
                Err(NetError::Dial(e.to_string()))
            }
        }
    }

    /// A dial of ours failed: retried from a fresh port if the port was
    /// the reason, else the caller is told.
    pub(super) fn dial_failed(&mut self, connection_id: ConnectionId, error: &DialError) {
        let Some(pending) = self.pending_dials.remove(&connection_id) else {
            return;
        };
        if !pending.fresh_port && port_taken(error) {
            debug!(addr = %pending.addr, "local port taken for this peer; dialing from a fresh port");
            let PendingDial { addr, reply, .. } = pending;
            let _ = self.dial(addr, reply, true);
            return;
        }
        pending.answer(Err(NetError::Dial(error.to_string())));
    }
}

/// Dial options for `addr`: by peer id when the address names one (so a
/// connected peer is not dialed twice), from a fresh local port if asked.
fn dial_opts(addr: &Multiaddr, fresh_port: bool) -> DialOpts {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            let opts = DialOpts::peer_id(peer).addresses(vec![addr.clone()]);
            if fresh_port {
                opts.allocate_new_port().build()
            } else {
                opts.build()
            }
        }
        _ => {
            let opts = DialOpts::unknown_peer_id().address(addr.clone());
            if fresh_port {
                opts.allocate_new_port().build()
            } else {
                opts.build()
            }
        }
    }
}

/// Whether a dial failed because the local address/port pair could not
/// be used (EADDRINUSE or EADDRNOTAVAIL anywhere in an attempt's error).
fn port_taken(error: &DialError) -> bool {
    let DialError::Transport(attempts) = error else {
        return false;
    };
    attempts.iter().any(|(_, e)| match e {
        TransportError::Other(e) => io_port_taken(e),
        TransportError::MultiaddrNotSupported(_) => false,
    })
}

fn io_port_taken(e: &io::Error) -> bool {
    let taken = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
        )
    };
    if taken(e) {
        return true;
    }
    // Transport upgrades wrap the socket's error in their own: walk the
    // wrapped errors and their sources.
    let mut next: Option<&(dyn Error + 'static)> = e.get_ref().map(|e| e as _);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if taken(io) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(e: io::Error) -> DialError {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        DialError::Transport(vec![(addr, TransportError::Other(e))])
    }

    #[derive(Debug, thiserror::Error)]
    #[error("upgrade failed")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn a_taken_port_is_recognised_however_deeply_wrapped() {
        let bare = io::Error::from(io::ErrorKind::AddrInUse);
        assert!(port_taken(&attempt(bare)));
        let os = io::Error::from_raw_os_error(98);
        assert!(port_taken(&attempt(os)));
        let boxed = io::Error::other(io::Error::from(io::ErrorKind::AddrNotAvailable));
        assert!(port_taken(&attempt(boxed)));
        let nested = io::Error::other(Wrapper(io::Error::from_raw_os_error(98)));
        assert!(port_taken(&attempt(nested)));
    }

    #[test]
    fn other_dial_failures_are_not_retried_from_a_fresh_port() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(!port_taken(&attempt(refused)));
        let wrapped = io::Error::other(Wrapper(io::Error::from(io::ErrorKind::TimedOut)));
        assert!(!port_taken(&attempt(wrapped)));
        assert!(!port_taken(&DialError::Aborted));
    }
}
