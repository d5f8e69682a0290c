//! Human output: byte sizes, progress bars, command reports, the status table.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use peermirror::announce::Freshness;
use peermirror::config::Settings;
use peermirror::control::status::CapsStatus;
use peermirror::control::Status;
use peermirror::human;
use peermirror::publish::{DryRunReport, PublishReport};
use peermirror::store::{ExportReport, GcReport, VerifyReport};

/// `1.50 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    human::bytes(n)
}

/// A byte progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `publish`'s one line (and, on stderr, what was left out or rewritten).
pub fn published(r: &PublishReport) {
    let a = &r.announcement.body;
    println!(
        "published {} version {}: {} files, {}, {} new stored, {} read (collection {})",
        a.name,
        a.version,
        r.files,
        bytes(r.bytes),
        bytes(r.new_bytes),
        bytes(r.read_bytes),
        a.collection
    );
    tree_notes(r.links_rewritten, r.links_skipped, r.excluded);
}

/// `publish --dry-run`'s report.
pub fn dry_run(r: &DryRunReport) {
    println!(
        "would publish {} version {}: {} entries, {} files, {}; {} of {} chunks new, {} to store; {} read (collection {}; nothing written)",
        r.name,
        r.version,
        r.entries,
        r.files,
        bytes(r.bytes),
        r.new_chunks,
        r.chunks,
        bytes(r.new_bytes),
        bytes(r.read_bytes),
        r.collection
    );
    tree_notes(r.links_rewritten, r.links_skipped, r.excluded);
}

fn tree_notes(rewritten: u64, skipped: u64, excluded: u64) {
    if rewritten > 0 {
        eprintln!("{rewritten} absolute symlinks into the tree stored as relative links");
    }
    if skipped > 0 {
        eprintln!("{skipped} symlinks pointing outside the tree left out (--symlinks keep to publish them)");
    }
    if excluded > 0 {
        eprintln!("{excluded} paths excluded");
    }
}

/// `export`'s one line.
pub fn exported(r: &ExportReport, dest: &Path) {
    println!(
        "exported version {} to {}: {} files, {} dirs, {} symlinks, {}",
        r.version,
        dest.display(),
        r.files,
        r.dirs,
        r.symlinks,
        bytes(r.bytes)
    );
}

/// `verify`'s problems and summary.
pub fn verified(r: &VerifyReport, repair: bool) {
    for p in &r.problems {
        println!("{p}");
    }
    println!(
        "verified {} chunks ({}) and {} versions: {} problems{}",
        r.chunks_checked,
        bytes(r.bytes_checked),
        r.versions_checked,
        r.problems.len(),
        if repair {
            format!(", {} corrupt chunks dropped", r.repaired)
        } else {
            String::new()
        }
    );
}

/// `gc`'s one line.
pub fn collected(r: &GcReport) {
    println!(
        "gc: dropped {} versions, {} manifests, {} chunks; removed {} segment files; freed {}",
        r.versions_dropped,
        r.manifests_dropped,
        r.chunks_dropped,
        r.segments_removed,
        bytes(r.bytes_freed)
    );
}

/// The status table, for a running node or a store opened directly.
pub fn status(s: &Status) {
    if let Some(n) = &s.node {
        println!("node {} (running)", n.peer_id);
        for a in &n.listen {
            println!("  listening on {a}");
        }
        println!("  reachability: {}", reachability(&n.reachability));
        for a in &n.external_addrs {
            println!("  reachable at {a}");
        }
        if let Some(r) = &n.relay {
            println!("  holding a relay slot on {r}");
        }
        println!(
            "  sent {}, received {}",
            bytes(n.bytes_up),
            bytes(n.bytes_down)
        );
        caps(&n.caps, n.peers.len());
    }
    if s.collections.is_empty() {
        println!("no collections in {}", s.data);
    }
    for c in &s.collections {
        println!("{} ({})", c.name, c.id);
        match &c.current {
            Some(v) => {
                println!(
                    "  current: version {} ({} files, {}, published {})",
                    v.version,
                    v.files,
                    bytes(v.bytes),
                    human::date_and_relative(v.published_at)
                );
                // (An expiring or expired one is warned about below.)
                let warned = matches!(c.freshness, Some(Freshness::Expiring | Freshness::Expired));
                if v.expires_at > 0 && !warned {
                    println!(
                        "  announcement expires {}",
                        human::date_and_relative(v.expires_at)
                    );
                }
            }
            None => println!("  current: none"),
        }
        match (c.freshness, c.expires_at) {
            (Some(Freshness::Expired), Some(t)) => println!(
                "  EXPIRED: the newest announcement expired {}; \
                 peers ignore it until the master publishes again",
                human::date_and_relative(t)
            ),
            (Some(Freshness::Expiring), Some(t)) => println!(
                "  expiring: the newest announcement expires {}",
                human::date_and_relative(t)
            ),
            _ => {}
        }
        match c.in_progress {
            Some(v) => println!(
                "  in progress: version {v}, {:.1}% ({} of {})",
                c.percent(),
                bytes(c.done_bytes),
                bytes(c.total_bytes)
            ),
            None => {
                if let Some(acc) = c.accepted {
                    if c.current.as_ref().map(|v| v.version) != Some(acc) {
                        println!("  in progress: version {acc}");
                    }
                }
            }
        }
        if !c.partial.is_empty() {
            println!("  partial (patterns {})", c.partial.join(", "));
        }
        if c.unfollowed {
            println!("  unfollowed: its versions are dropped by the next gc");
        } else if !c.followed {
            println!("  not followed (held only; `peermirror follow` follows it)");
        }
        if let Some(r) = &c.refused {
            println!("  refused: version {}: {}", r.version, r.reason);
        }
        let vs: Vec<String> = c.versions.iter().map(u64::to_string).collect();
        println!("  versions held: {}", vs.join(", "));
        if s.node.is_some() {
            println!("  received from peers: {}", bytes(c.bytes_down));
        }
    }
    println!(
        "store: {} chunks, {} of chunk data, {} on disk",
        s.store.chunks,
        bytes(s.store.chunk_bytes),
        bytes(s.store.disk_bytes)
    );
    if let Some(n) = &s.node {
        println!("peers: {}", n.peers.len());
        for p in &n.peers {
            let rtt = p.rtt_ms.map_or("?".to_string(), |r| format!("{r:.2} ms"));
            let path = if p.path.is_empty() { "?" } else { &p.path };
            println!("  {} {} rtt {} {}", p.id, path, rtt, p.addrs.join(" "));
        }
    }
}

/// What a reachability word means for the operator.
fn reachability(r: &str) -> String {
    match r {
        "public" => "public (peers can dial this node; it relays for others)".into(),
        "private" => {
            "private (behind NAT: reached through a relay, direct after hole punching)".into()
        }
        "" | "unknown" => "unknown (not tested yet)".into(),
        other => other.into(),
    }
}

/// The volunteer caps line: each cap and what moves now.
fn caps(c: &CapsStatus, peers: usize) {
    let cap = |n: u64| {
        if n == 0 {
            "unlimited".to_string()
        } else {
            human::rate(n as f64)
        }
    };
    let max_peers = if c.max_peers == 0 {
        "no limit".to_string()
    } else {
        c.max_peers.to_string()
    };
    println!(
        "  upload {} (cap {}), download {} (cap {}), peers {peers} (max {max_peers})",
        human::rate(c.upload_rate),
        cap(c.upload_cap),
        human::rate(c.download_rate),
        cap(c.download_cap),
    );
}

/// `config`: every setting, its value and where it came from.
pub fn settings(s: &Settings) {
    let rows = s.origin();
    let width = rows
        .iter()
        .map(|(k, v, _)| k.len() + v.len() + 3)
        .max()
        .unwrap_or(0);
    for (k, v, from) in rows {
        let kv = format!("{k} = {v}");
        println!("{kv:<width$}  # {from}");
    }
}
