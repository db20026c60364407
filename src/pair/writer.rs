//! The pair's disk FIFO: one OS thread that owns the merged-stream journal, the epoch file and,
//! while this node publishes, the `dedup` merger over this node's journal and the copy of the
//! peer's journal (SPEC "Data flow").
//!
//! Contract (the HA core's driving contract, `ha/README.md`): commands are carried out in the
//! order received, each completely (fsynced) before the next: `Persist` (epoch file: temp,
//! fsync, rename, dir fsync), `Truncate`, `Accept` (entries replicated from the active),
//! `Start`/`Extend`/`Stop` publishing. Every append is reported as `Appended{upto}` once
//! durable, every persist as `Persisted`, in that order, on the driver's event channel.
//!
//! The stream log: each stored line is one entry (consumers read it) that also carries the
//! merger's `Matched` facts produced since the previous entry (`matches`). The merger's state
//! after a failover is a fold of the lines (`Progress`) and an index of open entries
//! (`history::SpillHistory`: bounded memory, the rest in sorted runs under
//! `<data_dir>/history`), both kept here for every line stored — accepted or published — so a
//! promotion starts the merger at once. Facts produced after the last stored entry are not
//! stored; they are re-derived by the next merger (the records are fed again and matched
//! through the history), so nothing is lost or doubled.
//!
//! Publishing: entries are appended only while the shared [`Lease`] allows the epoch at `now`
//! (checked right before each append, on the driver's clock; the driver updates it at once). When publishing stops or the lease lapses, the merger is
//! dropped and the fold and index are rebuilt from the stored lines.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dedup::{Merger, Output};
use ha::{EpochState, Run};
use journal::{Journal, JournalHandle, Tail};
use receiver::record::Record;
use tokio::sync::mpsc;
use twinrx_types::{Epoch, Millis, NodeId, Offset, Seq, UnixNanos};

use crate::node::NodeStats;
use crate::pair::fold::{Checkpoints, Fold};
use crate::stream;

/// The monotonic clock shared by the HA driver and the writer (lease checks).
#[derive(Clone, Copy, Debug)]
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(std::time::Instant::now())
    }
    pub fn now(&self) -> Millis {
        Millis(u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
    pub fn instant_of(&self, m: Millis) -> std::time::Instant {
        self.0 + Duration::from_millis(m.0)
    }
}

/// The lease the writer checks before every append: `(epoch, until)`, set by the driver at
/// once when the HA core starts, extends or stops publishing (not through the FIFO, so a long
/// batch sees the newest renewal, and a stop takes effect before queued work).
#[derive(Debug, Default)]
pub struct Lease(std::sync::Mutex<(Epoch, Millis)>);

impl Lease {
    pub fn set(&self, epoch: Epoch, until: Millis) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (epoch, until);
    }
    /// Raises the lease of the current epoch.
    pub fn extend(&self, until: Millis) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = g.1.max(until);
    }
    /// Revokes it (publishing stops).
    pub fn revoke(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1 = Millis(0);
    }
    /// Entries of `epoch` may be appended at `now`.
    pub fn allows(&self, epoch: Epoch, now: Millis) -> bool {
        let (e, until) = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        e == epoch && now < until
    }
}

/// What the driver asks of the disk.
#[derive(Debug)]
pub enum DiskCmd {
    Persist(EpochState),
    Truncate(Offset),
    /// Empty the stream and continue it at `start` (the active's first retained offset), the
    /// fold starting from `base` (the merger's progress at the active's checkpoint): see
    /// [`Fold::restart_at`].
    Restart {
        start: Offset,
        base: Option<(Offset, dedup::Progress)>,
    },
    Accept {
        from: Offset,
        upto: Offset,
        epoch: Epoch,
        lines: Vec<Vec<u8>>,
    },
    Start {
        epoch: Epoch,
        from: Offset,
    },
    Stop,
}

/// What the disk reports back.
#[derive(Debug)]
pub enum DiskDone {
    Persisted(EpochState),
    Appended(Offset),
    /// A command failed (disk error); the message says what.
    Failed(String),
}

/// The epoch file (`DATA_DIR/epoch.json`).
pub fn load_epoch(data_dir: &Path) -> anyhow::Result<Option<EpochState>> {
    let p = data_dir.join("epoch.json");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON; restore it or run `twinrx resync`",
            p.display()
        )
    })?;
    let field = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("{}: field {k} missing or not a number", p.display()))
    };
    Ok(Some(EpochState {
        epoch: Epoch(field("epoch")?),
        log_epoch: Epoch(field("log_epoch")?),
    }))
}

pub fn store_epoch(data_dir: &Path, st: EpochState) -> std::io::Result<()> {
    use std::io::Write as _;
    let p = data_dir.join("epoch.json");
    let tmp = data_dir.join("epoch.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(
        f,
        "{}",
        serde_json::json!({"epoch": st.epoch.0, "log_epoch": st.log_epoch.0})
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(data_dir)?.sync_all()
}

struct Publishing {
    epoch: Epoch,
    merger: Merger,
    own: Tail,
    copy: Tail,
    /// `Matched` facts since the last entry built, as runs (stored with the next entry).
    pending: Vec<stream::MatchRun>,
}

pub struct Writer {
    pub stream: Journal,
    pub data_dir: PathBuf,
    pub me: NodeId,
    pub own: JournalHandle,
    pub copy: JournalHandle,
    pub dedup: dedup::ValidConfig,
    pub fold: Fold,
    pub checkpoints: Checkpoints,
    /// Entries below this offset are committed (the HA driver's gate).
    pub committed: tokio::sync::watch::Receiver<u64>,
    pub clock: Clock,
    pub stats: Arc<NodeStats>,
    pub cmds: mpsc::UnboundedReceiver<DiskCmd>,
    pub done: mpsc::UnboundedSender<DiskDone>,
    pub rt: tokio::runtime::Handle,
    pub lease: Arc<Lease>,
}

/// Retention holds on the two journals at the merger's position (what the stored stream has
/// accounted for): records not merged yet are never deleted.
struct Holds {
    own: journal::ReaderGuard,
    copy: journal::ReaderGuard,
}

/// Records per merger batch at most (one append and one fsync per batch).
const BATCH_RECORDS: usize = 2048;
const BATCH_BYTES: usize = 8 << 20;
/// The merger reports progress (health's `merger_stall_ms` is the time since the last report
/// while it has input) every this many records of a batch, and before the batch's append:
/// a large or slow batch on a busy machine is progress, a frozen pipeline is not.
const PROGRESS_EVERY: usize = 256;
/// Margin for a clock that steps back, when pruning the history index.
const CLOCK_STEP_MARGIN_MS: u64 = 60_000;

enum Next {
    Cmd(Option<DiskCmd>),
    Batch(NodeId, Result<Vec<(Seq, Vec<u8>)>, journal::Error>),
    Tick,
}

impl Writer {
    /// Runs until the command channel closes (the driver stopped); fsyncs at the end.
    pub fn run(mut self) -> anyhow::Result<()> {
        let mut publishing: Option<Publishing> = None;
        let mut copy_first = false;
        let mut last_prune = std::time::Instant::now();
        let mut last_over = std::time::Instant::now();
        let holds = Holds {
            own: self
                .own
                .register_reader("merger", self.fold.progress.consumed(self.me).next()),
            copy: self
                .copy
                .register_reader("merger", self.fold.progress.consumed(self.me.peer()).next()),
        };
        loop {
            let next = match publishing.as_mut() {
                None => {
                    let cmds = &mut self.cmds;
                    self.rt.block_on(async {
                        tokio::select! {
                            c = cmds.recv() => Next::Cmd(c),
                            // Wakes an idle writer for checkpoints and retention.
                            _ = tokio::time::sleep(Duration::from_secs(1)) => Next::Tick,
                        }
                    })
                }
                Some(p) => {
                    let cmds = &mut self.cmds;
                    // Commands first; then the journal not served last, so that under a flood
                    // to both nodes neither starves the other (a copy starved behind the own
                    // journal pairs only through the history, or after its entry left the
                    // stream, as a second event).
                    copy_first = !copy_first;
                    let (me, peer) = (self.me, self.me.peer());
                    self.rt.block_on(async {
                        if copy_first {
                            tokio::select! {
                                biased;
                                c = cmds.recv() => Next::Cmd(c),
                                b = p.copy.next_batch(BATCH_RECORDS, BATCH_BYTES) => Next::Batch(peer, b),
                                b = p.own.next_batch(BATCH_RECORDS, BATCH_BYTES) => Next::Batch(me, b),
                                _ = tokio::time::sleep(Duration::from_millis(100)) => Next::Tick,
                            }
                        } else {
                            tokio::select! {
                                biased;
                                c = cmds.recv() => Next::Cmd(c),
                                b = p.own.next_batch(BATCH_RECORDS, BATCH_BYTES) => Next::Batch(me, b),
                                b = p.copy.next_batch(BATCH_RECORDS, BATCH_BYTES) => Next::Batch(peer, b),
                                _ = tokio::time::sleep(Duration::from_millis(100)) => Next::Tick,
                            }
                        }
                    })
                }
            };
            match next {
                Next::Cmd(None) => break,
                Next::Cmd(Some(cmd)) => self.command(cmd, &mut publishing),
                Next::Batch(node, Ok(batch)) => {
                    if let Some(p) = publishing.as_mut() {
                        self.stats
                            .merger_busy_since_ms
                            .store(crate::node::unix_ms(), Relaxed);
                        crate::fault::hold(crate::fault::Part::Merger);
                        let published = self.publish(p, node, &batch);
                        // Not publishing is not a stall: rebuilding the merger's state after a
                        // lapsed lease (or a node woken from SIGSTOP) has no input to progress.
                        self.stats.merger_busy_since_ms.store(0, Relaxed);
                        if !published {
                            self.restart_publishing(&mut publishing);
                        }
                    }
                }
                Next::Batch(node, Err(e)) => {
                    tracing::error!(%node, error = %e, "merger cannot read a journal; restarting the merger from the stored stream");
                    self.note_error(format!("merger reading journal {node}: {e}"));
                    self.restart_publishing(&mut publishing);
                }
                Next::Tick => {
                    if let Some(p) = publishing.as_mut() {
                        p.merger.handle_tick(receiver::listen::now_unix_nanos());
                        if !self.lease.allows(p.epoch, self.clock.now()) {
                            self.stop_publishing(&mut publishing);
                        }
                    }
                }
            }
            let committed = *self.committed.borrow();
            self.checkpoints.maybe_store(&mut self.fold, committed);
            self.stats
                .merger_checkpoint
                .store(self.checkpoints.stored.map_or(0, |o| o.0 + 1), Relaxed);
            if let Ok(mut e) = self.stats.merger_checkpoint_error.lock() {
                e.clone_from(&self.checkpoints.last_error);
            }
            // Over its byte limit, the stream's retention runs at once (at most every
            // RETENTION_OVER_EVERY; the 100 ms and 1 s ticks bring the loop back here), so
            // that under a flood it stays within its share of the disk budget.
            if self.stream.over_bytes_max()
                && last_over.elapsed() >= crate::node::RETENTION_OVER_EVERY
            {
                last_over = std::time::Instant::now();
                self.enforce_retention();
            }
            if last_prune.elapsed() > Duration::from_secs(5) {
                last_prune = std::time::Instant::now();
                self.prune();
                self.enforce_retention();
                holds
                    .own
                    .advance(self.fold.progress.consumed(self.me).next());
                holds
                    .copy
                    .advance(self.fold.progress.consumed(self.me.peer()).next());
            }
        }
        self.stream.sync().context("final stream fsync")?;
        Ok(())
    }

    /// The merger made progress: its stall clock restarts (see [`PROGRESS_EVERY`]).
    fn progressed(&self) {
        self.stats
            .merger_busy_since_ms
            .store(crate::node::unix_ms(), Relaxed);
    }

    fn note_error(&self, e: String) {
        if let Ok(mut last) = self.stats.stream_last_error.lock() {
            *last = Some(e.clone());
        }
        let _ = self.done.send(DiskDone::Failed(e));
    }

    fn end(&self) -> Offset {
        Offset(self.stream.next_seq().0 - 1)
    }

    /// Bounds the history index: forgets open entries no record still to come can match
    /// (older than the horizon behind the peer's progress), and entries the stream's
    /// retention deleted (a copy arriving after its entry left the stream is a new entry:
    /// the default horizon is "what the stream retains").
    fn prune(&mut self) {
        let h = self.dedup.get().horizon_ms;
        for n in [NodeId::A, NodeId::B] {
            if let Some(before) = self
                .fold
                .progress
                .prunable_before(n, h, CLOCK_STEP_MARGIN_MS)
            {
                self.fold.history.prune(n, before);
            }
        }
        let first = self.stream.handle().first_seq();
        self.fold
            .history
            .prune_offsets_below(Offset(first.0.saturating_sub(1)));
        if let Ok(mut s) = self.stats.merger_history.lock() {
            *s = self.fold.history.stats();
        }
    }

    /// Deletes the stream's old segments past its retention, except what the merger's
    /// checkpoint, the sinks, the standby or a resync still hold.
    fn enforce_retention(&mut self) {
        match self.stream.enforce_retention(std::time::SystemTime::now()) {
            Ok(r) if r.segments_deleted > 0 => tracing::info!(
                segments = r.segments_deleted,
                bytes = r.bytes_deleted,
                first_offset = r.first_seq.0.saturating_sub(1),
                lapsed = ?r.lapsed,
                "merged stream: retention deleted old segments"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "stream retention failed"),
        }
    }

    /// Rebuilds the fold from the last stored checkpoint and the lines after it.
    fn refold(&mut self) {
        match Fold::restore(&self.stream.handle(), &self.data_dir) {
            Ok(f) => {
                self.fold = f;
                self.checkpoints.fold_replaced(&self.fold);
            }
            Err(e) => self.note_error(format!("rebuilding the merger state: {e:#}")),
        }
    }

    /// Empties the stream and continues it at `start`, with the fold of [`Fold::restart_at`]
    /// stored as the checkpoint (so a rebuild or a restart of the fold starts from it).
    fn restart_at(
        &mut self,
        start: Offset,
        base: Option<(Offset, dedup::Progress)>,
    ) -> anyhow::Result<()> {
        let first = self.stream.handle().first_seq();
        let (old_first, old_end) = (Offset(first.0 - 1), self.end());
        if self.stream.next_seq() > first {
            self.stream
                .truncate_from(first)
                .context("emptying the stream")?;
        }
        self.stream
            .reset_to(Seq(start.0 + 1))
            .context("continuing the stream at the new offset")?;
        let base = base.filter(|(at, _)| *at >= start);
        let mut fold = Fold::restart_at(&self.data_dir, start, base.map(|(_, p)| p))?;
        self.checkpoints
            .store_now(&mut fold, &self.stream.handle())
            .context("storing the merger checkpoint at the new start")?;
        self.fold = fold;
        match base {
            Some((at, p)) => tracing::warn!(
                old_first = old_first.0,
                old_end = old_end.0,
                start = start.0,
                base_at = at.0,
                consumed = ?p.consumed,
                "merged stream copy restarted at the active's first retained offset: the \
                 active's retention deleted the entries this node lacked"
            ),
            None => tracing::error!(
                old_first = old_first.0,
                old_end = old_end.0,
                start = start.0,
                "merged stream copy restarted at the active's first retained offset without \
                 the active's merger progress (it had no checkpoint): if this node takes over, \
                 its merger may publish the journals' old records again"
            ),
        }
        Ok(())
    }

    fn stop_publishing(&mut self, publishing: &mut Option<Publishing>) {
        if publishing.take().is_some() {
            // The merger may have consumed records whose outputs were not stored.
            self.refold();
        }
    }

    /// After a failed batch (disk error, lapsed lease, unreadable journal): drops the merger,
    /// rebuilds the state from the stored stream and, if the lease still runs, starts a new
    /// merger in the same epoch after a pause (the HA core sees the stall in the health).
    fn restart_publishing(&mut self, publishing: &mut Option<Publishing>) {
        let Some(p) = publishing.take() else { return };
        self.refold();
        std::thread::sleep(Duration::from_millis(200));
        if self.lease.allows(p.epoch, self.clock.now()) {
            self.command(
                DiskCmd::Start {
                    epoch: p.epoch,
                    from: self.end(),
                },
                publishing,
            );
        }
    }

    fn command(&mut self, cmd: DiskCmd, publishing: &mut Option<Publishing>) {
        match cmd {
            DiskCmd::Persist(st) => {
                // Retried until it succeeds (a full disk frees up, F11): everything after it in
                // the FIFO depends on it, and a vote that is not durable is never sent.
                let mut logged = false;
                loop {
                    match store_epoch(&self.data_dir, st) {
                        Ok(()) => {
                            if logged {
                                tracing::info!("epoch file persisted again");
                            }
                            let _ = self.done.send(DiskDone::Persisted(st));
                            break;
                        }
                        Err(e) => {
                            if !logged {
                                tracing::error!(error = %e, "cannot persist the epoch file; retrying");
                                self.note_error(format!("persisting the epoch file: {e}"));
                                logged = true;
                            }
                            if self.cmds.is_closed() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            }
            DiskCmd::Truncate(from) => {
                self.stop_publishing(publishing);
                if from < self.end() {
                    match self.stream.truncate_from(Seq(from.0 + 1)) {
                        Ok(()) => {
                            tracing::warn!(
                                from = from.0,
                                "merged stream: uncommitted suffix truncated"
                            );
                            self.refold();
                        }
                        Err(e) => {
                            self.note_error(format!("truncating the stream at {}: {e}", from.0))
                        }
                    }
                }
            }
            DiskCmd::Restart { start, base } => {
                self.stop_publishing(publishing);
                if let Err(e) = self.restart_at(start, base) {
                    tracing::error!(start = start.0, error = %format!("{e:#}"), "cannot restart the stream copy");
                    self.note_error(format!(
                        "restarting the stream copy at offset {}: {e:#}",
                        start.0
                    ));
                }
            }
            DiskCmd::Accept {
                from,
                upto,
                epoch,
                lines,
            } => {
                let end = self.end();
                if from != end || upto.0 - from.0 != lines.len() as u64 {
                    tracing::warn!(from = from.0, upto = upto.0, end = end.0, lines = lines.len(), "replicated entries do not continue the stream; ignored (the active resends)");
                    return;
                }
                let _ = epoch;
                // Retried until it succeeds (a full disk frees up, F11): the HA core already
                // counts these entries as in flight, and a failed append was rolled back.
                loop {
                    if self.append(&lines) {
                        for (i, l) in lines.iter().enumerate() {
                            self.fold.apply_line(Offset(from.0 + i as u64), l);
                        }
                        self.checkpoints
                            .maybe_take(&mut self.fold, &self.stream.handle(), true);
                        let _ = self.done.send(DiskDone::Appended(upto));
                        break;
                    }
                    if self.cmds.is_closed() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            DiskCmd::Start { epoch, from } => {
                let end = self.end();
                if from != end {
                    tracing::warn!(
                        from = from.0,
                        end = end.0,
                        "publishing starts where the stream ends"
                    );
                }
                let progress = self.fold.progress;
                self.store_consumed(&progress);
                let own_from = progress.consumed(self.me).next();
                let copy_from = progress.consumed(self.me.peer()).next();
                tracing::info!(
                    epoch = epoch.0,
                    offset = end.0,
                    own_from = own_from.0,
                    copy_from = copy_from.0,
                    "merger starts"
                );
                *publishing = Some(Publishing {
                    epoch,
                    merger: Merger::recover(self.dedup, progress),
                    own: self.own.tail(own_from),
                    copy: self.copy.tail(copy_from),
                    pending: Vec::new(),
                });
            }
            DiskCmd::Stop => self.stop_publishing(publishing),
        }
    }

    /// Appends and makes durable; false (and reported) on a disk error.
    fn append(&mut self, lines: &[Vec<u8>]) -> bool {
        if let Err(e) = self.stream.append_batch(lines.iter()) {
            self.note_error(format!("stream append: {e}"));
            return false;
        }
        let durable = self.stream.handle().durable_seq().map_or(0, |s| s.0);
        if durable + 1 < self.stream.next_seq().0 {
            if let Err(e) = self.stream.sync() {
                self.note_error(format!("stream fsync: {e}"));
                return false;
            }
        }
        if let Ok(mut last) = self.stats.stream_last_error.lock() {
            *last = None;
        }
        true
    }

    /// Feeds a batch of `node`'s records to the merger and stores the entries; false when
    /// publishing must stop (lease lapsed, disk or merger error).
    fn publish(&mut self, p: &mut Publishing, node: NodeId, batch: &[(Seq, Vec<u8>)]) -> bool {
        let before = p.merger.stats();
        let published = self.publish_batch(p, node, batch);
        if !published {
            // The batch's outputs are derived again by the next merger: count them then.
            return false;
        }
        let after = p.merger.stats();
        self.stats
            .merger_matched
            .fetch_add(after.matched - before.matched, Relaxed);
        self.stats
            .merger_matched_late
            .fetch_add(after.matched_late - before.matched_late, Relaxed);
        // The merger's own progress: a batch of copies only (no entry) is accounted for
        // although its facts are stored with the next entry.
        self.store_consumed(&p.merger.progress());
        true
    }

    /// Status `stream.merged_seq`: the records of each journal the merger has accounted for
    /// (set when a merger starts too, so that a new active that has nothing new to merge
    /// reports what its stream already holds).
    fn store_consumed(&self, progress: &dedup::Progress) {
        for (n, c) in [NodeId::A, NodeId::B]
            .into_iter()
            .zip(&self.stats.merger_consumed)
        {
            c.store(progress.consumed(n).0, Relaxed);
        }
    }

    fn publish_batch(
        &mut self,
        p: &mut Publishing,
        node: NodeId,
        batch: &[(Seq, Vec<u8>)],
    ) -> bool {
        let mut lines = Vec::with_capacity(batch.len());
        let mut received = Vec::with_capacity(batch.len());
        for (i, (seq, payload)) in batch.iter().enumerate() {
            if i % PROGRESS_EVERY == PROGRESS_EVERY - 1 {
                self.progressed();
            }
            let decoded = Record::decode(payload);
            let (key, at) = match &decoded {
                Ok(r) => (r.key, r.received_at),
                Err(_) => (
                    receiver::key::KeyBuilder::new("undecodable")
                        .part(payload)
                        .finish(),
                    p.merger.progress().newest.unwrap_or(UnixNanos(0)),
                ),
            };
            let rec = dedup::Record {
                node,
                seq: *seq,
                key,
                received_at: at,
            };
            let out = match p.merger.handle_record(rec, &self.fold.history) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(%node, seq = seq.0, error = %e, "merger refused a record");
                    self.note_error(format!("merger: {e}"));
                    return false;
                }
            };
            self.fold.history.apply(&out);
            match out {
                Output::Matched(m) => stream::MatchRun::push(&mut p.pending, &m),
                Output::Entry(e) => {
                    let line = match &decoded {
                        Ok(r) => {
                            received.push(r.received_at.0);
                            let (line, parsed) = stream::entry_json(
                                e.offset,
                                p.epoch,
                                &[(node, *seq)],
                                e.late,
                                r,
                                &p.pending,
                            );
                            parsed.count(&self.stats);
                            line
                        }
                        Err(err) => {
                            self.stats.stream_bad_records.fetch_add(1, Relaxed);
                            stream::undecodable_entry(
                                e.offset,
                                p.epoch,
                                node,
                                *seq,
                                payload,
                                &err.to_string(),
                                key,
                                at,
                                &p.pending,
                            )
                        }
                    };
                    p.pending.clear();
                    lines.push(line);
                }
            }
        }
        if lines.is_empty() {
            return true;
        }
        if !self.lease.allows(p.epoch, self.clock.now()) {
            tracing::info!("lease lapsed or publishing stopped before the append: entries dropped");
            return false;
        }
        self.progressed();
        if !self.append(&lines) {
            return false;
        }
        // While publishing the fold follows the merger (pending facts included); when
        // publishing stops it is rebuilt from the stored lines.
        let first = self.fold.upto;
        self.fold.progress = p.merger.progress();
        let upto = self.end();
        self.fold.upto = upto;
        if self.fold.runs.last().is_none_or(|r| r.epoch != p.epoch) {
            self.fold.runs.push(Run {
                epoch: p.epoch,
                start: first,
            });
        }
        // Exactly the fold of the stored lines only when no fact waits for the next entry.
        let exact = p.pending.is_empty();
        self.checkpoints
            .maybe_take(&mut self.fold, &self.stream.handle(), exact);
        self.stats
            .stream_entries
            .fetch_add(lines.len() as u64, Relaxed);
        let now = receiver::listen::now_unix_nanos().0;
        for at in &received {
            self.stats
                .stream_latency
                .record_us((now.saturating_sub(*at) / 1000).max(0) as u64);
        }
        let _ = self.done.send(DiskDone::Appended(upto));
        true
    }
}
