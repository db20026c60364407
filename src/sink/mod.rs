//! Sinks: forwarders from the merged stream to Kafka, files and stdout (SPEC "Data flow").
//!
//! Each configured `[[sink]]` runs on an OS thread of its own ([`start`]). It reads only
//! committed entries of the stream journal (`JournalHandle::read` never returns anything
//! beyond the durable seq), so it never sees an entry a restart could take back, and it never
//! blocks the receive path: the stream builder does not wait for any sink, and a sink that
//! falls behind (its target down, F14) only leaves entries on disk, held there by the sink's
//! registered reader: from the start (at the stream's first entry until the target says what
//! it holds), at the offset after the last one delivered.
//!
//! The hold has a ceiling, `[stream] hold_bytes_max` (`JournalHandle::register_reader_capped`):
//! a sink that stays down while more than that piles up no longer holds retention, whose
//! oldest entries then go anyway. When the sink reads on, the entries it never delivered are
//! gone: it records the gap (`gap_entries`, a `status` problem and a log line naming the
//! offsets lost) and goes on at the first retained offset. A target that is empty starts at
//! the first retained offset too.
//!
//! The contract of a [`Sink`] (the target-specific part):
//! - [`Sink::open`] (re)connects and reads back what the target already holds: the last
//!   delivered entry's offset and epoch. The driver resumes at the offset after it, so
//!   nothing is re-sent and nothing skipped, whatever happened before (a crash mid-batch
//!   included: the target must make a batch visible all or nothing, or let the read-back find
//!   a torn end and cut it).
//! - [`Sink::deliver`] delivers one batch of consecutive entries.
//! - Errors are [`SinkError::Retry`] (the driver backs off exponentially, capped, then calls
//!   `open` again, which re-reads the target) or [`SinkError::Fenced`] (another forwarder
//!   took over the target: the driver logs, counts and stops delivering for good).
//!
//! Epoch fencing groundwork (SPEC "Epochs"): the driver refuses (logs, counts, does not
//! deliver) an entry whose epoch is lower than the highest epoch the target already holds.

pub mod config;
mod file;
mod kafka;
mod stdout;

pub use config::{SinkConfig, SinkKind};

use journal::{JournalHandle, ReaderGuard};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use twinrx_types::Seq;

/// One stream entry handed to a sink: its offset, epoch and JSON line (no trailing LF).
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: u64,
    pub epoch: u64,
    pub line: Vec<u8>,
}

/// The last entry a target holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub offset: u64,
    pub epoch: u64,
}

/// What [`Sink::open`] found in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The target holds entries; resume after this one.
    After(Delivered),
    /// The target holds none: start at the stream's first offset.
    Empty,
    /// Nothing can be read back (stdout to a pipe): start at this offset.
    At(u64),
}

#[derive(Debug)]
pub enum SinkError {
    /// Transient (target down, timeout, I/O error): back off, re-open, re-read the target.
    Retry(String),
    /// Another forwarder owns the target now; deliver nothing more.
    Fenced(String),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Retry(e) => f.write_str(e),
            SinkError::Fenced(e) => write!(f, "fenced: {e}"),
        }
    }
}

/// A target the driver forwards the stream to. See the module docs for the contract.
pub trait Sink: Send {
    /// (Re)connects and reads back the last entry the target holds.
    fn open(&mut self) -> Result<Resume, SinkError>;
    /// Delivers consecutive entries (never empty).
    fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError>;
}

/// What a sink is doing, as shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkState {
    Starting,
    /// Connected; delivering or waiting for new entries.
    Delivering,
    /// The last open or delivery failed; retrying with backoff.
    Retrying,
    /// Fenced by a newer forwarder of the same target: delivers nothing more.
    Fenced,
    /// The next entry has a lower epoch than the target holds: not delivered.
    EpochRefused,
    /// This node of a pair does not publish (standby): the sink waits.
    Standby,
    Stopped,
}

impl SinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Starting => "starting",
            SinkState::Delivering => "delivering",
            SinkState::Retrying => "retrying",
            SinkState::Fenced => "fenced",
            SinkState::EpochRefused => "epoch_refused",
            SinkState::Standby => "standby",
            SinkState::Stopped => "stopped",
        }
    }
}

/// Counters and state of one sink, read by `/status` and `/metrics`.
#[derive(Debug)]
pub struct SinkStats {
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    /// The next stream offset to deliver (valid once `positioned`).
    pub next_offset: AtomicU64,
    pub positioned: AtomicBool,
    /// Highest epoch the target holds (read back or delivered).
    pub epoch: AtomicU64,
    pub delivered_entries: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub opens: AtomicU64,
    pub fenced: AtomicU64,
    pub epoch_refused: AtomicU64,
    /// When the call into the target in progress (open or deliver) started, Unix ms; 0 when
    /// none is: a target that hangs shows as a call that lasts.
    pub call_started_ms: AtomicU64,
    /// Entries stream retention deleted before this sink delivered them (it stayed down past
    /// `[stream] hold_bytes_max`), and how many such gaps.
    pub gap_entries: AtomicU64,
    pub gaps: AtomicU64,
    /// The last gap in words (offsets lost), shown by `status` until the node restarts.
    pub last_gap: Mutex<Option<String>>,
    /// Offsets below this are counted in `gap_entries` already: a sink that re-reads its
    /// target after each failure meets the same gap again.
    gap_counted_end: AtomicU64,
    /// `[stream] hold_bytes_max`: the most this sink keeps from retention.
    pub hold_bytes_max: u64,
    /// The stream, to tell a sink that retention has already passed (`status`).
    stream: StreamRef,
    state: Mutex<(SinkState, Option<String>)>,
}

/// The stream journal a sink reads (no `Debug` of its own).
struct StreamRef(Option<JournalHandle>);

impl std::fmt::Debug for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamRef")
    }
}

impl SinkStats {
    fn new(cfg: &SinkConfig, stream: Option<JournalHandle>, hold_bytes_max: u64) -> SinkStats {
        let target = match &cfg.kind {
            SinkKind::Kafka(k) => format!("{}/{}", k.brokers, k.topic),
            SinkKind::File(f) => f.path.display().to_string(),
            SinkKind::Stdout(_) => "stdout".into(),
        };
        SinkStats {
            name: cfg.name.clone(),
            kind: cfg.kind.as_str(),
            target,
            next_offset: AtomicU64::new(0),
            positioned: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            delivered_entries: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            epoch_refused: AtomicU64::new(0),
            call_started_ms: AtomicU64::new(0),
            gap_entries: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            last_gap: Mutex::new(None),
            gap_counted_end: AtomicU64::new(0),
            hold_bytes_max,
            stream: StreamRef(stream),
            state: Mutex::new((SinkState::Starting, None)),
        }
    }

    /// Offsets `[next, first retained)` that retention has deleted and this sink has not
    /// delivered yet (it will record them as a gap when it reads on), if any.
    pub fn lost_ahead(&self) -> Option<(u64, u64)> {
        let first = self.stream.0.as_ref()?.first_seq().0.saturating_sub(1);
        let next = self.next_offset.load(Relaxed);
        (self.positioned.load(Relaxed) && next < first).then_some((next, first))
    }

    fn last_gap(&self) -> Option<String> {
        self.last_gap.lock().ok().and_then(|g| g.clone())
    }

    pub fn state(&self) -> (SinkState, Option<String>) {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or((SinkState::Stopped, Some("state lock poisoned".into())))
    }

    fn set_state(&self, st: SinkState, error: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = st;
            if error.is_some() || st == SinkState::Delivering {
                s.1 = error;
            }
        }
    }

    /// Entries committed in the stream and not yet delivered; `stream_next` is the stream's
    /// next offset (its entry count).
    pub fn lag(&self, stream_next: u64) -> u64 {
        stream_next.saturating_sub(self.next_offset.load(Relaxed))
    }

    /// How long the call into the target in progress has lasted, ms.
    pub fn call_ms(&self) -> Option<u64> {
        match self.call_started_ms.load(Relaxed) {
            0 => None,
            t => Some(unix_ms().saturating_sub(t)),
        }
    }

    /// Runs a call into the target, timing it for [`SinkStats::call_ms`].
    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        self.call_started_ms.store(unix_ms().max(1), Relaxed);
        let r = f();
        self.call_started_ms.store(0, Relaxed);
        r
    }

    /// The last delivered offset, if any.
    pub fn delivered_offset(&self) -> Option<u64> {
        if !self.positioned.load(Relaxed) {
            return None;
        }
        self.next_offset.load(Relaxed).checked_sub(1)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A call into the target lasting longer than this is a problem in `status`.
const CALL_SLOW_MS: u64 = 5_000;

/// The running sinks.
pub struct Sinks {
    pub stats: Vec<Arc<SinkStats>>,
    threads: Vec<(String, std::thread::JoinHandle<()>)>,
}

impl Sinks {
    /// Waits for every sink thread to stop (they stop at the next batch boundary once the
    /// shutdown signal is set; a Kafka call in progress ends within its `timeout_ms`).
    pub fn join(self) {
        for (name, t) in self.threads {
            if t.join().is_err() {
                tracing::error!(sink = %name, "sink thread panicked");
            }
        }
    }
}

/// Starts one thread per configured sink, reading the stream journal `stream`.
/// Each holds back the stream's retention at what it has not delivered, up to
/// `hold_bytes_max` (`[stream] hold_bytes_max`).
pub fn start(
    cfgs: &[SinkConfig],
    stream: JournalHandle,
    hold_bytes_max: u64,
    gate: Arc<crate::pair::driver::Gate>,
    rt: tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Sinks> {
    use anyhow::Context as _;
    let mut out = Sinks {
        stats: Vec::new(),
        threads: Vec::new(),
    };
    for cfg in cfgs {
        let stats = Arc::new(SinkStats::new(cfg, Some(stream.clone()), hold_bytes_max));
        let sink: Box<dyn Sink> = match &cfg.kind {
            SinkKind::Kafka(k) => Box::new(kafka::KafkaSink::new(
                &cfg.name,
                k.clone(),
                cfg.batch_records_max,
                rt.clone(),
            )),
            SinkKind::File(f) => Box::new(file::FileSink::new(&cfg.name, f.clone())),
            SinkKind::Stdout(s) => Box::new(stdout::StdoutSink::new(s.clone(), stream.clone())),
        };
        let driver = Driver {
            cfg: cfg.clone(),
            stream: stream.clone(),
            gate: gate.clone(),
            stats: stats.clone(),
            rt: rt.clone(),
            shutdown: shutdown.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("sink-{}", cfg.name))
            .spawn(move || driver.run(sink))
            .with_context(|| format!("cannot start the thread of sink {}", cfg.name))?;
        tracing::info!(sink = %cfg.name, kind = stats.kind, target = %stats.target, "sink started");
        out.stats.push(stats);
        out.threads.push((cfg.name.clone(), t));
    }
    Ok(out)
}

/// Bytes of entries read from the stream per batch at most (past the first entry).
const BATCH_BYTES_MAX: usize = 8 << 20;

struct Driver {
    cfg: SinkConfig,
    stream: JournalHandle,
    /// Committed end and whether this node publishes (a pair's standby delivers nothing).
    gate: Arc<crate::pair::driver::Gate>,
    stats: Arc<SinkStats>,
    rt: tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
}

/// Why the inner delivery loop ended.
enum Stop {
    Shutdown,
    Reopen,
    Fenced,
    /// This node stopped publishing: wait until it publishes again, then re-open.
    Standby,
}

/// The stream fields a sink needs from each entry.
#[derive(serde::Deserialize)]
struct Head {
    offset: u64,
    epoch: u64,
}

/// Offset and epoch of an entry line (what every sink writes and reads back).
pub fn parse_head(line: &[u8]) -> Option<Delivered> {
    let h: Head = serde_json::from_slice(line).ok()?;
    Some(Delivered {
        offset: h.offset,
        epoch: h.epoch,
    })
}

impl Driver {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps `d`, or less if the node is stopping. Returns true when stopping.
    fn pause(&self, d: Duration) -> bool {
        let mut sd = self.shutdown.clone();
        self.rt.block_on(async {
            tokio::select! {
                r = sd.wait_for(|s| *s) => r.is_ok(),
                _ = tokio::time::sleep(d) => false,
            }
        }) || self.stopping()
    }

    fn note_error(&self, st: SinkState, e: &SinkError) {
        self.stats.errors.fetch_add(1, Relaxed);
        self.stats.set_state(st, Some(e.to_string()));
    }

    fn run(self, mut sink: Box<dyn Sink>) {
        let name = self.cfg.name.clone();
        let mut backoff = self.cfg.backoff_min;
        // Until the target says what it holds, hold everything (within the ceiling): a sink
        // whose target is down at start must not lose what it had not delivered.
        let mut guard = self.hold(self.stream.first_seq().0.saturating_sub(1));
        loop {
            if self.stopping() || !self.wait_active() {
                break;
            }
            self.stats.opens.fetch_add(1, Relaxed);
            let resume = match self.stats.timed(|| sink.open()) {
                Ok(r) => r,
                Err(SinkError::Fenced(e)) => {
                    self.fenced(&e);
                    if self.wait_deposed() {
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, retry_in_ms = backoff.as_millis() as u64, "sink cannot open its target; retrying");
                    self.note_error(SinkState::Retrying, &e);
                    if self.pause(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    continue;
                }
            };
            let (next, epoch) = match resume {
                Resume::After(d) => (d.offset + 1, d.epoch),
                Resume::Empty => (self.stream.first_seq().0.saturating_sub(1), 0),
                Resume::At(o) => (o, 0),
            };
            tracing::info!(sink = %name, next_offset = next, target_epoch = epoch, resume = ?resume, "sink resumes");
            self.stats.next_offset.store(next, Relaxed);
            self.stats.positioned.store(true, Relaxed);
            self.stats.epoch.fetch_max(epoch, Relaxed);
            self.stats.set_state(SinkState::Delivering, None);
            // Positions only move forward and a lapsed guard holds nothing: a new one at
            // what the target says (registered before the old one goes, so that nothing is
            // released in between).
            drop(std::mem::replace(&mut guard, self.hold(next)));
            match self.deliver_loop(&mut *sink, next, epoch, &mut guard, &mut backoff) {
                Stop::Shutdown => break,
                Stop::Fenced => {
                    if !self.wait_deposed() {
                        break;
                    }
                }
                Stop::Standby => {
                    tracing::info!(sink = %name, "node no longer publishes: sink paused");
                    self.stats.set_state(SinkState::Standby, None);
                }
                Stop::Reopen => {
                    if self.pause(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                }
            }
        }
        let (st, _) = self.stats.state();
        if st != SinkState::Fenced {
            self.stats.set_state(SinkState::Stopped, None);
        }
        tracing::info!(sink = %name, next_offset = self.stats.next_offset.load(Relaxed), "sink stopped");
    }

    /// A guard holding the stream's retention at `offset` and after, up to the ceiling.
    fn hold(&self, offset: u64) -> ReaderGuard {
        self.stream.register_reader_capped(
            &format!("sink {}", self.cfg.name),
            Seq(offset + 1),
            self.stats.hold_bytes_max,
        )
    }

    /// Retention deleted `[next, first)` before this sink delivered it: records the gap
    /// (counter, status, log line naming the offsets) so that the sink can go on at `first`.
    fn record_gap(&self, next: u64, first: u64) {
        let counted = self.stats.gap_counted_end.fetch_max(first, Relaxed);
        let new_from = counted.max(next);
        if new_from >= first {
            return; // the same gap, met again after a re-open
        }
        self.stats.gap_entries.fetch_add(first - new_from, Relaxed);
        self.stats.gaps.fetch_add(1, Relaxed);
        let lost = first - next;
        let msg = format!(
            "offsets {next}..={} ({lost} entries) were deleted by stream retention before this \
             sink delivered them (it was down while more than stream.hold_bytes_max = {} bytes \
             piled up); it went on at offset {first}",
            first - 1,
            self.stats.hold_bytes_max
        );
        tracing::error!(
            sink = %self.cfg.name,
            first_lost = next,
            last_lost = first - 1,
            entries = lost,
            resume_offset = first,
            hold_bytes_max = self.stats.hold_bytes_max,
            "sink gap: stream retention deleted entries this sink never delivered"
        );
        if let Ok(mut g) = self.stats.last_gap.lock() {
            *g = Some(msg);
        }
    }

    /// After a fence: on a pair, waits until this node has stopped publishing (it was deposed;
    /// when it is promoted again it fences the other forwarder in turn) and returns true; on a
    /// single node returns false (nothing delivers any more).
    fn wait_deposed(&self) -> bool {
        if !self.gate.pair {
            return false;
        }
        let mut active = self.gate.active.subscribe();
        let mut sd = self.shutdown.clone();
        self.rt.block_on(async {
            tokio::select! {
                r = active.wait_for(|a| !*a) => r.is_ok(),
                _ = sd.wait_for(|s| *s) => false,
            }
        }) && !self.stopping()
    }

    /// Waits until this node publishes; false if it is stopping first.
    fn wait_active(&self) -> bool {
        if *self.gate.active.borrow() {
            return true;
        }
        self.stats.set_state(SinkState::Standby, None);
        let mut active = self.gate.active.subscribe();
        let mut sd = self.shutdown.clone();
        self.rt.block_on(async {
            tokio::select! {
                r = active.wait_for(|a| *a) => r.is_ok(),
                _ = sd.wait_for(|s| *s) => false,
            }
        }) && !self.stopping()
    }

    fn fenced(&self, e: &str) {
        self.stats.fenced.fetch_add(1, Relaxed);
        self.stats.errors.fetch_add(1, Relaxed);
        self.stats
            .set_state(SinkState::Fenced, Some(format!("fenced: {e}")));
        tracing::error!(
            sink = %self.cfg.name,
            error = %e,
            "sink fenced: another forwarder with the same transactional id took over; delivering nothing more (restart the node to take it back)"
        );
    }

    fn deliver_loop(
        &self,
        sink: &mut dyn Sink,
        mut next: u64,
        mut epoch: u64,
        guard: &mut ReaderGuard,
        backoff: &mut Duration,
    ) -> Stop {
        let name = &self.cfg.name;
        let mut sub = self.stream.subscribe();
        let mut commits = self.gate.committed.subscribe();
        let mut active = self.gate.active.subscribe();
        loop {
            if self.stopping() {
                return Stop::Shutdown;
            }
            if !*active.borrow_and_update() {
                return Stop::Standby;
            }
            let durable = self.stream.durable_seq().map(|s| s.0).unwrap_or(0);
            let committed = durable.min(*commits.borrow_and_update());
            if committed <= next {
                let mut sd = self.shutdown.clone();
                self.rt.block_on(async {
                    tokio::select! {
                        _ = sub.changed() => {},
                        _ = commits.changed() => {},
                        _ = active.changed() => {},
                        _ = sd.wait_for(|s| *s) => {},
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                    }
                });
                continue;
            }
            // Committed entries only: the durable end of a pair's active runs ahead of what
            // the standby holds, and an entry delivered past the commit point may be written
            // differently at the same offset by the next active (SPEC G3).
            let max = usize::try_from(committed - next)
                .unwrap_or(usize::MAX)
                .min(self.cfg.batch_records_max);
            let recs = match self.stream.read(Seq(next + 1), max, BATCH_BYTES_MAX) {
                Ok(r) => r,
                Err(journal::Error::Gone { first, .. }) if first.0 > next + 1 => {
                    // Receiving never waits for a consumer: the entries are gone, the sink
                    // says so and goes on with the oldest one retained.
                    let first = first.0 - 1;
                    self.record_gap(next, first);
                    next = first;
                    self.stats.next_offset.store(next, Relaxed);
                    drop(std::mem::replace(guard, self.hold(next)));
                    continue;
                }
                Err(e) => {
                    let e = SinkError::Retry(format!("cannot read stream offset {next}: {e}"));
                    tracing::error!(sink = %name, offset = next, error = %e, "sink cannot read the stream");
                    self.note_error(SinkState::Retrying, &e);
                    return Stop::Reopen;
                }
            };
            let mut batch = Vec::with_capacity(recs.len());
            for (seq, line) in recs {
                let want = seq.0 - 1;
                match parse_head(&line) {
                    Some(h) if h.offset == want => batch.push(Entry {
                        offset: h.offset,
                        epoch: h.epoch,
                        line: crate::stream::into_consumer_line(line),
                    }),
                    other => {
                        let e = SinkError::Retry(format!(
                            "stream entry at offset {want} is not a valid entry (head {other:?})"
                        ));
                        tracing::error!(sink = %name, offset = want, "sink found a stream entry it cannot read");
                        self.note_error(SinkState::Retrying, &e);
                        return Stop::Reopen;
                    }
                }
            }
            // SPEC "Epochs": anything from a lower epoch than the target holds is rejected.
            if let Some(i) = batch.iter().position(|e| e.epoch < epoch) {
                if i == 0 {
                    let e = &batch[0];
                    self.stats.epoch_refused.fetch_add(1, Relaxed);
                    let msg = format!(
                        "entry {} has epoch {}, below epoch {epoch} already in the target: not delivered",
                        e.offset, e.epoch
                    );
                    tracing::error!(sink = %name, offset = e.offset, entry_epoch = e.epoch, target_epoch = epoch, "sink refuses an entry from an older epoch");
                    self.stats.set_state(SinkState::EpochRefused, Some(msg));
                    *backoff = self.cfg.backoff_max;
                    return Stop::Reopen;
                }
                batch.truncate(i);
            }
            match self.stats.timed(|| sink.deliver(&batch)) {
                Ok(()) => {
                    let last = batch.last().expect("a read returns at least one entry");
                    next = last.offset + 1;
                    epoch = epoch.max(last.epoch);
                    self.stats.next_offset.store(next, Relaxed);
                    self.stats.epoch.fetch_max(epoch, Relaxed);
                    self.stats
                        .delivered_entries
                        .fetch_add(batch.len() as u64, Relaxed);
                    self.stats.batches.fetch_add(1, Relaxed);
                    if self.stats.state().0 != SinkState::Delivering {
                        tracing::info!(sink = %name, next_offset = next, "sink delivering again");
                        self.stats.set_state(SinkState::Delivering, None);
                    }
                    guard.advance(Seq(next + 1));
                    *backoff = self.cfg.backoff_min;
                }
                Err(SinkError::Fenced(e)) => {
                    self.fenced(&e);
                    return Stop::Fenced;
                }
                Err(e) => {
                    tracing::warn!(sink = %name, offset = next, entries = batch.len(), error = %e, retry_in_ms = backoff.as_millis() as u64, "sink delivery failed; will re-open and re-read the target");
                    self.note_error(SinkState::Retrying, &e);
                    return Stop::Reopen;
                }
            }
        }
    }
}

/// The `sinks` array of the status document; `stream_next` is the stream's next offset.
pub fn status_json(sinks: &[Arc<SinkStats>], stream_next: u64) -> Value {
    Value::Array(
        sinks
            .iter()
            .map(|s| {
                let (state, last_error) = s.state();
                json!({
                    "name": s.name,
                    "type": s.kind,
                    "target": s.target,
                    "state": state.as_str(),
                    "delivered_offset": s.delivered_offset(),
                    "next_offset": s.next_offset.load(Relaxed),
                    "lag_entries": s.lag(stream_next),
                    "epoch": s.epoch.load(Relaxed),
                    "delivered": s.delivered_entries.load(Relaxed),
                    "batches": s.batches.load(Relaxed),
                    "errors": s.errors.load(Relaxed),
                    "fenced": s.fenced.load(Relaxed),
                    "epoch_refused": s.epoch_refused.load(Relaxed),
                    "call_ms": s.call_ms(),
                    "last_error": last_error,
                    "gap_entries": s.gap_entries.load(Relaxed),
                    "gaps": s.gaps.load(Relaxed),
                    "last_gap": s.last_gap(),
                    "hold_bytes_max": s.hold_bytes_max,
                })
            })
            .collect(),
    )
}

/// Problems of the sinks in plain words, for the status page.
pub fn problems(sinks: &[Arc<SinkStats>], stream_next: u64) -> Vec<String> {
    let mut out = Vec::new();
    for s in sinks {
        let (state, err) = s.state();
        let err = err.unwrap_or_default();
        let lag = s.lag(stream_next);
        if let Some((next, first)) = s.lost_ahead() {
            out.push(format!(
                "sink {}: stream retention deleted offsets {next}..={} ({} entries) before this \
                 sink delivered them (it held more than stream.hold_bytes_max = {} bytes); it \
                 goes on at offset {first} once {} takes entries again",
                s.name,
                first - 1,
                first - next,
                s.hold_bytes_max,
                s.target
            ));
        } else if let Some(g) = s.last_gap() {
            out.push(format!("sink {}: {g}", s.name));
        }
        match state {
            SinkState::Retrying => out.push(format!(
                "sink {}: {err}; {lag} entries waiting on disk, delivered in order once it recovers",
                s.name
            )),
            SinkState::Fenced => out.push(format!(
                "sink {}: {err}; this node delivers nothing more to {}",
                s.name, s.target
            )),
            SinkState::EpochRefused => out.push(format!("sink {}: {err}", s.name)),
            _ => {
                if let Some(ms) = s.call_ms().filter(|ms| *ms > CALL_SLOW_MS) {
                    out.push(format!(
                        "sink {}: waiting {} s for {} ({lag} entries waiting on disk)",
                        s.name,
                        ms / 1000,
                        s.target
                    ));
                }
            }
        }
    }
    out
}

/// Metric families of the sinks: (name, help, is_counter, [(sink, type, value)]).
pub type Family<'a> = (
    &'static str,
    &'static str,
    bool,
    Vec<(&'a str, &'a str, u64)>,
);

pub fn metric_families(sinks: &[Arc<SinkStats>], stream_next: u64) -> Vec<Family<'_>> {
    let per = |f: &dyn Fn(&SinkStats) -> u64| -> Vec<(&str, &str, u64)> {
        sinks
            .iter()
            .map(|s| (s.name.as_str(), s.kind, f(s)))
            .collect()
    };
    vec![
        (
            "twinrx_sink_delivered_entries",
            "Stream entries delivered by the sink since start",
            true,
            per(&|s| s.delivered_entries.load(Relaxed)),
        ),
        (
            "twinrx_sink_batches",
            "Batches (Kafka transactions, file writes) delivered",
            true,
            per(&|s| s.batches.load(Relaxed)),
        ),
        (
            "twinrx_sink_errors",
            "Failed opens and deliveries (each retried with backoff)",
            true,
            per(&|s| s.errors.load(Relaxed)),
        ),
        (
            "twinrx_sink_fenced",
            "Times the sink was fenced by a newer forwarder of the same target",
            true,
            per(&|s| s.fenced.load(Relaxed)),
        ),
        (
            "twinrx_sink_epoch_refused",
            "Times an entry was refused for an epoch below the target's",
            true,
            per(&|s| s.epoch_refused.load(Relaxed)),
        ),
        (
            "twinrx_sink_gap_entries",
            "Stream entries deleted by retention before the sink delivered them (it stayed \
             down past stream.hold_bytes_max)",
            true,
            per(&|s| s.gap_entries.load(Relaxed)),
        ),
        (
            "twinrx_sink_next_offset",
            "Next stream offset the sink delivers",
            false,
            per(&|s| s.next_offset.load(Relaxed)),
        ),
        (
            "twinrx_sink_lag_entries",
            "Committed stream entries not yet delivered",
            false,
            per(&|s| s.lag(stream_next)),
        ),
        (
            "twinrx_sink_up",
            "1 while the sink is connected and delivering",
            false,
            per(&|s| u64::from(s.state().0 == SinkState::Delivering)),
        ),
    ]
}

/// Reads the last complete line of `f` (ending at `end`, which is just past a LF), scanning
/// backwards in chunks. Lines are entries: at most a few hundred KiB.
pub(crate) fn last_line_before(f: &std::fs::File, end: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt;
    if end == 0 {
        return Ok(None);
    }
    // `end - 1` is the LF ending the last line; look for the LF before it.
    let line_end = end - 1;
    let mut pos = line_end;
    let mut chunk = vec![0u8; 64 * 1024];
    while pos > 0 {
        let n = chunk.len().min(pos as usize);
        let from = pos - n as u64;
        f.read_exact_at(&mut chunk[..n], from)?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            let start = from + i as u64 + 1;
            return read_range(f, start, line_end).map(Some);
        }
        pos = from;
    }
    read_range(f, 0, line_end).map(Some)
}

fn read_range(f: &std::fs::File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (to - from) as usize];
    f.read_exact_at(&mut buf, from)?;
    Ok(buf)
}

/// The length of `f` up to and including its last LF: what remains after cutting a torn
/// last line (a write cut short by a crash).
pub(crate) fn complete_len(f: &std::fs::File, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut pos = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while pos > 0 {
        let n = chunk.len().min(pos as usize);
        let from = pos - n as u64;
        f.read_exact_at(&mut chunk[..n], from)?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        pos = from;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A target in memory: starts holding `held`, records every delivered offset.
    struct Memory {
        held: Option<Delivered>,
        got: Arc<Mutex<Vec<u64>>>,
    }

    impl Sink for Memory {
        fn open(&mut self) -> Result<Resume, SinkError> {
            let got = self.got.lock().expect("lock");
            Ok(match (got.last(), self.held) {
                (Some(o), _) => Resume::After(Delivered {
                    offset: *o,
                    epoch: self.held.map(|h| h.epoch).unwrap_or(0),
                }),
                (None, Some(h)) => Resume::After(h),
                (None, None) => Resume::Empty,
            })
        }
        fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
            self.got
                .lock()
                .expect("lock")
                .extend(batch.iter().map(|e| e.offset));
            Ok(())
        }
    }

    /// Runs the driver over a stream of entries with `epochs`, against a target that
    /// already holds `held`; returns the delivered offsets and the stats once `until` holds.
    fn drive(
        tag: &str,
        epochs: &[u64],
        held: Option<Delivered>,
        committed: u64,
        until: impl Fn(&SinkStats) -> bool,
    ) -> (Vec<u64>, Arc<SinkStats>) {
        drive_with(tag, epochs, held, committed, None, until)
    }

    /// [`drive`] on a stream whose retention (`bytes_max`, segments of 200 bytes) ran once
    /// after every entry was appended in batches of one.
    fn drive_with(
        tag: &str,
        epochs: &[u64],
        held: Option<Delivered>,
        committed: u64,
        retention_bytes_max: Option<u64>,
        until: impl Fn(&SinkStats) -> bool,
    ) -> (Vec<u64>, Arc<SinkStats>) {
        let dir = std::env::temp_dir().join(format!("twinrx-sink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = match retention_bytes_max {
            None => journal::Options::default(),
            Some(b) => journal::Options {
                segment_bytes_max: 200,
                retention: journal::Retention {
                    bytes_max: Some(b),
                    age_max_ms: None,
                },
                ..journal::Options::default()
            },
        };
        let (mut j, _) = journal::Journal::open(&dir, opts).expect("journal");
        let lines: Vec<Vec<u8>> = epochs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{{\"offset\":{i},\"epoch\":{e}}}").into_bytes())
            .collect();
        for l in &lines {
            j.append_batch(std::iter::once(l)).expect("append");
        }
        if retention_bytes_max.is_some() {
            j.enforce_retention(std::time::SystemTime::now())
                .expect("retention");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = watch::channel(false);
        let cfg = SinkConfig {
            name: "mem".into(),
            batch_records_max: 2,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            kind: SinkKind::Stdout(config::StdoutConfig {
                start_at: config::StartAt::Start,
            }),
        };
        let stats = Arc::new(SinkStats::new(&cfg, Some(j.handle()), 1 << 30));
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = crate::pair::driver::Gate::new(true);
        gate.committed.send_replace(committed);
        let driver = Driver {
            cfg,
            stream: j.handle(),
            gate,
            stats: stats.clone(),
            rt: rt.handle().clone(),
            shutdown: rx,
        };
        let sink = Memory {
            held,
            got: got.clone(),
        };
        let t = std::thread::spawn(move || driver.run(Box::new(sink)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !until(&stats) {
            assert!(
                std::time::Instant::now() < deadline,
                "driver did not get there"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        tx.send(true).expect("shutdown");
        t.join().expect("driver thread");
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
        let got = got.lock().expect("lock").clone();
        (got, stats)
    }

    #[test]
    fn resumes_after_what_the_target_holds() {
        let (got, stats) = drive(
            "resume",
            &[0; 7],
            Some(Delivered {
                offset: 2,
                epoch: 0,
            }),
            u64::MAX,
            |s| s.next_offset.load(Relaxed) == 7,
        );
        assert_eq!(got, vec![3, 4, 5, 6]);
        assert_eq!(stats.delivered_offset(), Some(6));
        assert_eq!(stats.lag(7), 0);
    }

    #[test]
    fn entries_retention_deleted_before_delivery_are_a_gap_and_the_sink_goes_on() {
        // The target holds offset 2; retention has since deleted up to some offset F > 3.
        let (got, stats) = drive_with(
            "gap",
            &[0; 60],
            Some(Delivered {
                offset: 2,
                epoch: 0,
            }),
            u64::MAX,
            Some(600),
            |s| s.next_offset.load(Relaxed) == 60,
        );
        let first = *got.first().expect("delivered some");
        assert!(first > 3, "retention deleted offsets 3.. ({got:?})");
        assert_eq!(got, (first..60).collect::<Vec<_>>(), "from F on, in order");
        assert_eq!(stats.gap_entries.load(Relaxed), first - 3);
        assert_eq!(stats.gaps.load(Relaxed), 1);
        let gap = stats.last_gap().expect("a gap in words");
        assert!(gap.contains(&format!("offsets 3..={}", first - 1)), "{gap}");
        let problems = problems(std::slice::from_ref(&stats), 60);
        assert!(
            problems.iter().any(|p| p.contains("offsets 3..=")),
            "{problems:?}"
        );
    }

    #[test]
    fn an_empty_target_starts_at_the_first_retained_offset_without_a_gap() {
        let (got, stats) = drive_with("empty", &[0; 60], None, u64::MAX, Some(600), |s| {
            s.next_offset.load(Relaxed) == 60
        });
        let first = *got.first().expect("delivered some");
        assert!(first > 0, "retention deleted the first entries");
        assert_eq!(got, (first..60).collect::<Vec<_>>());
        assert_eq!(stats.gap_entries.load(Relaxed), 0);
    }

    #[test]
    fn an_entry_from_a_lower_epoch_than_the_target_holds_is_refused_and_counted() {
        // The target holds offset 1 of epoch 3; the stream goes on in epoch 3, then an
        // entry of epoch 2 (a deposed writer's): delivered up to it, never past it.
        let (got, stats) = drive(
            "epoch",
            &[3, 3, 3, 3, 2, 3],
            Some(Delivered {
                offset: 1,
                epoch: 3,
            }),
            u64::MAX,
            |s| s.epoch_refused.load(Relaxed) >= 2,
        );
        assert_eq!(
            got,
            vec![2, 3],
            "delivered up to the lower epoch, not past it"
        );
        assert_eq!(stats.state().0, SinkState::Stopped);
        assert_eq!(stats.lag(6), 2);
    }

    /// Caught by sink_e2e::kafka_pair_failover_under_load_topic_holds_every_entry_once: the
    /// active's sink read a whole batch from the durable end, past the commit point; the
    /// active was killed, the new one published its own entries from the commit point, and
    /// the topic held the old active's at those offsets.
    #[test]
    fn delivers_committed_entries_only_even_when_more_are_durable() {
        // 7 durable entries, 3 committed, batches of 2: [0, 1], then [2] alone.
        let (got, stats) = drive("committed", &[1; 7], None, 3, |s| {
            s.next_offset.load(Relaxed) >= 3
        });
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(stats.next_offset.load(Relaxed), 3);
    }

    #[test]
    fn last_line_and_torn_tail() {
        let dir = std::env::temp_dir().join(format!("twinrx-sink-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("f");
        let mut f = std::fs::File::create(&p).expect("create");
        let long = "x".repeat(100_000);
        write!(
            f,
            "{{\"offset\":0,\"epoch\":0}}\n{{\"offset\":1,\"epoch\":2,\"p\":\"{long}\"}}\n{{\"offs"
        )
        .expect("write");
        drop(f);
        let f = std::fs::File::open(&p).expect("open");
        let len = f.metadata().expect("meta").len();
        let end = complete_len(&f, len).expect("scan");
        assert_eq!(len - end, 6);
        let last = last_line_before(&f, end).expect("read").expect("a line");
        assert_eq!(
            parse_head(&last),
            Some(Delivered {
                offset: 1,
                epoch: 2
            })
        );
        let first = last_line_before(&f, 23).expect("read").expect("a line");
        assert_eq!(parse_head(&first).map(|d| d.offset), Some(0));
        assert_eq!(last_line_before(&f, 0).expect("read"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
