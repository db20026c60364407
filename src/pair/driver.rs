//! The HA driver: the task that runs this node's `ha::HaCore` on real time and real I/O
//! (SPEC "HA core"; the driving contract is in `ha/README.md`).
//!
//! - **In** (one channel, [`Event`]): control messages from the peer (any link) and from the
//!   witness, disk results from the [`writer`](super::writer) thread, operator commands
//!   (switchover, resync, SIGTERM) and results of the fence command / pings. A health report is
//!   measured every 100 ms (journal write age, disk free, merger stall, the driver's own
//!   scheduling lag) and given to the core; the core's deadline is a `sleep_until`.
//! - **Out** (`poll_action`, in order): `Send` → `ha::wire` (peer messages framed with their
//!   entries, see [`encode_peer`]) on the named link, any live link, or the witness session;
//!   disk work (`PersistEpoch`, `TruncateStream`, `AcceptEntries`, publishing) → the writer's
//!   FIFO; `Committed` → the [`Gate`] that sinks, `tail` and `/stream` read; `StartPublishing`
//!   / `StopPublishing` also open and close the gate for the sinks.
//! - **Wire format of a peer control message**: `u32` length of the `ha::wire` message, the
//!   message, then for an `Append` its entries `[from, upto)` as (`u32` length, line) each.
//!   Witness messages are bare `ha::wire` messages (the witness daemon's format).
//! - A snapshot ([`HaView`]) is published after every step for `/status` and `/metrics`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ha::{Action, HaCore, HaMsg, Health, Input, Party, Role};
use journal::JournalHandle;
use tokio::sync::{mpsc, oneshot, watch};
use twinrx_types::{Offset, Seq};

use super::ha_config::HaSettings;
use super::writer::{Clock, DiskCmd, DiskDone};
use super::Pair;
use crate::node::NodeStats;

/// Everything the driver reacts to.
pub enum Event {
    Peer { link: u8, bytes: Vec<u8> },
    Witness(Vec<u8>),
    Disk(DiskDone),
    Switchover(oneshot::Sender<Result<String, String>>),
    Resync(oneshot::Sender<Result<String, String>>),
    Shutdown(oneshot::Sender<()>),
    Fence(bool),
    Ping(bool),
    ResyncDone,
}

/// What sinks, `tail` and `/stream` may read, and whether this node publishes.
pub struct Gate {
    /// Entries below this offset are committed.
    pub committed: watch::Sender<u64>,
    /// This node is the publishing active (sinks deliver only then).
    pub active: watch::Sender<bool>,
    /// A pair's gate (false: a single node, always active, committed once durable).
    pub pair: bool,
}

impl Gate {
    /// A single node's stream is committed once durable (readers stop at the durable end);
    /// a pair's only up to what the HA core says.
    pub fn new(single: bool) -> Arc<Gate> {
        Arc::new(Gate {
            committed: watch::channel(if single { u64::MAX } else { 0 }).0,
            active: watch::channel(single).0,
            pair: !single,
        })
    }
}

/// A snapshot of the HA state for `/status`.
#[derive(Clone, Debug)]
pub struct HaView {
    pub status: ha::Status,
    pub stats: ha::Stats,
    pub stream_end: u64,
    pub peer_down_since: Option<SystemTime>,
    pub witness_down_since: Option<SystemTime>,
    pub role_since: SystemTime,
    pub resync: Option<ResyncView>,
    pub last_disk_error: Option<String>,
    /// This node's copy of the stream was restarted at this offset (the active's first
    /// retained one: its retention had deleted entries this node lacked), and when. Kept in
    /// `data_dir/stream-copy-restarted` across restarts ([`CopyRestarted`]).
    pub copy_restarted: Option<(u64, SystemTime)>,
    /// Restarts of the stream copy since this process started.
    pub copy_restarts_total: u64,
    /// The last handover this node made: why, and when.
    pub last_handover: Option<(ha::HandoverReason, SystemTime)>,
}

#[derive(Clone, Debug)]
pub struct ResyncView {
    pub state: &'static str,
    pub phase: String,
    /// Progress: merged-stream entries held plus own journal records the peer holds, of the
    /// totals to reach.
    pub done: u64,
    pub total: u64,
    pub started: SystemTime,
    pub error: Option<String>,
}

/// Encodes a message for the peer, with `entries` after it (for an `Append`).
pub fn encode_peer(msg: &HaMsg, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut m = Vec::new();
    ha::wire::encode(msg, &mut m);
    let size = 4 + m.len() + entries.iter().map(|e| 4 + e.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(&m);
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Decodes what [`encode_peer`] wrote.
pub fn decode_peer(bytes: &[u8]) -> Result<(HaMsg, Vec<Vec<u8>>), String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err(format!("truncated: {} bytes left, {n} needed", b.len()));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn len(b: &mut &[u8]) -> Result<usize, String> {
        let h = take(b, 4)?;
        Ok(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
    }
    let mut b = bytes;
    let n = len(&mut b)?;
    let msg = ha::wire::decode(take(&mut b, n)?).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    while !b.is_empty() {
        let n = len(&mut b)?;
        entries.push(take(&mut b, n)?.to_vec());
    }
    Ok((msg, entries))
}

pub struct Driver {
    pub core: HaCore,
    pub settings: HaSettings,
    pub pair: Arc<Pair>,
    pub stream: JournalHandle,
    pub gate: Arc<Gate>,
    pub disk: mpsc::UnboundedSender<DiskCmd>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub events_tx: mpsc::UnboundedSender<Event>,
    pub clock: Clock,
    pub stats: Arc<NodeStats>,
    pub data_dir: std::path::PathBuf,
    pub view: Arc<Mutex<Option<HaView>>>,
    /// Specific (non-wildcard, non-loopback) addresses the receivers are bound to: one that
    /// is no longer on the host means devices cannot reach this node (F7).
    pub receive_ips: Vec<std::net::IpAddr>,
    /// The lease the writer checks before each append (see `writer::Lease`).
    pub lease: Arc<super::writer::Lease>,
    /// `[stream] hold_bytes_max`: the most the peer's copy of the stream keeps from retention.
    pub peer_hold_bytes_max: u64,
}

/// Holds the stream's retention at what the peer's copy of the stream still needs, while this
/// node leads (the active or solo replicates its stream to the follower through `Append`s, a
/// resync included). Its position: the follower's end as its `AppendAck`s say (in this
/// epoch), lowered to `truncate_to` when a `SyncReply` tells the follower where to continue;
/// when this node starts to lead, the follower's end as its last heartbeat said (0 when never
/// heard: hold everything). Capped at `[stream] hold_bytes_max`, like a sink: a follower away
/// longer than that no longer holds retention, and its copy then has to start again at the
/// first retained offset. Dropped while this node follows.
#[derive(Default)]
pub struct PeerHold {
    guard: Option<journal::ReaderGuard>,
}

impl PeerHold {
    const NAME: &'static str = "peer's stream copy";

    /// Re-registers at `offset` (positions only move forward; a lower one needs a new guard,
    /// registered before the old one goes).
    fn hold_at(&mut self, stream: &JournalHandle, offset: Offset, cap: u64) {
        let g = stream.register_reader_capped(Self::NAME, Seq(offset.0 + 1), cap);
        drop(self.guard.replace(g));
    }

    fn advance(&self, end: Offset) {
        if let Some(g) = &self.guard {
            g.advance(Seq(end.0 + 1));
        }
    }
}

/// The receive addresses missing from the host's interfaces (none when it cannot tell).
pub fn missing_addresses(ips: &[std::net::IpAddr]) -> Vec<std::net::IpAddr> {
    if ips.is_empty() {
        return Vec::new();
    }
    let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut present = Vec::new();
    for i in ifs {
        let Some(a) = i.address else { continue };
        if let Some(v4) = a.as_sockaddr_in() {
            present.push(std::net::IpAddr::V4(v4.ip()));
        } else if let Some(v6) = a.as_sockaddr_in6() {
            present.push(std::net::IpAddr::V6(v6.ip()));
        }
    }
    ips.iter()
        .filter(|ip| !present.contains(ip))
        .copied()
        .collect()
}

const HEALTH_EVERY: Duration = Duration::from_millis(100);
/// When the driver last logged that the peer needs entries retention deleted (Unix ms).
static GONE_LOGGED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// When the driver last logged that the peer's copy restarts at the first retained offset.
static RESTART_LOGGED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Bytes of entries in one `Append` at most (past the first entry): well within a frame, and
/// small enough that heartbeats behind it on the priority lane are not delayed.
const APPEND_BYTES_MAX: usize = 1 << 20;

impl Driver {
    pub async fn run(mut self) {
        let mut last_append: Option<(Offset, Vec<Vec<u8>>)> = None;
        let mut peer_hold = PeerHold::default();
        let mut shutdown_reply: Option<oneshot::Sender<()>> = None;
        let mut next_health = tokio::time::Instant::now();
        let mut recent = [Health::default(); 3];
        let mut health_ok = true;
        let mut view = HaView {
            status: self.core.status(),
            stats: self.core.stats(),
            stream_end: 0,
            peer_down_since: Some(SystemTime::now()),
            witness_down_since: Some(SystemTime::now()),
            role_since: SystemTime::now(),
            resync: None,
            last_disk_error: None,
            copy_restarted: CopyRestarted::load(&self.data_dir),
            copy_restarts_total: 0,
            last_handover: None,
        };
        // The payload of the last `SyncReply` (the active's merger progress, for a restart).
        let mut last_sync_base: Option<Vec<u8>> = None;
        let mut start_told = Offset(0);
        loop {
            let deadline = self
                .core
                .poll_deadline()
                .map(|d| tokio::time::Instant::from_std(self.clock.instant_of(d)));
            let sleep_to = match deadline {
                Some(d) => d.min(next_health),
                None => next_health,
            };
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else { break };
                    let now = self.clock.now();
                    self.tell_stream_start(now, &mut start_told);
                    match ev {
                        Event::Peer { link, bytes } => match decode_peer(&bytes) {
                            Ok((msg, entries)) => {
                                match &msg {
                                    HaMsg::Append { from, .. } => last_append = Some((*from, entries)),
                                    HaMsg::SyncReply { .. } => last_sync_base = entries.into_iter().next(),
                                    HaMsg::AppendAck { epoch, end } if *epoch == self.core.epoch() => {
                                        peer_hold.advance(*end)
                                    }
                                    _ => {}
                                }
                                self.core.handle_input(now, Input::Peer { link, msg });
                            }
                            Err(e) => {
                                self.pair.control.undecodable.fetch_add(1, Relaxed);
                                tracing::warn!(link, error = %e, "undecodable control message from the peer");
                            }
                        },
                        Event::Witness(bytes) => match ha::wire::decode(&bytes) {
                            Ok(msg) => self.core.handle_input(now, Input::Witness(msg)),
                            Err(e) => {
                                self.pair.control.undecodable.fetch_add(1, Relaxed);
                                tracing::warn!(error = %e, "undecodable message from the witness");
                            }
                        },
                        Event::Disk(DiskDone::Persisted(st)) => self.core.handle_input(now, Input::EpochPersisted(st)),
                        Event::Disk(DiskDone::Appended(upto)) => self.core.handle_input(now, Input::StreamAppended { upto }),
                        Event::Disk(DiskDone::Failed(e)) => view.last_disk_error = Some(e),
                        Event::Switchover(reply) => {
                            let before = self.core.stats().switchovers_refused_total;
                            let role = self.core.role();
                            self.core.handle_input(now, Input::Switchover);
                            let refused = self.core.stats().switchovers_refused_total > before;
                            let _ = reply.send(if !refused {
                                Ok(format!("node {} hands over to node {}", self.pair.settings.me, self.pair.settings.peer))
                            } else if !role.is_active() {
                                Err(format!("node {} is {}, not active: run switchover against the active node", self.pair.settings.me, role_name(role)))
                            } else {
                                Err(format!("no healthy, in-sync standby to hand over to (peer {} is {})", self.pair.settings.peer, self.core.status().peer_role.map_or("unreachable", role_name)))
                            });
                        }
                        Event::Resync(reply) => {
                            let _ = reply.send(self.pair.request_resync());
                            view.resync = Some(ResyncView {
                                state: "running",
                                phase: "catching up".into(),
                                done: 0,
                                total: 0,
                                started: SystemTime::now(),
                                error: None,
                            });
                        }
                        Event::Shutdown(reply) => {
                            shutdown_reply = Some(reply);
                            self.core.handle_input(now, Input::Shutdown);
                        }
                        Event::Fence(ok) => self.core.handle_input(now, Input::FenceResult { ok }),
                        Event::Ping(reachable) => self.core.handle_input(now, Input::PingResult { reachable }),
                        Event::ResyncDone => self.core.handle_input(now, Input::ResyncDone),
                    }
                }
                _ = tokio::time::sleep_until(sleep_to) => {
                    let now = self.clock.now();
                    self.tell_stream_start(now, &mut start_told);
                    let t = tokio::time::Instant::now();
                    if t >= next_health {
                        let lag = t.saturating_duration_since(next_health);
                        next_health = t + HEALTH_EVERY;
                        let h = self.health(lag);
                        recent.rotate_left(1);
                        recent[2] = h;
                        // Logged as the core judges it (see Health::steady).
                        let steady = Health::steady(&recent);
                        let ok = self.settings.core.get().health.accepts(&steady);
                        if ok != health_ok {
                            health_ok = ok;
                            if ok {
                                tracing::info!("pipeline health back within limits");
                            } else {
                                tracing::warn!(health = ?steady, "pipeline health outside limits (an active hands over to a standby that is healthy and clearly better)");
                            }
                        }
                        self.core.handle_input(now, Input::Health(h));
                    } else {
                        self.core.handle_timeout(now);
                    }
                }
            }
            let mut ready = false;
            while let Some(a) = self.core.poll_action() {
                if let Action::Send {
                    msg:
                        HaMsg::SyncReply {
                            truncate_to, start, ..
                        },
                    ..
                } = &a
                {
                    // The follower continues at `truncate_to` (or restarts at `start`): it
                    // needs every entry from there.
                    let from = (*truncate_to).max(*start);
                    peer_hold.hold_at(&self.stream, from, self.peer_hold_bytes_max);
                }
                if let Action::ResetStream { start } = &a {
                    let at = SystemTime::now();
                    view.copy_restarted = Some((start.0, at));
                    view.copy_restarts_total += 1;
                    CopyRestarted::store(&self.data_dir, start.0, at);
                }
                ready |= self.carry_out(a, &mut last_append, &mut last_sync_base);
            }
            let leads = matches!(self.core.role(), Role::Active | Role::Solo);
            match (leads, peer_hold.guard.is_some()) {
                (true, false) => {
                    let end = self.core.status().peer_log.end;
                    peer_hold.hold_at(&self.stream, end, self.peer_hold_bytes_max);
                }
                (false, true) => peer_hold.guard = None,
                _ => {}
            }
            self.publish_view(&mut view);
            if ready {
                if let Some(r) = shutdown_reply.take() {
                    let _ = r.send(());
                }
                break;
            }
        }
    }

    /// One raw health report (see [`steady`] for what the core is given).
    fn health(&self, lag: Duration) -> Health {
        let now = crate::node::unix_ms();
        let age = |since: u64| {
            if since == 0 {
                0
            } else {
                u32::try_from(now.saturating_sub(since)).unwrap_or(u32::MAX)
            }
        };
        let disk_free_bytes = crate::status::disk_free_bytes(&self.data_dir).unwrap_or(u64::MAX);
        let missing = missing_addresses(&self.receive_ips);
        let was_missing = self
            .stats
            .receive_addresses_missing
            .swap(!missing.is_empty(), Relaxed);
        if !missing.is_empty() && !was_missing {
            tracing::error!(
                ?missing,
                "receive addresses are gone from this host: devices cannot reach this node"
            );
        } else if missing.is_empty() && was_missing {
            tracing::info!("receive addresses are back");
        }
        Health {
            receivers_ok: !self.stats.journal_failing.load(Relaxed) && missing.is_empty(),
            fsync_latency_ms: age(self.stats.journal_busy_since_ms.load(Relaxed)),
            disk_free_bytes,
            merger_stall_ms: age(self.stats.merger_busy_since_ms.load(Relaxed)),
            sink_stall_ms: 0,
            sched_lag_ms: u32::try_from(lag.as_millis()).unwrap_or(u32::MAX),
        }
    }

    /// Tells the core the stream's first retained offset when retention moved it.
    fn tell_stream_start(&mut self, now: twinrx_types::Millis, told: &mut Offset) {
        let start = Offset(self.stream.first_seq().0.saturating_sub(1));
        if start > *told {
            *told = start;
            self.core.handle_input(now, Input::StreamStart { start });
        }
    }

    /// The payload of a `SyncReply` that restarts the follower's copy at `start`: the merger's
    /// progress at this node's stored checkpoint (see `Fold::restart_at`), if there is one at
    /// or after `start`.
    fn restart_base(&self, start: Offset) -> Vec<Vec<u8>> {
        match super::fold::stored_progress(&self.data_dir) {
            Some((at, p)) if at >= start => vec![super::fold::encode_base(at, &p)],
            other => {
                tracing::warn!(
                    start = start.0,
                    checkpoint = ?other.map(|(at, _)| at.0),
                    "the peer's stream copy restarts at this node's first retained offset, but \
                     no merger checkpoint at or after it can go with it"
                );
                Vec::new()
            }
        }
    }

    /// Carries out one action; true for `ShutdownReady`.
    fn carry_out(
        &mut self,
        a: Action,
        last_append: &mut Option<(Offset, Vec<Vec<u8>>)>,
        last_sync_base: &mut Option<Vec<u8>>,
    ) -> bool {
        match a {
            Action::Send { to, link, msg } => match to {
                Party::Witness => {
                    let mut b = Vec::new();
                    ha::wire::encode(&msg, &mut b);
                    self.pair.send_witness(b);
                }
                Party::Node(_) => {
                    let mut msg = msg;
                    let entries = match &mut msg {
                        HaMsg::Append { from, upto, .. } => match self.read_entries(*from, *upto) {
                            Some(e) => {
                                // A byte budget may cut the range: the follower acks what it
                                // got and the rest is sent again.
                                *upto = Offset(from.0 + e.len() as u64);
                                e
                            }
                            None => return false,
                        },
                        HaMsg::SyncReply {
                            truncate_to, start, ..
                        } if *start > *truncate_to => {
                            let start = *start;
                            // Repeated once a tick until the peer acks it: say it every 10 s.
                            let now = crate::node::unix_ms();
                            let last = RESTART_LOGGED_MS.load(Relaxed);
                            if now.saturating_sub(last) >= 10_000
                                && RESTART_LOGGED_MS
                                    .compare_exchange(last, now, Relaxed, Relaxed)
                                    .is_ok()
                            {
                                tracing::warn!(
                                    from = truncate_to.0,
                                    start = start.0,
                                    peer = %self.pair.settings.peer,
                                    "the peer's copy of the stream needs entries that stream \
                                     retention deleted here: it restarts at the first retained \
                                     offset"
                                );
                            }
                            self.restart_base(start)
                        }
                        _ => Vec::new(),
                    };
                    let bytes = encode_peer(&msg, &entries);
                    match (link, &msg) {
                        (None, HaMsg::Append { .. }) | (Some(_), _) => {
                            self.pair.send_peer(link, bytes)
                        }
                        (None, _) => self.pair.send_peer_all(bytes),
                    }
                }
            },
            Action::PersistEpoch(st) => {
                let _ = self.disk.send(DiskCmd::Persist(st));
            }
            Action::StartPublishing {
                epoch,
                from_offset,
                lease_until,
            } => {
                tracing::info!(epoch = epoch.0, from = from_offset.0, "publishing");
                self.lease.set(epoch, lease_until);
                let _ = self.disk.send(DiskCmd::Start {
                    epoch,
                    from: from_offset,
                });
                self.gate.active.send_replace(true);
            }
            Action::ExtendLease { lease_until } => {
                self.lease.extend(lease_until);
            }
            Action::StopPublishing(reason) => {
                tracing::warn!(?reason, "publishing stops");
                self.lease.revoke();
                self.gate.active.send_replace(false);
                let _ = self.disk.send(DiskCmd::Stop);
            }
            Action::TruncateStream { from } => {
                self.gate.committed.send_modify(|c| *c = (*c).min(from.0));
                let _ = self.disk.send(DiskCmd::Truncate(from));
            }
            Action::ResetStream { start } => {
                let base = match last_sync_base.take().map(|b| super::fold::decode_base(&b)) {
                    Some(Ok(b)) => Some(b),
                    Some(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "undecodable merger progress with the restart of the stream copy");
                        None
                    }
                    None => None,
                };
                self.gate.committed.send_modify(|c| *c = (*c).min(start.0));
                let _ = self.disk.send(DiskCmd::Restart { start, base });
            }
            Action::AcceptEntries {
                from,
                upto,
                entry_epoch,
            } => {
                let Some((msg_from, entries)) = last_append.as_ref() else {
                    return false;
                };
                let skip = from.0.saturating_sub(msg_from.0) as usize;
                let n = upto.0.saturating_sub(from.0) as usize;
                if from < *msg_from || skip + n > entries.len() {
                    tracing::warn!(
                        from = from.0,
                        upto = upto.0,
                        "entries to accept are not in the last Append"
                    );
                    return false;
                }
                let lines = entries[skip..skip + n].to_vec();
                let _ = self.disk.send(DiskCmd::Accept {
                    from,
                    upto,
                    epoch: entry_epoch,
                    lines,
                });
            }
            Action::Committed { upto } => {
                self.gate.committed.send_replace(upto.0);
            }
            Action::StartResync => {
                let (pair, tx) = (self.pair.clone(), self.events_tx.clone());
                tokio::spawn(async move {
                    pair.wait_copy_running().await;
                    let _ = tx.send(Event::ResyncDone);
                });
            }
            Action::RunFenceCommand => {
                let cmd = self.settings.fence_command.clone().unwrap_or_default();
                let timeout = Duration::from_millis(self.settings.fence_timeout_ms);
                let tx = self.events_tx.clone();
                tokio::spawn(async move {
                    let ok = run_fence(&cmd, timeout).await;
                    let _ = tx.send(Event::Fence(ok));
                });
            }
            Action::Ping => {
                let targets = self.settings.ping_targets.clone();
                let tx = self.events_tx.clone();
                tokio::spawn(async move {
                    let ok = ping_majority(&targets).await;
                    let _ = tx.send(Event::Ping(ok));
                });
            }
            Action::ShutdownReady => return true,
        }
        false
    }

    /// The entries `[from, upto)`, or a prefix of them within [`APPEND_BYTES_MAX`] (at least
    /// one entry); `None` when not readable.
    fn read_entries(&self, from: Offset, upto: Offset) -> Option<Vec<Vec<u8>>> {
        let n = upto.0.saturating_sub(from.0) as usize;
        match self.stream.read(Seq(from.0 + 1), n, APPEND_BYTES_MAX) {
            Ok(recs) if !recs.is_empty() && recs.len() <= n => {
                Some(recs.into_iter().map(|(_, l)| l).collect())
            }
            Ok(recs) => {
                tracing::debug!(
                    from = from.0,
                    upto = upto.0,
                    got = recs.len(),
                    "entries to send not all readable yet"
                );
                None
            }
            Err(journal::Error::Gone { first, .. }) => {
                // Retried at every resend: say it once a minute, not every 400 ms.
                let now = crate::node::unix_ms();
                let last = GONE_LOGGED_MS.load(Relaxed);
                if now.saturating_sub(last) >= 60_000
                    && GONE_LOGGED_MS
                        .compare_exchange(last, now, Relaxed, Relaxed)
                        .is_ok()
                {
                    tracing::error!(
                        from = from.0,
                        first_offset = first.0 - 1,
                        peer = %self.pair.settings.peer,
                        "the peer's copy of the stream needs entries that stream retention has \
                         deleted here (it fell behind by more than [stream] hold_bytes_max): it \
                         is told to restart its copy at the first retained offset"
                    );
                }
                None
            }
            Err(e) => {
                tracing::warn!(from = from.0, upto = upto.0, error = %e, "cannot read entries to send");
                None
            }
        }
    }

    fn publish_view(&self, view: &mut HaView) {
        let status = self.core.status();
        let stats = self.core.stats();
        if stats.handovers_total != view.stats.handovers_total {
            if let Some(r) = stats.last_handover {
                view.last_handover = Some((r, SystemTime::now()));
                tracing::info!(reason = r.as_str(), "handed over to the peer");
            }
        }
        if status.role != view.status.role {
            view.role_since = SystemTime::now();
            tracing::info!(
                role = role_name(status.role),
                epoch = status.epoch.0,
                "role"
            );
        }
        match (status.peer_reachable, view.peer_down_since) {
            (true, Some(_)) => view.peer_down_since = None,
            (false, None) => view.peer_down_since = Some(SystemTime::now()),
            _ => {}
        }
        // A standby rarely talks to the witness: its session is what says it is reachable.
        let mut status = status;
        status.witness_reachable = status.witness_reachable || self.pair.witness_connected();
        if !status.peer_reachable {
            status.peer_role = None;
        }
        match (status.witness_reachable, view.witness_down_since) {
            (true, Some(_)) => view.witness_down_since = None,
            (false, None) => view.witness_down_since = Some(SystemTime::now()),
            _ => {}
        }
        view.status = status;
        view.stats = self.core.stats();
        view.stream_end = self.stream.durable_seq().map_or(0, |s| s.0);
        if let Some(r) = view.resync.as_mut() {
            if r.state == "running" {
                if redundant(&view.status) && self.pair.copy_running() {
                    r.state = "done";
                    r.phase = "pair redundant".into();
                } else {
                    let (own_last, _, acked) = self.pair.shipping();
                    let st = &view.status;
                    let target = st.peer_log.end.0.max(st.commit_end.0);
                    r.phase = format!(
                        "merged stream {} of {} entries; node {} holds this journal up to seq \
                         {acked} of {own_last}; copy of node {}'s journal {}; role {}",
                        view.stream_end,
                        target,
                        self.pair.settings.peer,
                        self.pair.settings.peer,
                        if self.pair.copy_running() {
                            "following"
                        } else {
                            "not running"
                        },
                        role_name(st.role)
                    );
                    r.done = view.stream_end + acked;
                    r.total = target + own_last;
                }
            }
        }
        if let Ok(mut g) = self.view.lock() {
            *g = Some(view.clone());
        }
    }
}

/// Both nodes up, one active and one standby, in the same epoch.
pub fn redundant(s: &ha::Status) -> bool {
    s.peer_reachable
        && matches!(
            (s.role, s.peer_role),
            (Role::Active, Some(Role::Standby)) | (Role::Standby, Some(Role::Active))
        )
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Active => "active",
        Role::Solo => "solo",
        Role::Standby => "standby",
        Role::Syncing => "syncing",
        Role::Stopped => "stopped",
    }
}

async fn run_fence(cmd: &str, timeout: Duration) -> bool {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(timeout, child).await {
        Ok(Ok(st)) => {
            tracing::warn!(command = cmd, success = st.success(), "fence command ran");
            st.success()
        }
        Ok(Err(e)) => {
            tracing::error!(command = cmd, error = %e, "cannot run the fence command");
            false
        }
        Err(_) => {
            tracing::error!(command = cmd, "fence command timed out");
            false
        }
    }
}

async fn ping_majority(targets: &[std::net::IpAddr]) -> bool {
    let mut ok = 0;
    let mut set = tokio::task::JoinSet::new();
    for t in targets {
        let t = t.to_string();
        set.spawn(async move {
            tokio::process::Command::new("ping")
                .args(["-c", "1", "-W", "1", &t])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success())
        });
    }
    while let Some(r) = set.join_next().await {
        if r.unwrap_or(false) {
            ok += 1;
        }
    }
    ok * 2 > targets.len()
}

/// The note `status` shows after the stream copy restarted at the active's first retained
/// offset: `data_dir/stream-copy-restarted`, one line `<offset> <unix ms>`, so that it
/// survives a restart of the node. A missing or unreadable note is no note.
pub struct CopyRestarted;

impl CopyRestarted {
    const FILE: &'static str = "stream-copy-restarted";

    pub fn load(data_dir: &std::path::Path) -> Option<(u64, SystemTime)> {
        let text = std::fs::read_to_string(data_dir.join(Self::FILE)).ok()?;
        let mut it = text.split_whitespace();
        let offset = it.next()?.parse().ok()?;
        let ms: u64 = it.next()?.parse().ok()?;
        Some((offset, SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
    }

    /// Written to a temporary file and renamed: a crash leaves the old note or the new one.
    pub fn store(data_dir: &std::path::Path, offset: u64, at: SystemTime) {
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = data_dir.join(Self::FILE);
        let tmp = data_dir.join(format!("{}.tmp", Self::FILE));
        let written = std::fs::write(&tmp, format!("{offset} {ms}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the stream copy's restart; status shows it until this node restarts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinrx_types::Epoch;

    #[test]
    fn peer_messages_round_trip_with_their_entries() {
        let msg = HaMsg::Append {
            epoch: Epoch(3),
            from: Offset(10),
            upto: Offset(12),
            entry_epoch: Epoch(2),
            commit_end: Offset(9),
        };
        let entries = vec![b"{\"offset\":10}".to_vec(), Vec::new()];
        let bytes = encode_peer(&msg, &entries);
        assert_eq!(decode_peer(&bytes), Ok((msg, entries)));
        assert!(decode_peer(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode_peer(&[0, 0, 0, 9, 1]).is_err());
    }
}
