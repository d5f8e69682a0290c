//! Tells the operator when a limit is hit: a peer refused for too many
//! streams or requests, a reply that timed out, gossip shed, or the
//! volunteer caps holding transfers back. Each kind is logged at most once
//! a minute, with how often it happened since it was last logged, so a
//! busy node says so without flooding its log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Inner;
use crate::net::{CapsStats, ServerStats};

/// How often the counters are looked at.
const TICK: Duration = Duration::from_secs(5);
/// The least time between two lines about one kind of limit.
const EVERY: Duration = Duration::from_secs(60);

/// One kind of limit: what the log says, and the setting behind it.
struct Kind {
    what: &'static str,
    setting: &'static str,
    read: fn(&ServerStats, &CapsStats) -> u64,
}

const KINDS: [Kind; 7] = [
    Kind {
        what: "chunk streams refused: too many open at once",
        setting: "limits.max_inbound_streams, limits.max_inbound_streams_per_peer",
        read: |s, _| s.streams_refused,
    },
    Kind {
        what: "peers over their chunk request rate cut off",
        setting: "limits.chunk_requests_per_sec",
        read: |s, _| s.requests_refused,
    },
    Kind {
        what: "chunk streams dropped: a reply could not be sent in time",
        setting: "limits.send_timeout_secs",
        read: |s, _| s.send_timeouts,
    },
    Kind {
        what: "latest-announcement requests over a peer's rate refused",
        setting: "limits.latest_requests_per_sec",
        read: |s, _| s.latest_refused,
    },
    Kind {
        what: "low-priority gossip ignored while busy",
        setting: "limits.have_notes_per_sec",
        read: |s, _| s.gossip_shed,
    },
    Kind {
        what: "chunk uploads held back by the upload cap",
        setting: "limits.upload_rate",
        read: |_, c| c.upload_waits,
    },
    Kind {
        what: "chunk downloads held back by the download cap",
        setting: "limits.download_rate",
        read: |_, c| c.download_waits,
    },
];

/// Runs until shutdown.
pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let read = |i: &Inner| (i.client.server_stats(), i.client.caps_stats());
    let (s, c) = read(&inner);
    // Per kind: the count last logged, and when.
    let mut logged: Vec<(u64, Option<Instant>)> =
        KINDS.iter().map(|k| ((k.read)(&s, &c), None)).collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (s, c) = read(&inner);
        let now = Instant::now();
        for (k, (count, at)) in KINDS.iter().zip(logged.iter_mut()) {
            let n = (k.read)(&s, &c);
            if n <= *count || at.is_some_and(|t| now.duration_since(t) < EVERY) {
                continue;
            }
            let since = match at {
                Some(t) => format!("in the last {} s", now.duration_since(*t).as_secs()),
                None => "so far".to_string(),
            };
            tracing::info!(
                count = n - *count,
                setting = k.setting,
                "limit hit: {} ({} times {since})",
                k.what,
                n - *count
            );
            *count = n;
            *at = Some(now);
        }
    }
}
