//! The pair: this node's side of the cluster links to the peer node, and cross-replication
//! of the journals over them (SPEC "Data flow": journal A → copy of A on B and back).
//!
//! Contract:
//! - One task per configured link keeps an authenticated session up (`replicator`): node a
//!   dials `pair.peer[i]` with a capped backoff (100 ms → 2 s), node b listens on
//!   `pair.listen[i]` (a newer session from the peer replaces an older one on that link).
//! - Every live session serves this node's journal to the peer (a `JournalShipper` per
//!   session: a shipper only answers the peer copier's request, so whichever link the peer
//!   copies on is served). The copy of the peer's journal, `DATA_DIR/peer` (the peer's seqs),
//!   is kept by one `JournalCopier`, run on one live session at a time: the first one up;
//!   when it ends, the next live one (or the same link once it is back). Resume is by seq
//!   (the copier asks from its copy's next seq), so a cut never yields a gap or a duplicate.
//! - `Diverged` / `Gap` stop copying for the life of the process (nothing is appended to a
//!   copy that does not match the peer's journal) and are reported in `/status` with the
//!   next step (`twinrx resync` on this node). Other copier failures (a full disk) are
//!   retried on a new session after a pause.
//! - Control messages (the HA core's lane) go to [`Pair::on_control`]: today they are counted
//!   and logged; the HA core will be fed there.
//! - Nothing here is on the receive path: the tasks read this node's journal through a
//!   handle and write only the copy.
//! - Shutdown ([`PairRuntime::stop`], after the node's shutdown signal): every session is
//!   closed, the copier returns (it is never dropped mid-append), the copy is fsynced.

pub mod config;
pub mod driver;
pub mod fold;
pub mod ha_config;
pub mod writer;

use self::config::{LinkSide, PairSettings};
use anyhow::Context as _;
use journal::JournalHandle;
use replicator::{
    AuthFailure, CopyConfig, CopyPort, Event, JournalCopier, JournalShipper, LinkConfig, LinkStats,
    Listener, Party, Session, ShipConfig,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Pause before a copier that failed for another reason than a closed session (e.g. a full
/// disk) is retried on a new session.
const COPY_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What `/status` and `/metrics` see of one link.
#[derive(Debug)]
pub struct LinkView {
    pub index: usize,
    pub side: LinkSide,
    pub stats: Arc<LinkStats>,
    state: Mutex<LinkState>,
    /// Unix ms of the last control message received on this link (0: none).
    last_rx_ms: AtomicU64,
}

#[derive(Debug, Clone)]
struct LinkState {
    up: bool,
    since: SystemTime,
    remote: Option<SocketAddr>,
    last_error: Option<String>,
    /// SHA-256 of the certificate the peer showed in the last session.
    peer_cert: Option<String>,
}

/// Why copying (or the peer's copying of this journal) stopped for good.
#[derive(Debug, Clone)]
struct Stopped {
    /// "diverged" or "gap".
    kind: &'static str,
    seq: u64,
    detail: String,
}

#[derive(Debug, Default)]
struct ReplState {
    /// The link the copier runs on, if any.
    copy_link: Option<usize>,
    /// The copy of the peer's journal no longer continues it (resync needed).
    copy_stopped: Option<Stopped>,
    /// The peer's copy of this journal does not continue it (reported by this node's shipper
    /// on the last session that ended so; cleared by a new session).
    peer_copy_stopped: Option<Stopped>,
    copy_last_error: Option<String>,
}

/// Counters of the control lane (the HA core's messages).
#[derive(Debug, Default)]
pub struct ControlStats {
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Control messages (peer or witness) that did not decode: dropped.
    pub undecodable: AtomicU64,
    /// Control messages not sent: no link up, or the link's queue full (the core resends).
    pub send_dropped: AtomicU64,
}

/// This node's side of the pair, shared with the admin server.
pub struct Pair {
    pub settings: PairSettings,
    pub links: Vec<Arc<LinkView>>,
    /// Read access to the copy of the peer's journal (for the merger, next).
    pub copy: JournalHandle,
    pub copy_dir: std::path::PathBuf,
    /// This node's journal (what is shipped).
    own: JournalHandle,
    repl: Mutex<ReplState>,
    pub control: ControlStats,
    /// Per link, the live session's control sender (the HA driver sends through it).
    senders: Mutex<Vec<Option<replicator::ControlSender>>>,
    witness_sender: Mutex<Option<replicator::ControlSender>>,
    /// The HA driver's inbox (set once the driver exists).
    events: std::sync::OnceLock<mpsc::UnboundedSender<driver::Event>>,
    /// With HA: a link whose session is up but that carried no control message for this long
    /// is shown `silent` (the session's own idle timeout is longer). 0: not tracked.
    silent_after_ms: AtomicU64,
    /// Above this clock offset to the peer (half the de-duplication window `W`), status
    /// reports a problem: the two copies of a message are matched within `W` of each other.
    clock_skew_max_ms: u64,
    /// Wakes waiters when the copier starts or stops.
    copy_changed: Notify,
    /// A new data directory: shippers report the peer's copy position and wait (F15).
    fresh: Option<FreshShared>,
}

/// The shippers' side of a [`FreshGate`]: where to report requests, and the hold.
type FreshShared = (
    mpsc::UnboundedSender<(twinrx_types::Seq, bool)>,
    watch::Receiver<bool>,
);

/// For a node whose data directory is new: where the peer's copy of this node's journal
/// ends, learnt before this node journals anything (see [`FreshGate::settle`]).
pub struct FreshGate {
    requests: mpsc::UnboundedReceiver<(twinrx_types::Seq, bool)>,
    release: watch::Sender<bool>,
}

/// How long a new node waits for the peer to say where its copy of this journal ends.
const FRESH_WAIT: Duration = Duration::from_secs(10);

impl FreshGate {
    /// Waits (at most [`FRESH_WAIT`]) for the peer's copier to say where its copy of this
    /// node's journal ends and, if the copy holds records (this node's disk was replaced,
    /// SPEC F15), makes `journal` continue after them, so no seq is ever reused. Then lets the
    /// shippers serve.
    pub async fn settle(mut self, journal: &mut journal::Journal, peer: twinrx_types::NodeId) {
        let got = tokio::time::timeout(FRESH_WAIT, self.requests.recv()).await;
        match got {
            Ok(Some((from, false))) if from.0 > 1 => match journal.reset_to(from) {
                Ok(()) => tracing::warn!(
                    next_seq = from.0,
                    %peer,
                    "new data directory: node {peer} holds this node's journal up to seq {}; \
                     continuing after it",
                    from.0 - 1
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot continue the journal after the peer's copy")
                }
            },
            Ok(Some(_)) => {
                tracing::info!(%peer, "new data directory: node {peer}'s copy of this journal is empty")
            }
            Ok(None) | Err(_) => tracing::warn!(
                %peer,
                "new data directory and node {peer} did not answer within {} s: the journal starts \
                 at seq 1 (if {peer} holds a copy of an older journal of this node, it reports a \
                 divergence: then run `twinrx resync`)",
                FRESH_WAIT.as_secs()
            ),
        }
        let _ = self.release.send(false);
    }
}

/// The running tasks; [`PairRuntime::stop`] ends them.
pub struct PairRuntime {
    links: Vec<JoinHandle<()>>,
    copier: JoinHandle<anyhow::Result<()>>,
}

/// How often the copy of the peer's journal applies its retention while copying.
const COPY_RETENTION_EVERY: Duration = Duration::from_secs(1);

/// A live session's copying port, offered to the copier task.
struct Offer {
    link: usize,
    port: CopyPort,
    /// Asks the link task to close that session (the copier failed on it; retry on a new one).
    close: Arc<Notify>,
}

/// Opens the copy, binds the listeners (a port in use fails start-up) and starts the tasks.
pub async fn start(
    settings: PairSettings,
    cfg: &crate::config::NodeConfig,
    own: JournalHandle,
    fresh: bool,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Arc<Pair>, PairRuntime, Option<FreshGate>)> {
    let (fresh_shared, fresh_gate) = if fresh {
        let (tx, rx) = mpsc::unbounded_channel();
        let (release, hold) = watch::channel(true);
        (
            Some((tx, hold)),
            Some(FreshGate {
                requests: rx,
                release,
            }),
        )
    } else {
        (None, None)
    };
    for w in &settings.warnings {
        tracing::warn!(warning = %w, "pair config");
    }
    let copy_dir = cfg.data_dir.join("peer");
    let copy_journal = crate::node::open_journal(
        copy_dir.clone(),
        "copy of the peer's journal",
        settings.copy_fsync,
        cfg,
        // `journal.retention_bytes_max` or the copy's default share (`crate::disk`); the
        // merger's position holds the rest.
        cfg.peer_retention,
    )?;
    // Retention passes every second rather than every 10 s: at full rate, 10 s of copy
    // traffic is a sizeable part of the disk budget's margin on a small filesystem
    // (`crate::disk`); a pass that finds the copy under its limit costs next to nothing.
    let copy_cfg = CopyConfig {
        retention_every: Some(COPY_RETENTION_EVERY),
        ..CopyConfig::default()
    };
    let copier = JournalCopier::new(copy_journal, copy_cfg);
    let mut listeners = Vec::new();
    let mut views = Vec::new();
    for (i, side) in settings.links.iter().enumerate() {
        let mut link_cfg = LinkConfig::new(
            Party::Node(settings.me),
            &[Party::Node(settings.peer)],
            settings.credentials.clone(),
        );
        link_cfg.clock_skew_us = crate::fault::clock_skew_ms().saturating_mul(1000);
        let listener = match side {
            LinkSide::Listen(addr) => Some(
                Listener::bind(*addr, link_cfg.clone())
                    .await
                    .with_context(|| format!("cannot bind pair.listen[{i}] {addr}"))?,
            ),
            LinkSide::Dial(_) => None,
        };
        listeners.push((link_cfg.clone(), listener));
        views.push(Arc::new(LinkView {
            index: i,
            side: *side,
            stats: link_cfg.stats.clone(),
            state: Mutex::new(LinkState {
                up: false,
                since: SystemTime::now(),
                remote: None,
                last_error: None,
                peer_cert: None,
            }),
            last_rx_ms: AtomicU64::new(0),
        }));
    }
    let pair = Arc::new(Pair {
        copy: copier.handle(),
        copy_dir,
        own,
        links: views,
        repl: Mutex::new(ReplState::default()),
        control: ControlStats::default(),
        senders: Mutex::new(vec![None; settings.links.len()]),
        witness_sender: Mutex::new(None),
        events: std::sync::OnceLock::new(),
        silent_after_ms: AtomicU64::new(0),
        clock_skew_max_ms: cfg
            .ha
            .as_ref()
            .map_or(2500, |h| h.dedup.get().window_ms / 2),
        copy_changed: Notify::new(),
        fresh: fresh_shared,
        settings,
    });
    let (offers_tx, offers_rx) = mpsc::unbounded_channel();
    let mut links = Vec::new();
    for (i, (link_cfg, listener)) in listeners.into_iter().enumerate() {
        links.push(tokio::spawn(link_task(
            pair.clone(),
            i,
            link_cfg,
            listener,
            offers_tx.clone(),
            shutdown.clone(),
        )));
    }
    drop(offers_tx);
    if let Some(addr) = cfg.ha.as_ref().and_then(|h| h.witness) {
        let link_cfg = LinkConfig::new(
            Party::Node(pair.settings.me),
            &[Party::Witness],
            pair.settings.credentials.clone(),
        );
        links.push(tokio::spawn(witness_task(
            pair.clone(),
            addr,
            link_cfg,
            shutdown.clone(),
        )));
    }
    let copier = tokio::spawn(copy_task(pair.clone(), copier, offers_rx, shutdown));
    tracing::info!(peer = %pair.settings.peer, links = pair.links.len(), "pair started");
    Ok((pair, PairRuntime { links, copier }, fresh_gate))
}

impl PairRuntime {
    /// Waits for the tasks to end (the node's shutdown signal must have been sent): sessions
    /// closed, the copy fsynced.
    pub async fn stop(self) -> anyhow::Result<()> {
        for l in self.links {
            let _ = l.await;
        }
        self.copier.await.context("joining the pair's copier")?
    }
}

/// Resolves once the node is stopping (or its shutdown sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn accept_on(l: &mut Option<Listener>) -> Result<Session, replicator::Error> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

struct Live {
    session: Session,
    close: Arc<Notify>,
}

/// Keeps link `i` up until shutdown.
async fn link_task(
    pair: Arc<Pair>,
    i: usize,
    cfg: LinkConfig,
    mut listener: Option<Listener>,
    offers: mpsc::UnboundedSender<Offer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let view = pair.links[i].clone();
    let mut backoff = BACKOFF_MIN;
    // When the last session started, and a pause before the next dial after it ended: a
    // session that ends within a second counts as a failed attempt (the backoff grows), so a
    // peer that accepts and drops at once is not dialed in a tight loop.
    let mut up_at = std::time::Instant::now();
    let mut redial_after: Option<Duration> = None;
    let mut live: Option<Live> = None;
    let mut stop = false;
    loop {
        if stop && live.is_none() {
            break;
        }
        match live.as_mut() {
            Some(l) => {
                enum Step {
                    Nothing,
                    Down(String),
                    Newer(Box<Session>),
                }
                let step = tokio::select! {
                    ev = l.session.recv() => match ev {
                        Event::Control(msg) => {
                            pair.on_control(i, msg);
                            Step::Nothing
                        }
                        Event::Closed(reason) => Step::Down(reason.to_string()),
                    },
                    _ = l.close.notified() => {
                        l.session.close();
                        Step::Nothing
                    }
                    s = accept_on(&mut listener), if !stop => match s {
                        Ok(newer) => Step::Newer(Box::new(newer)),
                        Err(e) => {
                            tracing::error!(link = i, error = %e, "pair link listener stopped");
                            listener = None;
                            Step::Nothing
                        }
                    },
                    _ = stopping(&mut shutdown), if !stop => {
                        stop = true;
                        l.session.close();
                        Step::Nothing
                    }
                };
                match step {
                    Step::Nothing => {}
                    Step::Down(reason) => {
                        if matches!(view.side, LinkSide::Dial(_)) {
                            if up_at.elapsed() < Duration::from_secs(1) {
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            } else {
                                backoff = BACKOFF_MIN;
                            }
                            redial_after = Some(backoff);
                        }
                        tracing::info!(link = i, reason = %reason, "pair link down");
                        pair.set_sender(i, None);
                        pair.set_link(i, false, None, Some(reason));
                        live = None;
                    }
                    Step::Newer(newer) => {
                        tracing::info!(link = i, remote = %newer.peer_addr(), "pair link: a newer session replaces the current one");
                        l.session.close();
                        live = Some(pair.session_up(i, *newer, &offers));
                    }
                }
            }
            None if stop => {}
            None => match &view.side {
                LinkSide::Listen(_) => {
                    tokio::select! {
                        s = accept_on(&mut listener) => match s {
                            Ok(s) => live = Some(pair.session_up(i, s, &offers)),
                            Err(e) => {
                                tracing::error!(link = i, error = %e, "pair link listener stopped");
                                pair.set_link(i, false, None, Some(e.to_string()));
                                listener = None;
                            }
                        },
                        _ = stopping(&mut shutdown) => stop = true,
                    }
                }
                LinkSide::Dial(addr) => {
                    let addr = *addr;
                    if let Some(pause) = redial_after.take() {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {},
                            _ = stopping(&mut shutdown) => stop = true,
                        }
                        if stop {
                            continue;
                        }
                    }
                    tokio::select! {
                        r = replicator::connect(addr, &cfg) => match r {
                            Ok(s) => {
                                up_at = std::time::Instant::now();
                                live = Some(pair.session_up(i, s, &offers));
                            }
                            Err(e) => {
                                tracing::debug!(link = i, %addr, error = %e, "pair link: cannot connect");
                                pair.set_link(i, false, None, Some(e.to_string()));
                                tokio::select! {
                                    _ = tokio::time::sleep(backoff) => {},
                                    _ = stopping(&mut shutdown) => stop = true,
                                }
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            }
                        },
                        _ = stopping(&mut shutdown) => stop = true,
                    }
                }
            },
        }
    }
    pair.set_link(i, false, None, Some("node stopping".into()));
}

/// Keeps a session to the witness up until shutdown; its messages go to the HA driver.
async fn witness_task(
    pair: Arc<Pair>,
    addr: SocketAddr,
    cfg: LinkConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = tokio::select! {
            r = replicator::connect(addr, &cfg) => r,
            _ = stopping(&mut shutdown) => break,
        };
        match session {
            Ok(mut s) => {
                tracing::info!(%addr, "witness connected");
                backoff = BACKOFF_MIN;
                *pair
                    .witness_sender
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(s.control_sender());
                loop {
                    tokio::select! {
                        ev = s.recv() => match ev {
                            Event::Control(m) => {
                                if let Some(tx) = pair.events.get() {
                                    let _ = tx.send(driver::Event::Witness(m));
                                }
                            }
                            Event::Closed(reason) => {
                                tracing::info!(%addr, %reason, "witness session ended");
                                break;
                            }
                        },
                        _ = stopping(&mut shutdown) => {
                            s.close();
                            break;
                        }
                    }
                }
                *pair
                    .witness_sender
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "cannot connect to the witness");
            }
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stopping(&mut shutdown) => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The copier, moved from session to session; fsyncs the copy at the end.
async fn copy_task(
    pair: Arc<Pair>,
    mut copier: JournalCopier,
    mut offers: mpsc::UnboundedReceiver<Offer>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let peer = pair.settings.peer;
    loop {
        let offer = tokio::select! {
            biased;
            _ = stopping(&mut shutdown) => break,
            o = offers.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        if pair.copy_stopped() {
            // Nothing more is appended until the copy is rebuilt (resync); dropping the
            // port leaves the session to the control lane and this journal's shipping.
            continue;
        }
        pair.with_repl(|r| r.copy_link = Some(offer.link));
        pair.copy_changed.notify_waiters();
        tracing::info!(link = offer.link, %peer, "copying the peer's journal on this link");
        // Never dropped mid-way: it ends when the session closes (link task, shutdown).
        let err = copier.run(offer.port).await;
        pair.with_repl(|r| r.copy_link = None);
        pair.copy_changed.notify_waiters();
        match err {
            replicator::Error::Closed(reason) => {
                tracing::debug!(link = offer.link, reason = %reason, "copy session ended");
            }
            replicator::Error::Diverged { seq, detail, .. } => {
                tracing::error!(%peer, seq = seq.0, detail = %detail, "copy of the peer's journal diverged: copying stopped; run `twinrx resync`");
                pair.with_repl(|r| {
                    r.copy_stopped = Some(Stopped {
                        kind: "diverged",
                        seq: seq.0,
                        detail,
                    })
                });
            }
            replicator::Error::Gap {
                copy_next,
                peer_first,
                ..
            } => {
                tracing::error!(%peer, copy_next = copy_next.0, peer_first = peer_first.0, "copy of the peer's journal has a gap: copying stopped; run `twinrx resync`");
                pair.with_repl(|r| {
                    r.copy_stopped = Some(Stopped {
                        kind: "gap",
                        seq: copy_next.0,
                        detail: format!(
                            "the copy needs seq {} but node {peer}'s journal starts at {}",
                            copy_next.0, peer_first.0
                        ),
                    })
                });
            }
            other => {
                tracing::warn!(link = offer.link, error = %other, "copying the peer's journal failed; retrying on a new session");
                pair.with_repl(|r| r.copy_last_error = Some(other.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(COPY_RETRY_PAUSE) => {},
                    _ = stopping(&mut shutdown) => {},
                }
                offer.close.notify_one();
            }
        }
    }
    let Some(mut j) = copier.into_journal() else {
        anyhow::bail!("the copy of the peer's journal was lost with an abandoned append");
    };
    tokio::task::spawn_blocking(move || j.sync())
        .await
        .context("joining the copy's final fsync")?
        .context("final fsync of the copy of the peer's journal")?;
    Ok(())
}

impl Pair {
    /// A control-lane message from the peer on link `link`: to the HA driver.
    fn on_control(&self, link: usize, msg: Vec<u8>) {
        self.control.received.fetch_add(1, Relaxed);
        if let Some(l) = self.links.get(link) {
            l.last_rx_ms.store(crate::node::unix_ms(), Relaxed);
        }
        self.control
            .received_bytes
            .fetch_add(msg.len() as u64, Relaxed);
        if let Some(tx) = self.events.get() {
            let _ = tx.send(driver::Event::Peer {
                link: u8::try_from(link).unwrap_or(u8::MAX),
                bytes: msg,
            });
        }
    }

    /// Connects the HA driver's inbox (once).
    pub fn set_driver(&self, tx: mpsc::UnboundedSender<driver::Event>, silent_after_ms: u64) {
        let _ = self.events.set(tx);
        self.silent_after_ms.store(silent_after_ms, Relaxed);
    }

    /// What a link is to an operator: `up` (session established and, with HA, heard from
    /// recently), `silent` (established, but no control message for longer than the failover
    /// delay: the path is likely cut; the session's idle timeout will close it), or `down`.
    fn link_state(&self, l: &LinkView) -> &'static str {
        if !l.state().up {
            return "down";
        }
        let after = self.silent_after_ms.load(Relaxed);
        let last = l.last_rx_ms.load(Relaxed);
        if after > 0 && last > 0 && crate::node::unix_ms().saturating_sub(last) > after {
            "silent"
        } else {
            "up"
        }
    }

    fn link_up(&self, l: &LinkView) -> bool {
        self.link_state(l) == "up"
    }

    /// Sends to the peer on `link`, or on the first link up for `None`. Dropped (counted) if
    /// no link is up or the queue is full: the HA core resends what matters.
    ///
    /// "Up" is what the session believes; a link whose local address vanished (F7) still looks
    /// up until its idle timeout. So `None` picks the live link the peer was heard on most
    /// recently: that path works both ways.
    pub fn send_peer(&self, link: Option<u8>, msg: Vec<u8>) {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let pick = match link {
            Some(l) => senders.get(usize::from(l)).and_then(|s| s.as_ref()),
            None => senders
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().filter(|s| !s.is_closed()).map(|s| (i, s)))
                .max_by_key(|(i, _)| self.links.get(*i).map_or(0, |l| l.last_rx_ms.load(Relaxed)))
                .map(|(_, s)| s),
        };
        let sent = pick.is_some_and(|s| matches!(s.try_send(msg), Ok(true)));
        if !sent {
            self.control.send_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Sends on every live link (small messages that must get through: votes, acks,
    /// handover); the peer's HA core ignores the copies.
    pub fn send_peer_all(&self, msg: Vec<u8>) {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent = false;
        for s in senders.iter().flatten().filter(|s| !s.is_closed()) {
            sent |= matches!(s.try_send(msg.clone()), Ok(true));
        }
        if !sent {
            self.control.send_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Sends to the witness (dropped, counted, if it is not connected).
    pub fn send_witness(&self, msg: Vec<u8>) {
        let w = self
            .witness_sender
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let sent = w
            .as_ref()
            .is_some_and(|s| matches!(s.try_send(msg), Ok(true)));
        if !sent {
            self.control.send_dropped.fetch_add(1, Relaxed);
        }
    }

    fn set_sender(&self, i: usize, s: Option<replicator::ControlSender>) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = senders.get_mut(i) {
            *slot = s;
        }
    }

    /// A session to the witness is up.
    pub fn witness_connected(&self) -> bool {
        self.witness_sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    /// The copier runs on a live session and its copy continues the peer's journal.
    pub fn copy_running(&self) -> bool {
        self.with_repl(|r| r.copy_link.is_some() && r.copy_stopped.is_none())
    }

    /// Resolves once [`Pair::copy_running`] holds.
    pub async fn wait_copy_running(&self) {
        loop {
            let changed = self.copy_changed.notified();
            if self.copy_running() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
        }
    }

    /// `twinrx resync` on this node: what it can do now, or why it cannot.
    pub fn request_resync(&self) -> Result<String, String> {
        let stopped = self.with_repl(|r| r.copy_stopped.clone());
        match stopped {
            Some(s) => {
                Err(format!(
                "the copy of node {}'s journal {} at seq {} ({}): move {} away (or delete it) and \
                 restart this node; it is then copied again from node {}",
                self.settings.peer,
                if s.kind == "gap" { "has a gap" } else { "diverged" },
                s.seq,
                s.detail,
                self.copy_dir.display(),
                self.settings.peer
            ))
            }
            None => Ok(format!(
                "catching up with node {}: journals, copies and the merged stream",
                self.settings.peer
            )),
        }
    }

    fn with_repl<T>(&self, f: impl FnOnce(&mut ReplState) -> T) -> T {
        let mut g = self.repl.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    fn copy_stopped(&self) -> bool {
        self.with_repl(|r| r.copy_stopped.is_some())
    }

    fn set_link(&self, i: usize, up: bool, remote: Option<SocketAddr>, error: Option<String>) {
        let mut st = self.links[i]
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if st.up != up {
            st.since = SystemTime::now();
        }
        st.up = up;
        if up {
            st.remote = remote;
            st.last_error = None;
        }
        if error.is_some() {
            st.last_error = error;
        }
    }

    /// A new session on link `i`: marked up, its journal shipper started, its copying port
    /// offered to the copier.
    fn session_up(
        self: &Arc<Self>,
        i: usize,
        mut session: Session,
        offers: &mpsc::UnboundedSender<Offer>,
    ) -> Live {
        let remote = session.peer_addr();
        tracing::info!(link = i, %remote, peer = %session.peer(), "pair link up");
        self.set_link(i, true, Some(remote), None);
        self.links[i]
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peer_cert = Some(session.peer_cert_sha256().to_string());
        self.set_sender(i, Some(session.control_sender()));
        self.with_repl(|r| r.peer_copy_stopped = None);
        let close = Arc::new(Notify::new());
        if let Some(port) = session.take_ship_port() {
            let pair = self.clone();
            let mut shipper = JournalShipper::new(self.own.clone(), ShipConfig::default());
            if let Some((tx, hold)) = &self.fresh {
                shipper = shipper.with_gate(tx.clone(), hold.clone());
            }
            tokio::spawn(async move {
                let err = shipper.run(port).await;
                let stopped = match &err {
                    replicator::Error::Closed(_) => None,
                    replicator::Error::Diverged { seq, detail, .. } => Some(Stopped {
                        kind: "diverged",
                        seq: seq.0,
                        detail: detail.clone(),
                    }),
                    replicator::Error::Gap {
                        copy_next,
                        peer_first,
                        ..
                    } => Some(Stopped {
                        kind: "gap",
                        seq: copy_next.0,
                        detail: format!(
                            "the peer's copy needs seq {} but this journal starts at {}",
                            copy_next.0, peer_first.0
                        ),
                    }),
                    other => {
                        tracing::warn!(link = i, error = %other, "shipping this journal to the peer stopped");
                        None
                    }
                };
                if let Some(s) = stopped {
                    pair.with_repl(|r| r.peer_copy_stopped = Some(s));
                }
            });
        }
        if let Some(port) = session.take_copy_port() {
            // The receiver lives until shutdown; a send error only means the node stops.
            let _ = offers.send(Offer {
                link: i,
                port,
                close: close.clone(),
            });
        }
        Live { session, close }
    }

    /// Records of this journal the peer has not acknowledged as durable in its copy.
    pub fn shipping(&self) -> (u64, u64, u64) {
        let own_last = self.own.durable_seq().map_or(0, |s| s.0);
        let snaps: Vec<_> = self.links.iter().map(|l| l.stats.snapshot()).collect();
        let acked = snaps.iter().map(|s| s.ship_acked_seq).max().unwrap_or(0);
        let sent = snaps.iter().map(|s| s.ship_sent_seq).max().unwrap_or(0);
        (own_last, sent, acked)
    }

    /// The peer's clock minus this node's, ms, as the up link with the most recent sample
    /// measured it (`None` before any sample).
    pub fn clock_offset_ms(&self) -> Option<i64> {
        self.links
            .iter()
            .filter_map(|l| {
                let s = l.stats.snapshot();
                Some((s.clock_rtt_us?, s.clock_offset_us?))
            })
            .min_by_key(|(rtt, _)| *rtt)
            .map(|(_, off)| off / 1000)
    }

    /// Problems and the operator's next step.
    pub fn problems(&self) -> (Vec<String>, Option<String>) {
        let me = self.settings.me;
        let peer = self.settings.peer;
        let mut problems = Vec::new();
        let mut next = None;
        let (copy_stopped, peer_copy_stopped) =
            self.with_repl(|r| (r.copy_stopped.clone(), r.peer_copy_stopped.clone()));
        if let Some(off) = self.clock_offset_ms() {
            if off.unsigned_abs() > self.clock_skew_max_ms {
                problems.push(format!(
                    "the clocks of node {me} and node {peer} differ by {} ms (node {peer} {}), \
                     more than half the de-duplication window ({} ms): the two copies of a \
                     message may no longer be matched as live",
                    off.unsigned_abs(),
                    if off > 0 { "ahead" } else { "behind" },
                    self.clock_skew_max_ms
                ));
                next.get_or_insert_with(|| {
                    "synchronize both nodes' clocks (NTP: chronyc tracking / timedatectl)"
                        .to_string()
                });
            }
        }
        if let Some(e) = self.settings.credentials.reload_error() {
            problems.push(format!(
                "the link's certificate files changed but do not load ({e}); the previous ones \
                 stay in use until they do"
            ));
            next.get_or_insert_with(|| {
                "fix pair.ca_file / cert_file / key_file (docs/operations.md \"Keys\")".to_string()
            });
        }
        if let Some(s) = copy_stopped {
            problems.push(format!(
                "copy of node {peer}'s journal {} at seq {}: {}; copying stopped, nothing is appended to it",
                if s.kind == "gap" { "has a gap" } else { "diverged" },
                s.seq,
                s.detail
            ));
            next = Some(format!(
                "run `twinrx resync` on node {me} to rebuild its copy of node {peer}'s journal \
                 (node {peer}'s data directory was wiped or replaced, or its retention deleted \
                 records this copy needs)"
            ));
        }
        if let Some(s) = peer_copy_stopped {
            problems.push(format!(
                "node {peer}'s copy of this journal {} at seq {}: {}",
                if s.kind == "gap" {
                    "has a gap"
                } else {
                    "diverged"
                },
                s.seq,
                s.detail
            ));
            next.get_or_insert_with(|| {
                format!(
                    "run `twinrx resync` on node {peer} to rebuild its copy of node {me}'s journal"
                )
            });
        }
        let snaps: Vec<_> = self.links.iter().map(|l| l.stats.snapshot()).collect();
        if snaps.iter().any(|s| s.copy_store_failing) {
            let errors: u64 = snaps.iter().map(|s| s.copy_store_errors).sum();
            problems.push(format!(
                "the copy of node {peer}'s journal cannot store on this node ({errors} failed \
                 appends, retried every few seconds in the same session): see the data \
                 directory's free space (journal.disk_free_bytes) and the log"
            ));
            next.get_or_insert_with(|| {
                format!(
                    "free space on node {me}'s data directory; the copy resumes by itself, then \
                     run `twinrx resync` on node {me} if it stays behind"
                )
            });
        }
        let down: Vec<_> = self.links.iter().filter(|l| !self.link_up(l)).collect();
        if !down.is_empty() && down.len() < self.links.len() {
            for l in &down {
                let st = l.state();
                let what = if st.up {
                    format!(
                        "silent (nothing heard for {} ms)",
                        crate::node::unix_ms().saturating_sub(l.last_rx_ms.load(Relaxed))
                    )
                } else {
                    format!(
                        "down since {}{}",
                        rfc3339(st.since),
                        st.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                    )
                };
                problems.push(format!(
                    "link {} ({} {}) to node {peer} {what}: the pair runs on the other link(s), \
                     without redundancy on this path",
                    l.index,
                    l.side.as_str(),
                    l.side.addr(),
                ));
            }
            next.get_or_insert_with(|| {
                "check the network path of the link(s) that are down (cable, NIC, switch); \
                 nothing else to do: the pair carries on"
                    .to_string()
            });
        }
        if !self.links.is_empty() && self.links.iter().all(|l| !self.link_up(l)) {
            problems.push(format!("no link to node {peer} is up"));
            next.get_or_insert_with(|| {
                format!(
                    "check that node {peer} runs, that the links are reachable, and that both \
                     nodes' certificates come from the pair's CA (pair.ca_file; see the links' \
                     last_error and auth_failures)"
                )
            });
        }
        (problems, next)
    }

    /// The `pair` object of `/status`.
    pub fn status_json(&self) -> Value {
        let (own_last, sent, acked) = self.shipping();
        let (copy_link, copy_stopped, peer_copy_stopped, copy_error) = self.with_repl(|r| {
            (
                r.copy_link,
                r.copy_stopped.clone(),
                r.peer_copy_stopped.clone(),
                r.copy_last_error.clone(),
            )
        });
        let stopped_json = |s: &Option<Stopped>| match s {
            Some(s) => json!({"kind": s.kind, "seq": s.seq, "detail": s.detail}),
            None => Value::Null,
        };
        let links: Vec<Value> = self
            .links
            .iter()
            .map(|l| {
                let st = l.state();
                let snap = l.stats.snapshot();
                let failures: serde_json::Map<String, Value> = AuthFailure::ALL
                    .iter()
                    .map(|r| (r.as_str().to_string(), json!(snap.auth_failures(*r))))
                    .collect();
                json!({
                    "index": l.index,
                    "side": l.side.as_str(),
                    "address": l.side.addr().to_string(),
                    "state": self.link_state(l),
                    "last_heard_ms_ago": match l.last_rx_ms.load(Relaxed) {
                        0 => Value::Null,
                        t => json!(crate::node::unix_ms().saturating_sub(t)),
                    },
                    "since": rfc3339(st.since),
                    "remote": st.remote.map(|a| a.to_string()),
                    "peer_cert_sha256": st.peer_cert,
                    "clock_offset_ms": snap.clock_offset_us.map(|us| us as f64 / 1000.0),
                    "clock_rtt_ms": snap.clock_rtt_us.map(|us| us as f64 / 1000.0),
                    "last_error": st.last_error,
                    "sessions": snap.sessions_established,
                    "reconnects": snap.reconnects,
                    "bytes_sent": snap.bytes_sent,
                    "bytes_received": snap.bytes_received,
                    "auth_failures_total": snap.auth_failures_total(),
                    "auth_failures": failures,
                })
            })
            .collect();
        let copy_first = self.copy.first_seq().0;
        let copy_durable = self.copy.durable_seq().map_or(0, |s| s.0);
        let (problems, next_step) = self.problems();
        json!({
            "peer": self.settings.peer.to_string(),
            "tls": {
                "cert_sha256": self.settings.credentials.fingerprint(),
                "reload_error": self.settings.credentials.reload_error(),
            },
            "links": links,
            "links_up": self.links.iter().filter(|l| self.link_up(l)).count(),
            "shipping": {
                "journal_last_seq": own_last,
                "shipped_seq": sent,
                "peer_acked_seq": acked,
                "lag_records": own_last.saturating_sub(acked),
                "records_shipped": self.links.iter().map(|l| l.stats.snapshot().records_shipped).sum::<u64>(),
                "peer_copy_store_errors": self.links.iter().map(|l| l.stats.snapshot().peer_copy_store_errors).sum::<u64>(),
                "peer_copy_stopped": stopped_json(&peer_copy_stopped),
            },
            "copy": {
                "dir": self.copy_dir.display().to_string(),
                "fsync": self.settings.copy_fsync.to_string(),
                "link": copy_link,
                "copying": copy_link.is_some() && copy_stopped.is_none(),
                "first_seq": copy_first,
                "durable_seq": copy_durable,
                // The peer's journal end reaches this node with the HA heartbeats (next); until
                // then the peer's `shipping.lag_records` is this copy's lag.
                "lag_records": Value::Null,
                "records_copied": self.links.iter().map(|l| l.stats.snapshot().records_copied).sum::<u64>(),
                "store_errors": self.links.iter().map(|l| l.stats.snapshot().copy_store_errors).sum::<u64>(),
                "store_failing": self.links.iter().any(|l| l.stats.snapshot().copy_store_failing),
                "stopped": stopped_json(&copy_stopped),
                "last_error": copy_error,
            },
            "control": {
                "received": self.control.received.load(Relaxed),
                "received_bytes": self.control.received_bytes.load(Relaxed),
                "undecodable": self.control.undecodable.load(Relaxed),
                "send_dropped": self.control.send_dropped.load(Relaxed),
            },
            "healthy": problems.is_empty(),
            "problems": problems,
            "next_step": next_step,
        })
    }

    /// The `twinrx_link_*` and `twinrx_replication_*` families of `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use crate::metrics::family;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let idx: Vec<String> = self.links.iter().map(|l| l.index.to_string()).collect();
        let snaps: Vec<_> = self.links.iter().map(|l| l.stats.snapshot()).collect();
        let per_link = |f: &dyn Fn(usize) -> u64| -> Vec<(crate::metrics::Labels<'_>, u64)> {
            idx.iter()
                .enumerate()
                .map(|(i, s)| (vec![("link", s.as_str())], f(i)))
                .collect()
        };
        family(
            enc,
            "twinrx_link_up",
            "1 while the link's session to the peer is established and, with HA, heard from \
             within the failover delay",
            Gauge,
            &per_link(&|i| u64::from(self.link_up(&self.links[i]))),
        )?;
        let mut bytes = Vec::new();
        for (i, s) in idx.iter().enumerate() {
            bytes.push((
                vec![("link", s.as_str()), ("direction", "sent")],
                snaps[i].bytes_sent,
            ));
            bytes.push((
                vec![("link", s.as_str()), ("direction", "received")],
                snaps[i].bytes_received,
            ));
        }
        family(
            enc,
            "twinrx_link_bytes",
            "Bytes sent and received on the link (frames, all lanes)",
            Counter,
            &bytes,
        )?;
        let mut failures = Vec::new();
        for (i, s) in idx.iter().enumerate() {
            for (reason, n) in snaps[i].auth_failures {
                failures.push((vec![("link", s.as_str()), ("reason", reason.as_str())], n));
            }
        }
        family(
            enc,
            "twinrx_link_auth_failures",
            "Cluster-link connections or sessions refused, by reason (bad_certificate: not from the \
             pair's CA; wrong_identity: a party that may not speak here)",
            Counter,
            &failures,
        )?;
        let offsets: Vec<(crate::metrics::Labels<'_>, f64)> = idx
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                Some((
                    vec![("link", s.as_str())],
                    snaps[i].clock_offset_us? as f64 / 1e6,
                ))
            })
            .collect();
        crate::metrics::gauge_f64(
            enc,
            "twinrx_link_clock_offset_seconds",
            "The peer's clock minus this node's, measured over the link (best of the last 8 \
             samples, by round trip); a problem above half ha.dedup_window_ms",
            &offsets,
        )?;
        family(
            enc,
            "twinrx_link_reconnects",
            "Sessions established on the link after its first",
            Counter,
            &per_link(&|i| snaps[i].reconnects),
        )?;
        let (own_last, _, acked) = self.shipping();
        family(
            enc,
            "twinrx_replication_lag_records",
            "Records of this node's journal not yet durable in the peer's copy",
            Gauge,
            &[(vec![], own_last.saturating_sub(acked))],
        )?;
        family(
            enc,
            "twinrx_replication_shipped_records",
            "Records of this node's journal shipped to the peer",
            Counter,
            &[(vec![], snaps.iter().map(|s| s.records_shipped).sum())],
        )?;
        family(
            enc,
            "twinrx_replication_copied_records",
            "Records of the peer's journal appended to this node's copy",
            Counter,
            &[(vec![], snaps.iter().map(|s| s.records_copied).sum())],
        )?;
        family(
            enc,
            "twinrx_replication_copy_durable_seq",
            "Last seq of the peer's journal durable in this node's copy",
            Gauge,
            &[(vec![], self.copy.durable_seq().map_or(0, |s| s.0))],
        )?;
        family(
            enc,
            "twinrx_replication_copy_stopped",
            "1 when the copy of the peer's journal diverged or has a gap (resync needed)",
            Gauge,
            &[(vec![], u64::from(self.copy_stopped()))],
        )?;
        Ok(())
    }
}

impl LinkView {
    fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Starts the HA driver (a task) and its disk writer (a thread) over this node's stream
/// journal: the pair's merged stream (see [`driver`] and [`writer`]).
#[allow(clippy::too_many_arguments)]
pub fn start_ha(
    pair: Arc<Pair>,
    settings: ha_config::HaSettings,
    cfg: &crate::config::NodeConfig,
    stream: journal::Journal,
    own: JournalHandle,
    gate: Arc<driver::Gate>,
    stats: Arc<crate::node::NodeStats>,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<(
    crate::node::HaHandle,
    std::thread::JoinHandle<anyhow::Result<()>>,
    JoinHandle<()>,
)> {
    let state = writer::load_epoch(&cfg.data_dir)?.unwrap_or_default();
    let fold = fold::Fold::restore(&stream.handle(), &cfg.data_dir)?;
    if fold.unreadable > 0 {
        tracing::warn!(
            lines = fold.unreadable,
            "merged stream lines not readable as merger outputs"
        );
    }
    let end = twinrx_types::Offset(stream.next_seq().0 - 1);
    tracing::info!(
        epoch = state.epoch.0,
        log_epoch = state.log_epoch.0,
        stream_end = end.0,
        runs = fold.runs.len(),
        checkpoint = ?fold.restored.checkpoint.map(|o| o.0),
        lines_folded = fold.restored.lines_folded,
        "HA state restored"
    );
    let restored = ha::Restored {
        state,
        end,
        start: twinrx_types::Offset(stream.handle().first_seq().0.saturating_sub(1)),
        runs: fold.runs.clone(),
    };
    let clock = writer::Clock::start();
    let core = ha::HaCore::new(settings.core.clone(), clock.now(), restored);
    let (disk_tx, disk_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let stream_h = stream.handle();
    let lease = Arc::new(writer::Lease::default());
    let w = writer::Writer {
        lease: lease.clone(),
        stream,
        data_dir: cfg.data_dir.clone(),
        me: cfg.name,
        own,
        copy: pair.copy.clone(),
        dedup: settings.dedup,
        checkpoints: fold::Checkpoints::new(&cfg.data_dir, settings.checkpoint, &fold, &stream_h),
        committed: gate.committed.subscribe(),
        fold,
        clock,
        stats: stats.clone(),
        cmds: disk_rx,
        done: done_tx,
        rt: rt.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("stream-writer".into())
        .spawn(move || w.run())
        .context("cannot start the stream writer")?;
    {
        let tx = ev_tx.clone();
        rt.spawn(async move {
            while let Some(d) = done_rx.recv().await {
                if tx.send(driver::Event::Disk(d)).is_err() {
                    break;
                }
            }
        });
    }
    pair.set_driver(ev_tx.clone(), settings.core.get().failover_after_ms);
    let view = Arc::new(Mutex::new(None));
    let d = driver::Driver {
        core,
        settings: settings.clone(),
        pair,
        stream: stream_h,
        gate,
        disk: disk_tx,
        events: ev_rx,
        events_tx: ev_tx.clone(),
        clock,
        stats,
        data_dir: cfg.data_dir.clone(),
        view: view.clone(),
        lease: lease.clone(),
        peer_hold_bytes_max: cfg.stream_hold_bytes_max,
        receive_ips: {
            let mut ips: Vec<std::net::IpAddr> = cfg
                .syslog_udp
                .iter()
                .chain(&cfg.syslog_tcp)
                .chain(&cfg.syslog_tls)
                .chain(&cfg.snmp.listen)
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
                .collect();
            ips.sort();
            ips.dedup();
            ips
        },
    };
    let task = rt.spawn(d.run());
    Ok((
        crate::node::HaHandle {
            view,
            events: ev_tx,
            settings,
            lease,
            clock,
        },
        thread,
        task,
    ))
}
