//! Manifest decoding: any bytes a peer sends as a manifest must decode or
//! fail cleanly, and what decodes must validate or fail cleanly, and
//! re-encode to the same bytes (one manifest, one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let _ = m.validate();
        let _ = m.files().count();
        assert_eq!(
            Manifest::decode(&m.encode()).ok().map(|b| b.encode()),
            Some(m.encode())
        );
    }
});
