//! Commands run on a store: the one code path of publish, export, verify,
//! gc and status. [`LocalStore`] runs them on a store opened directly; a
//! running node runs the same functions on its own store (adding the
//! network side: announcing, peers).

use std::path::Path;

use crate::control::status::{CollectionStatus, Status, StoreTotals, VersionInfo};
use crate::control::{CommandError, Commands, Progress, Request, Response};
use crate::keys::MasterKey;
use crate::publish::{self, PublishOptions};
use crate::store::{Store, StoreError};

/// A store opened directly, for commands run while no node runs on it.
pub struct LocalStore {
    store: Store,
}

impl LocalStore {
    /// Opens the store at `data` (fails with [`StoreError::Locked`] while a
    /// process holds it).
    pub fn open(data: &Path) -> Result<LocalStore, StoreError> {
        Ok(LocalStore {
            store: Store::open(data)?,
        })
    }
}

impl Commands for LocalStore {
    fn call(&self, req: Request, progress: Progress<'_>) -> Result<Response, CommandError> {
        run(&self.store, req, progress).map_err(|e| CommandError::from_error(&*e))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Runs `req` on `store`. Status here covers the store only; a node adds
/// its own part.
pub(crate) fn run(
    store: &Store,
    req: Request,
    progress: Progress<'_>,
) -> Result<Response, BoxError> {
    Ok(match req {
        Request::Status => Response::Status(Box::new(status(store)?)),
        Request::Publish {
            key,
            src,
            name,
            version,
            valid_for,
            symlinks,
            exclude,
            reread,
            dry_run,
        } => {
            let key = MasterKey::load(&key)?;
            let opts = PublishOptions {
                name,
                version,
                valid_for,
                symlinks,
                exclude,
                reread,
            };
            if dry_run {
                Response::DryRun(publish::dry_run(store, &key, &src, &opts, progress)?)
            } else {
                Response::Published(publish::publish(store, &key, &src, &opts, progress)?)
            }
        }
        Request::Export {
            collection,
            dest,
            version,
            replace,
        } => {
            let id = store.find_collection(&collection)?.ok_or_else(|| {
                CommandError::new(
                    crate::control::ErrorKind::NotFound,
                    format!("no collection {collection:?} in this store"),
                )
            })?;
            let r = store
                .export(&id, version, &dest, replace)
                .map_err(|e| Exporting(dest.display().to_string(), e))?;
            Response::Exported(r)
        }
        Request::Verify { repair } => Response::Verified(store.verify(repair)?),
        Request::Gc { keep } => Response::Collected(store.gc(keep)?),
    })
}

/// An export failure, naming the destination.
#[derive(Debug, thiserror::Error)]
#[error("exporting to {0}: {1}")]
struct Exporting(String, #[source] StoreError);

/// The store's part of `status`.
pub(crate) fn status(store: &Store) -> Result<Status, StoreError> {
    let now = crate::announce::now();
    let mut latest = std::collections::HashMap::new();
    for c in store.collections()? {
        if let Some(a) = store.latest(&c.id)? {
            latest.insert(c.id, a.body);
        }
    }
    let collections = store
        .collections()?
        .into_iter()
        .map(|c| CollectionStatus {
            freshness: latest.get(&c.id).map(|b| b.freshness(now)),
            expires_at: latest.get(&c.id).map(|b| b.expires_at),
            id: c.id.to_string(),
            name: c.name,
            current: c.current.map(|a| VersionInfo {
                version: a.body.version,
                files: a.body.files,
                bytes: a.body.total_bytes,
                published_at: a.body.published_at,
                expires_at: a.body.expires_at,
            }),
            accepted: c.accepted,
            versions: c.versions,
            ..Default::default()
        })
        .collect();
    let s = store.stats()?;
    Ok(Status {
        data: store.root().display().to_string(),
        node: None,
        collections,
        store: StoreTotals {
            chunks: s.chunks,
            chunk_bytes: s.chunk_bytes,
            disk_bytes: s.disk_bytes,
        },
    })
}
