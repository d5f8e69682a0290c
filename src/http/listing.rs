//! Generated documents: directory listings (HTML for browsers, JSON for
//! scripts), the list of collections at `/`, the choices for an ambiguous
//! name, and `SHA256SUMS` from a manifest.

use std::fmt::Write;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;

use super::path::{index_of, lower_bound};
use crate::manifest::{EntryKind, Manifest};

/// Everything but RFC 3986 unreserved characters is escaped in links.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A path segment as it goes into a URL.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Text as it goes into HTML.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Child {
    /// The name within the directory.
    pub name: String,
    /// `file`, `dir` or `symlink`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// File size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// File modification time, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<i64>,
    /// File SHA-256, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The entries directly inside `dir` ("" for the root), by name. Subtrees
/// are skipped with a binary search each, so a listing costs
/// O(children · log entries), however deep the tree below.
pub fn children(m: &Manifest, dir: &str) -> Vec<Child> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut out = Vec::new();
    let mut i = lower_bound(m, &prefix);
    while let Some(e) = m.entries.get(i) {
        let Some(rest) = e.path.strip_prefix(&prefix) else {
            break;
        };
        match rest.find('/') {
            None => {
                out.push(child(rest, &e.kind));
                i += 1;
            }
            Some(k) => {
                let name = &rest[..k];
                // A listed directory came first (it sorts before its contents).
                if index_of(m, &format!("{prefix}{name}")).is_none() {
                    out.push(child(name, &EntryKind::Dir));
                }
                // Everything below `name/` sorts before `name0` ('0' follows '/').
                i = lower_bound(m, &format!("{prefix}{name}0"));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn child(name: &str, kind: &EntryKind) -> Child {
    let mut c = Child {
        name: name.to_string(),
        kind: "dir",
        size: None,
        modified: None,
        sha256: None,
        target: None,
    };
    match kind {
        EntryKind::Dir => {}
        EntryKind::File { size, meta, .. } => {
            c.kind = "file";
            c.size = Some(*size);
            c.modified = meta.map(|m| m.modified.secs);
            c.sha256 = meta.map(|m| hex::encode(m.sha256));
        }
        EntryKind::Symlink { target } => {
            c.kind = "symlink";
            c.target = Some(target.clone());
        }
    }
    c
}

/// What a listing is of.
pub struct Heading<'a> {
    /// The collection id, hex.
    pub collection: &'a str,
    /// The collection name.
    pub name: &'a str,
    /// The version listed.
    pub version: u64,
    /// The URL path of the directory, ending in `/`.
    pub path: &'a str,
}

/// A directory listing as JSON.
pub fn json(h: &Heading<'_>, children: &[Child]) -> String {
    serde_json::json!({
        "collection": h.collection,
        "name": h.name,
        "version": h.version,
        "path": h.path,
        "entries": children,
    })
    .to_string()
}

/// A directory listing as an HTML page with relative links.
pub fn html(h: &Heading<'_>, children: &[Child]) -> String {
    let title = format!("Index of {}", h.path);
    let mut rows = String::from("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    for c in children {
        let slash = if c.kind == "dir" { "/" } else { "" };
        let shown = match &c.target {
            Some(t) => format!("{} -&gt; {}", escape_html(&c.name), escape_html(t)),
            None => format!("{}{slash}", escape_html(&c.name)),
        };
        let modified = c.modified.and_then(http_date).unwrap_or_else(|| "-".into());
        let size = c.size.map_or("-".into(), |s| s.to_string());
        let _ = writeln!(
            rows,
            "<tr><td><a href=\"./{}{slash}\">{shown}</a></td><td>{modified}</td><td>{size}</td></tr>",
            encode_segment(&c.name)
        );
    }
    page(
        &title,
        &format!(
            "<p>{} version {}</p>\n<table>\n<tr><th>Name</th><th>Last modified</th><th>Size</th></tr>\n{rows}</table>",
            escape_html(h.name),
            h.version
        ),
    )
}

/// A minimal HTML page.
pub fn page(title: &str, body_html: &str) -> String {
    let t = escape_html(title);
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body><h1>{t}</h1>\n{body_html}\n</body></html>\n"
    )
}

/// Seconds since the epoch (possibly negative) as an HTTP date, if representable.
fn http_date(secs: i64) -> Option<String> {
    super::files::date(u64::try_from(secs).ok()?)
}

/// One collection as `/` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct CollectionRow {
    /// Collection id, hex.
    pub id: String,
    /// Name.
    pub name: String,
    /// Current version.
    pub version: u64,
    /// Regular files in that version.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When it was published, seconds since the epoch.
    pub published_at: u64,
    /// Where it is served.
    pub href: String,
}

/// `/` as JSON.
pub fn collections_json(rows: &[CollectionRow]) -> String {
    serde_json::json!({ "collections": rows }).to_string()
}

/// `/` as HTML.
pub fn collections_html(rows: &[CollectionRow]) -> String {
    let mut body =
        String::from("<table>\n<tr><th>Name</th><th>Version</th><th>Files</th><th>Bytes</th><th>Collection id</th></tr>\n");
    for r in rows {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/{}/\">{}</a></td></tr>",
            escape_html(&r.href),
            escape_html(&r.name),
            r.version,
            r.files,
            r.bytes,
            r.id,
            r.id
        );
    }
    body.push_str("</table>");
    page("Collections", &body)
}

/// The `SHA256SUMS` of a version, in `sha256sum -c` format (file names with
/// a backslash, newline or carriage return escaped as GNU coreutils does);
/// `None` for a format 1 manifest, which records no SHA-256.
pub fn sha256sums(m: &Manifest) -> Option<Vec<u8>> {
    let mut out = String::new();
    for e in &m.entries {
        let EntryKind::File { meta, .. } = &e.kind else {
            continue;
        };
        let sum = hex::encode(meta.as_ref()?.sha256);
        if e.path.contains(['\\', '\n', '\r']) {
            let escaped = e
                .path
                .replace('\\', "\\\\")
                .replace('\n', "\\n")
                .replace('\r', "\\r");
            let _ = writeln!(out, "\\{sum}  {escaped}");
        } else {
            let _ = writeln!(out, "{sum}  {}", e.path);
        }
    }
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkerParams;
    use crate::manifest::{Entry, FileMeta, Timestamp};

    fn file(path: &str, sum: u8) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: 0,
                executable: false,
                chunks: vec![],
                meta: Some(FileMeta {
                    modified: Timestamp {
                        secs: 1_700_000_000,
                        nanos: 0,
                    },
                    sha256: [sum; 32],
                }),
            },
        }
    }

    #[test]
    fn children_skip_subtrees_and_include_implied_dirs() {
        let m = Manifest::new(
            vec![
                Entry {
                    path: "a".into(),
                    kind: EntryKind::Dir,
                },
                file("a/x", 1),
                file("a.txt", 2),
                file("b/deep/er", 3),
                file("b/e", 4),
                file("b!", 5),
                Entry {
                    path: "l".into(),
                    kind: EntryKind::Symlink {
                        target: "a.txt".into(),
                    },
                },
            ],
            ChunkerParams::default(),
        );
        let names = |d| -> Vec<(String, &str)> {
            children(&m, d)
                .into_iter()
                .map(|c| (c.name, c.kind))
                .collect()
        };
        let s = |n: &str, k| (n.to_string(), k);
        assert_eq!(
            names(""),
            vec![
                s("a", "dir"),
                s("a.txt", "file"),
                s("b", "dir"),
                s("b!", "file"),
                s("l", "symlink")
            ]
        );
        assert_eq!(names("b"), vec![s("deep", "dir"), s("e", "file")]);
        assert_eq!(names("b/deep"), vec![s("er", "file")]);
        assert!(names("nope").is_empty());
    }

    #[test]
    fn sums_escape_awkward_names() {
        let m = Manifest::new(
            vec![file("a b", 0xab), file("new\nline\\x", 0x01)],
            ChunkerParams::default(),
        );
        let text = String::from_utf8(sha256sums(&m).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{}  a b", "ab".repeat(32)));
        assert_eq!(lines[1], format!("\\{}  new\\nline\\\\x", "01".repeat(32)));
    }

    #[test]
    fn html_escapes_names_and_links() {
        let m = Manifest::new(vec![file("<b>&\"x y", 1)], ChunkerParams::default());
        let h = Heading {
            collection: "c",
            name: "n",
            version: 1,
            path: "/n/",
        };
        let page = html(&h, &children(&m, ""));
        assert!(page.contains("href=\"./%3Cb%3E%26%22x%20y\""), "{page}");
        assert!(page.contains("&lt;b&gt;&amp;&quot;x y"), "{page}");
        assert!(!page.contains("<b>"));
    }
}
