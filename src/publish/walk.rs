//! The source tree in manifest order (paths sorted by bytes), one entry at
//! a time, in memory proportional to the directories open along the way
//! rather than to the whole tree.
//!
//! Depth-first order is not byte order (`a` < `a-x` < `a/b`), so each
//! directory is listed as two items among its siblings: the directory
//! itself, keyed by its name, and its contents, keyed by its name and `/`.
//! Sorting siblings by these keys and expanding contents items in place
//! yields exactly the sorted order of full paths. Every child is stat'ed
//! (without following links) when its directory is listed, and excluded
//! paths are dropped there, with everything below them.

use std::cmp::Ordering;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::PublishError;
use crate::store::FileStat;

/// What a path is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
    Symlink,
    /// A device, socket or FIFO.
    Special,
}

/// One path of the tree, as stat'ed when its directory was listed.
#[derive(Clone, Debug)]
pub(super) struct Item {
    /// Relative path with `/` separators.
    pub rel: String,
    pub kind: Kind,
    pub stat: FileStat,
    /// Owner execute bit.
    pub executable: bool,
}

enum Node {
    Entry(Item),
    /// The contents of the directory at this relative path.
    Contents(String),
}

impl Node {
    /// The sort key among siblings: the name, then `/` for contents.
    fn key(&self) -> impl Iterator<Item = u8> + '_ {
        let (rel, slash) = match self {
            Node::Entry(i) => (i.rel.as_str(), false),
            Node::Contents(rel) => (rel.as_str(), true),
        };
        let name = rel.rsplit('/').next().unwrap_or(rel);
        name.bytes().chain(slash.then_some(b'/'))
    }
}

/// Builds the matcher for `--exclude` patterns (gitignore syntax, relative
/// to the tree's root).
pub(super) fn excludes(
    root: &Path,
    patterns: &[String],
) -> Result<Option<Gitignore>, PublishError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p).map_err(|e| PublishError::BadExclude {
            pattern: p.clone(),
            why: e.to_string(),
        })?;
    }
    let gi = b.build().map_err(|e| PublishError::BadExclude {
        pattern: patterns.join(" "),
        why: e.to_string(),
    })?;
    Ok(Some(gi))
}

/// The tree under `root`, in manifest order.
pub(super) struct Walker<'a> {
    root: PathBuf,
    exclude: Option<&'a Gitignore>,
    stack: Vec<std::vec::IntoIter<Node>>,
    /// Paths dropped by the exclude patterns (a directory counts once).
    pub excluded: u64,
}

impl<'a> Walker<'a> {
    /// Starts a walk (the root itself is not an item).
    pub fn new(root: &Path, exclude: Option<&'a Gitignore>) -> Self {
        Walker {
            root: root.to_path_buf(),
            exclude,
            stack: vec![vec![Node::Contents(String::new())].into_iter()],
            excluded: 0,
        }
    }

    fn list(&mut self, dir: &str) -> Result<Vec<Node>, PublishError> {
        let abs = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PublishError::Read { path, source }
        };
        let mut nodes = Vec::new();
        for de in std::fs::read_dir(&abs).map_err(read_err(&abs))? {
            let de = de.map_err(read_err(&abs))?;
            let name = de.file_name();
            let Some(name) = name.to_str() else {
                return Err(PublishError::NonUtf8(de.path()));
            };
            let rel = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            // DirEntry::metadata does not follow links.
            let md = de.metadata().map_err(read_err(&de.path()))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                Kind::Special
            };
            if let Some(gi) = self.exclude {
                if gi.matched(&rel, kind == Kind::Dir).is_ignore() {
                    self.excluded += 1;
                    continue;
                }
            }
            if kind == Kind::Dir {
                nodes.push(Node::Contents(rel.clone()));
            }
            nodes.push(Node::Entry(Item {
                rel,
                kind,
                stat: stat_of(&md),
                executable: md.mode() & 0o100 != 0,
            }));
        }
        nodes.sort_by(|a, b| -> Ordering { a.key().cmp(b.key()) });
        Ok(nodes)
    }
}

impl Iterator for Walker<'_> {
    type Item = Result<Item, PublishError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self.stack.last_mut()?;
            match top.next() {
                None => {
                    self.stack.pop();
                }
                Some(Node::Entry(i)) => return Some(Ok(i)),
                Some(Node::Contents(dir)) => match self.list(&dir) {
                    Ok(nodes) => self.stack.push(nodes.into_iter()),
                    Err(e) => {
                        self.stack.clear();
                        return Some(Err(e));
                    }
                },
            }
        }
    }
}

/// The stat fields the stat cache compares.
pub(super) fn stat_of(md: &std::fs::Metadata) -> FileStat {
    FileStat {
        size: md.len(),
        mtime: (md.mtime(), md.mtime_nsec() as u32),
        ctime: (md.ctime(), md.ctime_nsec() as u32),
        dev: md.dev(),
        ino: md.ino(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(root: &Path, exclude: &[&str]) -> Vec<String> {
        let pats: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let gi = excludes(root, &pats).unwrap();
        Walker::new(root, gi.as_ref())
            .map(|i| i.unwrap().rel)
            .collect()
    }

    /// The walk yields paths in byte order, names that sort around `/`
    /// included, and prunes excluded directories.
    #[test]
    fn walks_in_byte_order_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["a/b", "a-x", "a.y/z", "b", "keep/cache/deep"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "a/0",
            "a/b/c",
            "a-x/f",
            "a0",
            "A",
            "b/x.tmp",
            "b/x.txt",
            "keep/cache/deep/f",
        ] {
            std::fs::write(r.join(f), b"x").unwrap();
        }
        let got = walk(r, &[]);
        let mut want = got.clone();
        want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(got, want);
        assert_eq!(got.len(), 17, "{got:?}");
        let got = walk(r, &["*.tmp", "cache/", "/a.y"]);
        assert!(
            !got.iter()
                .any(|p| p.ends_with(".tmp") || p.contains("cache") || p.starts_with("a.y")),
            "{got:?}"
        );
        assert!(
            got.contains(&"b/x.txt".to_string()) && got.contains(&"keep".to_string()),
            "{got:?}"
        );
        assert!(excludes(r, &["x[z-a]".into()]).is_err());
    }
}
