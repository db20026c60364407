//! `twinrx node`: one node's runtime. Wires the receivers to the journal, the journal to the
//! merged stream, and both to the admin HTTP server.
//!
//! Threads and tasks:
//! - listeners (tokio tasks, `receiver::listen`) put record batches on a bounded channel;
//! - the journal writer (an OS thread: appends block on fsync) appends each batch, one fsync
//!   per batch by default, then fires the batch's durability signal;
//! - the stream builder (an OS thread) tails the durable journal and appends one entry per
//!   record to the stream journal (single node: each record once, in seq order);
//! - the admin server (tokio) serves `/status`, `/metrics` and `/stream`.
//!
//! Shutdown (SIGTERM/SIGINT): listeners stop, the writer drains the channel and fsyncs, the
//! stream builder catches up with the durable journal, and the process exits 0.

use crate::config::{ClientCert, NodeConfig};
use crate::pair::driver::{Gate, HaView};
use crate::stream::{self, EntryHead};
use anyhow::Context as _;
use journal::{Journal, JournalHandle, Options};
use receiver::listen::{self, Intake, IntakeRx, ListenerOptions, SyslogStats};
use receiver::record::Record;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use twinrx_types::{Epoch, NodeId, Offset, Seq};

/// Counters and state of the node's own pipeline (exported by `/metrics` and `/status`).
#[derive(Debug, Default)]
pub struct NodeStats {
    pub journal_appended: AtomicU64,
    pub journal_batches: AtomicU64,
    pub journal_append_errors: AtomicU64,
    pub journal_last_batch_us: AtomicU64,
    /// Records lost because the journal could not take them before shutdown.
    pub journal_lost_at_shutdown: AtomicU64,
    /// Set while appends fail (disk full, EIO): the node is not accepting.
    pub journal_failing: AtomicBool,
    pub journal_last_error: Mutex<Option<String>>,
    pub stream_entries: AtomicU64,
    /// Receive → durable-in-stream latency of each entry.
    pub stream_latency: LatencyHistogram,
    pub stream_kept_raw: AtomicU64,
    /// Of those, messages whose parsing panicked (caught: [`crate::guard`]).
    pub stream_internal_errors: AtomicU64,
    pub stream_bad_records: AtomicU64,
    /// Records the merger found to be the other node's copy of an entry already published.
    pub merger_matched: AtomicU64,
    /// Of those, copies received more than `W` apart from their entry's (one node got the
    /// message late: a relay's backlog, a retried inform, a node back from a reboot).
    pub merger_matched_late: AtomicU64,
    /// While this node publishes: per node (a, b), the highest journal seq its merger has
    /// accounted for in the stored stream (an entry or a copy of one).
    pub merger_consumed: [AtomicU64; 2],
    /// The merger's history index (open entries in memory and in runs on disk), as of the
    /// writer's last prune (every 5 s).
    pub merger_history: Mutex<history::Stats>,
    /// The merger's stored checkpoint: its offset + 1 (0: none yet), and why the last one
    /// failed.
    pub merger_checkpoint: AtomicU64,
    pub merger_checkpoint_error: Mutex<Option<String>>,
    pub stream_last_error: Mutex<Option<String>>,
    /// Unix ms when the journal append in progress started (0: none): health's fsync latency.
    pub journal_busy_since_ms: AtomicU64,
    /// Unix ms of the merger's last progress (a batch taken, 256 records merged, an append
    /// started) while it has input; 0 when idle. Health's merger stall is its age: no progress
    /// for the limit, not one long batch.
    pub merger_busy_since_ms: AtomicU64,
    /// A receive address is no longer on the host (F7).
    pub receive_addresses_missing: AtomicBool,
    /// Admin requests refused for a missing or wrong token (401).
    pub admin_unauthorized: AtomicU64,
}

/// Wall-clock milliseconds since the Unix epoch (for "busy since" stamps; never 0).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        })
}

/// A lock-free histogram of latencies with power-of-two microsecond buckets
/// (1 µs .. ~68 s), cheap enough to record every entry.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 27],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub fn record_us(&self, us: u64) {
        let i = (64 - us.leading_zeros() as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// (upper bound in seconds, cumulative count) per bucket, sum in seconds, count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut cum = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                cum += b.load(Relaxed);
                ((1u64 << i) as f64 / 1e6, cum)
            })
            .collect();
        (
            buckets,
            self.sum_us.load(Relaxed) as f64 / 1e6,
            self.count.load(Relaxed),
        )
    }

    /// The bucket bound under which `q` (0..1) of the samples fall, in microseconds.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let (buckets, _, count) = self.snapshot();
        if count == 0 {
            return None;
        }
        let want = (q * count as f64).ceil() as u64;
        buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map(|(le, _)| (le * 1e6) as u64)
    }
}

/// What the admin server and the status page see of a running node.
pub struct Node {
    pub cfg: NodeConfig,
    pub started: SystemTime,
    pub journal: JournalHandle,
    pub stream: JournalHandle,
    pub syslog: Arc<SyslogStats>,
    pub stats: Arc<NodeStats>,
    pub udp_rcvbuf_bytes: Vec<(std::net::SocketAddr, usize)>,
    pub intake: listen::IntakeGauge,
    pub snmp: Option<crate::snmp::SharedReceiver>,
    pub snmp_listener: Arc<crate::snmp::ListenerStats>,
    pub shutdown: watch::Receiver<bool>,
    /// One per `[[sink]]`, in config order.
    pub sinks: Vec<Arc<crate::sink::SinkStats>>,
    /// This node's side of the pair (`[pair]`); `None` for a single node.
    pub pair: Option<Arc<crate::pair::Pair>>,
    /// What readers of the stream may see (committed end) and whether this node publishes.
    pub gate: Arc<Gate>,
    /// The HA driver's snapshot and inbox (pair only).
    pub ha: Option<HaHandle>,
    /// Each data-dir area's entries per second over the last minute (status' hours of history).
    pub rates: Arc<crate::disk::RateWindow>,
}

/// The node's handle on its HA driver.
pub struct HaHandle {
    pub view: Arc<Mutex<Option<HaView>>>,
    pub events: tokio::sync::mpsc::UnboundedSender<crate::pair::driver::Event>,
    pub settings: crate::pair::ha_config::HaSettings,
    /// The lease the writer checks before each append, and its clock: `status` checks the
    /// view's `publishing` against them (the view is the core's state at its last event).
    pub lease: Arc<crate::pair::writer::Lease>,
    pub clock: crate::pair::writer::Clock,
}

pub fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("twinrx-rt")
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(run_async(cfg))
}

pub(crate) fn open_journal(
    dir: std::path::PathBuf,
    what: &str,
    fsync: journal::FsyncPolicy,
    cfg: &NodeConfig,
    retention: journal::Retention,
) -> anyhow::Result<Journal> {
    let opts = Options {
        segment_bytes_max: cfg.segment_bytes_max,
        fsync,
        retention,
        compression: cfg.journal_compression,
    };
    open_journal_with(dir, what, opts)
}

/// Opens (recovers) a journal directory with `opts`, logging what recovery cut.
pub(crate) fn open_journal_with(
    dir: std::path::PathBuf,
    what: &str,
    opts: Options,
) -> anyhow::Result<Journal> {
    let (j, rec) = Journal::open(&dir, opts).with_context(|| {
        format!(
            "cannot open the {what} in {}; if it reports corruption, move the named segment \
             away and run `twinrx resync` to fetch it from the peer",
            dir.display()
        )
    })?;
    if rec.truncated_bytes > 0 {
        tracing::warn!(
            what,
            segment = ?rec.truncated_segment,
            bytes = rec.truncated_bytes,
            reason = rec.reason.as_deref().unwrap_or(""),
            "torn tail truncated on open"
        );
    }
    tracing::info!(what, dir = %dir.display(), last_seq = ?rec.last_seq, segments = rec.segments, "opened");
    Ok(j)
}

async fn run_async(mut cfg: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    apply_disk_budget(&mut cfg)?;
    // Before anything is opened: two nodes on one data dir would interleave journal writes.
    let _dir_lock = crate::datadir::lock(&cfg.data_dir, "node.lock", "node")?;
    let journal = open_journal(
        cfg.data_dir.join("journal"),
        "journal",
        cfg.journal_fsync,
        &cfg,
        cfg.retention,
    )?;
    // The stream's retention is applied by the thread that owns its writer: the stream
    // builder below on a single node, the pair's stream writer on a pair.
    let stream_j = open_journal_with(
        cfg.data_dir.join("stream"),
        "stream",
        Options {
            segment_bytes_max: cfg.stream_segment_bytes_max,
            fsync: cfg.stream_fsync,
            retention: cfg.stream_retention,
            compression: cfg.stream_compression,
        },
    )?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let syslog = Arc::new(SyslogStats::default());
    let stats = Arc::new(NodeStats::default());
    let (tx, rx) = Intake::new(cfg.queue_bytes_max);

    // Bind everything first: a port in use must fail start-up, not a later task.
    let lopts = ListenerOptions {
        connections_per_source_max: cfg.connections_per_source_max,
        idle_timeout: cfg.idle_timeout,
        keepalive: cfg.keepalive,
        tls_handshake_timeout: cfg.tls_handshake_timeout,
        ..ListenerOptions::new(cfg.message_bytes_max, cfg.rate, cfg.connections_max)
    };
    let mut rcvbufs = Vec::new();
    let mut tasks = Vec::new();
    for addr in &cfg.syslog_udp {
        let (sock, got) = listen::bind_udp(*addr, cfg.udp_rcvbuf_bytes)
            .with_context(|| format!("cannot bind syslog.udp {addr}"))?;
        if got < cfg.udp_rcvbuf_bytes {
            tracing::warn!(%addr, asked = cfg.udp_rcvbuf_bytes, got, "UDP receive buffer capped by the kernel: raise net.core.rmem_max");
        }
        rcvbufs.push((*addr, got));
        tasks.push(tokio::spawn(listen::run_udp(
            sock,
            lopts.clone(),
            tx.clone(),
            syslog.clone(),
            shutdown.clone(),
        )));
    }
    for addr in &cfg.syslog_tcp {
        let l =
            listen::bind_tcp(*addr).with_context(|| format!("cannot bind syslog.tcp {addr}"))?;
        tasks.push(tokio::spawn(listen::run_tcp(
            l,
            None,
            lopts.clone(),
            tx.clone(),
            syslog.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(tls) = &cfg.tls {
        let acceptor = listen::tls_acceptor(
            &tls.cert,
            &tls.key,
            tls.client_ca.as_deref(),
            tls.client_cert == ClientCert::Required,
        )
        .map_err(|e| anyhow::anyhow!("syslog TLS: {e}"))?;
        for addr in &cfg.syslog_tls {
            let l = listen::bind_tcp(*addr)
                .with_context(|| format!("cannot bind syslog.tls {addr}"))?;
            tasks.push(tokio::spawn(listen::run_tcp(
                l,
                Some(acceptor.clone()),
                lopts.clone(),
                tx.clone(),
                syslog.clone(),
                shutdown.clone(),
            )));
        }
    }
    let snmp_core = if cfg.snmp.listen.is_empty() {
        None
    } else {
        let engine = crate::snmp::load_engine(&cfg.data_dir, cfg.snmp.engine_id.as_deref())?;
        tracing::info!(engine_id = %crate::snmp::hex(&engine.engine_id), boots = engine.boots, "snmp engine");
        Some(crate::snmp::new_receiver(&cfg.snmp, engine)?)
    };
    let snmp_stats = Arc::new(crate::snmp::ListenerStats::default());
    if let Some(core) = &snmp_core {
        for addr in &cfg.snmp.listen {
            let (sock, got) = listen::bind_udp(*addr, cfg.udp_rcvbuf_bytes)
                .with_context(|| format!("cannot bind snmp.listen {addr}"))?;
            rcvbufs.push((*addr, got));
            tasks.push(tokio::spawn(crate::snmp::run(
                Arc::new(sock),
                core.clone(),
                cfg.snmp.rate,
                cfg.snmp.core.max_message_bytes,
                tx.clone(),
                snmp_stats.clone(),
                shutdown.clone(),
            )));
        }
    }
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("cannot bind admin.listen {}", cfg.admin_listen))?;
    let intake_gauge = tx.gauge();
    drop(tx);
    let gate = Gate::new(cfg.pair.is_none());
    // Sinks read committed stream entries on threads of their own: never on the receive path.
    let sinks = crate::sink::start(
        &cfg.sinks,
        stream_j.handle(),
        cfg.stream_hold_bytes_max,
        gate.clone(),
        tokio::runtime::Handle::current(),
        shutdown.clone(),
    )?;

    // The links and the copy of the peer's journal: tasks of their own, off the receive path.
    // A new data directory on a pair: the peer may hold this node's older journal (a replaced
    // disk, F15); the journal must continue after it, so that no seq is reused.
    let mut journal = journal;
    let fresh = cfg.pair.is_some()
        && journal.next_seq() == Seq::FIRST
        && stream_j.next_seq() == Seq::FIRST
        && crate::pair::writer::load_epoch(&cfg.data_dir)?.is_none();
    let (pair, pair_rt) = match &cfg.pair {
        Some(p) => {
            let (pair, rt, gate) =
                crate::pair::start(p.clone(), &cfg, journal.handle(), fresh, shutdown.clone())
                    .await?;
            if let Some(g) = gate {
                g.settle(&mut journal, p.peer).await;
            }
            (Some(pair), Some(rt))
        }
        None => (None, None),
    };

    let stream_h = stream_j.handle();
    let rt = tokio::runtime::Handle::current();
    // The stream: the HA driver and its disk writer on a pair, the stream builder alone.
    let (ha, stream_thread, driver_task) = match (&pair, &cfg.ha) {
        (Some(pair), Some(settings)) => {
            let (h, thread, task) = crate::pair::start_ha(
                pair.clone(),
                settings.clone(),
                &cfg,
                stream_j,
                journal.handle(),
                gate.clone(),
                stats.clone(),
                rt.clone(),
            )?;
            (Some(h), thread, Some(task))
        }
        _ => {
            let (rt, stats, jh, shutdown, name) = (
                rt.clone(),
                stats.clone(),
                journal.handle(),
                shutdown.clone(),
                cfg.name,
            );
            let thread = std::thread::Builder::new()
                .name("stream-builder".into())
                .spawn(move || stream_builder(stream_j, jh, name, rt, stats, shutdown))
                .context("cannot start the stream builder")?;
            (None, thread, None)
        }
    };
    let node = Arc::new(Node {
        journal: journal.handle(),
        stream: stream_h,
        cfg: cfg.clone(),
        started: SystemTime::now(),
        syslog: syslog.clone(),
        stats: stats.clone(),
        udp_rcvbuf_bytes: rcvbufs,
        intake: intake_gauge,
        snmp: snmp_core,
        snmp_listener: snmp_stats,
        shutdown: shutdown.clone(),
        sinks: sinks.stats.clone(),
        pair,
        gate,
        ha,
        rates: Arc::new(crate::disk::RateWindow::default()),
    });
    let sampler = tokio::spawn(sample_rates(node.clone()));

    let writer = {
        let (rt, stats, shutdown, policy) = (
            rt.clone(),
            stats.clone(),
            shutdown.clone(),
            cfg.journal_fsync,
        );
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || journal_writer(journal, policy, rx, rt, stats, shutdown))
            .context("cannot start the journal writer")?
    };
    let builder = stream_thread;
    let admin = tokio::spawn(crate::admin::serve(admin_listener, node.clone()));
    tracing::info!(
        node = %cfg.name,
        syslog_udp = ?cfg.syslog_udp, syslog_tcp = ?cfg.syslog_tcp, syslog_tls = ?cfg.syslog_tls,
        snmp = ?cfg.snmp.listen,
        admin = %cfg.admin_listen,
        "node running"
    );

    wait_for_signal().await;
    if let Some(h) = &node.ha {
        // SIGTERM of the active hands over first (SPEC F2); a standby says it leaves.
        tracing::info!("stopping: handing over");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = h.events.send(crate::pair::driver::Event::Shutdown(tx));
        let wait = Duration::from_millis(h.settings.core.get().handover_timeout_ms + 1000);
        if tokio::time::timeout(wait, rx).await.is_err() {
            tracing::warn!("handover did not complete in time; stopping anyway");
        }
    }
    if let Some(t) = driver_task {
        // Ends the driver (after `ShutdownReady`, or now): its disk writer then finishes.
        t.abort();
        let _ = t.await;
    }
    tracing::info!("stopping: draining receivers, journal and stream");
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let pair_result = match pair_rt {
        Some(rt) => rt.stop().await,
        None => Ok(()),
    };
    let writer_result = tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("joining the journal writer")?;
    let builder_result = tokio::task::spawn_blocking(move || builder.join())
        .await
        .context("joining the stream builder")?;
    tokio::task::spawn_blocking(move || sinks.join())
        .await
        .context("joining the sinks")?;
    admin.abort();
    sampler.abort();
    pair_result?;
    match (writer_result, builder_result) {
        (Ok(Ok(())), Ok(Ok(()))) => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        (Ok(Err(e)), _) | (_, Ok(Err(e))) => Err(e),
        _ => anyhow::bail!("a pipeline thread panicked"),
    }
}

/// Sets the limits of the keys left unset from the filesystem holding `data_dir`
/// (`crate::disk`), and logs them: before any journal is opened, which takes its retention.
fn apply_disk_budget(cfg: &mut NodeConfig) -> anyhow::Result<()> {
    let fs_bytes = crate::disk::fs_size_bytes(&cfg.data_dir).with_context(|| {
        format!(
            "cannot read the size of the filesystem holding data_dir {} (statvfs)",
            cfg.data_dir.display()
        )
    })?;
    if let Err(problems) = cfg.apply_disk_budget(fs_bytes) {
        let mut msg = format!(
            "{}: {} problem{} with the disk budget",
            cfg.path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in problems {
            msg.push_str("\n  ");
            msg.push_str(&p);
        }
        anyhow::bail!(msg);
    }
    if let Some(l) = &cfg.disk {
        for w in &l.warnings {
            tracing::warn!(warning = %w, "disk budget");
        }
        tracing::info!(
            fs_bytes = l.fs_bytes,
            journal_bytes_max = l.journal.bytes_max,
            journal_limit = l.journal.source.as_str(),
            peer_bytes_max = l.peer.map(|p| p.bytes_max),
            stream_bytes_max = l.stream.bytes_max,
            stream_limit = l.stream.source.as_str(),
            hold_bytes_max = l.hold_bytes_max,
            "disk budget"
        );
    }
    Ok(())
}

/// Samples each area's end seq for the status' rates, until aborted at shutdown.
async fn sample_rates(node: Arc<Node>) {
    let end = |h: &JournalHandle| h.durable_seq().map_or(0, |s| s.0);
    let mut tick = tokio::time::interval(crate::disk::RATE_SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let peer = node.pair.as_ref().map_or(0, |p| end(&p.copy));
        node.rates.sample(
            Instant::now(),
            [end(&node.journal), peer, end(&node.stream)],
        );
    }
}

/// Resolves at the first SIGTERM or SIGINT (shared by the node and the witness).
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            // Without signal handlers the node can still be stopped by SIGKILL; it loses
            // nothing that was fsynced.
            std::future::pending::<()>().await
        }
    }
}

/// Records (and bytes) per journal append at most: one fsync covers a batch.
const WRITE_BATCH_RECORDS_MAX: usize = 8192;
const WRITE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Least time between two retention passes run because a journal went over its byte limit.
pub(crate) const RETENTION_OVER_EVERY: Duration = Duration::from_millis(250);

/// Runs a retention pass when `j` holds more than its `retention.bytes_max` (at most every
/// [`RETENTION_OVER_EVERY`]): under a steady flood an area then stays within its limit (the
/// disk budget's shares) instead of growing by up to a timed pass's interval of traffic.
/// Returns whether a pass is due and was put off (the caller runs this again soon, or the last
/// batch of a burst would leave the area over its limit until the next timed pass).
fn retention_if_over(j: &mut Journal, last: &mut Instant, what: &str) -> bool {
    if !j.over_bytes_max() {
        return false;
    }
    if last.elapsed() < RETENTION_OVER_EVERY {
        return true;
    }
    *last = Instant::now();
    if let Err(e) = j.enforce_retention(SystemTime::now()) {
        tracing::warn!(what, error = %e, "retention failed");
    }
    false
}

fn journal_writer(
    mut journal: Journal,
    policy: journal::FsyncPolicy,
    mut rx: IntakeRx,
    rt: tokio::runtime::Handle,
    stats: Arc<NodeStats>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last_over = Instant::now();
    let tick = Duration::from_millis(5);
    let mut last_retention = Instant::now();
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    loop {
        let first = rt.block_on(async { tokio::time::timeout(tick, rx.recv()).await });
        let first = match first {
            Ok(Some(b)) => b,
            Ok(None) => break, // every listener has stopped
            Err(_) => {
                if let Err(e) = journal.sync_if_due(Instant::now()) {
                    note_journal_error(&stats, &e.to_string());
                }
                if last_retention.elapsed() > Duration::from_secs(10) {
                    last_retention = Instant::now();
                    if let Err(e) = journal.enforce_retention(SystemTime::now()) {
                        tracing::warn!(error = %e, "journal retention failed");
                    }
                }
                // The last batch of a burst may have left the journal over its limit.
                // (The idle tick calls it again within 5 ms if it was put off.)
                retention_if_over(&mut journal, &mut last_over, "journal");
                continue;
            }
        };
        let mut acks = Vec::new();
        let mut bytes = 0usize;
        encoded.clear();
        let mut next = Some(first);
        // The batches (and their share of the intake budget) are kept until their records are
        // in the journal: status `journal.queued_bytes` counts records not yet journaled, the
        // batch being written included (it was 0 while an append waited on a slow fsync).
        let mut held = Vec::new();
        while let Some(mut b) = next.take() {
            for r in &b.records {
                let e = r.encode();
                bytes += e.len();
                encoded.push(e);
            }
            if let Some(a) = b.durable.take() {
                acks.push(a);
            }
            held.push(b);
            if encoded.len() < WRITE_BATCH_RECORDS_MAX && bytes < WRITE_BATCH_BYTES_MAX {
                next = rx.try_recv().ok();
            }
        }
        let started = Instant::now();
        stats.journal_busy_since_ms.store(unix_ms(), Relaxed);
        crate::fault::hold(crate::fault::Part::Journal);
        let mut attempts = 0u32;
        // An empty batch only carries a durability signal (a retransmitted inform's answer):
        // what came before it was appended in an earlier round.
        while !encoded.is_empty() {
            match journal.append_batch(encoded.iter()) {
                Ok(_) => {
                    if stats.journal_failing.swap(false, Relaxed) {
                        tracing::info!("journal appends resumed");
                    }
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    note_journal_error(&stats, &e.to_string());
                    if *shutdown.borrow() && attempts >= 3 {
                        stats
                            .journal_lost_at_shutdown
                            .fetch_add(encoded.len() as u64, Relaxed);
                        tracing::error!(records = encoded.len(), error = %e, "stopping with records the journal could not take");
                        return Ok(());
                    }
                    // The journal stays consistent (the failed append was rolled back); the
                    // receivers queue up behind us and UDP drops are counted. Retry, after a
                    // retention pass: on a full disk it is what frees space.
                    std::thread::sleep(Duration::from_millis(200));
                    if let Err(e) = journal.enforce_retention(SystemTime::now()) {
                        tracing::warn!(error = %e, "journal retention failed");
                    }
                }
            }
        }
        drop(held);
        if !acks.is_empty() && !matches!(policy, journal::FsyncPolicy::Batch) {
            // Informs are answered only once durable, whatever the policy.
            if let Err(e) = journal.sync() {
                note_journal_error(&stats, &e.to_string());
                continue;
            }
        }
        stats.journal_busy_since_ms.store(0, Relaxed);
        for a in acks {
            let _ = a.send(());
        }
        stats
            .journal_appended
            .fetch_add(encoded.len() as u64, Relaxed);
        stats.journal_batches.fetch_add(1, Relaxed);
        stats
            .journal_last_batch_us
            .store(started.elapsed().as_micros() as u64, Relaxed);
        if let Err(e) = journal.sync_if_due(Instant::now()) {
            note_journal_error(&stats, &e.to_string());
        }
        retention_if_over(&mut journal, &mut last_over, "journal");
    }
    journal.sync().context("final journal fsync")?;
    Ok(())
}

fn note_journal_error(stats: &NodeStats, e: &str) {
    stats.journal_append_errors.fetch_add(1, Relaxed);
    if !stats.journal_failing.swap(true, Relaxed) {
        tracing::error!(error = %e, "journal append failed: not accepting until it succeeds");
    }
    if let Ok(mut last) = stats.journal_last_error.lock() {
        *last = Some(e.to_string());
    }
}

/// The journal seq after the last one the stream already holds for `node`.
fn stream_resume_point(stream: &JournalHandle, node: NodeId) -> anyhow::Result<Seq> {
    let Some(last) = stream.durable_seq() else {
        return Ok(Seq::FIRST);
    };
    let recs = stream
        .read(last, 1, usize::MAX)
        .context("reading the last stream entry")?;
    let Some((_, line)) = recs.first() else {
        return Ok(Seq::FIRST);
    };
    let head = EntryHead::parse(line)
        .with_context(|| format!("stream entry {} is not valid JSON", last.0 - 1))?;
    Ok(head
        .seqs_of(node)
        .max()
        .map(Seq::next)
        .unwrap_or(Seq::FIRST))
}

/// How often the stream builder applies `[stream]` retention (as the journal writer does the
/// journal's).
const STREAM_RETENTION_EVERY: Duration = Duration::from_secs(10);

fn stream_builder(
    mut stream: Journal,
    jh: JournalHandle,
    me: NodeId,
    rt: tokio::runtime::Handle,
    stats: Arc<NodeStats>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last_over = Instant::now();
    let from = stream_resume_point(&stream.handle(), me)?;
    let mut tail = jh.tail(from);
    let mut position = from;
    // The journal keeps what the stream does not hold yet, whatever its retention.
    let journal_hold = jh.register_reader("stream builder", from);
    // A single node folds nothing: its stream needs no earlier entry to go on, so the
    // stream's retention is bounded by its consumers' holds only (sinks).
    let mut last_retention = Instant::now();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut received: Vec<i64> = Vec::new();
    let mut stopping = false;
    loop {
        if stopping {
            // Catch up with what is durable, then stop.
            let durable = jh.durable_seq().map(|s| s.0).unwrap_or(0);
            if position.0 > durable {
                break;
            }
        }
        if last_retention.elapsed() >= STREAM_RETENTION_EVERY {
            last_retention = Instant::now();
            if let Err(e) = stream.enforce_retention(SystemTime::now()) {
                tracing::warn!(error = %e, "stream retention failed");
            }
        }
        let over_put_off = retention_if_over(&mut stream, &mut last_over, "stream");
        let batch = rt.block_on(async {
            tokio::select! {
                b = tail.next_batch(4096, 8 * 1024 * 1024) => Some(b),
                _ = shutdown.changed(), if !stopping => None,
                _ = tokio::time::sleep(Duration::from_millis(100)), if stopping => None,
                // Wakes an idle builder for the next retention pass.
                _ = tokio::time::sleep(STREAM_RETENTION_EVERY), if !stopping => Some(Ok(Vec::new())),
                // Or sooner for the one put off over the limit.
                _ = tokio::time::sleep(RETENTION_OVER_EVERY), if over_put_off && !stopping => {
                    Some(Ok(Vec::new()))
                }
            }
        });
        let batch = match batch {
            None => {
                stopping = true;
                continue;
            }
            Some(Ok(b)) => b,
            Some(Err(journal::Error::Closed)) => {
                stopping = true;
                continue;
            }
            Some(Err(e)) => {
                if let Ok(mut last) = stats.stream_last_error.lock() {
                    *last = Some(e.to_string());
                }
                tracing::error!(error = %e, "stream builder cannot read the journal");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let Some((last, _)) = batch.last() else {
            continue;
        };
        position = last.next();
        lines.clear();
        received.clear();
        let base = stream.next_seq().0 - 1;
        for (i, (seq, payload)) in batch.iter().enumerate() {
            let offset = Offset(base + i as u64);
            let line = match Record::decode(payload) {
                Ok(rec) => {
                    received.push(rec.received_at.0);
                    let (line, parsed) =
                        stream::entry_json(offset, Epoch(0), &[(me, *seq)], false, &rec, &[]);
                    parsed.count(&stats);
                    line
                }
                Err(e) => {
                    // The journal CRC passed, so this is a version mismatch or a bug: keep
                    // the record in the stream, marked, rather than lose it.
                    stats.stream_bad_records.fetch_add(1, Relaxed);
                    tracing::error!(seq = seq.0, error = %e, "undecodable journal record");
                    stream::undecodable_entry(
                        offset,
                        Epoch(0),
                        me,
                        *seq,
                        payload,
                        &e.to_string(),
                        receiver::key::KeyBuilder::new("undecodable")
                            .part(payload)
                            .finish(),
                        listen::now_unix_nanos(),
                        &[],
                    )
                }
            };
            lines.push(line);
        }
        loop {
            match stream.append_batch(lines.iter()) {
                Ok(_) => break,
                Err(e) => {
                    if let Ok(mut last) = stats.stream_last_error.lock() {
                        *last = Some(e.to_string());
                    }
                    tracing::error!(error = %e, "stream append failed; retrying");
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    // On a full disk, retention is what frees space.
                    if let Err(e) = stream.enforce_retention(SystemTime::now()) {
                        tracing::warn!(error = %e, "stream retention failed");
                    }
                }
            }
        }
        if let Ok(mut last) = stats.stream_last_error.lock() {
            *last = None;
        }
        journal_hold.advance(position);
        stats.stream_entries.fetch_add(lines.len() as u64, Relaxed);
        let now = listen::now_unix_nanos().0;
        for at in &received {
            stats
                .stream_latency
                .record_us((now.saturating_sub(*at) / 1000).max(0) as u64);
        }
    }
    stream.sync().context("final stream fsync")?;
    Ok(())
}
