//! The `/peermirror/latest/1` request-response protocol: ask a peer for the
//! latest signed announcement it accepted for a collection, so a node that
//! joins late can catch up without waiting for the next gossip message.
//!
//! Each exchange uses its own stream, and each side closes its write half
//! after its message, so messages are delimited by end of stream:
//!
//! ```text
//! request  := collection[32]                 (at most 64 bytes are read)
//! response := 0x00                           -- no announcement known
//!           | 0x01 announcement[..]          -- opaque bytes, at most 64 KiB
//! ```

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};

use crate::keys::CollectionId;

/// Protocol name negotiated for latest-announcement requests.
pub const PROTOCOL_NAME: &str = "/peermirror/latest/1";
/// Largest request read from a stream.
pub const MAX_REQUEST_LEN: usize = 64;
/// Largest announcement carried in a response.
pub const MAX_ANNOUNCEMENT_LEN: usize = 64 * 1024;

const NONE: u8 = 0x00;
const SOME: u8 = 0x01;

/// Codec for [`PROTOCOL_NAME`]: a 32-byte collection id in, an optional
/// opaque announcement out.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LatestCodec;

/// The request-response behaviour speaking this protocol.
pub(crate) type LatestBehaviour = request_response::Behaviour<LatestCodec>;

/// Builds the behaviour with the given per-request timeout and most
/// requests in flight per connection (each way).
pub(crate) fn behaviour(timeout: std::time::Duration, in_flight: usize) -> LatestBehaviour {
    request_response::Behaviour::with_codec(
        LatestCodec,
        [(
            StreamProtocol::new(PROTOCOL_NAME),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(in_flight.max(1)),
    )
}

/// Reads until end of stream, refusing more than `max` bytes.
async fn read_bounded<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message longer than {max} bytes"),
        ));
    }
    Ok(buf)
}

pub(crate) fn decode_request(raw: &[u8]) -> io::Result<CollectionId> {
    <[u8; 32]>::try_from(raw).map(CollectionId).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request must be 32 bytes, got {}", raw.len()),
        )
    })
}

pub(crate) fn decode_response(raw: &[u8]) -> io::Result<Option<Vec<u8>>> {
    match raw.split_first() {
        Some((&NONE, [])) => Ok(None),
        Some((&SOME, rest)) => Ok(Some(rest.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed latest-announcement response",
        )),
    }
}

impl request_response::Codec for LatestCodec {
    type Protocol = StreamProtocol;
    type Request = CollectionId;
    type Response = Option<Vec<u8>>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<CollectionId>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_request(&read_bounded(io, MAX_REQUEST_LEN).await?)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Option<Vec<u8>>>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_response(&read_bounded(io, MAX_ANNOUNCEMENT_LEN + 1).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: CollectionId,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.0).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Option<Vec<u8>>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match res {
            None => io.write_all(&[NONE]).await,
            Some(bytes) if bytes.len() > MAX_ANNOUNCEMENT_LEN => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "announcement larger than 64 KiB",
            )),
            Some(bytes) => {
                io.write_all(&[SOME]).await?;
                io.write_all(&bytes).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use request_response::Codec;

    fn proto() -> StreamProtocol {
        StreamProtocol::new(PROTOCOL_NAME)
    }

    #[tokio::test]
    async fn round_trips() {
        let mut c = LatestCodec;
        let mut buf = Cursor::new(Vec::new());
        c.write_request(&proto(), &mut buf, CollectionId([9u8; 32]))
            .await
            .unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        assert_eq!(
            c.read_request(&proto(), &mut rd).await.unwrap(),
            CollectionId([9u8; 32])
        );

        for resp in [
            None,
            Some(vec![]),
            Some(vec![1, 2, 3]),
            Some(vec![5; MAX_ANNOUNCEMENT_LEN]),
        ] {
            let mut buf = Cursor::new(Vec::new());
            c.write_response(&proto(), &mut buf, resp.clone())
                .await
                .unwrap();
            let mut rd = Cursor::new(buf.into_inner());
            assert_eq!(c.read_response(&proto(), &mut rd).await.unwrap(), resp);
        }
    }

    #[tokio::test]
    async fn malformed_and_oversized_are_rejected() {
        let mut c = LatestCodec;
        for raw in [vec![], vec![1u8; 31], vec![1u8; 33], vec![1u8; 1000]] {
            let r = c.read_request(&proto(), &mut Cursor::new(raw)).await;
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
        let mut too_big = vec![SOME];
        too_big.resize(MAX_ANNOUNCEMENT_LEN + 2, 0);
        for raw in [vec![], vec![NONE, 1], vec![7u8], too_big] {
            let r = c.read_response(&proto(), &mut Cursor::new(raw)).await;
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
        let mut buf = Cursor::new(Vec::new());
        let r = c
            .write_response(&proto(), &mut buf, Some(vec![0; MAX_ANNOUNCEMENT_LEN + 1]))
            .await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
