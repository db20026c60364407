//! The HA core of one node: a sans-IO state machine (STYLE §2).
//!
//! In: `handle_input(now, Input)` for messages, disk results, health reports and operator
//! commands; `handle_timeout(now)` when `poll_deadline()` is reached. Out: `poll_action()` until
//! it returns `None`. `now` is the node's monotonic clock; the core never reads a clock.
//!
//! Driving contract (the binary and the simulator both follow it):
//! - Actions are carried out in the order polled. `PersistEpoch`, `AcceptEntries` and local
//!   appends are reported back as `EpochPersisted` / `StreamAppended` once durable (fsync);
//!   `TruncateStream` and `ResetStream` are applied (durably) before any later action is
//!   carried out.
//! - Disk work is one FIFO: every local append issued before a `PersistEpoch` is reported
//!   (`StreamAppended`) before that `EpochPersisted`, so appends still in flight when a node
//!   stops publishing are labelled with the epoch they were written in.
//! - `AcceptEntries` refers to the payload of the `Append` message handled just before.
//! - While publishing, the binary appends entries only while `now < lease_until` (its own
//!   clock) and stamps them with the publishing epoch; it stops at `StopPublishing`.
//!
//! Invariants (checked by the simulator, `crate::sim`): at most one node publishes with a valid
//! lease at any time; at most one active per epoch; epochs never go backwards; a node truncates
//! only beyond the commit point; a node lacking committed entries is never promoted.
//!
//! Safety argument in brief (README "Design"): an epoch is won by a majority of {A, B, witness};
//! each voter promises one vote per epoch (persisted before it answers) and votes only for a
//! candidate whose `LogPos` is at least its own (a node) or at least the highest committed
//! position it recorded (the witness). An entry is committed when both nodes hold it, or when
//! the witness has recorded it (solo). A renewer of the active's lease (the standby's ack, the
//! witness's grant) promises not to vote for `lease + margin` from the moment it renewed, so a
//! new active is elected only after the old lease lapsed on the old active's own clock.

use std::collections::VecDeque;

use twinrx_types::{Epoch, Millis, NodeId, Offset};

use crate::config::{Policy, ValidConfig};
use crate::msg::{EpochState, HaMsg, Health, LogPos, Role, Run};

/// Index of a cluster link between the nodes (0-based, below `Config::links`).
pub type LinkId = u8;

/// Where a message goes or comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    Node(NodeId),
    Witness,
}

/// Everything that happens to a node, besides the passing of time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A message from the peer node, received on `link`.
    Peer { link: LinkId, msg: HaMsg },
    /// A message from the witness.
    Witness(HaMsg),
    /// The epoch file now durably holds this state.
    EpochPersisted(EpochState),
    /// The local merged stream is durable up to `upto` (exclusive): local appends while
    /// publishing, or entries stored after `AcceptEntries`.
    StreamAppended { upto: Offset },
    /// A fresh pipeline health report (send one every ~100 ms). The core judges each measure
    /// as good as its best of the last three reports ([`crate::msg::Health::steady`]).
    Health(Health),
    /// SIGTERM: hand over at once if active, then report `ShutdownReady`.
    Shutdown,
    /// Operator's planned switchover: the active hands over to an in-sync standby.
    Switchover,
    /// The journal resync asked for by `StartResync` is complete.
    ResyncDone,
    /// Stream retention deleted the local entries below `start` (they were committed): the
    /// first offset this node holds. Only grows; a follower whose copy would need entries
    /// below it is told to restart its copy there (`SyncReply::start`).
    StreamStart { start: Offset },
    /// Result of `RunFenceCommand` (true: the peer is fenced off).
    FenceResult { ok: bool },
    /// Result of `Ping` (true: a majority of ping targets answered).
    PingResult { reachable: bool },
}

/// Why a node stopped publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The lease was not renewed in time (self-fencing).
    LeaseExpired,
    /// A higher epoch is established by the other node.
    Deposed,
    /// Planned switchover or unhealthy pipeline: handing over to the standby.
    Handover,
    /// SIGTERM.
    Shutdown,
}

/// What the binary must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `msg`; `link: Some(l)` on that link (heartbeats go on each), `None` on any that is up.
    Send {
        to: Party,
        link: Option<LinkId>,
        msg: HaMsg,
    },
    /// Write and fsync the epoch file, then report `EpochPersisted`.
    PersistEpoch(EpochState),
    /// Start (or resume) publishing: the merger appends entries stamped `epoch` at offsets from
    /// `from_offset`, while `now < lease_until`.
    StartPublishing {
        epoch: Epoch,
        from_offset: Offset,
        lease_until: Millis,
    },
    /// The lease now runs until `lease_until`.
    ExtendLease { lease_until: Millis },
    /// Stop publishing now (stop the merger and sinks' writes).
    StopPublishing(StopReason),
    /// Remove entries at offsets `>= from` (never committed ones) before anything else.
    TruncateStream { from: Offset },
    /// Remove every entry and continue the stream at `start` (the next entry stored gets
    /// offset `start`), before anything else: the active no longer holds the entries between
    /// this node's end and `start` (its retention deleted them, committed). The payload of
    /// the `SyncReply` handled just before says what the merger had accounted for there.
    ResetStream { start: Offset },
    /// Store the entries `[from, upto)`, all of `entry_epoch`, carried by the `Append` just
    /// handled; report `StreamAppended` when durable.
    AcceptEntries {
        from: Offset,
        upto: Offset,
        entry_epoch: Epoch,
    },
    /// Entries below `upto` are committed (held by both nodes, or recorded by the witness).
    Committed { upto: Offset },
    /// Catch up the journals with the peer (`twinrx resync`); report `ResyncDone`.
    StartResync,
    /// Run the configured fence command against the peer; report `FenceResult`.
    RunFenceCommand,
    /// Ping the configured targets; report `PingResult`.
    Ping,
    /// Graceful shutdown may complete (the process may exit).
    ShutdownReady,
}

/// What a node restores from its disk at start.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Restored {
    /// The epoch file (default when absent).
    pub state: EpochState,
    /// First offset not in the local merged stream.
    pub end: Offset,
    /// First offset in the local merged stream (retention deleted the ones below).
    pub start: Offset,
    /// Runs of the local merged stream, ascending (`Run` per epoch boundary).
    pub runs: Vec<Run>,
}

/// Counters for metrics (`twinrx_ha_*_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub stale_messages_total: u64,
    pub votes_granted_total: u64,
    pub votes_refused_total: u64,
    pub campaigns_total: u64,
    pub promotions_total: u64,
    pub leases_expired_total: u64,
    pub handovers_total: u64,
    /// Of `handovers_total`, those this node made because its pipeline was unhealthy.
    pub health_handovers_total: u64,
    /// Of `handovers_total`, planned switchovers and shutdowns.
    pub switchover_handovers_total: u64,
    pub shutdown_handovers_total: u64,
    /// Why the last handover this node completed was made.
    pub last_handover: Option<HandoverReason>,
    /// Dwells started: this node took over from a peer that handed over for its health.
    pub health_dwells_total: u64,
    pub truncations_refused_total: u64,
    pub switchovers_refused_total: u64,
    /// Of `campaigns` refused, those where the witness said this node lacks committed
    /// entries (it recorded a solo active's stream beyond this node's).
    pub stale_refusals_total: u64,
}

/// A snapshot for `twinrx status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub role: Role,
    pub epoch: Epoch,
    pub log: LogPos,
    pub commit_end: Offset,
    pub publishing: bool,
    pub peer_reachable: bool,
    /// Per link: heard from the peer within `failover_after_ms`.
    pub links_up: Vec<bool>,
    pub witness_reachable: bool,
    pub healthy: bool,
    pub peer_role: Option<Role>,
    /// The peer's stream position as its last heartbeat said.
    pub peer_log: LogPos,
    /// Milliseconds left of a dwell after a health handover (0: none): until then this node
    /// does not hand back for its health.
    pub health_dwell_left_ms: u64,
    /// First offset the local stream holds (retention, or a restart of this follower's copy
    /// at the active's first retained offset, deleted the entries below).
    pub start: Offset,
    /// The witness refused this node's candidacy because it lacks committed entries (the
    /// active committed alone while this node was behind) and no active has been heard since:
    /// this node must not and will not take over; the node that holds them must come back.
    pub lacks_committed: bool,
    /// This node leads its epoch but its lease lapsed: it publishes nothing and `role` says
    /// `syncing` until the lease is renewed (cut off from the peer and the witness, or woken
    /// from a stop).
    pub lease_lapsed: bool,
}

#[derive(Clone, Debug)]
struct PeerView {
    link_heard: Vec<Option<Millis>>,
    last_heard: Option<Millis>,
    /// The peer said it leaves (graceful shutdown); cleared when heard again.
    left: bool,
    role: Option<Role>,
    epoch: Epoch,
    log: LogPos,
    healthy: bool,
    /// The peer's last reported health measures, and when they arrived.
    health: Health,
    health_at: Option<Millis>,
}

/// After taking over from a peer that handed over for its health, this node does not hand
/// back for health before `until`; each further health handover within `REPEAT_WINDOW_MS`
/// doubles the dwell (`DWELL_MS` up to `DWELL_MAX_MS`). Faults that are not shared load
/// (a frozen pipeline, a failed disk) show on one node only, so they still hand over at once
/// when the standby is clearly better; what the dwell stops is ping-pong between two nodes
/// that the same load slows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HealthDwell {
    until: Millis,
    /// Length of the last dwell (ms); the next one within the repeat window is twice this.
    last_ms: u64,
    last_at: Millis,
}

/// First dwell after a health handover (ms).
pub const DWELL_MS: u64 = 30_000;
/// Longest dwell (ms).
pub const DWELL_MAX_MS: u64 = 8 * 60_000;
/// A health handover this long after the previous one starts again from `DWELL_MS`.
const REPEAT_WINDOW_MS: u64 = 10 * 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Not following anyone yet (or waiting for the adopted epoch to be durable).
    Idle,
    Requested {
        at: Millis,
    },
    /// Truncated; appending until the stream reaches `target`.
    Appending {
        target: Offset,
    },
    /// Reached the target; `log_epoch = epoch` is being persisted.
    Persisting,
    CaughtUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Voting,
    Fencing,
    Pinging,
    /// Won; persisting the epoch. `echo` dates the first lease; `licensed`: won by fencing
    /// or reachability (two-node policies) rather than by a vote.
    Won {
        echo: Millis,
        licensed: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Campaign {
    epoch: Epoch,
    phase: Phase,
    retry_at: Millis,
}

#[derive(Clone, Debug)]
struct Follower {
    /// Epoch of the active we follow (its heartbeats told us), if any.
    leader: Option<Epoch>,
    sync: Sync,
    resync_done: bool,
    campaign: Option<Campaign>,
    /// No campaign of our own before this (after handing over).
    hold_until: Millis,
    /// We handed over at (epoch, end) and repeat `Handover` until the peer takes over.
    handing_over: Option<(Epoch, Offset)>,
    /// The peer handed over to us: campaign at once.
    took_handover: bool,
}

/// Why an active handed over to its standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverReason {
    /// `twinrx switchover` (planned).
    Switchover,
    /// Its pipeline health was outside the limits and the standby's clearly better.
    Unhealthy,
    /// It was shutting down (SIGTERM).
    Shutdown,
}

impl HandoverReason {
    pub const ALL: [HandoverReason; 3] = [
        HandoverReason::Switchover,
        HandoverReason::Unhealthy,
        HandoverReason::Shutdown,
    ];

    /// The label of `twinrx_ha_handovers_total{reason}` and of `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoverReason::Switchover => "switchover",
            HandoverReason::Unhealthy => "unhealthy",
            HandoverReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug)]
struct Leader {
    since: Millis,
    lease_until: Millis,
    publishing: bool,
    /// Follower progress: did it answer a `SyncReply`, what is durable there, what to send next.
    f_synced: bool,
    f_match: Offset,
    f_next: Offset,
    f_progress_at: Millis,
    /// What the standby has received (stored or queued for its disk): the most its
    /// acknowledgements or the heartbeats of a caught-up standby of our epoch said (at most
    /// what we hold), and when that last grew or covered our stream.
    f_recv: Offset,
    f_recv_progress_at: Millis,
    /// `f_next` at the previous heartbeat tick: what was sent a tick ago or earlier.
    f_sent_at_tick: Offset,
    /// Highest end the witness recorded for our epoch.
    witness_recorded: Offset,
    handover: Option<(HandoverReason, Millis)>,
    /// Two-node policies: fencing / reachability licensed solo operation until this time.
    solo_license_until: Millis,
    solo_check: Option<Millis>,
    /// When the last `LeaseRequest` left (requests go faster while the lease runs low).
    lease_request_at: Millis,
}

#[derive(Clone, Debug)]
enum State {
    Follower(Follower),
    Leader(Leader),
    Stopped,
}

/// The HA state machine of one node. See the module docs for the driving contract.
#[derive(Debug)]
pub struct HaCore {
    cfg: ValidConfig,
    me: NodeId,
    peer: NodeId,
    started_at: Millis,
    now: Millis,
    /// Highest epoch promised (maybe not yet durable).
    epoch: Epoch,
    /// Highest epoch seen anywhere (for numbering campaigns).
    epoch_seen: Epoch,
    /// Target of the last `PersistEpoch`.
    wanted: EpochState,
    durable: EpochState,
    /// First offset the local stream holds (entries below were committed and deleted).
    start: Offset,
    end: Offset,
    pending_end: Offset,
    runs: Vec<Run>,
    commit_end: Offset,
    state: State,
    peer_view: PeerView,
    witness_heard: Option<Millis>,
    /// We renewed the active's lease (or voted) and must not vote or campaign before this.
    promise_until: Millis,
    /// The last health report's time and the last three reports (newest last).
    health: Option<(Millis, [Health; 3])>,
    /// Since when this node's health is outside its limits (None: within).
    unhealthy_since: Option<Millis>,
    dwell: Option<HealthDwell>,
    next_heartbeat: Millis,
    /// Vote replies waiting for the epoch they promise to be durable.
    pending_votes: Vec<(Party, Epoch, Millis)>,
    /// The vote we granted last (in memory: after a restart we refuse rather than re-grant).
    voted_for: Option<(Epoch, Party)>,
    shutting_down: bool,
    /// The epoch we last published in (its late local appends may still land).
    published_epoch: Option<Epoch>,
    /// The witness refused our candidacy as stale (we lack committed entries) at this time;
    /// cleared when we win or hear an active.
    stale_at: Option<Millis>,
    actions: VecDeque<Action>,
    stats: Stats,
}

const NEVER: Millis = Millis(u64::MAX);
/// Most vote replies waiting for the epoch file (TIGER_STYLE: a limit on everything).
const PENDING_VOTES_MAX: usize = 16;

fn min_opt(a: Option<Millis>, b: Millis) -> Option<Millis> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl HaCore {
    /// Starts a node from what its disk holds. Every node starts as a follower (syncing) and
    /// keeps the promise it may have made before a crash: no vote for `lease + margin`.
    pub fn new(cfg: ValidConfig, now: Millis, restored: Restored) -> HaCore {
        let c = cfg.get();
        let me = c.node;
        let links = usize::from(c.links);
        let promise = now.saturating_add(c.lease_ms + c.lease_margin_ms);
        HaCore {
            me,
            peer: me.peer(),
            started_at: now,
            now,
            epoch: restored.state.epoch,
            epoch_seen: restored.state.epoch,
            wanted: restored.state,
            durable: restored.state,
            start: restored.start.min(restored.end),
            end: restored.end,
            pending_end: restored.end,
            runs: restored.runs,
            commit_end: Offset(0),
            state: State::Follower(Follower::new(now)),
            peer_view: PeerView {
                link_heard: vec![None; links],
                last_heard: None,
                left: false,
                role: None,
                epoch: Epoch(0),
                log: LogPos::default(),
                healthy: true,
                health: Health::default(),
                health_at: None,
            },
            witness_heard: None,
            promise_until: promise,
            health: None,
            unhealthy_since: None,
            dwell: None,
            next_heartbeat: now,
            pending_votes: Vec::new(),
            voted_for: None,
            shutting_down: false,
            published_epoch: None,
            stale_at: None,
            actions: VecDeque::new(),
            stats: Stats::default(),
            cfg,
        }
    }

    fn c(&self) -> &crate::config::Config {
        self.cfg.get()
    }

    // ----- public driving API -------------------------------------------------------------

    pub fn handle_input(&mut self, now: Millis, input: Input) {
        self.now = self.now.max(now);
        if matches!(self.state, State::Stopped) {
            return;
        }
        match input {
            Input::Peer { link, msg } => self.on_peer(link, msg),
            Input::Witness(msg) => self.on_witness(msg),
            Input::EpochPersisted(st) => self.on_persisted(st),
            Input::StreamAppended { upto } => self.on_appended(upto),
            Input::Health(h) => {
                let mut recent = self.health.map_or([h; 3], |(_, r)| r);
                recent.rotate_left(1);
                recent[2] = h;
                self.health = Some((self.now, recent));
                let healthy = self.healthy();
                match (healthy, self.unhealthy_since) {
                    (true, _) => self.unhealthy_since = None,
                    (false, None) => self.unhealthy_since = Some(self.now),
                    (false, Some(_)) => {}
                }
            }
            Input::Shutdown => self.on_shutdown(),
            Input::Switchover => self.begin_handover(HandoverReason::Switchover),
            Input::ResyncDone => {
                if let State::Follower(f) = &mut self.state {
                    f.resync_done = true;
                }
            }
            Input::StreamStart { start } => {
                self.start = self.start.max(start.min(self.end));
            }
            Input::FenceResult { ok } => self.on_fence_result(ok),
            Input::PingResult { reachable } => self.on_ping_result(reachable),
        }
        self.step();
    }

    pub fn handle_timeout(&mut self, now: Millis) {
        self.now = self.now.max(now);
        if matches!(self.state, State::Stopped) {
            return;
        }
        self.step();
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must be called next (`None` once stopped).
    pub fn poll_deadline(&self) -> Option<Millis> {
        if matches!(self.state, State::Stopped) {
            return None;
        }
        let mut d = Some(self.next_heartbeat);
        if !self.peer_suspected() {
            d = min_opt(d, self.suspect_at());
        }
        match &self.state {
            State::Leader(l) => {
                if l.publishing {
                    d = min_opt(d, l.lease_until);
                }
                if let Some(t) = self.fast_renewal_at(l) {
                    d = min_opt(d, t.max(self.now));
                }
                if l.solo_license_until > self.now && l.solo_license_until != NEVER {
                    d = min_opt(d, l.solo_license_until);
                }
            }
            State::Follower(f) => {
                if self.promise_until > self.now {
                    d = min_opt(d, self.promise_until);
                }
                if f.hold_until > self.now {
                    d = min_opt(d, f.hold_until);
                }
                if let Some(c) = f.campaign.filter(|c| c.phase == Phase::Voting) {
                    d = min_opt(d, c.retry_at.max(self.now));
                }
            }
            State::Stopped => {}
        }
        d
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn role(&self) -> Role {
        match &self.state {
            State::Stopped => Role::Stopped,
            State::Leader(l) => {
                if self.is_solo(l) {
                    Role::Solo
                } else {
                    Role::Active
                }
            }
            State::Follower(f) => {
                if f.sync == Sync::CaughtUp && f.resync_done {
                    Role::Standby
                } else {
                    Role::Syncing
                }
            }
        }
    }

    /// The role `status` reports. Like [`HaCore::role`] (which heartbeats carry), except that
    /// an active whose lease lapsed (renewals lost, or a wake from SIGSTOP with the peer
    /// promoted meanwhile) publishes nothing and may have been deposed: it reports `syncing`
    /// until its lease is renewed, never `active` or `solo`.
    /// A leader waiting for a lease that lasts (see `maybe_resume_publishing`) publishes
    /// nothing either, and reports `syncing` too.
    pub fn reported_role(&self) -> Role {
        match &self.state {
            State::Leader(l)
                if self.now >= l.lease_until
                    || (!l.publishing && l.handover.is_none() && !self.shutting_down) =>
            {
                Role::Syncing
            }
            _ => self.role(),
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn commit_end(&self) -> Offset {
        self.commit_end
    }

    /// This node's stream position as used in votes.
    pub fn log_pos(&self) -> LogPos {
        LogPos {
            log_epoch: self.durable.log_epoch,
            end: self.pending_end,
        }
    }

    pub fn status(&self) -> Status {
        let fa = self.c().failover_after_ms;
        let recent = |t: Option<Millis>| t.is_some_and(|t| self.now.saturating_sub(t) < fa);
        Status {
            role: self.reported_role(),
            epoch: self.epoch,
            log: self.log_pos(),
            commit_end: self.commit_end,
            publishing: matches!(&self.state, State::Leader(l) if l.publishing),
            peer_reachable: !self.peer_suspected(),
            links_up: self
                .peer_view
                .link_heard
                .iter()
                .map(|t| recent(*t))
                .collect(),
            witness_reachable: recent(self.witness_heard),
            healthy: self.healthy(),
            // Unreachable: what it said last is not its role now.
            peer_role: self.peer_view.role.filter(|_| !self.peer_suspected()),
            peer_log: self.peer_view.log,
            start: self.start,
            health_dwell_left_ms: self.dwell.map_or(0, |d| d.until.saturating_sub(self.now)),
            lacks_committed: self.stale_at.is_some(),
            lease_lapsed: matches!(&self.state, State::Leader(l) if self.now >= l.lease_until),
        }
    }

    // ----- helpers ------------------------------------------------------------------------

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn send(&mut self, to: Party, msg: HaMsg) {
        self.push(Action::Send {
            to,
            link: None,
            msg,
        });
    }

    fn send_peer(&mut self, msg: HaMsg) {
        let to = Party::Node(self.peer);
        self.send(to, msg);
    }

    fn uses_witness(&self) -> bool {
        self.c().policy == Policy::Witness
    }

    fn healthy(&self) -> bool {
        match &self.health {
            None => true,
            Some((at, recent)) => {
                self.now.saturating_sub(*at) <= self.c().health.report_stale_ms
                    && self.c().health.accepts(&Health::steady(recent))
            }
        }
    }

    /// The health this node is judged on (and reports to its peer).
    fn steady_health(&self) -> Health {
        self.health
            .map(|(_, recent)| Health::steady(&recent))
            .unwrap_or_default()
    }

    /// An unhealthy active hands over only to a standby clearly better on what fails here
    /// (see [`crate::HealthLimits::clearly_better`]), and not during a dwell.
    ///
    /// The peer's health must be as recent as the trouble here: a heartbeat that left before
    /// a load hit both nodes still shows the peer idle. So the peer's report must have arrived
    /// a heartbeat interval after this node's health went outside its limits.
    fn health_handover_allowed(&self) -> bool {
        let mine = self.steady_health();
        let better = self
            .c()
            .health
            .clearly_better(&self.peer_view.health, &mine);
        let fresh = match (self.unhealthy_since, self.peer_view.health_at) {
            (Some(since), Some(at)) => at >= since.saturating_add(self.c().heartbeat_interval_ms),
            _ => false,
        };
        better && fresh && self.dwell.is_none_or(|d| self.now >= d.until)
    }

    fn start_dwell(&mut self, now: Millis) {
        let ms = match self.dwell {
            Some(d) if now.saturating_sub(d.last_at) < REPEAT_WINDOW_MS => {
                d.last_ms.saturating_mul(2).min(DWELL_MAX_MS)
            }
            _ => DWELL_MS,
        };
        self.dwell = Some(HealthDwell {
            until: now.saturating_add(ms),
            last_ms: ms,
            last_at: now,
        });
        self.stats.health_dwells_total += 1;
    }

    fn suspect_at(&self) -> Millis {
        let base = self
            .peer_view
            .last_heard
            .unwrap_or(self.started_at)
            .max(self.started_at);
        base.saturating_add(self.c().failover_after_ms)
    }

    /// Silence on every link for `failover_after_ms`, or the peer said it leaves.
    fn peer_suspected(&self) -> bool {
        self.peer_view.left || self.now >= self.suspect_at()
    }

    /// The peer is heard and says it is active in an epoch at least ours.
    fn peer_active_live(&self) -> bool {
        !self.peer_suspected()
            && self.peer_view.role.is_some_and(Role::is_active)
            && self.peer_view.epoch >= self.epoch
    }

    /// Solo: the active commits without its standby's acknowledgement, by the witness's
    /// record (or a two-node policy's licence). So when the peer is gone; and when the
    /// standby's acknowledgements have not moved for `failover_after_ms` *and* what it
    /// received has not moved for twice that (a standby whose disk is only slow keeps
    /// receiving: see [`HaCore::lag_record`]).
    fn is_solo(&self, l: &Leader) -> bool {
        let fa = self.c().failover_after_ms;
        self.peer_suspected()
            || (self.acks_lag(l)
                && self.now.saturating_sub(l.f_recv_progress_at) >= fa.saturating_mul(2))
    }

    /// The standby's acknowledgements lag: something is not durable there and nothing more
    /// became durable for `failover_after_ms`.
    fn acks_lag(&self, l: &Leader) -> bool {
        l.f_match < self.end
            && self.now.saturating_sub(l.f_progress_at) >= self.c().failover_after_ms
    }

    /// What the witness is asked to record for this active's epoch (recorded entries are
    /// committed). With a standby in step: the commit point (what both hold durably). Solo:
    /// the whole stream. With a standby whose acknowledgements lag but that keeps receiving
    /// (a slow disk, issue #25): what it received, no more. Entries it received are held by
    /// both nodes (durable here, queued for the disk there), so the standby stays promotable
    /// (its `LogPos` counts what it received) and takes over if this node dies; recording
    /// the whole stream here made it stale and, with this node dead, nobody could publish.
    fn lag_record(&self, l: &Leader, solo: bool) -> Offset {
        if solo {
            self.end
        } else if self.acks_lag(l) {
            self.commit_end.max(l.f_recv.min(self.end))
        } else {
            self.commit_end
        }
    }

    /// Starts persisting `epoch`/`log_epoch` if they exceed what is wanted already.
    fn persist(&mut self, epoch: Epoch, log_epoch: Epoch) {
        let st = EpochState {
            epoch: epoch.max(self.wanted.epoch),
            log_epoch: log_epoch.max(self.wanted.log_epoch),
        };
        if st != self.wanted {
            self.wanted = st;
            self.push(Action::PersistEpoch(st));
        }
    }

    /// Queues a granted vote until its epoch is durable. Bounded: a retry replaces nothing but
    /// the oldest entry beyond `PENDING_VOTES_MAX` is dropped (the candidate retries).
    fn queue_vote(&mut self, to: Party, epoch: Epoch, echo: Millis) {
        if self.pending_votes.len() >= PENDING_VOTES_MAX {
            self.pending_votes.remove(0);
        }
        self.pending_votes.push((to, epoch, echo));
    }

    fn advance_commit(&mut self, upto: Offset) {
        let upto = upto.min(self.end);
        if upto > self.commit_end {
            self.commit_end = upto;
            self.push(Action::Committed { upto });
        }
    }

    fn truncate_runs(&mut self, to: Offset) {
        self.runs.retain(|r| r.start < to);
    }

    fn push_run(&mut self, epoch: Epoch, start: Offset) {
        if self.runs.last().is_none_or(|r| r.epoch != epoch) {
            self.runs.push(Run { epoch, start });
        }
    }

    fn become_follower(&mut self, leader: Option<Epoch>) {
        if let State::Leader(l) = &self.state {
            if l.publishing {
                self.push(Action::StopPublishing(StopReason::Deposed));
            }
        }
        let mut f = Follower::new(self.now);
        f.leader = leader;
        self.state = State::Follower(f);
    }

    // ----- the periodic step --------------------------------------------------------------

    fn step(&mut self) {
        let now = self.now;
        if let State::Leader(l) = &mut self.state {
            if l.publishing && now >= l.lease_until {
                l.publishing = false;
                self.stats.leases_expired_total += 1;
                self.actions
                    .push_back(Action::StopPublishing(StopReason::LeaseExpired));
            }
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now.saturating_add(self.c().heartbeat_interval_ms);
            self.tick();
        }
        self.leader_checks();
        self.maybe_campaign();
        if self.shutting_down {
            self.maybe_finish_shutdown();
        }
    }

    /// Every heartbeat interval: heartbeats on every link, lease renewal, retransmission.
    fn tick(&mut self) {
        let now = self.now;
        let hb = HaMsg::Heartbeat {
            epoch: self.durable.epoch,
            role: self.role(),
            log: self.log_pos(),
            commit_end: self.commit_end,
            health: self
                .health
                .map(|(_, recent)| Health::worst(&recent))
                .unwrap_or_default(),
            healthy: self.healthy(),
            sent_at: now,
        };
        for link in 0..self.c().links {
            let to = Party::Node(self.peer);
            self.push(Action::Send {
                to,
                link: Some(link),
                msg: hb.clone(),
            });
        }
        let solo = match &self.state {
            State::Leader(l) => Some(self.is_solo(l)),
            _ => None,
        };
        match &mut self.state {
            State::Leader(l) => {
                // Go-back-N: resend what the follower has not received when something sent a
                // tick ago or earlier is still unacknowledged (a follower whose acks merely
                // lag by less than a tick is not flooded with copies). A standby on a slow
                // disk acks a second late but has received nearly everything (its
                // heartbeats say so): resending its whole unacknowledged window every tick
                // only added load to a loaded machine.
                if l.f_match < l.f_sent_at_tick {
                    l.f_next = l.f_match.max(l.f_recv).min(l.f_next);
                }
                // A follower that fell behind our first retained entry while connected (our
                // retention held for it only up to a limit) cannot get what it lacks: tell it
                // to restart its copy there, once a tick until it acks it.
                let restart = (l.f_synced && l.f_match.max(l.f_recv) < self.start).then(|| {
                    l.f_next = l.f_next.max(self.start);
                    HaMsg::SyncReply {
                        epoch: self.epoch,
                        truncate_to: l.f_match,
                        target: self.end,
                        commit_end: self.commit_end,
                        start: self.start,
                    }
                });
                l.f_sent_at_tick = l.f_next;
                let hand = l.handover.is_some();
                if !hand && self.cfg.get().policy == Policy::Witness {
                    l.lease_request_at = now;
                    let msg = self.lease_request(solo == Some(true));
                    self.send(Party::Witness, msg);
                }
                if let Some(msg) = restart.filter(|_| !self.peer_suspected()) {
                    self.send_peer(msg);
                }
                self.send_appends();
            }
            State::Follower(f) => {
                if let Sync::Requested { at } = f.sync {
                    if now.saturating_sub(at) >= self.cfg.get().heartbeat_interval_ms {
                        f.sync = Sync::Idle;
                    }
                }
                // Every tick a synced follower repeats what it holds durably. An active that
                // lost the ack of a `SyncReply` (or answered a late duplicate `SyncRequest`)
                // waits for an ack before it sends anything; without this repeat the standby
                // reported `standby`, received nothing, and fell behind the commit point for
                // good (the active went solo past it: issue #25, seed 1065 F7AddressLost).
                if let Some(leader) = f.leader {
                    let synced = matches!(
                        f.sync,
                        Sync::Appending { .. } | Sync::CaughtUp | Sync::Persisting
                    );
                    if synced && leader == self.epoch && f.handing_over.is_none() {
                        let end = self.end;
                        self.send_peer(HaMsg::AppendAck { epoch: leader, end });
                    }
                }
                let State::Follower(f) = &mut self.state else {
                    return;
                };
                if let Some((epoch, end)) = f.handing_over {
                    if now < f.hold_until {
                        self.send_peer(HaMsg::Handover { epoch, end });
                    } else if let State::Follower(f) = &mut self.state {
                        f.handing_over = None;
                    }
                }
                self.follower_sync();
            }
            State::Stopped => {}
        }
    }

    // ----- leader -------------------------------------------------------------------------

    fn send_appends(&mut self) {
        let batch = self.c().append_batch_max;
        let window = self.c().append_window_max;
        let suspected = self.peer_suspected();
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if !l.f_synced || suspected {
            return;
        }
        // Entries below our first retained one are gone (a follower that lacks them restarts
        // its copy at it: see `tick`).
        l.f_next = l.f_next.max(self.start);
        let mut out = Vec::new();
        while l.f_next < self.end
            && out.len() < 8
            && l.f_next.0 - l.f_match.0.min(l.f_next.0) < window
        {
            let from = l.f_next;
            // One run per message: entries of one epoch.
            let idx = self.runs.partition_point(|r| r.start <= from);
            let entry_epoch = idx.checked_sub(1).map_or(Epoch(0), |i| self.runs[i].epoch);
            let run_end = self
                .runs
                .get(idx)
                .map_or(self.end, |r| r.start.min(self.end));
            let upto = Offset(run_end.0.min(from.0.saturating_add(batch)));
            out.push(HaMsg::Append {
                epoch: self.epoch,
                from,
                upto,
                entry_epoch,
                commit_end: self.commit_end,
            });
            l.f_next = upto;
        }
        for m in out {
            self.send_peer(m);
        }
    }

    fn leader_checks(&mut self) {
        let now = self.now;
        if let State::Leader(l) = &self.state {
            if self.fast_renewal_at(l).is_some_and(|t| now >= t) {
                let msg = self.lease_request(self.is_solo(l));
                if let State::Leader(l) = &mut self.state {
                    l.lease_request_at = now;
                }
                self.send(Party::Witness, msg);
            }
        }
        let healthy = self.healthy();
        let may_hand_over_for_health = self.health_handover_allowed();
        let policy = self.c().policy;
        let peer_ready = !self.peer_suspected()
            && self.peer_view.healthy
            && self.peer_view.role == Some(Role::Standby)
            && self.peer_view.epoch == self.epoch;
        let suspected = self.peer_suspected();
        // The active defers its fence by one lease so that, in a race, the standby (which can
        // take over) wins; a standby that really died is fenced a lease later.
        let fence_after = self.suspect_at().saturating_add(self.c().lease_ms);
        let handover_timeout = self.c().handover_timeout_ms;
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if let Some((reason, started)) = l.handover {
            if l.f_match >= self.end && l.f_synced && !suspected {
                self.finish_handover(reason);
                return;
            }
            if now.saturating_sub(started) >= handover_timeout {
                // The standby did not take the entries: abandon the handover.
                l.handover = None;
                if reason == HandoverReason::Shutdown {
                    self.shutting_down = true;
                    if self.cfg.get().policy == Policy::Witness {
                        let (epoch, node) = (self.epoch, self.me);
                        self.send(Party::Witness, HaMsg::LeaseRelease { epoch, node });
                    }
                    self.state = State::Stopped;
                    self.push(Action::ShutdownReady);
                    return;
                }
                self.maybe_resume_publishing();
            }
            return;
        }
        if !healthy && peer_ready && may_hand_over_for_health {
            self.begin_handover(HandoverReason::Unhealthy);
            return;
        }
        // Two-node policies: a leader that lost its peer must fence it or see the ping targets
        // before it may publish and commit alone.
        if policy != Policy::Witness {
            let lease = self.cfg.get().lease_ms;
            let hb = self.cfg.get().heartbeat_interval_ms;
            if !suspected {
                if l.solo_license_until == NEVER {
                    l.solo_license_until = Millis(0);
                }
            } else if l.solo_license_until == NEVER {
                self.extend_lease(now.saturating_add(lease));
            } else if l.solo_check.is_none()
                && l.solo_license_until.saturating_add(hb) < now.saturating_add(lease)
                && (policy != Policy::FenceCommand || now >= fence_after)
            {
                l.solo_check = Some(now);
                self.push(match policy {
                    Policy::FenceCommand => Action::RunFenceCommand,
                    _ => Action::Ping,
                });
            }
        }
    }

    fn lease_request(&self, solo: bool) -> HaMsg {
        let end = match &self.state {
            State::Leader(l) => self.lag_record(l, solo),
            _ => self.commit_end,
        };
        let record = LogPos {
            log_epoch: self.epoch,
            end,
        };
        HaMsg::LeaseRequest {
            epoch: self.epoch,
            node: self.me,
            sent_at: self.now,
            record,
        }
    }

    /// While the lease runs low (renewals lost), ask the witness four times per heartbeat.
    fn fast_renewal_at(&self, l: &Leader) -> Option<Millis> {
        let c = self.c();
        let low = l.lease_until.saturating_sub(self.now) < c.lease_ms / 2;
        (c.policy == Policy::Witness && l.handover.is_none() && low).then(|| {
            l.lease_request_at
                .saturating_add(c.heartbeat_interval_ms / 4)
        })
    }

    /// Starts publishing when the leader holds a lease that runs at least one heartbeat
    /// interval more: a lease renewed by a late ack (an echo almost `lease_ms` old, on a
    /// loaded pair) would lapse again within milliseconds, and each start and stop costs the
    /// binary a merger rebuild; it waits for a renewal that lasts (CI saw five such starts in
    /// 2.3 s, each stopped 4-180 ms later, the merger's rebuilds then 2 s behind).
    fn maybe_resume_publishing(&mut self) {
        let now = self.now;
        let epoch = self.epoch;
        let end = self.pending_end;
        let margin = self.c().heartbeat_interval_ms;
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if l.handover.is_none()
            && !l.publishing
            && l.lease_until > now.saturating_add(margin)
            && !self.shutting_down
        {
            l.publishing = true;
            let lease_until = l.lease_until;
            self.published_epoch = Some(epoch);
            self.push(Action::StartPublishing {
                epoch,
                from_offset: end,
                lease_until,
            });
            // `end` is `pending_end`: the merger continues after every entry we hold.
        }
    }

    fn extend_lease(&mut self, until: Millis) {
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if until > l.lease_until {
            l.lease_until = until;
            if l.publishing {
                self.push(Action::ExtendLease { lease_until: until });
            }
        }
        self.maybe_resume_publishing();
    }

    fn begin_handover(&mut self, reason: HandoverReason) {
        let peer_ready = !self.peer_suspected()
            && self.peer_view.healthy
            && self.peer_view.role == Some(Role::Standby)
            && self.peer_view.epoch == self.epoch;
        let now = self.now;
        let State::Leader(l) = &mut self.state else {
            if reason == HandoverReason::Switchover {
                self.stats.switchovers_refused_total += 1;
            }
            return;
        };
        if l.handover.is_some() {
            return;
        }
        if !peer_ready {
            if reason == HandoverReason::Switchover {
                self.stats.switchovers_refused_total += 1;
            }
            return;
        }
        l.handover = Some((reason, now));
        if l.publishing {
            l.publishing = false;
            let r = if reason == HandoverReason::Shutdown {
                StopReason::Shutdown
            } else {
                StopReason::Handover
            };
            self.push(Action::StopPublishing(r));
        }
        self.leader_checks();
    }

    fn finish_handover(&mut self, reason: HandoverReason) {
        let (epoch, end) = (self.epoch, self.end);
        self.stats.handovers_total += 1;
        self.stats.last_handover = Some(reason);
        match reason {
            HandoverReason::Unhealthy => self.stats.health_handovers_total += 1,
            HandoverReason::Switchover => self.stats.switchover_handovers_total += 1,
            HandoverReason::Shutdown => self.stats.shutdown_handovers_total += 1,
        }
        self.advance_commit(end);
        self.send_peer(HaMsg::Handover { epoch, end });
        if self.uses_witness() {
            self.send(
                Party::Witness,
                HaMsg::LeaseRelease {
                    epoch,
                    node: self.me,
                },
            );
        }
        let mut f = Follower::new(self.now);
        f.hold_until = self.now.saturating_add(self.c().handover_timeout_ms);
        f.handing_over = Some((epoch, end));
        // Our log is the leader's history: nothing to sync until the peer leads.
        self.state = State::Follower(f);
        // We released our lease; our own promise protected nothing else.
        self.promise_until = self.now;
        if reason == HandoverReason::Shutdown {
            self.shutting_down = true;
        }
    }

    fn on_shutdown(&mut self) {
        match &self.state {
            State::Leader(_) => {
                self.shutting_down = true;
                self.begin_handover(HandoverReason::Shutdown);
                if let State::Leader(l) = &mut self.state {
                    if l.handover.is_none() {
                        // No standby to hand over to: stop alone.
                        if l.publishing {
                            self.push(Action::StopPublishing(StopReason::Shutdown));
                        }
                        if self.uses_witness() {
                            let (epoch, node) = (self.epoch, self.me);
                            self.send(Party::Witness, HaMsg::LeaseRelease { epoch, node });
                        }
                        self.state = State::Stopped;
                        self.push(Action::ShutdownReady);
                    }
                }
            }
            State::Follower(_) => {
                let epoch = self.epoch;
                for link in 0..self.c().links {
                    let to = Party::Node(self.peer);
                    self.push(Action::Send {
                        to,
                        link: Some(link),
                        msg: HaMsg::Leaving { epoch },
                    });
                }
                self.state = State::Stopped;
                self.push(Action::ShutdownReady);
            }
            State::Stopped => {}
        }
    }

    fn maybe_finish_shutdown(&mut self) {
        let State::Follower(f) = &self.state else {
            return;
        };
        if self.peer_active_live() || self.now >= f.hold_until {
            self.state = State::Stopped;
            self.push(Action::ShutdownReady);
        }
    }

    // ----- follower: sync and campaign ----------------------------------------------------

    fn follower_sync(&mut self) {
        let now = self.now;
        let durable_epoch = self.durable.epoch;
        let State::Follower(f) = &mut self.state else {
            return;
        };
        let Some(leader) = f.leader else { return };
        if f.sync == Sync::Idle && durable_epoch == leader && leader == self.epoch {
            f.sync = Sync::Requested { at: now };
            f.resync_done = false;
            let msg = HaMsg::SyncRequest {
                epoch: leader,
                end: self.pending_end,
                runs: self.runs.clone(),
                start: self.start,
            };
            self.push(Action::StartResync);
            self.send_peer(msg);
        }
    }

    fn maybe_campaign(&mut self) {
        let now = self.now;
        let healthy = self.healthy();
        let suspected = self.peer_suspected();
        let active_live = self.peer_active_live();
        let my_log = self.log_pos();
        let my_role = self.role();
        let peer = self.peer_view.clone();
        let policy = self.c().policy;
        let hb = self.c().heartbeat_interval_ms;
        if self.shutting_down {
            return;
        }
        let State::Follower(f) = &mut self.state else {
            return;
        };
        if let Some(c) = f.campaign {
            if matches!(c.phase, Phase::Won { .. } | Phase::Fencing | Phase::Pinging) {
                return;
            }
            // Give up when a live active appears.
            if active_live {
                f.campaign = None;
                return;
            }
            if now >= c.retry_at {
                let epoch = c.epoch;
                f.campaign = Some(Campaign {
                    retry_at: now.saturating_add(hb),
                    ..c
                });
                self.request_votes(epoch);
            }
            return;
        }
        let forced = f.took_handover;
        if !forced {
            if now < f.hold_until || !healthy || now < self.promise_until || active_live {
                return;
            }
            if !suspected {
                // Both alive, neither active (cold start, after a handover): the better stream
                // campaigns; on a tie the lower node id.
                // A standby that held the stream goes before a restarted (syncing) peer.
                let rank = |r: Option<Role>| u8::from(r == Some(Role::Standby));
                let (mine, theirs) = (rank(Some(my_role)), rank(peer.role));
                let better = my_log > peer.log
                    || (my_log == peer.log
                        && (mine > theirs || (mine == theirs && self.me < self.peer)));
                if !better && peer.healthy {
                    return;
                }
            }
        }
        if policy != Policy::Witness && suspected && !forced {
            // Without a witness a node promotes alone only after fencing or seeing the ping
            // targets, and only if it was an in-sync standby (a restarted or stale node never
            // does). With the peer in sight, the peer's vote is the agreement of both.
            if f.sync != Sync::CaughtUp || f.leader.is_none() {
                return;
            }
        }
        let epoch = Epoch(self.epoch.max(self.epoch_seen).0 + 1);
        self.stats.campaigns_total += 1;
        let phase = match (policy, forced || !suspected) {
            (Policy::Witness, _) | (_, true) => Phase::Voting,
            (Policy::FenceCommand, false) => Phase::Fencing,
            (Policy::PingTargets, false) => Phase::Pinging,
        };
        f.campaign = Some(Campaign {
            epoch,
            phase,
            retry_at: now.saturating_add(hb),
        });
        match phase {
            Phase::Voting => self.request_votes(epoch),
            Phase::Fencing => self.push(Action::RunFenceCommand),
            Phase::Pinging => self.push(Action::Ping),
            Phase::Won { .. } => {}
        }
    }

    fn request_votes(&mut self, epoch: Epoch) {
        let msg = HaMsg::VoteRequest {
            epoch,
            candidate: self.me,
            log: self.log_pos(),
            sent_at: self.now,
        };
        if self.uses_witness() {
            self.send(Party::Witness, msg.clone());
        }
        self.send_peer(msg);
    }

    fn won(&mut self, epoch: Epoch, echo: Millis, licensed: bool) {
        let State::Follower(f) = &mut self.state else {
            return;
        };
        let Some(c) = &mut f.campaign else { return };
        if c.epoch != epoch || matches!(c.phase, Phase::Won { .. }) {
            return;
        }
        c.phase = Phase::Won { echo, licensed };
        self.stale_at = None;
        self.epoch = self.epoch.max(epoch);
        self.epoch_seen = self.epoch_seen.max(epoch);
        self.persist(epoch, epoch);
        self.maybe_promote();
    }

    fn maybe_promote(&mut self) {
        let State::Follower(f) = &self.state else {
            return;
        };
        let Some(Campaign {
            epoch,
            phase: Phase::Won { echo, licensed },
            ..
        }) = f.campaign
        else {
            return;
        };
        if self.durable.epoch < epoch || self.durable.log_epoch < epoch {
            return;
        }
        let now = self.now;
        let c = self.c();
        let lease_until = echo.saturating_add(c.lease_ms);
        // Fenced: the peer is off until heard again; targets seen: until the next check.
        let solo_license_until = match (licensed, c.policy) {
            (false, _) | (true, Policy::Witness) => Millis(0),
            (true, Policy::FenceCommand) => NEVER,
            (true, Policy::PingTargets) => now.saturating_add(c.lease_ms),
        };
        self.stats.promotions_total += 1;
        let l = Leader {
            since: now,
            lease_until,
            publishing: false,
            f_synced: false,
            f_match: Offset(0),
            f_next: Offset(0),
            f_progress_at: now,
            f_recv: Offset(0),
            f_recv_progress_at: now,
            f_sent_at_tick: Offset(0),
            witness_recorded: Offset(0),
            handover: None,
            solo_license_until,
            solo_check: None,
            lease_request_at: now,
        };
        self.state = State::Leader(l);
        self.maybe_resume_publishing();
    }

    fn on_fence_result(&mut self, ok: bool) {
        self.on_license(ok);
    }

    fn on_ping_result(&mut self, reachable: bool) {
        self.on_license(reachable);
    }

    /// Fence/ping result, for a campaign or for a leader that lost its peer.
    fn on_license(&mut self, ok: bool) {
        let now = self.now;
        let lease = self.c().lease_ms;
        match &mut self.state {
            State::Follower(f) => {
                let Some(c) = f.campaign else { return };
                if !matches!(c.phase, Phase::Fencing | Phase::Pinging) {
                    return;
                }
                if ok {
                    self.won(c.epoch, now, true);
                } else {
                    f.campaign = None;
                }
            }
            State::Leader(l) => {
                l.solo_check = None;
                if ok {
                    l.solo_license_until = if self.cfg.get().policy == Policy::FenceCommand {
                        // The peer is off: until it is heard again.
                        NEVER
                    } else {
                        now.saturating_add(lease)
                    };
                    let until = now.saturating_add(lease);
                    self.extend_lease(until);
                    let end = self.end;
                    self.advance_commit(end);
                }
            }
            State::Stopped => {}
        }
    }

    // ----- inputs -------------------------------------------------------------------------

    fn on_persisted(&mut self, st: EpochState) {
        self.durable = EpochState {
            epoch: self.durable.epoch.max(st.epoch),
            log_epoch: self.durable.log_epoch.max(st.log_epoch),
        };
        // Votes promised in durable epochs may go out now.
        let durable = self.durable.epoch;
        let ready: Vec<_> = self
            .pending_votes
            .iter()
            .copied()
            .filter(|(_, e, _)| *e <= durable)
            .collect();
        self.pending_votes.retain(|(_, e, _)| *e > durable);
        for (to, epoch, echo) in ready {
            let msg = HaMsg::VoteReply {
                epoch,
                granted: true,
                voter_epoch: epoch,
                wait_ms: 0,
                echo,
            };
            self.send(to, msg);
        }
        if let State::Follower(f) = &mut self.state {
            if f.sync == Sync::Persisting && f.leader.is_some_and(|e| self.durable.log_epoch >= e) {
                f.sync = Sync::CaughtUp;
            }
        }
        self.follower_sync();
        self.maybe_promote();
    }

    fn on_appended(&mut self, upto: Offset) {
        let now = self.now;
        let licensed_policy = self.c().policy != Policy::Witness && self.peer_suspected();
        match &mut self.state {
            State::Leader(l) => {
                if upto > self.end {
                    let start = self.end;
                    if upto > self.pending_end {
                        // Local appends while publishing are stamped with our epoch (entries
                        // below `pending_end` were accepted before we were promoted).
                        let from = self.pending_end;
                        if self.runs.last().is_none_or(|r| r.epoch != self.epoch) {
                            self.runs.push(Run {
                                epoch: self.epoch,
                                start: from,
                            });
                        }
                        self.pending_end = upto;
                    }
                    self.end = upto;
                    if l.f_match >= start {
                        l.f_progress_at = now;
                    }
                    if l.f_recv >= start {
                        l.f_recv_progress_at = now;
                    }
                    if licensed_policy && l.solo_license_until > now {
                        self.advance_commit(upto);
                    }
                    self.send_appends();
                }
            }
            State::Follower(f) => {
                if upto > self.pending_end {
                    // Local appends still in flight when we stopped publishing landed now:
                    // they are entries of the epoch we published in, and make any sync stale.
                    let start = self.pending_end;
                    if let Some(e) = self.published_epoch {
                        if self.runs.last().is_none_or(|r| r.epoch != e) {
                            self.runs.push(Run { epoch: e, start });
                        }
                    }
                    self.pending_end = upto;
                    if f.sync != Sync::Idle {
                        f.sync = Sync::Idle;
                    }
                }
                if upto <= self.end {
                    return;
                }
                self.end = upto;
                if let Some(epoch) = f.leader {
                    if matches!(
                        f.sync,
                        Sync::Appending { .. } | Sync::CaughtUp | Sync::Persisting
                    ) {
                        if let Sync::Appending { target } = f.sync {
                            if upto >= target {
                                f.sync = Sync::Persisting;
                                self.persist(epoch, epoch);
                                if self.durable.log_epoch >= epoch {
                                    if let State::Follower(f) = &mut self.state {
                                        f.sync = Sync::CaughtUp;
                                    }
                                }
                            }
                        }
                        self.send_peer(HaMsg::AppendAck { epoch, end: upto });
                    }
                }
            }
            State::Stopped => {}
        }
    }

    fn on_witness(&mut self, msg: HaMsg) {
        self.witness_heard = Some(self.now);
        match msg {
            HaMsg::VoteReply {
                epoch,
                granted,
                voter_epoch,
                wait_ms,
                echo,
            } => {
                let campaigning = matches!(&self.state,
                    State::Follower(f) if f.campaign.is_some_and(|c| c.epoch == epoch));
                if !granted && voter_epoch == Epoch(0) && wait_ms == 0 && campaigning {
                    // The witness refuses a stale candidate this way (it recorded committed
                    // entries beyond our stream): retrying at once cannot help. Retry once
                    // a heartbeat (the active or our stream may come back) and say so.
                    self.stats.stale_refusals_total += 1;
                    self.stale_at = Some(self.now);
                    let retry = self.now.saturating_add(self.c().heartbeat_interval_ms);
                    if let State::Follower(f) = &mut self.state {
                        if let Some(c) = &mut f.campaign {
                            c.retry_at = c.retry_at.max(retry);
                        }
                    }
                    return;
                }
                self.on_vote_reply(epoch, granted, voter_epoch, wait_ms, echo);
            }
            HaMsg::LeaseReply {
                epoch,
                granted,
                voted,
                recorded,
                echo,
            } => {
                self.epoch_seen = self.epoch_seen.max(voted);
                let lease = self.c().lease_ms;
                if !granted && voted > self.epoch && matches!(&self.state, State::Leader(_)) {
                    // The witness voted for a higher epoch: our lease cannot be renewed there
                    // and another node may lead. Step down and adopt the epoch (a woken active
                    // that hears nothing from its peer otherwise stayed in epoch 1 for good).
                    self.become_follower(None);
                    self.epoch = voted;
                    self.persist(voted, Epoch(0));
                    return;
                }
                let State::Leader(l) = &mut self.state else {
                    return;
                };
                if epoch != self.epoch || !granted || echo < l.since || l.handover.is_some() {
                    return;
                }
                if recorded.log_epoch == self.epoch {
                    l.witness_recorded = l.witness_recorded.max(recorded.end);
                    let w = l.witness_recorded;
                    self.advance_commit(w);
                }
                self.extend_lease(echo.saturating_add(lease));
            }
            _ => self.stats.stale_messages_total += 1,
        }
    }

    fn on_vote_reply(
        &mut self,
        epoch: Epoch,
        granted: bool,
        voter_epoch: Epoch,
        wait_ms: u64,
        echo: Millis,
    ) {
        let now = self.now;
        let hb = self.c().heartbeat_interval_ms;
        let State::Follower(f) = &mut self.state else {
            return;
        };
        let Some(c) = &mut f.campaign else { return };
        if c.epoch != epoch || c.phase != Phase::Voting {
            return;
        }
        if granted {
            self.won(epoch, echo, false);
        } else if voter_epoch >= c.epoch {
            // Someone promised a higher epoch: start over above it at the next retry.
            self.epoch_seen = self.epoch_seen.max(voter_epoch);
            f.campaign = None;
        } else {
            // The voter still protects a lease: ask again right when it expires.
            c.retry_at = now.saturating_add(wait_ms.clamp(1, hb));
        }
    }

    fn on_peer(&mut self, link: LinkId, msg: HaMsg) {
        let now = self.now;
        if let HaMsg::Heartbeat { epoch, .. } = &msg {
            // A heartbeat of a lower epoch than the peer already told us is older than our
            // last sight of it (queued while we were stopped, or on the other link): not
            // current, not a sign of life. (Epoch 0: the peer's data was wiped.)
            if *epoch < self.peer_view.epoch && *epoch != Epoch(0) {
                self.stats.stale_messages_total += 1;
                return;
            }
        }
        if let Some(slot) = self.peer_view.link_heard.get_mut(usize::from(link)) {
            *slot = Some(now);
        }
        self.peer_view.last_heard = Some(now);
        self.peer_view.left = false;
        if !matches!(msg, HaMsg::VoteReply { .. }) {
            // (A reply carries our own campaign's epoch: not a sign of a higher one.)
            self.epoch_seen = self.epoch_seen.max(msg.epoch());
        }
        match msg {
            HaMsg::Heartbeat {
                epoch,
                role,
                log,
                commit_end,
                health,
                healthy,
                sent_at,
            } => {
                self.peer_view.role = Some(role);
                self.peer_view.epoch = epoch;
                self.peer_view.log = log;
                self.peer_view.healthy = healthy;
                self.peer_view.health = health;
                self.peer_view.health_at = Some(now);
                let (my_epoch, my_end) = (self.epoch, self.end);
                if let State::Leader(l) = &mut self.state {
                    // A standby in step with our epoch holds a prefix of our stream up to what
                    // it received (its `LogPos` end counts entries queued for its disk).
                    if epoch == my_epoch && role == Role::Standby && log.log_epoch == my_epoch {
                        let recv = log.end.min(my_end);
                        if recv > l.f_recv || recv >= my_end {
                            l.f_recv_progress_at = now;
                        }
                        l.f_recv = l.f_recv.max(recv);
                    }
                }
                self.on_heartbeat(link, epoch, role, commit_end, sent_at);
            }
            HaMsg::HeartbeatAck { epoch, echo } => {
                let lease = self.c().lease_ms;
                if let State::Leader(l) = &self.state {
                    if epoch == self.epoch && echo >= l.since && l.handover.is_none() {
                        self.extend_lease(echo.saturating_add(lease));
                    }
                }
            }
            HaMsg::SyncRequest {
                epoch,
                end,
                runs,
                start,
            } => self.on_sync_request(epoch, end, &runs, start),
            HaMsg::SyncReply {
                epoch,
                truncate_to,
                target,
                commit_end,
                start,
            } => self.on_sync_reply(epoch, truncate_to, target, commit_end, start),
            HaMsg::Append {
                epoch,
                from,
                upto,
                entry_epoch,
                commit_end,
            } => self.on_append(epoch, from, upto, entry_epoch, commit_end),
            HaMsg::AppendAck { epoch, end } => {
                let State::Leader(l) = &mut self.state else {
                    return;
                };
                if epoch != self.epoch {
                    self.stats.stale_messages_total += 1;
                    return;
                }
                l.f_synced = true;
                let end = end.min(self.end);
                if end > l.f_match {
                    l.f_match = end;
                    l.f_progress_at = now;
                    l.f_recv_progress_at = now;
                }
                if l.f_match >= self.end {
                    l.f_progress_at = now;
                    l.f_recv_progress_at = now;
                }
                l.f_recv = l.f_recv.max(l.f_match);
                l.f_next = l.f_next.max(l.f_match);
                let m = l.f_match;
                self.advance_commit(m);
                self.send_appends();
                self.leader_checks();
            }
            HaMsg::Handover { epoch, end } => {
                let State::Follower(f) = &mut self.state else {
                    return;
                };
                if epoch == self.epoch
                    && f.leader == Some(epoch)
                    && self.pending_end >= end
                    && f.campaign.is_none()
                {
                    f.took_handover = true;
                    if !self.peer_view.healthy {
                        // It handed over for its health: no handing back for a while.
                        self.start_dwell(now);
                    }
                    // The active stopped publishing and released its lease.
                    self.peer_view.role = Some(Role::Standby);
                    self.promise_until = now;
                    self.maybe_campaign();
                }
            }
            HaMsg::Leaving { .. } => {
                self.peer_view.left = true;
                self.peer_view.role = Some(Role::Stopped);
            }
            HaMsg::VoteRequest {
                epoch,
                candidate,
                log,
                sent_at,
            } => self.on_vote_request(Party::Node(candidate), epoch, log, sent_at),
            HaMsg::VoteReply {
                epoch,
                granted,
                voter_epoch,
                wait_ms,
                echo,
            } => self.on_vote_reply(epoch, granted, voter_epoch, wait_ms, echo),
            HaMsg::LeaseRequest { .. } | HaMsg::LeaseReply { .. } | HaMsg::LeaseRelease { .. } => {
                self.stats.stale_messages_total += 1;
            }
        }
    }

    fn on_heartbeat(
        &mut self,
        link: LinkId,
        epoch: Epoch,
        role: Role,
        commit: Offset,
        sent_at: Millis,
    ) {
        let now = self.now;
        if !role.is_active() {
            return;
        }
        if epoch < self.epoch {
            self.stats.stale_messages_total += 1;
            return;
        }
        self.stale_at = None;
        let promise = self.c().lease_ms + self.c().lease_margin_ms;
        if epoch > self.epoch || matches!(&self.state, State::Leader(_)) {
            if matches!(&self.state, State::Leader(_)) && epoch == self.epoch {
                // Two actives in one epoch cannot happen; drop and count.
                self.stats.stale_messages_total += 1;
                return;
            }
            // A higher epoch is established: stop publishing first, then follow it.
            self.become_follower(Some(epoch));
            self.epoch = epoch;
            self.persist(epoch, Epoch(0));
        }
        let State::Follower(f) = &mut self.state else {
            return;
        };
        if f.leader != Some(epoch) {
            f.leader = Some(epoch);
            f.sync = Sync::Idle;
            f.campaign = None;
            f.took_handover = false;
        }
        if let Some(c) = f.campaign {
            if !matches!(c.phase, Phase::Won { .. }) {
                f.campaign = None;
            } else {
                // We won a higher epoch that is being persisted: do not renew the old lease.
                return;
            }
        }
        if f.handing_over.is_some() {
            f.handing_over = None;
        }
        if matches!(
            f.sync,
            Sync::Appending { .. } | Sync::CaughtUp | Sync::Persisting
        ) {
            let c = commit.min(self.end);
            self.advance_commit(c);
        }
        if self.durable.epoch >= epoch && !self.shutting_down {
            self.promise_until = self.promise_until.max(now.saturating_add(promise));
            let to = Party::Node(self.peer);
            self.push(Action::Send {
                to,
                link: Some(link),
                msg: HaMsg::HeartbeatAck {
                    epoch,
                    echo: sent_at,
                },
            });
        }
        self.follower_sync();
    }

    fn on_vote_request(&mut self, from: Party, epoch: Epoch, log: LogPos, sent_at: Millis) {
        let now = self.now;
        let my_log = self.log_pos();
        let promise = self.c().lease_ms + self.c().lease_margin_ms;
        let campaigning = match &self.state {
            State::Follower(f) => f.campaign.map(|c| c.epoch),
            _ => None,
        };
        let leader_valid =
            matches!(&self.state, State::Leader(l) if l.publishing || l.lease_until > now);
        let mut refuse_wait = 0;
        if self.voted_for == Some((epoch, from)) && self.epoch == epoch {
            // A retry of a request we granted (our reply may be lost): grant again, once the
            // vote is durable.
            if self.durable.epoch >= epoch {
                let msg = HaMsg::VoteReply {
                    epoch,
                    granted: true,
                    voter_epoch: epoch,
                    wait_ms: 0,
                    echo: sent_at,
                };
                self.send(from, msg);
            } else {
                self.queue_vote(from, epoch, sent_at);
            }
            return;
        }
        let ok_epoch = epoch > self.epoch && campaigning.is_none_or(|c| epoch > c);
        // After handing over, our appends that landed late (after we stopped publishing) are
        // uncommitted and will be truncated: the handover end is what counts.
        let handed = match &self.state {
            State::Follower(f) => f.handing_over.map(|(_, end)| LogPos {
                log_epoch: my_log.log_epoch,
                end,
            }),
            _ => None,
        };
        let ok_log = log >= my_log || handed.is_some_and(|h| log >= h);
        let ok_promise = now >= self.promise_until;
        if !ok_promise {
            refuse_wait = self.promise_until.saturating_sub(now);
        }
        if !(ok_epoch && ok_log && ok_promise && !leader_valid) {
            if refuse_wait == 0 {
                refuse_wait = self.c().heartbeat_interval_ms;
            }
            self.stats.votes_refused_total += 1;
            let msg = HaMsg::VoteReply {
                epoch,
                granted: false,
                voter_epoch: self.epoch.max(campaigning.unwrap_or_default()),
                wait_ms: refuse_wait,
                echo: sent_at,
            };
            self.send(from, msg);
            return;
        }
        self.stats.votes_granted_total += 1;
        if matches!(&self.state, State::Leader(_)) {
            self.become_follower(None);
        }
        if let State::Follower(f) = &mut self.state {
            f.campaign = None;
            f.leader = None;
            f.sync = Sync::Idle;
        }
        self.epoch = epoch;
        self.promise_until = now.saturating_add(promise);
        self.voted_for = Some((epoch, from));
        self.persist(epoch, Epoch(0));
        if self.durable.epoch >= epoch {
            let msg = HaMsg::VoteReply {
                epoch,
                granted: true,
                voter_epoch: epoch,
                wait_ms: 0,
                echo: sent_at,
            };
            self.send(from, msg);
        } else {
            self.queue_vote(from, epoch, sent_at);
        }
    }

    fn on_sync_request(&mut self, epoch: Epoch, end: Offset, runs: &[Run], start: Offset) {
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if epoch != self.epoch {
            self.stats.stale_messages_total += 1;
            return;
        }
        // The follower holds nothing below its start (its retention, or a restart of its copy,
        // deleted committed entries there): nothing to truncate, so the streams are compared
        // from there on. Not from our own start: a follower's uncommitted suffix may begin
        // below it (our runs still say which epoch wrote there).
        let d = common_prefix_from(&self.runs, self.end, runs, end, start);
        l.f_synced = false;
        l.f_match = l.f_match.min(d);
        l.f_recv = l.f_recv.min(d);
        // A follower that needs entries below our first retained one restarts its copy there.
        l.f_next = d.max(self.start);
        let msg = HaMsg::SyncReply {
            epoch,
            truncate_to: d,
            target: self.end,
            commit_end: self.commit_end,
            start: self.start,
        };
        self.send_peer(msg);
    }

    fn on_sync_reply(
        &mut self,
        epoch: Epoch,
        truncate_to: Offset,
        target: Offset,
        commit: Offset,
        start: Offset,
    ) {
        let State::Follower(f) = &mut self.state else {
            return;
        };
        let synced = matches!(
            f.sync,
            Sync::Appending { .. } | Sync::CaughtUp | Sync::Persisting
        );
        if epoch != self.epoch || f.leader != Some(epoch) {
            self.stats.stale_messages_total += 1;
            return;
        }
        if synced && start > self.pending_end {
            // We follow this active (our stream is a prefix of its), but fell behind its first
            // retained entry: every entry we hold is below it, committed. Restart there.
            f.sync = Sync::Appending {
                target: target.max(start),
            };
            self.restart_stream(start);
            let c = commit.min(self.end);
            self.advance_commit(c);
            self.send_peer(HaMsg::AppendAck { epoch, end: start });
            self.on_appended_check_target();
            return;
        }
        if !matches!(f.sync, Sync::Requested { .. }) {
            self.stats.stale_messages_total += 1;
            return;
        }
        if truncate_to < self.commit_end {
            // Would remove committed entries: a bug somewhere; refuse and count.
            self.stats.truncations_refused_total += 1;
            f.sync = Sync::Idle;
            return;
        }
        f.sync = Sync::Appending { target };
        if start > truncate_to.min(self.pending_end) {
            // The active's retention deleted (committed) entries this node lacks: nobody can
            // send them any more. Restart the copy at the active's first retained offset.
            self.restart_stream(start);
        } else if truncate_to < self.pending_end {
            self.push(Action::TruncateStream { from: truncate_to });
            self.pending_end = truncate_to;
            self.end = self.end.min(truncate_to);
            self.truncate_runs(truncate_to);
        }
        let c = commit.min(self.end);
        self.advance_commit(c);
        let end = self.end;
        self.send_peer(HaMsg::AppendAck { epoch, end });
        // Already holding the target: catch-up is done.
        self.on_appended_check_target();
    }

    /// Empties the local stream and continues it at `start` (see `Action::ResetStream`).
    fn restart_stream(&mut self, start: Offset) {
        self.push(Action::ResetStream { start });
        self.start = start;
        self.pending_end = start;
        self.end = start;
        self.runs.clear();
    }

    fn on_appended_check_target(&mut self) {
        let end = self.end;
        let State::Follower(f) = &mut self.state else {
            return;
        };
        let (Some(epoch), Sync::Appending { target }) = (f.leader, f.sync) else {
            return;
        };
        if end >= target {
            f.sync = Sync::Persisting;
            self.persist(epoch, epoch);
            if self.durable.log_epoch >= epoch {
                if let State::Follower(f) = &mut self.state {
                    f.sync = Sync::CaughtUp;
                }
            }
        }
    }

    fn on_append(
        &mut self,
        epoch: Epoch,
        from: Offset,
        upto: Offset,
        entry_epoch: Epoch,
        commit: Offset,
    ) {
        if epoch < self.epoch {
            self.stats.stale_messages_total += 1;
            return;
        }
        let State::Follower(f) = &mut self.state else {
            return;
        };
        if epoch > self.epoch || f.leader != Some(epoch) {
            // Heartbeats will make us follow this epoch first.
            return;
        }
        if !matches!(
            f.sync,
            Sync::Appending { .. } | Sync::CaughtUp | Sync::Persisting
        ) {
            return;
        }
        if from <= self.pending_end && self.pending_end < upto {
            let start = self.pending_end;
            self.push(Action::AcceptEntries {
                from: start,
                upto,
                entry_epoch,
            });
            self.push_run(entry_epoch, start);
            self.pending_end = upto;
        } else if upto <= self.pending_end {
            // A retransmission: our ack may have been lost.
            let end = self.end;
            self.send_peer(HaMsg::AppendAck { epoch, end });
        } else if from > self.pending_end {
            let end = self.end;
            self.send_peer(HaMsg::AppendAck { epoch, end });
        }
        let c = commit.min(self.end);
        self.advance_commit(c);
    }
}

impl Follower {
    fn new(now: Millis) -> Follower {
        Follower {
            leader: None,
            sync: Sync::Idle,
            resync_done: false,
            campaign: None,
            hold_until: now,
            handing_over: None,
            took_handover: false,
        }
    }
}

/// Length of the longest common prefix of two streams given as runs and ends: entries with
/// the same offset and the same epoch are the same entry (one active per epoch writes each
/// offset once).
pub fn common_prefix(a: &[Run], a_end: Offset, b: &[Run], b_end: Offset) -> Offset {
    common_prefix_from(a, a_end, b, b_end, Offset(0))
}

/// [`common_prefix`] of two streams compared from `from` on (`b` holds nothing below it:
/// retention, or a restart of its copy, deleted committed entries there), so at least `from`
/// when both reach it. `a`'s runs must still say which epoch wrote each offset from `from` on.
pub fn common_prefix_from(
    a: &[Run],
    a_end: Offset,
    b: &[Run],
    b_end: Offset,
    from: Offset,
) -> Offset {
    let limit = a_end.min(b_end);
    if from >= limit {
        return limit;
    }
    let epoch_at = |runs: &[Run], o: Offset| {
        let i = runs.partition_point(|r| r.start <= o);
        i.checked_sub(1).map(|i| runs[i].epoch)
    };
    let mut bounds: Vec<Offset> = a
        .iter()
        .chain(b.iter())
        .map(|r| r.start)
        .filter(|s| *s >= from && *s < limit)
        .collect();
    bounds.push(from);
    bounds.sort_unstable();
    bounds.dedup();
    for s in bounds {
        if epoch_at(a, s) != epoch_at(b, s) {
            return s;
        }
    }
    limit
}
