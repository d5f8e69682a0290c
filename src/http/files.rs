//! Serving one representation (a file of a version, or a generated
//! document): conditional requests (RFC 9110, section 13), byte ranges
//! (section 14) with `multipart/byteranges` for several, and HEAD.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::{self, Body, FileReader, Piece};
use super::range::{self, Ranges};
use super::text;
use crate::store::StoreError;

/// What a response describes, apart from the bytes.
pub struct Representation {
    /// Length in bytes.
    pub len: u64,
    /// Strong entity tag, with its quotes.
    pub etag: String,
    /// Modification time, in whole seconds since the epoch.
    pub last_modified: Option<u64>,
    /// Media type.
    pub content_type: String,
}

/// Where the bytes come from.
pub enum Source {
    /// A file of a version, streamed from the store.
    File(FileReader),
    /// A generated document.
    Memory(Bytes),
}

/// The response to a GET or HEAD of `rep`.
pub async fn serve<B>(req: &Request<B>, rep: Representation, source: Source) -> Response<Body> {
    let h = req.headers();
    let mut common = HeaderMap::new();
    common.insert(header::ETAG, value(&rep.etag));
    if let Some(lm) = rep.last_modified.and_then(date) {
        common.insert(header::LAST_MODIFIED, value(&lm));
    }
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if let Some(status) = preconditions(h, &rep) {
        let mut r = Response::new(body::empty());
        *r.status_mut() = status;
        r.headers_mut().extend(common);
        return r;
    }

    let ranges = match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) if if_range_holds(h, &rep) => range::parse(v, rep.len),
        _ => Ranges::Whole,
    };
    let boundary = format!("{:016x}", rand::random::<u64>());
    let (status, pieces, content_type, content_range) = match ranges {
        Ranges::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            r.headers_mut().extend(common);
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                value(&format!("bytes */{}", rep.len)),
            );
            return r;
        }
        Ranges::Whole => (
            StatusCode::OK,
            vec![Piece::File {
                start: 0,
                end: rep.len,
            }],
            rep.content_type.clone(),
            None,
        ),
        Ranges::Some(rs) if rs.len() == 1 => (
            StatusCode::PARTIAL_CONTENT,
            vec![Piece::File {
                start: rs[0].start,
                end: rs[0].end,
            }],
            rep.content_type.clone(),
            Some(content_range(&rs[0], rep.len)),
        ),
        Ranges::Some(rs) => (
            StatusCode::PARTIAL_CONTENT,
            multipart(&rs, rep.len, &rep.content_type, &boundary),
            format!("multipart/byteranges; boundary={boundary}"),
            None,
        ),
    };
    let len: u64 = pieces
        .iter()
        .map(|p| match p {
            Piece::Mem(b) => b.len() as u64,
            Piece::File { start, end } => end - start,
        })
        .sum();

    let body = if req.method() == Method::HEAD {
        body::empty()
    } else {
        match source {
            Source::Memory(bytes) => {
                let slices = pieces
                    .into_iter()
                    .map(|p| match p {
                        Piece::File { start, end } => {
                            Piece::Mem(bytes.slice(start as usize..end as usize))
                        }
                        mem => mem,
                    })
                    .collect();
                body::stream(None, slices)
            }
            Source::File(mut reader) => {
                // Read the first chunk now: a chunk that fails its hash then
                // fails the request before any header is sent.
                let first = pieces.iter().find_map(|p| match p {
                    Piece::File { start, end } if start < end => Some((*start, *end)),
                    _ => None,
                });
                if let Some((pos, until)) = first {
                    if let Err(e) = reader.read_at(pos, until).await {
                        return unavailable(&e);
                    }
                }
                body::stream(Some(reader), pieces)
            }
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let hs = r.headers_mut();
    hs.extend(common);
    hs.insert(header::CONTENT_TYPE, value(&content_type));
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(cr) = content_range {
        hs.insert(header::CONTENT_RANGE, value(&cr));
    }
    r
}

/// The answer when the bytes cannot be read: a chunk is corrupt (it was
/// reported and is being dropped) or missing until it is fetched again.
fn unavailable(e: &StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "cannot serve a file");
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "part of this file is being repaired; try again later\n",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

fn content_range(r: &Range<u64>, len: u64) -> String {
    format!("bytes {}-{}/{len}", r.start, r.end - 1)
}

/// The parts of a `multipart/byteranges` body.
fn multipart(rs: &[Range<u64>], len: u64, content_type: &str, boundary: &str) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(rs.len() * 2 + 1);
    for (i, r) in rs.iter().enumerate() {
        let lead = if i == 0 { "" } else { "\r\n" };
        pieces.push(Piece::Mem(Bytes::from(format!(
            "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {}\r\n\r\n",
            content_range(r, len)
        ))));
        pieces.push(Piece::File {
            start: r.start,
            end: r.end,
        });
    }
    pieces.push(Piece::Mem(Bytes::from(format!("\r\n--{boundary}--\r\n"))));
    pieces
}

/// RFC 9110, section 13.2.2, steps 1 to 4: 412 or 304 when a precondition
/// says so, `None` to go on.
fn preconditions(h: &HeaderMap, rep: &Representation) -> Option<StatusCode> {
    if let Some(v) = header_str(h, header::IF_MATCH) {
        if !matches_any(v, &rep.etag, true) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(since), Some(lm)) = (
        header_str(h, header::IF_UNMODIFIED_SINCE).and_then(parse_date),
        rep.last_modified,
    ) {
        if lm > since {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    if let Some(v) = header_str(h, header::IF_NONE_MATCH) {
        if matches_any(v, &rep.etag, false) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let (Some(since), Some(lm)) = (
        header_str(h, header::IF_MODIFIED_SINCE).and_then(parse_date),
        rep.last_modified,
    ) {
        if lm <= since {
            return Some(StatusCode::NOT_MODIFIED);
        }
    }
    None
}

/// Whether a `Range` header may be honoured: no `If-Range`, or one naming
/// this exact representation (a strong ETag match, or exactly its
/// modification date).
fn if_range_holds(h: &HeaderMap, rep: &Representation) -> bool {
    let Some(v) = h.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(v) = v.to_str() else {
        return false;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return v == rep.etag;
    }
    matches!((parse_date(v), rep.last_modified), (Some(d), Some(lm)) if d == lm)
}

/// Whether an `If-Match`/`If-None-Match` list names `etag` (`strong`:
/// weak tags never match, as If-Match requires).
fn matches_any(list: &str, etag: &str, strong: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        if !rest.starts_with('"') {
            return false;
        }
        let Some(end) = rest[1..].find('"') else {
            return false;
        };
        let tag = &rest[..end + 2];
        if tag == etag && !(strong && weak) {
            return true;
        }
        rest = &rest[end + 2..];
    }
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// An HTTP date as whole seconds since the epoch.
fn parse_date(s: &str) -> Option<u64> {
    httpdate::parse_http_date(s.trim())
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Whole seconds since the epoch as an HTTP date (years up to 9999).
pub fn date(secs: u64) -> Option<String> {
    (secs < 253_402_300_800)
        .then(|| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)))
}

/// The current time as seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep() -> Representation {
        Representation {
            len: 10,
            etag: "\"abc\"".into(),
            last_modified: Some(1_700_000_000),
            content_type: "text/plain".into(),
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn etag_lists() {
        assert!(matches_any("\"abc\"", "\"abc\"", true));
        assert!(matches_any("\"x\", W/\"abc\"", "\"abc\"", false));
        assert!(!matches_any("W/\"abc\"", "\"abc\"", true));
        assert!(matches_any(" * ", "\"abc\"", true));
        assert!(!matches_any("\"ab\", \"abcd\"", "\"abc\"", false));
        assert!(!matches_any("abc", "\"abc\"", false));
    }

    #[test]
    fn conditional_order_follows_rfc_9110() {
        let r = rep();
        let lm = date(1_700_000_000).unwrap();
        let older = date(1_600_000_000).unwrap();
        let p = |pairs: &[(header::HeaderName, &str)]| preconditions(&headers(pairs), &r);
        assert_eq!(p(&[]), None);
        assert_eq!(
            p(&[(header::IF_NONE_MATCH, "\"abc\"")]),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(p(&[(header::IF_NONE_MATCH, "\"old\"")]), None);
        assert_eq!(
            p(&[(header::IF_MODIFIED_SINCE, &lm)]),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(p(&[(header::IF_MODIFIED_SINCE, &older)]), None);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            p(&[
                (header::IF_NONE_MATCH, "\"old\""),
                (header::IF_MODIFIED_SINCE, &lm)
            ]),
            None
        );
        assert_eq!(
            p(&[(header::IF_MATCH, "\"old\"")]),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(
            p(&[(header::IF_UNMODIFIED_SINCE, &older)]),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(
            p(&[
                (header::IF_MATCH, "\"abc\""),
                (header::IF_UNMODIFIED_SINCE, &older)
            ]),
            None
        );
    }

    #[test]
    fn if_range_needs_an_exact_validator() {
        let r = rep();
        let ok = |v: &str| if_range_holds(&headers(&[(header::IF_RANGE, v)]), &r);
        assert!(ok("\"abc\""));
        assert!(!ok("\"stale\""));
        assert!(!ok("W/\"abc\""));
        assert!(ok(&date(1_700_000_000).unwrap()));
        assert!(!ok(&date(1_700_000_001).unwrap()));
        assert!(!ok("garbage"));
        assert!(if_range_holds(&HeaderMap::new(), &r));
    }
}
