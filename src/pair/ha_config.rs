//! The `[ha]` section of a node's config: the witness, the promotion policy and the HA
//! timings (SPEC "HA core"). Only meaningful with `[pair]`; absent = the defaults.
//!
//! Contract: [`validate`] reports every problem into the node's problem list, each naming its
//! key (`ha.lease_ms`, `ha.fence_command`, …), and returns [`HaSettings`] only when valid. The
//! core's own rules (`ha::Config::validate`) are reported with the same key names.
//!
//! Without a witness and with the default policy, promotion needs both nodes (the candidate
//! and the peer's vote): the pair starts and hands over (switchover, SIGTERM) but cannot fail
//! over when a node dies. `twinrx status` says so.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use twinrx_types::NodeId;

/// `[ha]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    /// The witness's address (`twinrx witness`, default port 7402).
    #[serde(default)]
    pub witness: Option<String>,
    /// "witness" (default), "fence_command" or "ping_targets".
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub fence_command: Option<String>,
    #[serde(default)]
    pub fence_timeout_ms: Option<u64>,
    #[serde(default)]
    pub ping_targets: Vec<String>,
    #[serde(default)]
    pub heartbeat_interval_ms: Option<u64>,
    #[serde(default)]
    pub failover_after_ms: Option<u64>,
    #[serde(default)]
    pub lease_ms: Option<u64>,
    #[serde(default)]
    pub lease_margin_ms: Option<u64>,
    #[serde(default)]
    pub handover_timeout_ms: Option<u64>,
    /// De-duplication window W (SPEC "De-duplication"), default 5000: how close live copies
    /// are (`late`, late-copy counts); it does not limit pairing (that is `[merger] horizon_s`).
    #[serde(default)]
    pub dedup_window_ms: Option<u64>,
}

/// The `[merger]` section: how the active pairs the two nodes' copies (SPEC "De-duplication").
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMerger {
    /// The horizon `H` in seconds: copies of one key pair one-to-one in journal order when
    /// their receive times are at most this far apart. Absent (the default): no limit, all
    /// the history the stream holds, so a node away for a weekend and its relay's weekend
    /// backlog still pair.
    #[serde(default)]
    pub horizon_s: Option<u64>,
    /// A checkpoint of the merger's state is taken after this many new stream entries
    /// (default 500,000) or `checkpoint_interval_s` (default 60), whichever comes first: a
    /// restart or failover folds at most that much of the stream again.
    #[serde(default)]
    pub checkpoint_entries: Option<u64>,
    #[serde(default)]
    pub checkpoint_interval_s: Option<u64>,
}

/// A validated `[ha]` section.
#[derive(Debug, Clone)]
pub struct HaSettings {
    pub core: ha::ValidConfig,
    pub witness: Option<SocketAddr>,
    pub fence_command: Option<String>,
    pub fence_timeout_ms: u64,
    pub ping_targets: Vec<IpAddr>,
    pub dedup: dedup::ValidConfig,
    pub checkpoint: CheckpointEvery,
}

/// When the writer takes a merger checkpoint (`[merger] checkpoint_*`).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointEvery {
    pub entries: u64,
    pub interval: std::time::Duration,
}

impl HaSettings {
    pub fn policy(&self) -> ha::Policy {
        self.core.get().policy
    }
}

/// Validates `[ha]` for node `me` with `links` cluster links.
pub fn validate(
    raw: Option<&RawHa>,
    merger: &RawMerger,
    me: NodeId,
    links: usize,
    problems: &mut Vec<String>,
) -> Option<HaSettings> {
    let default = RawHa::default();
    let raw = raw.unwrap_or(&default);
    let before = problems.len();
    let mut c = ha::Config::new(me);
    c.links = u8::try_from(links.max(1)).unwrap_or(u8::MAX);
    c.policy = match raw.policy.as_deref() {
        None | Some("witness") => ha::Policy::Witness,
        Some("fence_command") => ha::Policy::FenceCommand,
        Some("ping_targets") => ha::Policy::PingTargets,
        Some(other) => {
            problems.push(format!(
                "ha.policy = {other:?}: must be \"witness\", \"fence_command\" or \"ping_targets\""
            ));
            ha::Policy::Witness
        }
    };
    let witness = match &raw.witness {
        None => None,
        Some(w) => match w.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "ha.witness = {w:?}: not an address:port (e.g. \"10.0.0.3:7402\")"
                ));
                None
            }
        },
    };
    if c.policy != ha::Policy::Witness && raw.witness.is_some() {
        problems.push(format!(
            "ha.witness: set, but ha.policy = {:?} does not use a witness (remove one of them)",
            raw.policy.as_deref().unwrap_or_default()
        ));
    }
    if c.policy == ha::Policy::FenceCommand
        && raw
            .fence_command
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
    {
        problems.push(
            "ha.fence_command: missing: policy \"fence_command\" needs the command that powers \
             off the peer (run with `sh -c`, exit 0 = fenced)"
                .into(),
        );
    }
    let mut ping_targets = Vec::new();
    for (i, t) in raw.ping_targets.iter().enumerate() {
        match t.parse::<IpAddr>() {
            Ok(ip) => ping_targets.push(ip),
            Err(_) => problems.push(format!("ha.ping_targets[{i}] = {t:?}: not an IP address")),
        }
    }
    if c.policy == ha::Policy::PingTargets && raw.ping_targets.is_empty() {
        problems.push(
            "ha.ping_targets: missing: policy \"ping_targets\" needs addresses to ping (e.g. the \
             default gateway)"
                .into(),
        );
    }
    if let Some(v) = raw.heartbeat_interval_ms {
        c.heartbeat_interval_ms = v;
    }
    if let Some(v) = raw.failover_after_ms {
        c.failover_after_ms = v;
    }
    if let Some(v) = raw.lease_ms {
        c.lease_ms = v;
    }
    if let Some(v) = raw.lease_margin_ms {
        c.lease_margin_ms = v;
    }
    if let Some(v) = raw.handover_timeout_ms {
        c.handover_timeout_ms = v;
    }
    let core = match c.validate() {
        Ok(v) => Some(v),
        Err(e) => {
            problems.extend(e.problems);
            None
        }
    };
    let window_ms = raw.dedup_window_ms.unwrap_or(5000);
    let dedup = match (dedup::Config {
        window_ms,
        horizon_ms: merger.horizon_s.map(|s| s.saturating_mul(1000)),
        // With no horizon every record is looked up in the history index anyway: the
        // in-memory table only speeds up a finite one (16,384 entries, about 2 MiB).
        memory_entries_max: if merger.horizon_s.is_none() {
            1 << 14
        } else {
            dedup::Config::default().memory_entries_max
        },
        ..dedup::Config::default()
    })
    .validate()
    {
        Ok(d) => Some(d),
        Err(dedup::ConfigError::HorizonBelowWindow { .. }) => {
            problems.push(format!(
                "merger.horizon_s = {}: must be at least ha.dedup_window_ms ({window_ms} ms), or \
                 live copies would not pair",
                merger.horizon_s.unwrap_or_default()
            ));
            None
        }
        Err(e) => {
            problems.push(format!("ha.dedup_window_ms: {e}"));
            None
        }
    };
    let checkpoint = CheckpointEvery {
        entries: merger.checkpoint_entries.unwrap_or(500_000),
        interval: std::time::Duration::from_secs(merger.checkpoint_interval_s.unwrap_or(60)),
    };
    if checkpoint.entries == 0 {
        problems.push("merger.checkpoint_entries = 0: must be at least 1".into());
    }
    if checkpoint.interval.is_zero() {
        problems.push("merger.checkpoint_interval_s = 0: must be at least 1".into());
    }
    if problems.len() != before {
        return None;
    }
    Some(HaSettings {
        checkpoint,
        core: core?,
        witness,
        fence_command: raw.fence_command.clone(),
        fence_timeout_ms: raw.fence_timeout_ms.unwrap_or(10_000),
        ping_targets,
        dedup: dedup?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<HaSettings, Vec<String>> {
        let raw: RawHa = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        match validate(
            Some(&raw),
            &RawMerger::default(),
            NodeId::A,
            1,
            &mut problems,
        ) {
            Some(s) if problems.is_empty() => Ok(s),
            _ => Err(problems),
        }
    }

    #[test]
    fn defaults_and_a_witness() {
        let s = check("witness = \"127.0.0.13:7402\"\n").expect("valid");
        assert_eq!(s.witness, Some("127.0.0.13:7402".parse().expect("addr")));
        assert_eq!(s.policy(), ha::Policy::Witness);
        assert_eq!(s.core.get().heartbeat_interval_ms, 200);
        assert_eq!(s.core.get().links, 1);
        assert_eq!(s.dedup.get().window_ms, 5000);
        assert_eq!(s.dedup.get().horizon_ms, None, "H is unbounded by default");
    }

    #[test]
    fn a_horizon_below_the_window_names_both_keys() {
        let raw: RawHa = toml::from_str("dedup_window_ms = 5000\n").expect("toml");
        let mut problems = Vec::new();
        let merger = RawMerger {
            horizon_s: Some(4),
            ..RawMerger::default()
        };
        assert!(validate(Some(&raw), &merger, NodeId::A, 1, &mut problems).is_none());
        assert_eq!(
            problems,
            [
                "merger.horizon_s = 4: must be at least ha.dedup_window_ms (5000 ms), or live \
              copies would not pair"
            ]
        );
        let merger = RawMerger {
            horizon_s: Some(600),
            ..RawMerger::default()
        };
        let s = validate(Some(&raw), &merger, NodeId::A, 1, &mut Vec::new()).expect("valid");
        assert_eq!(s.dedup.get().horizon_ms, Some(600_000));
    }

    #[test]
    fn every_problem_names_its_key() {
        let e = check(
            "witness = \"x\"\npolicy = \"fence_command\"\nping_targets = [\"nope\"]\n\
             heartbeat_interval_ms = 500\nfailover_after_ms = 600\nlease_ms = 400\n",
        )
        .expect_err("invalid");
        let text = e.join("\n");
        assert!(text.contains("ha.witness = \"x\""), "{text}");
        assert!(text.contains("ha.fence_command: missing"), "{text}");
        assert!(text.contains("ha.ping_targets[0] = \"nope\""), "{text}");
        assert!(text.contains("ha.failover_after_ms = 600"), "{text}");
        assert!(text.contains("ha.lease_ms"), "{text}");
        let e = check("policy = \"raft\"\n").expect_err("bad policy");
        assert!(e[0].contains("ha.policy = \"raft\""), "{e:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RawHa>("witnes = \"a\"\n").expect_err("unknown");
        assert!(err.to_string().contains("witnes"), "{err}");
    }
}
