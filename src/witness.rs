//! `twinrx witness`: the third voter of a pair (SPEC "HA core": "stores only the epoch it voted
//! for and the highest committed (epoch, offset) it has heard of; it never holds data").
//!
//! This module is the I/O shell around the sans-IO `ha::Witness`:
//! - **In**: cluster-link sessions from node a and node b on `listen` (`replicator`: TLS 1.3,
//!   the witness's certificate shown, only node a's and node b's accepted). Each control
//!   message is decoded with `ha::wire::decode` and, if it is a witness request whose node
//!   field names the session's authenticated node, handed to
//!   `Witness::handle_input(now, node, msg)`. Undecodable, misattributed (a session of node a
//!   speaking for node b) and non-witness messages are dropped and counted, never a panic.
//! - **Time**: a monotonic clock (`Instant` at start → `twinrx_types::Millis`). The core has no
//!   deadlines (its promise is checked when a request arrives), so there are no timers.
//! - **Out** (`poll_action`, one core task): `Persist(state)` → [`state::store`] (temp file,
//!   fsync, rename, directory fsync) on a blocking thread, one at a time, then
//!   `handle_persisted`; only then can the `Send` that depends on it come out of the core.
//!   The core keeps taking requests while a persist runs (a slow disk's fsync takes seconds;
//!   lease renewals that need nothing new on disk must not wait for it): it emits a `Send`
//!   only once what it promises is durable, so no `Send` can overtake what it depends on. A
//!   `Persist` emitted while one runs is kept (the latest: states only grow) and runs next. `Send{to, msg}` → `ha::wire::encode` → every live session of node
//!   `to` (a node may have several links). If persisting fails the witness stops (exit 2):
//!   one that cannot make its vote durable must not answer.
//! - **Start**: the state is loaded from `DATA_DIR/witness.json` (a corrupt file refuses
//!   start-up); `DATA_DIR/witness.lock` (flock) keeps a second witness off the same state.
//!   The core then promises for `lease + margin` (it may have granted a lease just before).
//! - **Stop**: SIGTERM/SIGINT close every session and exit 0.
//! - **Admin** (`admin_listen`, default 127.0.0.1:7403): `GET /status` (JSON) and
//!   `GET /metrics` (Prometheus text).

pub(crate) mod config;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ha::{HaMsg, Witness, WitnessAction, WitnessState, WitnessStats};
use replicator::{AuthFailure, LinkConfig, LinkStats, Listener, Party, Session};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use twinrx_types::{Millis, NodeId};

pub use config::WitnessSettings;

/// Sessions kept per node (links × a reconnect overlap); a newer one closes the oldest.
const SESSIONS_PER_NODE_MAX: usize = 4;
/// Replies queued per session for its socket task.
const OUT_QUEUE: usize = 64;
/// Events (messages, session changes) queued for the core task.
const EVENT_QUEUE: usize = 1024;

/// Loads the config, then runs the witness until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(run_async(cfg))
}

/// Index of a node in per-node arrays. The listeners only hand out sessions of a and b.
fn slot(n: NodeId) -> usize {
    usize::from(n == NodeId::B)
}

const NODES: [NodeId; 2] = [NodeId::A, NodeId::B];

fn now_ms(clock: Instant) -> Millis {
    Millis(u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX))
}

async fn run_async(cfg: WitnessSettings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let restored = state::load(&cfg.data_dir)?;
    match restored {
        Some(st) => tracing::info!(
            voted_epoch = st.voted.0,
            record_log_epoch = st.record.log_epoch.0,
            record_end = st.record.end.0,
            "witness state loaded"
        ),
        None => tracing::info!(
            file = %state::path(&cfg.data_dir).display(),
            "no witness state yet: starting at epoch 0"
        ),
    }
    let restored = restored.unwrap_or_default();

    // Bind everything first: a port in use must fail start-up. One listener serves both
    // nodes: each session is the node its certificate names.
    let link = LinkConfig::new(
        Party::Witness,
        &[Party::Node(NodeId::A), Party::Node(NodeId::B)],
        cfg.credentials.clone(),
    );
    let link_stats = link.stats.clone();
    let listener = Listener::bind(cfg.listen, link)
        .await
        .with_context(|| format!("cannot bind listen {}", cfg.listen))?;
    let admin = match cfg.admin_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot bind admin_listen {a}"))?,
        ),
        None => None,
    };

    let clock = Instant::now();
    let shared = Arc::new(Shared {
        listen: cfg.listen,
        data_dir: cfg.data_dir.clone(),
        ha: cfg.ha,
        started: clock,
        credentials: cfg.credentials.clone(),
        link_stats,
        view: Mutex::new(View {
            durable: restored,
            ..View::default()
        }),
    });
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let mut tasks = vec![tokio::spawn(accept_loop(
        listener,
        events_tx,
        shared.clone(),
        shutdown.clone(),
    ))];
    if let Some(l) = admin {
        tasks.push(tokio::spawn(serve_admin(
            l,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    let core = Core {
        witness: Witness::new(cfg.ha, now_ms(clock), restored),
        clock,
        dir: cfg.data_dir.clone(),
        persisting: None,
        persist_next: None,
        sessions: Default::default(),
        shared: shared.clone(),
    };
    let mut core_task = tokio::spawn(core.run(events_rx, shutdown.clone()));
    tracing::info!(
        listen = %cfg.listen,
        admin = ?cfg.admin_listen,
        data_dir = %cfg.data_dir.display(),
        lease_ms = cfg.ha.lease_ms,
        lease_margin_ms = cfg.ha.lease_margin_ms,
        "witness running"
    );

    let (result, core_running) = tokio::select! {
        _ = crate::node::wait_for_signal() => {
            tracing::info!("stopping");
            (Ok(()), true)
        }
        r = &mut core_task => (core_result(r), false),
    };
    if shutdown_tx.send(true).is_err() {
        tracing::debug!("every task had already stopped");
    }
    for t in tasks {
        if let Err(e) = t.await {
            tracing::warn!(error = %e, "a witness task failed while stopping");
        }
    }
    // The core finishes what it is doing (a persist in flight completes) and stops.
    let result = if core_running {
        result.and(core_result(core_task.await))
    } else {
        result
    };
    if result.is_ok() {
        tracing::info!("stopped cleanly");
    }
    result
}

fn core_result(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("the witness core task failed: {e}")),
    }
}

/// Keeps a second witness process off the same state file (two voters sharing one vote
/// record could each grant the same epoch).
fn lock_data_dir(dir: &Path) -> anyhow::Result<crate::datadir::DirLock> {
    crate::datadir::lock(dir, "witness.lock", "witness")
}

/// Resolves once `shutdown` turns true (or its sender is gone: stop as well).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        tracing::debug!("shutdown sender gone");
    }
}

// ---------------------------------------------------------------------------------------
// Sessions

/// What the socket tasks tell the core.
enum Event {
    Opened {
        id: u64,
        node: NodeId,
        remote: SocketAddr,
        out: mpsc::Sender<Vec<u8>>,
    },
    Message {
        node: NodeId,
        bytes: Vec<u8>,
    },
    Closed {
        id: u64,
        node: NodeId,
        reason: String,
    },
}

async fn accept_loop(
    mut listener: Listener,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    loop {
        let session = tokio::select! {
            s = listener.accept() => s,
            _ = stopping(&mut shutdown) => return,
        };
        match session {
            Ok(session) => {
                let id = NEXT_ID.fetch_add(1, Relaxed);
                let remote = session.peer_addr();
                tokio::spawn(session_task(
                    session,
                    id,
                    remote,
                    events.clone(),
                    shared.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "witness: link listener stopped");
                return;
            }
        }
    }
}

/// Moves one session's messages to the core and the core's replies to the session.
async fn session_task(
    mut session: Session,
    id: u64,
    remote: SocketAddr,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(node) = session.peer().node() else {
        // The listener accepts only node a and node b.
        tracing::error!(peer = %session.peer(), "witness: a session with a party that is no node");
        return;
    };
    tracing::info!(%node, %remote, session = id, "witness: node connected");
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let opened = Event::Opened {
        id,
        node,
        remote,
        out: out_tx,
    };
    if events.send(opened).await.is_err() {
        return;
    }
    let reason = loop {
        tokio::select! {
            ev = session.recv() => match ev {
                replicator::Event::Control(bytes) => {
                    if events.send(Event::Message { node, bytes }).await.is_err() {
                        break "witness stopping".to_string();
                    }
                }
                replicator::Event::Closed(r) => break r.to_string(),
            },
            out = out_rx.recv() => match out {
                Some(bytes) => match session.try_send_control(bytes) {
                    Ok(true) => shared.count_reply(true),
                    Ok(false) => {
                        shared.count_reply(false);
                        tracing::warn!(%node, session = id, "witness: reply dropped: the session's send queue is full");
                    }
                    Err(e) => break e.to_string(),
                },
                None => break format!("replaced by a newer session (at most {SESSIONS_PER_NODE_MAX} per node)"),
            },
            _ = stopping(&mut shutdown) => break "witness stopping".to_string(),
        }
    };
    session.close();
    if events
        .send(Event::Closed { id, node, reason })
        .await
        .is_err()
    {
        tracing::debug!(%node, session = id, "witness: core gone before the session closed");
    }
}

// ---------------------------------------------------------------------------------------
// The core task

struct Core {
    witness: Witness,
    clock: Instant,
    dir: PathBuf,
    /// The persist running on a blocking thread: (state, result, time it took).
    persisting:
        Option<tokio::task::JoinHandle<(WitnessState, anyhow::Result<()>, std::time::Duration)>>,
    /// The next state to persist when the running one ends.
    persist_next: Option<WitnessState>,
    /// Live sessions of each node, by id (oldest first), with their reply queues.
    sessions: [BTreeMap<u64, mpsc::Sender<Vec<u8>>>; 2],
    shared: Arc<Shared>,
}

/// Why a decoded message is not handed to the core (counted under `discarded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unusable {
    /// A request whose node field is not the session's authenticated node.
    NodeMismatch,
    /// A node-to-node message: no business on the witness link (a node whose peer address
    /// points at the witness, say).
    NotForWitness,
}

impl Unusable {
    fn as_str(self) -> &'static str {
        match self {
            Unusable::NodeMismatch => "node_mismatch",
            Unusable::NotForWitness => "not_for_witness",
        }
    }
}

fn unusable(msg: &HaMsg, node: NodeId) -> Option<Unusable> {
    match msg {
        HaMsg::VoteRequest { candidate: n, .. }
        | HaMsg::LeaseRequest { node: n, .. }
        | HaMsg::LeaseRelease { node: n, .. } => (*n != node).then_some(Unusable::NodeMismatch),
        _ => Some(Unusable::NotForWitness),
    }
}

/// Logs the 1st, 2nd, 4th, 8th, … occurrence only: a misconfigured node sending heartbeats
/// five times a second must not flood the log (the counters have every one).
fn log_this_one(count: u64) -> bool {
    count.is_power_of_two()
}

impl Core {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        loop {
            let ev = tokio::select! {
                e = events.recv() => match e {
                    Some(e) => e,
                    None => return Ok(()),
                },
                done = async {
                    match self.persisting.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.persisting = None;
                    let (st, result, took) = done.context("the persisting thread failed")?;
                    self.persisted(st, result, took)?;
                    continue;
                }
                _ = stopping(&mut shutdown) => return Ok(()),
            };
            match ev {
                Event::Opened {
                    id,
                    node,
                    remote,
                    out,
                } => {
                    let live = &mut self.sessions[slot(node)];
                    live.insert(id, out);
                    while live.len() > SESSIONS_PER_NODE_MAX {
                        // Dropping its queue ends the oldest session.
                        live.pop_first();
                    }
                    let mut v = self.shared.view();
                    let n = &mut v.nodes[slot(node)];
                    n.sessions.insert(
                        id,
                        SessionView {
                            remote,
                            since: chrono::Utc::now(),
                        },
                    );
                    n.sessions_total += 1;
                }
                Event::Closed { id, node, reason } => {
                    self.sessions[slot(node)].remove(&id);
                    self.shared.view().nodes[slot(node)].sessions.remove(&id);
                    tracing::info!(%node, session = id, %reason, "witness: node session closed");
                }
                Event::Message { node, bytes } => self.handle_message(node, &bytes).await?,
            }
        }
    }

    async fn handle_message(&mut self, node: NodeId, bytes: &[u8]) -> anyhow::Result<()> {
        {
            let mut v = self.shared.view();
            let n = &mut v.nodes[slot(node)];
            n.messages_total += 1;
            n.last_heard = Some((Instant::now(), chrono::Utc::now()));
        }
        let msg = match ha::wire::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                let count = {
                    let mut v = self.shared.view();
                    v.discarded_malformed += 1;
                    v.discarded_malformed
                };
                if log_this_one(count) {
                    tracing::warn!(%node, error = %e, bytes = bytes.len(), count, "witness: malformed HA message dropped");
                }
                return Ok(());
            }
        };
        if let Some(why) = unusable(&msg, node) {
            let count = {
                let mut v = self.shared.view();
                let c = match why {
                    Unusable::NodeMismatch => &mut v.discarded_node_mismatch,
                    Unusable::NotForWitness => &mut v.discarded_not_for_witness,
                };
                *c += 1;
                *c
            };
            if log_this_one(count) {
                tracing::warn!(%node, reason = why.as_str(), count, ?msg, "witness: HA message dropped");
            }
            return Ok(());
        }
        tracing::debug!(%node, ?msg, "witness: request");
        self.witness.handle_input(now_ms(self.clock), node, msg);
        self.drive()?;
        self.shared.view().core = self.witness.stats();
        Ok(())
    }

    fn start_persist(&mut self, st: WitnessState) {
        let dir = self.dir.clone();
        self.persisting = Some(tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let result = state::store(&dir, st);
            (st, result, t0.elapsed())
        }));
    }

    /// A persist ended: the core learns it (and releases the replies that waited for it);
    /// the next one starts.
    fn persisted(
        &mut self,
        st: WitnessState,
        result: anyhow::Result<()>,
        took: std::time::Duration,
    ) -> anyhow::Result<()> {
        result.context(
            "cannot persist the witness state; stopping, because a witness that cannot make \
             its vote durable must not answer",
        )?;
        self.witness.handle_persisted(now_ms(self.clock), st);
        {
            let mut v = self.shared.view();
            v.durable = WitnessState {
                voted: v.durable.voted.max(st.voted),
                record: v.durable.record.max(st.record),
            };
            v.persists_total += 1;
            v.persist_ms_max = v.persist_ms_max.max(took.as_millis() as u64);
        }
        tracing::debug!(voted = st.voted.0, record = ?st.record, ms = took.as_millis() as u64, "witness state persisted");
        if let Some(next) = self.persist_next.take() {
            self.start_persist(next);
        }
        self.drive()
    }

    /// Carries out the core's actions (the `ha` witness contract).
    fn drive(&mut self) -> anyhow::Result<()> {
        while let Some(action) = self.witness.poll_action() {
            match action {
                WitnessAction::Persist(st) => {
                    if self.persisting.is_some() {
                        self.persist_next = Some(st);
                    } else {
                        self.start_persist(st);
                    }
                }
                WitnessAction::Send { to, msg } => {
                    tracing::debug!(node = %to, ?msg, "witness: answer");
                    let mut bytes = Vec::with_capacity(64);
                    ha::wire::encode(&msg, &mut bytes);
                    let mut queued = false;
                    for out in self.sessions[slot(to)].values() {
                        queued |= out.try_send(bytes.clone()).is_ok();
                    }
                    if !queued {
                        self.shared.view().replies_dropped += 1;
                        tracing::info!(node = %to, "witness: answer dropped: no session of that node can take it");
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Status and metrics

struct Shared {
    listen: SocketAddr,
    data_dir: PathBuf,
    ha: ha::WitnessConfig,
    started: Instant,
    credentials: Arc<replicator::Credentials>,
    /// Of the listener: sessions, and handshake refusals by reason.
    link_stats: Arc<LinkStats>,
    view: Mutex<View>,
}

impl Shared {
    fn view(&self) -> MutexGuard<'_, View> {
        // A panic while holding it would be a bug; the counters stay usable.
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_reply(&self, sent: bool) {
        let mut v = self.view();
        if sent {
            v.replies_sent += 1;
        } else {
            v.replies_dropped += 1;
        }
    }

    fn auth_failures(&self) -> Vec<(AuthFailure, u64)> {
        AuthFailure::ALL
            .iter()
            .map(|r| (*r, self.link_stats.snapshot().auth_failures(*r)))
            .collect()
    }
}

#[derive(Default)]
struct View {
    /// What `witness.json` holds.
    durable: WitnessState,
    core: WitnessStats,
    nodes: [NodeView; 2],
    discarded_malformed: u64,
    discarded_node_mismatch: u64,
    discarded_not_for_witness: u64,
    replies_sent: u64,
    replies_dropped: u64,
    persists_total: u64,
    persist_ms_max: u64,
}

#[derive(Default)]
struct NodeView {
    sessions: BTreeMap<u64, SessionView>,
    sessions_total: u64,
    messages_total: u64,
    last_heard: Option<(Instant, chrono::DateTime<chrono::Utc>)>,
}

struct SessionView {
    remote: SocketAddr,
    since: chrono::DateTime<chrono::Utc>,
}

fn rfc3339(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn status_json(s: &Shared) -> Value {
    let auth = s.auth_failures();
    let auth_total: u64 = auth.iter().map(|(_, n)| n).sum();
    let mut auth_obj = serde_json::Map::new();
    auth_obj.insert("total".into(), json!(auth_total));
    for (r, n) in &auth {
        auth_obj.insert(r.as_str().into(), json!(n));
    }
    let link = s.link_stats.snapshot();
    let v = s.view();
    let mut nodes = serde_json::Map::new();
    for node in NODES {
        let n = &v.nodes[slot(node)];
        let sessions: Vec<Value> = n
            .sessions
            .values()
            .map(|x| json!({ "remote": x.remote.to_string(), "since": rfc3339(&x.since) }))
            .collect();
        nodes.insert(
            node.to_string(),
            json!({
                "connected": !n.sessions.is_empty(),
                "sessions": sessions,
                "sessions_total": n.sessions_total,
                "messages_total": n.messages_total,
                "last_heard": n.last_heard.as_ref().map(|(_, t)| rfc3339(t)),
                "last_heard_ms_ago": n.last_heard.as_ref().map(|(i, _)| i.elapsed().as_millis() as u64),
            }),
        );
    }
    json!({
        "role": "witness",
        "version": env!("CARGO_PKG_VERSION"),
        "listen": s.listen.to_string(),
        "data_dir": s.data_dir.display().to_string(),
        "uptime_s": s.started.elapsed().as_secs(),
        "lease_ms": s.ha.lease_ms,
        "lease_margin_ms": s.ha.lease_margin_ms,
        "voted_epoch": v.durable.voted.0,
        "recorded": {
            "log_epoch": v.durable.record.log_epoch.0,
            "end": v.durable.record.end.0,
        },
        "nodes": nodes,
        "auth_failures": auth_obj,
        "sessions_established": link.sessions_established,
        "tls": {
            "cert_sha256": s.credentials.fingerprint(),
            "reload_error": s.credentials.reload_error(),
        },
        "discarded": {
            "malformed": v.discarded_malformed,
            "node_mismatch": v.discarded_node_mismatch,
            "not_for_witness": v.discarded_not_for_witness,
        },
        "votes": { "granted": v.core.votes_granted_total, "refused": v.core.votes_refused_total },
        "leases": { "granted": v.core.leases_granted_total, "refused": v.core.leases_refused_total },
        "replies": { "sent": v.replies_sent, "dropped": v.replies_dropped },
        "persists_total": v.persists_total,
        "persist_ms_max": v.persist_ms_max,
    })
}

mod metrics {
    //! `/metrics` of the witness: `twinrx_witness_*` (STYLE §8), read at scrape time.

    use super::{slot, Shared, NODES};
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::DescriptorEncoder;
    use prometheus_client::metrics::MetricType::{Counter, Gauge};
    use std::sync::Arc;

    use crate::metrics::{family, Labels};

    pub struct WitnessCollector(pub Arc<Shared>);

    impl std::fmt::Debug for WitnessCollector {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("WitnessCollector")
        }
    }

    impl Collector for WitnessCollector {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            let s = &self.0;
            let auth = s.auth_failures();
            let auth: Vec<(Labels<'_>, u64)> = auth
                .iter()
                .map(|(r, n)| (vec![("reason", r.as_str())], *n))
                .collect();
            family(
                &mut enc,
                "twinrx_witness_auth_failures",
                "Cluster-link connections refused by the witness, by reason (bad_certificate: not from \
                 the pair's CA; wrong_identity: a party other than node a or b)",
                Counter,
                &auth,
            )?;
            family(
                &mut enc,
                "twinrx_witness_sessions",
                "Cluster-link sessions established with the nodes",
                Counter,
                &[(vec![], s.link_stats.snapshot().sessions_established)],
            )?;
            let v = s.view();
            family(
                &mut enc,
                "twinrx_witness_voted_epoch",
                "Highest epoch the witness voted for or adopted (persisted)",
                Gauge,
                &[(vec![], v.durable.voted.0)],
            )?;
            family(
                &mut enc,
                "twinrx_witness_recorded_log_epoch",
                "Epoch of the highest committed stream position recorded (persisted)",
                Gauge,
                &[(vec![], v.durable.record.log_epoch.0)],
            )?;
            family(
                &mut enc,
                "twinrx_witness_recorded_end_offset",
                "End offset of the highest committed stream position recorded (persisted)",
                Gauge,
                &[(vec![], v.durable.record.end.0)],
            )?;
            let names: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
            let per_node = |f: &dyn Fn(usize) -> u64| -> Vec<(Labels<'_>, u64)> {
                NODES
                    .iter()
                    .zip(&names)
                    .map(|(n, name)| (vec![("node", name.as_str())], f(slot(*n))))
                    .collect()
            };
            family(
                &mut enc,
                "twinrx_witness_node_sessions",
                "Live authenticated sessions per node",
                Gauge,
                &per_node(&|i| v.nodes[i].sessions.len() as u64),
            )?;
            family(
                &mut enc,
                "twinrx_witness_node_messages",
                "HA messages received per node",
                Counter,
                &per_node(&|i| v.nodes[i].messages_total),
            )?;
            let heard: Vec<(Labels<'_>, u64)> = NODES
                .iter()
                .zip(&names)
                .filter_map(|(n, name)| {
                    v.nodes[slot(*n)].last_heard.as_ref().map(|(i, _)| {
                        (
                            vec![("node", name.as_str())],
                            i.elapsed().as_millis() as u64,
                        )
                    })
                })
                .collect();
            family(
                &mut enc,
                "twinrx_witness_node_silence_ms",
                "Time since the last message from each node (absent before the first)",
                Gauge,
                &heard,
            )?;
            family(
                &mut enc,
                "twinrx_witness_discarded",
                "HA messages dropped unanswered, by reason",
                Counter,
                &[
                    (vec![("reason", "malformed")], v.discarded_malformed),
                    (vec![("reason", "node_mismatch")], v.discarded_node_mismatch),
                    (
                        vec![("reason", "not_for_witness")],
                        v.discarded_not_for_witness,
                    ),
                ],
            )?;
            family(
                &mut enc,
                "twinrx_witness_votes",
                "Vote requests answered, by result",
                Counter,
                &[
                    (vec![("result", "granted")], v.core.votes_granted_total),
                    (vec![("result", "refused")], v.core.votes_refused_total),
                ],
            )?;
            family(
                &mut enc,
                "twinrx_witness_leases",
                "Lease requests answered, by result",
                Counter,
                &[
                    (vec![("result", "granted")], v.core.leases_granted_total),
                    (vec![("result", "refused")], v.core.leases_refused_total),
                ],
            )?;
            family(
                &mut enc,
                "twinrx_witness_replies",
                "Answers handed to a session, by result",
                Counter,
                &[
                    (vec![("result", "sent")], v.replies_sent),
                    (vec![("result", "dropped")], v.replies_dropped),
                ],
            )?;
            family(
                &mut enc,
                "twinrx_witness_persists",
                "State file writes (each fsynced before the answer it guards)",
                Counter,
                &[(vec![], v.persists_total)],
            )?;
            family(
                &mut enc,
                "twinrx_witness_persist_ms_max",
                "Slowest state file write since start (write, fsync, rename, directory fsync)",
                Gauge,
                &[(vec![], v.persist_ms_max)],
            )?;
            Ok(())
        }
    }

    pub fn render(s: &Arc<Shared>) -> Result<String, std::fmt::Error> {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(WitnessCollector(s.clone())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)?;
        Ok(out)
    }
}

async fn serve_admin(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/status", get(admin_status))
        .route("/metrics", get(admin_metrics))
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            if shutdown.wait_for(|s| *s).await.is_err() {
                tracing::debug!("admin: shutdown signal gone");
            }
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "witness admin server failed");
    }
}

async fn admin_status(State(s): State<Arc<Shared>>) -> Response {
    match serde_json::to_vec_pretty(&status_json(&s)) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn admin_metrics(State(s): State<Arc<Shared>>) -> Response {
    match metrics::render(&s) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha::{Health, LogPos, Role};
    use twinrx_types::{Epoch, Offset};

    #[test]
    fn only_witness_requests_in_the_sessions_own_name_reach_the_core() {
        let log = LogPos::default();
        let t = Millis(1);
        let e = Epoch(3);
        let table: [(HaMsg, NodeId, Option<Unusable>); 7] = [
            (
                HaMsg::VoteRequest {
                    epoch: e,
                    candidate: NodeId::A,
                    log,
                    sent_at: t,
                },
                NodeId::A,
                None,
            ),
            (
                HaMsg::VoteRequest {
                    epoch: e,
                    candidate: NodeId::B,
                    log,
                    sent_at: t,
                },
                NodeId::A,
                Some(Unusable::NodeMismatch),
            ),
            (
                HaMsg::LeaseRequest {
                    epoch: e,
                    node: NodeId::B,
                    sent_at: t,
                    record: log,
                },
                NodeId::B,
                None,
            ),
            (
                HaMsg::LeaseRequest {
                    epoch: e,
                    node: NodeId::A,
                    sent_at: t,
                    record: log,
                },
                NodeId::B,
                Some(Unusable::NodeMismatch),
            ),
            (
                HaMsg::LeaseRelease {
                    epoch: e,
                    node: NodeId::A,
                },
                NodeId::A,
                None,
            ),
            (
                HaMsg::AppendAck {
                    epoch: e,
                    end: Offset(1),
                },
                NodeId::A,
                Some(Unusable::NotForWitness),
            ),
            (
                HaMsg::Heartbeat {
                    epoch: e,
                    role: Role::Active,
                    log,
                    commit_end: Offset(0),
                    health: Health::default(),
                    healthy: true,
                    sent_at: t,
                },
                NodeId::B,
                Some(Unusable::NotForWitness),
            ),
        ];
        for (msg, node, want) in table {
            assert_eq!(
                unusable(&msg, node),
                want,
                "{msg:?} on a session of node {node}"
            );
        }
    }

    #[test]
    fn repeated_drops_are_logged_at_doubling_counts() {
        let logged: Vec<u64> = (1..=20).filter(|c| log_this_one(*c)).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
    }
}
