//! Commands run on a store: the one code path of publish, export, verify,
//! gc, status, follow, unfollow and ticket. [`LocalStore`] runs them on a store opened directly; a
//! running node runs the same functions on its own store (adding the
//! network side: announcing, peers).

use std::path::Path;

use crate::control::status::{CollectionStatus, Status, StoreTotals, VersionInfo};
use crate::control::{
    CommandError, Commands, ErrorKind, FollowReport, Progress, Request, Response, TicketReport,
    UnfollowReport,
};
use crate::filter::PathFilter;
use crate::keys::{CollectionId, MasterKey};
use crate::publish::{self, PublishOptions};
use crate::store::{Interest, InterestState, Store, StoreError};
use crate::ticket::{self, Ticket};

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
                let r = publish::publish(store, &key, &src, &opts, progress)?;
                // The publisher's node follows what it publishes.
                store.mark_followed(&r.announcement.body.collection)?;
                Response::Published(r)
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
        Request::Follow { target, only } => Response::Followed(follow(store, &target, only)?),
        Request::Unfollow { collection } => Response::Unfollowed(unfollow(store, &collection)?),
        Request::Ticket {
            collection,
            addrs,
            only,
            listen,
        } => {
            let own = super::addrs::from_settings(&listen, store.root());
            Response::Ticket(ticket(store, &collection, &addrs, &only, &own)?)
        }
    })
}

/// A collection id or name held here, or a not-found error.
fn find(store: &Store, what: &str) -> Result<CollectionId, BoxError> {
    Ok(store.find_collection(what)?.ok_or_else(|| {
        CommandError::new(
            ErrorKind::NotFound,
            format!("no collection {what:?} in this store"),
        )
    })?)
}

/// The name of a collection, from its newest version held.
fn name_of(store: &Store, c: &CollectionId) -> Result<Option<String>, StoreError> {
    Ok(store.latest(c)?.map(|a| a.body.name))
}

/// `follow`: records the collection as followed, with its paths and the
/// ticket's peers. A running node then starts its follower.
pub(crate) fn follow(
    store: &Store,
    target: &str,
    only: Option<Vec<String>>,
) -> Result<FollowReport, BoxError> {
    let t = match ticket::parse_target(target) {
        Ok(t) => t,
        // A name held here, to follow what was merely held.
        Err(e) => match store.find_collection(target.trim()) {
            Ok(Some(c)) => Ticket {
                collection: c,
                addrs: Vec::new(),
                only: Vec::new(),
            },
            _ => {
                return Err(CommandError::new(
                    ErrorKind::Usage,
                    format!("{target:?} is not a collection id (64 hex digits), a ticket or a collection held here: {e}"),
                )
                .into())
            }
        },
    };
    let c = t.collection;
    let filter = PathFilter::new(&only.unwrap_or(t.only))?;
    let old = store.interest(&c)?;
    let already = old
        .as_ref()
        .is_some_and(|i| i.state == InterestState::Followed);
    let mut i = old.unwrap_or_default();
    i.state = InterestState::Followed;
    i.only = filter.patterns().to_vec();
    for a in &t.addrs {
        let a = a.to_string();
        i.peers.retain(|p| *p != a);
        i.peers.push(a);
    }
    // The newest peers are kept.
    let excess = i.peers.len().saturating_sub(ticket::MAX_ADDRS);
    i.peers.drain(..excess);
    store.set_interest(&c, &i)?;
    Ok(FollowReport {
        collection: c.to_string(),
        name: name_of(store, &c)?,
        only: i.only,
        peers: i.peers,
        already,
    })
}

/// `unfollow`: marks the collection unfollowed, so the next gc drops it.
/// A running node stops its follower.
pub(crate) fn unfollow(store: &Store, what: &str) -> Result<UnfollowReport, BoxError> {
    let c = match what.parse::<CollectionId>() {
        Ok(c) => c,
        Err(_) => find(store, what)?,
    };
    let old = store.interest(&c)?;
    let versions = store.versions(&c)?.len();
    let held = store.collections()?.iter().any(|x| x.id == c);
    if old.is_none() && !held {
        return Err(CommandError::new(
            ErrorKind::NotFound,
            format!("collection {c} is neither followed nor held here"),
        )
        .into());
    }
    let was_followed = old
        .as_ref()
        .is_some_and(|i| i.state == InterestState::Followed);
    if held {
        let i = Interest {
            state: InterestState::Unfollowed,
            ..Interest::default()
        };
        store.set_interest(&c, &i)?;
    } else {
        // Nothing held: nothing for gc to free.
        store.remove_interest(&c)?;
    }
    Ok(UnfollowReport {
        collection: c.to_string(),
        name: name_of(store, &c)?,
        versions,
        was_followed,
    })
}

/// `ticket`: the collection, the operator's `addrs` and the best of
/// `own` (the node's addresses), and the paths `only`.
pub(crate) fn ticket(
    store: &Store,
    what: &str,
    addrs: &[String],
    only: &[String],
    own: &[libp2p::Multiaddr],
) -> Result<TicketReport, BoxError> {
    let c = find(store, what)?;
    let listed = addrs
        .iter()
        .map(|a| ticket::parse_addr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let filter = PathFilter::new(only)?;
    let (addrs, warnings) = ticket::reachable_addrs(&listed, own);
    let t = Ticket {
        collection: c,
        addrs,
        only: filter.patterns().to_vec(),
    };
    Ok(TicketReport {
        ticket: t.encode(),
        collection: c.to_string(),
        name: name_of(store, &c)?,
        addrs: t.addrs.iter().map(|a| a.to_string()).collect(),
        only: t.only,
        warnings,
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
    let interests: std::collections::HashMap<CollectionId, Interest> =
        store.interests()?.into_iter().collect();
    let held = store.collections()?;
    let mut collections: Vec<CollectionStatus> = held
        .iter()
        .cloned()
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
    // Followed but nothing known of it yet: listed too, so `follow` shows.
    for (id, i) in &interests {
        if i.state == InterestState::Followed && !held.iter().any(|c| c.id == *id) {
            collections.push(CollectionStatus {
                id: id.to_string(),
                name: "(no version known yet)".into(),
                ..Default::default()
            });
        }
    }
    for cs in &mut collections {
        if let Some(i) = cs.id.parse().ok().and_then(|id| interests.get(&id)) {
            cs.followed = i.state == InterestState::Followed;
            cs.unfollowed = i.state == InterestState::Unfollowed;
            cs.partial = i.only.clone();
        }
    }
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
