//! Wire format of the `/peermirror/chunk/1` bulk-transfer protocol.
//!
//! A stream carries a sequence of request/response exchanges: the client
//! writes one request frame, then reads exactly one response frame, and may
//! then reuse the stream for the next request. All integers are big-endian.
//!
//! ```text
//! request  := 0x01 id[32]                        -- Chunk(id)
//!           | 0x02 count:u32 id[32]*count         -- Have(ids), count <= 65,536
//!           | 0x03 id[32]                        -- ManifestChunks(manifest id)
//! response := 0x01 len:u32 body[len]              -- Found(body), len <= 8 MiB
//!           | 0x02                                -- NotFound
//!           | 0x03 count:u32 bitmap[ceil(count/8)] -- Have bitmap, bit i = ids[i]
//!           | 0x04 count:u32 (id[32] len:u32)*count -- the chunks of an encoded
//!                                                   manifest, in order, count <= 65,536
//! ```
//!
//! Bitmap bit `i` lives in byte `i / 8` at bit position `i % 8` (LSB first).
//! Any unknown tag, oversized length or truncated frame is an error with
//! [`std::io::ErrorKind::InvalidData`] or [`std::io::ErrorKind::UnexpectedEof`];
//! the caller then drops the stream.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::hash::Hash;
use crate::manifest::ChunkRef;

/// Protocol name negotiated for chunk streams.
pub const PROTOCOL_NAME: &str = "/peermirror/chunk/1";
/// Largest chunk body accepted or sent: the chunker's own bound.
pub const MAX_CHUNK_LEN: usize = crate::chunk::MAX_CHUNK_LEN as usize;
/// Largest number of ids in one `Have` request.
pub const MAX_HAVE_IDS: usize = 65_536;

const REQ_CHUNK: u8 = 0x01;
const REQ_HAVE: u8 = 0x02;
const REQ_MANIFEST: u8 = 0x03;
const RESP_FOUND: u8 = 0x01;
const RESP_NOT_FOUND: u8 = 0x02;
const RESP_HAVE: u8 = 0x03;
const RESP_MANIFEST: u8 = 0x04;
/// Most chunks an encoded manifest may be cut into on the wire.
pub const MAX_MANIFEST_CHUNKS: usize = 65_536;

/// A request frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Ask for the body of one chunk.
    Chunk(Hash),
    /// Ask which of these chunks the peer holds.
    Have(Vec<Hash>),
    /// Ask for the chunk list of an encoded manifest the peer holds.
    ManifestChunks(Hash),
}

/// A response frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    /// The chunk body (unverified).
    Found(Bytes),
    /// The peer does not hold the chunk.
    NotFound,
    /// One flag per requested id.
    Have(Vec<bool>),
    /// The chunks (id, length) of the requested manifest's encoding.
    ManifestChunks(Vec<ChunkRef>),
}

impl Response {
    /// About the memory this response holds until it is sent: its wire size
    /// (plus a byte per flag for a have-map), what the server budgets for.
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Response::Found(body) => 5 + body.len(),
            Response::NotFound => 1,
            Response::Have(flags) => 5 + flags.len() + flags.len().div_ceil(8),
            Response::ManifestChunks(list) => 5 + list.len() * 36,
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one byte, returning `None` on a clean end of stream.
async fn read_tag<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Option<u8>> {
    let mut tag = [0u8; 1];
    loop {
        match io.read(&mut tag).await {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(tag[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn read_id<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Hash> {
    let mut id = [0u8; 32];
    io.read_exact(&mut id).await?;
    Ok(Hash(id))
}

async fn read_u32<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<u32> {
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await?;
    Ok(u32::from_be_bytes(buf))
}

/// Converts a length to its `u32` wire form.
fn wire_len(len: usize, max: usize, what: &str) -> io::Result<u32> {
    if len > max {
        return Err(invalid(format!("{what} too large: {len} > {max}")));
    }
    u32::try_from(len).map_err(|_| invalid(format!("{what} does not fit in u32")))
}

/// The start of a request: enough to decide whether to serve it (and how
/// much memory its ids will take) before reading the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestHead {
    /// A chunk request, complete.
    Chunk(Hash),
    /// A have request for this many ids (at most [`MAX_HAVE_IDS`]), which
    /// follow: read them with [`read_have_ids`].
    Have(usize),
    /// A manifest request, complete.
    ManifestChunks(Hash),
}

/// Reads the tag of the next request and what fits in a few bytes after it;
/// `Ok(None)` means the peer closed the stream between requests.
pub(crate) async fn read_request_head<R: AsyncRead + Unpin>(
    io: &mut R,
) -> io::Result<Option<RequestHead>> {
    let Some(tag) = read_tag(io).await? else {
        return Ok(None);
    };
    match tag {
        REQ_CHUNK => Ok(Some(RequestHead::Chunk(read_id(io).await?))),
        REQ_HAVE => {
            let count = read_u32(io).await? as usize;
            if count > MAX_HAVE_IDS {
                return Err(invalid(format!(
                    "have request too large: {count} > {MAX_HAVE_IDS}"
                )));
            }
            Ok(Some(RequestHead::Have(count)))
        }
        REQ_MANIFEST => Ok(Some(RequestHead::ManifestChunks(read_id(io).await?))),
        other => Err(invalid(format!("unknown request tag {other:#04x}"))),
    }
}

/// Reads the `count` ids of a have request. Memory grows with the bytes that
/// actually arrive, not with the count the peer claimed.
pub(crate) async fn read_have_ids<R: AsyncRead + Unpin>(
    io: &mut R,
    count: usize,
) -> io::Result<Vec<Hash>> {
    const BATCH: usize = 1024;
    let mut ids = Vec::with_capacity(count.min(BATCH));
    let mut raw = vec![0u8; count.min(BATCH) * 32];
    while ids.len() < count {
        let n = (count - ids.len()).min(BATCH);
        io.read_exact(&mut raw[..n * 32]).await?;
        ids.extend(raw[..n * 32].chunks_exact(32).map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(c);
            Hash(id)
        }));
    }
    Ok(ids)
}

/// Reads the next request; `Ok(None)` means the peer closed the stream
/// between requests. (The server reads the head and the ids separately, to
/// bound what it holds; this whole-frame form serves tests and fuzzing.)
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) async fn read_request<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Option<Request>> {
    Ok(match read_request_head(io).await? {
        None => None,
        Some(RequestHead::Chunk(id)) => Some(Request::Chunk(id)),
        Some(RequestHead::Have(count)) => Some(Request::Have(read_have_ids(io, count).await?)),
        Some(RequestHead::ManifestChunks(id)) => Some(Request::ManifestChunks(id)),
    })
}

/// Writes one request frame and flushes it.
pub(crate) async fn write_request<W: AsyncWrite + Unpin>(
    io: &mut W,
    req: &Request,
) -> io::Result<()> {
    match req {
        Request::Chunk(id) => {
            let mut buf = [0u8; 33];
            buf[0] = REQ_CHUNK;
            buf[1..].copy_from_slice(id.as_bytes());
            io.write_all(&buf).await?;
        }
        Request::Have(ids) => {
            let count = wire_len(ids.len(), MAX_HAVE_IDS, "have request")?;
            let mut buf = Vec::with_capacity(5 + ids.len() * 32);
            buf.push(REQ_HAVE);
            buf.extend_from_slice(&count.to_be_bytes());
            for id in ids {
                buf.extend_from_slice(id.as_bytes());
            }
            io.write_all(&buf).await?;
        }
        Request::ManifestChunks(id) => {
            let mut buf = [0u8; 33];
            buf[0] = REQ_MANIFEST;
            buf[1..].copy_from_slice(id.as_bytes());
            io.write_all(&buf).await?;
        }
    }
    io.flush().await
}

/// Reads one response frame. End of stream here is an error: a response was
/// expected.
pub(crate) async fn read_response<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Response> {
    let Some(tag) = read_tag(io).await? else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream closed before the response",
        ));
    };
    match tag {
        RESP_FOUND => {
            let len = read_u32(io).await? as usize;
            if len > MAX_CHUNK_LEN {
                return Err(invalid(format!(
                    "chunk body too large: {len} > {MAX_CHUNK_LEN}"
                )));
            }
            let mut body = vec![0u8; len];
            io.read_exact(&mut body).await?;
            Ok(Response::Found(Bytes::from(body)))
        }
        RESP_NOT_FOUND => Ok(Response::NotFound),
        RESP_HAVE => {
            let count = read_u32(io).await? as usize;
            if count > MAX_HAVE_IDS {
                return Err(invalid(format!(
                    "have bitmap too large: {count} > {MAX_HAVE_IDS}"
                )));
            }
            let mut bitmap = vec![0u8; count.div_ceil(8)];
            io.read_exact(&mut bitmap).await?;
            let flags = (0..count)
                .map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            Ok(Response::Have(flags))
        }
        RESP_MANIFEST => {
            let count = read_u32(io).await? as usize;
            if count > MAX_MANIFEST_CHUNKS {
                return Err(invalid(format!(
                    "manifest chunk list too long: {count} > {MAX_MANIFEST_CHUNKS}"
                )));
            }
            let mut raw = vec![0u8; count * 36];
            io.read_exact(&mut raw).await?;
            let list = raw
                .chunks_exact(36)
                .map(|c| {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(&c[..32]);
                    ChunkRef {
                        id: Hash(id),
                        len: u32::from_be_bytes([c[32], c[33], c[34], c[35]]),
                    }
                })
                .collect();
            Ok(Response::ManifestChunks(list))
        }
        other => Err(invalid(format!("unknown response tag {other:#04x}"))),
    }
}

/// Writes one response frame and flushes it.
pub(crate) async fn write_response<W: AsyncWrite + Unpin>(
    io: &mut W,
    resp: &Response,
) -> io::Result<()> {
    match resp {
        Response::Found(body) => {
            let len = wire_len(body.len(), MAX_CHUNK_LEN, "chunk body")?;
            let mut header = [0u8; 5];
            header[0] = RESP_FOUND;
            header[1..].copy_from_slice(&len.to_be_bytes());
            io.write_all(&header).await?;
            io.write_all(body).await?;
        }
        Response::NotFound => io.write_all(&[RESP_NOT_FOUND]).await?,
        Response::Have(flags) => {
            let count = wire_len(flags.len(), MAX_HAVE_IDS, "have bitmap")?;
            let mut buf = vec![0u8; 5 + flags.len().div_ceil(8)];
            buf[0] = RESP_HAVE;
            buf[1..5].copy_from_slice(&count.to_be_bytes());
            for (i, _) in flags.iter().enumerate().filter(|(_, f)| **f) {
                buf[5 + i / 8] |= 1 << (i % 8);
            }
            io.write_all(&buf).await?;
        }
        Response::ManifestChunks(list) => {
            let count = wire_len(list.len(), MAX_MANIFEST_CHUNKS, "manifest chunk list")?;
            let mut buf = Vec::with_capacity(5 + list.len() * 36);
            buf.push(RESP_MANIFEST);
            buf.extend_from_slice(&count.to_be_bytes());
            for c in list {
                buf.extend_from_slice(c.id.as_bytes());
                buf.extend_from_slice(&c.len.to_be_bytes());
            }
            io.write_all(&buf).await?;
        }
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn h(n: u8) -> Hash {
        Hash([n; 32])
    }

    async fn req_round_trip(req: Request) {
        let mut buf = Cursor::new(Vec::new());
        write_request(&mut buf, &req).await.unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        assert_eq!(read_request(&mut rd).await.unwrap(), Some(req));
        assert_eq!(read_request(&mut rd).await.unwrap(), None, "clean EOF");
    }

    async fn resp_round_trip(resp: Response) {
        let mut buf = Cursor::new(Vec::new());
        write_response(&mut buf, &resp).await.unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        assert_eq!(read_response(&mut rd).await.unwrap(), resp);
    }

    fn kind_of<T: std::fmt::Debug>(r: io::Result<T>) -> io::ErrorKind {
        r.expect_err("expected an error").kind()
    }

    #[tokio::test]
    async fn requests_round_trip() {
        req_round_trip(Request::Chunk(h(7))).await;
        req_round_trip(Request::Have(vec![])).await;
        req_round_trip(Request::ManifestChunks(h(7))).await;
        req_round_trip(Request::Have(
            (0..300u16).map(|i| h((i % 251) as u8)).collect(),
        ))
        .await;
    }

    #[tokio::test]
    async fn responses_round_trip() {
        resp_round_trip(Response::NotFound).await;
        resp_round_trip(Response::Found(Bytes::new())).await;
        resp_round_trip(Response::Found(
            (0..100_000u32).map(|i| i as u8).collect::<Vec<_>>().into(),
        ))
        .await;
        resp_round_trip(Response::Have(vec![])).await;
        resp_round_trip(Response::ManifestChunks(vec![])).await;
        resp_round_trip(Response::ManifestChunks(vec![
            ChunkRef { id: h(1), len: 5 },
            ChunkRef {
                id: h(2),
                len: 1 << 20,
            },
        ]))
        .await;
        for n in [1usize, 7, 8, 9, 1000] {
            resp_round_trip(Response::Have((0..n).map(|i| i % 3 == 0).collect())).await;
        }
    }

    #[tokio::test]
    async fn several_frames_on_one_stream() {
        let mut buf = Cursor::new(Vec::new());
        write_request(&mut buf, &Request::Chunk(h(1)))
            .await
            .unwrap();
        write_request(&mut buf, &Request::Have(vec![h(2)]))
            .await
            .unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        assert_eq!(
            read_request(&mut rd).await.unwrap(),
            Some(Request::Chunk(h(1)))
        );
        assert_eq!(
            read_request(&mut rd).await.unwrap(),
            Some(Request::Have(vec![h(2)]))
        );
        assert_eq!(read_request(&mut rd).await.unwrap(), None);
    }

    #[tokio::test]
    async fn malformed_requests_are_rejected() {
        // Unknown tag.
        let r = read_request(&mut Cursor::new(vec![0x09u8])).await;
        assert_eq!(kind_of(r), io::ErrorKind::InvalidData);
        // Truncated id.
        let r = read_request(&mut Cursor::new(vec![REQ_CHUNK, 1, 2, 3])).await;
        assert_eq!(kind_of(r), io::ErrorKind::UnexpectedEof);
        // Too many ids (checked before any allocation).
        let mut frame = vec![REQ_HAVE];
        frame.extend_from_slice(&((MAX_HAVE_IDS as u32) + 1).to_be_bytes());
        let r = read_request(&mut Cursor::new(frame)).await;
        assert_eq!(kind_of(r), io::ErrorKind::InvalidData);
        // Count larger than the ids actually sent.
        let mut frame = vec![REQ_HAVE];
        frame.extend_from_slice(&2u32.to_be_bytes());
        frame.extend_from_slice(&[0u8; 32]);
        let r = read_request(&mut Cursor::new(frame)).await;
        assert_eq!(kind_of(r), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn malformed_responses_are_rejected() {
        let r = read_response(&mut Cursor::new(vec![0x7fu8])).await;
        assert_eq!(kind_of(r), io::ErrorKind::InvalidData);
        let r = read_response(&mut Cursor::new(Vec::<u8>::new())).await;
        assert_eq!(kind_of(r), io::ErrorKind::UnexpectedEof);
        // Oversized body is refused from the header alone.
        let mut frame = vec![RESP_FOUND];
        frame.extend_from_slice(&((MAX_CHUNK_LEN as u32) + 1).to_be_bytes());
        let r = read_response(&mut Cursor::new(frame)).await;
        assert_eq!(kind_of(r), io::ErrorKind::InvalidData);
        // Truncated body.
        let mut frame = vec![RESP_FOUND];
        frame.extend_from_slice(&10u32.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3]);
        let r = read_response(&mut Cursor::new(frame)).await;
        assert_eq!(kind_of(r), io::ErrorKind::UnexpectedEof);
        // Oversized bitmap.
        let mut frame = vec![RESP_HAVE];
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        let r = read_response(&mut Cursor::new(frame)).await;
        assert_eq!(kind_of(r), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn oversized_frames_are_not_written() {
        let mut buf = Cursor::new(Vec::new());
        let big = Response::Found(vec![0u8; MAX_CHUNK_LEN + 1].into());
        assert_eq!(
            kind_of(write_response(&mut buf, &big).await),
            io::ErrorKind::InvalidData
        );
        let many = Request::Have(vec![h(0); MAX_HAVE_IDS + 1]);
        assert_eq!(
            kind_of(write_request(&mut buf, &many).await),
            io::ErrorKind::InvalidData
        );
        assert!(buf.into_inner().is_empty(), "nothing written on error");
    }
}
