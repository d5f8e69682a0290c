//! A manifest one entry at a time: for versions of millions of files, whose
//! decoded form would take several times the memory of its encoding.
//!
//! [`Validator`] checks every rule of [`Manifest::validate`] keeping only
//! the chain of paths that can still be a parent of a later one (entries are
//! sorted, so a parent's descendants follow it with nothing in between that
//! does not share its prefix). [`EntryWriter`] validates and encodes entries
//! as they come, spilling to a file, and [`EntryReader`] decodes, checks
//! canonical form and validates them from any reader. Both produce and
//! accept exactly the bytes of [`Manifest::encode`].

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use super::{
    check_file, check_meta, check_path, check_symlink, wire, Entry, EntryKind, Manifest,
    ManifestError, FORMAT, FORMAT_V1, MAX_ENTRIES, MAX_TOTAL_SIZE,
};
use crate::chunk::ChunkerParams;

/// Checks manifest rules entry by entry, in memory proportional to the
/// depth of the tree, not its size.
pub struct Validator {
    format: u32,
    chunker: ChunkerParams,
    count: usize,
    total: u64,
    /// Earlier paths, each a string prefix of the next (the last is the
    /// previous entry), and whether each is a directory.
    chain: Vec<(String, bool)>,
}

impl Validator {
    /// A validator for a manifest of `format` cut with `chunker`; refuses
    /// a format or chunker this node does not know.
    pub fn new(format: u32, chunker: &ChunkerParams) -> Result<Self, ManifestError> {
        if format != FORMAT && format != FORMAT_V1 {
            return Err(ManifestError::UnsupportedFormat(format));
        }
        if !chunker.is_supported() {
            return Err(ManifestError::UnsupportedChunker(chunker.clone()));
        }
        Ok(Validator {
            format,
            chunker: chunker.clone(),
            count: 0,
            total: 0,
            chain: Vec::new(),
        })
    }

    /// Checks the next entry (entries must come in manifest order).
    pub fn push(&mut self, e: &Entry) -> Result<(), ManifestError> {
        self.count += 1;
        if self.count > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(self.count));
        }
        check_path(&e.path)?;
        if let Some((prev, _)) = self.chain.last() {
            if prev.as_bytes() >= e.path.as_bytes() {
                return Err(ManifestError::DuplicatePath(e.path.clone()));
            }
        }
        // Anything between a path and its descendants starts with that path,
        // so what is not a prefix of this entry is no parent of any later one.
        while self
            .chain
            .last()
            .is_some_and(|(p, _)| !e.path.starts_with(p.as_str()))
        {
            self.chain.pop();
        }
        for (p, is_dir) in &self.chain {
            if !is_dir && e.path.as_bytes().get(p.len()) == Some(&b'/') {
                return Err(ManifestError::ParentNotDir(e.path.clone()));
            }
        }
        match &e.kind {
            EntryKind::File {
                size, chunks, meta, ..
            } => {
                check_meta(&e.path, self.format, meta.as_ref())?;
                let size = check_file(&e.path, *size, chunks, &self.chunker)?;
                self.total = self.total.saturating_add(size);
                if self.total > MAX_TOTAL_SIZE {
                    return Err(ManifestError::BadSize {
                        path: e.path.clone(),
                        why: "version exceeds the total size limit",
                    });
                }
            }
            EntryKind::Symlink { target } => check_symlink(&e.path, target)?,
            EntryKind::Dir => {}
        }
        self.chain
            .push((e.path.clone(), matches!(e.kind, EntryKind::Dir)));
        Ok(())
    }
}

/// Why an entry could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The entries break a manifest rule (or the bytes are not a manifest).
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    /// Reading the bytes, or writing the spill file, failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Bytes of encoded entries kept in memory before they go to the spill file.
const SPILL_AT: usize = 4 << 20;

/// Encodes a manifest in the current [`FORMAT`] from entries pushed in
/// order, validating each, with at most a few MiB in memory.
pub struct EntryWriter {
    validator: Validator,
    chunker: ChunkerParams,
    buf: Vec<u8>,
    spill: Option<File>,
    spill_dir: std::path::PathBuf,
    body_len: u64,
    count: usize,
}

impl EntryWriter {
    /// A writer whose spill file (unlinked, never seen by others) is
    /// created in `spill_dir` once the encoding outgrows memory.
    pub fn new(chunker: ChunkerParams, spill_dir: &Path) -> Result<Self, ManifestError> {
        Ok(EntryWriter {
            validator: Validator::new(FORMAT, &chunker)?,
            chunker,
            buf: Vec::new(),
            spill: None,
            spill_dir: spill_dir.to_path_buf(),
            body_len: 0,
            count: 0,
        })
    }

    /// Validates and encodes the next entry.
    pub fn push(&mut self, e: &Entry) -> Result<(), StreamError> {
        self.validator.push(e)?;
        let before = self.buf.len();
        wire::encode_entry(FORMAT, e, &mut self.buf);
        self.body_len += (self.buf.len() - before) as u64;
        self.count += 1;
        if self.buf.len() >= SPILL_AT {
            self.spill()?;
        }
        Ok(())
    }

    /// Entries pushed so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no entry was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.spill.is_none() {
            self.spill = Some(tempfile::tempfile_in(&self.spill_dir)?);
        }
        if let Some(f) = &mut self.spill {
            f.write_all(&self.buf)?;
        }
        self.buf.clear();
        Ok(())
    }

    /// The whole encoding: its length and a reader over it.
    pub fn finish(mut self) -> io::Result<(u64, Box<dyn Read + Send>)> {
        let header = wire::encode_header(FORMAT, &self.chunker, self.count);
        let len = header.len() as u64 + self.body_len;
        let head = io::Cursor::new(header);
        Ok(match self.spill.take() {
            None => (len, Box::new(head.chain(io::Cursor::new(self.buf)))),
            Some(mut f) => {
                f.write_all(&self.buf)?;
                f.rewind()?;
                let body = io::BufReader::with_capacity(1 << 20, f);
                (len, Box::new(head.chain(body)))
            }
        })
    }
}

/// Decodes a manifest's entries one at a time from a reader, checking
/// that every part is in canonical form and every rule holds.
pub struct EntryReader<R> {
    src: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    format: u32,
    chunker: ChunkerParams,
    len: usize,
    left: usize,
    validator: Validator,
    scratch: Vec<u8>,
}

impl<R: Read> EntryReader<R> {
    /// Reads and checks the header (format, chunker, entry count).
    pub fn new(src: R) -> Result<Self, StreamError> {
        let mut r = EntryReader {
            src,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            format: 0,
            chunker: ChunkerParams::default(),
            len: 0,
            left: 0,
            validator: Validator::new(FORMAT, &ChunkerParams::default())?,
            scratch: Vec::new(),
        };
        let (format, _) = r.decode_next(|b| postcard::take_from_bytes::<u32>(b))?;
        if format != FORMAT && format != FORMAT_V1 {
            return Err(ManifestError::UnsupportedFormat(format).into());
        }
        let ((format, chunker, len), used) = r.decode_next(wire::take_header)?;
        if wire::encode_header(format, &chunker, len) != r.buf[r.pos..r.pos + used] {
            return Err(malformed("not the canonical encoding"));
        }
        r.pos += used;
        if len > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(len).into());
        }
        r.validator = Validator::new(format, &chunker)?;
        (r.format, r.chunker, r.len, r.left) = (format, chunker, len, len);
        Ok(r)
    }

    /// The manifest's format.
    pub fn format(&self) -> u32 {
        self.format
    }

    /// How its files were cut.
    pub fn chunker(&self) -> &ChunkerParams {
        &self.chunker
    }

    /// Entries in the manifest (as its header says).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the manifest has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next entry, or `None` after the last one once the input is
    /// checked to end there.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, StreamError> {
        if self.left == 0 {
            if self.pos < self.buf.len() || self.fill(1)? {
                return Err(malformed("trailing bytes"));
            }
            return Ok(None);
        }
        let format = self.format;
        let (e, used) = self.decode_next(|b| wire::take_entry(format, b))?;
        self.scratch.clear();
        wire::encode_entry(format, &e, &mut self.scratch);
        if self.scratch[..] != self.buf[self.pos..self.pos + used] {
            return Err(malformed("not the canonical encoding"));
        }
        self.pos += used;
        self.left -= 1;
        self.validator.push(&e)?;
        Ok(Some(e))
    }

    /// Decodes one value from the buffered bytes, reading more while the
    /// value runs past them. Returns it and the bytes it used (not yet
    /// consumed).
    fn decode_next<T>(
        &mut self,
        f: impl for<'a> Fn(&'a [u8]) -> Result<(T, &'a [u8]), postcard::Error>,
    ) -> Result<(T, usize), StreamError> {
        loop {
            let avail = &self.buf[self.pos..];
            match f(avail) {
                Ok((v, rest)) => return Ok((v, avail.len() - rest.len())),
                Err(postcard::Error::DeserializeUnexpectedEnd) if !self.eof => {
                    // Doubling keeps re-parsing of a huge entry linear overall.
                    let want = (avail.len()).max(64 << 10);
                    if !self.fill(want)? {
                        return Err(malformed("truncated"));
                    }
                }
                Err(e) => return Err(malformed(&e.to_string())),
            }
        }
    }

    /// Reads at least `want` more bytes unless the input ends first;
    /// returns whether anything was read.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        let target = start + want;
        while self.buf.len() < target && !self.eof {
            let at = self.buf.len();
            self.buf.resize(target.max(at + 4096), 0);
            match self.src.read(&mut self.buf[at..]) {
                Ok(0) => {
                    self.buf.truncate(at);
                    self.eof = true;
                }
                Ok(n) => self.buf.truncate(at + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(at),
                Err(e) => {
                    self.buf.truncate(at);
                    return Err(e);
                }
            }
        }
        Ok(self.buf.len() > start)
    }
}

impl<R: Read> Iterator for EntryReader<R> {
    type Item = Result<Entry, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

fn malformed(why: &str) -> StreamError {
    StreamError::Invalid(ManifestError::Malformed(why.to_string()))
}

impl Manifest {
    /// Decodes a whole manifest through [`EntryReader`] (for tests and
    /// small manifests; large ones are better read entry by entry).
    pub fn read_from(src: impl Read) -> Result<Manifest, StreamError> {
        let mut r = EntryReader::new(src)?;
        let mut entries = Vec::with_capacity(r.len().min(1 << 16));
        while let Some(e) = r.next_entry()? {
            entries.push(e);
        }
        Ok(Manifest {
            format: r.format,
            chunker: r.chunker,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::manifest::{ChunkRef, FileMeta, Timestamp};

    fn sample(n: usize) -> Manifest {
        let mut entries = vec![Entry {
            path: "d".into(),
            kind: EntryKind::Dir,
        }];
        for i in 0..n {
            let data = format!("file {i}");
            entries.push(Entry {
                path: format!("d/f{i:05}"),
                kind: EntryKind::File {
                    size: data.len() as u64,
                    executable: i % 3 == 0,
                    chunks: vec![ChunkRef {
                        id: Hash::of(data.as_bytes()),
                        len: data.len() as u32,
                    }],
                    meta: Some(FileMeta {
                        modified: Timestamp {
                            secs: 1_700_000_000 + i as i64,
                            nanos: 7,
                        },
                        sha256: [i as u8; 32],
                    }),
                },
            });
        }
        entries.push(Entry {
            path: "d-link".into(),
            kind: EntryKind::Symlink {
                target: "/usr/lib/x".into(),
            },
        });
        Manifest::new(entries, ChunkerParams::default())
    }

    /// Written entry by entry (through the spill file when large), the
    /// bytes equal the whole encoding, and they read back the same.
    #[test]
    fn writer_and_reader_match_the_whole_encoding() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 3, 200_000] {
            let m = sample(n);
            let mut w = EntryWriter::new(m.chunker.clone(), dir.path()).unwrap();
            for e in &m.entries {
                w.push(e).unwrap();
            }
            let (len, mut r) = w.finish().unwrap();
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes, m.encode(), "{n} files");
            assert_eq!(len, bytes.len() as u64);
            // Read back one byte at a time too: every boundary is a refill.
            let back = Manifest::read_from(io::Cursor::new(&bytes)).unwrap();
            assert_eq!(back, m);
            if n < 10 {
                let slow = Manifest::read_from(OneByte(io::Cursor::new(&bytes))).unwrap();
                assert_eq!(slow, m);
            }
        }
    }

    struct OneByte<R>(R);
    impl<R: Read> Read for OneByte<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    /// Truncated, extended and non-canonical inputs are refused, and the
    /// reader applies the rules (an unsorted pair) as it goes.
    #[test]
    fn reader_refuses_what_decode_refuses() {
        let m = sample(3);
        let bytes = m.encode();
        let read = |b: &[u8]| Manifest::read_from(io::Cursor::new(b.to_vec()));
        assert!(read(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer).is_err());
        // A count of entries written in two bytes where one suffices.
        let header = wire::encode_header(FORMAT, &m.chunker, m.entries.len());
        let mut padded = header[..header.len() - 1].to_vec();
        padded.extend([0x80 | header[header.len() - 1], 0x00]);
        padded.extend(&bytes[header.len()..]);
        assert!(Manifest::decode(&padded).is_err());
        assert!(read(&padded).is_err());
        let mut swapped = m.clone();
        swapped.entries.swap(1, 2);
        let e = read(&swapped.encode()).unwrap_err();
        assert!(
            matches!(e, StreamError::Invalid(ManifestError::DuplicatePath(_))),
            "{e}"
        );
    }

    /// A parent that is a file is caught even with siblings sorting
    /// between it and its would-be child (`a` < `a-x` < `a/b`).
    #[test]
    fn validator_finds_parents_across_siblings() {
        let chunker = ChunkerParams::default();
        let entry = |p: &str, kind: EntryKind| Entry {
            path: p.into(),
            kind,
        };
        let link = |t: &str| EntryKind::Symlink { target: t.into() };
        let mut v = Validator::new(FORMAT, &chunker).unwrap();
        v.push(&entry("a", link("x"))).unwrap();
        v.push(&entry("a-x", EntryKind::Dir)).unwrap();
        v.push(&entry("a-x/y", EntryKind::Dir)).unwrap();
        let e = v.push(&entry("a/b", EntryKind::Dir)).unwrap_err();
        assert!(matches!(e, ManifestError::ParentNotDir(_)), "{e}");
        let mut v = Validator::new(FORMAT, &chunker).unwrap();
        v.push(&entry("a", EntryKind::Dir)).unwrap();
        v.push(&entry("a-x", link("x"))).unwrap();
        v.push(&entry("a/b", EntryKind::Dir)).unwrap();
        v.push(&entry("a/b/c", link("../../a-x"))).unwrap();
    }
}
