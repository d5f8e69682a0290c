//! The redirector: `GET /r/<collection>/<path>` answers 302 to
//! `<mirror>/<collection id>/<path>` on the best mirror for the client
//! that holds the newest version this node accepted and passes its health
//! check (see [`crate::mirrors`]). With no such mirror, the node serves
//! the file itself when it holds that version, and otherwise says why
//! (503). `<path>.meta4` there is a Metalink document instead (see
//! [`super::metalink`]).
//!
//! Redirects carry `Cache-Control: no-store` (the choice depends on the
//! moment and the client) and a `Link: <url>; rel=duplicate; pri=N` for
//! every mirror that qualified (RFC 6249), best first.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::path::{self, RequestPath, Resolved};
use super::snapshot::Snapshot;
use super::{listing, metalink, tag, text, Body, ClientAddr, Gateway};
use crate::announce::SignedAnnouncement;
use crate::manifest::Manifest;
use crate::mirrors::{rank, Mirrors, Ranked};
use crate::store::StoreError;

/// The newest accepted version of a collection, and what this node holds
/// of it.
pub(super) struct Latest {
    /// Its announcement.
    pub(super) announcement: SignedAnnouncement,
    /// Its manifest, if this node has it (it may still be fetching).
    pub(super) manifest: Option<Arc<Manifest>>,
    /// This node's current version, if it is the newest.
    pub(super) current: Option<Snapshot>,
}

impl Latest {
    pub(super) fn version(&self) -> u64 {
        self.announcement.body.version
    }
}

/// What the redirector knows of the client: its address and region.
pub(super) fn client<B>(m: &Mirrors, req: &Request<B>) -> rank::Client {
    let addr: Option<IpAddr> = req
        .extensions()
        .get::<ClientAddr>()
        .map(|a| a.0.ip().to_canonical());
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("region="))
            .map(str::to_string)
    });
    rank::Client {
        addr,
        region: m.client_region(addr, query.as_deref()),
    }
}

/// `/r/<collection>/<path>`.
pub(super) async fn handle<B>(
    gw: &Gateway,
    m: &Arc<Mirrors>,
    req: &Request<B>,
    p: &RequestPath,
) -> Result<Response<Body>, StoreError> {
    let (Some(name), Some(rest)) = (p.segments.get(1), p.segments.get(2..)) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "the redirector answers /r/<collection>/<path>\n",
        ));
    };
    if rest.is_empty() {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "the redirector answers /r/<collection>/<path>\n",
        ));
    }
    let latest = match find(gw, name).await? {
        Found::One(l) => l,
        Found::None => return Ok(text(StatusCode::NOT_FOUND, "no such collection\n")),
        Found::Several => {
            return Ok(text(
                StatusCode::MULTIPLE_CHOICES,
                "several collections have this name: use /r/<collection id>/<path>\n",
            ))
        }
    };
    let resolved = latest.manifest.as_ref().map(|mf| path::resolve(mf, rest));
    if !matches!(resolved, Some(Resolved::File(_) | Resolved::Dir(_))) {
        if let Some(file) = metalink::target(rest) {
            let holds_file = latest
                .manifest
                .as_ref()
                .is_none_or(|mf| matches!(path::resolve(mf, &file), Resolved::File(_)));
            if holds_file {
                return Ok(metalink::document(m, req, &latest, &file).await);
            }
        }
    }
    if matches!(resolved, Some(Resolved::NotFound | Resolved::TooManyLinks)) {
        return Ok(text(
            StatusCode::NOT_FOUND,
            &format!("not found in version {}\n", latest.version()),
        ));
    }
    let c = latest.announcement.body.collection;
    let ranked = m.ranked(&c, latest.version(), &client(m, req), None).await;
    let Some(best) = ranked.first() else {
        return Ok(fallback(gw, req, p, &latest).await);
    };
    let urls: Vec<(String, u32)> = ranked
        .iter()
        .map(|r| (url(r, &c.to_string(), rest, p.trailing_slash), r.priority))
        .collect();
    let location = urls[0].0.clone();
    tracing::debug!(mirror = %best.candidate.peer, %location, "redirecting");
    let mut r = text(StatusCode::FOUND, &format!("{location}\n"));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(super::VERSION_HEADER, HeaderValue::from(latest.version()));
    let link: Vec<String> = urls
        .iter()
        .map(|(u, pri)| format!("<{u}>; rel=duplicate; pri={pri}"))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&link.join(", ")) {
        h.insert(header::LINK, v);
    }
    Ok(r)
}

/// The URL of `rest` on a ranked mirror.
pub(super) fn url(r: &Ranked, collection: &str, rest: &[String], slash: bool) -> String {
    let mut u = format!("{}/{collection}", r.candidate.base);
    for s in rest {
        u.push('/');
        u.push_str(&listing::encode_segment(s));
    }
    if slash {
        u.push('/');
    }
    u
}

/// No mirror qualifies: serve the file from here if this node holds the
/// newest version, else 503.
async fn fallback<B>(
    gw: &Gateway,
    req: &Request<B>,
    p: &RequestPath,
    latest: &Latest,
) -> Response<Body> {
    let Some(snap) = &latest.current else {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "no healthy mirror holds version {} of this collection yet, and neither does this node; try again later\n",
                latest.version()
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        return r;
    };
    let mut segments = vec![snap.collection.to_string()];
    segments.extend(p.segments[2..].iter().cloned());
    let own = RequestPath {
        segments,
        trailing_slash: p.trailing_slash,
    };
    match gw.serve_in(req, &own, snap, true).await {
        Some(r) => tag(r, snap),
        None => tag(text(StatusCode::NOT_FOUND, "not found\n"), snap),
    }
}

enum Found {
    One(Box<Latest>),
    None,
    Several,
}

/// The collection `segment` names (a 64-digit id, or a name held by
/// exactly one accepted collection) and its newest accepted version.
async fn find(gw: &Gateway, segment: &str) -> Result<Found, StoreError> {
    let store = gw.store().clone();
    let segment = segment.to_string();
    // Outer `None`: several collections have that name.
    let found = crate::task::blocking("finding a collection", move || {
        if segment.len() == 64 {
            if let Ok(id) = segment.parse() {
                return store.latest(&id).map(Some);
            }
        }
        let named: Vec<_> = store
            .collections()?
            .into_iter()
            .filter(|c| c.name == segment && c.accepted.is_some())
            .collect();
        match named.as_slice() {
            [one] => store.latest(&one.id).map(Some),
            [] => Ok(Some(None)),
            _ => Ok(None),
        }
    })
    .await?;
    let a = match found {
        Some(Some(a)) => a,
        Some(None) => return Ok(Found::None),
        None => return Ok(Found::Several),
    };
    Ok(Found::One(Box::new(latest(gw, a).await?)))
}

/// What this node holds of the version `a` announces.
pub(super) async fn latest(gw: &Gateway, a: SignedAnnouncement) -> Result<Latest, StoreError> {
    let current = gw
        .current(a.body.collection)
        .await?
        .filter(|s| s.version == a.body.version);
    let manifest = match &current {
        Some(s) => Some(s.manifest.clone()),
        None => manifest_of(gw, &a).await,
    };
    Ok(Latest {
        announcement: a,
        manifest,
        current,
    })
}

/// The manifest of `a` if the store holds it, cached.
async fn manifest_of(gw: &Gateway, a: &SignedAnnouncement) -> Option<Arc<Manifest>> {
    let id = a.body.manifest;
    if let Some(m) = gw.manifests().get(&id) {
        return Some(m);
    }
    let store = gw.store().clone();
    let m = crate::task::blocking("reading a manifest", move || {
        if store.has_manifest(&id)? {
            store.manifest(&id).map(Some)
        } else {
            Ok(None)
        }
    })
    .await
    .ok()??;
    let m = Arc::new(m);
    gw.manifests().put(id, m.clone());
    Some(m)
}
