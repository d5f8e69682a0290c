//! Small disks for fault tests: a tmpfs of a given size mounted on a
//! directory of the test, unmounted when the guard drops, and a ballast file
//! that fills it up and is deleted to free the space again.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A mounted tmpfs; unmounted (lazily if still busy) on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on `dir` (created if needed). `None`
    /// (with a note on stderr) where mounting is not permitted: the fault
    /// tests on real small disks need root.
    pub fn mount(dir: &Path, size: u64) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let c = |s: &[u8]| CString::new(s).unwrap();
        let (src, target, fstype) = (c(b"tmpfs"), c(dir.as_os_str().as_bytes()), c(b"tmpfs"));
        let opts = c(format!("size={size},mode=0755").as_bytes());
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                eprintln!("SKIPPED: mounting a tmpfs needs root ({e})");
                return None;
            }
            panic!("mounting a tmpfs on {}: {e}", dir.display());
        }
        Some(Tmpfs {
            path: dir.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes free for an ordinary user of the file system.
    pub fn available(&self) -> u64 {
        let p = CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(p.as_ptr(), &mut s), 0, "statvfs");
            s.f_bavail as u64 * s.f_frsize as u64
        }
    }

    /// Writes `path` until the file system is full (or `limit` bytes are
    /// written); returns the bytes written. Delete the file to free them.
    pub fn fill(&self, path: &Path, limit: u64) -> u64 {
        let mut f = File::create(path).unwrap();
        let block = vec![0x5au8; 64 << 10];
        let mut written = 0u64;
        while written < limit {
            let n = (limit - written).min(block.len() as u64) as usize;
            match f.write(&block[..n]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            // Still in use (a node of a failed test): detach it now, the
            // kernel frees it when the last user goes.
            // SAFETY: as above.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
