//! The single writer: open with recovery, group-committed appends, rollback on I/O errors,
//! truncation, reset and retention.
//!
//! Every change to the files follows one rule: the in-memory table and the published durable
//! seq never claim more than the disk holds. A failed write or fsync cuts the files back with
//! `ftruncate` (shrinking needs no free space) before anything else happens; if even that
//! fails, the cut is retried before the next append.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use twinrx_types::Seq;

use crate::blocks::{self, BlockCache};
use crate::compress::{self, Compactor};
use crate::format::{
    self, HeaderState, Index, SegReader, RECORD_BYTES_MAX, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::reader::JournalHandle;
use crate::segment::{self, lock, read_lock, write_lock, Segment, Shared};
use crate::{
    seq_opt, Compression, Error, FsyncPolicy, JournalStats, Options, Recovery, RetentionReport,
    SeqRange,
};

/// A batch is written to the file in pieces of at most this size, bounding the buffer.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// A point in the journal: the end of the data in segment `seg_first` is `len`, and the next
/// record to be appended there gets `next_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    seg_first: u64,
    len: u64,
    next_seq: u64,
}

/// The single writer of a journal directory. `Send`, not `Clone`: one per directory (the
/// caller guarantees that no other process opens the same directory).
///
/// Dropping it closes the journal for [`crate::Tail`]s (they end with [`Error::Closed`]
/// after the last durable record); [`JournalHandle`]s keep reading what is durable.
pub struct Journal {
    shared: Arc<Shared>,
    opts: Options,
    durable_tx: watch::Sender<Option<Seq>>,
    next_seq: u64,
    /// Everything before this point is known to be fsynced.
    synced: Pos,
    last_sync: Instant,
    /// Set when a rollback could not finish; retried before the next write.
    repair: Option<Pos>,
    /// Set while a `reset_to` has not finished; retried before the next write.
    pending_reset: Option<u64>,
    /// Set by a failed fsync until the failed operation has rolled back.
    sync_failed: bool,
    buf: Vec<u8>,
    /// Test seam: the next this many fsyncs fail with EIO (the disk faults of STYLE §5).
    #[cfg(test)]
    fail_fsyncs: u32,
    appended_total: u64,
    fsyncs_total: u64,
    fsync_latency_us_last: u64,
    append_errors_total: u64,
    /// Compresses sealed segments in the background (`None` under [`Compression::None`]).
    /// Declared last: dropped (stopped and joined) after the final fsync.
    compactor: Option<Compactor>,
}

impl Journal {
    /// Opens (creating if missing) the journal in `dir` and recovers it.
    ///
    /// Recovery: leftovers of interrupted segment creation are removed; the last segment is
    /// scanned record by record and a torn or zero-filled tail is truncated to the last valid
    /// record (reported in [`Recovery`]); an invalid record followed by a valid one is
    /// [`Error::Corrupt`]. Older segments were fsynced whole when the journal rotated past
    /// them: their headers and first records are checked here, every record when it is read
    /// (or by [`crate::verify`]). Start-up time is one scan of the last segment.
    pub fn open(dir: &Path, opts: Options) -> Result<(Journal, Recovery), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let listing = format::list_segments(dir)?;
        let mut found = listing.segments;
        if found.is_empty() && listing.compressed.is_empty() {
            // A reset interrupted after removing the old segments: its new segment is
            // complete under the temporary name.
            if let Some((first, path)) = promotable(&listing.interrupted)? {
                std::fs::rename(&path, dir.join(format::segment_file_name(first)))
                    .map_err(|e| Error::io("rename segment", &path, e))?;
                segment::sync_dir(dir)?;
                tracing::info!(path = %path.display(), "completed an interrupted reset");
                found = format::list_segments(dir)?.segments;
            }
        }
        for tmp in format::list_segments(dir)?.interrupted {
            std::fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
            tracing::info!(path = %tmp.display(), "removed interrupted segment creation");
        }
        for tmp in &listing.interrupted_compressions {
            std::fs::remove_file(tmp).map_err(|e| Error::io("remove", tmp, e))?;
            tracing::info!(path = %tmp.display(), "removed interrupted segment compression");
        }
        // A segment as written and its compressed copy: the compactor or a decompression
        // stopped between rename and removal, or a cut rewrote the segment. The `.seg` is
        // the newer truth (FORMAT.md "Recovery").
        let mut found: Vec<(u64, std::path::PathBuf, bool)> =
            found.into_iter().map(|(f, p)| (f, p, false)).collect();
        for (first, zpath) in listing.compressed {
            if found.iter().any(|(f, _, _)| *f == first) {
                std::fs::remove_file(&zpath).map_err(|e| Error::io("remove", &zpath, e))?;
                tracing::info!(path = %zpath.display(), "removed a compressed copy of a segment kept as written");
            } else {
                found.push((first, zpath, true));
            }
        }
        found.sort_unstable_by_key(|(f, _, _)| *f);
        let cache = Arc::new(BlockCache::default());
        let mut recovery = Recovery::default();

        // Headers first, so that empty leftovers can be told apart before scanning.
        let mut opened = Vec::with_capacity(found.len());
        let count = found.len();
        for (i, (first, path, compressed)) in found.into_iter().enumerate() {
            let last = i + 1 == count;
            let file = segment::open_file(&path)?;
            if compressed {
                let blocks = blocks::open_blocks(&file, &path, first, cache.clone())?;
                if last {
                    // Only a cut leaves a compressed segment last: it is appended to again.
                    let z = Segment::compressed(first, path, file, blocks);
                    let raw = compress::decompress_segment(&z, dir)?;
                    let len = raw.len.load(Ordering::Acquire);
                    opened.push((first, raw.path, raw.file, len, last, None));
                } else {
                    let len = blocks.raw_len;
                    opened.push((first, path, file, len, last, Some(blocks)));
                }
                continue;
            }
            let mut len = file
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            match format::read_segment_header(&file, &path)? {
                HeaderState::Valid(h) if h == first => {}
                HeaderState::Valid(h) => {
                    return Err(Error::BadSegment {
                        segment: path,
                        reason: format!("header says first seq {h}, the file name {first}"),
                    })
                }
                HeaderState::Torn if last => {
                    file.set_len(0)
                        .map_err(|e| Error::io("truncate", &path, e))?;
                    file.write_all_at(&format::encode_segment_header(first), 0)
                        .map_err(|e| Error::io("write segment header", &path, e))?;
                    file.sync_data().map_err(|e| Error::io("fsync", &path, e))?;
                    tracing::warn!(segment = %path.display(), bytes = len, "journal: torn segment header rewritten");
                    recovery.truncated_bytes = len;
                    recovery.truncated_segment = Some(path.clone());
                    recovery.reason = Some("torn segment header".into());
                    len = SEGMENT_HEADER_LEN;
                }
                HeaderState::Torn => {
                    return Err(Error::BadSegment {
                        segment: path,
                        reason: "torn header in a segment that is not the last".into(),
                    })
                }
                HeaderState::Invalid(reason) => {
                    return Err(Error::BadSegment {
                        segment: path,
                        reason,
                    })
                }
            }
            opened.push((first, path, file, len, last, None));
        }

        // An empty segment that is not the last holds nothing and is a leftover of
        // `reset_to`; keeping it would make the next segment's seqs look like its own.
        let before = opened.len();
        let mut kept = Vec::with_capacity(opened.len());
        for seg in opened {
            if seg.3 == SEGMENT_HEADER_LEN && !seg.4 {
                std::fs::remove_file(&seg.1).map_err(|e| Error::io("remove", &seg.1, e))?;
                tracing::info!(segment = %seg.1.display(), "removed empty segment left by a reset");
            } else {
                kept.push(seg);
            }
        }
        if kept.len() != before {
            segment::sync_dir(dir)?;
        }

        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(kept.len());
        let next_firsts: Vec<u64> = kept.iter().skip(1).map(|s| s.0).collect();
        for (i, (first, path, file, len, last, blocks)) in kept.into_iter().enumerate() {
            if let Some(blocks) = blocks {
                if blocks.end_seq != next_firsts[i] {
                    return Err(Error::BadSegment {
                        segment: path,
                        reason: format!(
                            "ends before seq {}, but the next segment starts at {}",
                            blocks.end_seq, next_firsts[i]
                        ),
                    });
                }
                let seg = Segment::compressed(first, path, file, blocks);
                let (h, _) = seg.reader().record(SEGMENT_HEADER_LEN, first)?;
                seg.first_ts_ms.store(h.append_unix_ms, Ordering::Release);
                segments.push(Arc::new(seg));
                continue;
            }
            let seg = Segment::new(first, path, file);
            if last {
                let scan = format::scan_segment(seg.reader(), &seg.path, len, first, true)?;
                if let Some(tail) = &scan.tail {
                    seg.file
                        .set_len(tail.offset)
                        .map_err(|e| Error::io("truncate", &seg.path, e))?;
                    tracing::warn!(
                        segment = %seg.path.display(),
                        offset = tail.offset,
                        bytes = tail.bytes,
                        reason = %tail.reason,
                        "journal tail truncated"
                    );
                    recovery.truncated_bytes += tail.bytes;
                    recovery.truncated_segment = Some(seg.path.clone());
                    recovery.reason = Some(tail.reason.clone());
                }
                // What a crashed process wrote but did not fsync is still in the page cache
                // and passes the scan: make it durable before readers (replication) see it,
                // or a later power loss could give its seqs to different records.
                seg.file
                    .sync_data()
                    .map_err(|e| Error::io("fsync", &seg.path, e))?;
                seg.len.store(scan.end_offset, Ordering::Release);
                seg.end_seq.store(scan.end_seq, Ordering::Release);
                seg.first_ts_ms.store(scan.first_ts_ms, Ordering::Release);
                seg.last_ts_ms.store(scan.last_ts_ms, Ordering::Release);
                *lock(&seg.index) = scan.index;
            } else {
                // Cheap sanity check: the first record is where and what the name says.
                let (h, _) =
                    SegReader::new(&seg.file, &seg.path).record(SEGMENT_HEADER_LEN, first)?;
                seg.len.store(len, Ordering::Release);
                seg.end_seq.store(next_firsts[i], Ordering::Release);
                seg.first_ts_ms.store(h.append_unix_ms, Ordering::Release);
            }
            segments.push(Arc::new(seg));
        }
        if segments.is_empty() {
            segments.push(Arc::new(segment::create_segment(dir, Seq::FIRST.0)?));
        }

        let first_seq = segments[0].first_seq;
        let active = segments
            .last()
            .expect("at least one segment exists")
            .clone();
        let next_seq = active.end_seq.load(Ordering::Acquire);
        recovery.last_seq = if next_seq > first_seq {
            seq_opt(next_seq - 1)
        } else {
            None
        };
        recovery.segments = segments.len();
        let (durable_tx, durable_rx) = watch::channel(seq_opt(next_seq - 1));
        let synced = Pos {
            seg_first: active.first_seq,
            len: active.len.load(Ordering::Acquire),
            next_seq,
        };
        let shared = Arc::new(Shared::new(
            dir.to_path_buf(),
            segments,
            first_seq,
            durable_rx,
            cache,
        ));
        let compactor = match opts.compression {
            Compression::None => None,
            Compression::Zstd { level } => {
                let c = Compactor::start(shared.clone(), level)?;
                let table = read_lock(&shared.segments).clone();
                for seg in &table[..table.len() - 1] {
                    if seg.blocks.is_none() {
                        c.submit(seg.clone());
                    }
                }
                Some(c)
            }
        };
        tracing::info!(
            dir = %dir.display(),
            first_seq,
            next_seq,
            segments = recovery.segments,
            fsync = %opts.fsync,
            "journal opened"
        );
        let journal = Journal {
            shared,
            opts,
            durable_tx,
            next_seq,
            synced,
            last_sync: Instant::now(),
            repair: None,
            pending_reset: None,
            sync_failed: false,
            buf: Vec::new(),
            #[cfg(test)]
            fail_fsyncs: 0,
            appended_total: 0,
            fsyncs_total: 0,
            fsync_latency_us_last: 0,
            append_errors_total: 0,
            compactor,
        };
        Ok((journal, recovery))
    }

    /// Appends `records` in order and returns the seqs they got (inclusive).
    ///
    /// Policy `batch`: one `fdatasync` before returning, then the records are durable and
    /// visible to readers. `interval`: fsync when the interval has elapsed since the last
    /// sync (else later, by [`Journal::sync_if_due`]). `never`: no fsync; visible at once.
    ///
    /// All or nothing: on any error (full disk, EIO, a record over [`RECORD_BYTES_MAX`], an
    /// empty batch) no record of the batch is in the journal and [`Journal::next_seq`] is
    /// unchanged, so the same batch can be retried. Exception, policy `interval`: a failed
    /// fsync also drops the earlier records that were waiting for it (they were never
    /// durable or visible), and `next_seq` goes back to just after the durable seq.
    pub fn append_batch<I, B>(&mut self, records: I) -> Result<SeqRange, Error>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        if let Err(e) = self.repair() {
            self.append_errors_total += 1;
            return Err(e);
        }
        let start = self.end_pos();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = self.append_into(records, &mut buf);
        buf.clear();
        if buf.capacity() > 4 * WRITE_CHUNK_BYTES {
            // A huge record passed through: do not keep its buffer (STYLE §9, bounded memory).
            buf = Vec::new();
        }
        self.buf = buf;
        match result {
            Ok(range) => {
                self.appended_total += range.last.0 - range.first.0 + 1;
                Ok(range)
            }
            Err(e) => {
                if matches!(e, Error::Io { .. }) {
                    self.append_errors_total += 1;
                    tracing::warn!(error = %e, next_seq = start.next_seq, "journal append failed; rolling back");
                }
                let target = if self.sync_failed && self.opts.fsync != FsyncPolicy::Never {
                    min_pos(start, self.synced)
                } else {
                    start
                };
                self.sync_failed = false;
                self.undo(target);
                Err(e)
            }
        }
    }

    fn append_into<I, B>(&mut self, records: I, buf: &mut Vec<u8>) -> Result<SeqRange, Error>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let ts = unix_ms_now();
        let first = self.next_seq;
        let mut seq = first;
        let mut active = self.active();
        let mut at = active.len.load(Ordering::Acquire);
        for rec in records {
            let payload = rec.as_ref();
            if payload.len() > RECORD_BYTES_MAX {
                return Err(Error::RecordTooLarge {
                    len: payload.len(),
                    max: RECORD_BYTES_MAX,
                });
            }
            let frame = (RECORD_HEADER_LEN + payload.len()) as u64;
            let seg_len = at + buf.len() as u64;
            // Rotate before a record that would overflow the segment, unless the segment is
            // still empty (a record larger than a segment gets one of its own).
            if seq > active.first_seq && seg_len + frame > self.opts.segment_bytes_max {
                flush(&active, at, buf, seq, ts)?;
                active = self.rotate(&active, seq)?;
                at = active.len.load(Ordering::Acquire);
            }
            format::encode_record(buf, seq, ts, payload);
            seq += 1;
            if buf.len() >= WRITE_CHUNK_BYTES {
                flush(&active, at, buf, seq, ts)?;
                at = active.len.load(Ordering::Acquire);
            }
        }
        if seq == first {
            return Err(Error::EmptyBatch);
        }
        flush(&active, at, buf, seq, ts)?;
        self.next_seq = seq;
        match self.opts.fsync {
            FsyncPolicy::Batch => self.sync_active()?,
            FsyncPolicy::Interval { ms } => {
                if self.last_sync.elapsed() >= Duration::from_millis(ms) {
                    self.sync_active()?;
                } else if self.synced.next_seq > self.durable_next() {
                    // A rotation fsynced the segment before the active one.
                    self.publish(self.synced.next_seq - 1);
                }
            }
            FsyncPolicy::Never => self.publish(seq - 1),
        }
        Ok(SeqRange {
            first: Seq(first),
            last: Seq(seq - 1),
        })
    }

    /// Closes `old` (fsync, whatever the policy, so that only the last segment can ever have
    /// a torn tail) and starts the segment whose first record is `seq`.
    fn rotate(&mut self, old: &Arc<Segment>, seq: u64) -> Result<Arc<Segment>, Error> {
        self.fsync(old)?;
        self.synced = Pos {
            seg_first: old.first_seq,
            len: old.len.load(Ordering::Acquire),
            next_seq: seq,
        };
        let seg = Arc::new(segment::create_segment(&self.shared.dir, seq)?);
        write_lock(&self.shared.segments).push(seg.clone());
        // The same point, expressed in the segment that retention never deletes.
        self.synced = Pos {
            seg_first: seq,
            len: SEGMENT_HEADER_LEN,
            next_seq: seq,
        };
        tracing::debug!(segment = %seg.path.display(), "journal segment started");
        if let Some(c) = &self.compactor {
            c.submit(old.clone());
        }
        Ok(seg)
    }

    /// Forces an fsync of everything appended and publishes the durable seq.
    ///
    /// On failure under policy `batch` or `interval`, records not yet durable are dropped
    /// (the journal goes back to the durable seq, see [`Journal::append_batch`]): after a
    /// failed fsync the kernel may already have discarded them.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.repair()?;
        match self.sync_active() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.append_errors_total += 1;
                self.sync_failed = false;
                if self.opts.fsync != FsyncPolicy::Never {
                    tracing::warn!(error = %e, durable_next = self.synced.next_seq, "journal fsync failed; dropping records that were not durable");
                    self.undo(self.synced);
                }
                Err(e)
            }
        }
    }

    /// Policy `interval`: fsyncs if records are waiting and the interval has elapsed since
    /// the last sync; returns whether it synced. Other policies: never syncs, returns false.
    /// The node calls this every few milliseconds.
    pub fn sync_if_due(&mut self, now: Instant) -> Result<bool, Error> {
        let FsyncPolicy::Interval { ms } = self.opts.fsync else {
            return Ok(false);
        };
        if self.next_seq <= self.synced.next_seq && self.repair.is_none() {
            return Ok(false);
        }
        if now.saturating_duration_since(self.last_sync) < Duration::from_millis(ms) {
            return Ok(false);
        }
        self.sync()?;
        Ok(true)
    }

    /// The seq the next appended record will get.
    pub fn next_seq(&self) -> Seq {
        Seq(self.next_seq)
    }

    /// Drops every record with seq `>= seq` (cuts an uncommitted stream suffix), fsynced
    /// before returning. Readers' durable seq goes down first, so no reader sees a record
    /// that is being cut; a [`crate::Tail`] that already returned a cut record ends with
    /// [`Error::Truncated`]. `seq` must be in `first_seq..=next_seq`.
    pub fn truncate_from(&mut self, seq: Seq) -> Result<(), Error> {
        self.repair()?;
        let first = self.shared.first_seq.load(Ordering::Acquire);
        if seq.0 < first || seq.0 > self.next_seq {
            return Err(Error::OutOfRange {
                seq,
                first: Seq(first),
                next: Seq(self.next_seq),
            });
        }
        if seq.0 == self.next_seq {
            return Ok(());
        }
        let shared = self.shared.clone();
        let _gate = write_lock(&shared.gate);
        let lowered = (self.durable_next() - 1).min(seq.0 - 1);
        self.publish(lowered);
        self.shared.note_cut(seq.0);
        let seg = {
            let segs = read_lock(&self.shared.segments);
            let i = segs.partition_point(|s| s.first_seq <= seq.0);
            segs[i.saturating_sub(1)].clone()
        };
        let offset = seg.locate(seq.0)?;
        let to = Pos {
            seg_first: seg.first_seq,
            len: offset,
            next_seq: seq.0,
        };
        self.rollback(to)?;
        self.synced = self.end_pos();
        self.last_sync = Instant::now();
        self.publish(seq.0 - 1);
        tracing::info!(from = seq.0, "journal truncated");
        Ok(())
    }

    /// Makes the next record get `next_seq`. Only on a journal without records (new, wiped,
    /// or everything truncated): a peer's copy that starts mid-way, or a stream restored
    /// after retention removed its beginning. Afterwards `first_seq() == next_seq`, and
    /// `durable_seq()` is `next_seq - 1` (nothing below is readable: [`Error::Gone`]).
    pub fn reset_to(&mut self, next_seq: Seq) -> Result<(), Error> {
        self.repair()?;
        let first = self.shared.first_seq.load(Ordering::Acquire);
        if self.next_seq != first {
            return Err(Error::NotEmpty {
                first: Seq(first),
                last: Seq(self.next_seq - 1),
            });
        }
        if next_seq.0 == 0 {
            return Err(Error::OutOfRange {
                seq: next_seq,
                first: Seq(first),
                next: Seq(self.next_seq),
            });
        }
        let single = read_lock(&self.shared.segments).len() == 1;
        if single && first == next_seq.0 {
            return Ok(());
        }
        self.pending_reset = Some(next_seq.0);
        self.finish_reset(next_seq.0)?;
        tracing::info!(next_seq = next_seq.0, "journal reset");
        Ok(())
    }

    /// Blocks until every sealed segment handed to the compactor so far is compressed (or
    /// was skipped: cut, deleted, or failed and logged). Returns at once without
    /// compression. For tests and tools that need to see the compressed state.
    pub fn wait_compacted(&self) {
        if let Some(c) = &self.compactor {
            c.wait();
        }
    }

    /// A cheap, cloneable read handle for other threads and tasks.
    pub fn handle(&self) -> JournalHandle {
        JournalHandle::new(self.shared.clone())
    }

    /// Deletes whole old segments, oldest first, while the journal is larger than
    /// `retention.bytes_max` or the segment's newest record is older than
    /// `retention.age_max_ms` (by the append times in the records, not file mtimes). Never
    /// deletes the active segment, nor a segment holding a seq at or after the position of a
    /// registered reader ([`JournalHandle::register_reader`]); the report names the reader
    /// that held retention back.
    pub fn enforce_retention(&mut self, now: SystemTime) -> Result<RetentionReport, Error> {
        let retention = self.opts.retention;
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let shared = self.shared.clone();
        let _edit = lock(&shared.edit);
        // Held throughout, so that a reader registering now either is seen here or sees the
        // new first seq.
        let readers = lock(&self.shared.readers);
        let segs = read_lock(&self.shared.segments).clone();
        // A reader past its ceiling holds nothing: retention goes on as if it were not there.
        let over = |r: &crate::segment::ReaderSlot, position: u64| {
            r.hold_bytes_max
                .is_some_and(|m| crate::reader::held_bytes(&segs, position) > m)
        };
        let reader_min = readers
            .values()
            .map(|r| (r.position.load(Ordering::Acquire), r))
            .filter(|(p, r)| !over(r, *p))
            .map(|(p, r)| (p, r.name.clone()))
            .min();
        // Limits count the records' bytes as written: what a limit keeps does not change with
        // the compression ratio or with the compactor's progress.
        let mut total: u64 = segs.iter().map(|s| s.written_bytes()).sum();
        let mut report = RetentionReport::default();
        let mut failure = None;
        for pair in segs.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            let over_size = retention.bytes_max.is_some_and(|m| total > m);
            let newest_ms = match seg.last_ts_ms.load(Ordering::Acquire) {
                0 => next.first_ts_ms.load(Ordering::Acquire),
                t => t,
            };
            let too_old = retention
                .age_max_ms
                .is_some_and(|a| newest_ms != 0 && now_ms.saturating_sub(newest_ms) > a);
            if !(over_size || too_old) {
                break;
            }
            if let Some((position, name)) = &reader_min {
                // The segment holds seqs up to next.first_seq - 1.
                if next.first_seq > *position {
                    report.held_by = Some(name.clone());
                    break;
                }
            }
            if let Err(e) = std::fs::remove_file(&seg.path) {
                failure = Some(Error::io("remove segment", &seg.path, e));
                break;
            }
            total -= seg.written_bytes();
            report.segments_deleted += 1;
            report.bytes_deleted += seg.disk_bytes();
        }
        let n = report.segments_deleted;
        if n > 0 {
            write_lock(&self.shared.segments).drain(..n);
            let first = segs[n].first_seq;
            self.shared.first_seq.store(first, Ordering::Release);
            tracing::info!(
                segments = n,
                bytes = report.bytes_deleted,
                first_seq = first,
                "journal retention deleted segments"
            );
            for r in readers.values() {
                let position = r.position.load(Ordering::Acquire);
                if position < first && over(r, position) {
                    r.lapsed.store(true, Ordering::Release);
                    tracing::warn!(
                        reader = %r.name,
                        position,
                        first_seq = first,
                        hold_bytes_max = r.hold_bytes_max,
                        "retention deleted records a reader had not read: it held more than its ceiling"
                    );
                    report.lapsed.push(r.name.clone());
                }
            }
        }
        drop(readers);
        report.first_seq = Seq(self.shared.first_seq.load(Ordering::Acquire));
        if let Some(e) = failure {
            return Err(e);
        }
        if n > 0 {
            segment::sync_dir(&self.shared.dir)?;
        }
        Ok(report)
    }

    /// Whether the journal holds more than `retention.bytes_max`: a retention pass is due
    /// (it may still be held back by a reader).
    pub fn over_bytes_max(&self) -> bool {
        self.opts.retention.bytes_max.is_some_and(|m| {
            let bytes: u64 = read_lock(&self.shared.segments)
                .iter()
                .map(|s| s.written_bytes())
                .sum();
            bytes > m
        })
    }

    /// Counters for status and metrics.
    pub fn stats(&self) -> JournalStats {
        let segs = read_lock(&self.shared.segments);
        let first = self.shared.first_seq.load(Ordering::Acquire);
        JournalStats {
            records: self.next_seq - first,
            bytes: segs.iter().map(|s| s.disk_bytes()).sum(),
            bytes_as_written: segs.iter().map(|s| s.len.load(Ordering::Acquire)).sum(),
            segments: segs.len(),
            segments_compressed: segs.iter().filter(|s| s.blocks.is_some()).count(),
            compress_errors_total: self.shared.compact.errors.load(Ordering::Relaxed),
            appended_total: self.appended_total,
            fsyncs_total: self.fsyncs_total,
            fsync_latency_us_last: self.fsync_latency_us_last,
            append_errors_total: self.append_errors_total,
            first_seq: Seq(first),
            next_seq: Seq(self.next_seq),
            durable_seq: *self.shared.durable.borrow(),
        }
    }

    fn active(&self) -> Arc<Segment> {
        read_lock(&self.shared.segments)
            .last()
            .cloned()
            .expect("a journal always has an active segment")
    }

    fn end_pos(&self) -> Pos {
        let a = self.active();
        Pos {
            seg_first: a.first_seq,
            len: a.len.load(Ordering::Acquire),
            next_seq: self.next_seq,
        }
    }

    fn durable_next(&self) -> u64 {
        self.durable_tx.borrow().map_or(0, |s| s.0) + 1
    }

    /// Sets the durable seq to `last` (down as well as up) and wakes subscribers on change.
    fn publish(&self, last: u64) {
        let new = seq_opt(last);
        self.durable_tx.send_if_modified(|d| {
            let changed = *d != new;
            *d = new;
            changed
        });
    }

    fn fsync(&mut self, seg: &Segment) -> Result<(), Error> {
        let t = Instant::now();
        let r = seg.file.sync_data();
        #[cfg(test)]
        let r = if self.fail_fsyncs > 0 {
            self.fail_fsyncs -= 1;
            r.and(Err(std::io::Error::from_raw_os_error(5)))
        } else {
            r
        };
        self.fsync_latency_us_last = t.elapsed().as_micros() as u64;
        self.fsyncs_total += 1;
        r.map_err(|e| {
            self.sync_failed = true;
            Error::io("fsync", &seg.path, e)
        })
    }

    /// Fsyncs the active segment (older ones were fsynced at rotation) and publishes.
    fn sync_active(&mut self) -> Result<(), Error> {
        let active = self.active();
        self.fsync(&active)?;
        self.synced = self.end_pos();
        self.last_sync = Instant::now();
        self.publish(self.next_seq - 1);
        Ok(())
    }

    /// Rolls back to `to` after a failed operation; a rollback that fails itself is retried
    /// before the next write.
    fn undo(&mut self, to: Pos) {
        if self.synced.next_seq > to.next_seq {
            self.synced = to;
        }
        if let Err(e) = self.rollback(to) {
            tracing::error!(error = %e, next_seq = to.next_seq, "journal rollback failed; retrying before the next append");
        }
        if self.durable_next() > to.next_seq {
            self.publish(to.next_seq - 1);
        }
    }

    fn repair(&mut self) -> Result<(), Error> {
        if let Some(n) = self.pending_reset {
            self.finish_reset(n)?;
        }
        match self.repair {
            Some(to) => self.rollback(to),
            None => Ok(()),
        }
    }

    /// The work of [`Journal::reset_to`], retried before the next write if it fails.
    ///
    /// Crash safety, whichever way the seq moves: the new segment is prepared under its
    /// temporary name, the old (empty) segments are removed, then the new one is renamed into
    /// place. Open promotes a lone valid `.seg.tmp` when no segment is left, so a crash
    /// leaves an empty journal at the old or the new position, never a mix. The table keeps
    /// the old segments until the new one is in place (nothing can be read from them: the
    /// journal is empty, and nothing is appended while the reset is pending).
    fn finish_reset(&mut self, next_seq: u64) -> Result<(), Error> {
        let prepared = segment::prepare_segment(&self.shared.dir, next_seq)?;
        let shared = self.shared.clone();
        let _gate = write_lock(&shared.gate);
        let _edit = lock(&shared.edit);
        self.shared.note_cut(0);
        let old: Vec<Arc<Segment>> = read_lock(&self.shared.segments).clone();
        for o in old.iter().rev() {
            match std::fs::remove_file(&o.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove segment", &o.path, e)),
            }
        }
        segment::sync_dir(&self.shared.dir)?;
        let seg = Arc::new(prepared.install(&self.shared.dir)?);
        *write_lock(&self.shared.segments) = vec![seg];
        self.shared.first_seq.store(next_seq, Ordering::Release);
        self.shared.forget_hints();
        self.next_seq = next_seq;
        self.repair = None;
        self.synced = self.end_pos();
        self.publish(next_seq - 1);
        self.pending_reset = None;
        Ok(())
    }

    /// Cuts the journal back to `to`: newer segments are removed (newest first, so a crash
    /// leaves a prefix), the target segment is truncated to `to.len` and fsynced.
    fn rollback(&mut self, to: Pos) -> Result<(), Error> {
        self.repair = Some(to);
        self.next_seq = to.next_seq;
        self.shared.forget_hints();
        let shared = self.shared.clone();
        let _edit = lock(&shared.edit);
        let mut removed = false;
        loop {
            let newest = self.active();
            if newest.first_seq <= to.seg_first {
                break;
            }
            match std::fs::remove_file(&newest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove segment", &newest.path, e)),
            }
            write_lock(&self.shared.segments).pop();
            removed = true;
        }
        let mut seg = self.active();
        if seg.first_seq != to.seg_first {
            return Err(Error::BadSegment {
                segment: seg.path.clone(),
                reason: format!("rollback target segment {} is missing", to.seg_first),
            });
        }
        if seg.blocks.is_some() {
            // A cut into a compressed segment: it becomes the active one, as written.
            let raw = Arc::new(compress::decompress_segment(&seg, &self.shared.dir)?);
            if let Some(last) = write_lock(&self.shared.segments).last_mut() {
                *last = raw.clone();
            }
            seg = raw;
        }
        seg.cuts.fetch_add(1, Ordering::AcqRel);
        let file_len = seg
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &seg.path, e))?
            .len();
        if file_len != to.len || seg.end_seq.load(Ordering::Acquire) != to.next_seq {
            seg.file
                .set_len(to.len)
                .map_err(|e| Error::io("truncate", &seg.path, e))?;
            self.fsync(&seg)?;
            self.sync_failed = false;
        }
        seg.len.store(to.len, Ordering::Release);
        seg.end_seq.store(to.next_seq, Ordering::Release);
        if to.next_seq == seg.first_seq {
            seg.first_ts_ms.store(0, Ordering::Release);
        }
        lock(&seg.index).cut(to.next_seq, to.len);
        if removed {
            segment::sync_dir(&self.shared.dir)?;
        }
        self.repair = None;
        Ok(())
    }
}

impl Drop for Journal {
    /// Policy `interval`: a last fsync, so a clean shutdown loses nothing.
    fn drop(&mut self) {
        if matches!(self.opts.fsync, FsyncPolicy::Interval { .. })
            && self.next_seq > self.synced.next_seq
        {
            if let Err(e) = self.sync() {
                tracing::warn!(error = %e, "journal: final fsync at close failed");
            }
        }
    }
}

/// The `.seg.tmp` to promote when a directory has no segment: the one with a valid header
/// matching its name and the highest first seq.
fn promotable(tmps: &[std::path::PathBuf]) -> Result<Option<(u64, std::path::PathBuf)>, Error> {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for tmp in tmps {
        let name = tmp.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(first) = name
            .strip_suffix(".tmp")
            .and_then(format::parse_segment_file_name)
        else {
            continue;
        };
        let file = std::fs::File::open(tmp).map_err(|e| Error::io("open", tmp, e))?;
        if format::read_segment_header(&file, tmp)? == HeaderState::Valid(first)
            && best.as_ref().is_none_or(|(b, _)| first > *b)
        {
            best = Some((first, tmp.clone()));
        }
    }
    Ok(best)
}

/// Writes `buf` at `at` in `seg` and records what it holds (`end_seq` is one past its last
/// record); empties `buf`.
fn flush(seg: &Segment, at: u64, buf: &mut Vec<u8>, end_seq: u64, ts: u64) -> Result<(), Error> {
    if buf.is_empty() {
        return Ok(());
    }
    seg.file
        .write_all_at(buf, at)
        .map_err(|e| Error::io("write", &seg.path, e))?;
    {
        let mut idx = lock(&seg.index);
        let first_in_buf = seg.end_seq.load(Ordering::Acquire);
        if (idx.frontier_seq, idx.frontier_offset) == (first_in_buf, at) {
            index_frames(&mut idx, buf, first_in_buf, at);
        }
    }
    if seg.first_ts_ms.load(Ordering::Acquire) == 0 {
        seg.first_ts_ms.store(ts, Ordering::Release);
    }
    seg.last_ts_ms.store(ts, Ordering::Release);
    seg.len.store(at + buf.len() as u64, Ordering::Release);
    seg.end_seq.store(end_seq, Ordering::Release);
    buf.clear();
    Ok(())
}

/// Adds the records framed in `buf` (written at `at`, first seq `seq`) to the index.
fn index_frames(idx: &mut Index, buf: &[u8], mut seq: u64, at: u64) {
    let mut off = 0usize;
    while off + RECORD_HEADER_LEN <= buf.len() {
        let len = u32::from_le_bytes([buf[off + 4], buf[off + 5], buf[off + 6], buf[off + 7]]);
        let frame = RECORD_HEADER_LEN as u64 + u64::from(len);
        idx.push(seq, at + off as u64, frame);
        off += frame as usize;
        seq += 1;
    }
}

fn min_pos(a: Pos, b: Pos) -> Pos {
    if a.next_seq <= b.next_seq {
        a
    } else {
        b
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    //! Failed fsyncs (EIO), injected: the journal rolls back to what is durable, keeps
    //! `verify` clean, and appends resume.
    use super::*;
    use crate::Retention;

    const EIO: i32 = 5;

    fn open(dir: &Path, fsync: FsyncPolicy) -> Journal {
        let o = Options {
            segment_bytes_max: 600,
            fsync,
            retention: Retention::default(),
            compression: crate::Compression::None,
        };
        Journal::open(dir, o).expect("open").0
    }

    fn recs(first: u64, n: u64) -> Vec<Vec<u8>> {
        (first..first + n)
            .map(|i| format!("record {i}").into_bytes())
            .collect()
    }

    fn assert_io(e: Error, op_want: &str) {
        match e {
            Error::Io { op, source, .. } => {
                assert_eq!(op, op_want);
                assert_eq!(source.raw_os_error(), Some(EIO));
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }

    fn assert_disk_holds(dir: &Path, j: &Journal, last: u64) {
        let v = crate::verify(dir).expect("verify");
        assert_eq!((v.records, v.torn_tail), (last, None));
        let all = j
            .handle()
            .read(Seq(1), usize::MAX, usize::MAX)
            .expect("read");
        assert_eq!(all.len() as u64, last);
        assert!(all
            .iter()
            .all(|(s, p)| *p == format!("record {}", s.0).into_bytes()));
    }

    #[test]
    fn batch_policy_failed_fsync_rolls_back_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(dir.path(), FsyncPolicy::Batch);
        j.append_batch(recs(1, 10)).expect("append");
        let len_before = j.stats().bytes;
        j.fail_fsyncs = 1;
        // Spans a rotation: the new segment must go too.
        assert_io(
            j.append_batch(recs(11, 30)).expect_err("fsync fails"),
            "fsync",
        );
        assert_eq!(j.next_seq(), Seq(11));
        assert_eq!(j.handle().durable_seq(), Some(Seq(10)));
        assert_eq!(j.stats().bytes, len_before);
        assert_eq!(j.stats().append_errors_total, 1);
        assert_disk_holds(dir.path(), &j, 10);
        let r = j
            .append_batch(recs(11, 30))
            .expect("append after the fault");
        assert_eq!((r.first, r.last), (Seq(11), Seq(40)));
        assert_disk_holds(dir.path(), &j, 40);
    }

    #[test]
    fn failed_rollback_is_retried_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(dir.path(), FsyncPolicy::Batch);
        j.append_batch(recs(1, 5)).expect("append");
        // The batch's fsync fails, then the rollback's fsync fails too.
        j.fail_fsyncs = 2;
        assert!(j.append_batch(recs(6, 5)).is_err());
        assert_eq!(j.next_seq(), Seq(6));
        assert!(j.repair.is_some());
        assert_eq!(j.handle().durable_seq(), Some(Seq(5)));
        let r = j.append_batch(recs(6, 5)).expect("repaired, then appended");
        assert_eq!(r.first, Seq(6));
        assert!(j.repair.is_none());
        assert_disk_holds(dir.path(), &j, 10);
        drop(j);
        let (j, rec) = Journal::open(dir.path(), Options::default()).expect("reopen");
        assert_eq!((rec.last_seq, rec.truncated_bytes), (Some(Seq(10)), 0));
        drop(j);
    }

    #[test]
    fn interval_policy_failed_fsync_drops_what_was_not_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(dir.path(), FsyncPolicy::Interval { ms: 3_600_000 });
        j.append_batch(recs(1, 5)).expect("append");
        j.sync().expect("sync");
        j.append_batch(recs(6, 5)).expect("append, not yet durable");
        j.append_batch(recs(11, 5))
            .expect("append, not yet durable");
        assert_eq!(j.handle().durable_seq(), Some(Seq(5)));
        j.fail_fsyncs = 1;
        assert_io(j.sync().expect_err("fsync fails"), "fsync");
        // After a failed fsync the kernel may have dropped those pages: they are gone.
        assert_eq!(j.next_seq(), Seq(6));
        assert_eq!(j.handle().durable_seq(), Some(Seq(5)));
        assert_disk_holds(dir.path(), &j, 5);
        j.append_batch(recs(6, 3)).expect("append");
        j.sync().expect("sync");
        assert_disk_holds(dir.path(), &j, 8);
    }

    #[test]
    fn never_policy_failed_sync_keeps_visible_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(dir.path(), FsyncPolicy::Never);
        j.append_batch(recs(1, 5)).expect("append");
        j.fail_fsyncs = 1;
        assert_io(j.sync().expect_err("fsync fails"), "fsync");
        assert_eq!(j.next_seq(), Seq(6));
        assert_eq!(j.handle().durable_seq(), Some(Seq(5)));
        assert_disk_holds(dir.path(), &j, 5);
    }

    #[test]
    fn failed_rotation_fsync_rolls_back_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(dir.path(), FsyncPolicy::Never);
        j.append_batch(recs(1, 3)).expect("append");
        let segments = j.stats().segments;
        j.fail_fsyncs = 1;
        assert_io(
            j.append_batch(recs(4, 60))
                .expect_err("rotation fsync fails"),
            "fsync",
        );
        assert_eq!(j.next_seq(), Seq(4));
        assert_eq!(j.stats().segments, segments);
        assert_disk_holds(dir.path(), &j, 3);
    }

    #[test]
    fn interval_failed_fsync_after_rotation_and_retention_is_not_stuck() {
        // Regression: the last fsynced point must never name a segment retention may delete.
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Options {
            segment_bytes_max: 300,
            fsync: FsyncPolicy::Interval { ms: 3_600_000 },
            retention: Retention {
                bytes_max: Some(400),
                age_max_ms: None,
            },
            compression: crate::Compression::None,
        };
        let (mut j, _) = Journal::open(dir.path(), o).expect("open");
        j.append_batch(recs(1, 40))
            .expect("append: rotates, fsyncing old segments");
        let durable = j
            .handle()
            .durable_seq()
            .expect("rotation fsyncs published")
            .0;
        assert!(j.over_bytes_max(), "{:?}", j.stats());
        let rep = j.enforce_retention(SystemTime::now()).expect("retention");
        assert!(rep.segments_deleted > 0);
        assert!(!j.over_bytes_max(), "{:?}", j.stats());
        j.fail_fsyncs = 1;
        assert!(j.sync().is_err());
        assert_eq!(j.next_seq(), Seq(durable + 1));
        assert!(j.repair.is_none());
        let r = j.append_batch(recs(durable + 1, 2)).expect("append");
        assert_eq!(r.first, Seq(durable + 1));
        j.sync().expect("sync");
        let v = crate::verify(dir.path()).expect("verify");
        assert_eq!(v.last_seq, Some(Seq(durable + 2)));
    }
}
