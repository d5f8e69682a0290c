//! Disk space: the quota a version must fit in before it is fetched, the
//! free space it needs, and the reserve kept for the index.
//!
//! sled stops working for good after one failed write (it keeps the first
//! I/O error and returns it ever after, even once space is freed), so the
//! store never lets chunk data take the last [`DISK_RESERVE`] bytes of the
//! file system: a batch that would is refused with [`StoreError::DiskFull`]
//! before a byte is written, and the index always has room to commit.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::{io_ctx, Result, Store, StoreError};

/// Free space kept for the index: chunk writes stop short of it.
pub const DISK_RESERVE: u64 = 8 << 20;

/// Whether a version's bytes fit in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fit {
    /// They fit in the quota and on the disk.
    Fits,
    /// They would take the store past its quota: refuse the version.
    OverQuota {
        /// Bytes of chunk data held now.
        held: u64,
        /// Bytes the version would add.
        adds: u64,
        /// The quota.
        quota: u64,
    },
    /// The disk lacks room now: wait until space is freed.
    NoSpace {
        /// Bytes needed, the reserve included.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
}

impl std::fmt::Display for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fit::Fits => write!(f, "fits"),
            Fit::OverQuota { held, adds, quota } => write!(
                f,
                "it would add {} to the {} held, over the store quota of {} (limits.max_store_bytes)",
                mib(*adds),
                mib(*held),
                mib(*quota)
            ),
            Fit::NoSpace { needed, available } => write!(
                f,
                "not enough disk space: {} needed (with {} kept free for the index), {} available",
                mib(*needed),
                mib(DISK_RESERVE),
                mib(*available)
            ),
        }
    }
}

/// Bytes as MiB, for messages.
pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

impl Store {
    /// Bytes of chunk data indexed: what [`Store::fits`] counts against a
    /// quota.
    pub fn held_bytes(&self) -> Result<u64> {
        Ok(self.stats()?.chunk_bytes)
    }

    /// Bytes free on the store's file system for an ordinary user.
    pub fn available_bytes(&self) -> Result<u64> {
        available(&self.root).map_err(io_ctx("reading free disk space"))
    }

    /// Whether `adds` more bytes of chunk data fit: under `quota` (0: none)
    /// with what is held, and on the disk with the reserve left free.
    pub fn fits(&self, adds: u64, quota: u64) -> Result<Fit> {
        if quota > 0 {
            let held = self.held_bytes()?;
            if held.saturating_add(adds) > quota {
                return Ok(Fit::OverQuota { held, adds, quota });
            }
        }
        let reserve = self.disk_reserve.load(Ordering::Relaxed);
        let needed = adds.saturating_add(reserve);
        let available = self.available_bytes()?;
        if reserve > 0 && available < needed {
            return Ok(Fit::NoSpace { needed, available });
        }
        Ok(Fit::Fits)
    }

    /// Sets the free space chunk writes leave for the index (default
    /// [`DISK_RESERVE`]); 0 turns the check off and leaves the file system
    /// to refuse writes (tests of that path).
    pub fn set_disk_reserve(&self, bytes: u64) {
        self.disk_reserve.store(bytes, Ordering::Relaxed);
    }

    /// Refuses a write of `len` bytes that would eat into the reserve.
    pub(super) fn check_room(&self, len: u64) -> Result<()> {
        let reserve = self.disk_reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        let needed = len + reserve;
        let available = self.available_bytes()?;
        if available < needed {
            return Err(StoreError::DiskFull { needed, available });
        }
        Ok(())
    }
}

impl StoreError {
    /// Whether this is the disk being full (refused before writing, or
    /// `ENOSPC`/`EDQUOT` from the file system): wait for space, not a bug.
    pub fn is_disk_full(&self) -> bool {
        let full = |e: &io::Error| {
            e.kind() == io::ErrorKind::StorageFull
                || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        };
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Io { source, .. } => full(source),
            StoreError::Db(sled::Error::Io(e)) => full(e),
            _ => false,
        }
    }
}

/// `statvfs`: bytes free for an unprivileged user on the file system of `path`.
fn available(path: &Path) -> io::Result<u64> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs writes into the zeroed struct; `p` is NUL-terminated.
    let s = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(p.as_ptr(), &mut s) != 0 {
            return Err(io::Error::last_os_error());
        }
        s
    };
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    #[test]
    fn quota_counts_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = vec![9u8; 1000];
        store.put_chunks(&[(Hash::of(&d), d)]).unwrap();
        assert_eq!(store.held_bytes().unwrap(), 1000);
        assert_eq!(store.fits(500, 0).unwrap(), Fit::Fits);
        assert_eq!(store.fits(500, 1500).unwrap(), Fit::Fits);
        assert_eq!(
            store.fits(501, 1500).unwrap(),
            Fit::OverQuota {
                held: 1000,
                adds: 501,
                quota: 1500
            }
        );
        // More than any disk has: no room.
        assert!(matches!(
            store.fits(u64::MAX / 2, 0).unwrap(),
            Fit::NoSpace { .. }
        ));
    }

    #[test]
    fn disk_full_errors_are_told_apart() {
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(io_ctx("x")(enospc).is_disk_full());
        assert!(StoreError::DiskFull {
            needed: 2,
            available: 1
        }
        .is_disk_full());
        assert!(!io_ctx("x")(io::Error::other("other")).is_disk_full());
        assert!(!StoreError::MissingChunk(Hash::of(b"")).is_disk_full());
    }
}
