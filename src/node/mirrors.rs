//! The node's part in the HTTP mirror network (see [`crate::mirrors`]):
//! it signs and gossips a record for each collection it holds current when
//! it has a public URL, again as soon as the version it holds changes and
//! every [`REPUBLISH`] before the record expires; it asks each peer that
//! connects for the records it holds; and it probes the mirrors it knows
//! every [`REFRESH`], with libp2p ping times as their distance when
//! connected.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::watch;

use super::admission::{self, Admission, RecordSource};
use super::{blocking, lock, Inner};
use crate::gossip::GossipMessage;
use crate::keys::CollectionId;
use crate::mirrors::{MirrorRecord, Prefix, RECORD_LIFETIME, REFRESH, REPUBLISH};

/// How often the node looks for a change in what it holds current.
const CHECK: Duration = Duration::from_secs(1);

/// Signs and publishes this node's records and keeps the health cache
/// warm, until `stop`.
pub(super) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    // Per collection: the version last advertised and when.
    let mut advertised: HashMap<CollectionId, (u64, Instant)> = HashMap::new();
    let mut seq = 0u64;
    let mut refreshed: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if inner.mirrors.settings.public_url.is_some() {
            advertise(&inner, &mut advertised, &mut seq).await;
        }
        if refreshed.is_none_or(|t| t.elapsed() >= REFRESH) {
            refreshed = Some(Instant::now());
            let pings = inner
                .client
                .peers()
                .await
                .into_iter()
                .filter_map(|p| Some((p.peer_id, p.rtt?)))
                .collect();
            inner.mirrors.health.set_pings(pings);
            let cols: Vec<CollectionId> = lock(&inner.followers).keys().copied().collect();
            inner.mirrors.refresh(&cols).await;
        }
    }
}

/// Signs and gossips a record for each collection whose current version
/// changed since it was last advertised, or whose record is due.
async fn advertise(
    inner: &Arc<Inner>,
    advertised: &mut HashMap<CollectionId, (u64, Instant)>,
    seq: &mut u64,
) {
    let cols: Vec<CollectionId> = lock(&inner.followers).keys().copied().collect();
    let s = inner.store.clone();
    let current = blocking("reading current versions", move || {
        let mut out = Vec::new();
        for c in cols {
            if let Some(a) = s.current(&c)? {
                out.push((c, a.body.version));
            }
        }
        Ok::<_, crate::store::StoreError>(out)
    })
    .await;
    let current = match current {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read what to advertise as a mirror");
            return;
        }
    };
    let settings = &inner.mirrors.settings;
    let Some(url) = settings.public_url.clone() else {
        return;
    };
    for (c, version) in current {
        if advertised
            .get(&c)
            .is_some_and(|(v, at)| *v == version && at.elapsed() < REPUBLISH)
        {
            continue;
        }
        let now = crate::announce::now();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Time-based, so a restarted node continues above what it signed.
        *seq = (*seq + 1).max(now_ms);
        let record = MirrorRecord {
            peer: inner.client.local_peer_id().to_bytes(),
            url: url.clone(),
            region: settings.region.clone(),
            prefer: settings.prefer.iter().map(Prefix::from_net).collect(),
            capacity_mbps: settings.capacity_mbps,
            collection: c,
            version,
            seq: *seq,
            issued_at: now,
            expires_at: now + RECORD_LIFETIME.as_secs(),
        };
        let Some(signed) = record.sign(&inner.keypair) else {
            tracing::warn!("the node key cannot sign mirror records (not ed25519)");
            return;
        };
        let bytes = signed.encode();
        if let Err(e) = inner.mirrors.table.insert(signed, now) {
            tracing::warn!(error = %e, "could not record this node's own mirror record");
        }
        match inner
            .client
            .publish(c, GossipMessage::Mirror(bytes).encode())
            .await
        {
            Ok(()) => {
                tracing::info!(collection = %c, version, %url, "advertised as an HTTP mirror");
                advertised.insert(c, (version, Instant::now()));
            }
            Err(e) => tracing::warn!(collection = %c, error = %e, "advertising as a mirror failed"),
        }
    }
}

/// Asks `peer` for its mirror records of every followed collection and
/// admits them.
pub(super) async fn ask(inner: Arc<Inner>, peer: PeerId) {
    let cols: Vec<CollectionId> = lock(&inner.followers).keys().copied().collect();
    for c in cols {
        let records = match inner.client.request_mirrors(peer, c).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "mirror-records request failed");
                continue;
            }
        };
        for bytes in records {
            let a = admit(&inner, c, RecordSource::Answer, bytes).await;
            super::latest::log(&a, &peer);
        }
    }
}

/// Admits an encoded mirror record of `c`.
pub(super) async fn admit(
    inner: &Arc<Inner>,
    c: CollectionId,
    source: RecordSource,
    bytes: Vec<u8>,
) -> Admission {
    let mirrors = inner.mirrors.clone();
    inner
        .admit("admitting a mirror record", move |_, followed, now| {
            admission::mirror_record(&mirrors.table, followed, c, source, &bytes, now)
        })
        .await
}
