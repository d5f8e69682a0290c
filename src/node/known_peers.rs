//! Saves what the network learned about peers (its [`PeerBook`]) in the
//! store's metadata, every minute and at shutdown, and reads it back at
//! start, so a restarted node dials the peers it knew without being told.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{blocking, Inner};
use crate::net::{KnownPeer, PeerBook};
use crate::store::Store;

/// The metadata record holding the book.
const KEY: &str = "peers";
/// How often the book is saved while the node runs.
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// The saved book (empty if none or unreadable: it is only a hint).
pub(crate) fn load(store: &Store) -> Vec<KnownPeer> {
    match store.meta(KEY) {
        Ok(Some(bytes)) => PeerBook::decode(&bytes, crate::announce::now()).peers(),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the saved peers");
            Vec::new()
        }
    }
}

/// Saves the network's current book.
pub(crate) async fn save(inner: &Arc<Inner>) {
    let peers = inner.client.known_peers().await;
    if peers.is_empty() {
        return;
    }
    let bytes = PeerBook::new(peers, crate::announce::now()).encode();
    let store = inner.store.clone();
    if let Err(e) = blocking("saving known peers", move || store.set_meta(KEY, &bytes)).await {
        tracing::warn!(error = %e, "cannot save the known peers");
    }
}

/// Saves the book every [`SAVE_EVERY`] until shutdown.
pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            return;
        }
        save(&inner).await;
    }
}
