//! From a request path to an entry of a manifest.
//!
//! A request path is split on `/` *before* percent-decoding, and a segment
//! that decodes to `.`, `..`, or anything holding `/` or NUL is refused, so
//! no spelling of a path (`..`, `%2e%2e`, `%2f`) can climb out of a
//! collection. The rest is looked up in the manifest only, never on a file
//! system. Symlinks are followed the way the manifest describes them:
//! lexically, inside the tree, at most [`MAX_HOPS`] times.

use crate::manifest::{EntryKind, Manifest};

/// Longest request path accepted, in bytes (before decoding): longer is 414.
pub const MAX_REQUEST_PATH: usize = 8192;
/// Symlinks followed while resolving one path (as Linux's MAXSYMLINKS).
pub const MAX_HOPS: usize = 40;

/// A request path split into decoded segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPath {
    /// Decoded, non-empty segments (empty ones from `//` are dropped).
    pub segments: Vec<String>,
    /// Whether the path ends with `/` (directories are served only so, for
    /// relative links in listings to work).
    pub trailing_slash: bool,
}

/// Why a request path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_REQUEST_PATH`].
    #[error("request path too long")]
    TooLong,
    /// Not an absolute path, a bad `%` escape, or not UTF-8 once decoded.
    #[error("malformed request path")]
    Malformed,
    /// A `.` or `..` segment, or an encoded `/` or NUL.
    #[error("request path tries to leave its directory")]
    Traversal,
}

/// Splits and decodes a request path (the path part of the URI, without
/// the query).
pub fn parse(raw: &str) -> Result<RequestPath, PathError> {
    if raw.len() > MAX_REQUEST_PATH {
        return Err(PathError::TooLong);
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::Malformed);
    };
    let mut segments = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            continue;
        }
        let bytes = decode(seg).ok_or(PathError::Malformed)?;
        if bytes.contains(&b'/') || bytes.contains(&0) {
            return Err(PathError::Traversal);
        }
        let s = String::from_utf8(bytes).map_err(|_| PathError::Malformed)?;
        if s == "." || s == ".." {
            return Err(PathError::Traversal);
        }
        segments.push(s);
    }
    Ok(RequestPath {
        trailing_slash: raw.len() > 1 && raw.ends_with('/'),
        segments,
    })
}

/// Strict percent-decoding: a `%` must be followed by two hex digits.
fn decode(seg: &str) -> Option<Vec<u8>> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Where a path leads in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file: its index in `manifest.entries`.
    File(usize),
    /// A directory (listed, or implied by the paths below it): its path,
    /// empty for the root.
    Dir(String),
    /// Nothing there (including links that dangle or would leave the tree).
    NotFound,
    /// More than [`MAX_HOPS`] symlinks.
    TooManyLinks,
}

/// Resolves `segments` (already checked by [`parse`]) in `m`, following
/// symlinks lexically from the link's directory.
pub fn resolve(m: &Manifest, segments: &[String]) -> Resolved {
    let mut pending: Vec<String> = segments.iter().rev().cloned().collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                // Only link targets get here; the root has no parent.
                if at.pop().is_none() {
                    return Resolved::NotFound;
                }
                continue;
            }
            _ => {}
        }
        at.push(c);
        let path = at.join("/");
        match index_of(m, &path).map(|i| (i, &m.entries[i].kind)) {
            Some((_, EntryKind::Dir)) => {}
            Some((i, EntryKind::File { .. })) => {
                return if pending.is_empty() {
                    Resolved::File(i)
                } else {
                    Resolved::NotFound
                };
            }
            Some((_, EntryKind::Symlink { target })) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Resolved::TooManyLinks;
                }
                at.pop();
                if target.starts_with('/') {
                    return Resolved::NotFound;
                }
                pending.extend(target.split('/').rev().map(str::to_string));
            }
            None if is_implicit_dir(m, &path) => {}
            None => return Resolved::NotFound,
        }
    }
    Resolved::Dir(at.join("/"))
}

/// Index of the entry at `path`.
pub fn index_of(m: &Manifest, path: &str) -> Option<usize> {
    m.entries
        .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
        .ok()
}

/// Index of the first entry whose path is not less than `path`.
pub fn lower_bound(m: &Manifest, path: &str) -> usize {
    m.entries
        .partition_point(|e| e.path.as_bytes() < path.as_bytes())
}

/// A directory that is not listed but has entries below it (manifests need
/// not list parents). Paths below `d` sort together right after `d/`.
fn is_implicit_dir(m: &Manifest, path: &str) -> bool {
    let prefix = format!("{path}/");
    m.entries
        .get(lower_bound(m, &prefix))
        .is_some_and(|e| e.path.starts_with(&prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkerParams;
    use crate::manifest::{Entry, FileMeta};

    fn segs(raw: &str) -> Result<Vec<String>, PathError> {
        parse(raw).map(|p| p.segments)
    }

    #[test]
    fn request_paths_are_split_then_decoded() {
        assert_eq!(segs("/").unwrap(), Vec::<String>::new());
        assert_eq!(segs("/a//b/").unwrap(), vec!["a", "b"]);
        assert_eq!(segs("/a%20b/%C3%A9").unwrap(), vec!["a b", "é"]);
        assert_eq!(segs("/a/...").unwrap(), vec!["a", "..."]);
        assert!(parse("/a/").unwrap().trailing_slash);
        assert!(!parse("/a").unwrap().trailing_slash);
        assert!(!parse("/").unwrap().trailing_slash);
    }

    #[test]
    fn traversal_in_any_spelling_is_refused() {
        for raw in [
            "/c/../x",
            "/c/./x",
            "/..",
            "/c/%2e%2e/x",
            "/c/%2E%2e",
            "/c/.%2e/x",
            "/c/%2e",
            "/c/a%2fb",
            "/c/a%2F..%2Fb",
            "/c/%00",
            "/c/a%00.txt",
        ] {
            assert_eq!(segs(raw), Err(PathError::Traversal), "{raw}");
        }
        for raw in ["c/x", "/c/%zz", "/c/%2", "/c/%ff%fe", "*"] {
            assert_eq!(segs(raw), Err(PathError::Malformed), "{raw}");
        }
        let long = format!("/{}", "a".repeat(MAX_REQUEST_PATH));
        assert_eq!(segs(&long), Err(PathError::TooLong));
    }

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: 0,
                executable: false,
                chunks: vec![],
                meta: Some(FileMeta {
                    modified: Default::default(),
                    sha256: [0; 32],
                }),
            },
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

    fn manifest() -> Manifest {
        Manifest::new(
            vec![
                Entry {
                    path: "d".into(),
                    kind: EntryKind::Dir,
                },
                file("d/f"),
                file("implied/sub/g"),
                link("d/up", "../top"),
                file("top"),
                link("to-d", "d"),
                link("to-d-f", "./d//f"),
                link("loop1", "loop2"),
                link("loop2", "loop1"),
                link("dangling", "nowhere"),
                link("d/escape", "../../etc/passwd"),
                file("d.txt"),
            ],
            ChunkerParams::default(),
        )
    }

    fn res(m: &Manifest, p: &str) -> Resolved {
        resolve(m, &segs(p).unwrap())
    }

    fn path_of(m: &Manifest, r: Resolved) -> String {
        match r {
            Resolved::File(i) => m.entries[i].path.clone(),
            other => panic!("not a file: {other:?}"),
        }
    }

    #[test]
    fn paths_resolve_in_the_manifest_only() {
        let m = manifest();
        assert_eq!(path_of(&m, res(&m, "/d/f")), "d/f");
        assert_eq!(res(&m, "/"), Resolved::Dir(String::new()));
        assert_eq!(res(&m, "/d"), Resolved::Dir("d".into()));
        assert_eq!(res(&m, "/implied"), Resolved::Dir("implied".into()));
        assert_eq!(res(&m, "/implied/sub"), Resolved::Dir("implied/sub".into()));
        assert_eq!(res(&m, "/impl"), Resolved::NotFound);
        assert_eq!(res(&m, "/d/f/x"), Resolved::NotFound);
        assert_eq!(res(&m, "/nope"), Resolved::NotFound);
        assert_eq!(res(&m, "/etc/passwd"), Resolved::NotFound);
    }

    #[test]
    fn symlinks_resolve_lexically_with_a_hop_limit() {
        let m = manifest();
        assert_eq!(path_of(&m, res(&m, "/d/up")), "top");
        assert_eq!(path_of(&m, res(&m, "/to-d/f")), "d/f");
        assert_eq!(path_of(&m, res(&m, "/to-d-f")), "d/f");
        assert_eq!(path_of(&m, res(&m, "/to-d/up")), "top");
        assert_eq!(res(&m, "/to-d"), Resolved::Dir("d".into()));
        assert_eq!(res(&m, "/loop1"), Resolved::TooManyLinks);
        assert_eq!(res(&m, "/dangling"), Resolved::NotFound);
        assert_eq!(res(&m, "/d/escape"), Resolved::NotFound);
    }
}
