//! `export`: write a version out as a plain directory tree, exactly and
//! atomically. The tree is built in a temporary sibling of the destination,
//! flushed to disk, and renamed into place (swapped with `RENAME_EXCHANGE`
//! when the destination exists), so readers see the old tree or the new one,
//! never a mix. Every chunk is verified as it is read, and each file gets
//! back the modification time the manifest recorded (format 2). The
//! manifest is read entry by entry, so memory does not grow with the number
//! of files. Symlinks are written as the manifest stores them, never
//! resolved (a link the publisher kept may point outside the tree).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{io_ctx, Result, Store, StoreError};
use crate::filter::PathFilter;
use crate::hash::Hash;
use crate::keys::CollectionId;
use crate::manifest::EntryKind;

/// What an export wrote.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ExportReport {
    /// The version written.
    pub version: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// File bytes.
    pub bytes: u64,
}

impl Store {
    /// Writes `version` (default: current) of a collection to `dest`.
    /// An existing non-empty `dest` is swapped out only with `replace`.
    pub fn export(
        &self,
        id: &CollectionId,
        version: Option<u64>,
        dest: &Path,
        replace: bool,
    ) -> Result<ExportReport> {
        let a = match version {
            Some(v) => self
                .version(id, v)?
                .ok_or(StoreError::UnknownVersion(*id, v))?,
            None => self
                .current(id)?
                .ok_or(StoreError::UnknownCollection(*id))?,
        };
        // Streamed twice (checked, then written), never held whole: a
        // manifest may list millions of files.
        let m = a.body.manifest;
        // A partial mirror exports the paths it keeps.
        let filter = self.filter(id)?;
        let missing = self.missing_in(&m, &filter)?;
        if missing > 0 {
            return Err(StoreError::Incomplete {
                version: a.body.version,
                missing,
            });
        }
        let dest_exists = match fs::symlink_metadata(dest) {
            Ok(md) if md.is_dir() => {
                let empty = fs::read_dir(dest)
                    .map_err(io_ctx(format!("reading {}", dest.display())))?
                    .next()
                    .is_none();
                if !empty && !replace {
                    return Err(StoreError::DestinationNotEmpty(dest.to_path_buf()));
                }
                true
            }
            Ok(_) => return Err(StoreError::DestinationNotEmpty(dest.to_path_buf())),
            Err(_) => false,
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io_ctx(format!("creating {}", parent.display())))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "export".into());
        remove_stale_temps(&parent, &name)?;
        let tmp = parent.join(format!("{}{}", temp_prefix(&name), std::process::id()));
        let result = self.write_tree(&m, &filter, &tmp).and_then(|mut r| {
            r.version = a.body.version;
            sync_fs(&tmp)?;
            swap_into_place(&tmp, dest, dest_exists)?;
            Ok(r)
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Chunks of a stored manifest's files that the store lacks, each
    /// counted once.
    fn missing_in(&self, m: &Hash, filter: &PathFilter) -> Result<usize> {
        let mut missing = HashSet::new();
        for e in self.manifest_entries(m)? {
            let e = e?;
            if !filter.wants(&e.path) {
                continue;
            }
            if let EntryKind::File { chunks, .. } = e.kind {
                for c in chunks {
                    if !self.has_chunk(&c.id)? {
                        missing.insert(c.id);
                    }
                }
            }
        }
        Ok(missing.len())
    }

    fn write_tree(&self, m: &Hash, filter: &PathFilter, root: &Path) -> Result<ExportReport> {
        let mut r = ExportReport::default();
        mkdir(root)?;
        let mut made = root.to_path_buf();
        for e in self.manifest_entries(m)? {
            let e = e?;
            if !filter.wants_entry(&e.path, &e.kind) {
                continue;
            }
            // Paths were validated: relative, no `..`, nothing below a file or link.
            let path = root.join(&e.path);
            // Files of one directory mostly come together: one check for them all.
            if let Some(p) = path.parent().filter(|p| *p != made) {
                fs::create_dir_all(p).map_err(io_ctx(format!("creating {}", p.display())))?;
                made = p.to_path_buf();
            }
            match &e.kind {
                EntryKind::Dir => {
                    mkdir(&path)?;
                    r.dirs += 1;
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &path)
                        .map_err(io_ctx(format!("creating link {}", path.display())))?;
                    r.symlinks += 1;
                }
                EntryKind::File {
                    size,
                    executable,
                    chunks,
                    meta,
                } => {
                    let ctx = || format!("writing {}", path.display());
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(io_ctx(ctx()))?;
                    for c in chunks {
                        let data = self.read_chunk(&c.id)?;
                        f.write_all(&data).map_err(io_ctx(ctx()))?;
                    }
                    let mode = if *executable { 0o755 } else { 0o644 };
                    f.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(io_ctx(ctx()))?;
                    if let Some(t) = meta.and_then(|m| m.modified.to_system_time()) {
                        f.set_modified(t).map_err(io_ctx(ctx()))?;
                    }
                    r.files += 1;
                    r.bytes += size;
                }
            }
        }
        Ok(r)
    }
}

/// The start of the name of an export's temporary tree beside `dest_name`;
/// the exporting process's id follows.
fn temp_prefix(dest_name: &str) -> String {
    format!(".{dest_name}.peermirror-tmp-")
}

/// Removes the temporary trees that earlier exports to the same destination
/// left behind when they were killed: those whose process is gone (or is
/// this one, which exports one tree at a time).
fn remove_stale_temps(parent: &Path, dest_name: &str) -> Result<()> {
    let prefix = temp_prefix(dest_name);
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_ctx(format!("reading {}", parent.display()))(e)),
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && process_alive(pid) {
            continue;
        }
        let path = entry.path();
        // Only real directories: never follow a link planted under that name.
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            tracing::info!(path = %path.display(), "removing a stale export tree");
            fs::remove_dir_all(&path)
                .map_err(io_ctx(format!("removing stale {}", path.display())))?;
        }
    }
    Ok(())
}

/// Whether a process with this id exists.
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn mkdir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(io_ctx(format!("creating {}", path.display()))(e))
        }
        _ => fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(io_ctx(format!("chmod {}", path.display()))),
    }
}

/// Flushes the whole file system holding `path` in one call, instead of an
/// fsync per exported file.
fn sync_fs(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(io_ctx(format!("opening {}", path.display())))?;
    // SAFETY: syncfs on a valid open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io_ctx("syncing the exported tree")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn swap_into_place(tmp: &Path, dest: &Path, dest_exists: bool) -> Result<()> {
    if !dest_exists {
        return fs::rename(tmp, dest).map_err(io_ctx(format!("renaming into {}", dest.display())));
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io_ctx("path with NUL")(io::ErrorKind::InvalidInput.into()))
    };
    let (a, b) = (c(tmp)?, c(dest)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them relative to the cwd.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(io_ctx(format!("swapping into {}", dest.display()))(
            io::Error::last_os_error(),
        ));
    }
    // `tmp` now holds the previous tree.
    fs::remove_dir_all(tmp).map_err(io_ctx(format!("removing old tree {}", tmp.display())))
}
