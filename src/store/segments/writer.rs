//! The writer of the active segment: records are copied into an aligned
//! in-memory stage and written in large aligned pieces with direct I/O
//! (`O_DIRECT`), so chunk bytes go from this process to the disk without
//! a second copy into the page cache, and the `fdatasync` that makes a
//! batch durable finds almost nothing left to write.
//!
//! Measured on this project's 2-core machines (1 GiB over loopback, see
//! docs/benchmarks.md): the buffered `pwrite` copy into the page cache was
//! a fifth of a mirror's CPU, and each batch's `fdatasync` then waited for
//! its writeback. Direct writes cost a `memcpy` into the stage instead.
//!
//! Where the file system refuses direct I/O (at open, or with `EINVAL` on
//! the first aligned write), the same staging goes through the page cache,
//! and writeback of each written piece is started at once
//! (`sync_file_range`), so the batch's `fdatasync` still finds little left.
//!
//! Bytes past the last good record may sit in the file (the padding of the
//! last aligned write, or a failed write): the index records each segment's
//! durable length, and the store cuts anything longer when it opens.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Direct writes are aligned to this (file offsets, lengths and memory):
/// the page size, a multiple of every common logical block size.
pub(super) const ALIGN: usize = 4096;
/// Bytes staged in memory before they are written (a multiple of [`ALIGN`]):
/// large enough that the disk sees few, large writes.
pub(super) const STAGE: usize = 4 << 20;

/// `n` rounded down to a multiple of [`ALIGN`].
fn round_down(n: usize) -> usize {
    n & !(ALIGN - 1)
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub(super) fn round_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// [`STAGE`] bytes of memory starting at an [`ALIGN`]ed address, as direct
/// I/O requires. Zeroed once when made (the kernel maps zero pages lazily).
struct Stage {
    mem: Vec<u8>,
    at: usize,
}

impl Stage {
    fn new() -> Stage {
        let mem = vec![0u8; STAGE + ALIGN];
        // Never more than ALIGN - 1 for a byte pointer; if it were, the
        // direct writes would fail with EINVAL and fall back to buffered.
        let at = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        Stage { mem, at }
    }

    fn bytes(&self) -> &[u8] {
        &self.mem[self.at..self.at + STAGE]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.at..self.at + STAGE]
    }
}

/// The segment being appended to. Writes go to explicit offsets
/// (`pwrite`), never to a file cursor: `len` alone says where the next
/// record starts, so a write that fails half-way (disk full) cannot shift
/// later records away from the offsets they are indexed at.
///
/// Invariant: `base <= len <= base + STAGE`, `base` is a multiple of
/// [`ALIGN`], every byte before `base` is written to the file, and the
/// stage holds the bytes `[base, len)`.
pub(super) struct Writer {
    /// Segment number.
    pub(super) segment: u32,
    pub(super) file: File,
    /// Whether `file` takes direct writes.
    direct: bool,
    /// End of the last good record.
    pub(super) len: u64,
    /// File offset of the stage's first byte.
    base: u64,
    /// Whether the stage holds bytes not written to the file yet.
    unwritten: bool,
    /// `len` at the last successful sync: what a failed flush goes back to.
    synced: u64,
    stage: Stage,
}

impl Writer {
    /// Creates segment file `path`, starting with `magic` (written with
    /// the first records).
    pub(super) fn create(segment: u32, path: &Path, magic: &[u8]) -> io::Result<Writer> {
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(path)?;
        // Direct I/O is switched on after the file exists: `open` with
        // O_DIRECT on a file system that refuses it creates the file before
        // it fails, and a second `create_new` would then fail too. Where it
        // is refused, the page cache it is.
        let direct = DIRECT != 0 && set_direct(&file, true).is_ok();
        let mut stage = Stage::new();
        stage.bytes_mut()[..magic.len()].copy_from_slice(magic);
        Ok(Writer {
            segment,
            file,
            direct,
            len: magic.len() as u64,
            base: 0,
            unwritten: true,
            synced: magic.len() as u64,
            stage,
        })
    }

    /// Bytes in the stage.
    fn filled(&self) -> usize {
        (self.len - self.base) as usize
    }

    /// Writes the first `n` bytes of the stage (a multiple of [`ALIGN`]) at
    /// `base`. A file system that refuses the direct write gets it, and
    /// every later one, through the page cache.
    fn write_stage(&mut self, n: usize) -> io::Result<()> {
        let r = write_all_at(&self.file, &self.stage.bytes()[..n], self.base);
        let r = match r {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(
                    segment = self.segment,
                    "direct writes refused; writing through the page cache"
                );
                set_direct(&self.file, false)?;
                self.direct = false;
                write_all_at(&self.file, &self.stage.bytes()[..n], self.base)
            }
            r => r,
        };
        if r.is_ok() && !self.direct {
            start_writeback(&self.file, self.base, n);
        }
        r
    }

    /// Best effort after a failed write: gives back the space of whatever
    /// it wrote past the last good record (the file is cut at an aligned
    /// length, so the block holding the record's end stays whole).
    fn cut_after_failure(&self) {
        let keep = round_up(self.len);
        if self.file.metadata().is_ok_and(|m| m.len() > keep) {
            let _ = self.file.set_len(keep);
        }
    }

    /// Appends one record (its parts one after the other); on failure the
    /// writer is exactly as before.
    pub(super) fn append(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let (start_base, start_len) = (self.base, self.len);
        // The partial block the record starts in: once the stage is written
        // and refilled, a failure must put it back in front.
        let filled = self.filled();
        let tail_at = round_down(filled);
        let mut tail = [0u8; ALIGN];
        tail[..filled - tail_at].copy_from_slice(&self.stage.bytes()[tail_at..filled]);
        self.unwritten = true;
        if let Err(e) = self.copy_in(parts) {
            self.len = start_len;
            if self.base != start_base {
                // Bytes before the partial block are written: keep them.
                self.base = start_base + tail_at as u64;
                self.stage.bytes_mut()[..filled - tail_at]
                    .copy_from_slice(&tail[..filled - tail_at]);
            }
            self.cut_after_failure();
            return Err(e);
        }
        Ok(())
    }

    /// Copies `parts` into the stage, writing it out whenever it is full.
    fn copy_in(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        for part in parts {
            let mut p = *part;
            while !p.is_empty() {
                let filled = self.filled();
                if filled == STAGE {
                    self.write_stage(STAGE)?;
                    self.base += STAGE as u64;
                    continue;
                }
                let n = p.len().min(STAGE - filled);
                self.stage.bytes_mut()[filled..filled + n].copy_from_slice(&p[..n]);
                self.len += n as u64;
                p = &p[n..];
            }
        }
        Ok(())
    }

    /// Writes every staged byte (the last block padded with zeros), keeping
    /// only the partial last block in the stage. On failure the stage is
    /// kept as it was; the caller then calls [`Writer::discard_unsynced`].
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if !self.unwritten {
            return Ok(());
        }
        let filled = self.filled();
        let n = round_up(filled as u64) as usize;
        self.stage.bytes_mut()[filled..n].fill(0);
        self.write_stage(n)?;
        let full = round_down(filled);
        self.stage.bytes_mut().copy_within(full..filled, 0);
        self.base += full as u64;
        self.unwritten = false;
        Ok(())
    }

    /// Records that everything written so far is durable.
    pub(super) fn synced(&mut self) {
        self.synced = self.len;
    }

    /// After a failed flush or sync: goes back to the last sync, dropping
    /// the records since (the batches that wrote them fail; see
    /// `Segments::epoch`) and giving their space back. Keeping them for a
    /// retry would keep a full disk full: each failed batch would add its
    /// records to those the next flush must write.
    pub(super) fn discard_unsynced(&mut self) {
        let to = self.synced;
        if to < self.base {
            // The partial block `to` ends in was written: read it back (an
            // aligned read, as direct I/O wants).
            let at = round_down(to as usize) as u64;
            let n = (to - at) as usize;
            let block = &mut self.stage.bytes_mut()[..ALIGN];
            if n > 0 && read_fully_at(&self.file, block, at) < n {
                // Unreadable: keep the records (a later flush retries them).
                self.cut_after_failure();
                return;
            }
            self.base = at;
        }
        self.len = to;
        self.unwritten = true;
        self.cut_after_failure();
    }

    /// Writes everything and cuts the padding off, for a segment that takes
    /// no more records: sealed segments end at their last record.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.set_len(self.len)
    }
}

/// Reads as much of `buf` as the file holds at `at`; returns the count.
fn read_fully_at(f: &File, buf: &mut [u8], at: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

/// `O_DIRECT` where the platform has it.
#[cfg(target_os = "linux")]
const DIRECT: i32 = libc::O_DIRECT;
#[cfg(not(target_os = "linux"))]
const DIRECT: i32 = 0;

/// Sets or clears `O_DIRECT` on an open file.
fn set_direct(f: &File, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a valid open descriptor with integer arguments.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | DIRECT } else { flags & !DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts writeback of a range just written through the page cache, so the
/// `fdatasync` that follows finds it under way (best effort: a hint).
fn start_writeback(f: &File, at: u64, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: sync_file_range on a valid open descriptor with integer arguments.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, at, len);
}

/// `write_all` at an offset; a seam where tests inject write failures.
pub(super) fn write_all_at(f: &File, data: &[u8], at: u64) -> io::Result<()> {
    #[cfg(test)]
    if let Some(n) = fault::take(data.len()) {
        // Whole blocks, as a direct write would leave them.
        f.write_all_at(&data[..round_down(n)], at)?;
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    f.write_all_at(data, at)
}

/// Injected write failures for unit tests: a later write of at least a
/// given size writes only part of its bytes, then fails.
#[cfg(test)]
pub(super) mod fault {
    use std::cell::Cell;

    thread_local! {
        /// Writes of the size to let through first, the size, the bytes written.
        static ARMED: Cell<Option<(usize, usize, usize)>> = const { Cell::new(None) };
    }

    /// Makes the next write of `min_len` bytes or more on this thread
    /// write `partial` bytes and fail.
    pub(in crate::store) fn arm(min_len: usize, partial: usize) {
        arm_after(0, min_len, partial);
    }

    /// The same, for the write of `min_len` bytes or more after `skip` such.
    pub(in crate::store) fn arm_after(skip: usize, min_len: usize, partial: usize) {
        ARMED.with(|a| a.set(Some((skip, min_len, partial))));
    }

    /// How much of a write of `len` bytes to write before failing, if armed.
    pub(super) fn take(len: usize) -> Option<usize> {
        ARMED.with(|a| match a.get() {
            Some((0, min, partial)) if len >= min => {
                a.set(None);
                Some(partial.min(len))
            }
            Some((skip, min, partial)) if len >= min => {
                a.set(Some((skip - 1, min, partial)));
                None
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path) -> Writer {
        Writer::create(1, &dir.join("w.seg"), b"MAGIC").unwrap()
    }

    /// The file's good bytes, read as the store's readers do (through the
    /// page cache, not the writer's direct descriptor).
    fn contents(dir: &Path, w: &Writer) -> Vec<u8> {
        let mut all = vec![0u8; w.len as usize];
        File::open(dir.join("w.seg"))
            .unwrap()
            .read_exact_at(&mut all, 0)
            .unwrap();
        all
    }

    #[test]
    fn records_larger_than_the_stage_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let big: Vec<u8> = (0..STAGE * 2 + 123).map(|i| (i % 251) as u8).collect();
        w.append(&[b"head", &big]).unwrap();
        w.append(&[b"x"]).unwrap();
        w.flush().unwrap();
        let mut want = b"MAGIChead".to_vec();
        want.extend_from_slice(&big);
        want.push(b'x');
        assert_eq!(contents(dir.path(), &w), want);
        let file_len = w.file.metadata().unwrap().len();
        assert_eq!(file_len, round_up(w.len), "padded to the alignment");
        w.finish().unwrap();
        assert_eq!(w.file.metadata().unwrap().len(), w.len, "sealed: exact");
    }

    #[test]
    fn a_write_failing_mid_record_leaves_the_last_good_record_intact() {
        // The failure on the first stage write of the record (nothing of it
        // written), then on the second (its first stage written).
        for skip in [0, 1] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = writer(dir.path());
            let a = vec![1u8; ALIGN * 3 + 17];
            w.append(&[&a]).unwrap();
            w.flush().unwrap();
            w.append(&[b"pad"]).unwrap();
            let good = w.len;
            fault::arm_after(skip, STAGE, 5000);
            assert!(w.append(&[&vec![2u8; STAGE * 2]]).is_err());
            assert_eq!(w.len, good);
            let file_len = w.file.metadata().unwrap().len();
            assert!(file_len <= round_up(good), "space given back: {file_len}");
            w.append(&[b"c"]).unwrap();
            w.flush().unwrap();
            let mut want = b"MAGIC".to_vec();
            want.extend_from_slice(&a);
            want.extend_from_slice(b"padc");
            assert_eq!(
                contents(dir.path(), &w),
                want,
                "failure at stage write {skip}"
            );
        }
    }
}
