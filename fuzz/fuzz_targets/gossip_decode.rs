//! Gossip decoding: any message on a collection topic decodes or fails
//! cleanly; an announcement inside is decoded like one from anywhere else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::gossip::GossipMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = GossipMessage::decode(data) {
        let _ = m.encode();
        if let GossipMessage::Announce(bytes) = m {
            let _ = peermirror::announce::SignedAnnouncement::decode(&bytes, 0);
        }
    }
});
