//! Fetching a version's manifest: its chunk list asked of several peers at
//! once, its chunks from every peer that holds them, then the checks, read
//! back from the store a chunk and an entry at a time (a manifest of a
//! million files is some 100 MB: it is never held whole, encoded or
//! decoded).
//!
//! A chunk list comes from one peer and is not signed, so it is checked
//! before anything is fetched or read ([`check_list`]): lengths within the
//! chunk bounds and adding up to the announced size, the lengths of chunks
//! already held equal to what is listed, one length per id, and each
//! missing chunk fetched once however often it is listed. A list whose
//! chunks stop arriving is given up after [`LIST_STALL`], and the checks
//! never read more than the announced size. A list found false is
//! reported against the peer that sent it, and another peer's list is
//! tried.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;

use super::scheduler::REFRESH;
use super::{fetch_chunks, Offence, PeerAccounting, Progress, SyncError};
use crate::announce::Announcement;
use crate::hash::Hash;
use crate::manifest::ChunkRef;
use crate::net::{self, NetError};
use crate::store::{Store, StoreError};
use crate::task::{blocking, lock};

/// How long a peer may take to send a manifest chunk list: a list is small,
/// so a peer slower than this is asked no more and the others' answers used.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Peers asked for the chunk list at once, so one that stalls delays
/// nothing while another answers.
const LIST_FANOUT: usize = 4;
/// A list whose chunks make no progress for this long is given up (its ids
/// may name chunks no one holds) and another peer's list is tried.
pub(crate) const LIST_STALL: Duration = Duration::from_secs(15);

/// Fetches the manifest of `a` from peers (unless stored) and records it
/// in the store once checked; read it from there entry by entry
/// ([`Store::manifest_entries`], [`super::Wanted::of_stored`]). False chunk
/// lists are reported to `accounting`.
pub async fn fetch_manifest(
    client: &net::Client,
    store: &Arc<Store>,
    a: &Announcement,
    progress: &Progress,
    cancelled: &(dyn Fn() -> bool + Sync),
    accounting: &dyn PeerAccounting,
) -> Result<(), SyncError> {
    let id = a.manifest;
    let s = store.clone();
    if blocking("checking for the manifest", move || s.has_manifest(&id)).await? {
        return Ok(());
    }
    let mut tried = HashSet::new();
    loop {
        if cancelled() {
            return Err(SyncError::Cancelled);
        }
        let peers: Vec<PeerId> = client
            .peers()
            .await
            .into_iter()
            .map(|p| p.peer_id)
            .filter(|p| !tried.contains(p) && !accounting.is_banned(p))
            .take(LIST_FANOUT)
            .collect();
        if peers.is_empty() {
            // Everyone was asked once (or no one is there): start over after a pause.
            tried.clear();
            tokio::time::sleep(REFRESH).await;
            continue;
        }
        tried.extend(peers.iter().copied());
        let mut asks: FuturesUnordered<_> = peers
            .into_iter()
            .map(|peer| {
                let c = client.clone();
                async move {
                    let r = tokio::time::timeout(LIST_TIMEOUT, c.fetch_manifest_chunks(peer, id));
                    (peer, r.await.unwrap_or(Err(NetError::Timeout)))
                }
            })
            .collect();
        while let Some((peer, answer)) = asks.next().await {
            if cancelled() {
                return Err(SyncError::Cancelled);
            }
            let refs = match answer {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "manifest chunk list not available");
                    match e {
                        NetError::Timeout => accounting.offence(peer, Offence::Stall),
                        NetError::Protocol(_) => accounting.offence(peer, Offence::Malformed),
                        _ => {}
                    }
                    continue;
                }
            };
            match try_list(client, store, a, refs, progress, cancelled, accounting).await {
                Ok(()) => return Ok(()),
                Err(ListError::False(why)) => {
                    tracing::warn!(%peer, %why, "peer sent a false manifest chunk list");
                    accounting.offence(peer, Offence::FalseList);
                }
                Err(ListError::Retry(why)) => {
                    tracing::info!(%peer, %why, "manifest chunk list given up for now");
                }
                Err(ListError::Stop(e)) => return Err(e),
            }
        }
    }
}

/// Why a chunk list was not used.
#[derive(Debug)]
enum ListError {
    /// The list is false: blame the peer, try another.
    False(String),
    /// The list could not be completed for now: try another, blame no one.
    Retry(String),
    /// Something no other list can fix (cancelled, local store, a signed
    /// manifest that is invalid).
    Stop(SyncError),
}

/// Fetches the chunks of one peer's list, then checks and records the
/// manifest.
async fn try_list(
    client: &net::Client,
    store: &Arc<Store>,
    a: &Announcement,
    refs: Vec<ChunkRef>,
    progress: &Progress,
    cancelled: &(dyn Fn() -> bool + Sync),
    accounting: &dyn PeerAccounting,
) -> Result<(), ListError> {
    let size = a.manifest_size;
    let id = a.manifest;
    let s = store.clone();
    let list = refs.clone();
    let missing = blocking("checking a manifest chunk list", move || {
        Ok::<_, StoreError>(check_list(&list, size, |id| {
            Ok(s.chunk_loc(id)?.map(|l| l.len))
        }))
    })
    .await
    .map_err(|e| ListError::Stop(e.into()))?
    .map_err(|e| match e {
        ListFault::False(why) => ListError::False(why),
        ListFault::Store(e) => ListError::Stop(e.into()),
    })?;
    // Give the list up when no chunk has arrived for LIST_STALL.
    let start = progress.bytes_down.load(Ordering::Relaxed);
    let last = Mutex::new((start, Instant::now()));
    let give_up = || {
        if cancelled() {
            return true;
        }
        let seen = progress.bytes_down.load(Ordering::Relaxed);
        let mut last = lock(&last);
        if seen != last.0 {
            *last = (seen, Instant::now());
            return false;
        }
        last.1.elapsed() >= LIST_STALL
    };
    match fetch_chunks(client, store, missing, progress, &give_up, accounting).await {
        Ok(()) => {}
        Err(SyncError::Cancelled) if !cancelled() => {
            let why = format!("no chunk of the list arrived for {LIST_STALL:?}");
            // Not one chunk: the list names what no one holds, not even
            // its sender. Some, then none: the peers serving it stalled,
            // which is no proof the list is false.
            if progress.bytes_down.load(Ordering::Relaxed) == start {
                return Err(ListError::False(why));
            }
            return Err(ListError::Retry(why));
        }
        Err(e @ SyncError::WrongLength { .. }) => return Err(ListError::False(e.to_string())),
        Err(e) => return Err(ListError::Stop(e)),
    }
    let s = store.clone();
    match blocking("checking the manifest", move || {
        s.assemble_manifest(&id, size, &refs)
    })
    .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::Manifest(e)) => {
            // Signed by the master yet invalid: no peer can fix that.
            tracing::warn!(error = %e, "announced manifest is invalid");
            Err(ListError::Stop(StoreError::Manifest(e).into()))
        }
        Err(e @ StoreError::CorruptChunk { .. }) => Err(ListError::False(e.to_string())),
        Err(e) => Err(ListError::Stop(e.into())),
    }
}

/// Why [`check_list`] refused a list.
#[derive(Debug)]
pub(crate) enum ListFault {
    /// The list cannot be the announced manifest's.
    False(String),
    /// The store could not say which chunks it holds.
    Store(StoreError),
}

/// Checks a peer's chunk list for a manifest of `size` bytes against the
/// chunks held (`held_len` gives a held chunk's length, `None` if not
/// held) and returns the chunks to fetch, each once.
pub(crate) fn check_list(
    refs: &[ChunkRef],
    size: u64,
    mut held_len: impl FnMut(&Hash) -> Result<Option<u32>, StoreError>,
) -> Result<Vec<ChunkRef>, ListFault> {
    let fault = |why: String| Err(ListFault::False(why));
    if refs.is_empty() {
        return fault("empty list".into());
    }
    let mut sum = 0u64;
    for c in refs {
        if c.len == 0 || c.len > crate::chunk::MAX_CHUNK_LEN {
            return fault(format!("chunk {} listed with length {}", c.id, c.len));
        }
        sum += u64::from(c.len);
    }
    if sum != size {
        return fault(format!("lengths add up to {sum}, not the announced {size}"));
    }
    // One length per id; each id looked up and fetched once.
    let mut lens: HashMap<Hash, u32> = HashMap::new();
    let mut missing = Vec::new();
    for c in refs {
        match lens.insert(c.id, c.len) {
            Some(l) if l != c.len => {
                return fault(format!(
                    "chunk {} listed with lengths {l} and {}",
                    c.id, c.len
                ))
            }
            Some(_) => continue,
            None => {}
        }
        match held_len(&c.id).map_err(ListFault::Store)? {
            Some(l) if l != c.len => {
                return fault(format!(
                    "chunk {} listed with length {}, but it is {l} bytes",
                    c.id, c.len
                ))
            }
            Some(_) => {}
            None => missing.push(*c),
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: Hash::of(&[n]),
            len,
        }
    }

    /// Chunk 1 is held, 4 MiB long; nothing else is.
    fn held(id: &Hash) -> Result<Option<u32>, StoreError> {
        Ok((*id == Hash::of(&[1])).then_some(4 << 20))
    }

    fn is_false(r: Result<Vec<ChunkRef>, ListFault>) -> String {
        match r {
            Err(ListFault::False(why)) => why,
            other => panic!("expected a false list, got {other:?}"),
        }
    }

    #[test]
    fn a_held_chunk_listed_short_is_refused_before_any_read() {
        // 1000 x "chunk 1, 1 byte" with one length adjusted: the sum is
        // right, but reassembly would concatenate 4 GiB.
        let mut list = vec![r(1, 1); 999];
        list.push(r(1, 1001));
        let why = is_false(check_list(&list, 2000, held));
        assert!(why.contains("but it is 4194304 bytes"), "{why}");
        // A chunk not held has one length too.
        let why = is_false(check_list(&[r(2, 1), r(2, 5)], 6, held));
        assert!(why.contains("lengths 1 and 5"), "{why}");
    }

    #[test]
    fn lengths_must_fit_the_chunk_bounds_and_the_announced_size() {
        assert!(is_false(check_list(&[], 0, held)).contains("empty"));
        assert!(is_false(check_list(&[r(2, 0), r(3, 5)], 5, held)).contains("length 0"));
        let big = crate::chunk::MAX_CHUNK_LEN + 1;
        assert!(is_false(check_list(&[r(2, big)], u64::from(big), held)).contains("length"));
        assert!(is_false(check_list(&[r(2, 3), r(3, 5)], 9, held)).contains("add up to 8"));
    }

    #[test]
    fn repeated_chunks_are_fetched_once() {
        let list = [r(2, 10), r(3, 20), r(2, 10), r(1, 4 << 20), r(2, 10)];
        let size = 50 + (4 << 20);
        let missing = check_list(&list, size, held).unwrap();
        assert_eq!(missing, vec![r(2, 10), r(3, 20)]);
    }
}
