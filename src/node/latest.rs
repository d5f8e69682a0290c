//! Catching up without gossip: asking peers for the latest announcement of
//! each followed collection when they connect, when a collection starts
//! being followed, and every [`POLL`] as a backup for missed gossip.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::watch;

use super::admission::{self, Admission, Reason};
use super::{lock, Inner};
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
        }) => {
            tracing::info!(%collection, version, peer = %from, "accepted a new announcement")
        }
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
