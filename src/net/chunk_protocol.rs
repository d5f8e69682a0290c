//! Wire format of the `/peermirror/chunk/2` bulk-transfer protocol (see
//! `docs/protocol.md` section 6.2, which gives every frame byte by byte).
//!
//! A stream carries a sequence of exchanges: the client writes one request
//! frame, then reads its whole answer, and may then reuse the stream. A
//! `Get` is answered by one frame per id, so many small chunks travel in one
//! exchange and each can be checked as it arrives; a `Subscribe` is answered
//! by a have-map and then by updates pushed for as long as the server's
//! download runs. All integers are big-endian.
//!
//! ```text
//! request  := 0x01 count:u32 id[32]*count          -- Get(ids), 1 <= count <= 8192
//!           | 0x02 count:u32 id[32]*count          -- Have(ids), count <= 65,536
//!           | 0x03 id[32]                          -- ManifestChunks(manifest id)
//!           | 0x04 id[32]                          -- Subscribe(manifest id)
//! response := 0x01 len:u32 body[len]               -- Found(body), len <= 8 MiB
//!           | 0x02                                 -- NotFound
//!           | 0x03 count:u32 bitmap[ceil(count/8)] -- Have: bit i for ids[i]
//!           | 0x04 count:u32 (id[32] len:u32)*count -- ManifestChunks, count <= 65,536
//!           | 0x05 count:u32 bitmap[ceil(count/8)] -- Map: bit i for chunk i of the order
//!           | 0x06 count:u32                       -- All: every chunk of the order
//!           | 0x07 n:u32 index:u32*n               -- Added: newly held, 1 <= n <= 65,536
//!           | 0x08                                 -- Elsewhere: held, but ask other peers first
//! ```
//!
//! Bitmap bit `i` lives in byte `i / 8` at bit position `i % 8` (LSB first).
//! Every count and length is checked against its limit from the header,
//! before anything is allocated, and large bodies are read in pieces so
//! memory grows with the bytes that arrive, not with what a header claims
//! (a chunk body goes into an idle recycled buffer when there is one: memory
//! already held).
//! Any unknown tag, oversized length or truncated frame is an error with
//! [`std::io::ErrorKind::InvalidData`] or [`std::io::ErrorKind::UnexpectedEof`];
//! the caller then drops the stream.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunk_board::Bitmap;
use crate::hash::Hash;
use crate::manifest::ChunkRef;

/// Protocol name negotiated for chunk streams.
pub const PROTOCOL_NAME: &str = "/peermirror/chunk/2";
/// Largest chunk body accepted or sent: the chunker's own bound.
pub const MAX_CHUNK_LEN: usize = crate::chunk::MAX_CHUNK_LEN as usize;
/// Largest number of ids in one `Have` request.
pub const MAX_HAVE_IDS: usize = 65_536;
/// Largest number of ids in one `Get` request: 256 KiB of ids, enough to
/// keep a link busy with 2 KiB chunks for a while.
pub const MAX_GET_IDS: usize = 8192;
/// Most chunks an encoded manifest may be cut into on the wire. A manifest
/// is at most 4 GiB and cut with [`crate::manifest::transfer_chunker`]
/// (pieces of at least 4 KiB, and at least 1/65,536 of the manifest, but
/// the last), so an honest list never has more.
pub const MAX_MANIFEST_CHUNKS: usize = crate::manifest::MAX_PIECES as usize;
/// Largest chunk order a have-map may cover: a 4 GiB manifest names fewer
/// distinct chunks (36 bytes each), so 16 MiB of bitmap at most.
pub const MAX_ORDER_LEN: u32 = 1 << 27;
/// Most indices in one `Added` frame.
pub const MAX_ADDED: usize = 65_536;

const REQ_GET: u8 = 0x01;
const REQ_HAVE: u8 = 0x02;
const REQ_MANIFEST: u8 = 0x03;
const REQ_SUBSCRIBE: u8 = 0x04;
const RESP_FOUND: u8 = 0x01;
const RESP_NOT_FOUND: u8 = 0x02;
const RESP_HAVE: u8 = 0x03;
const RESP_MANIFEST: u8 = 0x04;
const RESP_MAP: u8 = 0x05;
const RESP_ALL: u8 = 0x06;
const RESP_ADDED: u8 = 0x07;
const RESP_ELSEWHERE: u8 = 0x08;

/// Bytes read into memory at a time for a large frame.
const PIECE: usize = 64 << 10;
/// Bytes of a chunk body handed to the stream at a time (below the mmap
/// threshold `main.rs` sets).
const WRITE_PIECE: usize = 256 << 10;

/// A request frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Ask for the bodies of these chunks, one answer frame each, in order.
    Get(Vec<Hash>),
    /// Ask which of these chunks the peer holds.
    Have(Vec<Hash>),
    /// Ask for the chunk list of an encoded manifest the peer holds.
    ManifestChunks(Hash),
    /// Ask for the have-map over a manifest's chunk order, and its updates.
    Subscribe(Hash),
}

/// A response frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    /// A chunk body (unverified).
    Found(Bytes),
    /// The peer does not hold the chunk (or the manifest).
    NotFound,
    /// One flag per requested id.
    Have(Vec<bool>),
    /// The chunks (id, length) of the requested manifest's encoding.
    ManifestChunks(Vec<ChunkRef>),
    /// The have-map over the chunk order.
    Map(Bitmap),
    /// The peer holds every chunk of an order of this length.
    All(u32),
    /// Indices of the order the peer now holds too.
    Added(Vec<u32>),
    /// An answer to one id of a `Get`: the peer holds the chunk but sent it
    /// to another downloader moments ago, which will serve it: ask others
    /// first (asking again later is answered). How a source sends each
    /// chunk about once.
    Elsewhere,
}

impl Response {
    /// About the memory this response holds until it is sent: its wire size
    /// (plus a byte per flag for a have-map), what the server budgets for.
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Response::Found(body) => 5 + body.len(),
            Response::NotFound | Response::Elsewhere => 1,
            Response::Have(flags) => 5 + flags.len() + flags.len().div_ceil(8),
            Response::ManifestChunks(list) => 5 + list.len() * 36,
            Response::Map(bits) => 5 + bits.as_bytes().len(),
            Response::All(_) => 5,
            Response::Added(list) => 5 + list.len() * 4,
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

/// Reads `len` bytes in pieces, so a header that lies about the length
/// costs only the bytes that really arrive.
async fn read_bytes<R: AsyncRead + Unpin>(io: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len.min(PIECE));
    while out.len() < len {
        let start = out.len();
        let n = (len - start).min(PIECE);
        out.resize(start + n, 0);
        io.read_exact(&mut out[start..]).await?;
    }
    Ok(out)
}

/// Reads a chunk body of `len` bytes (already checked against the limit).
/// An idle recycled buffer is read into whole (no zeroing, no growing: it
/// is memory already held, so a lying length costs nothing new); without
/// one, the body is read in pieces like any large frame.
async fn read_body<R: AsyncRead + Unpin>(io: &mut R, len: usize) -> io::Result<Vec<u8>> {
    match crate::store::buffers::reuse(len) {
        Some(mut buf) => match io.read_exact(&mut buf).await {
            Ok(()) => Ok(buf),
            Err(e) => {
                crate::store::buffers::give(buf);
                Err(e)
            }
        },
        None => read_bytes(io, len).await,
    }
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
    /// A get request for this many ids (1..=[`MAX_GET_IDS`]), which follow:
    /// read them with [`read_ids`].
    Get(usize),
    /// A have request for this many ids (at most [`MAX_HAVE_IDS`]), which
    /// follow: read them with [`read_ids`].
    Have(usize),
    /// A manifest request, complete.
    ManifestChunks(Hash),
    /// A subscription, complete.
    Subscribe(Hash),
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
        REQ_GET => {
            let count = read_u32(io).await? as usize;
            if count == 0 || count > MAX_GET_IDS {
                return Err(invalid(format!(
                    "get request for {count} ids (1..={MAX_GET_IDS})"
                )));
            }
            Ok(Some(RequestHead::Get(count)))
        }
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
        REQ_SUBSCRIBE => Ok(Some(RequestHead::Subscribe(read_id(io).await?))),
        other => Err(invalid(format!("unknown request tag {other:#04x}"))),
    }
}

/// Reads the `count` ids of a get or have request. Memory grows with the
/// bytes that actually arrive, not with the count the peer claimed.
pub(crate) async fn read_ids<R: AsyncRead + Unpin>(
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
        Some(RequestHead::Get(count)) => Some(Request::Get(read_ids(io, count).await?)),
        Some(RequestHead::Have(count)) => Some(Request::Have(read_ids(io, count).await?)),
        Some(RequestHead::ManifestChunks(id)) => Some(Request::ManifestChunks(id)),
        Some(RequestHead::Subscribe(id)) => Some(Request::Subscribe(id)),
    })
}

/// The bytes of one request frame; refuses frames over the limits.
pub(crate) fn encode_request(req: &Request) -> io::Result<Vec<u8>> {
    let with_ids = |tag: u8, ids: &[Hash], max: usize, what: &str| -> io::Result<Vec<u8>> {
        let count = wire_len(ids.len(), max, what)?;
        let mut buf = Vec::with_capacity(5 + ids.len() * 32);
        buf.push(tag);
        buf.extend_from_slice(&count.to_be_bytes());
        for id in ids {
            buf.extend_from_slice(id.as_bytes());
        }
        Ok(buf)
    };
    let with_id = |tag: u8, id: &Hash| {
        let mut buf = Vec::with_capacity(33);
        buf.push(tag);
        buf.extend_from_slice(id.as_bytes());
        buf
    };
    match req {
        Request::Get(ids) if ids.is_empty() => Err(invalid("get request without ids")),
        Request::Get(ids) => with_ids(REQ_GET, ids, MAX_GET_IDS, "get request"),
        Request::Have(ids) => with_ids(REQ_HAVE, ids, MAX_HAVE_IDS, "have request"),
        Request::ManifestChunks(id) => Ok(with_id(REQ_MANIFEST, id)),
        Request::Subscribe(id) => Ok(with_id(REQ_SUBSCRIBE, id)),
    }
}

/// Writes one request frame and flushes it.
pub(crate) async fn write_request<W: AsyncWrite + Unpin>(
    io: &mut W,
    req: &Request,
) -> io::Result<()> {
    let buf = encode_request(req)?;
    io.write_all(&buf).await?;
    io.flush().await
}

/// Reads a bitmap body of `count` bits (count already checked).
async fn read_bitmap<R: AsyncRead + Unpin>(io: &mut R, count: u32) -> io::Result<Bitmap> {
    let raw = read_bytes(io, (count as usize).div_ceil(8)).await?;
    Bitmap::from_bytes(count, raw).ok_or_else(|| invalid("bitmap length"))
}

/// Reads one response frame. End of stream here is an error: a response was
/// expected. `order` is the length of the chunk order a subscription is
/// about, if one is: `Map`, `All` and `Added` frames must agree with it
/// (checked before their bodies are read), and are refused without one.
pub(crate) async fn read_response<R: AsyncRead + Unpin>(
    io: &mut R,
    order: Option<u32>,
) -> io::Result<Response> {
    let Some(tag) = read_tag(io).await? else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream closed before the response",
        ));
    };
    let order_len = |count: u32| match order {
        Some(n) if n == count => Ok(count),
        Some(n) => Err(invalid(format!("have-map of {count} chunks, not {n}"))),
        None => Err(invalid("have-map frame outside a subscription")),
    };
    match tag {
        RESP_FOUND => {
            let len = read_u32(io).await? as usize;
            if len > MAX_CHUNK_LEN {
                return Err(invalid(format!(
                    "chunk body too large: {len} > {MAX_CHUNK_LEN}"
                )));
            }
            Ok(Response::Found(Bytes::from(read_body(io, len).await?)))
        }
        RESP_NOT_FOUND => Ok(Response::NotFound),
        RESP_ELSEWHERE => Ok(Response::Elsewhere),
        RESP_HAVE => {
            let count = read_u32(io).await? as usize;
            if count > MAX_HAVE_IDS {
                return Err(invalid(format!(
                    "have bitmap too large: {count} > {MAX_HAVE_IDS}"
                )));
            }
            let bits = read_bitmap(io, count as u32).await?;
            Ok(Response::Have(
                (0..count as u32).map(|i| bits.get(i)).collect(),
            ))
        }
        RESP_MANIFEST => {
            let count = read_u32(io).await? as usize;
            if count > MAX_MANIFEST_CHUNKS {
                return Err(invalid(format!(
                    "manifest chunk list too long: {count} > {MAX_MANIFEST_CHUNKS}"
                )));
            }
            let raw = read_bytes(io, count * 36).await?;
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
        RESP_MAP => {
            let count = order_len(read_u32(io).await?)?;
            Ok(Response::Map(read_bitmap(io, count).await?))
        }
        RESP_ALL => Ok(Response::All(order_len(read_u32(io).await?)?)),
        RESP_ADDED => {
            let len = order_len(order.unwrap_or(0))?;
            let n = read_u32(io).await? as usize;
            if n == 0 || n > MAX_ADDED {
                return Err(invalid(format!(
                    "{n} indices in an update (1..={MAX_ADDED})"
                )));
            }
            let raw = read_bytes(io, n * 4).await?;
            let list: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(bad) = list.iter().find(|&&i| i >= len) {
                return Err(invalid(format!("index {bad} beyond the order ({len})")));
            }
            Ok(Response::Added(list))
        }
        other => Err(invalid(format!("unknown response tag {other:#04x}"))),
    }
}

/// Writes one response frame and flushes it.
#[cfg(test)]
pub(crate) async fn write_response<W: AsyncWrite + Unpin>(
    io: &mut W,
    resp: &Response,
) -> io::Result<()> {
    write_response_unflushed(io, resp).await?;
    io.flush().await
}

/// Writes one response frame without flushing, so a run of small frames
/// leaves in few packets; the caller flushes after the run.
pub(crate) async fn write_response_unflushed<W: AsyncWrite + Unpin>(
    io: &mut W,
    resp: &Response,
) -> io::Result<()> {
    let head = |tag: u8, n: u32| {
        let mut h = [0u8; 5];
        h[0] = tag;
        h[1..].copy_from_slice(&n.to_be_bytes());
        h
    };
    match resp {
        Response::Found(body) => {
            let len = wire_len(body.len(), MAX_CHUNK_LEN, "chunk body")?;
            if body.len() <= 16 << 10 {
                // One write for a small frame: fewer yamux frames.
                let mut buf = Vec::with_capacity(5 + body.len());
                buf.extend_from_slice(&head(RESP_FOUND, len));
                buf.extend_from_slice(body);
                io.write_all(&buf).await?;
            } else {
                io.write_all(&head(RESP_FOUND, len)).await?;
                // In pieces: QUIC copies each write into one buffer, and
                // buffers past the mmap threshold are faulted in anew.
                for piece in body.chunks(WRITE_PIECE) {
                    io.write_all(piece).await?;
                }
            }
        }
        Response::NotFound => io.write_all(&[RESP_NOT_FOUND]).await?,
        Response::Elsewhere => io.write_all(&[RESP_ELSEWHERE]).await?,
        Response::Have(flags) => {
            let count = wire_len(flags.len(), MAX_HAVE_IDS, "have bitmap")?;
            let mut buf = vec![0u8; 5 + flags.len().div_ceil(8)];
            buf[..5].copy_from_slice(&head(RESP_HAVE, count));
            for (i, _) in flags.iter().enumerate().filter(|(_, f)| **f) {
                buf[5 + i / 8] |= 1 << (i % 8);
            }
            io.write_all(&buf).await?;
        }
        Response::ManifestChunks(list) => {
            let count = wire_len(list.len(), MAX_MANIFEST_CHUNKS, "manifest chunk list")?;
            let mut buf = Vec::with_capacity(5 + list.len() * 36);
            buf.extend_from_slice(&head(RESP_MANIFEST, count));
            for c in list {
                buf.extend_from_slice(c.id.as_bytes());
                buf.extend_from_slice(&c.len.to_be_bytes());
            }
            io.write_all(&buf).await?;
        }
        Response::Map(bits) => {
            if bits.len() > MAX_ORDER_LEN {
                return Err(invalid(format!("have-map of {} chunks", bits.len())));
            }
            io.write_all(&head(RESP_MAP, bits.len())).await?;
            io.write_all(bits.as_bytes()).await?;
        }
        Response::All(n) => {
            if *n > MAX_ORDER_LEN {
                return Err(invalid(format!("have-map of {n} chunks")));
            }
            io.write_all(&head(RESP_ALL, *n)).await?;
        }
        Response::Added(list) => {
            if list.is_empty() {
                return Err(invalid("empty update"));
            }
            let n = wire_len(list.len(), MAX_ADDED, "update")?;
            let mut buf = Vec::with_capacity(5 + list.len() * 4);
            buf.extend_from_slice(&head(RESP_ADDED, n));
            for i in list {
                buf.extend_from_slice(&i.to_be_bytes());
            }
            io.write_all(&buf).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
