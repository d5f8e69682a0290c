//! Disk space for followers. Before a version is fetched (its manifest,
//! then its chunks) the bytes it would add are checked against the store
//! quota (`limits.max_store_bytes`) and the free disk space: a version over
//! the quota is refused, logged once and shown in `status`, and nothing held
//! is touched; a disk without room is waited out like a disk that fills
//! during the download, with an exponential backoff that ends early as soon
//! as enough space is free again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::follow::Follower;
use super::{blocking, lock, Inner};
use crate::control::status::Refused;
use crate::keys::CollectionId;
use crate::store::{Fit, StoreError, DISK_RESERVE};
use crate::sync::SyncError;

/// First wait after a disk-full error.
pub(crate) const BACKOFF_START: Duration = Duration::from_secs(2);
/// Longest wait between two attempts on a full disk.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often free space is looked at while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Whether `version` of `c`, adding `adds` bytes, may be fetched now.
/// `Ok(false)`: refused over the quota (recorded for `status`, logged when
/// it is new). A disk without room is a [`StoreError::DiskFull`] error, for
/// the follower to wait out.
pub(crate) async fn admit(
    inner: &Arc<Inner>,
    c: CollectionId,
    me: &Follower,
    version: u64,
    adds: u64,
) -> Result<bool, SyncError> {
    let s = inner.store.clone();
    let quota = inner.max_store_bytes;
    let fit = blocking("checking disk space", move || s.fits(adds, quota)).await?;
    let refused = match &fit {
        Fit::Fits => None,
        _ => Some(Refused {
            version,
            reason: fit.to_string(),
        }),
    };
    let changed = {
        let mut r = lock(&me.refused);
        let changed = *r != refused;
        *r = refused;
        changed
    };
    match fit {
        Fit::Fits => Ok(true),
        Fit::OverQuota { .. } => {
            if changed {
                tracing::warn!(collection = %c, version, "version refused: {fit}");
            }
            Ok(false)
        }
        Fit::NoSpace { needed, available } => {
            Err(StoreError::DiskFull { needed, available }.into())
        }
    }
}

/// Whether a follower's error is the disk being full.
pub(crate) fn disk_full(e: &SyncError) -> bool {
    matches!(e, SyncError::Store(s) if s.is_disk_full())
}

/// After a disk-full error: logs it, then waits `backoff` (doubled for the
/// next time, up to [`BACKOFF_MAX`]), or less once the space the error asked
/// for (or the index reserve) is free again. Returns false on shutdown.
pub(crate) async fn wait_for_space(
    inner: &Arc<Inner>,
    c: CollectionId,
    e: &SyncError,
    backoff: &mut Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    let s = inner.store.clone();
    let free = |s: Arc<crate::store::Store>| async move {
        blocking("reading free disk space", move || s.available_bytes())
            .await
            .unwrap_or(0)
    };
    let before = free(s.clone()).await;
    let wanted = match e {
        SyncError::Store(StoreError::DiskFull { needed, .. }) => *needed,
        _ => before.saturating_add(DISK_RESERVE),
    };
    tracing::warn!(
        collection = %c,
        error = %e,
        "disk full: sync paused, nothing held is lost; retrying in {}s or once {} are free",
        wait.as_secs(),
        crate::store::mib(wanted),
    );
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
        if free(s.clone()).await >= wanted {
            tracing::info!(collection = %c, "disk space freed; resuming the sync");
            break;
        }
    }
    true
}
