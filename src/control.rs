//! The local control interface: a Unix socket in the data directory
//! (`control.sock`, mode 0600) through which CLI commands reach a running
//! node, since the node owns the store while it runs.
//!
//! Protocol: the client writes one JSON [`Request`] on a line; the node
//! answers with one JSON [`Response`] on a line and closes the connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::keys::MasterKey;
use crate::node::{Node, NodeStatus};
use crate::publish::{PublishOptions, PublishReport};
use crate::store::{ExportReport, GcReport, VerifyReport};

/// A command for the running node. Paths must be absolute.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// The node's state.
    Status,
    /// Publish a directory.
    Publish {
        /// Master key file.
        key: PathBuf,
        /// Directory to publish.
        src: PathBuf,
        /// Collection name.
        name: Option<String>,
        /// Version number.
        version: Option<u64>,
        /// Validity in seconds.
        valid_for: u64,
    },
    /// Export a version.
    Export {
        /// Collection id or name.
        collection: String,
        /// Destination.
        dest: PathBuf,
        /// Version (default current).
        version: Option<u64>,
        /// Swap out a non-empty destination.
        replace: bool,
    },
    /// Re-hash the store.
    Verify {
        /// Drop corrupt chunks.
        repair: bool,
    },
    /// Collect garbage.
    Gc {
        /// Versions to keep.
        keep: usize,
    },
}

/// The node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// For [`Request::Status`].
    Status(NodeStatus),
    /// For [`Request::Publish`].
    Published(PublishReport),
    /// For [`Request::Export`].
    Exported(ExportReport),
    /// For [`Request::Verify`].
    Verified(VerifyReport),
    /// For [`Request::Gc`].
    Collected(GcReport),
    /// The request failed.
    Error(String),
}

/// Where a node's control socket lives.
pub fn socket_path(data: &Path) -> PathBuf {
    data.join("control.sock")
}

/// Sends a request to the node running on `data`, if one is. `Ok(None)`
/// means no node answers there.
pub fn call(data: &Path, req: &Request) -> std::io::Result<Option<Response>> {
    let mut s = match std::os::unix::net::UnixStream::connect(socket_path(data)) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("bad answer from the node: {e}")))
}

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
    Ok(tokio::spawn(tracing::Instrument::in_current_span(
        async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match conn {
                    Ok((stream, _)) => {
                        tokio::spawn(tracing::Instrument::in_current_span(handle(
                            node.clone(),
                            stream,
                        )));
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                }
            }
        },
    )))
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
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => answer(&node, req).await,
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "\"bad\"".into());
    out.push('\n');
    let _ = w.write_all(out.as_bytes()).await;
}

async fn answer(node: &Arc<Node>, req: Request) -> Response {
    let err = |e: &dyn std::fmt::Display| Response::Error(e.to_string());
    match req {
        Request::Status => match node.status().await {
            Ok(s) => Response::Status(s),
            Err(e) => err(&e),
        },
        Request::Publish {
            key,
            src,
            name,
            version,
            valid_for,
        } => {
            let key = match MasterKey::load(&key) {
                Ok(k) => k,
                Err(e) => return err(&e),
            };
            let opts = PublishOptions {
                name,
                version,
                valid_for,
            };
            match node.publish(key, src, opts).await {
                Ok(r) => Response::Published(r),
                Err(e) => err(&e),
            }
        }
        Request::Export {
            collection,
            dest,
            version,
            replace,
        } => {
            let store = node.store().clone();
            blocking(move || {
                let id = store
                    .find_collection(&collection)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no collection {collection:?} in this store"))?;
                store
                    .export(&id, version, &dest, replace)
                    .map(Response::Exported)
                    .map_err(|e| format!("exporting to {}: {e}", dest.display()))
            })
            .await
        }
        Request::Verify { repair } => {
            let store = node.store().clone();
            blocking(move || {
                store
                    .verify(repair)
                    .map(Response::Verified)
                    .map_err(|e| e.to_string())
            })
            .await
        }
        Request::Gc { keep } => {
            let store = node.store().clone();
            blocking(move || {
                store
                    .gc(keep)
                    .map(Response::Collected)
                    .map_err(|e| e.to_string())
            })
            .await
        }
    }
}

async fn blocking(f: impl FnOnce() -> Result<Response, String> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::Error(e),
        Err(e) => Response::Error(e.to_string()),
    }
}
