//! The node's side of its metrics (see [`crate::metrics`]): what a scrape
//! samples, and the accounting downloads report to, which counts chunks per
//! peer and offences by kind on their way to the node's reputation.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use libp2p::PeerId;

use super::{blocking, lock, Inner};
use crate::metrics::{CollectionSample, Sample};
use crate::store::StoreError;
use crate::sync::{Offence, PeerAccounting};

/// What downloads report to: the node's reputation, counted on the way.
pub(crate) struct Accounting<'a> {
    inner: &'a Inner,
}

impl PeerAccounting for Accounting<'_> {
    fn offence(&self, peer: PeerId, offence: Offence) {
        self.inner.metrics.error(offence.into());
        self.inner.reputation.offence(peer, offence);
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        self.inner.reputation.is_banned(peer)
    }

    fn delivered(&self, peer: PeerId) {
        self.inner.metrics.chunk_fetched(peer);
    }
}

impl Inner {
    /// The accounting to hand a download.
    pub(crate) fn accounting(&self) -> Accounting<'_> {
        Accounting { inner: self }
    }

    /// The node's state for one scrape: a few index reads per collection
    /// (never a walk over the chunks), followers' counters, peers.
    pub(crate) async fn metrics_sample(self: &Arc<Self>) -> Option<Sample> {
        let s = self.store.clone();
        let held = blocking("sampling metrics", move || {
            s.collections()?
                .into_iter()
                .map(|c| {
                    let latest = s.latest(&c.id)?;
                    Ok((c, latest))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await;
        let held = match held {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sample metrics");
                return None;
            }
        };
        let followers = lock(&self.followers).clone();
        let collections = held
            .into_iter()
            .map(|(c, latest)| {
                let mut row = CollectionSample {
                    id: c.id.to_string(),
                    name: c.name,
                    current: c.current.map(|a| a.body.version),
                    latest: latest.as_ref().map(|a| a.body.version),
                    latest_published_at: latest.as_ref().map(|a| a.body.published_at),
                    latest_expires_at: latest.as_ref().map(|a| a.body.expires_at),
                    ..Default::default()
                };
                if let Some(f) = followers.get(&c.id) {
                    let p = &f.progress;
                    row.in_progress =
                        Some(f.in_progress.load(Ordering::Relaxed)).filter(|v| *v > 0);
                    row.done_bytes = p.done_bytes.load(Ordering::Relaxed);
                    row.total_bytes = p.total_bytes.load(Ordering::Relaxed);
                    row.done_chunks = p.done_chunks.load(Ordering::Relaxed);
                    row.total_chunks = p.total_chunks.load(Ordering::Relaxed);
                }
                row
            })
            .collect();
        let p2p_received_bytes = followers
            .values()
            .map(|f| f.progress.bytes_down.load(Ordering::Relaxed))
            .sum();
        let peers = self
            .client
            .peers()
            .await
            .into_iter()
            .map(|p| p.peer_id)
            .collect();
        Some(Sample {
            now: crate::announce::now(),
            collections,
            p2p_sent_bytes: self.bytes_up.load(Ordering::Relaxed),
            p2p_received_bytes,
            peers,
        })
    }
}
