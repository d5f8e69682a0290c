//! The node's end of the control socket (see [`crate::control`]): one
//! request per connection, answered by [`Node::call`].
//!
//! Anyone who can connect to the socket can publish with any key file the
//! node can read, so the socket is never reachable by others: it is bound
//! inside a fresh 0700 directory, made 0600 there, and only then renamed to
//! its public path ([`bind_private`]). A request is one line of at most
//! [`MAX_REQUEST`] bytes, read within [`REQUEST_TIMEOUT`].

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::Node;
use crate::control::{socket_path, CommandError, ErrorKind, Request};

/// Longest request line accepted, in bytes: a request holds a few paths and
/// names, so 64 KiB is ample, and a client cannot make the node buffer more.
pub(crate) const MAX_REQUEST: u64 = 64 << 10;
/// How long a client has to send its request line, so idle connections
/// cannot pile up.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the socket until `stop` turns true.
pub(crate) fn serve(
    node: Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = bind_private(&socket_path(node.store().root()))?;
    let span = node.inner.span.clone();
    Ok(tokio::spawn(
        async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match conn {
                    Ok((stream, _)) => {
                        tokio::spawn(handle(node.clone(), stream).in_current_span());
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                }
            }
        }
        .instrument(span),
    ))
}

/// Binds a Unix socket at `path` that only this user can ever reach: bound
/// in a new 0700 directory beside it, chmod-ed to 0600 there, then renamed
/// into place (a rename keeps the socket bound). At no moment does `path`
/// name a socket with looser permissions.
pub(crate) fn bind_private(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let private = dir.join(format!(".control-bind-{}", std::process::id()));
    // Left over by a process that died here: nothing in it is needed.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let tmp = private.join("control.sock");
        let listener = tokio::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        // The store lock is ours, so any socket file at `path` is stale.
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Reads one request line of at most [`MAX_REQUEST`] bytes within
/// [`REQUEST_TIMEOUT`]; `Err` carries the answer for a bad one, `None`
/// means the client closed without a word (a CLI checking the node runs).
async fn read_request(r: tokio::net::unix::OwnedReadHalf) -> Result<Option<Request>, CommandError> {
    let mut line = String::new();
    let mut limited = tokio::io::BufReader::new(r.take(MAX_REQUEST + 1));
    let usage = |m: String| CommandError::new(ErrorKind::Usage, m);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)).await {
        Err(_) => return Err(usage("no control request received in time".into())),
        Ok(Err(e)) => return Err(usage(format!("bad control request: {e}"))),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    if line.len() as u64 > MAX_REQUEST {
        return Err(usage(format!(
            "control request longer than {MAX_REQUEST} bytes"
        )));
    }
    serde_json::from_str::<Request>(&line)
        .map(Some)
        .map_err(|e| usage(format!("bad control request: {e}")))
}

async fn handle(node: Arc<Node>, stream: tokio::net::UnixStream) {
    let (r, mut w) = stream.into_split();
    let answer = match read_request(r).await {
        Ok(None) => return,
        Ok(Some(req)) => node.call(req).await,
        Err(e) => {
            tracing::warn!(error = %e, "refused a control request");
            Err(e)
        }
    };
    let mut out = serde_json::to_string(&answer).unwrap_or_else(|e| {
        serde_json::to_string(&Err::<(), _>(CommandError::new(
            ErrorKind::Failed,
            format!("encoding the answer: {e}"),
        )))
        .unwrap_or_default()
    });
    out.push('\n');
    let _ = w.write_all(out.as_bytes()).await;
}
