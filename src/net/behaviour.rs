//! The composed libp2p [`NetworkBehaviour`] of a peermirror node and the
//! construction of its [`Swarm`] (transports, protocol configuration).

use std::time::Duration;

use libp2p::{
    connection_limits, gossipsub, identify, identity::Keypair, kad, mdns, noise, ping,
    swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, tcp, yamux, StreamProtocol, Swarm,
    SwarmBuilder,
};

use super::{ip_limits, latest_protocol, NetConfig, NetError};

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/peermirror/id/1.0.0";
/// Kademlia protocol name (separate DHT from the public IPFS one).
pub const KAD_PROTOCOL: &str = "/peermirror/kad/1.0.0";
/// Gossipsub heartbeat; short so that meshes form quickly in small networks.
const GOSSIP_HEARTBEAT: Duration = Duration::from_millis(500);

/// All protocols a node speaks. The limit behaviours come first, so a
/// connection they refuse never reaches the others.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) ip_limits: ip_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) latest: latest_protocol::LatestBehaviour,
    pub(crate) stream: libp2p_stream::Behaviour,
}

/// Gossipsub message id: a hash of the payload, so that the same
/// announcement relayed by different peers is delivered once.
fn message_id(msg: &gossipsub::Message) -> gossipsub::MessageId {
    gossipsub::MessageId::from(blake3::hash(&msg.data).as_bytes().to_vec())
}

fn gossipsub_behaviour(key: &Keypair) -> Result<gossipsub::Behaviour, NetError> {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(GOSSIP_HEARTBEAT)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(message_id)
        .flood_publish(true)
        .build()
        .map_err(|e| NetError::Build(format!("gossipsub config: {e}")))?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
            .map_err(|e| NetError::Build(format!("gossipsub: {e}")))?;
    // Scoring makes rejected messages count against the peer that relayed
    // them. Many nodes may share an address (LAN, tests), so colocation is
    // not penalised.
    let params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    gossipsub
        .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
        .map_err(|e| NetError::Build(format!("gossipsub scoring: {e}")))?;
    Ok(gossipsub)
}

/// Per-topic score parameters: only invalid messages (and time in mesh)
/// count. Delivery-rate penalties are off because announcement topics are
/// quiet most of the time.
pub(crate) fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        ..Default::default()
    }
}

impl Behaviour {
    fn new(key: &Keypair, cfg: &NetConfig) -> Result<Self, NetError> {
        let peer_id = key.public().to_peer_id();
        let kad = if cfg.kademlia {
            let kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_config,
            );
            // No confirmed external address exists on loopback or a LAN, so
            // the automatic mode would stay client-only: serve explicitly.
            kad.set_mode(Some(kad::Mode::Server));
            Some(kad)
        } else {
            None
        };
        let mdns = if cfg.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| NetError::Build(format!("mdns: {e}")))?,
            )
        } else {
            None
        };
        let l = &cfg.limits;
        let connection_limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(l.max_connections))
            .with_max_pending_incoming(Some(l.max_connections));
        Ok(Self {
            limits: connection_limits::Behaviour::new(connection_limits),
            ip_limits: ip_limits::Behaviour::new(l.max_connections_per_ip),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_string(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            gossipsub: gossipsub_behaviour(key)?,
            kad: kad.into(),
            mdns: mdns.into(),
            latest: latest_protocol::behaviour(l.latest_timeout, l.latest_in_flight),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}

/// Builds the swarm: TCP + noise + yamux and QUIC, wrapped in DNS
/// resolution (`/dns4`, `/dns6`, `/dns` peers), with the idle connection
/// timeout from the config.
pub(crate) fn build_swarm(keypair: Keypair, cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let mut behaviour_error = None;
    let transports = || {
        SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                // No setters: any setter switches yamux to its slow legacy engine
                // with a fixed 256 KiB window.
                yamux::Config::default,
            )
            .map_err(|e| NetError::Build(format!("tcp transport: {e}")))
            .map(|b| b.with_quic())
    };
    // The rest of the build, for either DNS resolver below.
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_behaviour(|key| match Behaviour::new(key, cfg) {
                    Ok(b) => Ok(b),
                    Err(e) => {
                        let msg = e.to_string();
                        behaviour_error = Some(e);
                        Err(msg.into())
                    }
                })
                .map_err(|e| {
                    behaviour_error
                        .take()
                        .unwrap_or_else(|| NetError::Build(e.to_string()))
                })?
                .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_timeout))
                .build()
        };
    }
    let swarm = match transports()?.with_dns() {
        Ok(b) => finish!(b),
        Err(e) => {
            // No usable /etc/resolv.conf: names still resolve from /etc/hosts.
            tracing::warn!(error = %e, "no DNS servers configured; /dns peers resolve from /etc/hosts only");
            finish!(transports()?.with_dns_config(
                libp2p::dns::ResolverConfig::default(),
                libp2p::dns::ResolverOpts::default()
            ))
        }
    };
    Ok(swarm)
}
