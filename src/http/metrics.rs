//! `/metrics` (see [`crate::metrics`]), and counting every response by
//! status and every body byte sent, when the gateway keeps metrics.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::{body, text, typed, Body, Gateway};
use crate::metrics::{Fault, Metrics};

impl Gateway {
    /// Serves [`METRICS_PATH`] from `metrics`, and counts every response
    /// and body byte there.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        self.rebuilt(|i| i.metrics = Some(metrics))
    }

    /// The metrics kept, if any.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.inner.metrics.as_ref()
    }

    /// Counts what went wrong, when metrics are kept.
    pub(super) fn fault(&self, kind: Fault) {
        if let Some(m) = &self.inner.metrics {
            m.error(kind);
        }
    }
}

/// Counts `r` by its status, and each body byte as it is sent: one atomic
/// add per frame, the body's own bytes, never headers.
pub(super) fn counted(m: &Metrics, r: Response<Body>) -> Response<Body> {
    m.http_response(r.status());
    let sent = m.http_sent_bytes();
    r.map(|b| {
        b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                sent.inc_by(d.len() as u64);
            }
            f
        })
        .boxed_unsync()
    })
}

/// The answer to [`METRICS_PATH`]: every metric, sampled now.
pub(super) async fn scrape<B>(m: &Metrics, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = typed(
        StatusCode::OK,
        crate::metrics::CONTENT_TYPE,
        m.render().await,
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if req.method() == Method::HEAD {
        *r.body_mut() = body::empty();
    }
    r
}
