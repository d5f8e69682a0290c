//! The composed libp2p [`NetworkBehaviour`] of a peermirror node and the
//! construction of its [`Swarm`] (transports, protocol configuration).

use std::time::Duration;

use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair, kad, mdns, noise,
    ping, relay, swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, tcp, tls, upnp, yamux,
    StreamProtocol, Swarm, SwarmBuilder,
};

use super::{ip_limits, latest_protocol, nat::RelayLimits, NetConfig, NetError};

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
    pub(crate) autonat: Toggle<autonat::Behaviour>,
    pub(crate) relay: Toggle<relay::Behaviour>,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) upnp: Toggle<upnp::tokio::Behaviour>,
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

/// AutoNAT v1: a verdict (public, private, unknown) is what the relay
/// policy needs; v2 only tests single addresses. Probes start soon after
/// start and are retried every 30 s until the verdict is firm.
fn autonat_behaviour(peer_id: libp2p::PeerId, private: bool) -> autonat::Behaviour {
    let config = autonat::Config {
        boot_delay: Duration::from_secs(5),
        retry_interval: Duration::from_secs(30),
        throttle_server_period: Duration::from_secs(15),
        only_global_ips: !private,
        ..Default::default()
    };
    autonat::Behaviour::new(peer_id, config)
}

/// The relay server, within `l`. It advertises the hop protocol only while
/// the node has a confirmed external address, that is while peers can
/// reach it.
fn relay_behaviour(peer_id: libp2p::PeerId, l: &RelayLimits) -> relay::Behaviour {
    let config = relay::Config {
        max_reservations: l.max_reservations,
        max_circuits: l.max_circuits,
        max_circuit_bytes: l.circuit_bytes,
        max_circuit_duration: l.circuit_duration,
        ..Default::default()
    };
    relay::Behaviour::new(peer_id, config)
}

impl Behaviour {
    fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        cfg: &NetConfig,
    ) -> Result<Self, NetError> {
        let peer_id = key.public().to_peer_id();
        let kad = if cfg.kademlia {
            let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            // Provider records reach the store only after the event loop
            // has passed their addresses through the address filter; value
            // records are not used and never stored.
            kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
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
            ip_limits: ip_limits::Behaviour::new(l.max_connections_per_ip, l.max_peers),
            // Listen address updates are pushed, so peers learn a relayed
            // address as soon as the reservation is made.
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            gossipsub: gossipsub_behaviour(key)?,
            kad: kad.into(),
            mdns: mdns.into(),
            autonat: cfg
                .nat
                .autonat
                .then(|| autonat_behaviour(peer_id, cfg.nat.autonat_private))
                .into(),
            relay: cfg
                .nat
                .relay
                .as_ref()
                .map(|l| relay_behaviour(peer_id, l))
                .into(),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            upnp: cfg.nat.upnp.then(upnp::tokio::Behaviour::default).into(),
            latest: latest_protocol::behaviour(l.latest_timeout, l.latest_in_flight),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}

/// Largest yamux data frame. Each frame goes through the security layer and
/// the socket on its own; at the default 16 KiB a 1 GiB transfer took 65,536
/// wake-ups and writes on each side. 64 KiB frames were fastest on loopback
/// (docs/benchmarks.md): larger ones wait on the 256 KiB stream window.
const YAMUX_FRAME: usize = 64 << 10;

/// yamux with [`YAMUX_FRAME`]-sized frames.
fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_split_send_size(YAMUX_FRAME);
    c
}

/// Largest UDP payload QUIC's path-MTU discovery may reach. Where the path
/// carries more than Ethernet's 1500 bytes (loopback, jumbo-frame LANs),
/// fewer, larger datagrams cut QUIC's per-packet work (building, encrypting,
/// acknowledging, reassembling); on other paths discovery stops at what
/// they carry. Not more, because quinn sends up to 10 datagrams per
/// segmentation-offload batch, a batch must fit the 64 KiB UDP limit, and
/// the kernel refuses (and quinn drops) one that does not. quinn sizes its
/// receive buffer from it (6500 x 64 segments x 32 datagrams, 13 MB of
/// address space per endpoint), but only what the kernel writes is touched:
/// at most 64 KiB per datagram slot, about 2 MiB.
pub(crate) const QUIC_MAX_UDP_PAYLOAD: u16 = 6_500;
const _: () = assert!(10 * QUIC_MAX_UDP_PAYLOAD as usize <= 65_507);

/// Receive buffer asked for each QUIC socket: about 67 ms of a 1 Gbit/s
/// link (the kernel caps it at `net.core.rmem_max`; a larger buffer is kept). The
/// system default (208 KiB on Linux) overflows whenever the receiving
/// process is briefly off the CPU: the kernel drops datagrams, which QUIC
/// takes as congestion and slows down for (measured: about 500 drops per
/// GiB on loopback with two busy cores). TCP's buffers size themselves.
pub(crate) const QUIC_RECV_BUFFER: usize = 8 << 20;

/// QUIC with [`QUIC_MAX_UDP_PAYLOAD`] and [`QUIC_RECV_BUFFER`].
fn quic_config(c: libp2p::quic::Config) -> libp2p::quic::Config {
    c.mtu_upper_bound(QUIC_MAX_UDP_PAYLOAD)
        .recv_buffer_size(QUIC_RECV_BUFFER)
}

/// Builds the swarm: TCP + TLS (or noise, for peers without TLS) + yamux,
/// QUIC, and circuits through relays (noise + yamux over the relayed
/// stream), wrapped in DNS resolution (`/dns4`, `/dns6`, `/dns` peers), with
/// the idle connection timeout from the config.
pub(crate) fn build_swarm(keypair: Keypair, cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let mut behaviour_error = None;
    let transports = || {
        SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                // TLS first: with AES-GCM in hardware it costs a fraction of
                // noise's ChaCha20-Poly1305 per byte. Dialers offer both, so
                // nodes that speak only noise still connect.
                (tls::Config::new, noise::Config::new),
                yamux_config,
            )
            .map_err(|e| NetError::Build(format!("tcp transport: {e}")))
            .map(|b| b.with_quic_config(quic_config))
    };
    // The rest of the build, for either DNS resolver below.
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_relay_client(noise::Config::new, yamux_config)
                .map_err(|e| NetError::Build(format!("relay transport: {e}")))?
                .with_behaviour(
                    |key, relay_client| match Behaviour::new(key, relay_client, cfg) {
                        Ok(b) => Ok(b),
                        Err(e) => {
                            let msg = e.to_string();
                            behaviour_error = Some(e);
                            Err(msg.into())
                        }
                    },
                )
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
