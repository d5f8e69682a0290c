//! Append-only segment files holding chunk bodies.
//!
//! Chunk bodies live here rather than in sled values: sled keeps written and
//! scanned values resident and amplifies disk use (see docs/benchmarks.md).
//! Each segment starts with [`SEGMENT_MAGIC`] and holds records of
//! `[RECORD_MAGIC u32 LE][len u32 LE][blake3 id 32 bytes][body]`, so the
//! bytes are self-describing. sled holds the index (id -> segment, offset,
//! length) and each segment's durable length; bytes past that length were
//! never indexed and are cut off when the store opens.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::hash::Hash;
use crate::task::lock;

mod writer;
#[cfg(test)]
use writer::fault;
use writer::Writer;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 16] = b"PEERMIRROR-SEG1\n";
/// First bytes of every record.
pub const RECORD_MAGIC: u32 = 0x3143_4d50; // "PMC1"
/// Bytes before a record's body.
pub const RECORD_HEADER: u64 = 40;
/// A segment is sealed once it grows past this.
pub const SEGMENT_TARGET: u64 = 1 << 30;

/// Where a chunk's body lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Segment number.
    pub segment: u32,
    /// Offset of the body (after the record header).
    pub offset: u64,
    /// Body length.
    pub len: u32,
}

impl Loc {
    /// Fixed 16-byte index encoding.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.segment.to_be_bytes());
        b[4..12].copy_from_slice(&self.offset.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Inverse of [`Loc::encode`].
    pub fn decode(b: &[u8]) -> Option<Loc> {
        if b.len() != 16 {
            return None;
        }
        Some(Loc {
            segment: u32::from_be_bytes(b[..4].try_into().ok()?),
            offset: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..].try_into().ok()?),
        })
    }

    /// The whole record (header and body) as a byte range of its segment.
    pub fn record_range(&self) -> (u64, u64) {
        (self.offset - RECORD_HEADER, self.offset + self.len as u64)
    }
}

/// The directory of segment files.
pub struct Segments {
    dir: PathBuf,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    writer: Mutex<Option<Writer>>,
    /// Segments closed since the last sync, with their final lengths.
    sealed: Mutex<Vec<(u32, u64)>>,
    next_segment: Mutex<u32>,
    /// See [`Segments::epoch`].
    epoch: AtomicU64,
}

/// Name of segment `n`.
pub fn segment_name(n: u32) -> String {
    format!("{n:08}.seg")
}

impl Segments {
    /// Opens the directory; `durable` gives each indexed segment's committed
    /// length. Longer files are truncated to it, unindexed files removed.
    pub fn open(dir: &Path, durable: &HashMap<u32, u64>) -> io::Result<Segments> {
        fs::create_dir_all(dir)?;
        let mut max = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_suffix(".seg"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            max = max.max(n);
            match durable.get(&n) {
                None => fs::remove_file(entry.path())?,
                Some(&len) if entry.metadata()?.len() > len => {
                    let f = OpenOptions::new().write(true).open(entry.path())?;
                    f.set_len(len)?;
                    f.sync_all()?;
                }
                Some(_) => {}
            }
        }
        let max = durable.keys().copied().max().unwrap_or(0).max(max);
        Ok(Segments {
            dir: dir.to_path_buf(),
            readers: Mutex::new(HashMap::new()),
            writer: Mutex::new(None),
            sealed: Mutex::new(Vec::new()),
            next_segment: Mutex::new(max + 1),
            epoch: AtomicU64::new(0),
        })
    }

    /// Path of segment `n`.
    pub fn path(&self, n: u32) -> PathBuf {
        self.dir.join(segment_name(n))
    }

    fn reader(&self, n: u32) -> io::Result<Arc<File>> {
        let mut r = lock(&self.readers);
        if let Some(f) = r.get(&n) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(n))?);
        r.insert(n, f.clone());
        Ok(f)
    }

    /// Reads a chunk body (unverified: the store checks the hash).
    pub fn read(&self, loc: Loc) -> io::Result<Vec<u8>> {
        let f = self.reader(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }

    /// Reads a chunk body into a recycled buffer (see [`super::buffers`]),
    /// after checking that the record header in front of it names `id` and
    /// `loc.len`: that catches an index entry pointing at the wrong place,
    /// a segment cut short or a hole punched in it (zeros), though not a
    /// flipped bit in the body, which only the hash finds.
    pub fn read_checked(&self, id: &Hash, loc: Loc) -> io::Result<Vec<u8>> {
        let f = self.reader(loc.segment)?;
        let mut header = [0u8; RECORD_HEADER as usize];
        let start = loc
            .offset
            .checked_sub(RECORD_HEADER)
            .ok_or_else(|| io::Error::other("record before the segment start"))?;
        f.read_exact_at(&mut header, start)?;
        if header[..4] != RECORD_MAGIC.to_le_bytes()
            || header[4..8] != loc.len.to_le_bytes()
            || header[8..] != *id.as_bytes()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the record header does not name this chunk",
            ));
        }
        let mut buf = super::buffers::take(loc.len as usize);
        if let Err(e) = f.read_exact_at(&mut buf, loc.offset) {
            super::buffers::give(buf);
            return Err(e);
        }
        Ok(buf)
    }

    /// Appends a record; the bytes are durable only after [`Segments::sync`].
    pub fn append(&self, id: &Hash, data: &[u8]) -> io::Result<Loc> {
        let mut w = lock(&self.writer);
        if w.as_ref().is_none_or(|w| w.len >= SEGMENT_TARGET) {
            self.close(&mut w)?;
            *w = Some(self.new_writer()?);
        }
        let Some(w) = w.as_mut() else {
            return Err(io::Error::other("segment writer missing"));
        };
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("chunk too large"))?;
        let mut header = [0u8; RECORD_HEADER as usize];
        header[..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..].copy_from_slice(id.as_bytes());
        let loc = Loc {
            segment: w.segment,
            offset: w.len + RECORD_HEADER,
            len,
        };
        w.append(&[&header, data])?;
        Ok(loc)
    }

    fn new_writer(&self) -> io::Result<Writer> {
        let mut next = lock(&self.next_segment);
        let n = *next;
        *next += 1;
        let path = self.path(n);
        let w = Writer::create(n, &path, SEGMENT_MAGIC)?;
        // The directory entry must be durable before anything indexes into it.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            // Never recorded, so nothing can refer to it: give the space back.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(w)
    }

    /// After a failed flush or sync: the records written since the last
    /// sync are dropped, and every batch that wrote one fails its commit
    /// (see [`Segments::epoch`]).
    fn discard_unsynced(&self, w: &mut Writer) {
        w.discard_unsynced();
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts the failed syncs. A batch notes it when it first appends, and
    /// its commit fails if it changed by then: records it appended may have
    /// been dropped.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Makes the active segment durable and closes it. On failure it stays
    /// active (without the records since its last sync).
    fn close(&self, w: &mut Option<Writer>) -> io::Result<()> {
        if let Some(old) = w.as_mut() {
            if let Err(e) = old.finish().and_then(|()| old.file.sync_data()) {
                self.discard_unsynced(old);
                return Err(e);
            }
            lock(&self.sealed).push((old.segment, old.len));
            *w = None;
        }
        Ok(())
    }

    /// Makes everything appended so far durable; returns the segments
    /// written since the last sync with their durable lengths, to be
    /// recorded in the index together with the chunks they hold.
    pub fn sync(&self) -> io::Result<Vec<(u32, u64)>> {
        let mut w = lock(&self.writer);
        let current = match w.as_mut() {
            Some(w) => {
                if let Err(e) = w.flush().and_then(|()| w.file.sync_data()) {
                    self.discard_unsynced(w);
                    return Err(e);
                }
                w.synced();
                Some((w.segment, w.len))
            }
            None => None,
        };
        // Taken only once nothing can fail: a failed sync keeps them for the next.
        let mut out = std::mem::take(&mut *lock(&self.sealed));
        out.extend(current);
        Ok(out)
    }

    /// Closes the active segment, so later appends start a new one.
    pub fn seal(&self) -> io::Result<()> {
        self.close(&mut lock(&self.writer))
    }

    /// Deletes a segment file.
    pub fn remove(&self, n: u32) -> io::Result<()> {
        lock(&self.readers).remove(&n);
        match fs::remove_file(self.path(n)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Gives the disk blocks of `[start, end)` back to the file system,
    /// keeping the file size (so offsets stay valid). Returns false where the
    /// file system cannot punch holes.
    pub fn punch(&self, n: u32, start: u64, end: u64) -> io::Result<bool> {
        if end <= start {
            return Ok(true);
        }
        let f = OpenOptions::new().write(true).open(self.path(n))?;
        // SAFETY: fallocate on a valid open descriptor with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(err),
        }
    }

    /// The segment files present: number and allocated bytes on disk.
    pub fn list(&self) -> io::Result<Vec<(u32, u64)>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.strip_suffix(".seg"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                out.push((n, entry.metadata()?.blocks() * 512));
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_sync_read_and_truncate_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), &HashMap::new()).unwrap();
        let a = s.append(&Hash::of(b"a"), b"a").unwrap();
        let (seg, len) = s.sync().unwrap()[0];
        let b = s.append(&Hash::of(b"bb"), b"bb").unwrap();
        s.sync().unwrap();
        assert_eq!(s.read(a).unwrap(), b"a");
        assert_eq!(s.read(b).unwrap(), b"bb");
        assert_eq!(Loc::decode(&b.encode()), Some(b));
        drop(s);
        // Only the first record was "indexed": reopening cuts the second off.
        let durable = HashMap::from([(seg, len)]);
        let s = Segments::open(dir.path(), &durable).unwrap();
        assert_eq!(fs::metadata(s.path(seg)).unwrap().len(), len);
        assert_eq!(s.read(a).unwrap(), b"a");
        assert!(s.read(b).is_err());
        // New appends go to a fresh segment.
        let c = s.append(&Hash::of(b"c"), b"c").unwrap();
        assert_eq!(c.segment, seg + 1);
    }

    #[test]
    fn a_failed_append_leaves_the_writer_at_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), &HashMap::new()).unwrap();
        let small = vec![1u8; 1000];
        // Larger than the stage: written while it is appended, and the
        // write fails half-way.
        let big = vec![2u8; writer::STAGE + (600 << 10)];
        let a = s.append(&Hash::of(&small), &small).unwrap();
        fault::arm(writer::STAGE, 300 << 10);
        assert!(s.append(&Hash::of(&big), &big).is_err());
        let c = s.append(&Hash::of(b"c"), b"c").unwrap();
        let big2 = vec![3u8; writer::STAGE + (700 << 10)];
        let d = s.append(&Hash::of(&big2), &big2).unwrap();
        let (seg, len) = s.sync().unwrap()[0];
        assert_eq!(len, d.offset + d.len as u64);
        // The last block is written whole (padded) until the segment is sealed.
        assert_eq!(
            fs::metadata(s.path(seg)).unwrap().len(),
            writer::round_up(len)
        );
        for (loc, want) in [(a, &small[..]), (c, b"c"), (d, &big2[..])] {
            assert_eq!(s.read(loc).unwrap(), want);
        }
        drop(s);
        let s = Segments::open(dir.path(), &HashMap::from([(seg, len)])).unwrap();
        assert_eq!(s.read(c).unwrap(), b"c");
        assert_eq!(s.read(d).unwrap(), big2);
    }

    #[test]
    fn a_failed_sync_drops_the_records_since_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), &HashMap::new()).unwrap();
        let a = s.append(&Hash::of(b"a"), b"a").unwrap();
        let (seg, synced) = s.sync().unwrap()[0];
        let epoch = s.epoch();
        // Larger than the stage: part of it is written before the sync.
        let big = vec![7u8; writer::STAGE + 5000];
        let b = s.append(&Hash::of(&big), &big).unwrap();
        s.append(&Hash::of(b"cc"), b"cc").unwrap();
        fault::arm(1, 10);
        assert!(s.sync().is_err());
        assert_eq!(s.epoch(), epoch + 1, "batches that wrote since must fail");
        let file_len = fs::metadata(s.path(seg)).unwrap().len();
        assert!(file_len <= writer::round_up(synced), "space given back");
        // The next record goes where the dropped ones started.
        let d = s.append(&Hash::of(b"d"), b"d").unwrap();
        assert_eq!(d.offset, b.offset);
        let (_, len) = s.sync().unwrap()[0];
        assert_eq!(len, d.offset + 1);
        assert_eq!(s.read(a).unwrap(), b"a");
        assert_eq!(s.read(d).unwrap(), b"d");
        s.seal().unwrap();
        assert_eq!(fs::metadata(s.path(seg)).unwrap().len(), len, "sealed");
    }

    #[test]
    fn a_store_batch_whose_sync_fails_indexes_none_of_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let chunk = |n: u8| {
            let d = vec![n; (300 << 10) + n as usize];
            (Hash::of(&d), d)
        };
        let (a, b, c) = (chunk(1), chunk(2), chunk(3));
        {
            let mut batch = store.batch();
            batch.add(&a.0, &a.1).unwrap();
            batch.add(&b.0, &b.1).unwrap();
            fault::arm(1, 1000);
            assert!(batch.commit().is_err());
            // Dropped: the commit on drop fails too, indexing nothing.
        }
        store.put_chunks(std::slice::from_ref(&c)).unwrap();
        assert!(!store.has_chunk(&a.0).unwrap());
        assert!(!store.has_chunk(&b.0).unwrap());
        assert_eq!(store.read_chunk(&c.0).unwrap(), c.1);
        assert!(store.verify(false).unwrap().problems.is_empty());
    }

    #[test]
    fn a_failed_batch_keeps_the_length_of_a_segment_another_batch_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = |n: u8| {
            let d = vec![n; (300 << 10) + n as usize];
            (Hash::of(&d), d)
        };
        let (a, x, f) = (chunk(1), chunk(2), chunk(3));
        {
            let store = crate::store::Store::open(dir.path()).unwrap();
            let mut stale = store.batch();
            stale.add(&a.0, &a.1).unwrap();
            {
                // A failed sync drops what `stale` wrote.
                let mut failing = store.batch();
                failing.add(&x.0, &x.1).unwrap();
                fault::arm(1, 1000);
                assert!(failing.commit().is_err());
            }
            let mut later = store.batch();
            later.add(&f.0, &f.1).unwrap();
            // The segment `later` wrote to is closed; its length is handed
            // out by the next sync, which is the stale batch's.
            store.segs.seal().unwrap();
            assert!(stale.commit().is_err());
            later.commit().unwrap();
        }
        let store = crate::store::Store::open(dir.path()).unwrap();
        assert_eq!(store.read_chunk(&f.0).unwrap(), f.1);
        assert!(!store.has_chunk(&a.0).unwrap());
        assert!(store.verify(false).unwrap().problems.is_empty());
    }

    #[test]
    fn a_store_batch_that_fails_mid_chunk_indexes_nothing_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        // Chunks larger than the stage: each is written as it is added.
        let chunk = |n: u8| {
            let d = vec![n; writer::STAGE + (300 << 10) + n as usize];
            (Hash::of(&d), d)
        };
        let (a, b, c) = (chunk(1), chunk(2), chunk(3));
        {
            let mut batch = store.batch();
            batch.add(&a.0, &a.1).unwrap();
            fault::arm(writer::STAGE, 1000);
            assert!(batch.add(&b.0, &b.1).is_err());
            // Dropped: what was written before the failure is committed.
        }
        store.put_chunks(std::slice::from_ref(&c)).unwrap();
        assert!(!store.has_chunk(&b.0).unwrap());
        assert_eq!(store.read_chunk(&a.0).unwrap(), a.1);
        assert_eq!(store.read_chunk(&c.0).unwrap(), c.1);
        assert!(store.verify(false).unwrap().problems.is_empty());
    }

    #[test]
    fn peers_get_header_checked_bytes_and_a_rotten_chunk_is_found_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let body = |n: u8| {
            let d: Vec<u8> = (0..(300 << 10) + n as usize)
                .map(|i| (i % 251) as u8 ^ n)
                .collect();
            (Hash::of(&d), d)
        };
        let (a, b) = (body(1), body(2));
        store.put_chunks(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(&store.read_chunk_for_peer(&a.0).unwrap()[..], &a.1[..]);
        let path = |id: &Hash| {
            let loc = store.chunk_loc(id).unwrap().unwrap();
            (
                dir.path().join("segments").join(segment_name(loc.segment)),
                loc,
            )
        };
        let flip = |at: u64| {
            let (p, _) = path(&a.0);
            let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, at).unwrap();
            f.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
        };
        // A bit of b's header goes bad: every read of b is refused.
        let (_, lb) = path(&b.0);
        let (pb, _) = path(&b.0);
        let f = OpenOptions::new().read(true).write(true).open(pb).unwrap();
        f.write_all_at(&[0xee], lb.offset - 1).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                store.read_chunk_for_peer(&b.0),
                Err(crate::store::StoreError::CorruptChunk { .. })
            ));
        }
        // A bit of a's body goes bad: most reads pass it on (the peer's
        // hash catches it), but a sampled re-hash finds it soon.
        let (_, la) = path(&a.0);
        flip(la.offset + 1000);
        let (mut passed, mut refused) = (0, 0);
        for _ in 0..(crate::store::PEER_REHASH_EVERY * 40) {
            match store.read_chunk_for_peer(&a.0) {
                Ok(got) => {
                    assert_ne!(&got[..], &a.1[..]);
                    passed += 1;
                }
                Err(crate::store::StoreError::CorruptChunk { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            passed > refused && refused > 0,
            "{passed} passed, {refused} refused"
        );
        // The full check still refuses it every time.
        assert!(store.read_chunk(&a.0).is_err());
    }

    #[test]
    fn unindexed_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), &HashMap::new()).unwrap();
        s.append(&Hash::of(b"x"), b"x").unwrap();
        s.sync().unwrap();
        drop(s);
        let s = Segments::open(dir.path(), &HashMap::new()).unwrap();
        assert!(s.list().unwrap().is_empty());
    }
}
