//! The node's end of the control socket (see [`crate::control`]): one
//! request per connection, answered by [`Node::call`].

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::Node;
use crate::control::{socket_path, CommandError, ErrorKind, Request};

/// Serves the socket until `stop` turns true.
pub(crate) fn serve(
    node: Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let path = socket_path(node.store().root());
    // The store lock is ours, so any socket file left behind is stale.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
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

async fn handle(node: Arc<Node>, stream: tokio::net::UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    if tokio::io::BufReader::new(r)
        .read_line(&mut line)
        .await
        .is_err()
    {
        return;
    }
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(req) => node.call(req).await,
        Err(e) => Err(CommandError::new(
            ErrorKind::Usage,
            format!("bad control request: {e}"),
        )),
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
