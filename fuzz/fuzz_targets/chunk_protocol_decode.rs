//! The chunk protocol's frames (`/peermirror/chunk/2`): any bytes a peer
//! sends decode as requests (server side) or as a run of response frames
//! (client side: the answers to a `Get`, or a subscription's map and
//! updates), or fail cleanly, without allocating what a header merely
//! claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::net::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::chunk_requests(data);
    fuzzing::chunk_response(data);
});
