//! The status document (`GET /status`, `twinrx status`): what an operator needs to know,
//! including the next step in plain words.

use crate::node::Node;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;

// Its home is `crate::disk`; the pair driver reads it from here.
pub use crate::disk::disk_free_bytes;

pub fn status_json(node: &Node) -> Value {
    let s = &node.stats;
    let r = &node.syslog;
    let journal_failing = s.journal_failing.load(Relaxed);
    let journal_error = s.journal_last_error.lock().ok().and_then(|e| e.clone());
    let stream_error = s.stream_last_error.lock().ok().and_then(|e| e.clone());
    let h = s
        .merger_history
        .lock()
        .map(|h| h.clone())
        .unwrap_or_default();
    let history = json!({
        "memory_entries": h.mem_entries,
        "disk_entries": h.run_entries,
        "runs": h.runs,
        "disk_bytes": h.run_bytes,
        "memory_bytes": h.run_mem_bytes,
        "filters_loaded": h.filters_loaded,
        "filter_loads": h.filter_loads,
        "spill_errors": h.spill_errors,
        "last_error": h.last_error,
    });
    let disk_free = disk_free_bytes(&node.cfg.data_dir);
    let journal_last = node.journal.durable_seq().map(|q| q.0).unwrap_or(0);
    let stream_next = node.stream.durable_seq().map(|q| q.0).unwrap_or(0);
    let mut problems = Vec::new();
    if journal_failing {
        problems.push(format!(
            "journal appends fail ({}): the node is not accepting messages",
            journal_error.as_deref().unwrap_or("unknown error")
        ));
    }
    if let Some(e) = &stream_error {
        problems.push(format!("stream builder: {e}"));
    }
    let sink_problems = crate::sink::problems(&node.sinks, stream_next);
    let sink_trouble = !sink_problems.is_empty();
    problems.extend(sink_problems);
    let (pair_problems, pair_next) = match &node.pair {
        Some(p) => p.problems(),
        None => (Vec::new(), None),
    };
    problems.extend(pair_problems);
    let (ha, role, ha_problems, ha_next) = ha_json(node);
    problems.extend(ha_problems);
    let next_step = if journal_failing {
        format!(
            "free space or fix the disk under {}; the node resumes by itself",
            node.cfg.data_dir.display()
        )
    } else if stream_error.is_some() {
        "check the node's log for the stream error".to_string()
    } else if let Some(next) = pair_next {
        next
    } else if let Some(next) = ha_next {
        next
    } else if sink_trouble {
        "check the sinks' targets (see problems); entries wait on disk and are delivered once they recover".to_string()
    } else if !problems.is_empty() {
        "see problems".to_string()
    } else if node.ha.is_some() {
        "nothing to do: the pair is redundant".to_string()
    } else {
        "nothing to do: the node is receiving and publishing".to_string()
    };
    let uptime = node.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "node": node.cfg.name.to_string(),
        "role": role,
        "ha": ha,
        "version": env!("CARGO_PKG_VERSION"),
        "config": node.cfg.path.display().to_string(),
        "uptime_s": uptime,
        "healthy": problems.is_empty(),
        "problems": problems,
        "next_step": next_step,
        "journal": {
            "dir": node.cfg.data_dir.join("journal").display().to_string(),
            "first_seq": node.journal.first_seq().0,
            "last_seq": journal_last,
            "appended": s.journal_appended.load(Relaxed),
            "append_errors": s.journal_append_errors.load(Relaxed),
            "failing": journal_failing,
            "last_error": journal_error,
            "disk_free_bytes": disk_free,
            "fsync": node.cfg.journal_fsync.to_string(),
            "queued_bytes": node.intake.queued_bytes(),
            "queue_bytes_max": node.intake.budget_bytes(),
        },
        "admin": {
            "control": if node.cfg.admin_token.is_some() { "token" } else { "off" },
            "stream_needs_token": node.cfg.admin_stream_token,
            "unauthorized": s.admin_unauthorized.load(Relaxed),
        },
        "stream": {
            "next_offset": stream_next,
            // What `[stream]` retention has kept: `GET /stream?from=N` below it is 410 Gone.
            "first_offset": node.stream.first_seq().0.saturating_sub(1),
            "bytes": node.stream.bytes(),
            "retention_bytes_max": node.cfg.stream_retention.bytes_max,
            "retention_age_max_s": node.cfg.stream_retention.age_max_ms.map(|ms| ms / 1000),
            "hold_bytes_max": node.cfg.stream_hold_bytes_max,
            "committed_end": (*node.gate.committed.borrow()).min(stream_next),
            "kept_raw": s.stream_kept_raw.load(Relaxed),
            "internal_errors": s.stream_internal_errors.load(Relaxed),
            "matched_copies": s.merger_matched.load(Relaxed),
            "late_copies": s.merger_matched_late.load(Relaxed),
            "merged_seq": {
                "a": s.merger_consumed[0].load(Relaxed),
                "b": s.merger_consumed[1].load(Relaxed),
            },
            "history": history,
            "checkpoint_offset": s.merger_checkpoint.load(Relaxed).checked_sub(1),
            "checkpoint_error": s.merger_checkpoint_error.lock().ok().and_then(|e| e.clone()),
            "latency_us_p50": s.stream_latency.quantile_us(0.50),
            "latency_us_p99": s.stream_latency.quantile_us(0.99),
            "last_error": stream_error,
        },
        "disk": disk_json(node, disk_free, h.run_bytes),
        "sinks": crate::sink::status_json(&node.sinks, stream_next),
        "pair": node.pair.as_ref().map(|p| p.status_json()),
        "receivers": {
            "syslog": {
                "udp": node.cfg.syslog_udp.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "tcp": node.cfg.syslog_tcp.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "tls": node.cfg.syslog_tls.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "udp_rcvbuf_bytes": node.udp_rcvbuf_bytes.iter().map(|(_, b)| *b).collect::<Vec<_>>(),
                "udp_kernel_drops": kernel_drops(node),
                "accepted": {
                    "udp": r.accepted_udp.load(Relaxed),
                    "tcp": r.accepted_tcp.load(Relaxed),
                    "tls": r.accepted_tls.load(Relaxed),
                },
                "discarded": {
                    "oversize": r.oversize.load(Relaxed),
                    "bad_framing": r.bad_framing.load(Relaxed),
                    "tls_failure": r.tls_failure.load(Relaxed),
                    "rate_limited": r.rate_limited.load(Relaxed),
                    "queue_full": r.queue_full.load(Relaxed),
                    "connections_refused": r.connections_refused.load(Relaxed),
                    "connections_refused_per_source": r.connections_refused_per_source.load(Relaxed),
                },
                "connections_open": r.connections_open.load(Relaxed),
                "connections_idle_closed": r.connections_idle_closed.load(Relaxed),
            },
            "snmp": snmp_json(node),
        },
    })
}

/// The `disk` object: per area of the data dir its size on disk, its limit and where the limit
/// comes from, and the hours of history the limit holds at the last minute's rate.
fn disk_json(node: &Node, free: Option<u64>, history_bytes: u64) -> Value {
    let rates = node.rates.entries_per_s();
    let limits = node.cfg.disk.as_ref();
    let shares = if node.pair.is_some() {
        crate::disk::PAIR_SHARES_PCT
    } else {
        crate::disk::SINGLE_SHARES_PCT
    };
    let area = |i: usize,
                h: &journal::JournalHandle,
                limit: Option<crate::disk::Limit>,
                share: u64| {
        let bytes = h.bytes();
        let written = h.bytes_as_written();
        let entries = h
            .durable_seq()
            .map_or(0, |last| (last.0 + 1).saturating_sub(h.first_seq().0));
        let per_s = rates.map(|r| r[i]);
        // The limit counts bytes as written (journal::Retention), so its hours do too.
        let hours = match (limit, per_s) {
            (Some(l), Some(r)) => crate::disk::hours_of_history(l.bytes_max, written, entries, r),
            _ => None,
        };
        json!({
            "bytes": bytes,
            // Before compression of sealed segments: what bytes_max counts. bytes / entries is
            // the cost per entry on disk.
            "bytes_as_written": written,
            "bytes_per_entry": (entries > 0).then(|| bytes / entries),
            "bytes_max": limit.map(|l| l.bytes_max),
            "limit": limit.map(|l| l.source.as_str()),
            "share_pct": limit.filter(|l| l.source == crate::disk::Source::Default).map(|_| share),
            "entries": entries,
            "entries_per_s": per_s.map(|r| (r * 10.0).round() / 10.0),
            // null: idle (or just started), so unknown.
            "hours": hours,
        })
    };
    let mut areas = serde_json::Map::new();
    areas.insert(
        "journal".into(),
        area(0, &node.journal, limits.map(|l| l.journal), shares.journal),
    );
    if let Some(p) = &node.pair {
        areas.insert(
            "peer".into(),
            area(1, &p.copy, limits.and_then(|l| l.peer), shares.peer),
        );
    }
    areas.insert(
        "stream".into(),
        area(2, &node.stream, limits.map(|l| l.stream), shares.stream),
    );
    // The merger's index: bounded by the stream's retention, no limit of its own.
    areas.insert("history".into(), json!({ "bytes": history_bytes }));
    let bytes: u64 = areas.values().filter_map(|a| a["bytes"].as_u64()).sum();
    json!({
        "data_dir": node.cfg.data_dir.display().to_string(),
        "fs_bytes": limits.map(|l| l.fs_bytes),
        "free_bytes": free,
        "bytes": bytes,
        "bytes_max": limits.map(|l| l.total_bytes_max()),
        "budget_pct": crate::disk::SHARE_TOTAL_PCT,
        "areas": areas,
    })
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The `ha` object, the role, HA problems and the operator's next step (pair only).
fn ha_json(node: &Node) -> (Value, String, Vec<String>, Option<String>) {
    use crate::pair::driver::{redundant, role_name};
    let Some(h) = &node.ha else {
        return (Value::Null, "single".into(), Vec::new(), None);
    };
    let Some(v) = h.view.lock().ok().and_then(|v| v.clone()) else {
        return (
            json!({"role": "starting"}),
            "starting".into(),
            Vec::new(),
            None,
        );
    };
    let me = node.cfg.name;
    let peer = me.peer();
    // The view is the HA core's state at its last event. A node woken from a stop (SIGCONT,
    // a paused VM) can be asked before it handles one: the lease its writer checks decides
    // whether it publishes now, and without it the node says so (never `active`).
    let mut st = v.status.clone();
    if st.publishing && !h.lease.allows(st.epoch, h.clock.now()) {
        st.publishing = false;
        st.role = ha::Role::Syncing;
        st.lease_lapsed = true;
    }
    let st = &st;
    let role = role_name(st.role);
    let red = redundant(st);
    let witness = h.settings.witness;
    let mut problems = Vec::new();
    let addresses_missing = node.stats.receive_addresses_missing.load(Relaxed);
    let next = if addresses_missing {
        Some(format!(
            "restore this node's receive address(es) on the host (see problems); the peer \
             publishes meanwhile. Then run `twinrx resync` on {me}"
        ))
    } else if !st.healthy {
        Some(format!(
            "this node's pipeline stalls (journal writes, disk space or the merger: see its log \
             and `journal` above); the peer publishes meanwhile. Once it is fixed, run \
             `twinrx resync` on {me}"
        ))
    } else if red {
        None
    } else if st.lease_lapsed || (st.role.is_active() && !st.publishing) {
        Some(format!(
            "this node cannot renew its lease (cut off from the peer and the witness?), so it \
             does not publish; restore its network, then run `twinrx resync` on {me}"
        ))
    } else if st.lacks_committed {
        problems.push(format!(
            "this node lacks entries that {peer} committed alone while this node was behind: \
             the witness refuses its vote, so it cannot take over"
        ));
        Some(format!(
            "bring back {peer} (with its data): it holds entries this node lacks; this node \
             catches up by itself once {peer} runs"
        ))
    } else if !st.peer_reachable {
        let since = v.peer_down_since.map(rfc3339).unwrap_or_default();
        problems.push(format!("peer {peer} unreachable since {since}"));
        Some(if st.role.is_active() {
            format!(
                "peer {peer} is down or cut off since {since}; this node publishes alone ({role}). When {peer} is back, run `twinrx resync` on {peer}"
            )
        } else {
            format!(
                "peer {peer} is down since {since} and this node is {role}: {}",
                if witness.is_some() && !st.witness_reachable {
                    "the witness is unreachable too, so this node cannot take over; bring back the peer or the witness"
                } else if witness.is_none() {
                    "no witness is configured, so this node cannot take over alone; bring back the peer"
                } else {
                    "if the peer is down, this node takes over within seconds; if only the links \
                     between the nodes are cut, the peer stays active (the witness holds its \
                     lease): restore the links, then run `twinrx resync` on this node"
                }
            )
        })
    } else if st.role == ha::Role::Syncing {
        Some(format!(
            "this node is catching up with {peer}; run `twinrx resync` on {me} to follow it to the end"
        ))
    } else if st.peer_role == Some(ha::Role::Syncing) {
        Some(format!(
            "peer {peer} is catching up; run `twinrx resync` on {peer} to follow it to the end"
        ))
    } else {
        Some("the pair is settling (roles are being decided)".into())
    };
    if witness.is_some() && !st.witness_reachable {
        let since = v.witness_down_since.map(rfc3339).unwrap_or_default();
        problems.push(format!(
            "witness {} unreachable since {since}: the pair carries on, but cannot fail over if the active fails too",
            witness.map(|w| w.to_string()).unwrap_or_default()
        ));
    }
    if addresses_missing {
        problems.push(
            "a receive address of this node is gone from the host: devices cannot reach it (it \
             hands over to the peer)"
                .into(),
        );
    }
    if st.lease_lapsed {
        problems.push(format!(
            "this node leads epoch {} but does not publish: its lease lapsed",
            st.epoch.0
        ));
    }
    if !st.healthy {
        problems.push(
            "this node's pipeline is unhealthy (journal writes, disk space, merger or receive \
             addresses): an active hands over"
                .into(),
        );
    }
    let doc = json!({
        "role": role,
        "role_since": rfc3339(v.role_since),
        "epoch": st.epoch.0,
        "log_epoch": st.log.log_epoch.0,
        "publishing": st.publishing,
        "redundant": red,
        "healthy": st.healthy,
        "peer": peer.to_string(),
        "peer_role": st.peer_role.map(role_name),
        "peer_reachable": st.peer_reachable,
        "peer_stream_end": st.peer_log.end.0,
        "peer_down_since": v.peer_down_since.map(rfc3339),
        "links_up": st.links_up,
        "witness": witness.map(|w| w.to_string()),
        "witness_reachable": st.witness_reachable,
        "witness_down_since": witness.and(v.witness_down_since.map(rfc3339)),
        "policy": format!("{:?}", h.settings.policy()).to_lowercase(),
        // How often the nodes tell each other their roles: a role change reaches the peer's
        // status within about this (`twinrx resync` waits that long before "redundant").
        "heartbeat_interval_ms": h.settings.core.get().heartbeat_interval_ms,
        "commit_end": st.commit_end.0,
        "stream_end": v.stream_end,
        "health_dwell_left_ms": st.health_dwell_left_ms,
        "lacks_committed": st.lacks_committed,
        "lease_lapsed": st.lease_lapsed,
        "stream_copy_restarted": v.copy_restarted.map(|(offset, at)| json!({"offset": offset, "at": rfc3339(at)})),
        "last_handover": v.last_handover.map(|(reason, at)| json!({"reason": reason.as_str(), "at": rfc3339(at)})),
        "resync": v.resync.as_ref().map(|r| json!({
            "state": r.state,
            "phase": r.phase,
            "done": r.done,
            "total": r.total,
            "started": rfc3339(r.started),
            "error": r.error,
        })),
        "last_disk_error": v.last_disk_error,
        "stats": {
            "campaigns": v.stats.campaigns_total,
            "promotions": v.stats.promotions_total,
            "handovers": v.stats.handovers_total,
            "health_handovers": v.stats.health_handovers_total,
            "handovers_by_reason": {
                "switchover": v.stats.switchover_handovers_total,
                "unhealthy": v.stats.health_handovers_total,
                "shutdown": v.stats.shutdown_handovers_total,
            },
            "health_dwells": v.stats.health_dwells_total,
            "leases_expired": v.stats.leases_expired_total,
            "votes_granted": v.stats.votes_granted_total,
            "votes_refused": v.stats.votes_refused_total,
            "stale_messages": v.stats.stale_messages_total,
            "stale_refusals": v.stats.stale_refusals_total,
            "switchovers_refused": v.stats.switchovers_refused_total,
        },
        "next_step": next,
    });
    (doc, role.to_string(), problems, next)
}

fn snmp_json(node: &Node) -> Value {
    use receiver::snmp::{Accepted, DiscardReason};
    let Some(core) = &node.snmp else {
        return Value::Null;
    };
    let Ok(c) = core.lock() else {
        return Value::Null;
    };
    let st = c.stats();
    let accepted: serde_json::Map<String, Value> = Accepted::ALL
        .iter()
        .map(|k| (k.as_str().to_string(), json!(st.accepted(*k))))
        .collect();
    let discarded: serde_json::Map<String, Value> = DiscardReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), json!(st.discarded(*r))))
        .collect();
    let l = &node.snmp_listener;
    json!({
        "listen": node.cfg.snmp.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "engine_id": crate::snmp::hex(c.engine_id()),
        "accepted": accepted,
        "discarded": discarded,
        "duplicate_informs": st.duplicate_informs,
        "informs_answered": l.informs_answered.load(Relaxed),
        "queue_full": l.queue_full.load(Relaxed),
        "rate_limited": l.rate_limited.load(Relaxed),
        "reports_sent": st.discovery_reports + st.error_reports,
    })
}

/// Datagrams the kernel dropped (receive buffer full) on every UDP socket of the node.
pub fn kernel_drops(node: &Node) -> u64 {
    node.udp_rcvbuf_bytes
        .iter()
        .filter_map(|(addr, _)| crate::procnet::udp_drops(*addr))
        .sum()
}
