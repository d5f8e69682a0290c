//! Keeps the configured peers (`net.peers`, `--peer`) connected: one that
//! is down when the node starts, or that goes away later (a master
//! restarted), is dialed again with an exponential backoff until it answers,
//! so a mirror started before its master still syncs.
//!
//! A peer counts as connected by its id when the address names one
//! (`/p2p/<id>`), otherwise when a connection to exactly that address is open.

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Inner;
use crate::net::PeerInfo;

/// Wait before the first re-dial (the event loop dials every configured
/// peer once at start) and after a peer was last seen connected.
pub(crate) const FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two dials of a peer that does not answer.
pub(crate) const MAX: Duration = Duration::from_secs(30);
/// How often the connected peers are looked at.
const TICK: Duration = Duration::from_millis(500);

/// One configured peer.
struct Target {
    addr: Multiaddr,
    peer: Option<PeerId>,
    wait: Duration,
    next: Instant,
    dialing: bool,
    failures: u32,
}

impl Target {
    fn connected(&self, peers: &[PeerInfo]) -> bool {
        match self.peer {
            Some(id) => peers.iter().any(|p| p.peer_id == id),
            None => peers.iter().any(|p| p.addrs.contains(&self.addr)),
        }
    }
}

/// Runs until shutdown.
pub(crate) async fn run(inner: Arc<Inner>, peers: Vec<Multiaddr>, mut stop: watch::Receiver<bool>) {
    if peers.is_empty() {
        return;
    }
    let start = Instant::now();
    let mut targets: Vec<Target> = peers
        .into_iter()
        .map(|addr| Target {
            peer: addr.iter().find_map(|p| match p {
                Protocol::P2p(id) => Some(id),
                _ => None,
            }),
            addr,
            wait: FIRST,
            next: start + FIRST,
            dialing: false,
            failures: 0,
        })
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            Some((i, r)) = rx.recv() => {
                let t = &mut targets[i];
                t.dialing = false;
                match r {
                    Ok(()) => {
                        if t.failures > 0 {
                            tracing::info!(addr = %t.addr, "configured peer reachable again");
                        }
                        t.failures = 0;
                        t.wait = FIRST;
                    }
                    Err(e) => {
                        t.failures += 1;
                        t.wait = (t.wait * 2).min(MAX);
                        t.next = Instant::now() + t.wait;
                        // Once when it goes (people read this), then quietly
                        // at every retry of the backoff.
                        if t.failures == 1 {
                            tracing::warn!(
                                addr = %t.addr,
                                error = %e,
                                "cannot reach a configured peer; retrying every {}s at most",
                                MAX.as_secs()
                            );
                        } else {
                            tracing::debug!(
                                addr = %t.addr,
                                error = %e,
                                "configured peer unreachable; dialing again in {}s",
                                t.wait.as_secs()
                            );
                        }
                    }
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let connected = inner.client.peers().await;
        let now = Instant::now();
        for (i, t) in targets.iter_mut().enumerate() {
            if t.dialing {
                continue;
            }
            if t.connected(&connected) {
                // Seen connected: if it goes, try again soon.
                t.wait = FIRST;
                t.next = now + FIRST;
                continue;
            }
            if now < t.next {
                continue;
            }
            t.dialing = true;
            t.next = now + t.wait;
            let (client, addr, tx) = (inner.client.clone(), t.addr.clone(), tx.clone());
            inner.spawn(async move {
                let r = client.dial(addr).await.map_err(|e| e.to_string());
                let _ = tx.send((i, r));
            });
        }
    }
}
