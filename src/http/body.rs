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

use super::Gateway;
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
        }
    }

    fn chunks(&self) -> &[ChunkRef] {
        match &self.manifest.entries[self.entry].kind {
            EntryKind::File { chunks, .. } => chunks,
            _ => &[],
        }
    }

    /// The verified chunk holding byte `pos` of the file, and the file
    /// offset where that chunk starts.
    pub async fn read_at(&mut self, pos: u64) -> Result<(Bytes, u64), StoreError> {
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
        let permit = self.gateway.reserve_buffer(len).await?;
        let store = self.gateway.store().clone();
        let data = crate::task::blocking("reading a chunk", move || store.read_chunk(&id)).await;
        let data = match data {
            Ok(d) if d.len() == len as usize => Bytes::from_owner(Budgeted {
                data: d,
                _permit: permit,
            }),
            Ok(_) => {
                return Err(StoreError::CorruptChunk {
                    id,
                    why: "length differs from the manifest".into(),
                })
            }
            Err(e) => {
                if let StoreError::CorruptChunk { id, .. } = &e {
                    self.gateway.report_corrupt(*id);
                }
                return Err(e);
            }
        };
        self.last = Some((i, data.clone()));
        Ok((data, start))
    }
}

/// A chunk read for a response, holding its share of the gateway's buffer
/// budget until the last slice of it is sent.
struct Budgeted {
    data: Vec<u8>,
    _permit: tokio::sync::OwnedSemaphorePermit,
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
                    match reader.read_at(start).await {
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
