//! The accept loop: HTTP/1.1 connections served by hyper, a cap on how
//! many at once, a send timeout on each (see `conn`), and a graceful
//! shutdown that lets responses in flight finish for a while.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};

use super::conn::{SendTimeout, SEND_TIMEOUT};
use super::{Gateway, HttpError};

/// Accept errors that concern one connection or a passing shortage, not
/// the listener itself.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO | libc::EPERM
        )
    )
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then lets
/// responses in flight finish for up to [`HttpConfig::shutdown_timeout`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(gateway.inner.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "http gateway listening");
    }
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) if transient(&e) => {
                        // Out of descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accepting an http connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => return Err(HttpError::Listener(e)),
                };
                let metrics = gateway.metrics().cloned();
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many http connections; closing one");
                    if let Some(m) = &metrics {
                        m.http_refused();
                    }
                    continue;
                };
                if let Some(m) = &metrics {
                    m.http_connection(true);
                }
                let _ = stream.set_nodelay(true);
                let gw = gateway.clone();
                let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                    req.extensions_mut().insert(super::ClientAddr(peer));
                    let gw = gw.clone();
                    async move { Ok::<_, Infallible>(gw.handle(req).await) }
                });
                let io = TokioIo::new(SendTimeout::new(stream, SEND_TIMEOUT));
                let conn = graceful.watch(builder.serve_connection(io, service));
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "http connection ended");
                    }
                    if let Some(m) = &metrics {
                        m.http_connection(false);
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    let timeout = gateway.inner.shutdown_timeout;
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("http responses still in flight at shutdown; cutting them");
    }
    conns.shutdown().await;
    Ok(())
}
