//! Values that cross the wire or the disk between the HA cores: the messages (`HaMsg`) that the
//! binary carries on the cluster link (node ↔ node) and the witness link (node ↔ witness), and
//! the small records they carry (`LogPos`, `Health`, `EpochState`, `Run`).
//!
//! Contract: every message carries the sender's epoch; receivers reject anything from a lower
//! epoch (SPEC "Epochs"). The byte encoding is in [`crate::wire`].

use twinrx_types::{Epoch, Millis, NodeId, Offset};

/// Role of a node, as shown by `twinrx status` and carried in heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Publishes the merged stream; the standby holds every committed entry.
    Active,
    /// Publishes without a reachable, in-sync standby; commits under the witness's record
    /// (or after fencing / reachability, for the two-node policies).
    Solo,
    /// Holds every committed entry; takes over when the active fails.
    Standby,
    /// Catching up (stream sync and journal resync) before it becomes standby.
    Syncing,
    /// Not taking part (shut down).
    Stopped,
}

impl Role {
    pub fn is_active(self) -> bool {
        matches!(self, Role::Active | Role::Solo)
    }
}

/// Position of a node's merged stream, compared to decide who may be promoted.
///
/// `log_epoch` is the epoch of the active whose history this stream is a prefix of (set only
/// once the node has caught up with that active, as in Zab's `currentEpoch`); `end` is the
/// first offset the node does not hold. Ordered lexicographically: a node whose `LogPos` is at
/// least the highest committed `LogPos` holds every committed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPos {
    pub log_epoch: Epoch,
    pub end: Offset,
}

/// What a node persists (fsync) before acting on it: the highest epoch it has promised (voted
/// for or adopted) and its stream's `log_epoch`. Both only grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EpochState {
    pub epoch: Epoch,
    pub log_epoch: Epoch,
}

impl EpochState {
    /// True when `self` is at least `other` in both fields (durability of `other` is implied).
    pub fn covers(&self, other: &EpochState) -> bool {
        self.epoch >= other.epoch && self.log_epoch >= other.log_epoch
    }
}

/// A run of merged-stream entries written in one epoch: entries from `start` up to the next
/// run's start (or the stream's end) carry `epoch`. The list of runs of a stream (Kafka's
/// leader-epoch cache) is what two nodes compare to find where their streams diverge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Run {
    pub epoch: Epoch,
    pub start: Offset,
}

/// Pipeline health measured by the binary and carried in every heartbeat (SPEC "Failure
/// detection"): a node whose heartbeat lives but whose pipeline hangs is treated as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Health {
    /// Every configured receiver is bound and has not failed.
    pub receivers_ok: bool,
    /// Age of the oldest journal write or fsync still in flight (0 when none).
    pub fsync_latency_ms: u32,
    /// Free bytes on the data directory's file system.
    pub disk_free_bytes: u64,
    /// How long the merger has had input but made no progress (0 when progressing or idle).
    pub merger_stall_ms: u32,
    /// How long a sink has had entries to deliver but made no progress.
    pub sink_stall_ms: u32,
    /// The process's own scheduling lag (timer fired late by this much).
    pub sched_lag_ms: u32,
}

impl Health {
    /// Each measure as good as its best in `recent` (the last three reports, 300 ms in the
    /// binary). A single late timer, a momentary fsync or a moment without merger progress is
    /// noise, and both nodes share the load that causes it; a measure outside its limit in
    /// three reports in a row is a node that is stuck. Real faults keep their speed: F7, F8
    /// and F11 hold their bad measure for good and cost two reports more.
    pub fn steady(recent: &[Health]) -> Health {
        let min = |f: fn(&Health) -> u32| recent.iter().map(f).min().unwrap_or(0);
        Health {
            receivers_ok: recent.is_empty() || recent.iter().any(|h| h.receivers_ok),
            fsync_latency_ms: min(|h| h.fsync_latency_ms),
            disk_free_bytes: recent
                .iter()
                .map(|h| h.disk_free_bytes)
                .max()
                .unwrap_or(u64::MAX),
            merger_stall_ms: min(|h| h.merger_stall_ms),
            sink_stall_ms: min(|h| h.sink_stall_ms),
            sched_lag_ms: min(|h| h.sched_lag_ms),
        }
    }
}

impl Health {
    /// Each measure at its worst in `recent`: what a node tells its peer, which hands over to
    /// it only if it is clearly better even so (a load that hits both nodes in bursts must
    /// not make an idle moment of the standby look like a better node).
    pub fn worst(recent: &[Health]) -> Health {
        let max = |f: fn(&Health) -> u32| recent.iter().map(f).max().unwrap_or(0);
        Health {
            receivers_ok: recent.iter().all(|h| h.receivers_ok),
            fsync_latency_ms: max(|h| h.fsync_latency_ms),
            disk_free_bytes: recent
                .iter()
                .map(|h| h.disk_free_bytes)
                .min()
                .unwrap_or(u64::MAX),
            merger_stall_ms: max(|h| h.merger_stall_ms),
            sink_stall_ms: max(|h| h.sink_stall_ms),
            sched_lag_ms: max(|h| h.sched_lag_ms),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            receivers_ok: true,
            fsync_latency_ms: 0,
            disk_free_bytes: u64::MAX,
            merger_stall_ms: 0,
            sink_stall_ms: 0,
            sched_lag_ms: 0,
        }
    }
}

/// Messages between the two nodes and between a node and the witness.
///
/// The binary carries them on the authenticated cluster link; `Append` is followed on the wire
/// by the payload of entries `[from, upto)`, which the core never sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaMsg {
    /// Node → node, every `heartbeat_interval_ms` on every link.
    Heartbeat {
        epoch: Epoch,
        role: Role,
        log: LogPos,
        commit_end: Offset,
        /// The sender's health, each measure at its worst over its last three reports
        /// ([`Health::worst`]).
        health: Health,
        /// Whether the sender is within its limits ([`Health::steady`]).
        healthy: bool,
        /// Sender's clock; echoed in the ack so the active can date its lease.
        sent_at: Millis,
    },
    /// Standby → active: "I follow you in `epoch`; I will not vote before my promise expires".
    HeartbeatAck { epoch: Epoch, echo: Millis },
    /// Follower → active: my stream's runs and end, to find where it diverges from yours;
    /// `start` is the first offset it holds (retention, or a restart of its copy, deleted the
    /// committed entries below: there is nothing to compare or truncate there).
    SyncRequest {
        epoch: Epoch,
        end: Offset,
        runs: Vec<Run>,
        start: Offset,
    },
    /// Active → follower: truncate to `truncate_to` (never below the commit point), then
    /// append until you hold `target`. `start` is the active's first retained offset (stream
    /// retention deleted the committed entries below it): a follower that would then hold
    /// less than `start` cannot get the entries in between from anyone, so it empties its
    /// stream and continues at `start` (issue #14: a standby away longer than the retention).
    SyncReply {
        epoch: Epoch,
        truncate_to: Offset,
        target: Offset,
        commit_end: Offset,
        start: Offset,
    },
    /// Active → follower: entries `[from, upto)` all written in `entry_epoch`.
    Append {
        epoch: Epoch,
        from: Offset,
        upto: Offset,
        entry_epoch: Epoch,
        commit_end: Offset,
    },
    /// Follower → active: my stream is durable up to `end` (exclusive) in `epoch`.
    AppendAck { epoch: Epoch, end: Offset },
    /// Active → standby: I stopped publishing at `end`, all acked; take over now.
    Handover { epoch: Epoch, end: Offset },
    /// Standby → active: I am shutting down; go solo now.
    Leaving { epoch: Epoch },
    /// Candidate → node or witness.
    VoteRequest {
        epoch: Epoch,
        candidate: NodeId,
        log: LogPos,
        sent_at: Millis,
    },
    /// Voter → candidate. On refusal, `voter_epoch` is the voter's epoch and `wait_ms` how long
    /// its promise to the current lease holder still runs.
    VoteReply {
        epoch: Epoch,
        granted: bool,
        voter_epoch: Epoch,
        wait_ms: u64,
        echo: Millis,
    },
    /// Active → witness, every heartbeat: renew my lease, record `record` as committed.
    LeaseRequest {
        epoch: Epoch,
        node: NodeId,
        sent_at: Millis,
        record: LogPos,
    },
    /// Witness → active. `recorded` is the highest committed position the witness has persisted.
    LeaseReply {
        epoch: Epoch,
        granted: bool,
        voted: Epoch,
        recorded: LogPos,
        echo: Millis,
    },
    /// Active → witness: I stopped publishing in `epoch` (handover); release your promise.
    LeaseRelease { epoch: Epoch, node: NodeId },
}

impl HaMsg {
    /// The epoch the sender stamped on the message.
    pub fn epoch(&self) -> Epoch {
        match self {
            HaMsg::Heartbeat { epoch, .. }
            | HaMsg::HeartbeatAck { epoch, .. }
            | HaMsg::SyncRequest { epoch, .. }
            | HaMsg::SyncReply { epoch, .. }
            | HaMsg::Append { epoch, .. }
            | HaMsg::AppendAck { epoch, .. }
            | HaMsg::Handover { epoch, .. }
            | HaMsg::Leaving { epoch }
            | HaMsg::VoteRequest { epoch, .. }
            | HaMsg::VoteReply { epoch, .. }
            | HaMsg::LeaseRequest { epoch, .. }
            | HaMsg::LeaseReply { epoch, .. }
            | HaMsg::LeaseRelease { epoch, .. } => *epoch,
        }
    }
}
