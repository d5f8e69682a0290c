//! The node's status: the store's part plus followers' progress and the
//! network's side.

use std::sync::atomic::Ordering;

use super::{blocking, local, lock, Inner, NodeError};
use crate::control::status::{CapsStatus, NodeInfo, PeerStatus, Status};

impl Inner {
    /// A snapshot of the store's and the node's state.
    pub(crate) async fn status(&self) -> Result<Status, NodeError> {
        let s = self.store.clone();
        let mut status: Status = blocking("status", move || local::status(&s)).await?;
        let followers = lock(&self.followers).clone();
        for cs in &mut status.collections {
            let Some(f) = cs.id.parse().ok().and_then(|c| followers.get(&c)) else {
                continue;
            };
            // Followed now, recorded or named by this run's settings.
            cs.followed = true;
            cs.in_progress = Some(f.in_progress.load(Ordering::Relaxed)).filter(|v| *v > 0);
            cs.done_bytes = f.progress.done_bytes.load(Ordering::Relaxed);
            cs.total_bytes = f.progress.total_bytes.load(Ordering::Relaxed);
            cs.bytes_down = f.progress.bytes_down.load(Ordering::Relaxed);
            cs.refused = lock(&f.refused).clone();
        }
        let peers = self
            .client
            .peers()
            .await
            .into_iter()
            .map(|p| PeerStatus {
                id: p.peer_id.to_string(),
                addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                path: p.path.to_string(),
            })
            .collect();
        let nat = self.client.nat_status().await;
        status.node = Some(NodeInfo {
            peer_id: self.client.local_peer_id().to_string(),
            listen: self
                .client
                .listen_addrs()
                .await
                .iter()
                .map(|a| a.to_string())
                .collect(),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: lock(&self.followers)
                .values()
                .map(|f| f.progress.bytes_down.load(Ordering::Relaxed))
                .sum(),
            peers,
            reachability: nat.reachability.to_string(),
            external_addrs: nat.external_addrs.iter().map(|a| a.to_string()).collect(),
            relay: nat.relay.map(|r| r.to_string()),
            known_peers: nat.known_peers,
            caps: {
                let c = self.client.caps_stats();
                CapsStatus {
                    upload_cap: c.upload_cap.unwrap_or(0),
                    download_cap: c.download_cap.unwrap_or(0),
                    max_peers: c.max_peers.unwrap_or(0),
                    upload_rate: c.upload_rate,
                    download_rate: c.download_rate,
                }
            },
        });
        Ok(status)
    }
}
