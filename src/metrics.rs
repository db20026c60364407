//! `/metrics`: Prometheus text format, names `twinrx_<subsystem>_<name>_<unit>[_total]`
//! (STYLE.md §8; the encoder adds `_total` to counters). Counters live as atomics in the
//! pipeline; this collector reads them at scrape time, with bounded labels.

use crate::node::Node;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

struct NodeCollector(Arc<Node>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

/// Label pairs of one series.
pub(crate) type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Encodes one metric family: a counter or gauge per label set (shared by the node's and the
/// witness's collectors).
pub(crate) fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    items: &[(Labels<'_>, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in items {
        let mut e = m.encode_family(labels)?;
        match kind {
            MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(v, None)?,
            _ => e.encode_gauge(&i64::try_from(*v).unwrap_or(i64::MAX))?,
        }
    }
    Ok(())
}

/// Encodes one gauge family of fractional (and signed) values.
pub(crate) fn gauge_f64(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: &[(Labels<'_>, f64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in items {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let n = &self.0;
        let r = &n.syslog;
        let s = &n.stats;
        family(
            &mut enc,
            "twinrx_receiver_messages",
            "Messages accepted by the receivers",
            Counter,
            &[
                (
                    vec![("protocol", "syslog"), ("transport", "udp")],
                    r.accepted_udp.load(Relaxed),
                ),
                (
                    vec![("protocol", "syslog"), ("transport", "tcp")],
                    r.accepted_tcp.load(Relaxed),
                ),
                (
                    vec![("protocol", "syslog"), ("transport", "tls")],
                    r.accepted_tls.load(Relaxed),
                ),
            ],
        )?;
        family(
            &mut enc,
            "twinrx_receiver_discarded",
            "Messages or connections refused by the receivers, by reason",
            Counter,
            &[
                (
                    vec![("protocol", "syslog"), ("reason", "oversize")],
                    r.oversize.load(Relaxed),
                ),
                (
                    vec![("protocol", "syslog"), ("reason", "bad_framing")],
                    r.bad_framing.load(Relaxed),
                ),
                (
                    vec![("protocol", "syslog"), ("reason", "tls_failure")],
                    r.tls_failure.load(Relaxed),
                ),
                (
                    vec![("protocol", "syslog"), ("reason", "rate_limited")],
                    r.rate_limited.load(Relaxed),
                ),
                (
                    vec![("protocol", "syslog"), ("reason", "queue_full")],
                    r.queue_full.load(Relaxed),
                ),
                (
                    vec![("protocol", "syslog"), ("reason", "connections_max")],
                    r.connections_refused
                        .load(Relaxed)
                        .saturating_sub(r.connections_refused_per_source.load(Relaxed)),
                ),
                (
                    vec![("protocol", "syslog"), ("reason", "connections_per_source")],
                    r.connections_refused_per_source.load(Relaxed),
                ),
            ],
        )?;
        family(
            &mut enc,
            "twinrx_receiver_connections_idle_closed",
            "Syslog TCP/TLS connections closed after [syslog] idle_timeout_s without a byte",
            Counter,
            &[(vec![], r.connections_idle_closed.load(Relaxed))],
        )?;
        if let Some(core) = &n.snmp {
            use receiver::snmp::{Accepted, DiscardReason};
            let (acc, disc, dup) = match core.lock() {
                Ok(c) => {
                    let st = c.stats();
                    (
                        Accepted::ALL.map(|k| (k.as_str(), st.accepted(k))),
                        DiscardReason::ALL.map(|r| (r.as_str(), st.discarded(r))),
                        st.duplicate_informs,
                    )
                }
                Err(_) => return Err(std::fmt::Error),
            };
            let acc: Vec<_> = acc
                .iter()
                .map(|(k, v)| (vec![("protocol", "snmp"), ("kind", *k)], *v))
                .collect();
            family(
                &mut enc,
                "twinrx_receiver_snmp_messages",
                "SNMP messages accepted, by kind",
                Counter,
                &acc,
            )?;
            let mut d: Vec<_> = disc
                .iter()
                .map(|(k, v)| (vec![("protocol", "snmp"), ("reason", *k)], *v))
                .collect();
            d.push((
                vec![("protocol", "snmp"), ("reason", "queue_full")],
                n.snmp_listener.queue_full.load(Relaxed),
            ));
            d.push((
                vec![("protocol", "snmp"), ("reason", "rate_limited")],
                n.snmp_listener.rate_limited.load(Relaxed),
            ));
            family(
                &mut enc,
                "twinrx_receiver_snmp_discarded",
                "SNMP datagrams dropped or kept raw, by reason",
                Counter,
                &d,
            )?;
            family(
                &mut enc,
                "twinrx_receiver_snmp_duplicate_informs",
                "Retransmitted informs answered without journaling them again",
                Counter,
                &[(vec![], dup)],
            )?;
        }
        family(
            &mut enc,
            "twinrx_receiver_kernel_drops",
            "UDP datagrams the kernel dropped because a receive buffer was full (syslog and SNMP sockets)",
            Gauge,
            &[(vec![], crate::status::kernel_drops(n))],
        )?;
        family(
            &mut enc,
            "twinrx_receiver_received_bytes",
            "Message bytes accepted by the receivers",
            Counter,
            &[(vec![("protocol", "syslog")], r.bytes.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_receiver_connections_open",
            "TCP/TLS connections open",
            Gauge,
            &[(
                vec![("protocol", "syslog")],
                r.connections_open.load(Relaxed),
            )],
        )?;
        family(
            &mut enc,
            "twinrx_journal_appended_records",
            "Records appended to the node journal",
            Counter,
            &[(vec![], s.journal_appended.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_journal_append_errors",
            "Failed journal appends (disk full, EIO); the node is not accepting meanwhile",
            Counter,
            &[(vec![], s.journal_append_errors.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_journal_failing",
            "1 while journal appends fail",
            Gauge,
            &[(vec![], u64::from(s.journal_failing.load(Relaxed)))],
        )?;
        family(
            &mut enc,
            "twinrx_journal_last_batch_us",
            "Duration of the last journal append, fsync included, in microseconds",
            Gauge,
            &[(vec![], s.journal_last_batch_us.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_journal_queued_bytes",
            "Bytes received and waiting for the journal writer (bounded by journal.queue_bytes_max)",
            Gauge,
            &[(vec![], n.intake.queued_bytes() as u64)],
        )?;
        family(
            &mut enc,
            "twinrx_journal_last_seq",
            "Last durable journal seq",
            Gauge,
            &[(vec![], n.journal.durable_seq().map(|q| q.0).unwrap_or(0))],
        )?;
        family(
            &mut enc,
            "twinrx_stream_next_offset",
            "Offset the next merged-stream entry will get",
            Gauge,
            &[(vec![], n.stream.durable_seq().map(|q| q.0).unwrap_or(0))],
        )?;
        family(
            &mut enc,
            "twinrx_stream_entries",
            "Merged-stream entries appended by this process",
            Counter,
            &[(vec![], s.stream_entries.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_stream_kept_raw",
            "Entries whose message could not be parsed and was kept raw",
            Counter,
            &[(
                vec![("protocol", "syslog")],
                s.stream_kept_raw.load(Relaxed),
            )],
        )?;
        family(
            &mut enc,
            "twinrx_stream_internal_errors",
            "Messages whose parsing panicked: caught, kept raw with parse_error \"internal \
             error in the ...\" (also in twinrx_stream_kept_raw); a bug to report",
            Counter,
            &[(vec![], s.stream_internal_errors.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_admin_unauthorized",
            "Admin requests refused (401) for a missing or wrong token",
            Counter,
            &[(vec![], s.admin_unauthorized.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_merger_matched",
            "Records suppressed as the other node's copy of a published entry",
            Counter,
            &[(vec![], s.merger_matched.load(Relaxed))],
        )?;
        family(
            &mut enc,
            "twinrx_merger_late_copies",
            "Of the matched records, copies received more than the window W apart from their \
             entry's (one node got the message late: relay backlog, inform retry, reboot)",
            Counter,
            &[(vec![], s.merger_matched_late.load(Relaxed))],
        )?;
        let history = s
            .merger_history
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default();
        family(
            &mut enc,
            "twinrx_merger_history_entries",
            "Open entries of the merger's history index (entries that may still be matched by \
             a late copy), in memory and in sorted runs on disk",
            Gauge,
            &[
                (vec![("where", "memory")], history.mem_entries),
                (vec![("where", "disk")], history.run_entries),
            ],
        )?;
        family(
            &mut enc,
            "twinrx_merger_history_bytes",
            "Bytes the merger's history index takes: runs on disk, and their loaded filters, \
             indexes and bitmaps in memory (the entries in memory not included)",
            Gauge,
            &[
                (vec![("where", "disk")], history.run_bytes),
                (vec![("where", "memory")], history.run_mem_bytes),
            ],
        )?;
        family(
            &mut enc,
            "twinrx_merger_history_filter_loads",
            "Bloom filters of history runs read back from disk by lookups (at most \
             8 MiB of filters stay loaded)",
            Counter,
            &[(vec![], history.filter_loads)],
        )?;
        family(
            &mut enc,
            "twinrx_merger_history_spill_errors",
            "Failed writes of a history run (the entries stay in memory and are written later)",
            Counter,
            &[(vec![], history.spill_errors)],
        )?;
        {
            let (buckets, sum, count) = s.stream_latency.snapshot();
            let mut m = enc.encode_descriptor(
                "twinrx_stream_latency_seconds",
                "Receive to durable-in-stream latency of each entry",
                None,
                MetricType::Histogram,
            )?;
            // The encoder accumulates per-bucket counts itself: give it each bucket's own
            // count (the snapshot is cumulative). The last bucket is +Inf.
            let mut prev = 0;
            let mut b: Vec<(f64, u64)> = buckets
                .into_iter()
                .map(|(le, cum)| {
                    let own = cum.saturating_sub(prev);
                    prev = cum;
                    (le, own)
                })
                .collect();
            if let Some(last) = b.last_mut() {
                last.0 = f64::INFINITY;
            }
            m.encode_histogram::<NoLabelSet>(sum, count, &b, None)?;
        }
        let stream_next = n.stream.durable_seq().map(|q| q.0).unwrap_or(0);
        for (name, help, counter, items) in crate::sink::metric_families(&n.sinks, stream_next) {
            let items: Vec<(Labels<'_>, u64)> = items
                .into_iter()
                .map(|(sink, kind, v)| (vec![("sink", sink), ("type", kind)], v))
                .collect();
            let kind = if counter { Counter } else { Gauge };
            family(&mut enc, name, help, kind, &items)?;
        }
        if let Some(free) = crate::disk::disk_free_bytes(&n.cfg.data_dir) {
            family(
                &mut enc,
                "twinrx_journal_disk_free_bytes",
                "Free bytes on the data directory's file system",
                Gauge,
                &[(vec![], free)],
            )?;
        }
        // Each area of the data dir: its size and its limit (the disk budget, `crate::disk`).
        let mut sizes: Vec<(Labels<'_>, u64)> = vec![
            (vec![("area", "journal")], n.journal.bytes()),
            (vec![("area", "stream")], n.stream.bytes()),
        ];
        if let Some(p) = &n.pair {
            sizes.push((vec![("area", "peer")], p.copy.bytes()));
        }
        family(
            &mut enc,
            "twinrx_disk_area_bytes",
            "Bytes of an area of the data directory (journal, peer copy, stream)",
            Gauge,
            &sizes,
        )?;
        if let Some(l) = &n.cfg.disk {
            let mut limits: Vec<(Labels<'_>, u64)> = vec![
                (vec![("area", "journal")], l.journal.bytes_max),
                (vec![("area", "stream")], l.stream.bytes_max),
            ];
            if let Some(p) = l.peer {
                limits.push((vec![("area", "peer")], p.bytes_max));
            }
            family(
                &mut enc,
                "twinrx_disk_area_limit_bytes",
                "Retention limit of an area of the data directory (default share or configured)",
                Gauge,
                &limits,
            )?;
        }
        if let Some(v) =
            n.ha.as_ref()
                .and_then(|h| h.view.lock().ok().and_then(|v| v.clone()))
        {
            ha_metrics(&mut enc, &v)?;
        }
        if let Some(pair) = &n.pair {
            pair.encode_metrics(&mut enc)?;
        }
        Ok(())
    }
}

/// The HA core's families (pair only).
fn ha_metrics(enc: &mut DescriptorEncoder, v: &crate::pair::driver::HaView) -> std::fmt::Result {
    use crate::pair::driver::role_name;
    use MetricType::{Counter, Gauge};
    let st = &v.status;
    let role = role_name(st.role);
    let roles = ["active", "solo", "standby", "syncing", "stopped"];
    let items: Vec<(Labels<'_>, u64)> = roles
        .iter()
        .map(|r| (vec![("role", *r)], u64::from(*r == role)))
        .collect();
    family(
        enc,
        "twinrx_ha_role",
        "1 for this node's current HA role",
        Gauge,
        &items,
    )?;
    let gauges: [(&str, &str, u64); 7] = [
        (
            "twinrx_ha_epoch",
            "Highest epoch this node has promised",
            st.epoch.0,
        ),
        (
            "twinrx_ha_publishing",
            "1 while this node publishes the merged stream",
            u64::from(st.publishing),
        ),
        (
            "twinrx_ha_redundant",
            "1 while the pair is redundant (active + in-sync standby)",
            u64::from(crate::pair::driver::redundant(st)),
        ),
        (
            "twinrx_ha_peer_reachable",
            "1 while the peer is heard on some link",
            u64::from(st.peer_reachable),
        ),
        (
            "twinrx_ha_witness_reachable",
            "1 while the witness is reachable",
            u64::from(st.witness_reachable),
        ),
        (
            "twinrx_ha_healthy",
            "1 while this node's pipeline health is within limits",
            u64::from(st.healthy),
        ),
        (
            "twinrx_ha_commit_end",
            "Entries below this stream offset are committed",
            st.commit_end.0,
        ),
    ];
    for (name, help, value) in gauges {
        family(enc, name, help, Gauge, &[(vec![], value)])?;
    }
    family(
        enc,
        "twinrx_ha_handovers",
        "Handovers this node completed, by reason (switchover: planned; unhealthy: its pipeline \
         was outside the health limits; shutdown: SIGTERM)",
        Counter,
        &[
            (
                vec![("reason", "switchover")],
                v.stats.switchover_handovers_total,
            ),
            (
                vec![("reason", "unhealthy")],
                v.stats.health_handovers_total,
            ),
            (
                vec![("reason", "shutdown")],
                v.stats.shutdown_handovers_total,
            ),
        ],
    )?;
    let counters: [(&str, &str, u64); 8] = [
        (
            "twinrx_ha_health_handovers",
            "Of the handovers, those this node made because its pipeline was unhealthy",
            v.stats.health_handovers_total,
        ),
        (
            "twinrx_ha_health_dwells",
            "Times this node took over from a peer that handed over for its health (no health \
             handover back during the dwell)",
            v.stats.health_dwells_total,
        ),
        (
            "twinrx_ha_promotions",
            "Times this node was promoted to active",
            v.stats.promotions_total,
        ),
        (
            "twinrx_ha_campaigns",
            "Elections this node started",
            v.stats.campaigns_total,
        ),
        (
            "twinrx_ha_leases_expired",
            "Times this node stopped publishing because its lease lapsed",
            v.stats.leases_expired_total,
        ),
        (
            "twinrx_ha_stale_messages",
            "HA messages from a lower epoch, dropped",
            v.stats.stale_messages_total,
        ),
        (
            "twinrx_ha_switchovers_refused",
            "Switchover requests refused",
            v.stats.switchovers_refused_total,
        ),
        (
            "twinrx_ha_stream_copy_restarts",
            "Times this node's copy of the stream restarted at the active's first retained offset \
             (the active's retention had deleted entries it lacked)",
            v.copy_restarts_total,
        ),
    ];
    for (name, help, value) in counters {
        family(enc, name, help, Counter, &[(vec![], value)])?;
    }
    Ok(())
}

pub fn render(node: &Arc<Node>) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(NodeCollector(node.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)?;
    Ok(out)
}
