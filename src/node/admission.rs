//! Admission: what the node does with gossip and with announcements a peer
//! hands it. Each announcement is decoded and verified once, here; the store
//! only records what was admitted. The verdict says whether gossip forwards
//! the message (accept), drops it quietly (ignore) or drops it and
//! penalises the sender (reject).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use libp2p::PeerId;

use crate::announce::{AnnounceError, SignedAnnouncement};
use crate::gossip::{GossipError, GossipMessage};
use crate::keys::CollectionId;
use crate::mirrors::{MirrorTable, RecordError, SignedMirrorRecord};
use crate::net::{RateLimiter, Verdict};
use crate::store::{Recorded, Store};
use crate::task::lock;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A newer announcement, now recorded as accepted.
    Announcement {
        /// Its collection.
        collection: CollectionId,
        /// Its version.
        version: u64,
        /// The collection's name, for the log.
        name: String,
        /// Bytes of the version's files, for the log.
        bytes: u64,
    },
    /// A note that a peer holds a version: a hint to refresh have-maps.
    Have {
        /// The topic's collection.
        collection: CollectionId,
    },
    /// A newer mirror record, now in the table.
    MirrorRecord {
        /// Its collection.
        collection: CollectionId,
        /// The mirror.
        peer: PeerId,
    },
}

impl Accepted {
    /// The collection it concerns.
    pub fn collection(&self) -> CollectionId {
        match self {
            Accepted::Announcement { collection, .. }
            | Accepted::Have { collection }
            | Accepted::MirrorRecord { collection, .. } => *collection,
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
    /// A `Have` note whose holder is not the peer that signed it: no honest
    /// node speaks for another.
    #[error("have note for holder {holder} signed by {author}")]
    HaveNotFromHolder {
        /// The claimed holder (as decoded, or the raw bytes in hex).
        holder: String,
        /// The message's author, if any.
        author: String,
    },
    /// A `Have` note that adds nothing: a version not accepted here (yet),
    /// or one this holder already reported.
    #[error("have note for version {version} adds nothing")]
    HaveAddsNothing {
        /// The version it names.
        version: u64,
    },
    /// The relaying peer sent more `Have` notes than its rate allows.
    #[error("too many have notes from this peer")]
    HaveRate,
    /// A mirror record that does not decode or verify, is expired, not
    /// from its mirror, or a replay.
    #[error(transparent)]
    MirrorRecord(RecordError),
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

/// Most (collection, holder) pairs remembered by a [`HaveFilter`]; beyond
/// this the oldest half is forgotten (a forgotten holder's next note counts
/// as new once, which costs one forward).
const MAX_HOLDERS: usize = 8192;

/// Whether a gossip payload is a `Have` note: low priority for the network,
/// which sheds these first when the node is busy.
pub(crate) fn is_have(data: &[u8]) -> bool {
    // The variant index leads as a varint; `Have` is 1.
    data.first() == Some(&1)
}

/// What `Have` admission remembers: the newest version each holder
/// reported per collection, and each relaying peer's rate.
pub(crate) struct HaveFilter {
    inner: Mutex<HaveState>,
}

struct HaveState {
    rate: RateLimiter<PeerId>,
    seen: HashMap<(CollectionId, PeerId), (u64, u64)>,
    /// Insertion counter, to forget the oldest entries first.
    tick: u64,
}

impl HaveFilter {
    /// Takes `per_sec` notes per second (bursts of twice that) from each
    /// relaying peer; 0: unlimited.
    pub(crate) fn new(per_sec: u32) -> Self {
        HaveFilter {
            inner: Mutex::new(HaveState {
                rate: RateLimiter::new(per_sec, per_sec.saturating_mul(2)),
                seen: HashMap::new(),
                tick: 0,
            }),
        }
    }
}

/// The gossip message as received: its topic's collection, who relayed it,
/// who signed it, and its bytes.
pub(crate) struct Received<'a> {
    /// The topic's collection.
    pub(crate) topic: CollectionId,
    /// The peer that relayed it to us.
    pub(crate) source: PeerId,
    /// The peer that signed it.
    pub(crate) author: Option<PeerId>,
    /// The payload.
    pub(crate) data: &'a [u8],
}

/// Admits a gossip message.
pub(crate) fn gossip(
    store: &Store,
    followed: &dyn Fn(&CollectionId) -> bool,
    haves: &HaveFilter,
    mirrors: &MirrorTable,
    msg: Received<'_>,
    now: u64,
) -> Admission {
    match GossipMessage::decode(msg.data) {
        // Newer nodes may speak kinds this one does not know.
        Err(e @ GossipError::UnknownKind(_)) => Admission::Ignore(Reason::Gossip(e)),
        Err(e) => Admission::Reject(Reason::Gossip(e)),
        Ok(GossipMessage::Have { version, holder }) => have(
            store,
            followed,
            haves,
            &msg,
            version,
            &holder,
            Instant::now(),
        ),
        Ok(GossipMessage::Announce(bytes)) => {
            announcement(store, followed, Some(msg.topic), &bytes, now)
        }
        Ok(GossipMessage::Mirror(bytes)) => mirror_record(
            mirrors,
            followed,
            msg.topic,
            RecordSource::Gossip(msg.author),
            &bytes,
            now,
        ),
    }
}

/// Where a mirror record came from.
pub(crate) enum RecordSource {
    /// Gossip written (and signed) by this peer: it must be the record's.
    Gossip(Option<PeerId>),
    /// A peer's answer to a request for a collection's records: any
    /// mirror's records, vouched for by their own signatures.
    Answer,
}

/// Admits an encoded mirror record of `collection` (the gossip topic's,
/// or the one asked for). Refused, penalising the sender: undecodable,
/// out of range, a bad signature, signed by another key than its peer's,
/// for another collection, or gossiped by another peer than its own.
/// Ignored: expired, not followed here, or not newer than the record
/// already taken from that mirror (a replay). Accepted ones go into the
/// table.
pub(crate) fn mirror_record(
    table: &MirrorTable,
    followed: &dyn Fn(&CollectionId) -> bool,
    collection: CollectionId,
    source: RecordSource,
    bytes: &[u8],
    now: u64,
) -> Admission {
    let r = match SignedMirrorRecord::decode(bytes, now) {
        Ok(r) => r,
        Err(e @ RecordError::Expired(_)) => return Admission::Ignore(Reason::MirrorRecord(e)),
        Err(e) => return Admission::Reject(Reason::MirrorRecord(e)),
    };
    let c = r.body.collection;
    if c != collection {
        return Admission::Reject(Reason::WrongTopic(c));
    }
    let peer = r.body.peer_id();
    if let (RecordSource::Gossip(author), Some(peer)) = (&source, peer) {
        if *author != Some(peer) {
            return Admission::Reject(Reason::MirrorRecord(RecordError::NotFromAuthor {
                peer: peer.to_string(),
                author: author.map_or_else(|| "nobody".into(), |a| a.to_string()),
            }));
        }
    }
    if !followed(&c) {
        return Admission::Ignore(Reason::NotFollowed(c));
    }
    match (table.insert(r, now), peer) {
        (Ok(()), Some(peer)) => Admission::Accept(Accepted::MirrorRecord {
            collection: c,
            peer,
        }),
        (Ok(()), None) => Admission::Reject(Reason::MirrorRecord(RecordError::OutOfRange("peer"))),
        (Err(e), _) => Admission::Ignore(Reason::MirrorRecord(e)),
    }
}

/// Admits a `Have` note: accepted (and so forwarded) only if its author
/// is its holder, it names a version accepted here, that holder has not
/// reported it (or a newer one) before, and the relaying peer is within
/// its rate. Anything that adds nothing is ignored.
fn have(
    store: &Store,
    followed: &dyn Fn(&CollectionId) -> bool,
    haves: &HaveFilter,
    msg: &Received<'_>,
    version: u64,
    holder: &[u8],
    now: Instant,
) -> Admission {
    let c = msg.topic;
    if !followed(&c) {
        return Admission::Ignore(Reason::NotFollowed(c));
    }
    let holder_id = PeerId::from_bytes(holder).ok();
    let Some(holder_id) = holder_id.filter(|h| Some(*h) == msg.author) else {
        return Admission::Reject(Reason::HaveNotFromHolder {
            holder: holder_id.map_or_else(|| hex::encode(holder), |h| h.to_string()),
            author: msg
                .author
                .map_or_else(|| "nobody".into(), |a| a.to_string()),
        });
    };
    let mut st = lock(&haves.inner);
    if !st.rate.check(&msg.source, now) {
        return Admission::Ignore(Reason::HaveRate);
    }
    let accepted = match store.latest(&c) {
        Ok(Some(a)) => a.body.version,
        Ok(None) => 0,
        Err(e) => return Admission::Ignore(Reason::Local(e.to_string())),
    };
    let known = st.seen.get(&(c, holder_id)).map_or(0, |(v, _)| *v);
    if version > accepted || version <= known {
        return Admission::Ignore(Reason::HaveAddsNothing { version });
    }
    if st.seen.len() >= MAX_HOLDERS {
        let mut ticks: Vec<u64> = st.seen.values().map(|(_, t)| *t).collect();
        ticks.sort_unstable();
        let cut = ticks[ticks.len() / 2];
        st.seen.retain(|_, (_, t)| *t > cut);
    }
    st.tick += 1;
    let tick = st.tick;
    st.seen.insert((c, holder_id), (version, tick));
    Admission::Accept(Accepted::Have { collection: c })
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
            name: a.body.name.clone(),
            bytes: a.body.total_bytes,
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

        let haves = HaveFilter::new(0);
        let peer = PeerId::random();
        let gossip = |store: &Store, f: &dyn Fn(&CollectionId) -> bool, c, data: &[u8], t| {
            let msg = Received {
                topic: c,
                source: peer,
                author: Some(peer),
                data,
            };
            super::gossip(store, f, &haves, &MirrorTable::default(), msg, t)
        };
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
        // A have note from its holder, for an accepted version.
        let have = GossipMessage::Have {
            version: 1,
            holder: peer.to_bytes(),
        }
        .encode();
        assert!(is_have(&have));
        assert!(!is_have(&gossip_of(&v2)));
        assert!(matches!(
            gossip(&store, &all, c, &have, t),
            Admission::Accept(Accepted::Have { .. })
        ));
    }

    fn have_note(version: u64, holder: &PeerId) -> Vec<u8> {
        GossipMessage::Have {
            version,
            holder: holder.to_bytes(),
        }
        .encode()
    }

    #[test]
    fn have_notes_must_come_from_their_holder_and_add_something() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = MasterKey::generate();
        let c = key.collection();
        let t = now();
        store
            .record_announcement(&signed(&key, 3, t + 100))
            .unwrap();
        let all = |_: &CollectionId| true;
        let haves = HaveFilter::new(0);
        let (relay, holder) = (PeerId::random(), PeerId::random());
        let admit = |data: &[u8], author: Option<PeerId>| {
            let msg = Received {
                topic: c,
                source: relay,
                author,
                data,
            };
            gossip(&store, &all, &haves, &MirrorTable::default(), msg, t)
        };
        // Relayed by another peer, written by its holder: fine, once.
        let a = admit(&have_note(2, &holder), Some(holder));
        assert!(
            matches!(a, Admission::Accept(Accepted::Have { .. })),
            "{a:?}"
        );
        for (v, why) in [(2, "again"), (1, "older"), (4, "not accepted here")] {
            let a = admit(&have_note(v, &holder), Some(holder));
            assert!(
                matches!(a, Admission::Ignore(Reason::HaveAddsNothing { .. })),
                "{why}: {a:?}"
            );
        }
        assert!(matches!(
            admit(&have_note(3, &holder), Some(holder)),
            Admission::Accept(_)
        ));
        // Speaking for someone else, or for no valid peer id: rejected.
        let a = admit(&have_note(3, &PeerId::random()), Some(holder));
        assert!(
            matches!(a, Admission::Reject(Reason::HaveNotFromHolder { .. })),
            "{a:?}"
        );
        let junk = GossipMessage::Have {
            version: 1,
            holder: vec![1, 2, 3],
        }
        .encode();
        assert_eq!(admit(&junk, Some(holder)).verdict(), Verdict::Reject);
        assert_eq!(
            admit(&have_note(3, &holder), None).verdict(),
            Verdict::Reject
        );
    }

    #[test]
    fn have_notes_are_rate_limited_per_relay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = MasterKey::generate();
        let c = key.collection();
        let t = now();
        store
            .record_announcement(&signed(&key, 1, t + 100))
            .unwrap();
        let all = |_: &CollectionId| true;
        let haves = HaveFilter::new(1);
        let flooder = PeerId::random();
        let accepted = (0..10)
            .filter(|_| {
                // A fresh holder each time: only the rate stops them.
                let holder = PeerId::random();
                let msg = Received {
                    topic: c,
                    source: flooder,
                    author: Some(holder),
                    data: &have_note(1, &holder),
                };
                let table = MirrorTable::default();
                matches!(
                    gossip(&store, &all, &haves, &table, msg, t),
                    Admission::Accept(_)
                )
            })
            .count();
        assert_eq!(accepted, 2, "one per second, bursts of two");
        let other = PeerId::random();
        let msg = Received {
            topic: c,
            source: other,
            author: Some(other),
            data: &have_note(1, &other),
        };
        assert!(matches!(
            gossip(&store, &all, &haves, &MirrorTable::default(), msg, t),
            Admission::Accept(_)
        ));
    }
}
