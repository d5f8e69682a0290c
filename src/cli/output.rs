//! Human output: byte sizes, progress bars, the status table.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use peermirror::store::Store;

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
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

/// Prints collections, versions and store totals.
pub fn status(store: &Store) -> Result<()> {
    let cols = store.collections()?;
    if cols.is_empty() {
        println!("no collections in {}", store.root().display());
    }
    for c in cols {
        println!("{} ({})", c.name, c.id);
        match &c.current {
            Some(a) => println!(
                "  current: version {} ({} files, {}, published {})",
                a.body.version,
                a.body.files,
                bytes(a.body.total_bytes),
                a.body.published_at
            ),
            None => println!("  current: none"),
        }
        if let Some(acc) = c.accepted {
            if c.current.as_ref().map(|a| a.body.version) != Some(acc) {
                println!("  in progress: version {acc}");
            }
        }
        let vs: Vec<String> = c.versions.iter().map(u64::to_string).collect();
        println!("  versions held: {}", vs.join(", "));
    }
    let s = store.stats()?;
    println!(
        "store: {} chunks, {} of chunk data, {} on disk",
        s.chunks,
        bytes(s.chunk_bytes),
        bytes(s.disk_bytes)
    );
    Ok(())
}

/// Prints a running node's state.
pub fn node_status(s: &peermirror::node::NodeStatus) {
    println!("node {} (running)", s.peer_id);
    for a in &s.listen {
        println!("  listening on {a}");
    }
    println!(
        "  sent {}, received {}",
        bytes(s.bytes_up),
        bytes(s.bytes_down)
    );
    for c in &s.collections {
        println!("{} ({})", c.name, c.id);
        match c.current {
            Some(v) => println!("  current: version {v}"),
            None => println!("  current: none"),
        }
        if let Some(v) = c.in_progress {
            println!(
                "  in progress: version {v}, {:.1}% ({} of {})",
                c.percent(),
                bytes(c.done_bytes),
                bytes(c.total_bytes)
            );
        }
        let vs: Vec<String> = c.versions.iter().map(u64::to_string).collect();
        println!("  versions held: {}", vs.join(", "));
        println!("  received from peers: {}", bytes(c.bytes_down));
    }
    println!("peers: {}", s.peers.len());
    for p in &s.peers {
        let rtt = p.rtt_ms.map_or("?".to_string(), |r| format!("{r:.2} ms"));
        println!("  {} rtt {} {}", p.id, rtt, p.addrs.join(" "));
    }
}
