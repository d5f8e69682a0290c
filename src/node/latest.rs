//! Catching up without gossip: asking peers for the latest announcement of
//! each followed collection when they connect, when a collection starts
//! being followed, and every [`POLL`] as a backup for missed gossip.
//!
//! Freshness: [`freshness`] watches the newest accepted announcement of
//! each collection, warns once when a tenth of its validity is left and
//! once when it has expired (status shows it too), and re-gossips the
//! current announcement of collections published through this node every
//! [`REANNOUNCE`]. An expired announcement is still handed out on the
//! latest protocol: it carries its signed expiry, so no peer takes it as
//! fresh (admission ignores it, without penalising the sender).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::watch;

use super::admission::{self, Admission, Reason};
use super::{blocking, lock, Inner};
use crate::announce::Freshness;
use crate::gossip::GossipMessage;
use crate::keys::CollectionId;

/// How often every peer is asked for the latest announcements.
const POLL: Duration = Duration::from_secs(30);

/// Asks one peer for the latest announcement of every followed collection.
pub(super) async fn ask_all(inner: Arc<Inner>, peer: PeerId) {
    let cols: Vec<CollectionId> = lock(&inner.followers).keys().copied().collect();
    for c in cols {
        ask_one(&inner, peer, c).await;
    }
}

/// Asks `peer` for the latest announcement of `c` and admits the answer.
pub(super) async fn ask_one(inner: &Arc<Inner>, peer: PeerId, c: CollectionId) {
    match inner.client.request_latest(peer, c).await {
        Ok(Some(bytes)) => {
            let a = admit(inner, &bytes, Some(c)).await;
            log(&a, &peer);
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "latest-announcement request failed"),
    }
}

/// Admits an announcement on the blocking pool and wakes its follower.
pub(super) async fn admit(
    inner: &Arc<Inner>,
    bytes: &[u8],
    topic: Option<CollectionId>,
) -> Admission {
    let bytes = bytes.to_vec();
    inner
        .admit("admitting an announcement", move |store, followed, now| {
            admission::announcement(store, followed, topic, &bytes, now)
        })
        .await
}

/// Logs an admission: accepted versions at info, rejections at warn,
/// local failures at warn, the rest at debug.
pub(super) fn log(a: &Admission, from: &PeerId) {
    match a {
        Admission::Accept(admission::Accepted::Announcement {
            collection,
            version,
            name,
            bytes,
        }) => tracing::info!(
            collection = %name,
            version,
            size = %crate::human::bytes(*bytes),
            id = %collection,
            peer = %from,
            "accepted a new version"
        ),
        Admission::Accept(_) => {}
        Admission::Reject(why) => tracing::warn!(peer = %from, %why, "rejected a message"),
        Admission::Ignore(why @ Reason::Local(_)) => {
            tracing::warn!(peer = %from, %why, "could not take an announcement")
        }
        Admission::Ignore(why) => tracing::debug!(peer = %from, %why, "ignored a message"),
    }
}

/// Asks every peer for the latest announcements every [`POLL`], all peers
/// at once: a silent peer costs a round one request timeout, not one each.
pub(super) async fn poll(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let peers = inner.client.peers().await;
        futures::future::join_all(peers.into_iter().map(|p| ask_all(inner.clone(), p.peer_id)))
            .await;
    }
}

/// How often the freshness of each collection is checked.
const FRESHNESS_CHECK: Duration = Duration::from_secs(1);

/// How often the current announcement of what this node published is
/// gossiped again: longer than gossipsub's duplicate window (a minute), in
/// which an identical message is not sent again.
pub(crate) const REANNOUNCE: Duration = Duration::from_secs(5 * 60);

/// Warns when the newest accepted announcement of a collection nears or
/// passes its expiry, and re-announces what this node published.
pub(super) async fn freshness(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    // The last state warned about, per collection and version.
    let mut told: HashMap<CollectionId, (u64, Freshness)> = HashMap::new();
    let mut announced = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FRESHNESS_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cols: Vec<CollectionId> = lock(&inner.followers).keys().copied().collect();
        let s = inner.store.clone();
        let latest = blocking("checking freshness", move || {
            cols.iter()
                .filter_map(|c| s.latest(c).transpose())
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        let latest = match latest {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not check announcement freshness");
                continue;
            }
        };
        let now = crate::announce::now();
        for a in &latest {
            let b = &a.body;
            let f = b.freshness(now);
            if f == Freshness::Fresh || told.get(&b.collection) == Some(&(b.version, f)) {
                continue;
            }
            told.insert(b.collection, (b.version, f));
            if f == Freshness::Expiring {
                tracing::warn!(
                    collection = %b.collection, version = b.version, expires_at = b.expires_at,
                    "the newest announcement expires soon; the master must publish again before then"
                );
            } else {
                tracing::warn!(
                    collection = %b.collection, version = b.version, expires_at = b.expires_at,
                    "the newest announcement has expired; peers ignore it until the master publishes again"
                );
            }
        }
        if announced.elapsed() >= REANNOUNCE {
            announced = Instant::now();
            reannounce(&inner).await;
        }
    }
}

/// Gossips again the current announcement of every collection published
/// through this node, while it is valid.
async fn reannounce(inner: &Arc<Inner>) {
    let cols: Vec<CollectionId> = lock(&inner.published).iter().copied().collect();
    for c in cols {
        let s = inner.store.clone();
        let Ok(Some(a)) = blocking("re-announcing", move || s.current(&c)).await else {
            continue;
        };
        if a.body.freshness(crate::announce::now()) == Freshness::Expired {
            continue;
        }
        match inner
            .client
            .publish(c, GossipMessage::announce(&a).encode())
            .await
        {
            Ok(()) => tracing::debug!(collection = %c, version = a.body.version, "re-announced"),
            Err(e) => tracing::debug!(collection = %c, error = %e, "re-announcing failed"),
        }
    }
}
