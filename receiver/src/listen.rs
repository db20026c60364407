//! Thin tokio listeners for syslog: UDP, TCP (RFC 6587) and TLS (RFC 5425).
//!
//! Each listener turns bytes into [`Record`]s (framing by [`crate::syslog::TcpFramer`], key by
//! [`crate::key::syslog_key`]) and hands them, in batches, to the journal writer through a
//! bounded channel. Flow control differs by transport, so that nothing that can be kept is
//! lost and memory never grows:
//! - UDP never waits: when the channel is full or a source is over its rate, the datagram is
//!   dropped and counted (`queue_full`, `rate_limited`).
//! - TCP and TLS wait instead of dropping: a full channel or an empty token bucket stops
//!   reading the socket, and TCP flow control slows the sender. Nothing is lost.
//!
//! Sockets are bound by the caller (so bind errors surface at start-up) and passed in.

use crate::key::syslog_key;
use crate::limit::{RateLimit, TokenBuckets};
use crate::record::{Protocol, Record, Transport};
use crate::syslog::{Frame, TcpFramer};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use twinrx_types::UnixNanos;

/// A batch of accepted records on its way to the journal writer.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Fired once every record of the batch is durable in the journal (SNMP informs are
    /// answered only then). Dropped unfired if the journal could not take the batch.
    pub durable: Option<tokio::sync::oneshot::Sender<()>>,
    /// The batch's share of the intake's byte budget, returned when the batch is dropped.
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Batch {
    /// Bytes of a batch counted against the intake budget.
    fn cost(records: &[Record]) -> u32 {
        let bytes: usize = records
            .iter()
            .map(|r| r.raw.len() + r.decoded.len() + 96)
            .sum();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The bounded queue between the receivers and the journal writer. Its bound is in bytes,
/// so memory stays flat whatever the message sizes and batch sizes: a listener takes a share
/// of the budget for each batch, and the writer returns it once the batch is journaled.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Batch>,
    budget: Arc<tokio::sync::Semaphore>,
    budget_bytes: u32,
}

/// The writer's end of an [`Intake`].
pub type IntakeRx = mpsc::Receiver<Batch>;

/// Why a batch was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The byte budget is used up: the journal is behind (or failing).
    Full,
    /// The writer has stopped.
    Closed,
}

impl Intake {
    /// An intake holding at most `budget_bytes` of records in flight.
    pub fn new(budget_bytes: usize) -> (Intake, IntakeRx) {
        let budget_bytes = u32::try_from(budget_bytes.max(1 << 16)).unwrap_or(u32::MAX >> 1);
        // The semaphore bounds memory; the channel only needs room for every permit holder.
        let (tx, rx) = mpsc::channel(65_536);
        let budget = Arc::new(tokio::sync::Semaphore::new(budget_bytes as usize));
        (
            Intake {
                tx,
                budget,
                budget_bytes,
            },
            rx,
        )
    }

    /// Queues without waiting (UDP): a full budget drops the batch.
    pub fn try_push(&self, records: Vec<Record>) -> Result<(), PushError> {
        self.try_push_inner(records, None)
    }

    /// Queues without waiting, with a signal fired once the records are durable (SNMP
    /// informs). An empty `records` is fired once everything queued before it is durable.
    pub fn try_push_durable(
        &self,
        records: Vec<Record>,
        durable: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), PushError> {
        self.try_push_inner(records, Some(durable))
    }

    fn try_push_inner(
        &self,
        records: Vec<Record>,
        durable: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), PushError> {
        let cost = Batch::cost(&records).min(self.budget_bytes);
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(cost)
            .map_err(|_| PushError::Full)?;
        self.tx
            .try_send(Batch {
                records,
                durable,
                _budget: Some(permit),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PushError::Full,
                mpsc::error::TrySendError::Closed(_) => PushError::Closed,
            })
    }

    /// Queues, waiting for budget (TCP: the sender is slowed by flow control meanwhile).
    /// `durable` fires once the records are durable.
    pub async fn push(
        &self,
        records: Vec<Record>,
        durable: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), PushError> {
        let cost = Batch::cost(&records).min(self.budget_bytes);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| PushError::Closed)?;
        self.tx
            .send(Batch {
                records,
                durable,
                _budget: Some(permit),
            })
            .await
            .map_err(|_| PushError::Closed)
    }

    /// A read-only view of the queue's fill level (does not keep the queue open).
    pub fn gauge(&self) -> IntakeGauge {
        IntakeGauge {
            budget: self.budget.clone(),
            budget_bytes: self.budget_bytes,
        }
    }
}

/// Fill level of an [`Intake`], for status and metrics.
#[derive(Clone)]
pub struct IntakeGauge {
    budget: Arc<tokio::sync::Semaphore>,
    budget_bytes: u32,
}

impl IntakeGauge {
    /// Bytes of records queued and not yet journaled.
    pub fn queued_bytes(&self) -> usize {
        (self.budget_bytes as usize).saturating_sub(self.budget.available_permits())
    }
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes as usize
    }
}

/// Records per batch handed to the journal writer at most.
const BATCH_RECORDS_MAX: usize = 512;

/// Counters of the syslog receivers (exported as `twinrx_receiver_*` by the node).
#[derive(Default, Debug)]
pub struct SyslogStats {
    pub accepted_udp: AtomicU64,
    pub accepted_tcp: AtomicU64,
    pub accepted_tls: AtomicU64,
    pub bytes: AtomicU64,
    pub oversize: AtomicU64,
    pub bad_framing: AtomicU64,
    pub tls_failure: AtomicU64,
    pub rate_limited: AtomicU64,
    pub queue_full: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Of those, refused because their source address had `connections_per_source_max` open.
    pub connections_refused_per_source: AtomicU64,
    /// Connections closed after `idle_timeout` without a byte.
    pub connections_idle_closed: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    /// Unix ms of the last accepted message (health: "receiving").
    pub last_accept_unix_ms: AtomicU64,
}

impl SyslogStats {
    fn accepted(&self, transport: Transport, n: u64) {
        let c = match transport {
            Transport::Udp => &self.accepted_udp,
            Transport::Tcp => &self.accepted_tcp,
            Transport::Tls => &self.accepted_tls,
        };
        c.fetch_add(n, Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_accept_unix_ms.store(ms, Relaxed);
    }
}

#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// Largest message accepted; larger ones are refused and counted, never truncated.
    pub message_bytes_max: usize,
    pub rate: RateLimit,
    /// Sources tracked by the rate limiter at most.
    pub rate_sources_max: usize,
    /// TCP/TLS connections open at once, per listener.
    pub connections_max: usize,
    /// ... and from one source address (one host cannot take them all).
    pub connections_per_source_max: usize,
    /// A connection that sends nothing for this long is closed (`None`: never). Senders
    /// reconnect on their next message; keep it long (a sender may learn of the close only
    /// by losing its next write).
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive probes after this much silence (`None`: off): a peer that vanished
    /// (power loss, cable) is detected and its connection freed.
    pub keepalive: Option<Duration>,
    /// The TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
}

impl ListenerOptions {
    /// Defaults for the limits (the node's config overrides them).
    pub fn new(message_bytes_max: usize, rate: RateLimit, connections_max: usize) -> Self {
        ListenerOptions {
            message_bytes_max,
            rate,
            rate_sources_max: 65_536,
            connections_max,
            connections_per_source_max: 64,
            idle_timeout: Some(Duration::from_secs(3600)),
            keepalive: Some(Duration::from_secs(60)),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Turns on TCP keepalive probes after `idle` of silence (then every `idle / 4`, 4 probes).
fn set_keepalive(stream: &TcpStream, idle: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval((idle / 4).max(Duration::from_secs(1)))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

pub fn now_unix_nanos() -> UnixNanos {
    UnixNanos(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
    )
}

fn syslog_record(transport: Transport, source: SocketAddr, at: UnixNanos, msg: Vec<u8>) -> Record {
    Record {
        protocol: Protocol::Syslog,
        transport,
        received_at: at,
        key: syslog_key(source.ip(), &msg),
        source,
        raw: msg,
        decoded: Vec::new(),
    }
}

/// Binds a UDP socket asking for a receive buffer of `rcvbuf_bytes` (SO_RCVBUFFORCE when
/// privileged, else SO_RCVBUF, which the kernel caps at `net.core.rmem_max`). Returns the socket and the size obtained, which the node
/// reports when it is below what was asked.
pub fn bind_udp(addr: SocketAddr, rcvbuf_bytes: usize) -> io::Result<(UdpSocket, usize)> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProto::UDP))?;
    if rcvbuf_bytes > 0 {
        // As root, SO_RCVBUFFORCE ignores net.core.rmem_max; otherwise SO_RCVBUF is capped.
        let forced = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::RcvBufForce,
            &rcvbuf_bytes,
        );
        if forced.is_err() && sock.set_recv_buffer_size(rcvbuf_bytes).is_err() {
            tracing::debug!(rcvbuf_bytes, "SO_RCVBUF refused");
        }
    }
    // Kernel receive timestamps: a datagram's receive time is when the kernel queued it, not
    // when the process read it (a paused or busy node must not age its copies past the
    // de-duplication window).
    if let Err(e) =
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
    {
        tracing::debug!(error = %e, "SO_TIMESTAMPNS refused: read times are used");
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    let got = sock.recv_buffer_size().unwrap_or(0);
    let std: std::net::UdpSocket = sock.into();
    Ok((UdpSocket::from_std(std)?, got))
}

/// Binds a TCP listener (SO_REUSEADDR, so a restarted node rebinds at once).
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProto::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    let std: std::net::TcpListener = sock.into();
    TcpListener::from_std(std)
}

/// Datagrams read per recvmmsg(2) call.
pub const RECVMMSG_SLOTS: usize = 32;

/// A datagram read by [`recv_many`]: source, bytes, and the kernel's receive time when the
/// socket has SO_TIMESTAMPNS (as [`bind_udp`] sets).
pub type Datagram = (SocketAddr, Vec<u8>, Option<UnixNanos>);

/// Reads up to `slots.len()` datagrams with one recvmmsg(2); appends them to `out`. Returns
/// how many were read, or the error (WouldBlock when none is waiting).
pub fn recv_many(
    sock: &UdpSocket,
    slots: &mut [Vec<u8>],
    out: &mut Vec<Datagram>,
) -> io::Result<usize> {
    use nix::sys::socket::{
        recvmmsg, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage,
    };
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let n_slots = slots.len();
    let lens: Vec<(Option<SocketAddr>, usize, Option<UnixNanos>)> = {
        let cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n_slots, Some(cmsg));
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = slots
            .iter_mut()
            .map(|s| [IoSliceMut::new(&mut s[..])])
            .collect();
        let results = recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        results
            .map(|r| {
                let addr = r.address.and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                        })
                });
                let at = r.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmTimestampns(ts) => Some(UnixNanos(
                            ts.tv_sec()
                                .saturating_mul(1_000_000_000)
                                .saturating_add(ts.tv_nsec()),
                        )),
                        _ => None,
                    })
                });
                (addr, r.bytes, at)
            })
            .collect()
    };
    let n = lens.len();
    for (i, (addr, len, at)) in lens.into_iter().enumerate() {
        if let Some(addr) = addr {
            out.push((addr, slots[i][..len].to_vec(), at));
        }
    }
    Ok(n)
}

/// Receives syslog datagrams until `shutdown` turns true.
pub async fn run_udp(
    sock: UdpSocket,
    opts: ListenerOptions,
    tx: Intake,
    stats: Arc<SyslogStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    // One byte more than the limit: a datagram that fills its slot is over the limit.
    let slot_bytes = opts.message_bytes_max.saturating_add(1).min(65_536);
    let mut slots: Vec<Vec<u8>> = (0..RECVMMSG_SLOTS).map(|_| vec![0u8; slot_bytes]).collect();
    let mut batch_raw: Vec<Datagram> = Vec::with_capacity(RECVMMSG_SLOTS);
    let mut limiter = TokenBuckets::new(opts.rate, opts.rate_sources_max);
    loop {
        tokio::select! {
            r = sock.readable() => if let Err(e) = r {
                tracing::warn!(error = %e, "syslog udp socket failed");
                return;
            },
            _ = shutdown.changed() => return,
        }
        let mut batch = Vec::new();
        loop {
            let got = sock.try_io(tokio::io::Interest::READABLE, || {
                recv_many(&sock, &mut slots, &mut batch_raw)
            });
            match got {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors and the like: the socket stays usable.
                    tracing::debug!(error = %e, "syslog udp recv error");
                    break;
                }
            }
            let read_at = now_unix_nanos();
            for (src, msg, kernel_at) in batch_raw.drain(..) {
                let at = kernel_at.unwrap_or(read_at);
                if msg.len() > opts.message_bytes_max {
                    stats.oversize.fetch_add(1, Relaxed);
                    continue;
                }
                if msg.is_empty() {
                    continue;
                }
                if !limiter.allow(src.ip(), Instant::now()) {
                    stats.rate_limited.fetch_add(1, Relaxed);
                    continue;
                }
                stats.bytes.fetch_add(msg.len() as u64, Relaxed);
                batch.push(syslog_record(Transport::Udp, src, at, msg));
            }
            if batch.len() >= BATCH_RECORDS_MAX {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        match tx.try_push(batch) {
            Ok(()) => stats.accepted(Transport::Udp, n),
            Err(PushError::Full) => {
                stats.queue_full.fetch_add(n, Relaxed);
            }
            Err(PushError::Closed) => return,
        }
    }
}

/// Builds the TLS acceptor of RFC 5425. `client_ca`: when set, client certificates are
/// verified against it, and required when `require_client_cert`.
pub fn tls_acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
    require_client_cert: bool,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            for c in cas {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP (or, with `tls`, TLS) connections until `shutdown` turns true.
pub async fn run_tcp(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    opts: ListenerOptions,
    tx: Intake,
    stats: Arc<SyslogStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limiter = Arc::new(Mutex::new(TokenBuckets::new(
        opts.rate,
        opts.rate_sources_max,
    )));
    let per_source = Arc::new(twinrx_types::per_source::PerSource::default());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "syslog tcp accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if stats.connections_open.load(Relaxed) >= opts.connections_max as u64 {
            stats.connections_refused.fetch_add(1, Relaxed);
            continue;
        }
        let Some(slot) = per_source.take(peer.ip(), opts.connections_per_source_max) else {
            stats.connections_refused.fetch_add(1, Relaxed);
            stats.connections_refused_per_source.fetch_add(1, Relaxed);
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Some(idle) = opts.keepalive {
            set_keepalive(&stream, idle);
        }
        stats.connections_open.fetch_add(1, Relaxed);
        stats.connections_total.fetch_add(1, Relaxed);
        let (tls, opts, tx, stats, limiter, shutdown) = (
            tls.clone(),
            opts.clone(),
            tx.clone(),
            stats.clone(),
            limiter.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, tls, &opts, &tx, &stats, &limiter, shutdown).await;
            stats.connections_open.fetch_sub(1, Relaxed);
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    opts: &ListenerOptions,
    tx: &Intake,
    stats: &SyslogStats,
    limiter: &Mutex<TokenBuckets>,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        None => {
            read_frames(
                stream,
                peer,
                Transport::Tcp,
                opts,
                tx,
                stats,
                limiter,
                shutdown,
            )
            .await
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(opts.tls_handshake_timeout, acceptor.accept(stream)).await;
            match handshake {
                Ok(Ok(s)) => {
                    read_frames(s, peer, Transport::Tls, opts, tx, stats, limiter, shutdown).await
                }
                Ok(Err(e)) => {
                    stats.tls_failure.fetch_add(1, Relaxed);
                    tracing::info!(%peer, error = %e, "syslog tls handshake failed");
                }
                Err(_) => {
                    stats.tls_failure.fetch_add(1, Relaxed);
                    tracing::info!(%peer, "syslog tls handshake timed out");
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_frames<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    transport: Transport,
    opts: &ListenerOptions,
    tx: &Intake,
    stats: &SyslogStats,
    limiter: &Mutex<TokenBuckets>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut framer = TcpFramer::new(opts.message_bytes_max);
    let mut buf = vec![0u8; 64 * 1024];
    let idle = opts.idle_timeout.unwrap_or(Duration::MAX);
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout(idle, stream.read(&mut buf)) => match r {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "syslog connection read error");
                    0
                }
                Err(_) => {
                    stats.connections_idle_closed.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "syslog connection idle: closed");
                    0
                }
            },
            _ = shutdown.changed() => return,
        };
        let at = now_unix_nanos();
        let mut batch = Vec::new();
        let mut broken = false;
        if n == 0 {
            if let Some(frame) = framer.finish() {
                broken = take_frame(frame, peer, transport, at, stats, &mut batch);
            }
        } else {
            framer.extend(&buf[..n]);
            while let Some(frame) = framer.next_frame() {
                if take_frame(frame, peer, transport, at, stats, &mut batch) {
                    broken = true;
                    break;
                }
            }
        }
        // Rate limit by waiting: TCP flow control slows the sender; nothing is dropped.
        for _ in 0..batch.len() {
            loop {
                let wait = match limiter.lock() {
                    Ok(mut l) => l.wait_for(peer.ip(), Instant::now()),
                    Err(_) => None,
                };
                match wait {
                    None => break,
                    Some(d) => {
                        stats.rate_limited.fetch_add(1, Relaxed);
                        tokio::time::sleep(d).await;
                    }
                }
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            if tx.push(batch, None).await.is_err() {
                return;
            }
            stats.accepted(transport, count);
        }
        if n == 0 || broken {
            return;
        }
    }
}

/// Adds a frame to `batch` or counts it; true when the connection must be closed.
fn take_frame(
    frame: Frame,
    peer: SocketAddr,
    transport: Transport,
    at: UnixNanos,
    stats: &SyslogStats,
    batch: &mut Vec<Record>,
) -> bool {
    match frame {
        Frame::Message(m) => {
            stats.bytes.fetch_add(m.len() as u64, Relaxed);
            batch.push(syslog_record(transport, peer, at, m));
            false
        }
        Frame::Oversize { len } => {
            stats.oversize.fetch_add(1, Relaxed);
            tracing::info!(%peer, len, "syslog frame over the size limit refused");
            false
        }
        Frame::BadFraming(why) => {
            stats.bad_framing.fetch_add(1, Relaxed);
            tracing::info!(%peer, why, "syslog connection closed: bad framing");
            true
        }
    }
}
