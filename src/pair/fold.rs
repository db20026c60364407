//! The merger's state as a fold of the stored stream, and its checkpoints (issue #14).
//!
//! [`Fold`] is what a merger starts from: [`Progress`], the open-entry index
//! ([`SpillHistory`]) and the runs per epoch, for every stored line. Folding the whole stream
//! at each start (or after each failover) costs time in proportion to its length, and the
//! stream's oldest lines may be gone (retention). So the writer takes a checkpoint now and
//! then ([`Checkpoints`]): an image of the fold at a line boundary `X`, stored in
//! `<data_dir>/history/checkpoint` once every line below `X` is committed (a committed line is
//! never truncated), after which the stream need keep only the lines from `X` on for the
//! merger. [`Fold::restore`] opens the last checkpoint and folds the lines after it; a
//! checkpoint that does not fit the stream (damaged, ahead of it, or a stream that changed
//! under it) is reported and the whole stored stream is folded instead.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use dedup::{Output, Progress};
use ha::Run;
use history::image::{Dec, Enc};
use history::SpillHistory;
use journal::JournalHandle;
use twinrx_types::{Epoch, Offset, Seq, UnixNanos};

use crate::pair::ha_config::CheckpointEvery;
use crate::stream::LogLine;

const FOLD_MAGIC: &[u8; 8] = b"TWXFLD01";
/// Open entries the history index keeps in memory (tests: a few, so runs are exercised).
const HISTORY_MEM_ENTRIES: usize = if cfg!(test) { 16 } else { 1 << 17 };

fn history_options() -> history::Options {
    history::Options {
        mem_entries_max: HISTORY_MEM_ENTRIES,
        // Tests: room for two runs' filters, so reading them back and evicting is exercised.
        filter_cache_bytes: if cfg!(test) {
            64
        } else {
            history::Options::default().filter_cache_bytes
        },
    }
}

/// The fold of a stored stream: merger progress, open-entry index, runs per epoch.
pub struct Fold {
    pub progress: Progress,
    pub history: SpillHistory,
    pub runs: Vec<Run>,
    /// Lines that could not be read back as merger outputs (counted, skipped).
    pub unreadable: u64,
    /// The lines folded: every offset below it.
    pub upto: Offset,
    /// Lines folded from the checkpoint it started from (0: none, the whole stream), and how.
    pub restored: Restored,
}

/// How a fold was built.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// The checkpoint's offset, when one was used.
    pub checkpoint: Option<Offset>,
    /// Lines folded after it (or from the start).
    pub lines_folded: u64,
    /// Why a stored checkpoint was not used.
    pub refused: Option<String>,
}

fn history_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("history")
}

fn checkpoint_path(data_dir: &Path) -> PathBuf {
    history_dir(data_dir).join("checkpoint")
}

impl Fold {
    /// An empty fold whose history index spills to `<data_dir>/history`.
    fn new(data_dir: &Path) -> anyhow::Result<Fold> {
        let dir = history_dir(data_dir);
        let history = SpillHistory::create(&dir, history_options())
            .with_context(|| format!("cannot create the history index in {}", dir.display()))?;
        Ok(Fold {
            progress: Progress::start(),
            history,
            runs: Vec::new(),
            unreadable: 0,
            upto: Offset(0),
            restored: Restored::default(),
        })
    }

    pub fn apply_line(&mut self, offset: Offset, line: &[u8]) {
        let parsed = LogLine::parse(line);
        let epoch = parsed.as_ref().map_or(Epoch(0), |l| Epoch(l.epoch));
        if self.runs.last().is_none_or(|r| r.epoch != epoch) {
            self.runs.push(Run {
                epoch,
                start: offset,
            });
        }
        let history = &mut self.history;
        let ok = parsed.as_ref().is_some_and(|l| {
            l.matches
                .iter()
                .all(|r| r.apply(&mut self.progress, |o| history.apply(o)).is_some())
        });
        match parsed.and_then(|l| l.entry()).filter(|_| ok) {
            Some(e) => {
                let out = Output::Entry(e);
                self.progress.apply(&out);
                self.history.apply(&out);
            }
            None => {
                self.unreadable += 1;
                self.progress.next_offset = offset.next();
            }
        }
        self.upto = offset.next();
    }

    /// Folds the stored lines from `self.upto` to the durable end.
    fn fold_rest(&mut self, stream: &JournalHandle) -> anyhow::Result<()> {
        let mut next = Seq(self.upto.0 + 1);
        let end = stream.durable_seq().map_or(0, |s| s.0);
        while next.0 <= end {
            let recs = stream
                .read(next, 4096, 16 << 20)
                .context("reading the merged stream back")?;
            let Some((last, _)) = recs.last() else { break };
            let last = *last;
            for (seq, line) in &recs {
                self.apply_line(Offset(seq.0 - 1), line);
                self.restored.lines_folded += 1;
            }
            next = last.next();
        }
        Ok(())
    }

    /// Reads the whole stored stream (from its first retained line).
    pub fn of_stream(stream: &JournalHandle, data_dir: &Path) -> anyhow::Result<Fold> {
        let mut fold = Fold::new(data_dir)?;
        fold.upto = Offset(stream.first_seq().0.saturating_sub(1));
        fold.fold_rest(stream)?;
        Ok(fold)
    }

    /// The fold of a follower's stream that restarts at `start` (issue #14: the active's
    /// retention deleted the entries this follower lacked): no line, no open entry, and the
    /// merger's progress `base`, which the active's last checkpoint (at an offset `X >=
    /// start`) holds. That is the exact progress at `X` and beyond once the lines `[start,
    /// X)` are folded on top (they account only for records `base` counts, and every record a
    /// merger consumed is named by some line, so the last line naming a node's record in
    /// `[start, X)` sets what `base` says), and too far ahead below `X`, where this node can
    /// never publish: every entry below `X` is committed, and a node that lacks committed
    /// entries is never promoted. Without `base` (the active had no checkpoint) the fold
    /// starts empty: a promotion would feed the journals again from their first records.
    pub fn restart_at(
        data_dir: &Path,
        start: Offset,
        base: Option<Progress>,
    ) -> anyhow::Result<Fold> {
        let mut fold = Fold::new(data_dir)?;
        fold.progress = base.unwrap_or_else(Progress::start);
        fold.progress.next_offset = start;
        fold.upto = start;
        Ok(fold)
    }

    /// The last stored checkpoint and the lines after it; the whole stream if there is no
    /// usable checkpoint.
    pub fn restore(stream: &JournalHandle, data_dir: &Path) -> anyhow::Result<Fold> {
        let refused = match Fold::from_checkpoint(stream, data_dir) {
            Ok(Some(mut fold)) => {
                fold.fold_rest(stream)?;
                return Ok(fold);
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "merger checkpoint not used; folding the whole stored stream");
                Some(format!("{e:#}"))
            }
        };
        let mut fold = Fold::of_stream(stream, data_dir)?;
        fold.restored.refused = refused;
        Ok(fold)
    }

    fn from_checkpoint(stream: &JournalHandle, data_dir: &Path) -> anyhow::Result<Option<Fold>> {
        let path = checkpoint_path(data_dir);
        let img = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut d = Dec::open(&img, FOLD_MAGIC).with_context(|| path.display().to_string())?;
        let upto = Offset(d.u64()?);
        let last_crc = d.u64()?;
        let end = stream.durable_seq().map_or(0, |s| s.0);
        anyhow::ensure!(
            upto.0 <= end,
            "the checkpoint is at offset {} but the stream ends at {end}",
            upto.0
        );
        anyhow::ensure!(
            stream.first_seq().0 <= upto.0 + 1,
            "the stream's first line ({}) is after the checkpoint ({})",
            stream.first_seq().0 - 1,
            upto.0
        );
        if let Some(crc) = last_line_crc(stream, upto)? {
            anyhow::ensure!(
                crc == last_crc,
                "the stream's line {} is not the one the checkpoint folded",
                upto.0 - 1
            );
        }
        let progress = Progress {
            next_offset: Offset(d.u64()?),
            consumed: [Seq(d.u64()?), Seq(d.u64()?)],
            newest: d.opt_i64()?.map(UnixNanos),
            last_received: [d.opt_i64()?.map(UnixNanos), d.opt_i64()?.map(UnixNanos)],
        };
        let unreadable = d.u64()?;
        let n = d.count(16)?;
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            runs.push(Run {
                epoch: Epoch(d.u64()?),
                start: Offset(d.u64()?),
            });
        }
        let himg = d.bytes()?;
        let history = SpillHistory::open_image(&history_dir(data_dir), history_options(), himg)
            .context("opening the history index of the checkpoint")?;
        Ok(Some(Fold {
            progress,
            history,
            runs,
            unreadable,
            upto,
            restored: Restored {
                checkpoint: Some(upto),
                lines_folded: 0,
                refused: None,
            },
        }))
    }

    /// An image of this fold (see [`Checkpoints`]); `None` if the history cannot make its runs
    /// durable (the disk; reported by the caller).
    fn image(&mut self, stream: &JournalHandle) -> anyhow::Result<Vec<u8>> {
        let crc = last_line_crc(stream, self.upto)?.unwrap_or(0);
        let himg = self.history.image().context("history index image")?;
        let p = &self.progress;
        let mut e = Enc::with_capacity(FOLD_MAGIC, himg.len() + 128 + self.runs.len() * 16);
        e.u64(self.upto.0)
            .u64(crc)
            .u64(p.next_offset.0)
            .u64(p.consumed[0].0)
            .u64(p.consumed[1].0)
            .opt_i64(p.newest.map(|t| t.0))
            .opt_i64(p.last_received[0].map(|t| t.0))
            .opt_i64(p.last_received[1].map(|t| t.0))
            .u64(self.unreadable)
            .u64(self.runs.len() as u64);
        for r in &self.runs {
            e.u64(r.epoch.0).u64(r.start.0);
        }
        e.bytes(&himg);
        Ok(e.finish())
    }
}

const BASE_MAGIC: &[u8; 8] = b"TWXBAS01";

/// The merger's progress at the stored checkpoint (its offset and [`Progress`]), or `None`
/// when there is none or it cannot be read: what a follower whose copy restarts at this
/// node's first retained offset folds its lines on top of (see [`Fold::restart_at`]).
pub fn stored_progress(data_dir: &Path) -> Option<(Offset, Progress)> {
    let img = std::fs::read(checkpoint_path(data_dir)).ok()?;
    let mut d = Dec::open(&img, FOLD_MAGIC).ok()?;
    let upto = Offset(d.u64().ok()?);
    let _crc = d.u64().ok()?;
    let p = decode_progress(&mut d).ok()?;
    Some((upto, p))
}

/// [`Progress`] as the checkpoint image stores it (after `upto` and the line hash).
fn decode_progress(d: &mut Dec<'_>) -> std::io::Result<Progress> {
    Ok(Progress {
        next_offset: Offset(d.u64()?),
        consumed: [Seq(d.u64()?), Seq(d.u64()?)],
        newest: d.opt_i64()?.map(UnixNanos),
        last_received: [d.opt_i64()?.map(UnixNanos), d.opt_i64()?.map(UnixNanos)],
    })
}

fn encode_progress(e: &mut Enc, p: &Progress) {
    e.u64(p.next_offset.0)
        .u64(p.consumed[0].0)
        .u64(p.consumed[1].0)
        .opt_i64(p.newest.map(|t| t.0))
        .opt_i64(p.last_received[0].map(|t| t.0))
        .opt_i64(p.last_received[1].map(|t| t.0));
}

/// The payload of a `SyncReply` that restarts the follower's copy: the checkpoint's offset
/// and progress ([`stored_progress`]).
pub fn encode_base(at: Offset, p: &Progress) -> Vec<u8> {
    let mut e = Enc::new(BASE_MAGIC);
    e.u64(at.0);
    encode_progress(&mut e, p);
    e.finish()
}

pub fn decode_base(b: &[u8]) -> anyhow::Result<(Offset, Progress)> {
    let mut d = Dec::open(b, BASE_MAGIC)?;
    let at = Offset(d.u64()?);
    Ok((at, decode_progress(&mut d)?))
}

/// A hash (FNV-1a) of the stored line just below `upto`, if the stream still holds it.
fn last_line_crc(stream: &JournalHandle, upto: Offset) -> anyhow::Result<Option<u64>> {
    let Some(last) = upto.0.checked_sub(1) else {
        return Ok(None);
    };
    let seq = Seq(last + 1);
    if seq < stream.first_seq() {
        return Ok(None);
    }
    let recs = stream
        .read(seq, 1, 0)
        .context("reading the stream's line at the checkpoint")?;
    Ok(recs
        .first()
        .filter(|(s, _)| *s == seq)
        .map(|(_, line)| u64::from(fnv1a(line))))
}

fn fnv1a(b: &[u8]) -> u32 {
    // The journal's records are already CRC-checked; this only tells one line from another.
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    })
}

/// The writer's checkpoints: when one is due, an image taken at a line boundary waits in
/// memory until every line below it is committed, then is stored (temp file, fsync, rename,
/// directory fsync), and the stream's retention may then delete the lines below it.
pub struct Checkpoints {
    data_dir: PathBuf,
    every: CheckpointEvery,
    /// Holds the stream's retention at the stored checkpoint (everything before the first).
    hold: journal::ReaderGuard,
    pending: Option<(Offset, Vec<u8>)>,
    /// The stored checkpoint's offset.
    pub stored: Option<Offset>,
    last: Instant,
    last_upto: Offset,
    /// Why the last checkpoint failed, if it did.
    pub last_error: Option<String>,
}

impl Checkpoints {
    pub fn new(
        data_dir: &Path,
        every: CheckpointEvery,
        fold: &Fold,
        stream: &JournalHandle,
    ) -> Checkpoints {
        let restored = &fold.restored;
        let upto = fold.upto;
        let from = restored
            .checkpoint
            .map_or(stream.first_seq(), |o| Seq(o.0 + 1));
        Checkpoints {
            hold: stream.register_reader("merger checkpoint", from),
            data_dir: data_dir.to_path_buf(),
            every,
            pending: None,
            stored: restored.checkpoint,
            last: Instant::now(),
            last_upto: restored.checkpoint.unwrap_or(Offset(0)).min(upto),
            last_error: None,
        }
    }

    /// Takes an image if one is due and `fold` is exactly the fold of the stored lines
    /// (`exact`: no merger facts beyond the last stored line).
    pub fn maybe_take(&mut self, fold: &mut Fold, stream: &JournalHandle, exact: bool) {
        let new_lines = fold.upto.0.saturating_sub(self.last_upto.0);
        let due = new_lines >= self.every.entries
            || (new_lines > 0 && self.last.elapsed() >= self.every.interval);
        if !exact || !due || self.pending.as_ref().is_some_and(|(o, _)| *o == fold.upto) {
            return;
        }
        if self.pending.take().is_some() {
            fold.history.image_dropped();
        }
        self.last = Instant::now();
        match fold.image(stream) {
            Ok(img) => {
                self.last_upto = fold.upto;
                self.pending = Some((fold.upto, img));
            }
            Err(e) => {
                fold.history.image_dropped();
                self.failed(format!("taking a merger checkpoint: {e:#}"));
            }
        }
    }

    /// Stores the pending image once `committed` reaches it; the offset stored, if one was.
    pub fn maybe_store(&mut self, fold: &mut Fold, committed: u64) -> Option<Offset> {
        let upto = self.pending.as_ref().map(|(o, _)| *o)?;
        if committed < upto.0 {
            return None;
        }
        let (_, img) = self.pending.take()?;
        match store(&self.data_dir, &img) {
            Ok(()) => {
                fold.history.image_stored();
                self.stored = Some(upto);
                self.hold.advance(Seq(upto.0 + 1));
                self.last_error = None;
                Some(upto)
            }
            Err(e) => {
                fold.history.image_dropped();
                self.failed(format!("storing a merger checkpoint: {e:#}"));
                None
            }
        }
    }

    /// Stores an image of `fold` now, whatever is committed: for a follower's copy that
    /// restarts at `fold.upto` (every entry below is committed, [`Fold::restart_at`]), so that
    /// a rebuild or a restart of the fold starts from it.
    pub fn store_now(&mut self, fold: &mut Fold, stream: &JournalHandle) -> anyhow::Result<()> {
        if self.pending.take().is_some() {
            fold.history.image_dropped();
        }
        let img = match fold.image(stream) {
            Ok(img) => img,
            Err(e) => {
                fold.history.image_dropped();
                return Err(e);
            }
        };
        if let Err(e) = store(&self.data_dir, &img) {
            fold.history.image_dropped();
            return Err(e);
        }
        fold.history.image_stored();
        self.stored = Some(fold.upto);
        self.hold.advance(Seq(fold.upto.0 + 1));
        self.last = Instant::now();
        self.last_upto = fold.upto;
        self.last_error = None;
        Ok(())
    }

    /// The fold was rebuilt (its history is a new index): a pending image is void.
    pub fn fold_replaced(&mut self, fold: &Fold) {
        self.pending = None;
        self.last_upto = self.last_upto.min(fold.upto);
    }

    fn failed(&mut self, e: String) {
        tracing::warn!(error = %e, "merger checkpoint");
        self.last_error = Some(e);
    }
}

fn store(data_dir: &Path, img: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let p = checkpoint_path(data_dir);
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    f.write_all(img)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(history_dir(data_dir))?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dedup::History as _;
    use receiver::record::{Protocol, Record, Transport};
    use twinrx_types::{Key, NodeId};

    use crate::stream::{self, MatchRun};

    fn key(i: u64) -> Key {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        k[8..].copy_from_slice(&i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).to_le_bytes());
        Key(k)
    }

    /// The stream a merger writes for: node a receives messages 0..400, node b only the even
    /// ones, most of them long after a (a relay's backlog), in two epochs.
    fn lines() -> Vec<Vec<u8>> {
        let cfg = dedup::Config::default().validate().expect("config");
        let mut merger = dedup::Merger::recover(cfg, Progress::start());
        let mut hist = dedup::MemHistory::new();
        let mut pending: Vec<MatchRun> = Vec::new();
        let mut out = Vec::new();
        let base = 1_764_000_000_000_000_000i64;
        let mut feed = |node: NodeId, seq: u64, i: u64, at: i64, epoch: u64| {
            let rec = dedup::Record {
                node,
                seq: Seq(seq),
                key: key(i),
                received_at: UnixNanos(at),
            };
            let o = merger.handle_record(rec, &hist).expect("merger");
            hist.apply(&o);
            match o {
                Output::Matched(m) => MatchRun::push(&mut pending, &m),
                Output::Entry(e) => {
                    let r = Record {
                        protocol: Protocol::Syslog,
                        transport: Transport::Udp,
                        received_at: UnixNanos(at),
                        key: key(i),
                        source: "[::ffff:192.0.2.7]:5000".parse().expect("literal"),
                        raw: format!("<13>msg {i}").into_bytes(),
                        decoded: Vec::new(),
                    };
                    let (line, _) = stream::entry_json(
                        e.offset,
                        Epoch(epoch),
                        &[(node, Seq(seq))],
                        e.late,
                        &r,
                        &pending,
                    );
                    pending.clear();
                    out.push(line);
                }
            }
        };
        for i in 0..400u64 {
            feed(
                NodeId::A,
                i + 1,
                i,
                base + i as i64 * 1_000_000,
                1 + i / 250,
            );
            if i % 2 == 0 && i < 100 {
                feed(
                    NodeId::B,
                    i / 2 + 1,
                    i,
                    base + i as i64 * 1_000_000 + 10,
                    1 + i / 250,
                );
            }
        }
        for i in (100..400u64).step_by(2) {
            feed(
                NodeId::B,
                i / 2 + 1,
                i,
                base + 3_600_000_000_000 + i as i64,
                2,
            );
        }
        out
    }

    fn journal(dir: &Path, lines: &[Vec<u8>]) -> journal::Journal {
        let (mut j, _) =
            journal::Journal::open(&dir.join("stream"), journal::Options::default()).expect("open");
        if !lines.is_empty() {
            j.append_batch(lines.iter()).expect("append");
        }
        j.sync().expect("sync");
        j
    }

    fn same(a: &Fold, b: &Fold) {
        assert_eq!(a.progress, b.progress);
        assert_eq!(a.runs, b.runs);
        assert_eq!(a.unreadable, b.unreadable);
        assert_eq!(a.upto, b.upto);
        assert_eq!(a.history.open_len(), b.history.open_len());
        for i in 0..400 {
            for n in [NodeId::A, NodeId::B] {
                let look = |f: &Fold| {
                    f.history
                        .earliest_open(key(i), n, UnixNanos(i64::MIN), UnixNanos(i64::MAX))
                        .expect("lookup")
                };
                assert_eq!(look(a), look(b), "key {i} node {n}");
            }
        }
    }

    /// A checkpoint at any line boundary, restored and followed by the rest of the lines, is
    /// the fold of the whole stream: progress, epoch runs, every history lookup.
    #[test]
    fn restoring_a_checkpoint_and_folding_the_rest_equals_folding_everything() {
        let lines = lines();
        assert_eq!(lines.len(), 400, "one entry per message");
        let root = std::env::temp_dir().join(format!("twinrx-fold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let whole_dir = root.join("whole");
        let whole_j = journal(&whole_dir, &lines);
        let whole = Fold::of_stream(&whole_j.handle(), &whole_dir).expect("fold");
        assert!(
            whole.history.open_len() > 100,
            "open {}",
            whole.history.open_len()
        );
        assert!(
            whole.history.stats().runs > 0,
            "the history spilled to runs"
        );
        for cut in [0, 1, 17, 250, 333, lines.len() - 1, lines.len()] {
            let dir = root.join(format!("cut-{cut}"));
            let mut j = journal(&dir, &lines[..cut]);
            let mut fold = Fold::of_stream(&j.handle(), &dir).expect("fold");
            let img = fold.image(&j.handle()).expect("image");
            store(&dir, &img).expect("store");
            fold.history.image_stored();
            drop(fold);
            if cut < lines.len() {
                j.append_batch(lines[cut..].iter()).expect("append");
                j.sync().expect("sync");
            }
            let restored = Fold::restore(&j.handle(), &dir).expect("restore");
            assert_eq!(
                restored.restored.checkpoint,
                Some(Offset(cut as u64)),
                "cut {cut}"
            );
            assert_eq!(restored.restored.lines_folded, (lines.len() - cut) as u64);
            same(&restored, &whole);
        }
        // A stream that is not the one the checkpoint folded: refused, everything folded.
        let dir = root.join("cut-333");
        let (mut j, _) =
            journal::Journal::open(&dir.join("stream"), journal::Options::default()).expect("open");
        j.truncate_from(Seq(1)).expect("truncate");
        let mut other = lines.clone();
        other.swap(10, 332);
        j.append_batch(other.iter()).expect("append");
        j.sync().expect("sync");
        let f = Fold::restore(&j.handle(), &dir).expect("restore");
        assert_eq!(f.restored.checkpoint, None);
        assert!(f.restored.refused.is_some());
        assert_eq!(f.restored.lines_folded, lines.len() as u64);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A follower's copy restarted at `start` with the progress of the active's checkpoint at
    /// `X >= start` (issue #14): once the lines `[start, X)` are folded its progress is the
    /// active's at `X`, and after the rest the fold's progress is the whole stream's. Stored as
    /// a checkpoint at `start`, it is what a rebuild starts from (the stream's line at `start - 1`
    /// is gone, so the line hash is not checked).
    #[test]
    fn a_copy_restarted_with_the_checkpoints_progress_folds_to_the_whole_streams_progress() {
        let lines = lines();
        let root = std::env::temp_dir().join(format!("twinrx-fold-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let whole_dir = root.join("whole");
        let whole_j = journal(&whole_dir, &lines);
        let whole = Fold::of_stream(&whole_j.handle(), &whole_dir).expect("fold");
        let (start, x) = (250usize, 333usize);
        let at_x_dir = root.join("at-x");
        let at_x_j = journal(&at_x_dir, &lines[..x]);
        let at_x = Fold::of_stream(&at_x_j.handle(), &at_x_dir).expect("fold");
        // What travels with the restart.
        let base = decode_base(&encode_base(Offset(x as u64), &at_x.progress)).expect("base");
        assert_eq!(base, (Offset(x as u64), at_x.progress));

        let dir = root.join("copy");
        let (mut j, _) =
            journal::Journal::open(&dir.join("stream"), journal::Options::default()).expect("open");
        j.reset_to(Seq(start as u64 + 1)).expect("reset");
        let mut fold = Fold::restart_at(&dir, Offset(start as u64), Some(base.1)).expect("fold");
        let img = fold.image(&j.handle()).expect("image");
        store(&dir, &img).expect("store");
        fold.history.image_stored();
        for (i, l) in lines.iter().enumerate().take(x).skip(start) {
            fold.apply_line(Offset(i as u64), l);
        }
        assert_eq!(fold.progress, at_x.progress, "exact at X");
        for (i, l) in lines.iter().enumerate().skip(x) {
            fold.apply_line(Offset(i as u64), l);
        }
        assert_eq!(fold.progress, whole.progress, "exact at the end");
        drop(fold);
        // Without it, the lines after `start` do not say all the merger had consumed.
        let bare_dir = root.join("bare");
        let mut bare = Fold::restart_at(&bare_dir, Offset(start as u64), None).expect("fold");
        for (i, l) in lines.iter().enumerate().skip(start) {
            bare.apply_line(Offset(i as u64), l);
        }
        assert_ne!(bare.progress.consumed, whole.progress.consumed);

        // A rebuild: from the checkpoint at `start`, then the stored lines.
        j.append_batch(lines[start..].iter()).expect("append");
        j.sync().expect("sync");
        let restored = Fold::restore(&j.handle(), &dir).expect("restore");
        assert_eq!(restored.restored.checkpoint, Some(Offset(start as u64)));
        assert_eq!(restored.restored.refused, None);
        assert_eq!(restored.progress, whole.progress);
        assert_eq!(restored.upto, whole.upto);
        let _ = std::fs::remove_dir_all(&root);
    }
}
