//! Partial mirrors: which paths of a collection a node keeps.
//!
//! A [`PathFilter`] is a list of patterns (`--only`), matched against each
//! manifest path from the collection's root:
//!
//! - a pattern without `*`, `?` or `[` is a path prefix: `images` keeps
//!   `images` and everything below it (not `images-old`);
//! - otherwise it is a glob over whole components: `*` and `?` never cross
//!   a `/`, `**` as a whole component matches any number of components,
//!   `[abc]`/`[a-z]`/`[!a]` match one character of a set.
//!
//! A path is kept when it or one of its parent directories matches, so
//! `images/*` keeps `images/x/y.iso` too. Directories above a kept path are
//! kept as well (they hold it). No patterns: everything is kept. The same
//! filter decides, for one collection, which chunks a follower fetches,
//! which gc keeps, what `verify` requires, what `export` writes and what
//! the HTTP gateway serves.

use serde::{Deserialize, Serialize};

use crate::manifest::{ChunkRef, EntryKind, Manifest};

/// Most patterns one filter may hold.
pub const MAX_PATTERNS: usize = 64;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// A pattern that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// Empty, absolute, with `.`/`..` components, or too long.
    #[error("bad pattern {0:?}: {1}")]
    BadPattern(String, &'static str),
    /// More than [`MAX_PATTERNS`].
    #[error("too many patterns (at most {MAX_PATTERNS})")]
    TooMany,
}

/// The paths of a collection a node keeps; empty: all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFilter {
    patterns: Vec<String>,
}

impl PathFilter {
    /// Everything.
    pub fn all() -> Self {
        PathFilter::default()
    }

    /// A filter keeping what any of `patterns` matches (none: everything).
    /// A leading `./` or `/` and trailing `/` are dropped.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FilterError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(FilterError::TooMany);
        }
        let mut out: Vec<String> = Vec::new();
        for p in patterns {
            let raw = p.as_ref();
            let bad = |why| FilterError::BadPattern(raw.to_string(), why);
            if raw.len() > MAX_PATTERN_LEN {
                return Err(bad("too long"));
            }
            let t = raw.trim();
            let t = t.strip_prefix("./").unwrap_or(t);
            let t = t.trim_matches('/');
            if t.is_empty() {
                return Err(bad("empty"));
            }
            if t.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(bad("empty, `.` or `..` component"));
            }
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
        Ok(PathFilter { patterns: out })
    }

    /// Whether everything is kept.
    pub fn is_all(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns, as given (normalised).
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// What either keeps (a manifest two collections share keeps the
    /// paths of both).
    pub fn union(&self, other: &PathFilter) -> PathFilter {
        if self.is_all() || other.is_all() {
            return PathFilter::all();
        }
        let mut patterns = self.patterns.clone();
        for p in &other.patterns {
            if !patterns.contains(p) {
                patterns.push(p.clone());
            }
        }
        PathFilter { patterns }
    }

    /// Whether `path` (a manifest path) or one of its parents matches.
    pub fn wants(&self, path: &str) -> bool {
        if self.is_all() {
            return true;
        }
        let comps: Vec<&str> = path.split('/').collect();
        (1..=comps.len()).any(|n| self.patterns.iter().any(|p| matches(p, &comps[..n])))
    }

    /// Whether `dir` must exist to hold something kept: it is kept itself,
    /// or a pattern could match below it.
    pub fn holds(&self, dir: &str) -> bool {
        if self.wants(dir) {
            return true;
        }
        let comps: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().any(|p| could_match_below(p, &comps))
    }

    /// Whether a manifest entry is kept (directories: whether they are
    /// kept or hold something kept).
    pub fn wants_entry(&self, path: &str, kind: &EntryKind) -> bool {
        match kind {
            EntryKind::Dir => self.holds(path),
            _ => self.wants(path),
        }
    }
}

impl std::fmt::Display for PathFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_all() {
            return f.write_str("everything");
        }
        f.write_str(&self.patterns.join(", "))
    }
}

/// The files of `m` whose chunks a node with `filter` needs: (path, size,
/// chunks). The hook between a partial mirror and the download: a follower
/// fetches the chunks of these files only.
pub fn needed_files<'m>(
    m: &'m Manifest,
    filter: &'m PathFilter,
) -> impl Iterator<Item = (&'m str, u64, &'m [ChunkRef])> + 'm {
    m.files()
        .filter(move |(path, ..)| filter.wants(path))
        .map(|(path, size, _, chunks)| (path, size, chunks))
}

/// Bytes of the files `filter` keeps.
pub fn needed_bytes(m: &Manifest, filter: &PathFilter) -> u64 {
    needed_files(m, filter).map(|(_, size, _)| size).sum()
}

/// Whether the components `path` match the glob or prefix `pattern`
/// exactly (same number of components, `**` aside).
fn matches(pattern: &str, path: &[&str]) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    match_components(&pat, path)
}

fn match_components(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_components(rest, &path[skip..])),
        Some((p, rest)) => match path.split_first() {
            Some((c, more)) => {
                match_one(p.as_bytes(), c.as_bytes()) && match_components(rest, more)
            }
            None => false,
        },
    }
}

/// Whether some path below `dir` could match `pattern` (so `dir` must be
/// kept to hold it).
fn could_match_below(pattern: &str, dir: &[&str]) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    prefix_could_match(&pat, dir)
}

fn prefix_could_match(pat: &[&str], dir: &[&str]) -> bool {
    match (pat.split_first(), dir.split_first()) {
        (_, None) => !pat.is_empty(),
        (None, Some(_)) => false,
        (Some((&"**", _)), Some(_)) => true,
        (Some((p, rest)), Some((c, more))) => {
            match_one(p.as_bytes(), c.as_bytes()) && prefix_could_match(rest, more)
        }
    }
}

/// One component against one glob component: `*`, `?`, `[set]`, literals.
fn match_one(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_one(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && match_one(rest, &s[1..]),
        Some((b'[', rest)) => match (class(rest), s.split_first()) {
            (Some((set_matches, after)), Some((&c, more))) => {
                set_matches(c) && match_one(after, more)
            }
            // An unclosed `[` is a literal.
            (None, Some((&b'[', more))) => match_one(rest, more),
            _ => false,
        },
        Some((&c, rest)) => s.first() == Some(&c) && match_one(rest, &s[1..]),
    }
}

/// Parses a `[...]` class (after the `[`): a predicate and what follows `]`.
#[allow(clippy::type_complexity)]
fn class(p: &[u8]) -> Option<(Box<dyn Fn(u8) -> bool + '_>, &[u8])> {
    let (negate, body) = match p.first() {
        Some(b'!') | Some(b'^') => (true, &p[1..]),
        _ => (false, p),
    };
    // A `]` right after the `[` (or `[!`) is a member.
    let end = body.iter().skip(1).position(|&b| b == b']')? + 1;
    let set = &body[..end];
    let f = move |c: u8| {
        let mut i = 0;
        let mut hit = false;
        while i < set.len() {
            if i + 2 < set.len() && set[i + 1] == b'-' {
                hit |= set[i] <= c && c <= set[i + 2];
                i += 3;
            } else {
                hit |= set[i] == c;
                i += 1;
            }
        }
        hit != negate
    };
    Some((Box::new(f), &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &[&str]) -> PathFilter {
        PathFilter::new(p).unwrap()
    }

    #[test]
    fn prefixes_keep_a_subtree_and_nothing_beside_it() {
        let x = f(&["images"]);
        assert!(x.wants("images"));
        assert!(x.wants("images/a.iso"));
        assert!(x.wants("images/deep/b.iso"));
        assert!(!x.wants("images-old/a.iso"));
        assert!(!x.wants("docs/images/a"));
        assert!(f(&["./images/"]).wants("images/a.iso"));
        let nested = f(&["a/b"]);
        assert!(nested.wants("a/b/c"));
        assert!(!nested.wants("a/c"));
        assert!(nested.holds("a"));
        assert!(!nested.holds("c"));
    }

    #[test]
    fn globs_match_within_components_and_double_star_across() {
        let x = f(&["*.iso"]);
        assert!(x.wants("a.iso"));
        assert!(!x.wants("d/a.iso"));
        let deep = f(&["**/*.iso"]);
        assert!(deep.wants("a.iso"));
        assert!(deep.wants("d/e/a.iso"));
        assert!(!deep.wants("d/e/a.img"));
        let dir = f(&["images/*"]);
        assert!(
            dir.wants("images/x/y.iso"),
            "kept below a matching directory"
        );
        assert!(dir.holds("images"));
        assert!(!dir.wants("images"));
        let q = f(&["v?/[a-c]*", "x[!0-9]"]);
        assert!(q.wants("v1/apple"));
        assert!(!q.wants("v10/apple"));
        assert!(!q.wants("v1/dog"));
        assert!(q.wants("xa"));
        assert!(!q.wants("x1"));
        assert!(f(&["a[b"]).wants("a[b"), "an unclosed class is literal");
    }

    #[test]
    fn no_patterns_keep_everything_and_bad_patterns_are_refused() {
        assert!(PathFilter::all().wants("anything/at/all"));
        assert!(PathFilter::new::<&str>(&[]).unwrap().is_all());
        for bad in ["", "/", "a/../b", "./", "a//b"] {
            assert!(PathFilter::new(&[bad]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("p{i}")).collect();
        assert_eq!(PathFilter::new(&many), Err(FilterError::TooMany));
        assert_eq!(f(&["a", "a/"]).patterns(), ["a"]);
    }
}
