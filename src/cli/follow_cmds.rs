//! `ticket`, `follow` and `unfollow`: on the running node over its control
//! socket, or on the store directly when none runs (the next node started
//! on it follows what is recorded there).

use std::path::Path;

use anyhow::{bail, Result};

use peermirror::config::Layer;
use peermirror::control::{self, Request, Response};
use peermirror::node::FollowSpec;

use super::{call, settings};

/// `peermirror ticket`: the ticket is the last line of stdout.
pub fn ticket(
    file: Option<&Path>,
    data: &Path,
    collection: String,
    addrs: Vec<String>,
    only: Vec<String>,
) -> Result<()> {
    let listen = settings(file, data, Layer::new("default"), Layer::new("flags"))?
        .config
        .net
        .listen;
    let req = Request::Ticket {
        collection,
        addrs,
        only,
        listen,
    };
    let Response::Ticket(r) = call(data, req, &mut |_, _| {})? else {
        bail!("unexpected answer");
    };
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    match &r.name {
        Some(n) => println!("ticket for {n} ({})", r.collection),
        None => println!("ticket for collection {}", r.collection),
    }
    for a in &r.addrs {
        println!("  peer {a}");
    }
    if !r.only.is_empty() {
        println!("  paths {}", r.only.join(", "));
    }
    println!("{}", r.ticket);
    Ok(())
}

/// `peermirror follow`.
pub fn follow(data: &Path, target: String, only: Vec<String>) -> Result<()> {
    let running = control::Client::connect(data).is_some();
    let req = Request::Follow {
        target,
        only: (!only.is_empty()).then_some(only),
    };
    let Response::Followed(r) = call(data, req, &mut |_, _| {})? else {
        bail!("unexpected answer");
    };
    let name = r.name.as_deref().unwrap_or("collection");
    let what = if r.only.is_empty() {
        "all paths".to_string()
    } else {
        format!("partial: {}", r.only.join(", "))
    };
    let again = if r.already { " (already followed)" } else { "" };
    println!("following {name} {} ({what}){again}", r.collection);
    if !r.peers.is_empty() {
        println!("  peers: {}", r.peers.join(" "));
    }
    if !running {
        println!(
            "  recorded in {}: a node started there follows it",
            data.display()
        );
    }
    Ok(())
}

/// `peermirror unfollow`.
pub fn unfollow(file: Option<&Path>, data: &Path, collection: String) -> Result<()> {
    let req = Request::Unfollow { collection };
    let Response::Unfollowed(r) = call(data, req, &mut |_, _| {})? else {
        bail!("unexpected answer");
    };
    let name = r.name.as_deref().unwrap_or("collection");
    println!(
        "unfollowed {name} {}: {} versions held, dropped by the next gc (`peermirror gc`)",
        r.collection, r.versions
    );
    // The settings file wins at the next start: say so.
    if let Ok(s) = settings(file, data, Layer::new("default"), Layer::new("flags")) {
        let listed = s
            .config
            .follow
            .iter()
            .filter_map(|f| FollowSpec::parse(f).ok())
            .any(|f| f.collection.to_string() == r.collection);
        if listed {
            eprintln!(
                "warning: the settings still list it under `follow`: remove it there, \
                 or the next start follows it again"
            );
        }
    }
    Ok(())
}
