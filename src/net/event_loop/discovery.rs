//! Peer discovery in the [`EventLoop`]: provider records per followed
//! collection (see [`crate::net::discovery`]) and the peer book.

use std::time::Instant;

use libp2p::{
    kad::{self, store::RecordStore},
    swarm::dial_opts::{DialOpts, PeerCondition},
    PeerId,
};
use tracing::{debug, info, trace};

use super::EventLoop;
use crate::net::{addr_filter, discovery::provider_key, peer_book};

impl EventLoop {
    /// Dials the most recently seen peers of the saved book, so a restarted
    /// node finds its swarm again without being told.
    pub(super) fn dial_known_peers(&mut self) {
        let peers = self.book.peers();
        for p in peers.into_iter().take(peer_book::REDIAL_AT_START) {
            if p.peer == *self.swarm.local_peer_id() {
                continue;
            }
            debug!(peer = %p.peer, addrs = ?p.addrs, "dialing a peer known from before");
            let opts = DialOpts::peer_id(p.peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(p.addrs)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                trace!(peer = %p.peer, error = %e, "known peer not dialed");
            }
        }
    }

    /// Provides and looks up the collections whose round is due.
    pub(super) fn discovery_round(&mut self) {
        let due = self.discovery.due(Instant::now());
        if due.is_empty() || self.peers.is_empty() {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        for c in due {
            let key = provider_key(&c);
            if let Err(e) = kad.start_providing(key.clone()) {
                debug!(collection = %c, error = %e, "cannot provide");
            }
            let q = kad.get_providers(key);
            self.provider_queries.insert(q, c);
        }
    }

    /// The first peer arrived: what was provided before reached nobody.
    pub(super) fn first_peer_connected(&mut self) {
        self.discovery.restart_all(Instant::now());
    }

    pub(super) fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })),
                ..
            } => {
                let collection = self.provider_queries.get(&id).copied();
                let label = collection.map(|c| c.short()).unwrap_or_default();
                debug!(collection = %label, ?providers, "providers found");
                for p in providers {
                    self.dial_provider(p, collection);
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                step,
                result: kad::QueryResult::GetProviders(_),
                ..
            } if step.last => {
                self.provider_queries.remove(&id);
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::StartProviding(r),
                ..
            } => trace!(?r, "provided"),
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => self.store_provider(record),
            kad::Event::RoutingUpdated { peer, .. } => {
                trace!(%peer, "kademlia routing updated");
            }
            other => trace!(?other, "kademlia"),
        }
    }

    /// Dials a provider found for `collection` unless connected, banned or
    /// ourselves. Kademlia supplies its addresses: those the provider
    /// registered (filtered by the node that stored them) or those of its
    /// routing table.
    fn dial_provider(&mut self, p: PeerId, collection: Option<crate::keys::CollectionId>) {
        if p == *self.swarm.local_peer_id() || self.swarm.is_connected(&p) || self.is_banned(&p) {
            return;
        }
        let opts = DialOpts::peer_id(p)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => {
                info!(peer = %p, collection = ?collection.map(|c| c.short()), "dialing a provider")
            }
            Err(e) => debug!(peer = %p, error = %e, "provider not dialed"),
        }
    }

    /// Stores a provider record a peer sent about itself, keeping only the
    /// addresses the address filter accepts from where we see that peer.
    fn store_provider(&mut self, mut record: kad::ProviderRecord) {
        let seen_on: Vec<_> = self
            .peers
            .get(&record.provider)
            .map(|s| s.conns.values().cloned().collect())
            .unwrap_or_default();
        let before = record.addresses.len();
        record
            .addresses
            .retain(|a| addr_filter::acceptable(a, &seen_on));
        record.addresses.truncate(addr_filter::MAX_ADDRS_PER_PEER);
        if record.addresses.len() < before {
            debug!(peer = %record.provider, "provider record: dropped addresses it cannot have");
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            if let Err(e) = kad.store_mut().add_provider(record) {
                debug!(error = %e, "provider record not stored");
            }
        }
    }
}
