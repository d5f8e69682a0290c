//! Fetching a version's manifest: its chunk list from one peer at a time,
//! its chunks from every peer that holds them, then reassembly and checks.

use std::collections::HashSet;
use std::sync::Arc;

use super::scheduler::REFRESH;
use super::{fetch_chunks, Progress, SyncError};
use crate::announce::Announcement;
use crate::manifest::Manifest;
use crate::net;
use crate::store::{Store, StoreError};
use crate::task::blocking;

/// Fetches the manifest of `a` from peers (unless stored) and returns it.
pub async fn fetch_manifest(
    client: &net::Client,
    store: &Arc<Store>,
    a: &Announcement,
    progress: &Progress,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Manifest, SyncError> {
    let id = a.manifest;
    let s = store.clone();
    if blocking("checking for the manifest", move || s.has_manifest(&id)).await? {
        let s = store.clone();
        return Ok(blocking("reading the manifest", move || s.manifest(&id)).await?);
    }
    let mut tried = HashSet::new();
    loop {
        if cancelled() {
            return Err(SyncError::Cancelled);
        }
        let peers = client.peers().await;
        let Some(peer) = peers.iter().map(|p| p.peer_id).find(|p| !tried.contains(p)) else {
            if tried.is_empty() {
                tokio::time::sleep(REFRESH).await;
                continue;
            }
            // Everyone was asked once; start over after a pause.
            tried.clear();
            tokio::time::sleep(REFRESH).await;
            continue;
        };
        tried.insert(peer);
        let refs = match client.fetch_manifest_chunks(peer, id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "manifest chunk list not available");
                continue;
            }
        };
        let sum: u64 = refs.iter().map(|c| c.len as u64).sum();
        if sum != a.manifest_size || refs.iter().any(|c| c.len == 0) {
            tracing::warn!(%peer, "peer sent a manifest chunk list that does not match the announcement");
            continue;
        }
        let missing = {
            let s = store.clone();
            let refs = refs.clone();
            blocking("listing missing manifest chunks", move || {
                let mut out = Vec::new();
                for c in refs {
                    if !s.has_chunk(&c.id)? {
                        out.push(c);
                    }
                }
                Ok::<_, StoreError>(out)
            })
            .await?
        };
        fetch_chunks(client, store, missing, progress, cancelled).await?;
        let s = store.clone();
        let size = a.manifest_size;
        match blocking("assembling the manifest", move || {
            s.assemble_manifest(&id, size, &refs)
        })
        .await
        {
            Ok(m) => return Ok(m),
            Err(StoreError::Manifest(e)) => {
                // Signed by the master yet invalid: no peer can fix that.
                tracing::warn!(%peer, error = %e, "announced manifest is invalid");
                return Err(StoreError::Manifest(e).into());
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "assembling the manifest failed");
            }
        }
    }
}
