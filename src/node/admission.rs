//! Admission: what the node does with gossip and with announcements a peer
//! hands it. Each announcement is decoded and verified once, here; the store
//! only records what was admitted. The verdict says whether gossip forwards
//! the message (accept), drops it quietly (ignore) or drops it and
//! penalises the sender (reject).

use crate::announce::{AnnounceError, SignedAnnouncement};
use crate::gossip::{GossipError, GossipMessage};
use crate::keys::CollectionId;
use crate::net::Verdict;
use crate::store::{Recorded, Store};

/// The outcome of admitting a message.
#[derive(Debug)]
pub enum Admission {
    /// Valid and useful here: forward it; the collection's follower is woken.
    Accept(Accepted),
    /// Not for us or not new; no one is at fault.
    Ignore(Reason),
    /// Invalid: the sender relayed something no honest node would.
    Reject(Reason),
}

/// What was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A newer announcement, now recorded as accepted.
    Announcement {
        /// Its collection.
        collection: CollectionId,
        /// Its version.
        version: u64,
    },
    /// A note that a peer holds a version: a hint to refresh have-maps.
    Have {
        /// The topic's collection.
        collection: CollectionId,
    },
}

impl Accepted {
    /// The collection it concerns.
    pub fn collection(&self) -> CollectionId {
        match *self {
            Accepted::Announcement { collection, .. } | Accepted::Have { collection } => collection,
        }
    }
}

/// Why a message was ignored or rejected.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// Gossip bytes that do not decode.
    #[error(transparent)]
    Gossip(GossipError),
    /// An announcement that does not decode or verify.
    #[error(transparent)]
    Announcement(AnnounceError),
    /// A signed announcement of another collection than the topic's.
    #[error("announcement of collection {0} on another collection's topic")]
    WrongTopic(CollectionId),
    /// A collection this node does not follow.
    #[error("collection {0} is not followed here")]
    NotFollowed(CollectionId),
    /// Not newer than what was accepted: a replay or a rollback.
    #[error("version {version} is not newer than accepted version {accepted}")]
    NotNewer {
        /// The announced version.
        version: u64,
        /// The newest accepted version.
        accepted: u64,
    },
    /// Valid, but it could not be recorded (disk full, ...).
    #[error("could not record it: {0}")]
    Local(String),
}

impl Admission {
    /// The gossip verdict.
    pub fn verdict(&self) -> Verdict {
        match self {
            Admission::Accept(_) => Verdict::Accept,
            Admission::Ignore(_) => Verdict::Ignore,
            Admission::Reject(_) => Verdict::Reject,
        }
    }
}

/// Admits a gossip message received on `topic`'s topic.
pub(crate) fn gossip(
    store: &Store,
    followed: &dyn Fn(&CollectionId) -> bool,
    topic: CollectionId,
    data: &[u8],
    now: u64,
) -> Admission {
    match GossipMessage::decode(data) {
        // Newer nodes may speak kinds this one does not know.
        Err(e @ GossipError::UnknownKind(_)) => Admission::Ignore(Reason::Gossip(e)),
        Err(e) => Admission::Reject(Reason::Gossip(e)),
        Ok(GossipMessage::Have { .. }) => Admission::Accept(Accepted::Have { collection: topic }),
        Ok(GossipMessage::Announce(bytes)) => {
            announcement(store, followed, Some(topic), &bytes, now)
        }
    }
}

/// Admits an encoded announcement, from gossip on `topic` or from a peer's
/// answer to a latest-announcement request (`topic` is then the collection
/// asked for).
pub(crate) fn announcement(
    store: &Store,
    followed: &dyn Fn(&CollectionId) -> bool,
    topic: Option<CollectionId>,
    bytes: &[u8],
    now: u64,
) -> Admission {
    let a = match SignedAnnouncement::decode(bytes, now) {
        Ok(a) => a,
        // Genuine but old: whoever relayed it may simply be behind.
        Err(e @ AnnounceError::Expired { .. }) => {
            return Admission::Ignore(Reason::Announcement(e))
        }
        Err(e) => return Admission::Reject(Reason::Announcement(e)),
    };
    let c = a.body.collection;
    if topic.is_some_and(|t| t != c) {
        return Admission::Reject(Reason::WrongTopic(c));
    }
    if !followed(&c) {
        return Admission::Reject(Reason::NotFollowed(c));
    }
    match store.record_announcement(&a) {
        Ok(Recorded::New) => Admission::Accept(Accepted::Announcement {
            collection: c,
            version: a.body.version,
        }),
        Ok(Recorded::NotNewer { accepted }) => Admission::Ignore(Reason::NotNewer {
            version: a.body.version,
            accepted,
        }),
        Err(e) => Admission::Ignore(Reason::Local(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::{now, Announcement};
    use crate::keys::MasterKey;

    fn signed(key: &MasterKey, version: u64, expires_at: u64) -> SignedAnnouncement {
        Announcement {
            collection: key.collection(),
            name: "c".into(),
            version,
            manifest: crate::hash::Hash::of(b"m"),
            manifest_size: 10,
            total_bytes: 0,
            files: 0,
            published_at: 1,
            expires_at,
        }
        .sign(key)
    }

    #[test]
    fn verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = MasterKey::generate();
        let c = key.collection();
        let all = |_: &CollectionId| true;
        let t = now();
        let v2 = signed(&key, 2, t + 100).encode();
        let gossip_of = |b: &[u8]| GossipMessage::Announce(b.to_vec()).encode();

        let a = gossip(&store, &all, c, &gossip_of(&v2), t);
        assert!(matches!(
            a,
            Admission::Accept(Accepted::Announcement { version: 2, .. })
        ));
        assert_eq!(store.latest(&c).unwrap().unwrap().body.version, 2);
        // Replay and rollback: ignored, nothing recorded.
        let a = gossip(&store, &all, c, &gossip_of(&v2), t);
        assert!(
            matches!(a, Admission::Ignore(Reason::NotNewer { .. })),
            "{a:?}"
        );
        let v1 = signed(&key, 1, t + 100).encode();
        assert_eq!(
            gossip(&store, &all, c, &gossip_of(&v1), t).verdict(),
            Verdict::Ignore
        );
        // Expired: ignored.
        let old = signed(&key, 3, t - 1).encode();
        assert!(matches!(
            announcement(&store, &all, Some(c), &old, t),
            Admission::Ignore(Reason::Announcement(AnnounceError::Expired { .. }))
        ));
        // Forged: a version of c signed by another key.
        let other = MasterKey::generate();
        let mut forged = signed(&other, 9, t + 100);
        forged.body.collection = c;
        let a = announcement(&store, &all, Some(c), &forged.encode(), t);
        assert!(
            matches!(
                a,
                Admission::Reject(Reason::Announcement(AnnounceError::BadSignature(_)))
            ),
            "{a:?}"
        );
        assert_eq!(store.latest(&c).unwrap().unwrap().body.version, 2);
        // Valid, but on another collection's topic, or not followed.
        let theirs = signed(&other, 1, t + 100).encode();
        assert!(matches!(
            announcement(&store, &all, Some(c), &theirs, t),
            Admission::Reject(Reason::WrongTopic(_))
        ));
        let none = |_: &CollectionId| false;
        assert!(matches!(
            announcement(&store, &none, None, &theirs, t),
            Admission::Reject(Reason::NotFollowed(_))
        ));
        // Gossip framing: unknown kinds are ignored, garbage rejected.
        assert!(matches!(
            gossip(&store, &all, c, &[7, 1, 2], t),
            Admission::Ignore(Reason::Gossip(GossipError::UnknownKind(7)))
        ));
        assert_eq!(
            gossip(&store, &all, c, &[0, 200], t).verdict(),
            Verdict::Reject
        );
        let have = GossipMessage::Have {
            version: 1,
            holder: vec![1],
        }
        .encode();
        assert!(matches!(
            gossip(&store, &all, c, &have, t),
            Admission::Accept(Accepted::Have { .. })
        ));
    }
}
