//! `history`: the merger's history index in bounded memory (SPEC "De-duplication", issue #14).
//!
//! The merger looks up the open entries of the stream it already wrote (one copy, not matched
//! since) through [`dedup::History`]. While the peer is away every entry stays open, so an
//! index held wholly in memory grows with the outage (141 bytes per entry for
//! [`dedup::MemHistory`]: an hour at 10k messages/s is 5 GiB). [`SpillHistory`] keeps at most
//! [`Options::mem_entries_max`] open entries in memory and writes the rest out as immutable
//! sorted runs (33 bytes per entry on disk), of which memory keeps only:
//! - a Bloom filter over `(key, node)` (10 bits per entry, about 1 % false positives; the keys
//!   are already uniform 128-bit hashes, so the filter takes its probe positions from the key's
//!   bits by double hashing instead of hashing again), stored in the run's footer and read
//!   back only when a lookup reaches the run; at most [`Options::filter_cache_bytes`] of
//!   filters stay loaded, the least recently used go first (a one-sided outage loads none,
//!   so memory grows by 0.4 byte per entry held instead of 1.7);
//! - a sparse index (the first record of every block of [`BLOCK`] records), so a lookup reads
//!   one block of about 4 KiB;
//! - a bitmap over the run's offsets, one bit per stream entry: set when the entry is closed
//!   (a `Matched` fact named it) or was never in the run; a run whose bits are all set is
//!   deleted;
//! - per node, the range of receive times it holds, so a lookup skips runs that cannot hold
//!   an answer (during a one-sided outage every run holds one node's entries only, and the
//!   lookups, which look for the *peer's* entries, touch no run).
//!
//! Pruning ([`SpillHistory::prune`]) raises a per-node floor: entries received before it are
//! invisible to lookups at once, runs wholly below it are deleted, and entries in memory below
//! it are dropped when memory is next written out; nothing is scanned.
//!
//! Checkpoints: [`SpillHistory::image`] makes every run durable and returns an image of the
//! index (the runs' names and closed bits, the entries in memory, the floors), which the
//! caller stores with the rest of its fold; [`SpillHistory::open_image`] opens the index again
//! from it (reading only the runs' footers: filter and sparse index), so a restart does not
//! read the history again. A run an image names is deleted only once a newer image is stored
//! ([`SpillHistory::image_stored`]) or the pending one is dropped
//! ([`SpillHistory::image_dropped`]).
//!
//! A run file: blocks of up to [`BLOCK`] records, each followed by its CRC-32C; then the
//! Bloom filter, the sparse index and a fixed trailer, under one CRC-32C.

pub mod image;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dedup::{History, MemHistory, OpenEntry, Output};
use twinrx_types::{Key, NodeId, Offset, UnixNanos};

/// Records per block of a run (one read per lookup that passes the filter).
pub const BLOCK: usize = 128;
/// Bytes per record in a run: key, node, receive time, offset.
const RECORD: usize = 16 + 1 + 8 + 8;
/// Bytes of a full block on disk: its records and their CRC-32C.
const BLOCK_BYTES: usize = BLOCK * RECORD + 4;
/// Bytes of a sparse-index entry in a run's footer: key, node, receive time.
const INDEX_ENTRY: usize = 16 + 1 + 8;
/// A run's trailer: magic, 11 fields, CRC.
const TRAILER: usize = 8 + 11 * 8 + 8;
const RUN_MAGIC: &[u8; 8] = b"TWXRUN01";
const IMAGE_MAGIC: &[u8; 8] = b"TWXHIS01";
/// Bloom filter bits per entry and probes per lookup (1 % false positives).
const BLOOM_BITS_PER_ENTRY: usize = 10;
const BLOOM_PROBES: u64 = 7;

/// Sizing of a [`SpillHistory`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Open entries kept in memory before they are written out as one sorted run.
    pub mem_entries_max: usize,
    /// Bytes of the runs' Bloom filters kept loaded at once.
    pub filter_cache_bytes: usize,
}

impl Default for Options {
    /// 131,072 entries in memory (about 18 MiB); 8 MiB of filters (about 50 full runs).
    fn default() -> Options {
        Options {
            mem_entries_max: 1 << 17,
            filter_cache_bytes: 8 << 20,
        }
    }
}

/// What a [`SpillHistory`] holds and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open entries in memory.
    pub mem_entries: u64,
    /// Runs on disk and the entries they hold (closed ones included until the run goes).
    pub runs: u64,
    pub run_entries: u64,
    pub run_bytes: u64,
    /// Memory the runs' loaded filters, indexes and bitmaps take.
    pub run_mem_bytes: u64,
    /// Runs whose filter is loaded, and filters read back from a run's footer so far.
    pub filters_loaded: u64,
    pub filter_loads: u64,
    pub runs_written: u64,
    pub runs_deleted: u64,
    /// Block reads by lookups (filter passed).
    pub block_reads: u64,
    /// Failed writes of a run (the entries stay in memory and are written later).
    pub spill_errors: u64,
    pub last_error: Option<String>,
}

/// The merger's history: recent open entries in memory, older ones in sorted runs on disk.
pub struct SpillHistory {
    dir: PathBuf,
    opts: Options,
    mem: MemHistory,
    /// Every entry offset below this is in a run (or was closed or pruned before it).
    mem_lo: Offset,
    /// One past the highest entry offset applied.
    next: Offset,
    runs: Vec<Run>,
    /// Per node: entries received before it are pruned.
    floor: [UnixNanos; 2],
    /// Memory entries at which a failed spill is tried again.
    retry_at: usize,
    file_no: u64,
    /// Runs named by the last stored image and by the pending one: deleted only later.
    pinned_stored: BTreeSet<u64>,
    pinned_pending: Option<BTreeSet<u64>>,
    /// Runs no longer used whose files an image still names.
    doomed: Vec<(u64, PathBuf)>,
    stats: Stats,
    block_reads: Cell<u64>,
    /// Bytes of the filters loaded, filters read back, and the clock of their last use.
    filter_bytes: Cell<usize>,
    filter_loads: Cell<u64>,
    filter_clock: Cell<u64>,
}

impl SpillHistory {
    /// An empty index whose runs go to `dir` (created; files left in it are removed).
    pub fn create(dir: &Path, opts: Options) -> io::Result<SpillHistory> {
        fs::create_dir_all(dir)?;
        for f in fs::read_dir(dir)? {
            let f = f?;
            if f.file_name().to_string_lossy().ends_with(".run") {
                fs::remove_file(f.path())?;
            }
        }
        Ok(SpillHistory {
            dir: dir.to_path_buf(),
            opts,
            mem: MemHistory::new(),
            mem_lo: Offset(0),
            next: Offset(0),
            runs: Vec::new(),
            floor: [UnixNanos(i64::MIN); 2],
            retry_at: opts.mem_entries_max.max(1),
            file_no: 0,
            pinned_stored: BTreeSet::new(),
            pinned_pending: None,
            doomed: Vec::new(),
            stats: Stats::default(),
            block_reads: Cell::new(0),
            filter_bytes: Cell::new(0),
            filter_loads: Cell::new(0),
            filter_clock: Cell::new(0),
        })
    }

    /// Makes every run durable and returns an image of the index; until
    /// [`SpillHistory::image_stored`] or [`SpillHistory::image_dropped`], no run it names is
    /// deleted.
    pub fn image(&mut self) -> io::Result<Vec<u8>> {
        let mut synced_any = false;
        for r in &mut self.runs {
            if !r.synced {
                r.file.sync_data()?;
                r.synced = true;
                synced_any = true;
            }
        }
        if synced_any {
            File::open(&self.dir)?.sync_all()?;
        }
        let bytes = 64
            + self
                .runs
                .iter()
                .map(|r| 24 + r.closed.len() * 8)
                .sum::<usize>()
            + self.mem.open_len() * RECORD;
        let mut e = image::Enc::with_capacity(IMAGE_MAGIC, bytes);
        e.u64(self.mem_lo.0)
            .u64(self.next.0)
            .u64(self.file_no)
            .i64(self.floor[0].0)
            .i64(self.floor[1].0)
            .u64(self.runs.len() as u64);
        for r in &self.runs {
            e.u64(r.file_no).u64(r.open);
            let mut bits = Vec::with_capacity(r.closed.len() * 8);
            for w in &r.closed {
                bits.extend_from_slice(&w.to_le_bytes());
            }
            e.bytes(&bits);
        }
        e.u64(self.mem.open_len() as u64);
        for (key, node, o) in self.mem.iter_open() {
            e.entry(key, node, o.received_at, o.offset);
        }
        self.pinned_pending = Some(self.runs.iter().map(|r| r.file_no).collect());
        Ok(e.finish())
    }

    /// The image last returned is stored durably: runs only older images named may go.
    pub fn image_stored(&mut self) {
        if let Some(p) = self.pinned_pending.take() {
            self.pinned_stored = p;
        }
        self.delete_doomed();
    }

    /// The image last returned will not be stored.
    pub fn image_dropped(&mut self) {
        self.pinned_pending = None;
        self.delete_doomed();
    }

    /// Opens the index an image describes (its runs in `dir`); other run files in `dir` are
    /// removed. The image counts as stored.
    pub fn open_image(dir: &Path, opts: Options, img: &[u8]) -> io::Result<SpillHistory> {
        let mut d = image::Dec::open(img, IMAGE_MAGIC)?;
        let mut h = SpillHistory {
            dir: dir.to_path_buf(),
            opts,
            mem: MemHistory::new(),
            mem_lo: Offset(d.u64()?),
            next: Offset(d.u64()?),
            runs: Vec::new(),
            floor: [UnixNanos(0); 2],
            retry_at: opts.mem_entries_max.max(1),
            file_no: d.u64()?,
            pinned_stored: BTreeSet::new(),
            pinned_pending: None,
            doomed: Vec::new(),
            stats: Stats::default(),
            block_reads: Cell::new(0),
            filter_bytes: Cell::new(0),
            filter_loads: Cell::new(0),
            filter_clock: Cell::new(0),
        };
        h.floor = [UnixNanos(d.i64()?), UnixNanos(d.i64()?)];
        let runs = d.count(16)?;
        for _ in 0..runs {
            let file_no = d.u64()?;
            let open = d.u64()?;
            let bits = d.bytes()?;
            let closed = words(bits);
            let run = Run::open(&h.dir, file_no, closed, open)?;
            h.pinned_stored.insert(file_no);
            h.runs.push(run);
        }
        let mem = d.count(RECORD)?;
        for _ in 0..mem {
            let (key, node, received_at, offset) = d.entry()?;
            h.mem.apply(&Output::Entry(dedup::Entry {
                offset,
                copy: dedup::JournalPos {
                    node,
                    seq: twinrx_types::Seq(0),
                },
                key,
                received_at,
                late: false,
            }));
        }
        if !d.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "checkpoint image: trailing bytes",
            ));
        }
        for f in fs::read_dir(dir)? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            let named = name
                .strip_suffix(".run")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| h.pinned_stored.contains(&n));
            if name.ends_with(".run") && !named {
                fs::remove_file(f.path())?;
            }
        }
        Ok(h)
    }

    /// Folds one more stream-log output in. Never fails: a run that cannot be written (disk
    /// full) leaves its entries in memory, counted in [`Stats::spill_errors`], and is tried
    /// again after another quarter of [`Options::mem_entries_max`].
    pub fn apply(&mut self, output: &Output) {
        match output {
            Output::Entry(e) => {
                self.mem.apply(output);
                self.next = self.next.max(e.offset.next());
                if self.mem.open_len() >= self.retry_at {
                    self.spill();
                }
            }
            Output::Matched(m) => {
                if !self.mem.close(m.entry) {
                    self.close_in_runs(m.entry);
                }
            }
        }
    }

    /// Forgets the open entries of `node` received before `before` (see
    /// [`dedup::Progress::prunable_before`]): they are invisible at once; runs holding nothing
    /// else are deleted.
    pub fn prune(&mut self, node: NodeId, before: UnixNanos) {
        let Some(f) = self.floor.get_mut(usize::from(node.0)) else {
            return;
        };
        if before <= *f {
            return;
        }
        *f = before;
        let floor = self.floor;
        let (dead, live): (Vec<Run>, Vec<Run>) = std::mem::take(&mut self.runs)
            .into_iter()
            .partition(|r| r.below(&floor));
        self.runs = live;
        for r in dead {
            self.delete(r);
        }
    }

    /// Forgets every open entry whose offset is below `offset` (the stream's retention
    /// deleted them: a copy arriving later is a new entry). Runs wholly below it are deleted;
    /// a run it cuts has the offsets below it marked closed.
    pub fn prune_offsets_below(&mut self, offset: Offset) {
        self.mem.close_below(offset);
        let cut = self.runs.partition_point(|r| r.hi <= offset);
        let dead: Vec<Run> = self.runs.drain(..cut).collect();
        for r in dead {
            self.delete(r);
        }
        if let Some(r) = self.runs.first_mut() {
            r.close_below(offset);
            if r.open == 0 {
                let r = self.runs.remove(0);
                self.delete(r);
            }
        }
    }

    /// Open entries held (in memory and in runs; closed entries of a run not counted).
    pub fn open_len(&self) -> u64 {
        self.mem.open_len() as u64 + self.runs.iter().map(|r| r.open).sum::<u64>()
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.mem_entries = self.mem.open_len() as u64;
        s.runs = self.runs.len() as u64;
        s.run_entries = self.runs.iter().map(|r| r.len).sum();
        s.run_bytes = s.run_entries * RECORD as u64;
        s.run_mem_bytes = self.runs.iter().map(Run::mem_bytes).sum();
        s.filters_loaded = self.runs.iter().filter(|r| r.bloom_loaded()).count() as u64;
        s.filter_loads = self.filter_loads.get();
        s.block_reads = self.block_reads.get();
        s
    }

    /// Writes the entries in memory out as one sorted run.
    fn spill(&mut self) {
        match self.write_run() {
            Ok(run) => {
                self.mem.clear();
                self.mem_lo = self.next;
                self.retry_at = self.opts.mem_entries_max.max(1);
                self.stats.runs_written += 1;
                if let Some(run) = run {
                    self.runs.push(run);
                }
            }
            Err(e) => {
                self.stats.spill_errors += 1;
                self.stats.last_error = Some(format!(
                    "writing a history run in {}: {e}",
                    self.dir.display()
                ));
                self.retry_at = self.mem.open_len() + (self.opts.mem_entries_max / 4).max(1);
            }
        }
    }

    fn write_run(&mut self) -> io::Result<Option<Run>> {
        let floor = self.floor;
        let entries: Vec<(Key, NodeId, OpenEntry)> = self
            .mem
            .iter_open()
            .filter(|(_, n, e)| e.received_at >= floor_of(&floor, *n))
            .collect();
        let lo = entries
            .iter()
            .map(|e| e.2.offset)
            .min()
            .map_or(self.mem_lo, |m| m.min(self.mem_lo));
        let hi = entries
            .iter()
            .map(|e| e.2.offset.next())
            .max()
            .map_or(self.next, |m| m.max(self.next));
        if entries.is_empty() {
            return Ok(None);
        }
        self.file_no += 1;
        let file_no = self.file_no;
        let path = run_path(&self.dir, file_no);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        let width = usize::try_from(hi.0 - lo.0).unwrap_or(usize::MAX);
        let mut closed = vec![u64::MAX; width.div_ceil(64)];
        let mut bloom = Bloom::new(entries.len());
        let mut index = Vec::with_capacity(entries.len().div_ceil(BLOCK));
        let mut times: [Option<(UnixNanos, UnixNanos)>; 2] = [None; 2];
        for block in entries.chunks(BLOCK) {
            let mut bytes = Vec::with_capacity(BLOCK_BYTES);
            for &(key, node, e) in block {
                bytes.extend_from_slice(&key.0);
                bytes.push(node.0);
                bytes.extend_from_slice(&e.received_at.0.to_le_bytes());
                bytes.extend_from_slice(&e.offset.0.to_le_bytes());
                bloom.insert(key, node);
                let bit = (e.offset.0 - lo.0) as usize;
                if let Some(word) = closed.get_mut(bit / 64) {
                    *word &= !(1u64 << (bit % 64));
                }
                if let Some(t) = times.get_mut(usize::from(node.0)) {
                    *t = Some(t.map_or((e.received_at, e.received_at), |(a, b)| {
                        (a.min(e.received_at), b.max(e.received_at))
                    }));
                }
            }
            if let Some(&(key, node, e)) = block.first() {
                index.push((key, node, e.received_at));
            }
            let crc = crc32c::crc32c(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            w.write_all(&bytes)?;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        let run = Run {
            file_no,
            path,
            file,
            synced: false,
            lo,
            hi,
            len: entries.len() as u64,
            open: entries.len() as u64,
            bloom_words: bloom.bits.len() as u64,
            bloom: RefCell::new(None),
            last_used: Cell::new(0),
            index,
            closed,
            times,
        };
        run.file
            .write_all_at(&run.footer(&bloom), run.blocks_bytes())?;
        Ok(Some(run))
    }

    /// The run's Bloom filter may hold `(key, node)`; the filter is read back from the run's
    /// footer if it is not loaded, and the least recently used filters are dropped to stay
    /// within [`Options::filter_cache_bytes`] (the one just loaded always stays).
    fn filter_passes(&self, run: &Run, key: Key, node: NodeId) -> io::Result<bool> {
        let tick = self.filter_clock.get() + 1;
        self.filter_clock.set(tick);
        run.last_used.set(tick);
        if let Some(bloom) = run.bloom.borrow().as_ref() {
            return Ok(bloom.may_contain(key, node));
        }
        let bloom = run.read_bloom()?;
        let hit = bloom.may_contain(key, node);
        self.filter_loads.set(self.filter_loads.get() + 1);
        let mut bytes = self.filter_bytes.get() + run.bloom_bytes();
        while bytes > self.opts.filter_cache_bytes {
            let victim = self
                .runs
                .iter()
                .filter(|r| r.file_no != run.file_no && r.bloom_loaded())
                .min_by_key(|r| r.last_used.get());
            let Some(victim) = victim else {
                break;
            };
            victim.bloom.replace(None);
            bytes = bytes.saturating_sub(victim.bloom_bytes());
        }
        self.filter_bytes.set(bytes);
        run.bloom.replace(Some(bloom));
        Ok(hit)
    }

    fn close_in_runs(&mut self, offset: Offset) {
        let i = self.runs.partition_point(|r| r.hi() <= offset);
        let Some(run) = self.runs.get_mut(i) else {
            return;
        };
        if run.close(offset) && run.open == 0 {
            let run = self.runs.remove(i);
            self.delete(run);
        }
    }

    fn pinned(&self, file_no: u64) -> bool {
        self.pinned_stored.contains(&file_no)
            || self
                .pinned_pending
                .as_ref()
                .is_some_and(|p| p.contains(&file_no))
    }

    fn delete(&mut self, run: Run) {
        self.stats.runs_deleted += 1;
        if run.bloom_loaded() {
            self.filter_bytes
                .set(self.filter_bytes.get().saturating_sub(run.bloom_bytes()));
        }
        drop(run.file);
        if self.pinned(run.file_no) {
            self.doomed.push((run.file_no, run.path));
        } else {
            self.remove(&run.path);
        }
    }

    fn delete_doomed(&mut self) {
        for (no, path) in std::mem::take(&mut self.doomed) {
            if self.pinned(no) {
                self.doomed.push((no, path));
            } else {
                self.remove(&path);
            }
        }
    }

    fn remove(&mut self, path: &Path) {
        if let Err(e) = fs::remove_file(path) {
            self.stats.last_error = Some(format!("removing {}: {e}", path.display()));
        }
    }
}

/// Little-endian 64-bit words (a bitmap or filter as stored).
fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

fn run_path(dir: &Path, file_no: u64) -> PathBuf {
    dir.join(format!("{file_no:08}.run"))
}

fn floor_of(floor: &[UnixNanos; 2], node: NodeId) -> UnixNanos {
    floor
        .get(usize::from(node.0))
        .copied()
        .unwrap_or(UnixNanos(i64::MIN))
}

impl History for SpillHistory {
    type Error = io::Error;

    fn earliest_open(
        &self,
        key: Key,
        node: NodeId,
        from: UnixNanos,
        to: UnixNanos,
    ) -> io::Result<Option<OpenEntry>> {
        let from = from.max(floor_of(&self.floor, node));
        if from > to {
            return Ok(None);
        }
        let Ok(mut best) = self.mem.earliest_open(key, node, from, to);
        for run in &self.runs {
            if !run.holds_times(node, from, to) || !self.filter_passes(run, key, node)? {
                continue;
            }
            let found = run.find(key, node, from, to, &self.block_reads)?;
            if let Some(e) = found {
                if best.is_none_or(|b| e < b) {
                    best = Some(e);
                }
            }
        }
        Ok(best)
    }
}

/// One sorted run on disk and what memory keeps of it.
struct Run {
    file_no: u64,
    path: PathBuf,
    file: File,
    /// Its data reached the disk (fsync) for an image.
    synced: bool,
    /// The stream offsets the bitmap covers: `lo..hi`.
    lo: Offset,
    hi: Offset,
    len: u64,
    /// Entries not closed.
    open: u64,
    /// The Bloom filter's size in 64-bit words, and the filter while it is loaded.
    bloom_words: u64,
    bloom: RefCell<Option<Bloom>>,
    /// [`SpillHistory::filter_clock`] at the last lookup that reached this run.
    last_used: Cell<u64>,
    /// `(key, node, received_at)` of the first record of each block.
    index: Vec<(Key, NodeId, UnixNanos)>,
    /// One bit per offset from `lo`: set = closed or not in the run.
    closed: Vec<u64>,
    /// Per node, the oldest and newest receive time held.
    times: [Option<(UnixNanos, UnixNanos)>; 2],
}

impl Run {
    fn hi(&self) -> Offset {
        self.hi
    }

    fn blocks_bytes(&self) -> u64 {
        let full = self.len / BLOCK as u64;
        let rest = self.len % BLOCK as u64;
        full * BLOCK_BYTES as u64
            + if rest > 0 {
                rest * RECORD as u64 + 4
            } else {
                0
            }
    }

    /// Filter, sparse index and trailer, as stored after the blocks.
    fn footer(&self, bloom: &Bloom) -> Vec<u8> {
        let mut f =
            Vec::with_capacity(bloom.bits.len() * 8 + self.index.len() * INDEX_ENTRY + TRAILER);
        for w in &bloom.bits {
            f.extend_from_slice(&w.to_le_bytes());
        }
        for (key, node, at) in &self.index {
            f.extend_from_slice(&key.0);
            f.push(node.0);
            f.extend_from_slice(&at.0.to_le_bytes());
        }
        f.extend_from_slice(RUN_MAGIC);
        let t = |i: usize| self.times.get(i).copied().flatten();
        let fields = [
            self.len,
            self.lo.0,
            self.hi.0,
            bloom.bits.len() as u64,
            self.index.len() as u64,
            u64::from(t(0).is_some()),
            t(0).map_or(0, |x| x.0 .0 as u64),
            t(0).map_or(0, |x| x.1 .0 as u64),
            u64::from(t(1).is_some()),
            t(1).map_or(0, |x| x.0 .0 as u64),
            t(1).map_or(0, |x| x.1 .0 as u64),
        ];
        for v in fields {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let crc = u64::from(crc32c::crc32c(&f));
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    /// Opens a run written by [`SpillHistory`], reading its footer (its filter is read again
    /// when a lookup needs it).
    fn open(dir: &Path, file_no: u64, closed: Vec<u64>, open: u64) -> io::Result<Run> {
        let path = run_path(dir, file_no);
        let file = File::open(&path)?;
        let f = Footer::read(&file, &path)?;
        let run = Run {
            file_no,
            path: path.clone(),
            file,
            synced: true,
            lo: Offset(f.lo),
            hi: Offset(f.hi),
            len: f.len,
            open,
            bloom_words: f.bloom.len() as u64,
            bloom: RefCell::new(None),
            last_used: Cell::new(0),
            index: f.index,
            closed,
            times: f.times,
        };
        let width = usize::try_from(f.hi.saturating_sub(f.lo)).unwrap_or(usize::MAX);
        if run.blocks_bytes() != f.at
            || run.closed.len() != width.div_ceil(64)
            || run.index.len() as u64 != f.len.div_ceil(BLOCK as u64)
            || run.bloom_words == 0
        {
            return Err(bad_run(&path, "sizes do not agree"));
        }
        Ok(run)
    }

    /// Reads the run's Bloom filter back from its footer.
    fn read_bloom(&self) -> io::Result<Bloom> {
        let f = Footer::read(&self.file, &self.path)?;
        if f.bloom.len() as u64 != self.bloom_words || f.lo != self.lo.0 || f.hi != self.hi.0 {
            return Err(bad_run(&self.path, "footer changed since it was opened"));
        }
        Ok(Bloom { bits: f.bloom })
    }

    fn bloom_loaded(&self) -> bool {
        self.bloom.borrow().is_some()
    }

    fn bloom_bytes(&self) -> usize {
        usize::try_from(self.bloom_words * 8).unwrap_or(usize::MAX)
    }

    fn mem_bytes(&self) -> u64 {
        let bloom = if self.bloom_loaded() {
            self.bloom_bytes()
        } else {
            0
        };
        (bloom
            + self.index.len() * std::mem::size_of::<(Key, NodeId, UnixNanos)>()
            + self.closed.len() * 8) as u64
    }

    /// Every entry it holds is below the floor of its node.
    fn below(&self, floor: &[UnixNanos; 2]) -> bool {
        [NodeId::A, NodeId::B].into_iter().all(|n| {
            self.times
                .get(usize::from(n.0))
                .copied()
                .flatten()
                .is_none_or(|(_, newest)| newest < floor_of(floor, n))
        })
    }

    /// It holds entries of `node` received between `from` and `to` (its filter not asked).
    fn holds_times(&self, node: NodeId, from: UnixNanos, to: UnixNanos) -> bool {
        let Some((oldest, newest)) = self.times.get(usize::from(node.0)).copied().flatten() else {
            return false;
        };
        newest >= from && oldest <= to
    }
    fn is_closed(&self, offset: Offset) -> bool {
        let Some(bit) = offset.0.checked_sub(self.lo.0).filter(|_| offset < self.hi) else {
            return true;
        };
        let bit = bit as usize;
        self.closed
            .get(bit / 64)
            .is_none_or(|w| w & (1u64 << (bit % 64)) != 0)
    }

    /// Closes every offset below `offset`.
    fn close_below(&mut self, offset: Offset) {
        let Some(bits) = offset.0.checked_sub(self.lo.0) else {
            return;
        };
        let bits = usize::try_from(bits).unwrap_or(usize::MAX);
        for (i, w) in self.closed.iter_mut().enumerate() {
            let start = i * 64;
            if start >= bits {
                break;
            }
            let n = bits - start;
            *w |= if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        }
        // Every bit not set is an open entry (padding and absent offsets are set).
        let set: u64 = self.closed.iter().map(|w| u64::from(w.count_ones())).sum();
        self.open = (self.closed.len() as u64 * 64).saturating_sub(set);
    }

    /// Closes `offset`; true if it was open here.
    fn close(&mut self, offset: Offset) -> bool {
        if self.is_closed(offset) {
            return false;
        }
        let bit = (offset.0 - self.lo.0) as usize;
        if let Some(w) = self.closed.get_mut(bit / 64) {
            *w |= 1u64 << (bit % 64);
            self.open -= 1;
            return true;
        }
        false
    }

    fn find(
        &self,
        key: Key,
        node: NodeId,
        from: UnixNanos,
        to: UnixNanos,
        reads: &std::cell::Cell<u64>,
    ) -> io::Result<Option<OpenEntry>> {
        let target = (key, node, from);
        let first = self
            .index
            .partition_point(|x| *x < target)
            .saturating_sub(1);
        let blocks = self.index.len();
        let mut buf = vec![0u8; BLOCK_BYTES];
        for b in first..blocks {
            let start = b * BLOCK;
            let n = (self.len as usize - start).min(BLOCK);
            let bytes = buf.get_mut(..n * RECORD + 4).unwrap_or_default();
            self.file
                .read_exact_at(bytes, (b * BLOCK_BYTES) as u64)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("reading history run {}: {e}", self.path.display()),
                    )
                })?;
            reads.set(reads.get() + 1);
            let (records, crc) = bytes.split_at(n * RECORD);
            let mut c = [0u8; 4];
            c.copy_from_slice(crc);
            if crc32c::crc32c(records) != u32::from_le_bytes(c) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "history run {}: block {b} CRC mismatch",
                        self.path.display()
                    ),
                ));
            }
            for rec in records.chunks_exact(RECORD) {
                let (k, n, at, offset) = decode(rec);
                match (k, n).cmp(&(key, node)) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Greater => return Ok(None),
                    std::cmp::Ordering::Equal => {}
                }
                if at < from {
                    continue;
                }
                if at > to {
                    return Ok(None);
                }
                if !self.is_closed(offset) {
                    return Ok(Some(OpenEntry {
                        received_at: at,
                        offset,
                    }));
                }
            }
        }
        Ok(None)
    }
}

fn bad_run(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("history run {}: {what}", path.display()),
    )
}

/// A run's footer as read back (CRC checked): filter, sparse index, trailer fields.
struct Footer {
    len: u64,
    lo: u64,
    hi: u64,
    bloom: Vec<u64>,
    index: Vec<(Key, NodeId, UnixNanos)>,
    times: [Option<(UnixNanos, UnixNanos)>; 2],
    /// Where the footer starts (the blocks' size).
    at: u64,
}

impl Footer {
    fn read(file: &File, path: &Path) -> io::Result<Footer> {
        let bad = |what: &str| bad_run(path, what);
        let size = file.metadata()?.len();
        let mut trailer = [0u8; TRAILER];
        let t_at = size
            .checked_sub(TRAILER as u64)
            .ok_or_else(|| bad("too short"))?;
        file.read_exact_at(&mut trailer, t_at)?;
        if trailer.get(..8) != Some(RUN_MAGIC.as_slice()) {
            return Err(bad("not a run file"));
        }
        let field = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(trailer.get(8 + i * 8..16 + i * 8).unwrap_or(&[0; 8]));
            u64::from_le_bytes(b)
        };
        let (len, lo, hi, nbloom, nindex) = (field(0), field(1), field(2), field(3), field(4));
        let times = [
            (field(5) != 0).then(|| (UnixNanos(field(6) as i64), UnixNanos(field(7) as i64))),
            (field(8) != 0).then(|| (UnixNanos(field(9) as i64), UnixNanos(field(10) as i64))),
        ];
        let footer_len = nbloom
            .checked_mul(8)
            .and_then(|b| nindex.checked_mul(INDEX_ENTRY as u64).map(|i| (b, i)))
            .and_then(|(b, i)| b.checked_add(i))
            .ok_or_else(|| bad("footer size"))?;
        let at = t_at
            .checked_sub(footer_len)
            .ok_or_else(|| bad("footer size"))?;
        let mut footer = vec![
            0u8;
            usize::try_from(footer_len + TRAILER as u64)
                .map_err(|_| bad("footer size"))?
        ];
        file.read_exact_at(&mut footer, at)?;
        let crc_at = footer.len() - 8;
        let mut c = [0u8; 8];
        c.copy_from_slice(footer.get(crc_at..).unwrap_or(&[0; 8]));
        if u64::from(crc32c::crc32c(footer.get(..crc_at).unwrap_or(&[]))) != u64::from_le_bytes(c) {
            return Err(bad("footer CRC mismatch"));
        }
        let (bloom_bytes, rest) = footer.split_at((nbloom * 8) as usize);
        let index = rest
            .chunks_exact(INDEX_ENTRY)
            .take(nindex as usize)
            .map(|c| {
                let mut k = [0u8; 16];
                k.copy_from_slice(c.get(..16).unwrap_or(&[0; 16]));
                let mut at = [0u8; 8];
                at.copy_from_slice(c.get(17..25).unwrap_or(&[0; 8]));
                (
                    Key(k),
                    NodeId(c.get(16).copied().unwrap_or(0)),
                    UnixNanos(i64::from_le_bytes(at)),
                )
            })
            .collect();
        Ok(Footer {
            len,
            lo,
            hi,
            bloom: words(bloom_bytes),
            index,
            times,
            at,
        })
    }
}

fn decode(rec: &[u8]) -> (Key, NodeId, UnixNanos, Offset) {
    let mut key = [0u8; 16];
    let mut at = [0u8; 8];
    let mut off = [0u8; 8];
    key.copy_from_slice(rec.get(..16).unwrap_or(&[0; 16]));
    at.copy_from_slice(rec.get(17..25).unwrap_or(&[0; 8]));
    off.copy_from_slice(rec.get(25..33).unwrap_or(&[0; 8]));
    (
        Key(key),
        NodeId(rec.get(16).copied().unwrap_or(0)),
        UnixNanos(i64::from_le_bytes(at)),
        Offset(u64::from_le_bytes(off)),
    )
}

/// A Bloom filter over `(key, node)`; the key is already a uniform hash, so its two halves
/// are the two hashes of double hashing.
struct Bloom {
    bits: Vec<u64>,
}

impl Bloom {
    fn new(entries: usize) -> Bloom {
        let words = (entries * BLOOM_BITS_PER_ENTRY).div_ceil(64).max(1);
        Bloom {
            bits: vec![0; words],
        }
    }

    fn probes(&self, key: Key, node: NodeId) -> impl Iterator<Item = usize> {
        let mut h1 = [0u8; 8];
        let mut h2 = [0u8; 8];
        h1.copy_from_slice(&key.0[..8]);
        h2.copy_from_slice(&key.0[8..]);
        let h1 = u64::from_le_bytes(h1) ^ u64::from(node.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h2 = u64::from_le_bytes(h2) | 1;
        let m = self.bits.len() as u64 * 64;
        (0..BLOOM_PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    fn insert(&mut self, key: Key, node: NodeId) {
        let probes: Vec<usize> = self.probes(key, node).collect();
        for p in probes {
            if let Some(w) = self.bits.get_mut(p / 64) {
                *w |= 1u64 << (p % 64);
            }
        }
    }

    fn may_contain(&self, key: Key, node: NodeId) -> bool {
        self.probes(key, node).all(|p| {
            self.bits
                .get(p / 64)
                .is_some_and(|w| w & (1u64 << (p % 64)) != 0)
        })
    }
}
