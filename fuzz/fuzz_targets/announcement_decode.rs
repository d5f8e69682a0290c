//! Announcement decoding: any bytes from gossip or the latest protocol
//! decode and verify, or fail cleanly; what passes re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::announce::SignedAnnouncement;

fuzz_target!(|data: &[u8]| {
    // Check expiry at a time taken from the input too, so every branch runs.
    let now = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if let Ok(a) = SignedAnnouncement::decode(data, now) {
        assert_eq!(a.encode(), data);
        let _ = a.body.freshness(now);
    }
});
