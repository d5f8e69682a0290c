//! Response bodies streamed from the store, one chunk at a time.
//!
//! A file's bytes are never gathered in memory: the body reads the chunk
//! under the next byte to send when hyper asks for more (so a slow client
//! holds at most one chunk, two at a chunk boundary), slices it to the
//! requested range, and moves on. Every chunk read pays for its bytes from
//! the gateway's buffer budget ([`HttpConfig::max_buffer_bytes`](super::HttpConfig::max_buffer_bytes)) until its
//! last slice is sent, so memory stays bounded however many clients read
//! at once: past the budget, responses wait for others to drain. Every chunk is re-hashed as it is read ([`Store::read_chunk`]). A
//! chunk that fails its hash is reported to the gateway and ends the body
//! with an error, which makes hyper abort the connection: the client sees a
//! short transfer, never wrong bytes.
//!
//! [`Store::read_chunk`]: crate::store::Store::read_chunk

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::Gateway;
use crate::hash::Hash;
use crate::manifest::{ChunkRef, EntryKind, Manifest};
use crate::store::{ReadLease, StoreError};

/// The body type of every response.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// An empty body (HEAD, 304, redirects).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body held in memory (listings, error pages, multipart headers).
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// One stretch of a response body.
pub enum Piece {
    /// Bytes in memory.
    Mem(Bytes),
    /// A byte range of the file a [`FileReader`] reads.
    File {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
}

/// Reads one file of one version, keeping that version's lease.
pub struct FileReader {
    gateway: Gateway,
    manifest: Arc<Manifest>,
    entry: usize,
    _lease: Arc<ReadLease>,
    /// Index and start offset of the chunk the next read starts looking at:
    /// ranges are read in ascending order, so the scan only moves forward.
    cursor: (usize, u64),
    /// The last chunk read, so several ranges within one chunk read it once.
    last: Option<(usize, Bytes)>,
    /// The next chunk, read (and hashed) on the blocking pool while the
    /// current one is sent, when the buffer budget has room for it.
    ahead: Option<(usize, JoinHandle<Result<Bytes, StoreError>>)>,
}

impl Drop for FileReader {
    fn drop(&mut self) {
        if let Some((_, t)) = self.ahead.take() {
            t.abort();
        }
    }
}

impl FileReader {
    /// A reader of `manifest.entries[entry]`, which must be a file.
    pub fn new(
        gateway: Gateway,
        manifest: Arc<Manifest>,
        entry: usize,
        lease: Arc<ReadLease>,
    ) -> Self {
        FileReader {
            gateway,
            manifest,
            entry,
            _lease: lease,
            cursor: (0, 0),
            last: None,
            ahead: None,
        }
    }

    fn chunks(&self) -> &[ChunkRef] {
        match &self.manifest.entries[self.entry].kind {
            EntryKind::File { chunks, .. } => chunks,
            _ => &[],
        }
    }

    /// The verified chunk holding byte `pos` of the file, and the file
    /// offset where that chunk starts. `until` is where the bytes being
    /// sent end: the next chunk is read ahead only if they reach it.
    pub async fn read_at(&mut self, pos: u64, until: u64) -> Result<(Bytes, u64), StoreError> {
        if pos < self.cursor.1 {
            self.cursor = (0, 0);
        }
        let (mut i, mut start) = self.cursor;
        let (id, len) = loop {
            let Some(c) = self.chunks().get(i) else {
                return Err(StoreError::Io {
                    context: "reading a file".into(),
                    source: io::Error::other("offset past the end of the file"),
                });
            };
            if pos < start + c.len as u64 {
                break (c.id, c.len);
            }
            start += c.len as u64;
            i += 1;
        };
        self.cursor = (i, start);
        if let Some((j, data)) = &self.last {
            if *j == i {
                return Ok((data.clone(), start));
            }
        }
        // The previous chunk is no longer needed here (hyper may still be
        // sending its last bytes, and keeps it, and its budget, until then).
        self.last = None;
        let data = match self.ahead.take() {
            Some((j, task)) if j == i => match task.await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Task(crate::task::TaskFailed {
                    what: "reading a chunk ahead",
                    why: e.to_string(),
                })),
            },
            other => {
                if let Some((_, t)) = other {
                    t.abort();
                }
                let permit = self.gateway.reserve_buffer(len).await?;
                read(self.gateway.clone(), id, len, permit).await
            }
        };
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                if let StoreError::CorruptChunk { id, .. } = &e {
                    self.gateway.report_corrupt(*id);
                }
                return Err(e);
            }
        };
        let next = start + len as u64;
        if next < until {
            if let Some(c) = self.chunks().get(i + 1).copied() {
                // Only with budget to spare: a read ahead never waits.
                if let Some(permit) = self.gateway.try_reserve_buffer(c.len) {
                    let task = read(self.gateway.clone(), c.id, c.len, permit);
                    let task = tokio::spawn(tracing::Instrument::in_current_span(task));
                    self.ahead = Some((i + 1, task));
                }
            }
        }
        self.last = Some((i, data.clone()));
        Ok((data, start))
    }
}

impl Gateway {
    /// Takes `len` bytes of the buffer budget, waiting up to [`BUFFER_WAIT`](super::BUFFER_WAIT).
    pub(super) async fn reserve_buffer(
        &self,
        len: u32,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        let want = self.inner.buffers.clone().acquire_many_owned(len);
        match tokio::time::timeout(super::BUFFER_WAIT, want).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(StoreError::Io {
                context: "reading a chunk for a response".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no response buffer freed up in time",
                ),
            }),
        }
    }

    /// Takes `len` bytes of the buffer budget if they are free now.
    pub(super) fn try_reserve_buffer(&self, len: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.buffers.clone().try_acquire_many_owned(len).ok()
    }

    /// Drops a chunk that failed its hash (off the async threads) and tells
    /// the hook.
    pub(super) fn report_corrupt(&self, id: Hash) {
        self.fault(crate::metrics::Fault::CorruptChunk);
        let gw = self.clone();
        tokio::spawn(async move {
            let store = gw.store().clone();
            match crate::task::blocking("dropping a corrupt chunk", move || {
                store.drop_corrupt_chunk(&id)
            })
            .await
            {
                Ok(true) => {
                    if let Some(hook) = &gw.inner.on_corrupt {
                        hook(id);
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(chunk = %id, error = %e, "cannot drop a corrupt chunk"),
            }
        });
    }
}

/// Reads and verifies chunk `id` (of `len` bytes, paid for by `permit`) on
/// the blocking pool.
async fn read(
    gateway: Gateway,
    id: Hash,
    len: u32,
    permit: OwnedSemaphorePermit,
) -> Result<Bytes, StoreError> {
    let store = gateway.store().clone();
    match crate::task::blocking("reading a chunk", move || store.read_chunk(&id)).await {
        Ok(data) if data.len() == len as usize => Ok(Bytes::from_owner(Budgeted {
            data,
            _permit: permit,
        })),
        Ok(_) => Err(StoreError::CorruptChunk {
            id,
            why: "length differs from the manifest".into(),
        }),
        Err(e) => Err(e),
    }
}

/// A chunk read for a response, holding its share of the gateway's buffer
/// budget until the last slice of it is sent.
struct Budgeted {
    data: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

struct State {
    reader: Option<FileReader>,
    pieces: VecDeque<Piece>,
}

/// A body that sends `pieces` in order, reading file ranges with `reader`.
pub fn stream(reader: Option<FileReader>, pieces: Vec<Piece>) -> Body {
    let state = Some(State {
        reader,
        pieces: pieces.into(),
    });
    let s = futures::stream::unfold(state, |state| async move {
        let mut st = state?;
        loop {
            match st.pieces.pop_front()? {
                Piece::Mem(b) if b.is_empty() => continue,
                Piece::Mem(b) => return Some((Ok(Frame::data(b)), Some(st))),
                Piece::File { start, end } if start >= end => continue,
                Piece::File { start, end } => {
                    let Some(reader) = st.reader.as_mut() else {
                        let e = io::Error::other("no file to read");
                        return Some((Err(e), None));
                    };
                    match reader.read_at(start, end).await {
                        Ok((data, at)) => {
                            let chunk_end = at + data.len() as u64;
                            let stop = end.min(chunk_end);
                            let slice = data.slice((start - at) as usize..(stop - at) as usize);
                            if stop < end {
                                st.pieces.push_front(Piece::File { start: stop, end });
                            }
                            return Some((Ok(Frame::data(slice)), Some(st)));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "aborting a response");
                            reader.gateway.fault(crate::metrics::Fault::HttpAborted);
                            return Some((Err(io::Error::other(e.to_string())), None));
                        }
                    }
                }
            }
        }
    });
    StreamBody::new(s).boxed_unsync()
}
