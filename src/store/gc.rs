//! Garbage collection: drop versions beyond the retention count, then every
//! manifest and chunk no retained version (and no read lease, see
//! [`super::ReadLease`]) references, and give the disk space back (whole
//! segment files deleted, holes punched in the rest).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::segments::SEGMENT_MAGIC;
use super::{io_ctx, version_key, InterestState, Result, Store};
use crate::filter::PathFilter;
use crate::hash::{Hash, IdPrefixSet};
use crate::keys::CollectionId;

/// What a gc run did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Versions whose records were dropped.
    pub versions_dropped: usize,
    /// Manifests dropped.
    pub manifests_dropped: usize,
    /// Chunks dropped from the index.
    pub chunks_dropped: u64,
    /// Segment files deleted outright.
    pub segments_removed: usize,
    /// Disk bytes given back (allocated size before minus after).
    pub bytes_freed: u64,
}

impl Store {
    /// Keeps the current version of each collection and the `keep - 1`
    /// before it (plus any newer version still being fetched), and frees
    /// everything else. `keep` is at least 1. An unfollowed collection is
    /// dropped whole; of a partial one only the paths mirrored are kept.
    pub fn gc(&self, keep: usize) -> Result<GcReport> {
        let _exclusive = crate::task::write(&self.gate);
        let keep = keep.max(1);
        let mut report = GcReport::default();
        let disk_before = self.disk_usage()?;

        // 1. Versions. An unfollowed collection keeps none; a partial one
        //    keeps only the chunks of the paths it mirrors (step 2).
        let mut live_manifests: HashSet<Hash> = HashSet::new();
        let mut filters: HashMap<Hash, PathFilter> = HashMap::new();
        for info in self.collections()? {
            let interest = self.interest(&info.id)?;
            if interest.as_ref().map(|i| i.state) == Some(InterestState::Unfollowed) {
                report.versions_dropped += self.forget_collection(&info.id)?;
                continue;
            }
            let filter = interest.map(|i| i.filter()).unwrap_or_default();
            let current = info.current.as_ref().map(|a| a.body.version);
            let mut older_kept = 0;
            for &v in info.versions.iter().rev() {
                let keep_it = match current {
                    None => true,
                    Some(c) if v > c => true,
                    Some(_) => {
                        older_kept += 1;
                        older_kept <= keep
                    }
                };
                if keep_it {
                    if let Some(a) = self.version(&info.id, v)? {
                        live_manifests.insert(a.body.manifest);
                        let f = filters.entry(a.body.manifest).or_insert(filter.clone());
                        *f = f.union(&filter);
                    }
                } else {
                    self.drop_version(&info.id, v)?;
                    report.versions_dropped += 1;
                }
            }
        }

        // 2. Manifests, and the chunks the live ones reference. A manifest
        //    that a reader holds a lease on stays live, with its chunks, for
        //    this run; leases on the dropped ones are refused from here on.
        let mut stored = Vec::new();
        for kv in self.manifests.iter() {
            let (k, _) = kv?;
            stored.push((Hash(k.as_ref().try_into().unwrap_or([0; 32])), k));
        }
        let candidates = stored.iter().map(|(id, _)| *id).collect();
        let (doomed, _doomed_until_done) = self.leases.doom(&mut live_manifests, candidates);
        let doomed: HashSet<Hash> = doomed.into_iter().collect();
        // By 16-byte prefixes: a dead chunk sharing its first 128 bits with a
        // live one is kept, the safe way to be wrong.
        let mut live_chunks = IdPrefixSet::default();
        for (id, k) in stored {
            if doomed.contains(&id) {
                self.manifests.remove(k)?;
                report.manifests_dropped += 1;
                continue;
            }
            for c in self.manifest_record(&id)?.chunks {
                live_chunks.insert(&c.id);
            }
            // Leased manifests of dropped versions keep everything.
            let all = PathFilter::all();
            let filter = filters.get(&id).unwrap_or(&all);
            // Read an entry at a time; an unreadable manifest stops the run
            // (it keeps what it may reference; verify reports it).
            let entries = self.manifest_entries(&id).inspect_err(|e| {
                tracing::warn!(manifest = %id, error = %e, "manifest unreadable during gc; keeping all chunks");
            })?;
            for e in entries {
                let e = e.inspect_err(|e| {
                    tracing::warn!(manifest = %id, error = %e, "manifest unreadable during gc; keeping all chunks");
                })?;
                if let crate::manifest::EntryKind::File { chunks, .. } = &e.kind {
                    if filter.wants(&e.path) {
                        for c in chunks {
                            live_chunks.insert(&c.id);
                        }
                    }
                }
            }
        }

        // 3. Chunks, and the byte ranges still live in each segment.
        let mut live_ranges: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut drop = Vec::new();
        for kv in self.chunks.iter() {
            let (id, loc) = kv?;
            if live_chunks.contains(&id) {
                live_ranges
                    .entry(loc.segment)
                    .or_default()
                    .push(loc.record_range());
            } else {
                drop.push(id);
                report.chunks_dropped += 1;
            }
        }
        self.chunks.remove(drop)?;
        self.db.flush()?;

        // 4. Disk space. Later writes go to a fresh segment.
        self.segs
            .seal()
            .map_err(io_ctx("closing the active segment"))?;
        for kv in self.segment_lens.iter() {
            let (k, v) = kv?;
            let seg = super::be_u32(&k)?;
            let len = super::be_u64(&v)?;
            match live_ranges.get_mut(&seg) {
                None => {
                    self.segment_lens.remove(k)?;
                    self.db.flush()?;
                    self.segs
                        .remove(seg)
                        .map_err(io_ctx("removing a segment"))?;
                    report.segments_removed += 1;
                }
                Some(ranges) => {
                    ranges.sort_unstable();
                    let mut at = SEGMENT_MAGIC.len() as u64;
                    let mut punched = true;
                    for &(start, end) in ranges.iter() {
                        punched &= self.punch(seg, at, start)?;
                        at = at.max(end);
                    }
                    punched &= self.punch(seg, at, len)?;
                    if !punched {
                        tracing::warn!(
                            segment = seg,
                            "file system cannot punch holes; space stays allocated"
                        );
                    }
                }
            }
        }
        let disk_after = self.disk_usage()?;
        report.bytes_freed = disk_before.saturating_sub(disk_after);
        Ok(report)
    }

    fn punch(&self, seg: u32, start: u64, end: u64) -> Result<bool> {
        self.segs
            .punch(seg, start, end)
            .map_err(io_ctx(format!("freeing space in segment {seg}")))
    }

    fn drop_version(&self, id: &CollectionId, version: u64) -> Result<()> {
        self.versions.remove(version_key(id, version))?;
        Ok(())
    }

    /// Bytes the segment files occupy on disk.
    pub fn disk_usage(&self) -> Result<u64> {
        Ok(self
            .segs
            .list()
            .map_err(io_ctx("listing segments"))?
            .iter()
            .map(|(_, b)| b)
            .sum())
    }
}
