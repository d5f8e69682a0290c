//! Publishing: turn a directory into the next signed version of a collection.
//!
//! The tree is walked twice, in manifest order and one entry at a time, so
//! memory does not grow with the number of files. The first walk reads no
//! data: it finds what would stop the publish (special files, the master
//! key, a link `--symlinks refuse` refuses) and counts the bytes. The second
//! reads the files the stat cache does not vouch for, stores the chunks the
//! store lacks (committed in batches) and encodes the manifest as it goes
//! ([`ingest`]); finally the manifest is stored, signed and made current. A
//! publish killed at any point leaves a consistent store, and running it
//! again reuses every chunk already committed.
//!
//! Modules: [`walk`] (the sorted walk and `--exclude`), [`symlink`] (links
//! into and out of the tree), [`ingest`] (the reading and writing threads).

mod ingest;
mod symlink;
mod walk;

use std::io;
use std::path::{Path, PathBuf};

pub use symlink::SymlinkPolicy;

use crate::announce::{self, valid_name, AnnounceError, Announcement, SignedAnnouncement};
use crate::chunk::ChunkerParams;
use crate::keys::{CollectionId, MasterKey};
use crate::manifest::ManifestError;
use crate::store::{Recorded, Store, StoreError};

/// How to publish.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Collection name; defaults to the source directory's name.
    pub name: Option<String>,
    /// Version number; defaults to one more than the newest held.
    pub version: Option<u64>,
    /// How long the announcement stays valid, in seconds.
    pub valid_for: u64,
    /// What to do with symlinks that point outside the tree.
    pub symlinks: SymlinkPolicy,
    /// Paths to leave out: gitignore-style patterns, relative to the tree.
    pub exclude: Vec<String>,
    /// Read every file, even those the stat cache says are unchanged.
    pub reread: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            name: None,
            version: None,
            valid_for: 365 * 24 * 3600,
            symlinks: SymlinkPolicy::default(),
            exclude: Vec::new(),
            reread: false,
        }
    }
}

/// What a publish did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PublishReport {
    /// The signed announcement of the new version.
    pub announcement: SignedAnnouncement,
    /// Regular files.
    pub files: u64,
    /// File bytes.
    pub bytes: u64,
    /// Bytes written to the store that it did not hold before.
    pub new_bytes: u64,
    /// Bytes read from the tree (files the stat cache knew unchanged are
    /// not read).
    #[serde(default)]
    pub read_bytes: u64,
    /// Absolute symlinks into the tree stored as relative ones.
    #[serde(default)]
    pub links_rewritten: u64,
    /// Symlinks out of the tree left out (`--symlinks skip`).
    #[serde(default)]
    pub links_skipped: u64,
    /// Paths left out by `--exclude` (a directory counts once).
    #[serde(default)]
    pub excluded: u64,
}

/// What a publish would do ([`dry_run`]); nothing is written.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DryRunReport {
    /// The collection.
    pub collection: String,
    /// Its name.
    pub name: String,
    /// The version it would become.
    pub version: u64,
    /// Entries of the manifest (files, directories, symlinks).
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// File bytes.
    pub bytes: u64,
    /// Chunk references of all files.
    pub chunks: u64,
    /// Chunks the store does not hold yet (the current version's are held).
    pub new_chunks: u64,
    /// Their bytes: what the publish would store.
    pub new_bytes: u64,
    /// Bytes read to find out (the stat cache spares unchanged files).
    pub read_bytes: u64,
    /// Absolute symlinks into the tree that would be stored as relative ones.
    pub links_rewritten: u64,
    /// Symlinks out of the tree that would be left out.
    pub links_skipped: u64,
    /// Paths left out by `--exclude`.
    pub excluded: u64,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Reading the source tree failed.
    #[error("reading {path}: {source}")]
    Read {
        /// Where.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The source is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A device, socket or FIFO in the tree.
    #[error("{0} is not a regular file, directory or symlink")]
    SpecialFile(PathBuf),
    /// A file that was replaced (by a link, a FIFO, another file) between
    /// the scan and the read: what was checked is not what would be read.
    #[error("{0} changed while it was being published (replaced by another file, link or FIFO); publish again")]
    Changed(PathBuf),
    /// The tree holds the master key that signs it: publishing it would
    /// hand the key to every mirror.
    #[error("{0} is the master key file: refusing to publish the key (move it out of the tree)")]
    ContainsKey(PathBuf),
    /// A name that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NonUtf8(PathBuf),
    /// A collection name that cannot be used.
    #[error(
        "invalid collection name {0:?} (use letters, digits, '-', '_', '.', '+'; pass --name)"
    )]
    BadName(String),
    /// A version number out of range: above [`announce::MAX_VERSION`], or
    /// no version left after the newest accepted one.
    #[error("version {0} is out of range (at most {max})", max = announce::MAX_VERSION)]
    BadVersion(u64),
    /// An `--exclude` pattern that does not parse.
    #[error("bad exclude pattern {pattern:?}: {why}")]
    BadExclude {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        why: String,
    },
    /// The tree breaks a manifest rule (a symlink `--symlinks refuse`
    /// refuses, ...).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Progress callback arguments: bytes read so far, total bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Publishes `src` as the next version of `key`'s collection.
pub fn publish(
    store: &Store,
    key: &MasterKey,
    src: &Path,
    opts: &PublishOptions,
    progress: Progress<'_>,
) -> Result<PublishReport, PublishError> {
    let (name, source) = prepare(src, key, opts, false)?;
    let checked = ingest::check(&source)?;
    let (manifest, c) = ingest::ingest(store, &source, checked.bytes, progress)?;
    let (len, bytes) = manifest.finish().map_err(|source| StoreError::Io {
        context: "reading back the manifest".into(),
        source,
    })?;
    let (manifest_id, manifest_size) = store.add_manifest_from(bytes, len)?;

    let collection = key.collection();
    let version = next_version(store, &collection, opts)?;
    let published_at = announce::now();
    let announcement = Announcement {
        collection,
        name,
        version,
        manifest: manifest_id,
        manifest_size,
        total_bytes: c.bytes,
        files: c.files,
        published_at,
        expires_at: published_at.saturating_add(opts.valid_for.max(1)),
    }
    .sign(key);
    if let Recorded::NotNewer { accepted } = store.record_announcement(&announcement)? {
        return Err(StoreError::Announce(AnnounceError::NotNewer { version, accepted }).into());
    }
    store.set_current(&collection, version)?;
    Ok(PublishReport {
        announcement,
        files: c.files,
        bytes: c.bytes,
        new_bytes: c.new_bytes,
        read_bytes: c.read_bytes,
        links_rewritten: c.links_rewritten,
        links_skipped: c.links_skipped,
        excluded: c.excluded,
    })
}

/// Does everything [`publish`] does short of writing: walks and reads the
/// tree (the stat cache sparing unchanged files), checks every rule, and
/// counts what would be stored. The store is left exactly as it was.
pub fn dry_run(
    store: &Store,
    key: &MasterKey,
    src: &Path,
    opts: &PublishOptions,
    progress: Progress<'_>,
) -> Result<DryRunReport, PublishError> {
    let (name, source) = prepare(src, key, opts, true)?;
    let checked = ingest::check(&source)?;
    let (manifest, c) = ingest::ingest(store, &source, checked.bytes, progress)?;
    let collection = key.collection();
    Ok(DryRunReport {
        collection: collection.to_string(),
        name,
        version: next_version(store, &collection, opts)?,
        entries: manifest.len() as u64,
        files: c.files,
        bytes: c.bytes,
        chunks: c.chunks,
        new_chunks: c.new_chunks,
        new_bytes: c.new_bytes,
        read_bytes: c.read_bytes,
        links_rewritten: c.links_rewritten,
        links_skipped: c.links_skipped,
        excluded: c.excluded,
    })
}

/// Checks the arguments (before any data is read) and gathers what both
/// walks need.
fn prepare(
    src: &Path,
    key: &MasterKey,
    opts: &PublishOptions,
    dry_run: bool,
) -> Result<(String, ingest::Source), PublishError> {
    if !src.is_dir() {
        return Err(PublishError::NotADirectory(src.to_path_buf()));
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => src
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    };
    if !valid_name(&name) {
        return Err(PublishError::BadName(name));
    }
    // Refused before any data is read (checked again once the default is known).
    if let Some(v) = opts
        .version
        .filter(|&v| v == 0 || v > announce::MAX_VERSION)
    {
        return Err(PublishError::BadVersion(v));
    }
    let read_err = |source| PublishError::Read {
        path: src.to_path_buf(),
        source,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let source = ingest::Source {
        root: src.to_path_buf(),
        roots: symlink::Roots::of(src).map_err(read_err)?,
        exclude: walk::excludes(src, &opts.exclude)?,
        symlinks: opts.symlinks,
        key_file: key.file_id(),
        params: ChunkerParams::default(),
        dry_run,
        reread: opts.reread,
        started: (now.as_secs() as i64, now.subsec_nanos()),
    };
    Ok((name, source))
}

/// The version a publish makes: the one asked for, or one more than the
/// newest held.
fn next_version(
    store: &Store,
    collection: &CollectionId,
    opts: &PublishOptions,
) -> Result<u64, PublishError> {
    let version = match opts.version {
        Some(v) => v,
        None => match store.latest(collection)? {
            None => 1,
            Some(a) => a
                .body
                .version
                .checked_add(1)
                .ok_or(PublishError::BadVersion(a.body.version))?,
        },
    };
    if version == 0 || version > announce::MAX_VERSION {
        return Err(PublishError::BadVersion(version));
    }
    Ok(version)
}

#[cfg(test)]
mod tests;
