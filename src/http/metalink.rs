//! Metalink 4 documents (RFC 5854): for `<path>.meta4`, the file's name,
//! size and SHA-256 from the manifest of the newest version this node
//! accepted, and one `<url priority="N">` per mirror that holds that
//! version and is healthy (this node included when it holds it), ranked as
//! the redirector ranks them (priority 1 first; equally good mirrors share
//! a priority). A client such as aria2 then downloads from several at once
//! and checks the hash.
//!
//! Served at `/r/<collection>/<path>.meta4`, and beside the file at
//! `/<collection>/<path>.meta4` unless the tree holds a file of that name.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::path::{self, Resolved};
use super::redirect::{self, Latest};
use super::snapshot::Snapshot;
use super::{listing, text, typed, Body, Gateway};
use crate::manifest::EntryKind;
use crate::mirrors::{Mirrors, Ranked};

/// The Metalink media type.
pub const CONTENT_TYPE: &str = "application/metalink4+xml";

/// The file a `.meta4` path names: the same path without the suffix.
pub(super) fn target(rest: &[String]) -> Option<Vec<String>> {
    let (last, dirs) = rest.split_last()?;
    let stem = last.strip_suffix(".meta4").filter(|s| !s.is_empty())?;
    let mut v = dirs.to_vec();
    v.push(stem.to_string());
    Some(v)
}

/// `/<collection>/<path>.meta4` when the tree has no such file: the
/// document of `<path>` if it is a file, else `None` (not found).
pub(super) async fn beside<B>(
    gw: &Gateway,
    m: &Arc<Mirrors>,
    req: &Request<B>,
    snap: &Snapshot,
    rest: &[String],
) -> Option<Response<Body>> {
    let file = target(rest)?;
    if !matches!(path::resolve(&snap.manifest, &file), Resolved::File(_)) {
        return None;
    }
    let store = gw.store().clone();
    let c = snap.collection;
    let a = crate::task::blocking("reading the newest version", move || store.latest(&c))
        .await
        .ok()??;
    let latest = redirect::latest(gw, a).await.ok()?;
    Some(document(m, req, &latest, &file).await)
}

/// The Metalink document of `file` in the newest version.
pub(super) async fn document<B>(
    m: &Arc<Mirrors>,
    req: &Request<B>,
    latest: &Latest,
    file: &[String],
) -> Response<Body> {
    let v = latest.version();
    let Some(manifest) = &latest.manifest else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("this node has not fetched the manifest of version {v} yet\n"),
        );
    };
    let Resolved::File(i) = path::resolve(manifest, file) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("not found in version {v}\n"),
        );
    };
    let EntryKind::File { size, meta, .. } = &manifest.entries[i].kind else {
        return text(StatusCode::NOT_FOUND, "not a file\n");
    };
    let c = latest.announcement.body.collection;
    // This node, when it holds the version, at the address the client used
    // (unless it advertises a public URL, which puts it in the table).
    let self_base = match (&latest.current, &m.settings.public_url) {
        (Some(_), None) => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| format!("http://{a}")),
        _ => None,
    };
    let ranked = m.ranked(&c, v, &redirect::client(m, req), self_base).await;
    if ranked.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no healthy mirror holds version {v} of this collection yet\n"),
        );
    }
    let name = file.last().map_or("", String::as_str);
    let sha256 = meta.as_ref().map(|m| hex::encode(m.sha256));
    let xml = render(
        name,
        *size,
        sha256.as_deref(),
        &c.to_string(),
        file,
        &ranked,
    );
    let mut r = typed(StatusCode::OK, CONTENT_TYPE, xml);
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(super::VERSION_HEADER, HeaderValue::from(v));
    r
}

/// The XML text.
fn render(
    name: &str,
    size: u64,
    sha256: Option<&str>,
    collection: &str,
    file: &[String],
    ranked: &[Ranked],
) -> String {
    let esc = listing::escape_html;
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\">\n",
    );
    x.push_str(&format!(
        "  <generator>peermirror/{}</generator>\n",
        env!("CARGO_PKG_VERSION")
    ));
    x.push_str(&format!("  <file name=\"{}\">\n", esc(name)));
    x.push_str(&format!("    <size>{size}</size>\n"));
    if let Some(h) = sha256 {
        x.push_str(&format!("    <hash type=\"sha-256\">{h}</hash>\n"));
    }
    for r in ranked {
        let loc = if r.candidate.region.is_empty() {
            String::new()
        } else {
            format!(
                " location=\"{}\"",
                esc(&r.candidate.region.to_ascii_lowercase())
            )
        };
        x.push_str(&format!(
            "    <url priority=\"{}\"{loc}>{}</url>\n",
            r.priority.min(999_999),
            esc(&redirect::url(r, collection, file, false))
        ));
    }
    x.push_str("  </file>\n</metalink>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirrors::Candidate;

    #[test]
    fn document_is_escaped_and_ranked() {
        let cand = |base: &str, region: &str| Candidate {
            peer: libp2p::PeerId::random(),
            base: base.into(),
            region: region.into(),
            prefer: vec![],
            capacity_mbps: 100,
            distance: std::time::Duration::ZERO,
        };
        let ranked = vec![
            Ranked {
                candidate: cand("http://a", "DE"),
                priority: 1,
            },
            Ranked {
                candidate: cand("https://b:8443/m", ""),
                priority: 2,
            },
        ];
        let file = vec!["dir".to_string(), "x&<y>\".iso".to_string()];
        let x = render("x&<y>\".iso", 5, Some("ab"), "cid", &file, &ranked);
        assert!(
            x.contains("<file name=\"x&amp;&lt;y&gt;&quot;.iso\">"),
            "{x}"
        );
        assert!(x.contains("<size>5</size>"));
        assert!(x.contains("<hash type=\"sha-256\">ab</hash>"));
        assert!(
            x.contains(
                "<url priority=\"1\" location=\"de\">http://a/cid/dir/x%26%3Cy%3E%22.iso</url>"
            ),
            "{x}"
        );
        assert!(x.contains("<url priority=\"2\">https://b:8443/m/cid/dir/"));
        assert_eq!(
            target(&["a".into(), "b.iso.meta4".into()]),
            Some(vec!["a".into(), "b.iso".into()])
        );
        assert_eq!(target(&[".meta4".into()]), None);
        assert_eq!(target(&["b.iso".into()]), None);
    }
}
