//! A slow source: a bare network endpoint serving a store's versions one
//! chunk at a time with a pause before each, so that a sync lasts long
//! enough for a test to kill, fill or stop something in the middle of it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::Multiaddr;
use peermirror::hash::Hash;
use peermirror::keys::CollectionId;
use peermirror::manifest::ChunkRef;
use peermirror::net::ChunkProvider;
use peermirror::node::{NodeConfig, StoreProvider};
use peermirror::store::Store;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::Harness;

/// A running slow source; stops when dropped.
pub struct SlowSource {
    addrs: Vec<Multiaddr>,
    task: JoinHandle<()>,
}

impl SlowSource {
    /// Serves `store` on 127.0.0.1, waiting `delay` before each chunk and
    /// sending one chunk at a time. Logs as node `name`.
    pub async fn start(h: &Harness, name: &str, store: Arc<Store>, delay: Duration) -> SlowSource {
        let (dir, span) = h.node_span(name);
        let provider = Slow {
            inner: StoreProvider::new(store, Arc::new(AtomicU64::new(0))),
            delay,
            one_at_a_time: Mutex::new(()),
        };
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let (client, mut events, lp) = span
            .in_scope(|| {
                peermirror::net::new(
                    kp,
                    NodeConfig::loopback(dir, vec![], vec![]).net,
                    Arc::new(provider),
                )
            })
            .unwrap();
        let task = tokio::spawn(
            async move {
                // Drain events so the loop never blocks on them.
                let drain = async move { while events.recv().await.is_some() {} };
                tokio::join!(lp.run(std::future::pending()), drain);
            }
            .instrument(span),
        );
        let addrs = client.listen_addrs().await;
        SlowSource { addrs, task }
    }

    /// Where it listens (with `/p2p/<id>`).
    pub fn addrs(&self) -> Vec<Multiaddr> {
        self.addrs.clone()
    }
}

impl Drop for SlowSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node's own provider, with a delay before each chunk and one chunk
/// at a time.
struct Slow {
    inner: StoreProvider,
    delay: Duration,
    one_at_a_time: Mutex<()>,
}

impl ChunkProvider for Slow {
    fn chunk(&self, id: &Hash) -> Option<bytes::Bytes> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        std::thread::sleep(self.delay);
        self.inner.chunk(id)
    }

    fn have(&self, ids: &[Hash]) -> Vec<bool> {
        self.inner.have(ids)
    }

    fn manifest_chunks(&self, id: &Hash) -> Option<Vec<ChunkRef>> {
        self.inner.manifest_chunks(id)
    }

    fn latest_announcement(&self, c: &CollectionId) -> Option<Vec<u8>> {
        self.inner.latest_announcement(c)
    }
}
