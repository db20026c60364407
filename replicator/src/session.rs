//! Authenticated sessions over one TCP connection: [`connect`], [`Listener`], [`Session`].
//!
//! After the handshake (`auth.rs`) a session runs two tasks over two *lanes* (each with its
//! own keys and frame counters, see `auth.rs`):
//! - the **writer** drains two queues, *control first* (`biased` select): the control lane
//!   carries application messages (the HA core's heartbeats and votes) and the small
//!   shipping messages (request, ack, errors), sealed here; the bulk lane carries journal
//!   batches already sealed by the shipper, at most [`BULK_QUEUE_FRAMES`] of them, each capped
//!   by `ShipConfig::batch_bytes_max`. So a control message waits at most for the bulk frame
//!   being written, never behind a backlog. It sends a keepalive when it had nothing to send
//!   for `keepalive_interval`.
//! - the **reader** verifies each control-lane frame and routes it: control messages to
//!   [`Session::recv`], shipping messages to the [`ShipPort`]. Bulk frames are handed to the
//!   [`CopyPort`] as read; the copier verifies them (bulk counter) before looking inside. So
//!   the reader only moves bytes for bulk data and never waits on a consumer: a slow copy or
//!   slow MAC computation cannot delay a heartbeat. Bulk frames queue for the copier bounded
//!   by the window the copier granted (a peer that exceeds it is closed); control messages
//!   queue in a bounded queue that drops (and counts) when full.
//!
//! Any failure closes the whole session with one [`CloseReason`] that every part sees.
//! One session per configured link: several sessions (e.g. over two NICs) are independent;
//! the caller sends heartbeats on each and runs shipping on one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, timeout, Instant};
use twinrx_types::{NodeId, Seq};

use crate::auth::{self, Established, Opener, Sealer};
use crate::config::LinkConfig;
use crate::frame::{self, read_frame, ty, ErrorMsg, ReadError, ShipRequest, TAG_LEN};
use crate::stats::{AuthFailure, LinkStats};
use crate::tls::Party;
use crate::{CloseReason, Error};

/// Bulk frames queued for the writer at most (each ≤ `batch_bytes_max` of records).
pub(crate) const BULK_QUEUE_FRAMES: usize = 2;
/// Control-lane frames queued for the writer at most.
const CONTROL_QUEUE_FRAMES: usize = 256;
/// Requests, acks and errors from the peer's copier queued for the shipper at most.
const SHIP_QUEUE_MESSAGES: usize = 1024;
/// Read buffer of a session's socket.
const READ_BUFFER_BYTES: usize = 256 << 10;

/// A control-lane frame to send: type and payload; the writer adds length and tag.
pub(crate) struct Out {
    pub frame_type: u8,
    pub payload: Vec<u8>,
}

/// What the reader hands to the shipper.
pub(crate) enum ShipIn {
    Request(ShipRequest),
    Ack(Seq),
    PeerError(ErrorMsg),
}

/// What the reader hands to the copier.
pub(crate) enum CopyIn {
    /// A bulk-lane frame body (`type ‖ payload ‖ tag`), not yet verified.
    Batch(Vec<u8>),
    PeerError(ErrorMsg),
}

/// What [`Session::recv`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An application message from the peer, as the peer passed it to `send_control`.
    Control(Vec<u8>),
    /// The session is over; nothing more will come.
    Closed(CloseReason),
}

/// State shared by the parts of one session.
pub(crate) struct Shared {
    pub stats: Arc<LinkStats>,
    closed: watch::Sender<Option<CloseReason>>,
    /// The peer's last clock sample (its `sent_us`) and when it came, for the echo.
    peer_clock: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    clock_filter: std::sync::Mutex<crate::clock::Filter>,
    clock_skew_us: i64,
}

impl Shared {
    /// This side's wall clock for clock samples, µs since the Unix epoch.
    fn wall_us(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        now.saturating_add_signed(self.clock_skew_us)
    }

    /// The `CLOCK` frame to send now.
    fn clock_frame(&self) -> crate::clock::Clock {
        let peer = *self.peer_clock.lock().unwrap_or_else(|p| p.into_inner());
        let (echo_us, held_us) = match peer {
            Some((sent, at)) => (
                sent,
                u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX),
            ),
            None => (0, 0),
        };
        crate::clock::Clock {
            sent_us: self.wall_us(),
            echo_us,
            held_us,
        }
    }

    /// Takes in the peer's `CLOCK` frame received now.
    fn clock_received(&self, c: &crate::clock::Clock) {
        let t4 = self.wall_us();
        *self.peer_clock.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((c.sent_us, std::time::Instant::now()));
        if let Some(s) = crate::clock::sample(c, t4) {
            let best = self
                .clock_filter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s);
            self.stats.clock(best);
        }
    }
}

impl Shared {
    /// Records the first reason the session ends for; later ones are ignored.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.closed.send_if_modified(|r| {
            if r.is_none() {
                tracing::info!(reason = %reason, "cluster link session closed");
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// Waits until the session is closed and returns why.
pub(crate) async fn closed(rx: &mut watch::Receiver<Option<CloseReason>>) -> CloseReason {
    match rx.wait_for(Option::is_some).await {
        Ok(r) => r.clone().unwrap_or(CloseReason::LocalClose),
        // The sender lives in `Shared`, owned by the session's tasks: gone means closed.
        Err(_) => CloseReason::LocalClose,
    }
}

/// The shipping side of a session, for [`crate::JournalShipper::run`]: requests and acks
/// from the peer's copier come in, batches go out on the bulk lane.
pub struct ShipPort {
    pub(crate) rx: mpsc::Receiver<ShipIn>,
    pub(crate) control: mpsc::Sender<Out>,
    /// Sealed bulk-lane frames.
    pub(crate) bulk: mpsc::Sender<Vec<u8>>,
    /// Bulk-lane sealer; `None` only while a blocking task holds it.
    pub(crate) sealer: Option<Sealer>,
    pub(crate) closed: watch::Receiver<Option<CloseReason>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: NodeId,
    pub(crate) frame_bytes_max: u32,
}

/// The copying side of a session, for [`crate::JournalCopier::run`]: batches of the peer's
/// journal come in, requests and acks go out on the control lane.
pub struct CopyPort {
    pub(crate) rx: mpsc::UnboundedReceiver<CopyIn>,
    pub(crate) control: mpsc::Sender<Out>,
    /// Bulk-lane opener; `None` only while a blocking task holds it.
    pub(crate) opener: Option<Opener>,
    pub(crate) closed: watch::Receiver<Option<CloseReason>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: NodeId,
    /// Bulk frame bytes the reader queued and the copier has not taken yet.
    pub(crate) queued: Arc<AtomicU64>,
    /// The window the copier granted (the reader enforces it).
    pub(crate) window: Arc<AtomicU64>,
}

/// See [`Session::control_sender`].
#[derive(Clone)]
pub struct ControlSender {
    control: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    control_bytes_max: usize,
}

impl ControlSender {
    /// Queues `msg` without waiting: `Ok(false)` if the control queue is full.
    pub fn try_send(&self, msg: Vec<u8>) -> Result<bool, Error> {
        if msg.len() > self.control_bytes_max {
            return Err(Error::Config(format!(
                "control message of {} bytes exceeds the frame limit of {}",
                msg.len(),
                self.control_bytes_max
            )));
        }
        let out = Out {
            frame_type: ty::CONTROL,
            payload: msg,
        };
        match self.control.try_send(out) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Closed(
                self.shared
                    .closed
                    .borrow()
                    .clone()
                    .unwrap_or(CloseReason::LocalClose),
            )),
        }
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.control.is_closed()
    }
}

/// A connection a session runs over: TLS in production, plain TCP in unit tests.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}
type OwnedReadHalf = tokio::io::ReadHalf<Box<dyn Io>>;
type OwnedWriteHalf = tokio::io::WriteHalf<Box<dyn Io>>;

/// An authenticated session with the peer. Dropping it closes the connection (the ports
/// taken from it then end with [`Error::Closed`]).
pub struct Session {
    peer: Party,
    peer_cert: String,
    version: u16,
    peer_addr: SocketAddr,
    control: mpsc::Sender<Out>,
    events: mpsc::Receiver<Vec<u8>>,
    closed: watch::Receiver<Option<CloseReason>>,
    shared: Arc<Shared>,
    control_bytes_max: usize,
    ship_port: Option<ShipPort>,
    copy_port: Option<CopyPort>,
    tasks: Vec<JoinHandle<()>>,
}

impl Session {
    fn start(
        stream: Box<dyn Io>,
        peer_addr: SocketAddr,
        est: Established,
        cfg: &LinkConfig,
    ) -> Result<Session, Error> {
        let (rd, wr) = tokio::io::split(stream);
        let (closed_tx, closed_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            stats: cfg.stats.clone(),
            closed: closed_tx,
            peer_clock: std::sync::Mutex::new(None),
            clock_filter: std::sync::Mutex::new(crate::clock::Filter::default()),
            clock_skew_us: cfg.clock_skew_us,
        });
        LinkStats::add(&cfg.stats.sessions_established, 1);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_FRAMES);
        let (bulk_tx, bulk_rx) = mpsc::channel(BULK_QUEUE_FRAMES);
        let (events_tx, events_rx) = mpsc::channel(cfg.control_queue_max);
        let (ship_tx, ship_rx) = mpsc::channel(SHIP_QUEUE_MESSAGES);
        let (copy_tx, copy_rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        let window = Arc::new(AtomicU64::new(0));
        let reader = Reader {
            rd: BufReader::with_capacity(READ_BUFFER_BYTES, rd),
            opener: est.control_opener,
            frame_bytes_max: cfg.frame_bytes_max,
            idle_timeout: cfg.idle_timeout,
            events: events_tx,
            ship: ship_tx,
            copy: copy_tx,
            queued: queued.clone(),
            window: window.clone(),
            shared: shared.clone(),
        };
        let writer = Writer {
            wr,
            sealer: est.control_sealer,
            control: control_rx,
            bulk: bulk_rx,
            keepalive: cfg.keepalive_interval,
            clock_interval: cfg.clock_interval,
            shared: shared.clone(),
        };
        let tasks = vec![
            tokio::spawn(reader.run(closed_rx.clone())),
            tokio::spawn(writer.run(closed_rx.clone())),
        ];
        tracing::info!(peer = %est.peer, %peer_addr, version = est.version, "cluster link session established");
        let node_peer = est.peer.node();
        Ok(Session {
            peer: est.peer,
            peer_cert: est.peer_cert,
            version: est.version,
            peer_addr,
            control: control_tx.clone(),
            events: events_rx,
            closed: closed_rx.clone(),
            shared: shared.clone(),
            control_bytes_max: (cfg.frame_bytes_max as usize).saturating_sub(1 + TAG_LEN),
            // Journals are shipped between the two nodes only: a session with the witness has
            // no ports, and its reader drops shipping frames (`route_ship`: no shipper).
            ship_port: node_peer.map(|peer| ShipPort {
                rx: ship_rx,
                control: control_tx.clone(),
                bulk: bulk_tx,
                sealer: Some(est.bulk_sealer),
                closed: closed_rx.clone(),
                shared: shared.clone(),
                peer,
                frame_bytes_max: cfg.frame_bytes_max,
            }),
            copy_port: node_peer.map(|peer| CopyPort {
                rx: copy_rx,
                control: control_tx,
                opener: Some(est.bulk_opener),
                closed: closed_rx,
                shared,
                peer,
                queued,
                window,
            }),
            tasks,
        })
    }

    /// The authenticated peer.
    pub fn peer(&self) -> Party {
        self.peer
    }

    /// SHA-256 (hex) of the certificate the peer showed.
    pub fn peer_cert_sha256(&self) -> &str {
        &self.peer_cert
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The counters of this session's link.
    pub fn stats(&self) -> Arc<LinkStats> {
        self.shared.stats.clone()
    }

    /// Why the session ended, or `None` while it runs.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.borrow().clone()
    }

    /// Takes the shipping port (once; `None` afterwards). Run shipping on one session only.
    pub fn take_ship_port(&mut self) -> Option<ShipPort> {
        self.ship_port.take()
    }

    /// Takes the copying port (once; `None` afterwards).
    pub fn take_copy_port(&mut self) -> Option<CopyPort> {
        self.copy_port.take()
    }

    fn check_control(&self, msg: &[u8]) -> Result<(), Error> {
        if let Some(r) = self.close_reason() {
            return Err(Error::Closed(r));
        }
        if msg.len() > self.control_bytes_max {
            return Err(Error::Config(format!(
                "control message of {} bytes exceeds the frame limit of {}",
                msg.len(),
                self.control_bytes_max
            )));
        }
        Ok(())
    }

    /// A cloneable, non-blocking sender of control messages on this session, for drivers
    /// that do not own the session (e.g. the HA core's task). It fails once the session ends.
    pub fn control_sender(&self) -> ControlSender {
        ControlSender {
            control: self.control.clone(),
            shared: self.shared.clone(),
            control_bytes_max: self.control_bytes_max,
        }
    }

    /// Queues an application message ahead of any journal data, waiting while the control
    /// queue is full.
    pub async fn send_control(&self, msg: Vec<u8>) -> Result<(), Error> {
        self.check_control(&msg)?;
        let out = Out {
            frame_type: ty::CONTROL,
            payload: msg,
        };
        match self.control.send(out).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Like [`Session::send_control`] but never waits: `Ok(false)` if the control queue is
    /// full (the message was not queued). For drivers that must not block, e.g. the HA tick.
    pub fn try_send_control(&self, msg: Vec<u8>) -> Result<bool, Error> {
        self.control_sender().try_send(msg)
    }

    fn closed_error(&self) -> Error {
        Error::Closed(self.close_reason().unwrap_or(CloseReason::LocalClose))
    }

    /// The next event: a control message from the peer, or the end of the session (then
    /// again on every later call). Messages received before the end are delivered first.
    pub async fn recv(&mut self) -> Event {
        if let Ok(m) = self.events.try_recv() {
            return Event::Control(m);
        }
        tokio::select! {
            biased;
            m = self.events.recv() => match m {
                Some(m) => Event::Control(m),
                None => Event::Closed(closed(&mut self.closed).await),
            },
            r = closed(&mut self.closed) => match self.events.try_recv() {
                Ok(m) => Event::Control(m),
                Err(_) => Event::Closed(r),
            },
        }
    }

    /// Closes the session now.
    pub fn close(&self) {
        self.shared.close(CloseReason::LocalClose);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.close(CloseReason::LocalClose);
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Writer {
    wr: OwnedWriteHalf,
    sealer: Sealer,
    control: mpsc::Receiver<Out>,
    bulk: mpsc::Receiver<Vec<u8>>,
    keepalive: Duration,
    clock_interval: Duration,
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(mut self, mut closed_rx: watch::Receiver<Option<CloseReason>>) {
        let stats = self.shared.stats.clone();
        let mut last_send = Instant::now();
        // The first sample soon (the peer echoes it in its next), then every interval.
        let mut next_clock = Instant::now() + Duration::from_millis(100).min(self.clock_interval);
        let mut bulk_open = true;
        loop {
            let frame = tokio::select! {
                biased;
                _ = closed(&mut closed_rx) => break,
                _ = sleep_until(next_clock) => {
                    next_clock = Instant::now() + self.clock_interval;
                    self.sealer.seal(ty::CLOCK, &self.shared.clock_frame().encode())
                }
                m = self.control.recv() => match m {
                    Some(m) => self.sealer.seal(m.frame_type, &m.payload),
                    None => break,
                },
                m = self.bulk.recv(), if bulk_open => match m {
                    // Sealed by the shipper in the bulk lane.
                    Some(frame) => frame,
                    None => {
                        // The shipper is gone; control frames still flow.
                        bulk_open = false;
                        continue;
                    }
                },
                _ = sleep_until(last_send + self.keepalive) => self.sealer.seal(ty::PING, &[]),
            };
            if let Err(e) = self.wr.write_all(&frame).await {
                self.shared.close(CloseReason::Io(e.to_string()));
                break;
            }
            LinkStats::add(&stats.bytes_sent, frame.len() as u64);
            LinkStats::add(&stats.frames_sent, 1);
            if frame.get(4) == Some(&ty::CONTROL) {
                LinkStats::add(&stats.control_sent, 1);
            }
            last_send = Instant::now();
        }
        if let Err(e) = self.wr.shutdown().await {
            tracing::debug!(error = %e, "cluster link: shutdown of the write side failed");
        }
    }
}

struct Reader {
    rd: BufReader<OwnedReadHalf>,
    opener: Opener,
    frame_bytes_max: u32,
    idle_timeout: Duration,
    events: mpsc::Sender<Vec<u8>>,
    ship: mpsc::Sender<ShipIn>,
    copy: mpsc::UnboundedSender<CopyIn>,
    queued: Arc<AtomicU64>,
    window: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Reader {
    async fn run(mut self, mut closed_rx: watch::Receiver<Option<CloseReason>>) {
        loop {
            // read_frame is not cancel-safe, which is fine: after either other branch the
            // session is over and the half-read frame is of no use.
            let read = tokio::select! {
                r = timeout(self.idle_timeout, read_frame(&mut self.rd, 1 + TAG_LEN as u32, self.frame_bytes_max)) => r,
                _ = closed(&mut closed_rx) => return,
            };
            let reason = match read {
                Err(_) => CloseReason::IdleTimeout {
                    ms: self.idle_timeout.as_millis() as u64,
                },
                Ok(Err(ReadError::Eof)) => CloseReason::PeerClosed,
                Ok(Err(ReadError::Io(e))) => CloseReason::Io(e.to_string()),
                Ok(Err(ReadError::TooLarge { len, max })) => {
                    CloseReason::FrameTooLarge { len, max }
                }
                Ok(Err(ReadError::TooShort { len })) => {
                    CloseReason::Protocol(format!("frame length {len} is shorter than a tag"))
                }
                Ok(Ok(body)) => match self.handle(body) {
                    Ok(()) => continue,
                    Err(reason) => reason,
                },
            };
            self.shared.close(reason);
            return;
        }
    }

    fn handle(&mut self, body: Vec<u8>) -> Result<(), CloseReason> {
        let stats = &self.shared.stats;
        LinkStats::add(&stats.bytes_received, 4 + body.len() as u64);
        if body.first() == Some(&ty::SHIP_BATCH) {
            // Bulk lane: verified and decoded by the copier, off this task.
            let len = body.len() as u64;
            let queued = self.queued.fetch_add(len, Ordering::AcqRel) + len;
            // The shipper keeps at most `window` unacknowledged bulk bytes in flight, or one
            // larger frame alone: anything beyond is a peer ignoring flow control.
            let allowed = self.window.load(Ordering::Acquire) + u64::from(self.frame_bytes_max);
            if queued > allowed {
                return Err(CloseReason::Protocol(format!(
                    "peer sent {queued} bytes of journal beyond the window of {allowed}"
                )));
            }
            if let Err(mpsc::error::SendError(CopyIn::Batch(b))) =
                self.copy.send(CopyIn::Batch(body))
            {
                // No copier: nothing will take these bytes out of the count.
                self.queued.fetch_sub(b.len() as u64, Ordering::AcqRel);
            }
            return Ok(());
        }
        let (frame_type, payload) = match self.opener.open(body) {
            Ok(x) => x,
            Err(counter) => {
                stats.auth_failure(AuthFailure::FrameMac);
                tracing::warn!(counter, "cluster link frame failed its MAC check; closing");
                return Err(CloseReason::BadFrameMac { counter });
            }
        };
        LinkStats::add(&stats.frames_received, 1);
        let protocol = CloseReason::Protocol;
        match frame_type {
            ty::CONTROL => {
                LinkStats::add(&stats.control_received, 1);
                match self.events.try_send(payload) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        LinkStats::add(&stats.control_dropped, 1);
                        tracing::warn!(
                            "cluster link control message dropped: the application is not reading"
                        );
                    }
                    // The session handle is gone; the session is closing.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            ty::PING => {}
            ty::CLOCK => {
                let c = crate::clock::Clock::decode(&payload).map_err(protocol)?;
                self.shared.clock_received(&c);
            }
            ty::SHIP_REQUEST => {
                let r = ShipRequest::decode(&payload).map_err(protocol)?;
                self.route_ship(ShipIn::Request(r))?;
            }
            ty::SHIP_ACK => {
                let s = frame::decode_ack(&payload).map_err(protocol)?;
                self.route_ship(ShipIn::Ack(s))?;
            }
            ty::COPY_ERROR => {
                let m = ErrorMsg::decode(&payload).map_err(protocol)?;
                self.route_ship(ShipIn::PeerError(m))?;
            }
            ty::SHIP_ERROR => {
                let m = ErrorMsg::decode(&payload).map_err(protocol)?;
                if self.copy.send(CopyIn::PeerError(m)).is_err() {
                    tracing::debug!("shipping error from the peer with no copier running");
                }
            }
            other => return Err(protocol(format!("unknown frame type {other:#04x}"))),
        }
        Ok(())
    }

    fn route_ship(&self, m: ShipIn) -> Result<(), CloseReason> {
        match self.ship.try_send(m) {
            Ok(()) => Ok(()),
            // An honest copier sends one request, then one ack per append: the shipper keeps
            // up with that, or has not been started and receives nothing more.
            Err(mpsc::error::TrySendError::Full(_)) => Err(CloseReason::Protocol(format!(
                "more than {SHIP_QUEUE_MESSAGES} shipping messages queued"
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("shipping message from the peer with no shipper running");
                Ok(())
            }
        }
    }
}

fn tcp_setup(stream: &TcpStream) -> Result<(), Error> {
    stream.set_nodelay(true).map_err(|source| Error::Io {
        op: "set TCP_NODELAY",
        source,
    })
}

/// Connects to the peer's listener at `addr` and authenticates. The whole of it (TCP
/// connect included) is bounded by `cfg.handshake_timeout`.
pub async fn connect(addr: SocketAddr, cfg: &LinkConfig) -> Result<Session, Error> {
    cfg.validate()?;
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|source| Error::Io {
            op: "connect",
            source,
        })?;
        tcp_setup(&stream)?;
        auth::client(stream, cfg).await
    };
    match timeout(cfg.handshake_timeout, attempt).await {
        Ok(Ok((stream, est))) => Session::start(Box::new(stream), addr, est, cfg),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            cfg.stats.auth_failure(AuthFailure::Timeout);
            Err(Error::Auth {
                reason: AuthFailure::Timeout,
                detail: format!("no session with {addr} within {:?}", cfg.handshake_timeout),
            })
        }
    }
}

/// Accepts connections from the peer. Each connection is authenticated in its own task (at
/// most `pending_handshakes_max` at once and `pending_handshakes_per_source_max` from one
/// source address, each within `handshake_timeout`); strangers are
/// refused and counted, and only authenticated sessions come out of [`Listener::accept`].
/// Dropping the listener stops accepting and aborts pending handshakes.
pub struct Listener {
    local_addr: SocketAddr,
    sessions: mpsc::Receiver<Session>,
    task: JoinHandle<()>,
    stats: Arc<LinkStats>,
}

impl Listener {
    /// Binds `addr` and starts accepting.
    pub async fn bind(addr: SocketAddr, cfg: LinkConfig) -> Result<Listener, Error> {
        cfg.validate()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Io { op: "bind", source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Io {
            op: "get local address",
            source,
        })?;
        let (tx, rx) = mpsc::channel(4);
        let stats = cfg.stats.clone();
        let task = tokio::spawn(accept_loop(listener, cfg, tx));
        Ok(Listener {
            local_addr,
            sessions: rx,
            task,
            stats,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters of this listener's link.
    pub fn stats(&self) -> Arc<LinkStats> {
        self.stats.clone()
    }

    /// The next authenticated session.
    pub async fn accept(&mut self) -> Result<Session, Error> {
        self.sessions.recv().await.ok_or(Error::ListenerClosed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, cfg: LinkConfig, tx: mpsc::Sender<Session>) {
    let cfg = Arc::new(cfg);
    let pending = Arc::new(Semaphore::new(cfg.pending_handshakes_max));
    let per_source = Arc::new(twinrx_types::per_source::PerSource::default());
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = handshakes.join_next() => continue,
        };
        let (stream, from) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(error = %e, "cluster link accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = per_source.take(from.ip(), cfg.pending_handshakes_per_source_max) else {
            cfg.stats.auth_failure(AuthFailure::TooManyPending);
            tracing::debug!(%from, "cluster link: too many pending handshakes from this address; connection closed");
            continue;
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            cfg.stats.auth_failure(AuthFailure::TooManyPending);
            tracing::debug!(%from, "cluster link: too many pending handshakes; connection closed");
            continue;
        };
        let cfg = cfg.clone();
        let tx = tx.clone();
        handshakes.spawn(async move {
            let _permit = (permit, slot);
            let handshake = async {
                tcp_setup(&stream)?;
                auth::server(stream, &cfg, &from.to_string()).await
            };
            let session = match timeout(cfg.handshake_timeout, handshake).await {
                Ok(Ok((stream, est))) => Session::start(Box::new(stream), from, est, &cfg),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    cfg.stats.auth_failure(AuthFailure::Timeout);
                    tracing::warn!(%from, "cluster link handshake timed out");
                    return;
                }
            };
            match session {
                Ok(s) => {
                    if tx.send(s).await.is_err() {
                        tracing::debug!("listener dropped while a session was being handed over");
                    }
                }
                Err(e) => tracing::debug!(%from, error = %e, "cluster link connection refused"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_batch;

    /// An authenticated peer that ignores flow control (sends journal batches nobody asked
    /// for, beyond any window) is disconnected, not buffered without bound.
    #[tokio::test]
    async fn a_peer_ignoring_the_window_is_closed() {
        let creds = |p| crate::tls::test_credentials(p);
        let (a, b) = (Party::Node(NodeId::A), Party::Node(NodeId::B));
        let mut cfg = LinkConfig::new(a, &[b], creds(a));
        cfg.frame_bytes_max = 4096;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client_est, server_est) = auth::test_pair(NodeId::B);
        let connecting = TcpStream::connect(addr);
        let (accepted, connected) = tokio::join!(listener.accept(), connecting);
        let (server_stream, from) = accepted.expect("accept");
        let server = Session::start(Box::new(server_stream), from, server_est, &cfg)
            .expect("server session");
        let mut evil = Session::start(
            Box::new(connected.expect("connect")),
            addr,
            client_est,
            &LinkConfig::new(b, &[a], creds(b)),
        )
        .expect("client session");
        let mut port = evil.take_ship_port().expect("ship port");
        let mut sealer = port.sealer.take().expect("sealer");
        // No copier asked for anything: the allowance is one frame (4096 bytes).
        for i in 0..3u64 {
            let batch = encode_batch(&[(Seq(1 + i), vec![b'x'; 2000])]);
            let frame = sealer.seal(ty::SHIP_BATCH, &batch);
            port.bulk.send(frame).await.expect("queue");
        }
        let mut closed_rx = server.closed.clone();
        let reason = timeout(Duration::from_secs(5), closed(&mut closed_rx))
            .await
            .expect("closed in time");
        match reason {
            CloseReason::Protocol(what) => assert!(what.contains("beyond the window"), "{what}"),
            other => panic!("expected a window violation, got {other}"),
        }
    }

    /// An authenticated peer whose frame announces more than `frame_bytes_max` is closed
    /// before the frame is read.
    #[tokio::test]
    async fn an_oversized_frame_closes_the_session_before_it_is_read() {
        let (a, b) = (Party::Node(NodeId::A), Party::Node(NodeId::B));
        let cfg = LinkConfig::new(a, &[b], crate::tls::test_credentials(a));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (_, server_est) = auth::test_pair(NodeId::B);
        let (accepted, connected) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        let (server_stream, from) = accepted.expect("accept");
        let server = Session::start(Box::new(server_stream), from, server_est, &cfg)
            .expect("server session");
        let mut raw = connected.expect("connect");
        raw.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let mut closed_rx = server.closed.clone();
        let reason = timeout(Duration::from_secs(5), closed(&mut closed_rx))
            .await
            .expect("closed in time");
        assert_eq!(
            reason,
            CloseReason::FrameTooLarge {
                len: u32::MAX,
                max: crate::FRAME_BYTES_MAX_DEFAULT
            }
        );
    }
}
