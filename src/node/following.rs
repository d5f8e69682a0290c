//! The followed set on a running node: following (recorded in the store,
//! see [`crate::store::Interest`]) and unfollowing at run time, and what a
//! starting node follows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use libp2p::Multiaddr;

use super::follow::{self, Follower};
use super::{blocking, latest, local, lock, mirrors, FollowSpec, Node, NodeError};
use crate::control::CommandError;
use crate::keys::CollectionId;
use crate::store::{Store, StoreError};

impl Node {
    /// Follows a collection, and records it in the followed set (later
    /// starts follow it too): subscribes to its topic and fetches each new
    /// version.
    pub async fn follow(&self, c: CollectionId) -> Result<(), NodeError> {
        let s = self.inner.store.clone();
        blocking("recording a followed collection", move || {
            s.mark_followed(&c)
        })
        .await?;
        self.start_follower(c).await
    }

    /// Stops following `c` (its follower stops, its topic is left) and
    /// records it as unfollowed, so the next gc drops its versions.
    pub async fn unfollow(&self, c: CollectionId) -> Result<(), CommandError> {
        let s = self.inner.store.clone();
        blocking("recording an unfollowed collection", move || {
            local::unfollow(&s, &c.to_string()).map_err(|e| CommandError::from_error(&*e))
        })
        .await?;
        self.stop_follower(c).await;
        Ok(())
    }

    /// Stops `c`'s follower, if it runs, and leaves its topic.
    pub(super) async fn stop_follower(&self, c: CollectionId) {
        let Some(f) = lock(&self.inner.followers).remove(&c) else {
            return;
        };
        f.stopped.store(true, Ordering::Relaxed);
        f.wake.notify_one();
        if let Err(e) = self.inner.client.unsubscribe(c).await {
            tracing::debug!(collection = %c, error = %e, "could not leave the topic");
        }
        tracing::info!(collection = %c, "no longer followed");
    }

    /// Starts following `c` for this run: subscribes to its topic and
    /// fetches each new version.
    pub(super) async fn start_follower(&self, c: CollectionId) -> Result<(), NodeError> {
        let new = match lock(&self.inner.followers).entry(c) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Arc::new(Follower::default()));
                true
            }
        };
        if new {
            self.inner.client.subscribe(c).await?;
            let t = self.inner.spawn(follow::run(
                self.inner.clone(),
                c,
                self.shutdown.subscribe(),
            ));
            lock(&self.tasks).push(t);
            // Ask the peers we already have.
            for p in self.inner.client.peers().await {
                self.inner
                    .spawn(latest::ask_all(self.inner.clone(), p.peer_id));
                self.inner
                    .spawn(mirrors::ask(self.inner.clone(), p.peer_id));
            }
        }
        Ok(())
    }

    /// After `follow` was recorded: starts the follower, has it fetch what
    /// its (possibly changed) paths now need, and dials the ticket's peers.
    pub(super) async fn followed(&self, r: &crate::control::FollowReport) -> Result<(), NodeError> {
        let Ok(c) = r.collection.parse::<CollectionId>() else {
            return Ok(());
        };
        self.start_follower(c).await?;
        if let Some(f) = lock(&self.inner.followers).get(&c) {
            f.repair.store(true, Ordering::Relaxed);
            f.wake.notify_one();
        }
        for p in r.peers.iter().filter_map(|p| p.parse::<Multiaddr>().ok()) {
            let client = self.inner.client.clone();
            self.inner.spawn(async move {
                if let Err(e) = client.dial(p.clone()).await {
                    tracing::info!(addr = %p, error = %e, "a peer from the ticket cannot be reached");
                }
            });
        }
        Ok(())
    }
}

/// Records what `specs` say in the store's followed set and returns the
/// collections to follow now (those recorded as followed and those named)
/// and the peers recorded with the followed ones.
pub(super) fn apply_follows(
    store: &Store,
    specs: &[FollowSpec],
) -> Result<(Vec<CollectionId>, Vec<Multiaddr>), StoreError> {
    use crate::store::{Interest, InterestState};
    let mut follow: Vec<CollectionId> = Vec::new();
    for spec in specs {
        let c = spec.collection;
        let old = store.interest(&c)?;
        let mut i = old.clone().unwrap_or(Interest {
            state: InterestState::Held,
            ..Interest::default()
        });
        if spec.remember || i.state == InterestState::Unfollowed {
            // Named again: not dropped by the next gc.
            i.state = if spec.remember {
                InterestState::Followed
            } else {
                InterestState::Held
            };
        }
        if let Some(only) = &spec.only {
            i.only = crate::filter::PathFilter::new(only)
                .map(|f| f.patterns().to_vec())
                .unwrap_or_else(|_| only.clone());
        }
        if spec.remember {
            for p in &spec.peers {
                let p = p.to_string();
                if !i.peers.contains(&p) {
                    i.peers.push(p);
                }
            }
        }
        if old.as_ref() != Some(&i) && (old.is_some() || spec.remember || spec.only.is_some()) {
            store.set_interest(&c, &i)?;
        }
        if !follow.contains(&c) {
            follow.push(c);
        }
    }
    let mut peers = Vec::new();
    for (c, i) in store.interests()? {
        if i.state != InterestState::Followed {
            continue;
        }
        if !follow.contains(&c) {
            follow.push(c);
        }
        peers.extend(i.peers.iter().filter_map(|p| p.parse::<Multiaddr>().ok()));
    }
    Ok((follow, peers))
}
