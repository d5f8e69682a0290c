//! Mirror records through admission: each check refuses what it must, and
//! a test here fails when any one of them is removed.

use libp2p::identity::Keypair;
use libp2p::PeerId;

use super::record::*;
use super::table::MirrorTable;
use crate::keys::CollectionId;
use crate::net::Verdict;
use crate::node::admission::{mirror_record, Accepted, Admission, Reason, RecordSource};

const NOW: u64 = 1_700_000_000;

fn body(key: &Keypair, c: CollectionId, seq: u64) -> MirrorRecord {
    MirrorRecord {
        peer: key.public().to_peer_id().to_bytes(),
        url: "http://127.0.0.1:8080".into(),
        region: "DE".into(),
        prefer: vec![Prefix::from_net(&"10.1.0.0/16".parse().unwrap())],
        capacity_mbps: 1000,
        collection: c,
        version: 3,
        seq,
        issued_at: NOW,
        expires_at: NOW + 3600,
    }
}

fn admit(table: &MirrorTable, c: CollectionId, author: Option<PeerId>, r: &[u8]) -> Admission {
    mirror_record(table, &|_| true, c, RecordSource::Gossip(author), r, NOW)
}

#[test]
fn a_valid_record_is_taken_and_handed_on() {
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let c = CollectionId([7; 32]);
    let table = MirrorTable::default();
    let r = body(&key, c, 1).sign(&key).unwrap().encode();
    let a = admit(&table, c, Some(me), &r);
    assert!(
        matches!(a, Admission::Accept(Accepted::MirrorRecord { peer, .. }) if peer == me),
        "{a:?}"
    );
    let held = table.of(&c, NOW);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].encoded, r);
    assert_eq!(
        held[0].prefer,
        vec!["10.1.0.0/16".parse::<ipnet::IpNet>().unwrap()]
    );
    // From an answer, anyone may hand it on.
    let other = MirrorTable::default();
    let a = mirror_record(&other, &|_| true, c, RecordSource::Answer, &r, NOW);
    assert!(matches!(a, Admission::Accept(_)));
    // Expired records are not handed out or used.
    assert!(table.of(&c, NOW + 3600).is_empty());
}

#[test]
fn bad_signatures_are_rejected() {
    let key = Keypair::generate_ed25519();
    let c = CollectionId([7; 32]);
    let mut s = body(&key, c, 1).sign(&key).unwrap();
    s.signature[10] ^= 1;
    let a = admit(
        &MirrorTable::default(),
        c,
        Some(key.public().to_peer_id()),
        &s.encode(),
    );
    assert!(
        matches!(
            a,
            Admission::Reject(Reason::MirrorRecord(RecordError::BadSignature))
        ),
        "{a:?}"
    );
    // A field changed after signing.
    let mut s = body(&key, c, 1).sign(&key).unwrap();
    s.body.url = "http://evil.example".into();
    let a = admit(
        &MirrorTable::default(),
        c,
        Some(key.public().to_peer_id()),
        &s.encode(),
    );
    assert_eq!(a.verdict(), Verdict::Reject);
}

#[test]
fn a_record_in_another_nodes_name_is_rejected() {
    // The attacker signs, correctly, with its own key a record that names
    // the victim's peer id: only the signer check stands in the way.
    let victim = Keypair::generate_ed25519();
    let attacker = Keypair::generate_ed25519();
    let c = CollectionId([7; 32]);
    let forged = body(&victim, c, 1).sign(&attacker).unwrap().encode();
    let a = admit(
        &MirrorTable::default(),
        c,
        Some(victim.public().to_peer_id()),
        &forged,
    );
    assert!(
        matches!(
            a,
            Admission::Reject(Reason::MirrorRecord(RecordError::SignerMismatch { .. }))
        ),
        "{a:?}"
    );
    let a = mirror_record(
        &MirrorTable::default(),
        &|_| true,
        c,
        RecordSource::Answer,
        &forged,
        NOW,
    );
    assert_eq!(a.verdict(), Verdict::Reject);
    // A genuine record gossiped by someone else than its mirror.
    let genuine = body(&victim, c, 1).sign(&victim).unwrap().encode();
    let a = admit(
        &MirrorTable::default(),
        c,
        Some(attacker.public().to_peer_id()),
        &genuine,
    );
    assert!(
        matches!(
            a,
            Admission::Reject(Reason::MirrorRecord(RecordError::NotFromAuthor { .. }))
        ),
        "{a:?}"
    );
}

#[test]
fn expired_records_are_ignored() {
    let key = Keypair::generate_ed25519();
    let c = CollectionId([7; 32]);
    let mut b = body(&key, c, 1);
    b.issued_at = NOW - 100;
    b.expires_at = NOW;
    let r = b.sign(&key).unwrap().encode();
    let table = MirrorTable::default();
    let a = admit(&table, c, Some(key.public().to_peer_id()), &r);
    assert!(
        matches!(
            a,
            Admission::Ignore(Reason::MirrorRecord(RecordError::Expired(_)))
        ),
        "{a:?}"
    );
    assert!(table.is_empty());
}

#[test]
fn replayed_records_are_ignored() {
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let c = CollectionId([7; 32]);
    let table = MirrorTable::default();
    let r5 = body(&key, c, 5).sign(&key).unwrap().encode();
    assert!(matches!(
        admit(&table, c, Some(me), &r5),
        Admission::Accept(_)
    ));
    let mut older = body(&key, c, 4);
    older.version = 9;
    let r4 = older.sign(&key).unwrap().encode();
    for (r, why) in [(&r5, "again"), (&r4, "older")] {
        let a = admit(&table, c, Some(me), r);
        assert!(
            matches!(
                a,
                Admission::Ignore(Reason::MirrorRecord(RecordError::Replayed { .. }))
            ),
            "{why}: {a:?}"
        );
    }
    assert_eq!(
        table.of(&c, NOW)[0].record.body.version,
        3,
        "the older one did not replace it"
    );
    let r6 = body(&key, c, 6).sign(&key).unwrap().encode();
    assert!(matches!(
        admit(&table, c, Some(me), &r6),
        Admission::Accept(_)
    ));
}

#[test]
fn fields_topics_and_encodings_are_checked() {
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let c = CollectionId([7; 32]);
    let table = MirrorTable::default();
    let reject = |b: MirrorRecord, what: &str| {
        let a = admit(&table, c, Some(me), &b.sign(&key).unwrap().encode());
        assert_eq!(a.verdict(), Verdict::Reject, "{what}: {a:?}");
    };
    for url in [
        "ftp://x",
        "http://",
        "http://x/",
        "http://x?y",
        "http://a b",
        "http://u@x",
    ] {
        let mut b = body(&key, c, 1);
        b.url = url.into();
        reject(b, url);
    }
    let mut b = body(&key, c, 1);
    b.region = "no spaces".into();
    reject(b, "region");
    let mut b = body(&key, c, 1);
    b.prefer = vec![Prefix {
        addr: vec![1, 2, 3],
        len: 8,
    }];
    reject(b, "prefix");
    let mut b = body(&key, c, 1);
    b.prefer = vec![Prefix {
        addr: vec![10, 0, 0, 0],
        len: 33,
    }];
    reject(b, "prefix length");
    let mut b = body(&key, c, 1);
    b.expires_at = NOW + MAX_LIFETIME + 1;
    reject(b, "lifetime");
    let mut b = body(&key, c, 1);
    b.issued_at = NOW + MAX_SKEW + 1;
    b.expires_at = b.issued_at + 10;
    reject(b, "from the future");
    // Another collection than the topic's.
    let r = body(&key, CollectionId([8; 32]), 1)
        .sign(&key)
        .unwrap()
        .encode();
    assert!(matches!(
        admit(&table, c, Some(me), &r),
        Admission::Reject(Reason::WrongTopic(_))
    ));
    // Not followed here: ignored.
    let r = body(&key, c, 1).sign(&key).unwrap().encode();
    let a = mirror_record(
        &table,
        &|_| false,
        c,
        RecordSource::Gossip(Some(me)),
        &r,
        NOW,
    );
    assert!(
        matches!(a, Admission::Ignore(Reason::NotFollowed(_))),
        "{a:?}"
    );
    // Trailing bytes, garbage, oversize.
    let mut t = r.clone();
    t.push(0);
    for bad in [t, vec![1, 2, 3], vec![0; MAX_ENCODED + 1]] {
        assert_eq!(admit(&table, c, Some(me), &bad).verdict(), Verdict::Reject);
    }
    assert!(table.is_empty());
}

#[test]
fn the_table_is_bounded_and_evicts_the_oldest() {
    let c = CollectionId([7; 32]);
    let table = MirrorTable::with_capacity(2);
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    for k in &keys {
        table.insert(body(k, c, 1).sign(k).unwrap(), NOW).unwrap();
    }
    assert_eq!(table.len(), 2);
    let first = keys[0].public().to_peer_id();
    assert!(table.get(&first, &c).is_none(), "the oldest was evicted");
    assert!(table.get(&keys[2].public().to_peer_id(), &c).is_some());
    // Expired records go first.
    let table = MirrorTable::with_capacity(2);
    let mut old = body(&keys[0], c, 1);
    old.expires_at = NOW + 1;
    table.insert(old.sign(&keys[0]).unwrap(), NOW).unwrap();
    table
        .insert(body(&keys[1], c, 1).sign(&keys[1]).unwrap(), NOW)
        .unwrap();
    table
        .insert(body(&keys[2], c, 1).sign(&keys[2]).unwrap(), NOW + 2)
        .unwrap();
    assert!(table.get(&keys[1].public().to_peer_id(), &c).is_some());
    assert!(table.get(&keys[0].public().to_peer_id(), &c).is_none());
}

/// The vector in docs/protocol.md section 9.9.
#[test]
fn test_vector() {
    let key = Keypair::ed25519_from_bytes([42u8; 32]).unwrap();
    let c: CollectionId = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        .parse()
        .unwrap();
    let mut b = body(&key, c, 1_700_000_000_000);
    b.url = "https://mirror.example.org".into();
    let s = b.sign(&key).unwrap();
    let enc = s.encode();
    let gossip = crate::gossip::GossipMessage::Mirror(enc.clone()).encode();
    println!(
        "record {}\ngossip {}",
        hex::encode(&enc),
        hex::encode(&gossip)
    );
    println!("message id {}", blake3::hash(&gossip).to_hex());
    assert_eq!(SignedMirrorRecord::decode(&enc, NOW).unwrap(), s);
    assert_eq!(hex::encode(&enc), VECTOR);
}

const VECTOR: &str = "26002408011220197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d611a68747470733a2f2f6d6972726f722e6578616d706c652e6f726702444501040a01000010e80703a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b80380d095ffbc3180e2cfaa0690fecfaa0620197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d6140f2c948d791432de9f7e65919aaa8f98085b399f3764a94701614c83dffcbc19b66049d7a68f92d0c49391e22495f52d7cd90c1a47c3d67c4aa0a49342e516f0c";

#[test]
fn the_clients_region_comes_from_the_query_then_geoip() {
    let db = super::geoip::test_db(&[("127.0.0.3/32".parse().unwrap(), "DE")]);
    let m = super::Mirrors::new(PeerId::random(), Default::default())
        .unwrap()
        .with_geoip(super::GeoIp::from_bytes(db).unwrap());
    let de: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let other: std::net::IpAddr = "127.0.0.4".parse().unwrap();
    assert_eq!(m.client_region(Some(de), None).as_deref(), Some("DE"));
    assert_eq!(m.client_region(Some(other), None), None);
    assert_eq!(m.client_region(Some(de), Some("fr")).as_deref(), Some("fr"));
    // A query that is no label is ignored.
    assert_eq!(
        m.client_region(Some(de), Some("a b")).as_deref(),
        Some("DE")
    );
    let plain = super::Mirrors::new(PeerId::random(), Default::default()).unwrap();
    assert_eq!(plain.client_region(Some(de), None), None);
}
