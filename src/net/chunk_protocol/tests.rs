//! Round trips, limits and the test vectors of `docs/protocol.md` 9.7.

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

async fn resp_round_trip(resp: Response, order: Option<u32>) {
    let mut buf = Cursor::new(Vec::new());
    write_response(&mut buf, &resp).await.unwrap();
    let mut rd = Cursor::new(buf.into_inner());
    assert_eq!(read_response(&mut rd, order).await.unwrap(), resp);
}

async fn response_bytes(resp: &Response) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    write_response(&mut buf, resp).await.unwrap();
    buf.into_inner()
}

fn kind_of<T: std::fmt::Debug>(r: io::Result<T>) -> io::ErrorKind {
    r.expect_err("expected an error").kind()
}

fn bitmap(len: u32, ones: &[u32]) -> Bitmap {
    let mut b = Bitmap::new(len);
    for &i in ones {
        b.set(i);
    }
    b
}

#[tokio::test]
async fn requests_round_trip() {
    req_round_trip(Request::Get(vec![h(7)])).await;
    req_round_trip(Request::Get(vec![h(1); MAX_GET_IDS])).await;
    req_round_trip(Request::Have(vec![])).await;
    req_round_trip(Request::ManifestChunks(h(7))).await;
    req_round_trip(Request::Subscribe(h(9))).await;
    req_round_trip(Request::Have(
        (0..300u16).map(|i| h((i % 251) as u8)).collect(),
    ))
    .await;
}

#[tokio::test]
async fn responses_round_trip() {
    resp_round_trip(Response::NotFound, None).await;
    resp_round_trip(Response::Elsewhere, None).await;
    resp_round_trip(Response::Found(Bytes::new()), None).await;
    resp_round_trip(
        Response::Found((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>().into()),
        None,
    )
    .await;
    resp_round_trip(Response::Have(vec![]), None).await;
    resp_round_trip(Response::ManifestChunks(vec![]), None).await;
    resp_round_trip(
        Response::ManifestChunks(vec![
            ChunkRef { id: h(1), len: 5 },
            ChunkRef {
                id: h(2),
                len: 1 << 20,
            },
        ]),
        None,
    )
    .await;
    for n in [1usize, 7, 8, 9, 1000] {
        resp_round_trip(Response::Have((0..n).map(|i| i % 3 == 0).collect()), None).await;
    }
    resp_round_trip(Response::Map(bitmap(0, &[])), Some(0)).await;
    resp_round_trip(Response::Map(bitmap(1000, &[0, 7, 999])), Some(1000)).await;
    resp_round_trip(Response::All(1000), Some(1000)).await;
    resp_round_trip(Response::Added(vec![999, 0, 5]), Some(1000)).await;
}

#[tokio::test]
async fn several_frames_on_one_stream() {
    let mut buf = Cursor::new(Vec::new());
    write_request(&mut buf, &Request::Get(vec![h(1), h(2)]))
        .await
        .unwrap();
    write_request(&mut buf, &Request::Have(vec![h(2)]))
        .await
        .unwrap();
    let mut rd = Cursor::new(buf.into_inner());
    assert_eq!(
        read_request(&mut rd).await.unwrap(),
        Some(Request::Get(vec![h(1), h(2)]))
    );
    assert_eq!(
        read_request(&mut rd).await.unwrap(),
        Some(Request::Have(vec![h(2)]))
    );
    assert_eq!(read_request(&mut rd).await.unwrap(), None);
    // A get's answer: one frame per id, in order.
    let mut buf = Cursor::new(Vec::new());
    for r in [
        Response::Found(Bytes::from_static(b"ab")),
        Response::NotFound,
    ] {
        write_response_unflushed(&mut buf, &r).await.unwrap();
    }
    let mut rd = Cursor::new(buf.into_inner());
    assert_eq!(
        read_response(&mut rd, None).await.unwrap(),
        Response::Found(Bytes::from_static(b"ab"))
    );
    assert_eq!(
        read_response(&mut rd, None).await.unwrap(),
        Response::NotFound
    );
}

#[tokio::test]
async fn malformed_requests_are_rejected() {
    let bad = |frame: Vec<u8>| async move { read_request(&mut Cursor::new(frame)).await };
    // Unknown tag.
    assert_eq!(kind_of(bad(vec![0x09]).await), io::ErrorKind::InvalidData);
    // Truncated id.
    assert_eq!(
        kind_of(bad(vec![REQ_MANIFEST, 1, 2, 3]).await),
        io::ErrorKind::UnexpectedEof
    );
    // Too many ids, or none, refused from the header.
    for (tag, n) in [
        (REQ_HAVE, MAX_HAVE_IDS + 1),
        (REQ_GET, MAX_GET_IDS + 1),
        (REQ_GET, 0),
    ] {
        let mut frame = vec![tag];
        frame.extend_from_slice(&(n as u32).to_be_bytes());
        assert_eq!(kind_of(bad(frame).await), io::ErrorKind::InvalidData);
    }
    // Count larger than the ids actually sent.
    let mut frame = vec![REQ_GET];
    frame.extend_from_slice(&2u32.to_be_bytes());
    frame.extend_from_slice(&[0u8; 32]);
    assert_eq!(kind_of(bad(frame).await), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn malformed_responses_are_rejected() {
    let bad = |frame: Vec<u8>, order: Option<u32>| async move {
        read_response(&mut Cursor::new(frame), order).await
    };
    assert_eq!(
        kind_of(bad(vec![0x7f], None).await),
        io::ErrorKind::InvalidData
    );
    assert_eq!(
        kind_of(bad(vec![], None).await),
        io::ErrorKind::UnexpectedEof
    );
    let with_n = |tag: u8, n: u32, rest: &[u8]| {
        let mut f = vec![tag];
        f.extend_from_slice(&n.to_be_bytes());
        f.extend_from_slice(rest);
        f
    };
    // Oversized body, bitmap and list refused from the header alone.
    for f in [
        with_n(RESP_FOUND, MAX_CHUNK_LEN as u32 + 1, &[]),
        with_n(RESP_HAVE, u32::MAX, &[]),
        with_n(RESP_MANIFEST, MAX_MANIFEST_CHUNKS as u32 + 1, &[]),
    ] {
        assert_eq!(kind_of(bad(f, None).await), io::ErrorKind::InvalidData);
    }
    // Truncated body.
    assert_eq!(
        kind_of(bad(with_n(RESP_FOUND, 10, &[1, 2, 3]), None).await),
        io::ErrorKind::UnexpectedEof
    );
    // Map frames must match the order asked about, and need one.
    assert_eq!(
        kind_of(bad(with_n(RESP_MAP, 9, &[0, 0]), Some(8)).await),
        io::ErrorKind::InvalidData
    );
    assert_eq!(
        kind_of(bad(with_n(RESP_ALL, 8, &[]), None).await),
        io::ErrorKind::InvalidData
    );
    // A claimed 2^27-bit map is refused before its 16 MiB are allocated.
    assert_eq!(
        kind_of(bad(with_n(RESP_MAP, MAX_ORDER_LEN, &[]), Some(8)).await),
        io::ErrorKind::InvalidData
    );
    // Updates: non-empty, bounded, inside the order.
    assert_eq!(
        kind_of(bad(with_n(RESP_ADDED, 0, &[]), Some(8)).await),
        io::ErrorKind::InvalidData
    );
    assert_eq!(
        kind_of(bad(with_n(RESP_ADDED, MAX_ADDED as u32 + 1, &[]), Some(8)).await),
        io::ErrorKind::InvalidData
    );
    assert_eq!(
        kind_of(bad(with_n(RESP_ADDED, 1, &8u32.to_be_bytes()), Some(8)).await),
        io::ErrorKind::InvalidData
    );
}

#[tokio::test]
async fn oversized_frames_are_not_written() {
    let mut buf = Cursor::new(Vec::new());
    let big = Response::Found(vec![0u8; MAX_CHUNK_LEN + 1].into());
    assert_eq!(
        kind_of(write_response(&mut buf, &big).await),
        io::ErrorKind::InvalidData
    );
    for req in [
        Request::Have(vec![h(0); MAX_HAVE_IDS + 1]),
        Request::Get(vec![h(0); MAX_GET_IDS + 1]),
        Request::Get(vec![]),
    ] {
        assert_eq!(
            kind_of(write_request(&mut buf, &req).await),
            io::ErrorKind::InvalidData
        );
    }
    let many = Response::Added(vec![0; MAX_ADDED + 1]);
    assert_eq!(
        kind_of(write_response(&mut buf, &many).await),
        io::ErrorKind::InvalidData
    );
    assert!(buf.into_inner().is_empty(), "nothing written on error");
}

/// The frames quoted in `docs/protocol.md` 9.7, byte for byte.
#[tokio::test]
async fn test_vectors() {
    let hello = Hash::of(b"hello");
    let get = encode_request(&Request::Get(vec![hello, h(0x55)])).unwrap();
    assert_eq!(
        hex::encode(&get),
        format!("0100000002{}{}", hello.to_hex(), "55".repeat(32))
    );
    let one = encode_request(&Request::Get(vec![hello])).unwrap();
    assert_eq!(hex::encode(&one), format!("0100000001{}", hello.to_hex()));
    let sub = encode_request(&Request::Subscribe(h(0xab))).unwrap();
    assert_eq!(hex::encode(&sub), format!("04{}", "ab".repeat(32)));
    let found = response_bytes(&Response::Found(Bytes::from_static(b"hello"))).await;
    assert_eq!(hex::encode(found), "010000000568656c6c6f");
    assert_eq!(hex::encode(response_bytes(&Response::NotFound).await), "02");
    assert_eq!(
        hex::encode(response_bytes(&Response::Elsewhere).await),
        "08"
    );
    // Chunks 0, 2 and 9 of 10 held.
    let map = response_bytes(&Response::Map(bitmap(10, &[0, 2, 9]))).await;
    assert_eq!(hex::encode(map), "050000000a0502");
    let all = response_bytes(&Response::All(10)).await;
    assert_eq!(hex::encode(all), "060000000a");
    let added = response_bytes(&Response::Added(vec![1, 300])).await;
    assert_eq!(hex::encode(added), "0700000002000000010000012c");
}
