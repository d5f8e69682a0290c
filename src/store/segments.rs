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
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::hash::Hash;
use crate::task::lock;

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

struct Writer {
    segment: u32,
    out: BufWriter<File>,
    len: u64,
}

/// The directory of segment files.
pub struct Segments {
    dir: PathBuf,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    writer: Mutex<Option<Writer>>,
    /// Segments closed since the last sync, with their final lengths.
    sealed: Mutex<Vec<(u32, u64)>>,
    next_segment: Mutex<u32>,
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
        w.out.write_all(&header)?;
        w.out.write_all(data)?;
        let loc = Loc {
            segment: w.segment,
            offset: w.len + RECORD_HEADER,
            len,
        };
        w.len += RECORD_HEADER + len as u64;
        Ok(loc)
    }

    fn new_writer(&self) -> io::Result<Writer> {
        let mut next = lock(&self.next_segment);
        let n = *next;
        *next += 1;
        let path = self.path(n);
        let mut f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        f.write_all(SEGMENT_MAGIC)?;
        // The directory entry must be durable before anything indexes into it.
        File::open(&self.dir)?.sync_all()?;
        Ok(Writer {
            segment: n,
            out: BufWriter::with_capacity(1 << 20, f),
            len: SEGMENT_MAGIC.len() as u64,
        })
    }

    fn close(&self, w: &mut Option<Writer>) -> io::Result<()> {
        if let Some(mut old) = w.take() {
            old.out.flush()?;
            old.out.get_ref().sync_data()?;
            lock(&self.sealed).push((old.segment, old.len));
        }
        Ok(())
    }

    /// Makes everything appended so far durable; returns the segments
    /// written since the last sync with their durable lengths, to be
    /// recorded in the index together with the chunks they hold.
    pub fn sync(&self) -> io::Result<Vec<(u32, u64)>> {
        let mut w = lock(&self.writer);
        let mut out = std::mem::take(&mut *lock(&self.sealed));
        if let Some(w) = w.as_mut() {
            w.out.flush()?;
            w.out.get_ref().sync_data()?;
            out.push((w.segment, w.len));
        }
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
