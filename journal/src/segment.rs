//! State shared by the writer and every reader: the table of open segment files with their
//! sparse indexes, the durable seq, registered readers and a small cache of read positions.
//!
//! The writer is the only one that changes the table; readers take short read locks to find
//! the segments they need and then read through positioned reads (`pread`) on the shared open
//! file, so reads never block appends and never re-open files.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;
use twinrx_types::Seq;

use crate::blocks::{BlockCache, Blocks};
use crate::format::{self, Index, SegReader, SEGMENT_HEADER_LEN};
use crate::Error;

/// One segment file.
pub(crate) struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Opened read + write once; the writer writes with `pwrite`, readers read with `pread`.
    pub file: File,
    /// Bytes of the file holding whole records (the writer's append offset).
    pub len: AtomicU64,
    /// One past the seq of the last record written to this segment.
    pub end_seq: AtomicU64,
    /// Append time of the first record, unix ms; 0 while unknown or empty.
    pub first_ts_ms: AtomicU64,
    /// Append time of the newest record, unix ms; 0 while unknown (older segments at open are
    /// not scanned: their age is bounded by the next segment's `first_ts_ms`).
    pub last_ts_ms: AtomicU64,
    pub index: Mutex<Index>,
    /// The block table of a compressed segment (`….zseg`, read-only); `None` for a segment
    /// file as written.
    pub blocks: Option<Blocks>,
    /// Bumped by the writer before it cuts this segment: the compactor's copy of a segment
    /// that was cut since it read it is discarded.
    pub cuts: AtomicU64,
}

impl Segment {
    pub fn new(first_seq: u64, path: PathBuf, file: File) -> Segment {
        Segment {
            first_seq,
            path,
            file,
            len: AtomicU64::new(SEGMENT_HEADER_LEN),
            end_seq: AtomicU64::new(first_seq),
            first_ts_ms: AtomicU64::new(0),
            last_ts_ms: AtomicU64::new(0),
            index: Mutex::new(Index::new(first_seq)),
            blocks: None,
            cuts: AtomicU64::new(0),
        }
    }

    /// The compressed segment `file` with its block table: offsets, end and index are
    /// those of the segment as it was written.
    pub fn compressed(first_seq: u64, path: PathBuf, file: File, blocks: Blocks) -> Segment {
        Segment {
            len: AtomicU64::new(blocks.raw_len),
            end_seq: AtomicU64::new(blocks.end_seq),
            index: Mutex::new(blocks.index()),
            blocks: Some(blocks),
            ..Segment::new(first_seq, path, file)
        }
    }

    /// A reader of this segment's records, whichever kind it is.
    pub fn reader(&self) -> SegReader<'_> {
        match &self.blocks {
            Some(b) => SegReader::compressed(&self.file, &self.path, b),
            None => SegReader::new(&self.file, &self.path),
        }
    }

    /// Bytes the segment's records take as written (before compression, for a compressed
    /// one): what retention limits and reader ceilings count.
    pub fn written_bytes(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Bytes the segment takes on disk (compressed, for a compressed one).
    pub fn disk_bytes(&self) -> u64 {
        match &self.blocks {
            Some(b) => b.file_len,
            None => self.len.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Byte offset of record `seq` (which must be in `first_seq..=end_seq`): from the nearest
    /// sparse-index entry, skipping record headers forward. Extends the index when the walk
    /// goes past its frontier, so each segment is walked once.
    pub fn locate(&self, seq: u64) -> Result<u64, Error> {
        let (mut s, mut offset, frontier) = {
            let idx = lock(&self.index);
            let (s, o) = idx.start_for(seq, self.first_seq);
            (s, o, (idx.frontier_seq, idx.frontier_offset))
        };
        if s == seq {
            return Ok(offset);
        }
        let extending = (s, offset) == frontier;
        let mut fresh = Index {
            entries: Vec::new(),
            frontier_seq: s,
            frontier_offset: offset,
        };
        let mut r = self.reader();
        while s < seq {
            let h = r.skip_header(offset, s)?;
            if extending {
                fresh.push(s, offset, h.frame_len());
            }
            offset += h.frame_len();
            s += 1;
        }
        if extending {
            let mut idx = lock(&self.index);
            if (idx.frontier_seq, idx.frontier_offset) == frontier {
                for (es, eo) in fresh.entries {
                    if idx
                        .entries
                        .last()
                        .is_none_or(|&(_, o)| eo - o >= format::INDEX_STRIDE_BYTES)
                    {
                        idx.entries.push((es, eo));
                    }
                }
                idx.frontier_seq = fresh.frontier_seq;
                idx.frontier_offset = fresh.frontier_offset;
            }
        }
        Ok(offset)
    }
}

/// A registered reader, as retention sees it.
pub(crate) struct ReaderSlot {
    pub name: String,
    pub position: Arc<AtomicU64>,
    /// The most the reader may hold: bytes of the segments from the one holding its position
    /// to the end. Past it, retention goes on as if the reader were not there.
    pub hold_bytes_max: Option<u64>,
    /// Set by retention when it deleted a segment this reader still held (past its ceiling).
    pub lapsed: Arc<AtomicBool>,
}

/// Where a read ended: lets the next read of `seq` start without an index walk.
#[derive(Clone, Copy)]
pub(crate) struct Hint {
    pub seq: u64,
    pub seg_first: u64,
    pub offset: u64,
}

const HINTS_MAX: usize = 8;

/// Everything readers share with the writer.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// Readers hold it shared while reading; `truncate_from` and `reset_to` hold it
    /// exclusively, so no read races a cut of data it was allowed to see.
    pub gate: RwLock<()>,
    /// Oldest seq on disk.
    pub first_seq: AtomicU64,
    pub durable: watch::Receiver<Option<Seq>>,
    pub readers: Mutex<BTreeMap<u64, ReaderSlot>>,
    pub reader_id_next: AtomicU64,
    hints: Mutex<Vec<Hint>>,
    cuts: Mutex<CutLog>,
    /// Held by the writer while it deletes, cuts or replaces segments, and by the compactor
    /// while it swaps a compressed segment in: each sees the other's work whole.
    pub edit: Mutex<()>,
    /// Recently decompressed blocks of this journal's compressed segments.
    pub block_cache: Arc<BlockCache>,
    /// The compactor's counters.
    pub compact: CompactStats,
}

/// Recent truncations, so a tail can tell whether records it returned were cut even when the
/// durable seq has grown past them again before it looked.
#[derive(Default)]
struct CutLog {
    generation: u64,
    /// `(generation, first cut seq)`, newest last, at most `CUTS_MAX`.
    recent: Vec<(u64, u64)>,
}

const CUTS_MAX: usize = 16;

impl Shared {
    pub fn new(
        dir: PathBuf,
        segments: Vec<Arc<Segment>>,
        first_seq: u64,
        durable: watch::Receiver<Option<Seq>>,
        block_cache: Arc<BlockCache>,
    ) -> Shared {
        Shared {
            dir,
            segments: RwLock::new(segments),
            gate: RwLock::new(()),
            first_seq: AtomicU64::new(first_seq),
            durable,
            readers: Mutex::new(BTreeMap::new()),
            reader_id_next: AtomicU64::new(0),
            hints: Mutex::new(Vec::with_capacity(HINTS_MAX)),
            cuts: Mutex::new(CutLog::default()),
            edit: Mutex::new(()),
            block_cache,
            compact: CompactStats::default(),
        }
    }

    /// Records that every seq `>= seq` was cut (0: everything, by a reset).
    pub fn note_cut(&self, seq: u64) {
        let mut cuts = lock(&self.cuts);
        cuts.generation += 1;
        let g = cuts.generation;
        if cuts.recent.len() == CUTS_MAX {
            cuts.recent.remove(0);
        }
        cuts.recent.push((g, seq));
    }

    /// The number of cuts so far.
    pub fn cut_generation(&self) -> u64 {
        lock(&self.cuts).generation
    }

    /// The lowest seq cut by the cuts of generations `since + 1 ..= upto`, `None` if there
    /// were none; 0 when the log no longer reaches back that far (assume everything was cut).
    pub fn cuts_between(&self, since: u64, upto: u64) -> Option<u64> {
        if upto <= since {
            return None;
        }
        let cuts = lock(&self.cuts);
        let covered = cuts.recent.first().is_some_and(|&(g, _)| g <= since + 1);
        if !covered {
            return Some(0);
        }
        cuts.recent
            .iter()
            .filter(|&&(g, _)| g > since && g <= upto)
            .map(|&(_, s)| s)
            .min()
    }

    /// One past the durable seq.
    pub fn durable_next(&self) -> u64 {
        self.durable.borrow().map_or(0, |s| s.0) + 1
    }

    pub fn hint(&self, seq: u64) -> Option<Hint> {
        lock(&self.hints).iter().find(|h| h.seq == seq).copied()
    }

    pub fn remember(&self, hint: Hint) {
        let mut hints = lock(&self.hints);
        if let Some(h) = hints.iter_mut().find(|h| h.seq == hint.seq) {
            *h = hint;
        } else if hints.len() < HINTS_MAX {
            hints.push(hint);
        } else {
            hints.remove(0);
            hints.push(hint);
        }
    }

    pub fn forget_hints(&self) {
        lock(&self.hints).clear();
    }
}

/// Counters of a journal's compactor.
#[derive(Default)]
pub(crate) struct CompactStats {
    pub segments: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub compressed_bytes: AtomicU64,
    pub errors: AtomicU64,
}

/// Locks a mutex; a panic elsewhere while holding it does not make the data unusable here
/// (every critical section leaves it consistent), so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read_lock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write_lock<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// Opens an existing segment file for reading and writing.
pub(crate) fn open_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// Creates the segment starting at `first_seq`: header written and fsynced under a temporary
/// name, renamed into place, directory fsynced. A crash leaves either no segment or a whole
/// one (plus a `.seg.tmp` that open removes).
pub(crate) fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, Error> {
    prepare_segment(dir, first_seq)?.install(dir)
}

/// A segment file written and fsynced under its temporary name, not yet in place.
pub(crate) struct Prepared {
    first_seq: u64,
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

/// First half of [`create_segment`]: the header in `….seg.tmp`, fsynced.
pub(crate) fn prepare_segment(dir: &Path, first_seq: u64) -> Result<Prepared, Error> {
    let name = format::segment_file_name(first_seq);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let made = (|| {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io("create segment", &tmp, e))?;
        f.write_all(&format::encode_segment_header(first_seq))
            .map_err(|e| Error::io("write segment header", &tmp, e))?;
        f.sync_data().map_err(|e| Error::io("fsync", &tmp, e))?;
        Ok(f)
    })();
    match made {
        Ok(file) => Ok(Prepared {
            first_seq,
            file,
            tmp,
            path,
        }),
        Err(e) => {
            remove_tmp(&tmp);
            Err(e)
        }
    }
}

impl Prepared {
    /// Writes `bytes` at `offset` of the temporary file.
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io("write", &self.tmp, e))
    }

    /// Fsyncs the temporary file's data.
    pub fn sync(&self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync", &self.tmp, e))
    }

    /// Second half of [`create_segment`]: rename into place, fsync the directory. On failure
    /// the temporary file stays: open removes it, or promotes it when it is the only
    /// segment left (an interrupted reset).
    pub fn install(self, dir: &Path) -> Result<Segment, Error> {
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::io("rename segment", &self.tmp, e))?;
        sync_dir(dir)?;
        Ok(Segment::new(self.first_seq, self.path, self.file))
    }
}

fn remove_tmp(tmp: &Path) {
    if let Err(rm) = std::fs::remove_file(tmp) {
        if rm.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %tmp.display(), error = %rm, "cannot remove temporary segment");
        }
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}
