//! `netlab-relay`: a delaying, optionally rate-capped TCP relay, the network
//! lab's stand-in for netem (which this project's kernels lack).
//!
//! It is a delay line, not stop-and-wait: each direction of a connection has
//! a reader that timestamps what it reads and queues it, and a writer that
//! sends each piece once its time has come. Any number of bytes may be in
//! flight (up to the buffer), so a relayed link keeps its throughput and gains
//! the configured latency. An optional rate cap paces each direction like a
//! link of that speed (serialisation, then the delay).
//!
//! Two modes:
//! - explicit (`--to ADDR`): every connection accepted on `--listen` is
//!   forwarded to `ADDR`, each byte delayed by `--delay-ms` in each
//!   direction. Peers that dial the relay's address see the added RTT. Used
//!   by the loopback tests.
//! - transparent (`--transparent`): the lab redirects a namespace's outgoing
//!   TCP connections to the relay (nftables `redirect`), which reads each
//!   connection's original destination (`SO_ORIGINAL_DST`) and connects
//!   there with its own sockets marked (`--mark`) so they are not redirected
//!   again. The one-way delay is this host's `--delay-ms` plus the
//!   destination host's, read from `--peer-delays` (lines `IP MS`): every
//!   host sits behind an access link of its own latency.
//!
//! The sender's TCP sees a short hop (the relay reads eagerly), so a relayed
//! link has the latency and rate of a long one but not its TCP slow-start
//! dynamics. On start the relay prints `listening on ADDR` on stdout; with
//! `--stats FILE` it keeps the bytes it delivered each way in FILE.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bytes read from a socket at a time.
const READ_SIZE: usize = 64 << 10;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "A delaying, rate-capping TCP relay for the network lab")]
struct Args {
    /// Address to accept connections on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Forward every connection here (explicit mode).
    #[arg(long, conflicts_with = "transparent")]
    to: Option<SocketAddr>,
    /// Forward each connection to its original destination (nftables redirect).
    #[arg(long)]
    transparent: bool,
    /// One-way delay added in each direction, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Transparent mode: file of `IP MS` lines, the destination's own delay.
    #[arg(long)]
    peer_delays: Option<std::path::PathBuf>,
    /// Rate cap of each direction, in bytes per second, over all
    /// connections (0: none).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Bytes that may wait in the relay per direction and connection
    /// (default: what the delay and rate need, at least 256 KiB; 64 MiB
    /// without a rate cap).
    #[arg(long)]
    buffer: Option<usize>,
    /// SO_MARK of the relay's outgoing sockets (transparent mode), which
    /// the lab's redirect rule skips.
    #[arg(long, default_value_t = 0x77)]
    mark: u32,
    /// Write the bytes delivered so far, `TO_SERVER TO_CLIENT`, to this
    /// file every 100 ms (replaced atomically): what the far end received.
    #[arg(long)]
    stats: Option<std::path::PathBuf>,
}

/// Paces one direction of every connection at a rate: the time the next
/// byte may leave.
struct Pacer {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Pacer {
    /// Reserves the link for `n` bytes; returns when they may be sent.
    fn reserve(&self, n: usize) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        start
    }
}

/// What a connection needs to know about the relay's settings.
struct Setup {
    args: Args,
    peer_delays: HashMap<IpAddr, f64>,
    /// Pacers for (client to server, server to client).
    pacers: Option<(Pacer, Pacer)>,
    /// Bytes written to servers and to clients, over all connections.
    delivered: (AtomicU64, AtomicU64),
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.to.is_none() && !args.transparent {
        eprintln!("give --to ADDR or --transparent");
        std::process::exit(2);
    }
    let peer_delays = match &args.peer_delays {
        Some(p) => read_delays(p)?,
        None => HashMap::new(),
    };
    let pacer = |rate: u64| Pacer {
        bytes_per_sec: rate as f64,
        next: Mutex::new(Instant::now()),
    };
    let pacers = (args.rate > 0).then(|| (pacer(args.rate), pacer(args.rate)));
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let setup = Arc::new(Setup {
        args,
        peer_delays,
        pacers,
        delivered: (AtomicU64::new(0), AtomicU64::new(0)),
    });
    if let Some(path) = setup.args.stats.clone() {
        tokio::spawn(write_stats(setup.clone(), path));
    }
    loop {
        let (client, from) = listener.accept().await?;
        let setup = setup.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(setup, client, from).await {
                tracing::debug!(%from, error = %e, "relayed connection ended");
            }
        });
    }
}

/// Writes the delivered byte counts to `path` every 100 ms.
async fn write_stats(setup: Arc<Setup>, path: std::path::PathBuf) {
    let tmp = path.with_extension("tmp");
    loop {
        let (up, down) = &setup.delivered;
        let line = format!(
            "{} {}\n",
            up.load(Ordering::Relaxed),
            down.load(Ordering::Relaxed)
        );
        if std::fs::write(&tmp, line)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            tracing::warn!(path = %path.display(), "cannot write stats");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `IP MS` lines; `#` starts a comment.
fn read_delays(path: &std::path::Path) -> std::io::Result<HashMap<IpAddr, f64>> {
    let bad = |l: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{l:?}"));
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(ip), Some(ms)) = (f.next(), f.next()) else {
            return Err(bad(line));
        };
        out.insert(
            ip.parse().map_err(|_| bad(line))?,
            ms.parse().map_err(|_| bad(line))?,
        );
    }
    Ok(out)
}

/// The destination a redirected connection was first addressed to.
fn original_dst(s: &TcpStream) -> std::io::Result<SocketAddr> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the length given.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddr::V4(SocketAddrV4::new(
        u32::from_be(addr.sin_addr.s_addr).into(),
        u16::from_be(addr.sin_port),
    )))
}

/// Connects to `to`, with `mark` on the socket when it is not 0.
async fn connect(to: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let sock = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = mark {
        // SAFETY: a valid socket and a u32 option value.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                &mark as *const u32 as *const libc::c_void,
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    sock.connect(to).await
}

/// Relays one accepted connection until both directions are done.
async fn relay(setup: Arc<Setup>, client: TcpStream, from: SocketAddr) -> std::io::Result<()> {
    let a = &setup.args;
    let (to, mark, delay_ms) = match a.to {
        Some(to) => (to, None, a.delay_ms),
        None => {
            let to = original_dst(&client)?;
            let far = setup.peer_delays.get(&to.ip()).copied().unwrap_or(0.0);
            (to, Some(a.mark), a.delay_ms + far)
        }
    };
    let server = connect(to, mark).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let delay = Duration::from_secs_f64(delay_ms / 1000.0);
    let buffer = a.buffer.unwrap_or(if a.rate > 0 {
        // What the delay holds at the rate, plus a quarter second of queue.
        ((a.rate as f64 * (2.0 * delay.as_secs_f64() + 0.25)) as usize).max(256 << 10)
    } else {
        64 << 20
    });
    tracing::debug!(%from, %to, ?delay, buffer, "relaying");
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = setup.pacers.as_ref().map(|p| &p.0);
    let down = setup.pacers.as_ref().map(|p| &p.1);
    let (to_server, to_client) = (&setup.delivered.0, &setup.delivered.1);
    // An error in either direction ends the connection.
    tokio::try_join!(
        direction(cr, sw, delay, buffer, up, to_server),
        direction(sr, cw, delay, buffer, down, to_client),
    )?;
    Ok(())
}

/// One piece read, the time it was read, and its share of the buffer.
struct Piece {
    bytes: Vec<u8>,
    at: Instant,
    _permit: OwnedSemaphorePermit,
}

/// Copies `r` to `w`, each piece `delay` after it was read, paced by
/// `pacer`, counting what is written in `delivered`; shuts `w` down after
/// `r`'s end has gone through.
async fn direction(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    buffer: usize,
    pacer: Option<&Pacer>,
    delivered: &AtomicU64,
) -> std::io::Result<()> {
    let room = Arc::new(Semaphore::new(buffer));
    let (tx, mut rx) = mpsc::unbounded_channel::<Piece>();
    let read = async move {
        loop {
            let permit = room
                .clone()
                .acquire_many_owned(READ_SIZE.min(buffer) as u32)
                .await
                .expect("never closed");
            let mut bytes = vec![0u8; READ_SIZE.min(buffer)];
            let n = r.read(&mut bytes).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            bytes.truncate(n);
            let at = Instant::now();
            if tx
                .send(Piece {
                    bytes,
                    at,
                    _permit: permit,
                })
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some(p) = rx.recv().await {
            tokio::time::sleep_until(p.at + delay).await;
            if let Some(pacer) = pacer {
                tokio::time::sleep_until(pacer.reserve(p.bytes.len())).await;
            }
            w.write_all(&p.bytes).await?;
            delivered.fetch_add(p.bytes.len() as u64, Ordering::Relaxed);
        }
        w.shutdown().await
    };
    tokio::try_join!(read, write)?;
    Ok(())
}
