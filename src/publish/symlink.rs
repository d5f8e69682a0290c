//! Symlinks as real trees have them. A link whose target stays inside the
//! published tree is stored as it is; an absolute link into the tree
//! (`libfoo.so -> /usr/lib/x86_64-linux-gnu/libfoo.so.1` when that
//! directory is what is published) is stored as the equivalent relative
//! link; any other link (absolute elsewhere, or climbing out with `..`) is
//! handled as the publisher asks ([`SymlinkPolicy`]). Mirrors never resolve
//! links on their file system, so a kept link only ever points somewhere
//! on the machine that follows it.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What to do with a symlink that points outside the published tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SymlinkPolicy {
    /// Store it as it is: mirrors export it unchanged (it may dangle there).
    Keep,
    /// Leave it out, with a warning (the default: a mirror gets what the
    /// tree holds, not what it points at).
    #[default]
    Skip,
    /// Refuse the whole publish.
    Refuse,
}

/// Where a link leads, seen from the tree.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Link {
    /// Inside the tree: store this target (the original, or the relative
    /// form of an absolute one).
    Inside {
        /// The target to store.
        target: String,
        /// Whether it was rewritten from an absolute target.
        rewritten: bool,
    },
    /// Absolute elsewhere, or out of the tree by `..`.
    Outside,
}

/// The tree's root as given (absolute, without `.` components) and as the
/// file system resolves it: an absolute link may name either.
pub(super) struct Roots {
    given: PathBuf,
    real: PathBuf,
}

impl Roots {
    /// The roots of `src`.
    pub fn of(src: &Path) -> std::io::Result<Roots> {
        let given: PathBuf = std::path::absolute(src)?
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        Ok(Roots {
            real: src.canonicalize()?,
            given,
        })
    }

    /// The resolved root (stat cache keys hang under it).
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// The path inside the tree (relative, possibly empty for the root)
    /// that the absolute `target` names, if any.
    fn inside(&self, target: &Path) -> Option<PathBuf> {
        let mut clean = PathBuf::new();
        for c in target.components() {
            match c {
                Component::RootDir | Component::Normal(_) => clean.push(c),
                Component::CurDir => {}
                // `..` after a link would follow the link first: not lexical.
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        for root in [&self.given, &self.real] {
            if let Ok(rel) = clean.strip_prefix(root) {
                return Some(rel.to_path_buf());
            }
        }
        // A root reached through a link (`/lib` on a merged-/usr system):
        // resolve the target's directory, not the target itself.
        let name = clean.file_name()?;
        let dir = clean.parent()?.canonicalize().ok()?;
        let rel = dir.strip_prefix(&self.real).ok()?;
        Some(rel.join(name))
    }
}

/// Classifies the link at `rel` (relative to the tree `root`) whose target
/// is `target`.
pub(super) fn classify(roots: &Roots, root: &Path, rel: &str, target: &str) -> Link {
    if target.starts_with('/') {
        let Some(inside) = roots.inside(Path::new(target)) else {
            return Link::Outside;
        };
        let Some(inside) = inside.to_str() else {
            return Link::Outside;
        };
        return Link::Inside {
            target: relative(rel, inside),
            rewritten: true,
        };
    }
    // Relative: resolve lexically from the link's directory, refusing `..`
    // after a component that is itself a link (the OS follows the link
    // first, which could leave the tree).
    let mut at: Vec<&str> = rel.split('/').collect();
    at.pop();
    let mut through_link = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if through_link || at.pop().is_none() {
                    return Link::Outside;
                }
            }
            c => {
                at.push(c);
                if !through_link {
                    let p = root.join(at.join("/"));
                    through_link = p.symlink_metadata().is_ok_and(|m| m.is_symlink());
                }
            }
        }
    }
    Link::Inside {
        target: target.to_string(),
        rewritten: false,
    }
}

/// The shortest relative target from the link at `link` to the path
/// `to` (both relative to the tree): up out of the link's directory as far
/// as the two share, then down. Every `..` climbs a real directory (the
/// link's own parents), so the OS resolves it as written.
fn relative(link: &str, to: &str) -> String {
    let mut from: Vec<&str> = link.split('/').collect();
    from.pop();
    let to: Vec<&str> = to.split('/').filter(|c| !c.is_empty()).collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_into_the_tree_become_relative() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lib");
        std::fs::create_dir_all(root.join("x86_64-linux-gnu/sub")).unwrap();
        std::fs::create_dir_all(root.join("up")).unwrap();
        symlink("sub", root.join("x86_64-linux-gnu/s")).unwrap();
        let roots = Roots::of(&root).unwrap();
        let abs = |p: &str| format!("{}/{p}", root.display());
        let c = |rel: &str, target: &str| classify(&roots, &root, rel, target);
        let inside = |t: &str| Link::Inside {
            target: t.into(),
            rewritten: true,
        };
        assert_eq!(
            c(
                "x86_64-linux-gnu/libBrokenLocale.so",
                &abs("x86_64-linux-gnu/libBrokenLocale.so.1")
            ),
            inside("libBrokenLocale.so.1")
        );
        assert_eq!(c("top", &abs("a/./b")), inside("a/b"));
        assert_eq!(
            c("up/l", &abs("x86_64-linux-gnu/sub/f")),
            inside("../x86_64-linux-gnu/sub/f")
        );
        assert_eq!(
            c("x86_64-linux-gnu/sub/l", &abs("x86_64-linux-gnu/g")),
            inside("../g")
        );
        assert_eq!(
            c("x86_64-linux-gnu/sub/root", &root.display().to_string()),
            inside("../..")
        );
        assert_eq!(c("self", &format!("{}/", root.display())), inside("."));
        // Through a `..` the OS would resolve after a link: not rewritten.
        assert_eq!(c("a", &abs("x/../y")), Link::Outside);
        assert_eq!(c("a", "/etc/passwd"), Link::Outside);
        // A sibling directory whose name extends the root's is outside.
        assert_eq!(c("a", &format!("{}64/x", root.display())), Link::Outside);
        // Relative: inside, escaping, and `..` after a link.
        let kept = |t: &str| Link::Inside {
            target: t.into(),
            rewritten: false,
        };
        assert_eq!(
            c("up/l", "../x86_64-linux-gnu/s/f"),
            kept("../x86_64-linux-gnu/s/f")
        );
        assert_eq!(c("up/l", "../../etc"), Link::Outside);
        assert_eq!(c("l", "x86_64-linux-gnu/s/../../.."), Link::Outside);
        assert_eq!(c("l", "x86_64-linux-gnu/sub/../../.."), Link::Outside);
        assert_eq!(
            c("l", "x86_64-linux-gnu/sub/.."),
            kept("x86_64-linux-gnu/sub/..")
        );
    }

    /// A root reached through a link (as `/lib` on merged-/usr systems):
    /// absolute targets spelled through either path are inside.
    #[test]
    fn roots_reached_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("usr/lib");
        std::fs::create_dir_all(real.join("gnu")).unwrap();
        symlink("usr/lib", dir.path().join("lib")).unwrap();
        let via = dir.path().join("lib");
        for given in [&real, &via] {
            let roots = Roots::of(given).unwrap();
            for spelled in [&real, &via] {
                let t = format!("{}/gnu/libc.so.6", spelled.display());
                assert_eq!(
                    classify(&roots, given, "gnu/libc.so", &t),
                    Link::Inside {
                        target: "libc.so.6".into(),
                        rewritten: true
                    },
                    "root {given:?}, target {t}"
                );
            }
        }
    }
}
