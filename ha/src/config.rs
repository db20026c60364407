//! HA configuration: what the operator sets under `[ha]`, its defaults, and `validate()`, which
//! reports every problem at once (STYLE §4) and yields the `ValidConfig` the cores require.

use crate::msg::Health;
use twinrx_types::NodeId;

/// How promotion is made safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Majority of {A, B, witness} (the default, and the only policy that is safe under every
    /// partition). See README "Policies".
    Witness,
    /// No witness: a node runs the configured fence command against its peer and promotes (or
    /// goes solo) only after it succeeded.
    FenceCommand,
    /// No witness: a node promotes (or stays active alone) while a majority of configured ping
    /// targets answers. Cannot prevent split brain under a symmetric partition.
    PingTargets,
}

/// Health thresholds: a node outside any of them is unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthLimits {
    pub fsync_latency_ms_max: u32,
    pub disk_free_bytes_min: u64,
    pub merger_stall_ms_max: u32,
    /// `None`: sink stalls do not count (a sink outage, F14, hits both nodes alike, so handing
    /// over would not help).
    pub sink_stall_ms_max: Option<u32>,
    pub sched_lag_ms_max: u32,
    /// A node whose last health report is older than this is unhealthy (its reporter hangs).
    pub report_stale_ms: u64,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            fsync_latency_ms_max: 1000,
            disk_free_bytes_min: 64 << 20,
            merger_stall_ms_max: 1000,
            sink_stall_ms_max: None,
            sched_lag_ms_max: 1000,
            report_stale_ms: 1000,
        }
    }
}

impl HealthLimits {
    /// Whether `peer` is clearly better than `mine` on every measure on which `mine` is outside
    /// its limit: within half the limit (twice the disk minimum). Both nodes get the same
    /// traffic, so slowness from load is shared; handing over to a standby that is merely
    /// less slow moves the work to an equally loaded node and costs a pause each time.
    pub fn clearly_better(&self, peer: &Health, mine: &Health) -> bool {
        let half = |limit: u32, p: u32, m: u32| m <= limit || p <= limit / 2;
        (mine.receivers_ok || peer.receivers_ok)
            && half(
                self.fsync_latency_ms_max,
                peer.fsync_latency_ms,
                mine.fsync_latency_ms,
            )
            && (mine.disk_free_bytes >= self.disk_free_bytes_min
                || peer.disk_free_bytes >= self.disk_free_bytes_min.saturating_mul(2))
            && half(
                self.merger_stall_ms_max,
                peer.merger_stall_ms,
                mine.merger_stall_ms,
            )
            && self
                .sink_stall_ms_max
                .is_none_or(|l| half(l, peer.sink_stall_ms, mine.sink_stall_ms))
            && half(self.sched_lag_ms_max, peer.sched_lag_ms, mine.sched_lag_ms)
    }

    /// Whether `h` is within every limit.
    pub fn accepts(&self, h: &Health) -> bool {
        h.receivers_ok
            && h.fsync_latency_ms <= self.fsync_latency_ms_max
            && h.disk_free_bytes >= self.disk_free_bytes_min
            && h.merger_stall_ms <= self.merger_stall_ms_max
            && self.sink_stall_ms_max.is_none_or(|m| h.sink_stall_ms <= m)
            && h.sched_lag_ms <= self.sched_lag_ms_max
    }
}

/// `[ha]` settings of one node. `Config::new(node)` gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node: NodeId,
    /// Number of cluster links between the nodes (heartbeats go on each).
    pub links: u8,
    pub policy: Policy,
    pub heartbeat_interval_ms: u64,
    /// The peer is suspected after this long without a message on any link.
    pub failover_after_ms: u64,
    /// The active publishes until `renewal sent_at + lease_ms` (its own clock).
    pub lease_ms: u64,
    /// Added by renewers to their promise: covers clock drift between the nodes' clocks over
    /// one lease (`lease_ms * 2ρ` for drift rate ρ) plus scheduling slop.
    pub lease_margin_ms: u64,
    /// How long a planned handover may wait for the standby before it is abandoned.
    pub handover_timeout_ms: u64,
    /// Most entries in one `Append`.
    pub append_batch_max: u64,
    /// Most entries sent to the follower and not yet acknowledged (flow control: the link's
    /// priority lane is never flooded, the journal copy still gets its share).
    pub append_window_max: u64,
    pub health: HealthLimits,
}

impl Config {
    pub fn new(node: NodeId) -> Config {
        Config {
            node,
            links: 2,
            policy: Policy::Witness,
            heartbeat_interval_ms: 200,
            failover_after_ms: 800,
            lease_ms: 800,
            lease_margin_ms: 100,
            handover_timeout_ms: 2000,
            append_batch_max: 512,
            append_window_max: 2048,
            health: HealthLimits::default(),
        }
    }

    /// Checks every rule and reports all violations at once.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let mut problems = Vec::new();
        if self.node != NodeId::A && self.node != NodeId::B {
            problems.push(format!("ha.node = {}: must be a or b", self.node));
        }
        if !(1..=8).contains(&self.links) {
            problems.push(format!("ha.links = {}: must be 1..=8", self.links));
        }
        if self.heartbeat_interval_ms == 0 {
            problems.push("ha.heartbeat_interval_ms = 0: must be positive".into());
        }
        if self.failover_after_ms < 2 * self.heartbeat_interval_ms {
            problems.push(format!(
                "ha.failover_after_ms = {}: must be at least twice ha.heartbeat_interval_ms ({}), \
                 or one lost heartbeat fails over",
                self.failover_after_ms, self.heartbeat_interval_ms
            ));
        }
        if self.lease_ms <= self.heartbeat_interval_ms {
            problems.push(format!(
                "ha.lease_ms = {}: must exceed ha.heartbeat_interval_ms ({}), or the lease lapses \
                 between renewals",
                self.lease_ms, self.heartbeat_interval_ms
            ));
        }
        if self.lease_margin_ms < self.lease_ms / 50 {
            problems.push(format!(
                "ha.lease_margin_ms = {}: must be at least 2% of ha.lease_ms ({}) to cover clock \
                 drift",
                self.lease_margin_ms, self.lease_ms
            ));
        }
        if self.append_batch_max == 0 {
            problems.push("ha.append_batch_max = 0: must be positive".into());
        }
        if self.append_window_max < self.append_batch_max {
            problems.push(format!(
                "ha.append_window_max = {}: must be at least ha.append_batch_max ({})",
                self.append_window_max, self.append_batch_max
            ));
        }
        if problems.is_empty() {
            Ok(ValidConfig(self))
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// A `Config` that passed `validate()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidConfig(Config);

impl ValidConfig {
    pub fn get(&self) -> &Config {
        &self.0
    }
}

/// Every problem found by `Config::validate`, one line each, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in [ha]:\n  {}", problems.len(), problems.join("\n  "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Settings of the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WitnessConfig {
    /// Must equal the nodes' `lease_ms`.
    pub lease_ms: u64,
    /// Must equal the nodes' `lease_margin_ms`.
    pub lease_margin_ms: u64,
}

impl Default for WitnessConfig {
    fn default() -> Self {
        let c = Config::new(NodeId::A);
        WitnessConfig {
            lease_ms: c.lease_ms,
            lease_margin_ms: c.lease_margin_ms,
        }
    }
}
