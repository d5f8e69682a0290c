//! The `/peermirror/mirrors/1` protocol: ask a peer for the mirror records
//! it holds for a collection, so a node that joins learns the HTTP mirrors
//! at once instead of waiting for each to re-sign its record. Both ends run
//! on raw streams beside the event loop; one exchange per stream, each side
//! closing its write half after its message:
//!
//! ```text
//! request  := collection[32]
//! response := count:u8 (len:u16 record[len]) × count   -- count ≤ 64, len ≤ 2048
//! ```
//!
//! Integers are big-endian. Records are opaque here: the application
//! verifies each one (its own signature vouches for it, whoever hands it on).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams, OpenStreamError};
use tokio::sync::Semaphore;
use tracing::debug;

use super::rate::RateLimiter;
use super::{ChunkProvider, NetError};
use crate::keys::CollectionId;
use crate::task::lock;

/// Protocol name.
pub const PROTOCOL_NAME: &str = "/peermirror/mirrors/1";
/// Most records in one answer.
pub const MAX_RECORDS: usize = 64;
/// Largest record carried.
pub const MAX_RECORD_LEN: usize = 2048;
/// Deadline for one exchange, each side.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once, all peers together; more are dropped.
const MAX_SERVING: usize = 32;

pub(crate) fn protocol() -> StreamProtocol {
    StreamProtocol::new(PROTOCOL_NAME)
}

/// Encodes an answer, keeping the first [`MAX_RECORDS`] records that fit
/// the limits.
pub(crate) fn encode_response(records: &[Vec<u8>]) -> Vec<u8> {
    let kept: Vec<&Vec<u8>> = records
        .iter()
        .filter(|r| r.len() <= MAX_RECORD_LEN)
        .take(MAX_RECORDS)
        .collect();
    let mut out = vec![kept.len() as u8];
    for r in kept {
        out.extend((r.len() as u16).to_be_bytes());
        out.extend(r.iter());
    }
    out
}

/// Decodes an answer, refusing anything over the limits or with bytes
/// left over.
pub(crate) fn decode_response(raw: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let (&count, mut rest) = raw.split_first().ok_or_else(|| bad("empty answer"))?;
    if usize::from(count) > MAX_RECORDS {
        return Err(bad("too many records"));
    }
    let mut out = Vec::with_capacity(count.into());
    for _ in 0..count {
        let (len, tail) = rest.split_at_checked(2).ok_or_else(|| bad("truncated"))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len > MAX_RECORD_LEN {
            return Err(bad("record too long"));
        }
        let (rec, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
        out.push(rec.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

/// Largest answer on the wire.
const MAX_RESPONSE: usize = 1 + MAX_RECORDS * (2 + MAX_RECORD_LEN);

async fn read_to_end_bounded<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    s.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too long",
        ));
    }
    Ok(buf)
}

/// Asks `peer` for its records of `collection` (unverified bytes).
pub(crate) async fn request(
    control: &Control,
    peer: PeerId,
    collection: CollectionId,
) -> Result<Vec<Vec<u8>>, NetError> {
    let mut control = control.clone();
    let mut stream = match control.open_stream(peer, protocol()).await {
        Ok(s) => s,
        Err(OpenStreamError::UnsupportedProtocol(p)) => {
            return Err(NetError::Unsupported(p.to_string()))
        }
        Err(e) => return Err(NetError::Stream(e.to_string())),
    };
    let exchange = async {
        stream.write_all(&collection.0).await?;
        stream.close().await?;
        read_to_end_bounded(&mut stream, MAX_RESPONSE).await
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|e| NetError::Stream(e.to_string()))?;
    decode_response(&raw).map_err(|e| NetError::Protocol(e.to_string()))
}

/// Answers one request on `stream`.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    provider: Arc<dyn ChunkProvider>,
) -> io::Result<()> {
    let raw = read_to_end_bounded(stream, 64).await?;
    let c = <[u8; 32]>::try_from(raw.as_slice())
        .map(CollectionId)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "request must be 32 bytes"))?;
    let records = tokio::task::spawn_blocking(move || provider.mirror_records(&c))
        .await
        .unwrap_or_default();
    stream.write_all(&encode_response(&records)).await?;
    stream.close().await
}

/// Serves inbound requests until the swarm goes away; `per_sec` requests
/// per second per peer (bursts of twice that; 0: unlimited).
pub(crate) async fn serve(
    mut incoming: IncomingStreams,
    provider: Arc<dyn ChunkProvider>,
    per_sec: u32,
) {
    let slots = Arc::new(Semaphore::new(MAX_SERVING));
    let rate = Arc::new(Mutex::new(RateLimiter::new(
        per_sec,
        per_sec.saturating_mul(2),
    )));
    while let Some((peer, mut stream)) = incoming.next().await {
        if !lock(&rate).check(&peer, Instant::now()) {
            debug!(%peer, "peer over its mirror-records rate, refused");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many mirror-records requests at once, refused");
            continue;
        };
        let provider = provider.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            match tokio::time::timeout(TIMEOUT, answer(&mut stream, provider)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "mirror-records request failed"),
                Err(_) => debug!(%peer, "mirror-records request timed out"),
            }
            drop(slot);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_limits_hold() {
        let recs = vec![vec![1, 2, 3], vec![], vec![9; MAX_RECORD_LEN]];
        let wire = encode_response(&recs);
        assert_eq!(decode_response(&wire).unwrap(), recs);
        assert_eq!(decode_response(&[0]).unwrap(), Vec::<Vec<u8>>::new());
        // Over-long records and surplus records are left out when encoding.
        let many = vec![vec![7u8; 4]; MAX_RECORDS + 5];
        assert_eq!(
            decode_response(&encode_response(&many)).unwrap().len(),
            MAX_RECORDS
        );
        let long = vec![vec![0u8; MAX_RECORD_LEN + 1]];
        assert_eq!(encode_response(&long), vec![0]);
        for bad in [
            vec![],
            vec![1],
            vec![1, 0, 5, 1],
            vec![0, 0],
            vec![MAX_RECORDS as u8 + 1],
            {
                let mut v = vec![1];
                v.extend(((MAX_RECORD_LEN + 1) as u16).to_be_bytes());
                v.extend(vec![0; MAX_RECORD_LEN + 1]);
                v
            },
        ] {
            assert!(decode_response(&bad).is_err(), "{bad:?}");
        }
    }
}
