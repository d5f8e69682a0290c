//! A follower: one task per followed collection that fetches each newer
//! accepted version (the paths it mirrors, for a partial mirror, see
//! [`crate::filter`]) and makes it current once complete, then collects old
//! versions. It ends when the collection is unfollowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{lock, space, Inner};
use crate::gossip::GossipMessage;
use crate::human;
use crate::keys::CollectionId;
use crate::metrics::Fault;
use crate::store::StoreError;
use crate::sync::{self, Progress, SyncError};
use crate::task::blocking;

/// A follower's shared state.
#[derive(Default)]
pub(crate) struct Follower {
    /// Woken when an announcement is accepted or a peer reports progress.
    pub(crate) wake: Notify,
    /// The version being fetched (0: none).
    pub(crate) in_progress: AtomicU64,
    /// Progress of the current download.
    pub(crate) progress: Progress,
    /// A chunk was dropped as corrupt: check the current version is whole.
    pub(crate) repair: std::sync::atomic::AtomicBool,
    /// A version not fetched for lack of space, shown in `status`.
    pub(crate) refused: std::sync::Mutex<Option<crate::control::status::Refused>>,
    /// Unfollowed: the task ends and a download in progress is cancelled.
    pub(crate) stopped: std::sync::atomic::AtomicBool,
}

/// Runs until shutdown.
pub(crate) async fn run(
    inner: Arc<Inner>,
    c: CollectionId,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(me) = lock(&inner.followers).get(&c).cloned() else {
        return;
    };
    let mut backoff = space::BACKOFF_START;
    loop {
        if me.stopped.load(Ordering::Relaxed) {
            return;
        }
        let r = step(&inner, c, &me).await;
        if !matches!(&r, Err(e) if space::disk_full(e)) {
            backoff = space::BACKOFF_START;
        }
        match r {
            Ok(true) => continue,
            Ok(false) => {}
            Err(SyncError::Cancelled) => {}
            Err(e) if space::disk_full(&e) => {
                inner.metrics.error(Fault::DiskFull);
                if !space::wait_for_space(&inner, c, &e, &mut backoff, &mut stop).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                inner.metrics.error(Fault::SyncFailed);
                tracing::warn!(collection = %c, error = %e, "sync failed; will retry");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        tokio::select! {
            _ = me.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Fetches again the chunks of the current version that are missing (the
/// HTTP gateway dropped a corrupt one), so it is served whole again.
async fn repair(
    inner: &Arc<Inner>,
    c: CollectionId,
    cur: &crate::announce::SignedAnnouncement,
    me: &Follower,
) -> Result<(), SyncError> {
    let s = inner.store.clone();
    let id = cur.body.manifest;
    let missing = blocking::<_, StoreError>("checking the current version", move || {
        s.missing_wanted(&id, &s.filter(&c)?)
    })
    .await?;
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(collection = %c, chunks = missing.len(), "fetching chunks of the current version again");
    let stopping = || inner.stopping.load(Ordering::Relaxed) || me.stopped.load(Ordering::Relaxed);
    sync::fetch_chunks(
        &inner.client,
        &inner.store,
        missing,
        &me.progress,
        &stopping,
        &inner.accounting(),
    )
    .await
}

/// Fetches the newest accepted version if it is not current. Returns
/// whether a version became current.
async fn step(inner: &Arc<Inner>, c: CollectionId, me: &Follower) -> Result<bool, SyncError> {
    let s = inner.store.clone();
    let (latest, current) = blocking::<_, StoreError>("reading versions", move || {
        Ok((s.latest(&c)?, s.current(&c)?))
    })
    .await?;
    let Some(target) = latest else {
        return Ok(false);
    };
    let v = target.body.version;
    if let Some(cur) = current.as_ref().filter(|a| a.body.version >= v) {
        if me.repair.swap(false, Ordering::Relaxed) {
            repair(inner, c, cur, me).await?;
        }
        return Ok(false);
    }
    me.in_progress.store(v, Ordering::Relaxed);
    let store = inner.store.clone();
    let cancelled = || {
        inner.stopping.load(Ordering::Relaxed)
            || me.stopped.load(Ordering::Relaxed)
            || store
                .latest(&c)
                .ok()
                .flatten()
                .is_some_and(|a| a.body.version > v)
    };
    let (s, id) = (inner.store.clone(), target.body.manifest);
    let held = blocking::<_, StoreError>("checking for the manifest", move || s.has_manifest(&id));
    let adds = if held.await? {
        0
    } else {
        target.body.manifest_size
    };
    if !space::admit(inner, c, me, v, adds).await? {
        me.in_progress.store(0, Ordering::Relaxed);
        return Ok(false);
    }
    let name = target.body.name.clone();
    let started = std::time::Instant::now();
    let down_before = me.progress.bytes_down.load(Ordering::Relaxed);
    sync::fetch_manifest(
        &inner.client,
        &inner.store,
        &target.body,
        &me.progress,
        &cancelled,
        &inner.accounting(),
    )
    .await?;
    // A partial mirror fetches the chunks of the paths it keeps only.
    let s = inner.store.clone();
    let id = target.body.manifest;
    let (missing, total) = blocking::<_, StoreError>("listing missing chunks", move || {
        sync::Wanted::of_stored(&s, id, &s.filter(&c)?)
    })
    .await?;
    let lacking = missing.bytes();
    if !space::admit(inner, c, me, v, lacking).await? {
        me.in_progress.store(0, Ordering::Relaxed);
        return Ok(false);
    }
    me.progress.total_bytes.store(total, Ordering::Relaxed);
    me.progress
        .done_bytes
        .store(total.saturating_sub(lacking), Ordering::Relaxed);
    tracing::info!(
        collection = %name,
        version = v,
        size = %human::bytes(total),
        missing = %human::bytes(lacking),
        "fetching version"
    );
    me.progress
        .total_chunks
        .store(missing.len() as u64, Ordering::Relaxed);
    me.progress.done_chunks.store(0, Ordering::Relaxed);
    sync::fetch_chunks(
        &inner.client,
        &inner.store,
        missing,
        &me.progress,
        &cancelled,
        &inner.accounting(),
    )
    .await?;
    let took = started.elapsed();
    let got = me
        .progress
        .bytes_down
        .load(Ordering::Relaxed)
        .saturating_sub(down_before);
    tracing::info!(
        collection = %name,
        version = v,
        size = %human::bytes(got),
        time = %human::duration(took),
        peers = inner.client.chunk_senders_since(started),
        rate = %human::rate(got as f64 / took.as_secs_f64().max(1e-3)),
        "fetched version"
    );
    let s = inner.store.clone();
    let keep = inner.keep;
    blocking::<_, StoreError>("making the version current", move || {
        s.set_current(&c, v)?;
        s.gc(keep)?;
        Ok(())
    })
    .await?;
    me.in_progress.store(0, Ordering::Relaxed);
    tracing::info!(collection = %name, version = v, "version is current");
    let note = GossipMessage::Have {
        version: v,
        holder: inner.client.local_peer_id().to_bytes(),
    }
    .encode();
    if let Err(e) = inner.client.publish(c, note).await {
        tracing::debug!(error = %e, "could not send a have note");
    }
    Ok(true)
}
