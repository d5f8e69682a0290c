//! Manifest rules, both formats, and golden encodings.

use super::*;

fn file(path: &str, data: &[u8]) -> Entry {
    let chunks = if data.is_empty() {
        vec![]
    } else {
        vec![ChunkRef {
            id: Hash::of(data),
            len: data.len() as u32,
        }]
    };
    Entry {
        path: path.into(),
        kind: EntryKind::File {
            size: data.len() as u64,
            executable: false,
            chunks,
            meta: Some(meta(data)),
        },
    }
}

fn meta(data: &[u8]) -> FileMeta {
    use sha2::Digest;
    FileMeta {
        modified: Timestamp {
            secs: 1_700_000_000,
            nanos: 500_000_000,
        },
        sha256: sha2::Sha256::digest(data).into(),
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Dir,
    }
}

fn check(entries: Vec<Entry>) -> Result<(), ManifestError> {
    Manifest::new(entries, ChunkerParams::default()).validate()
}

fn invalid_path(p: &str) -> bool {
    matches!(
        check(vec![file(p, b"x")]),
        Err(ManifestError::InvalidPath { .. })
    )
}

#[test]
fn round_trip_is_canonical() {
    let m = Manifest::new(
        vec![
            file("b/x.bin", b"hello"),
            dir("b"),
            link("a", "b/x.bin"),
            file("empty", b""),
        ],
        ChunkerParams::default(),
    );
    m.validate().unwrap();
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    assert_eq!(m.total_bytes(), 5);
    assert!(m.get("b/x.bin").is_some());
    assert!(m.get("nope").is_none());
}

#[test]
fn rejects_absolute_paths() {
    assert!(invalid_path("/etc/passwd"));
}

#[test]
fn rejects_dot_dot() {
    assert!(invalid_path("../x"));
    assert!(invalid_path("a/../../x"));
    assert!(invalid_path("a/./x"));
}

#[test]
fn rejects_empty_components_and_empty_paths() {
    assert!(invalid_path("a//b"));
    assert!(invalid_path("a/"));
    assert!(invalid_path(""));
}

#[test]
fn rejects_nul_and_overlong() {
    assert!(invalid_path("a\0b"));
    assert!(invalid_path(&"x".repeat(300)));
    assert!(invalid_path(&"abc/".repeat(1100)));
}

#[test]
fn rejects_duplicate_paths() {
    let mut m = Manifest::new(
        vec![file("a", b"1"), file("b", b"2")],
        ChunkerParams::default(),
    );
    m.entries[1].path = "a".into();
    assert_eq!(m.validate(), Err(ManifestError::DuplicatePath("a".into())));
}

#[test]
fn rejects_unsorted_paths() {
    let mut m = Manifest::new(
        vec![file("a", b"1"), file("b", b"2")],
        ChunkerParams::default(),
    );
    m.entries.swap(0, 1);
    assert!(matches!(m.validate(), Err(ManifestError::DuplicatePath(_))));
}

#[test]
fn rejects_paths_below_files_and_links() {
    assert!(matches!(
        check(vec![file("a", b"1"), file("a/b", b"2")]),
        Err(ManifestError::ParentNotDir(_))
    ));
    assert!(matches!(
        check(vec![link("a", "."), file("a/b", b"2")]),
        Err(ManifestError::ParentNotDir(_))
    ));
}

/// Targets are kept as the publisher stored them (mirrors never resolve
/// them on disk), so only their form is checked.
#[test]
fn symlink_targets_are_checked_for_form_only() {
    let bad = |e| matches!(check(e), Err(ManifestError::BadSymlink { .. }));
    assert!(bad(vec![link("a", "")]));
    assert!(bad(vec![link("a", "x\0y")]));
    assert!(bad(vec![link("a", &"x".repeat(MAX_PATH + 1))]));
    // Absolute and escaping targets: what `publish --symlinks keep` stores.
    assert!(check(vec![link("a", "/etc/passwd")]).is_ok());
    assert!(check(vec![dir("d"), link("d/a", "../../x")]).is_ok());
    assert!(check(vec![
        dir("d"),
        dir("d/e"),
        link("d/e/up", "../.."),
        link("z", "d/e/up/../..")
    ])
    .is_ok());
    assert!(check(vec![dir("d"), link("d/a", "../b"), file("b", b"1")]).is_ok());
    // And the encoding of a kept link round-trips.
    let m = Manifest::new(vec![link("a", "/usr/lib/x")], ChunkerParams::default());
    assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
}

#[test]
fn rejects_sizes_that_do_not_add_up() {
    let mut e = file("a", b"abc");
    if let EntryKind::File { size, .. } = &mut e.kind {
        *size = 4;
    }
    assert!(matches!(check(vec![e]), Err(ManifestError::BadSize { .. })));
}

#[test]
fn rejects_absurd_sizes() {
    let id = Hash::of(b"x");
    let huge = Entry {
        path: "big".into(),
        kind: EntryKind::File {
            size: MAX_FILE_SIZE + 1,
            executable: false,
            chunks: vec![ChunkRef { id, len: 1 }],
            meta: Some(meta(b"")),
        },
    };
    assert!(matches!(
        check(vec![huge]),
        Err(ManifestError::BadSize { .. })
    ));
    let oversized_chunk = Entry {
        path: "c".into(),
        kind: EntryKind::File {
            size: 64 << 20,
            executable: false,
            chunks: vec![ChunkRef { id, len: 64 << 20 }],
            meta: Some(meta(b"")),
        },
    };
    assert!(matches!(
        check(vec![oversized_chunk]),
        Err(ManifestError::BadSize { .. })
    ));
}

#[test]
fn rejects_unknown_format_and_chunker() {
    let mut m = Manifest::new(vec![], ChunkerParams::default());
    m.format = 9;
    assert_eq!(m.validate(), Err(ManifestError::UnsupportedFormat(9)));
    assert_eq!(
        Manifest::decode(&m.encode()),
        Err(ManifestError::UnsupportedFormat(9))
    );
    let mut m = Manifest::new(vec![], ChunkerParams::default());
    m.chunker.algorithm = "other".into();
    assert!(matches!(
        m.validate(),
        Err(ManifestError::UnsupportedChunker(_))
    ));
}

#[test]
fn rejects_garbage_and_non_canonical_bytes() {
    assert!(matches!(
        Manifest::decode(b"\xff\xff\xff"),
        Err(ManifestError::Malformed(_))
    ));
    let m = Manifest::new(vec![file("a", b"1")], ChunkerParams::default());
    let mut bytes = m.encode();
    bytes.push(0);
    assert!(matches!(
        Manifest::decode(&bytes),
        Err(ManifestError::Malformed(_))
    ));
}

/// The format 1 manifest of docs/protocol.md, section 9.3: still decodes,
/// keeps its encoding (so its id), and its files carry no metadata.
#[test]
fn old_format_golden_encoding_still_decodes() {
    let bytes = hex::decode(concat!(
        "0113666173746364632d76323032302d6c312d73308080108080408080800205",
        "01610207622f782e62696e01620007622f782e62696e01050001ea8f163db386",
        "82925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f0505656d7074",
        "79010000000672756e2e7368011201014b694fa6468140836e2f43625aca1150",
        "ec72032dc23a12e13416ca026c647ef312",
    ))
    .unwrap();
    let m = Manifest::decode(&bytes).unwrap();
    assert_eq!(m.format, FORMAT_V1);
    assert_eq!(m.entries.len(), 5);
    assert_eq!(
        m.get("a").unwrap().kind,
        EntryKind::Symlink {
            target: "b/x.bin".into()
        }
    );
    let EntryKind::File {
        size,
        executable,
        chunks,
        meta: run_meta,
    } = &m.get("run.sh").unwrap().kind
    else {
        panic!("run.sh is not a file");
    };
    assert_eq!(
        (*size, *executable, chunks.len(), *run_meta),
        (18, true, 1, None)
    );
    assert_eq!(m.encode(), bytes);
    assert_eq!(
        Hash::of(&bytes).to_hex(),
        "ab4ed6538565bc187e38bdecce9d488d72f6b5d6e9430d90abd6844615ec017c"
    );
    // A format 1 manifest cannot smuggle metadata in, nor a format 2 one leave it out.
    let mut with_meta = m.clone();
    if let EntryKind::File { meta: m, .. } = &mut with_meta.entries[2].kind {
        *m = Some(meta(b"hello"));
    }
    assert!(matches!(
        with_meta.validate(),
        Err(ManifestError::BadMeta { .. })
    ));
    let mut v2 = m.clone();
    v2.format = FORMAT;
    assert!(matches!(v2.validate(), Err(ManifestError::BadMeta { .. })));
}

/// The same tree in format 2 (docs/protocol.md, section 9.3), every file
/// modified at 1700000000.5.
#[test]
fn format_2_golden_encoding() {
    let mut exe = file("run.sh", b"#!/bin/sh\necho hi\n");
    if let EntryKind::File { executable, .. } = &mut exe.kind {
        *executable = true;
    }
    let m = Manifest::new(
        vec![
            link("a", "b/x.bin"),
            dir("b"),
            file("b/x.bin", b"hello"),
            file("empty", b""),
            exe,
        ],
        ChunkerParams::default(),
    );
    let bytes = m.encode();
    assert_eq!(hex::encode(&bytes), GOLDEN_V2);
    assert_eq!(bytes.len(), 271);
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    assert_eq!(Hash::of(&bytes).to_hex(), GOLDEN_V2_ID);
}

const GOLDEN_V2: &str = concat!(
    "0213666173746364632d76323032302d6c312d73308080108080408080800205",
    "01610207622f782e62696e01620007622f782e62696e01050080c49fd50c80ca",
    "b5ee012cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e7304336293",
    "8b982401ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c562",
    "4a67200f0505656d70747901000080c49fd50c80cab5ee01e3b0c44298fc1c14",
    "9afbf4c8996fb92427ae41e4649b934ca495991b7852b855000672756e2e7368",
    "01120180c49fd50c80cab5ee01299001868fb8c02fd431c336c6d058f5558c5d",
    "ff5b5af5e6fe04b870a6a9cbba014b694fa6468140836e2f43625aca1150ec72",
    "032dc23a12e13416ca026c647ef312",
);
const GOLDEN_V2_ID: &str = "8e200f26e1d6fa8c35d35615a1ee4766f0f80cb8b6072b9d338030461eefc237";

#[test]
fn metadata_rules() {
    let mut e = file("a", b"1");
    if let EntryKind::File {
        meta: Some(meta), ..
    } = &mut e.kind
    {
        meta.modified.nanos = 1_000_000_000;
    }
    assert!(matches!(check(vec![e]), Err(ManifestError::BadMeta { .. })));
    // Negative times (before 1970) are fine and survive a round trip.
    let mut e = file("b", b"2");
    if let EntryKind::File {
        meta: Some(meta), ..
    } = &mut e.kind
    {
        meta.modified = Timestamp {
            secs: -86_401,
            nanos: 7,
        };
    }
    let m = Manifest::new(vec![e], ChunkerParams::default());
    assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
}

#[test]
fn timestamps_convert_both_ways() {
    use std::time::{Duration, UNIX_EPOCH};
    for t in [
        UNIX_EPOCH + Duration::new(1_700_000_000, 123),
        UNIX_EPOCH - Duration::new(86_400, 250_000_000),
        UNIX_EPOCH,
    ] {
        let ts = Timestamp::from_system_time(t);
        assert!(ts.nanos < 1_000_000_000);
        assert_eq!(ts.to_system_time(), Some(t));
    }
    assert_eq!(
        Timestamp::from_system_time(UNIX_EPOCH - Duration::from_millis(1500)),
        Timestamp {
            secs: -2,
            nanos: 500_000_000
        }
    );
}

/// Every manifest size an announcement allows is cut into pieces that fit
/// one chunk list, with a chunker a node accepts.
#[test]
fn transfer_pieces_always_fit_one_list() {
    let max = crate::announce::MAX_MANIFEST_SIZE;
    for size in [
        1,
        4096,
        10 << 20,
        256 << 20,
        (256 << 20) + 1,
        1 << 30,
        max - 1,
        max,
    ] {
        let c = transfer_chunker(size);
        assert!(c.is_supported(), "{size}: {c:?}");
        // Every piece but the last is at least `min` bytes.
        assert!(
            size.div_ceil(u64::from(c.min)) <= MAX_PIECES,
            "{size}: {c:?}"
        );
    }
    assert_eq!(transfer_chunker(100 << 20).avg, 16 << 10);
    assert_eq!(transfer_chunker(max).min, 64 << 10);
}

/// Ten scattered entries of a 100,000-file manifest change: few of its
/// transfer pieces change (the default file chunker, 1 MiB on average,
/// changed nearly all of them).
#[test]
fn a_few_changed_entries_change_a_few_pieces() {
    let entries = |changed: &[usize]| {
        (0..100_000)
            .map(|i| {
                let body = if changed.contains(&i) {
                    format!("new {i}")
                } else {
                    format!("file {i}")
                };
                file(&format!("d{:03}/f{i:06}", i % 100), body.as_bytes())
            })
            .collect::<Vec<_>>()
    };
    let pieces = |m: &Manifest| {
        let bytes = m.encode();
        let chunker = transfer_chunker(bytes.len() as u64);
        let cut = crate::chunk::chunks(&bytes[..], Some(bytes.len() as u64), &chunker);
        cut.map(|c| {
            let c = c.unwrap();
            (c.id, c.data.len() as u64)
        })
        .collect::<std::collections::HashMap<_, _>>()
    };
    let old = Manifest::new(entries(&[]), ChunkerParams::default());
    let changed: Vec<usize> = (0..10).map(|k| 7 + k * 9_973).collect();
    let new = Manifest::new(entries(&changed), ChunkerParams::default());
    let (before, after) = (pieces(&old), pieces(&new));
    let size: u64 = after.values().sum();
    let moved: u64 = after
        .iter()
        .filter(|(id, _)| !before.contains_key(id))
        .map(|(_, len)| len)
        .sum();
    assert!(size > 8 << 20, "{size}");
    // About two pieces of 16 KiB per change; 3% leaves room for chance.
    assert!(moved * 100 <= size * 3, "{moved} of {size} bytes changed");
}
