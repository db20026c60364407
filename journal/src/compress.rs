//! Compressed segments (FORMAT.md "Compressed segments").
//!
//! A sealed segment (every segment but the active one) is rewritten off the append path as
//! independent zstd frames ("blocks") of about [`BLOCK_RAW_BYTES`] of its records, cut at
//! record boundaries, followed by a block table. Offsets do not change: a block covers a
//! byte range of the segment as written, so sparse indexes, read hints and
//! [`crate::format::SegReader`] work on both kinds; a read decompresses the block holding
//! the record (a few recently used blocks are cached per journal).
//!
//! The [`Compactor`] thread of a journal does the rewriting: it writes `….zseg.tmp`,
//! fsyncs it, and under the table's edit lock (held by the writer while it deletes, cuts
//! or resets segments) checks that the segment is still what it read, renames the file
//! into place and swaps the table entry, then removes the `.seg`. A crash leaves the
//! `.seg`, perhaps beside a complete `.zseg`: open keeps the `.seg` (FORMAT.md
//! "Recovery").

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crate::blocks::{
    read_block, Block, BlockCache, Blocks, BLOCK_RAW_BYTES, ENTRY_LEN, TRAILER_LEN, TRAILER_MAGIC,
};
use crate::format::{self, SegReader, SEGMENT_HEADER_LEN, ZSEGMENT_MAGIC};
use crate::segment::{lock, read_lock, sync_dir, write_lock, Segment, Shared};
use crate::Error;

/// What the compactor checks and swaps: a compressed copy of a segment, written and fsynced
/// under its temporary name.
struct Written {
    tmp: PathBuf,
    file: File,
    blocks: Blocks,
}

/// Writes `seg` (sealed: nothing is appended to it any more) compressed at `level` to
/// `….zseg.tmp` and fsyncs it. Every record's CRC and seq is checked on the way. `None` if
/// `stop` was raised (the temporary file is removed).
fn write_compressed(
    seg: &Segment,
    level: i32,
    stop: &AtomicBool,
    cache: Arc<BlockCache>,
    dir: &Path,
) -> Result<Option<Written>, Error> {
    let len = seg.len.load(Ordering::Acquire);
    let end = seg.end_seq.load(Ordering::Acquire);
    let tmp = dir.join(format!(
        "{}{}",
        format::zsegment_file_name(seg.first_seq),
        ".tmp"
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io("create compressed segment", &tmp, e))?;
    let written = (|| {
        let write = |bytes: &[u8], at: u64| {
            file.write_all_at(bytes, at)
                .map_err(|e| Error::io("write", &tmp, e))
        };
        write(&format::encode_header(ZSEGMENT_MAGIC, seg.first_seq), 0)?;
        let mut compressor =
            zstd::bulk::Compressor::new(level).map_err(|e| Error::io("start zstd for", &tmp, e))?;
        let mut r = SegReader::new(&seg.file, &seg.path);
        let mut blocks = Vec::new();
        let mut raw = Vec::with_capacity(BLOCK_RAW_BYTES as usize * 2);
        let (mut offset, mut seq, mut comp_at) =
            (SEGMENT_HEADER_LEN, seg.first_seq, SEGMENT_HEADER_LEN);
        let mut block_start = (offset, seq);
        while seq < end {
            let (h, _) = r.record(offset, seq)?;
            let frame =
                r.get(offset, h.frame_len() as usize)?
                    .ok_or_else(|| Error::BadSegment {
                        segment: seg.path.clone(),
                        reason: format!("record {seq} at {offset} is past the end of the file"),
                    })?;
            raw.extend_from_slice(frame);
            offset += h.frame_len();
            seq += 1;
            if raw.len() as u64 >= BLOCK_RAW_BYTES || seq == end {
                if stop.load(Ordering::Acquire) {
                    return Ok(None);
                }
                let comp = compressor
                    .compress(&raw)
                    .map_err(|e| Error::io("compress", &seg.path, e))?;
                write(&comp, comp_at)?;
                blocks.push(Block {
                    first_seq: block_start.1,
                    raw_start: block_start.0,
                    comp_off: comp_at,
                    raw_len: raw.len() as u32,
                    comp_len: comp.len() as u32,
                    crc: crc32c::crc32c(&comp),
                });
                comp_at += comp.len() as u64;
                raw.clear();
                block_start = (offset, seq);
            }
        }
        if offset != len {
            return Err(Error::BadSegment {
                segment: seg.path.clone(),
                reason: format!("records end at byte {offset}, the segment at {len}"),
            });
        }
        let mut tail = Vec::with_capacity(blocks.len() * ENTRY_LEN + TRAILER_LEN as usize);
        for b in &blocks {
            b.encode(&mut tail);
        }
        let table_len = tail.len();
        tail.extend_from_slice(&TRAILER_MAGIC);
        tail.extend_from_slice(&comp_at.to_le_bytes());
        tail.extend_from_slice(&end.to_le_bytes());
        tail.extend_from_slice(&len.to_le_bytes());
        tail.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&tail);
        tail.extend_from_slice(&crc.to_le_bytes());
        tail.resize(table_len + TRAILER_LEN as usize, 0);
        write(&tail, comp_at)?;
        file.sync_data().map_err(|e| Error::io("fsync", &tmp, e))?;
        let file_len = comp_at + tail.len() as u64;
        Ok(Some(Blocks::new(blocks, end, len, file_len, cache)))
    })();
    match written {
        Ok(Some(blocks)) => Ok(Some(Written { tmp, file, blocks })),
        other => {
            remove_quietly(&tmp);
            other.map(|_| None)
        }
    }
}

/// Rewrites the compressed segment `seg` as a segment file as written (the records of every
/// block after the header), so that it can be cut or appended to: `….seg.tmp` fsynced and
/// renamed into place, then the `.zseg` removed. The caller swaps the table entry.
pub(crate) fn decompress_segment(seg: &Segment, dir: &Path) -> Result<Segment, Error> {
    let Some(blocks) = seg.blocks.as_ref() else {
        return Err(Error::BadSegment {
            segment: seg.path.clone(),
            reason: "not a compressed segment".into(),
        });
    };
    let prepared = crate::segment::prepare_segment(dir, seg.first_seq)?;
    let mut at = SEGMENT_HEADER_LEN;
    for b in &blocks.blocks {
        let raw = read_block(&seg.file, &seg.path, b)?;
        prepared.write_at(&raw, at)?;
        at += raw.len() as u64;
    }
    prepared.sync()?;
    let raw = prepared.install(dir)?;
    remove_quietly(&seg.path);
    sync_dir(dir)?;
    raw.len.store(blocks.raw_len, Ordering::Release);
    raw.end_seq.store(blocks.end_seq, Ordering::Release);
    raw.first_ts_ms
        .store(seg.first_ts_ms.load(Ordering::Acquire), Ordering::Release);
    raw.last_ts_ms
        .store(seg.last_ts_ms.load(Ordering::Acquire), Ordering::Release);
    *lock(&raw.index) = blocks.index();
    tracing::info!(segment = %raw.path.display(), "journal segment decompressed");
    Ok(raw)
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "journal: cannot remove file");
        }
    }
}

/// Work for the compactor thread.
enum Job {
    Compress(Arc<Segment>),
    /// Answered once every job queued before it is done.
    Barrier(mpsc::Sender<()>),
}

/// The background thread that compresses a journal's sealed segments.
pub(crate) struct Compactor {
    tx: Option<mpsc::Sender<Job>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts the thread for the journal sharing `shared`.
    pub fn start(shared: Arc<Shared>, level: i32) -> Result<Compactor, Error> {
        let (tx, rx) = mpsc::channel::<Job>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let dir = shared.dir.clone();
        let thread = std::thread::Builder::new()
            .name("journal-compact".into())
            .spawn(move || {
                for job in rx {
                    let seg = match job {
                        Job::Barrier(done) => {
                            let _ = done.send(());
                            continue;
                        }
                        Job::Compress(seg) => seg,
                    };
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    if let Err(e) = compact(&shared, &seg, level, &stopping) {
                        shared.compact.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(segment = %seg.path.display(), error = %e, "journal: segment not compressed; it stays as written");
                    }
                }
            })
            .map_err(|e| Error::io("start the compaction thread for", &dir, e))?;
        Ok(Compactor {
            tx: Some(tx),
            stop,
            thread: Some(thread),
        })
    }

    /// Queues a sealed segment.
    pub fn submit(&self, seg: Arc<Segment>) {
        if let Some(tx) = &self.tx {
            // The thread only ends when this sender is dropped.
            let _ = tx.send(Job::Compress(seg));
        }
    }

    /// Blocks until every segment queued so far was compressed (or skipped).
    pub fn wait(&self) {
        let (done, wait) = mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Job::Barrier(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Compresses `seg` and swaps it into the table if it is still there, unchanged.
fn compact(
    shared: &Shared,
    seg: &Arc<Segment>,
    level: i32,
    stop: &AtomicBool,
) -> Result<(), Error> {
    // Sealed: in the table and not the last (a cut can make a queued segment the active one
    // again; its `cuts` then changed too).
    let present = |segs: &[Arc<Segment>]| {
        segs.iter()
            .position(|s| Arc::ptr_eq(s, seg))
            .filter(|&i| i + 1 < segs.len())
    };
    if seg.blocks.is_some() || present(&read_lock(&shared.segments)).is_none() {
        return Ok(());
    }
    let (len, end, cuts) = (
        seg.len.load(Ordering::Acquire),
        seg.end_seq.load(Ordering::Acquire),
        seg.cuts.load(Ordering::Acquire),
    );
    if end == seg.first_seq {
        return Ok(());
    }
    let written = write_compressed(seg, level, stop, shared.block_cache.clone(), &shared.dir);
    let w = match written {
        Ok(Some(w)) => w,
        Ok(None) => return Ok(()),
        // A cut or a deletion under the compactor's reads is not an error: it lost the race.
        Err(_) if seg.cuts.load(Ordering::Acquire) != cuts => return Ok(()),
        Err(_) if present(&read_lock(&shared.segments)).is_none() => return Ok(()),
        Err(e) => return Err(e),
    };
    let _edit = lock(&shared.edit);
    let unchanged = seg.len.load(Ordering::Acquire) == len
        && seg.end_seq.load(Ordering::Acquire) == end
        && seg.cuts.load(Ordering::Acquire) == cuts;
    let at = present(&read_lock(&shared.segments));
    let (Some(i), true) = (at, unchanged) else {
        remove_quietly(&w.tmp);
        return Ok(());
    };
    let path = shared.dir.join(format::zsegment_file_name(seg.first_seq));
    if let Err(e) = std::fs::rename(&w.tmp, &path) {
        remove_quietly(&w.tmp);
        return Err(Error::io("rename compressed segment", &w.tmp, e));
    }
    let file_len = w.blocks.file_len;
    let z = Segment::compressed(seg.first_seq, path, w.file, w.blocks);
    z.first_ts_ms
        .store(seg.first_ts_ms.load(Ordering::Acquire), Ordering::Release);
    z.last_ts_ms
        .store(seg.last_ts_ms.load(Ordering::Acquire), Ordering::Release);
    write_lock(&shared.segments)[i] = Arc::new(z);
    remove_quietly(&seg.path);
    sync_dir(&shared.dir)?;
    let c = &shared.compact;
    c.segments.fetch_add(1, Ordering::Relaxed);
    c.raw_bytes.fetch_add(len, Ordering::Relaxed);
    c.compressed_bytes.fetch_add(file_len, Ordering::Relaxed);
    tracing::debug!(segment = %seg.path.display(), raw = len, compressed = file_len, "journal segment compressed");
    Ok(())
}
