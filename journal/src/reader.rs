//! Readers: [`JournalHandle`] (reads by seq range), [`Tail`] (async, woken on each change of
//! the durable seq) and [`ReaderGuard`] (holds back retention).
//!
//! Reads go through the shared open segment files with positioned reads, start at the
//! sparse-index entry (or the position where the previous read ended) nearest to the wanted
//! seq, verify every record's CRC and seq, and never return a record beyond the durable seq.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use twinrx_types::Seq;

use crate::segment::{lock, read_lock, Hint, ReaderSlot, Segment, Shared};
use crate::{seq_opt, Error};

/// Bytes of the segments in `table` from the one holding `seq` to the end, as written
/// (compressed segments count their size before compression, like retention).
pub(crate) fn held_bytes(table: &[Arc<Segment>], seq: u64) -> u64 {
    let i = table
        .partition_point(|s| s.first_seq <= seq)
        .saturating_sub(1);
    table[i.min(table.len())..]
        .iter()
        .map(|s| s.written_bytes())
        .sum()
}

/// What a read returns: records with their seqs, in order.
type Records = Vec<(Seq, Vec<u8>)>;

/// The segment holding `seq`: the last one starting at or before it. The table is never
/// empty and `seq >= first_seq` is checked by the caller.
fn segment_of(table: &[Arc<Segment>], seq: u64) -> Arc<Segment> {
    let i = table
        .partition_point(|s| s.first_seq <= seq)
        .saturating_sub(1);
    table[i].clone()
}

/// Read access to a journal from any thread or task while the writer appends. Cheap to
/// clone (one `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct JournalHandle {
    shared: Arc<Shared>,
}

impl JournalHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> JournalHandle {
        JournalHandle { shared }
    }

    /// The oldest seq still on disk (after retention); `Seq(1)` for a fresh journal.
    pub fn first_seq(&self) -> Seq {
        Seq(self.shared.first_seq.load(Ordering::Acquire))
    }

    /// The last seq readers may see: fsynced (policies `batch`, `interval`) or written
    /// (`never`). `None` while nothing was ever durable. After [`crate::Journal::reset_to`]
    /// it is `first_seq - 1` until the first append, a seq that is not readable.
    pub fn durable_seq(&self) -> Option<Seq> {
        *self.shared.durable.borrow()
    }

    /// Records `from..=durable_seq`, at most `max_records` of them and, past the first,
    /// at most `max_bytes` of payload. At least one record is returned if `from` is durable,
    /// however large. Empty if `from > durable_seq` (or `max_records == 0`).
    /// [`Error::Gone`] if `from < first_seq` (deleted by retention).
    pub fn read(
        &self,
        from: Seq,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, Error> {
        Ok(self.read_generation(from, max_records, max_bytes)?.0)
    }

    /// [`JournalHandle::read`], and the cut generation the read saw: every cut up to it
    /// happened before the read, every later one after it.
    fn read_generation(
        &self,
        from: Seq,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Records, u64), Error> {
        let shared = &*self.shared;
        let _gate = read_lock(&shared.gate);
        let generation = shared.cut_generation();
        let durable_next = shared.durable_next();
        let mut seg = {
            let table = read_lock(&shared.segments);
            let first = table.first().map_or(from.0, |s| s.first_seq);
            if from.0 < first {
                return Err(Error::Gone {
                    from,
                    first: Seq(first),
                });
            }
            if from.0 >= durable_next || max_records == 0 {
                return Ok((Vec::new(), generation));
            }
            segment_of(&table, from.0)
        };
        let last = (durable_next - 1).min(from.0.saturating_add(max_records as u64 - 1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut seq = from.0;
        loop {
            let seg_end = seg.end_seq.load(Ordering::Acquire);
            if seq < seg.first_seq {
                // Retention deleted the segment holding `seq` while this read crossed into it.
                if !out.is_empty() {
                    break;
                }
                return Err(Error::Gone {
                    from: Seq(seq),
                    first: Seq(seg.first_seq),
                });
            }
            if seq >= seg_end {
                // Durable seqs are on disk: only a segment missing under us gets here.
                return Err(Error::BadSegment {
                    segment: seg.path.clone(),
                    reason: format!("durable seq {seq} is not in the segment that should hold it"),
                });
            }
            let mut offset = match shared.hint(seq) {
                Some(h) if h.seg_first == seg.first_seq => h.offset,
                _ => seg.locate(seq)?,
            };
            let mut r = seg.reader();
            while seq <= last && seq < seg_end {
                let (h, payload) = r.record(offset, seq)?;
                if !out.is_empty() && bytes + payload.len() > max_bytes {
                    shared.remember(Hint {
                        seq,
                        seg_first: seg.first_seq,
                        offset,
                    });
                    return Ok((out, generation));
                }
                bytes += payload.len();
                out.push((Seq(seq), payload.to_vec()));
                offset += h.frame_len();
                seq += 1;
            }
            shared.remember(Hint {
                seq,
                seg_first: seg.first_seq,
                offset,
            });
            if seq > last {
                break;
            }
            // The rest is in the following segments (durable records exist up to `last`).
            seg = segment_of(&read_lock(&shared.segments), seq);
        }
        Ok((out, generation))
    }

    /// A receiver that changes whenever [`JournalHandle::durable_seq`] changes (up on
    /// append/sync, down on truncate/reset). It reports closed when the writer is dropped.
    pub fn subscribe(&self) -> watch::Receiver<Option<Seq>> {
        self.shared.durable.clone()
    }

    /// Registers a reader at `from`: retention keeps every seq `>=` its position until the
    /// guard is dropped. Move it forward with [`ReaderGuard::advance`]. Seqs already deleted
    /// do not come back: a position below `first_seq` holds back all further deletion.
    pub fn register_reader(&self, name: &str, from: Seq) -> ReaderGuard {
        self.register(name, from, None)
    }

    /// [`JournalHandle::register_reader`] with a ceiling: the reader holds retention back
    /// only while the segments from the one holding its position to the end total at most
    /// `hold_bytes_max` bytes as written (as retention counts them). Past that, [`crate::Journal::enforce_retention`] deletes as if
    /// the reader were not registered, names it in [`crate::RetentionReport::lapsed`] and sets
    /// [`ReaderGuard::lapsed`]: a consumer that stays away cannot fill the disk, and learns
    /// of the loss ([`Error::Gone`] on its next read).
    pub fn register_reader_capped(
        &self,
        name: &str,
        from: Seq,
        hold_bytes_max: u64,
    ) -> ReaderGuard {
        self.register(name, from, Some(hold_bytes_max))
    }

    fn register(&self, name: &str, from: Seq, hold_bytes_max: Option<u64>) -> ReaderGuard {
        let id = self.shared.reader_id_next.fetch_add(1, Ordering::Relaxed);
        let position = Arc::new(AtomicU64::new(from.0));
        let lapsed = Arc::new(AtomicBool::new(false));
        lock(&self.shared.readers).insert(
            id,
            ReaderSlot {
                name: name.to_string(),
                position: position.clone(),
                hold_bytes_max,
                lapsed: lapsed.clone(),
            },
        );
        ReaderGuard {
            shared: self.shared.clone(),
            id,
            position,
            lapsed,
        }
    }

    /// Bytes of the segments from the one holding `seq` to the end, as written: what a reader
    /// at `seq` holds against its ceiling (whole segments; all of them for a seq below
    /// `first_seq`).
    pub fn bytes_from(&self, seq: Seq) -> u64 {
        held_bytes(&read_lock(&self.shared.segments), seq.0)
    }

    /// Bytes of all segment files on disk (compressed ones at their compressed size).
    pub fn bytes(&self) -> u64 {
        read_lock(&self.shared.segments)
            .iter()
            .map(|s| s.disk_bytes())
            .sum()
    }

    /// Bytes the segments held as written (compressed ones before compression).
    pub fn bytes_as_written(&self) -> u64 {
        read_lock(&self.shared.segments)
            .iter()
            .map(|s| s.written_bytes())
            .sum()
    }

    /// An async reader returning records from `from` on, waiting for new ones.
    pub fn tail(&self, from: Seq) -> Tail {
        let generation = self.shared.cut_generation();
        Tail {
            handle: self.clone(),
            durable: self.subscribe(),
            position: from,
            returned_last: None,
            cut_generation: generation,
            closed: false,
        }
    }
}

/// A registered reader position; retention keeps every seq at or after it. Dropping the
/// guard unregisters it.
pub struct ReaderGuard {
    shared: Arc<Shared>,
    id: u64,
    position: Arc<AtomicU64>,
    lapsed: Arc<AtomicBool>,
}

impl ReaderGuard {
    /// Releases seqs below `upto_exclusive` for retention. Positions only move forward: a
    /// lower value is ignored.
    pub fn advance(&self, upto_exclusive: Seq) {
        self.position.fetch_max(upto_exclusive.0, Ordering::AcqRel);
    }

    /// The first seq retention must keep for this reader.
    pub fn position(&self) -> Seq {
        Seq(self.position.load(Ordering::Acquire))
    }

    /// True once retention deleted a segment this reader still held, because it held more
    /// than its ceiling ([`JournalHandle::register_reader_capped`]). Stays set.
    pub fn lapsed(&self) -> bool {
        self.lapsed.load(Ordering::Acquire)
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        lock(&self.shared.readers).remove(&self.id);
    }
}

/// An async tailing reader: [`Tail::next_batch`] returns the next durable records after its
/// position, waiting (without polling) until there are some.
///
/// It ends with [`Error::Closed`] once the [`crate::Journal`] writer is dropped and every
/// durable record was returned, with [`Error::Truncated`] if
/// [`crate::Journal::truncate_from`] or [`crate::Journal::reset_to`] cut a record it had
/// already returned, and with [`Error::Gone`] if retention deleted its position (register a
/// [`ReaderGuard`] to prevent that). Reads are positioned reads on open files, normally
/// served from the page cache; they run on the calling task.
pub struct Tail {
    handle: JournalHandle,
    durable: watch::Receiver<Option<Seq>>,
    position: Seq,
    returned_last: Option<u64>,
    cut_generation: u64,
    closed: bool,
}

impl Tail {
    /// The seq the next returned record will have.
    pub fn position(&self) -> Seq {
        self.position
    }

    /// Waits until records at or after the position are durable and returns them (at most
    /// `max_records`, 0 counting as 1; at most `max_bytes` of payload past the first),
    /// advancing the position. Cancel-safe: dropping the future loses nothing.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, Error> {
        loop {
            let durable = self.durable.borrow_and_update().map_or(0, |s| s.0);
            if self.returned_last.is_some_and(|r| durable < r) {
                return Err(self.truncated(durable));
            }
            if durable >= self.position.0 {
                let (recs, generation) =
                    self.handle
                        .read_generation(self.position, max_records.max(1), max_bytes)?;
                // Cuts the read saw happened before it: they matter only if they reach back
                // into what this tail returned earlier. Later cuts are checked next time,
                // against what it returns now.
                let lowest = self
                    .handle
                    .shared
                    .cuts_between(self.cut_generation, generation);
                if let (Some(cut), Some(returned)) = (lowest, self.returned_last) {
                    if cut <= returned {
                        return Err(self.truncated(durable));
                    }
                }
                self.cut_generation = generation;
                if let Some(&(last, _)) = recs.last() {
                    self.position = last.next();
                    self.returned_last = Some(last.0);
                    return Ok(recs);
                }
                // Durable went down between the borrow and the read: wait for the next change.
            }
            if self.closed {
                return Err(Error::Closed);
            }
            if self.durable.changed().await.is_err() {
                // Writer dropped: one more look at the final value, then Closed.
                self.closed = true;
            }
        }
    }

    fn truncated(&self, durable: u64) -> Error {
        Error::Truncated {
            position: self.position,
            last: seq_opt(durable),
        }
    }
}
