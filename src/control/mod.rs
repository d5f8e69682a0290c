//! The commands a CLI sends to a store: their wire types, their errors, and
//! the one interface ([`Commands`]) they run over. Two implementations
//! exist: [`Client`], which reaches a running node over its control socket
//! (the node owns the store while it runs), and `node::LocalStore`, which
//! opens the store directly when no node runs.
//!
//! Socket protocol: a Unix socket in the data directory (`control.sock`,
//! mode 0600). The client writes one JSON [`Request`] on a line; the node
//! answers with one JSON `Result<Response, CommandError>` on a line and
//! closes the connection.

pub mod follow;
pub mod status;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::publish::{DryRunReport, PublishReport};
use crate::store::{ExportReport, GcReport, VerifyReport};
pub use follow::{FollowReport, TicketReport, UnfollowReport};
pub use status::Status;

/// A command. Paths must be absolute: the node may run elsewhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// The store's (and node's) state.
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
        /// Symlinks out of the tree: keep, skip or refuse.
        #[serde(default)]
        symlinks: crate::publish::SymlinkPolicy,
        /// Gitignore-style patterns of paths to leave out.
        #[serde(default)]
        exclude: Vec<String>,
        /// Read every file, whatever the stat cache says.
        #[serde(default)]
        reread: bool,
        /// Only say what would be published; write nothing.
        #[serde(default)]
        dry_run: bool,
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
    /// Follow a collection (recorded: every later start follows it too).
    Follow {
        /// A collection id or a ticket (whose addresses are recorded as
        /// peers for it and dialled).
        target: String,
        /// Paths to mirror; `None`: the ticket's, or all of them.
        only: Option<Vec<String>>,
    },
    /// Stop following a collection; the next gc drops its versions.
    Unfollow {
        /// Collection id or name.
        collection: String,
    },
    /// A ticket for a collection held or followed here.
    Ticket {
        /// Collection id or name.
        collection: String,
        /// Addresses the operator lists (multiaddr or `HOST:PORT`), first.
        addrs: Vec<String>,
        /// Paths to mirror, put in the ticket.
        only: Vec<String>,
        /// The configured listen addresses, used when no node runs (a
        /// running node uses the addresses it really has).
        listen: Vec<String>,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// For [`Request::Status`].
    Status(Box<Status>),
    /// For [`Request::Publish`].
    Published(PublishReport),
    /// For [`Request::Publish`] with `dry_run`.
    DryRun(DryRunReport),
    /// For [`Request::Export`].
    Exported(ExportReport),
    /// For [`Request::Verify`].
    Verified(VerifyReport),
    /// For [`Request::Gc`].
    Collected(GcReport),
    /// For [`Request::Follow`].
    Followed(FollowReport),
    /// For [`Request::Unfollow`].
    Unfollowed(UnfollowReport),
    /// For [`Request::Ticket`].
    Ticket(TicketReport),
}

/// What kind of failure a command met: it decides the exit code, and it
/// crosses the socket with the message.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad arguments or settings; running it again unchanged will fail again.
    Usage,
    /// A collection, version, file or key that does not exist.
    NotFound,
    /// Temporarily impossible (store in use, no peer reachable): try later.
    Busy,
    /// Stopped by a signal.
    Interrupted,
    /// Anything else (disk, corruption, network).
    Failed,
}

impl ErrorKind {
    /// The process exit code: 2 usage, 3 not found, 75 try later
    /// (sysexits' EX_TEMPFAIL), 130 interrupted, 1 otherwise.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Busy => 75,
            ErrorKind::Interrupted => 130,
            ErrorKind::Failed => 1,
        }
    }

    /// The kind of a library error: the first error in its source chain
    /// that says more than "failed". Errors of the rooms above this one
    /// (the node's) say their kind themselves and wrap it in a
    /// [`CommandError`].
    pub fn of(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(k) = Self::own(e) {
                return k;
            }
            cur = e.source();
        }
        ErrorKind::Failed
    }

    /// The kind `e` itself says, if any. Transparent wrappers hand over to
    /// the error they wrap (their `source()` skips it).
    fn own(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        use crate::keys::KeyError as K;
        use crate::publish::PublishError as P;
        use crate::store::StoreError as S;
        use crate::sync::SyncError as Y;
        if let Some(c) = e.downcast_ref::<CommandError>() {
            return Some(c.kind);
        }
        if let Some(s) = e.downcast_ref::<S>() {
            return match s {
                S::Locked(_) => Some(ErrorKind::Busy),
                S::UnknownCollection(_) | S::UnknownVersion(..) => Some(ErrorKind::NotFound),
                S::DestinationNotEmpty(_) | S::AmbiguousName { .. } => Some(ErrorKind::Usage),
                _ => None,
            };
        }
        if let Some(p) = e.downcast_ref::<P>() {
            return match p {
                P::BadName(_)
                | P::BadVersion(_)
                | P::ContainsKey(_)
                | P::NotADirectory(_)
                | P::BadExclude { .. } => Some(ErrorKind::Usage),
                P::Store(s) => Some(Self::of(s)),
                _ => None,
            };
        }
        if let Some(y) = e.downcast_ref::<Y>() {
            return match y {
                Y::Store(s) => Some(Self::of(s)),
                _ => None,
            };
        }
        if let Some(k) = e.downcast_ref::<K>() {
            return Some(match k {
                K::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    ErrorKind::NotFound
                }
                K::Io { .. } => ErrorKind::Failed,
                _ => ErrorKind::Usage,
            });
        }
        if e.is::<crate::config::ConfigError>()
            || e.is::<crate::ticket::TicketError>()
            || e.is::<crate::ticket::AddrError>()
            || e.is::<crate::filter::FilterError>()
        {
            return Some(ErrorKind::Usage);
        }
        None
    }
}

/// A failed command: its kind and one line for people.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct CommandError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The whole message (with its causes).
    pub message: String,
}

impl CommandError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CommandError {
            kind,
            message: message.into(),
        }
    }

    /// Wraps a library error, keeping its kind and every cause in the message.
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            let s = c.to_string();
            if !message.contains(&s) {
                message.push_str(": ");
                message.push_str(&s);
            }
            cur = c.source();
        }
        CommandError {
            kind: ErrorKind::of(e),
            message,
        }
    }
}

impl From<crate::task::TaskFailed> for CommandError {
    fn from(e: crate::task::TaskFailed) -> Self {
        CommandError::new(ErrorKind::Failed, e.to_string())
    }
}

/// Publish progress: bytes read so far, total bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Where commands run: a running node, or the store opened directly.
/// Each command has exactly one code path over this.
pub trait Commands {
    /// Runs one command. `progress` is called during long publishes where
    /// the implementation can report it.
    fn call(&self, req: Request, progress: Progress<'_>) -> Result<Response, CommandError>;
}

/// Creates a data directory readable by its owner only (0700; its parents
/// as usual), since it holds the node key, the store and the control
/// socket. An existing one is left as it is, with a warning if group or
/// others can get in: changing the modes of a directory the user made is
/// theirs to decide.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(path) {
        Ok(md) => {
            let mode = md.permissions().mode() & 0o777;
            if md.is_dir() && mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %path.display(),
                    mode = format!("{mode:o}"),
                    "the data directory is accessible by group or others; \
                     run `chmod 700` on it"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// Where a node's control socket lives.
pub fn socket_path(data: &Path) -> PathBuf {
    data.join("control.sock")
}

/// How long a command waits for a store that another process holds: long
/// enough for a node that is starting to open its control socket.
pub const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reaches the store at `data` for a command: `open` it directly, or, while
/// another process holds it, wait (up to [`STORE_WAIT`]) until either the
/// node holding it answers on its socket (`Ok(Ok(client))`) or the store
/// is free (`Ok(Err(store))`). A node that is starting holds the store
/// before its socket is up; without this the command would fail.
pub fn wait_for_store<S>(
    data: &Path,
    open: impl Fn() -> Result<S, crate::store::StoreError>,
) -> Result<Result<Client, S>, crate::store::StoreError> {
    let start = std::time::Instant::now();
    loop {
        match open() {
            Ok(s) => return Ok(Err(s)),
            Err(crate::store::StoreError::Locked(_)) if start.elapsed() < STORE_WAIT => {
                if let Some(c) = Client::connect(data) {
                    return Ok(Ok(c));
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The client end of a running node's control socket.
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// The node running on `data`, if one answers there.
    pub fn connect(data: &Path) -> Option<Client> {
        let path = socket_path(data);
        std::os::unix::net::UnixStream::connect(&path).ok()?;
        Some(Client { path })
    }
}

impl Commands for Client {
    fn call(&self, req: Request, _progress: Progress<'_>) -> Result<Response, CommandError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            CommandError::new(
                ErrorKind::Failed,
                format!("talking to the running node: {what}: {e}"),
            )
        };
        let mut s = std::os::unix::net::UnixStream::connect(&self.path)
            .map_err(|e| failed("connecting", &e))?;
        let mut line = serde_json::to_string(&req).map_err(|e| failed("encoding", &e))?;
        line.push('\n');
        s.write_all(line.as_bytes())
            .map_err(|e| failed("sending", &e))?;
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .map_err(|e| failed("reading the answer", &e))?;
        serde_json::from_str::<Result<Response, CommandError>>(&answer)
            .map_err(|e| failed("bad answer", &e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_cause_chain() {
        use crate::store::StoreError;
        let e = StoreError::Locked("/x".into());
        assert_eq!(ErrorKind::of(&e), ErrorKind::Busy);
        let e = crate::publish::PublishError::Store(StoreError::UnknownCollection(
            crate::keys::CollectionId([0; 32]),
        ));
        // PublishError::Store is transparent: the store error decides.
        assert_eq!(ErrorKind::of(&e), ErrorKind::NotFound);
        let io = std::io::Error::other("disk");
        assert_eq!(ErrorKind::of(&io), ErrorKind::Failed);
        let c = CommandError::from_error(&e);
        assert_eq!(c.kind, ErrorKind::NotFound);
        // Round trip over the wire keeps the kind.
        let wire = serde_json::to_string(&Err::<Response, _>(c.clone())).unwrap();
        let back: Result<Response, CommandError> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.unwrap_err(), c);
        assert_eq!(ErrorKind::Usage.exit_code(), 2);
        assert_eq!(ErrorKind::Interrupted.exit_code(), 130);
    }
}
