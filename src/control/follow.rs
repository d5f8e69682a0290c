//! What the follow, unfollow and ticket commands answer.

use serde::{Deserialize, Serialize};

/// The answer to [`super::Request::Follow`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FollowReport {
    /// The collection (hex id).
    pub collection: String,
    /// Its name, once a version of it is known here.
    pub name: Option<String>,
    /// The paths mirrored (empty: all of them).
    pub only: Vec<String>,
    /// The peers recorded for it (from tickets), dialled at every start.
    pub peers: Vec<String>,
    /// Whether it was followed already (its paths may have changed).
    pub already: bool,
}

/// The answer to [`super::Request::Unfollow`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnfollowReport {
    /// The collection (hex id).
    pub collection: String,
    /// Its name, if known.
    pub name: Option<String>,
    /// Versions held, dropped (and their space freed) by the next gc.
    pub versions: usize,
    /// Whether it was followed before.
    pub was_followed: bool,
}

/// The answer to [`super::Request::Ticket`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TicketReport {
    /// The ticket text (`pm1...`).
    pub ticket: String,
    /// The collection (hex id).
    pub collection: String,
    /// Its name, if known.
    pub name: Option<String>,
    /// The addresses in the ticket.
    pub addrs: Vec<String>,
    /// The paths in the ticket (empty: all).
    pub only: Vec<String>,
    /// What the operator should know (e.g. loopback addresses only).
    pub warnings: Vec<String>,
}
