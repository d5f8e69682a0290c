//! The latest-announcement protocol's request and response bodies decode
//! or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::net::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::latest(data);
});
