//! The chunk protocol's frames: any bytes a peer sends decode as requests
//! (server side) or a response (client side), or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::net::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::chunk_requests(data);
    fuzzing::chunk_response(data);
});
