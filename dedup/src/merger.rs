//! The streaming merger: a sans-IO state machine that turns the two journals into the merged,
//! de-duplicated stream.
//!
//! In: journal records, in seq order per node, with any interleaving and lag between the two
//! nodes ([`Merger::handle_record`]); optionally ticks with the current time
//! ([`Merger::handle_tick`], which only frees memory). Out: for each record, exactly one
//! [`Output`]: a new [`Entry`] (published at once, never held back waiting for the peer copy)
//! or a [`Matched`] fact (the record is the peer copy of an entry already in the stream and is
//! suppressed).
//!
//! Matching rule (SPEC "De-duplication"): a record from node N matches the open entry (one
//! copy, unmatched) from the other node with the same key and a receive time within `W` of its
//! own that comes first in `(received_at, offset)` order; if there is none, it is a new entry.
//! With each node's receive times nondecreasing in seq order this online pairing has the same
//! size per key as the reference's (a maximum matching), whatever the interleaving: the
//! earliest candidate is the one the records still to come (all later) can least use. If a
//! clock steps backwards the pairing stays one-to-one and within `W` but may be smaller than
//! the maximum (an extra event, never a lost one).
//!
//! Memory: the merger holds the open entries whose receive time is at or above a *horizon*
//! that trails the newest receive time seen by `memory_ms` (and is raised further if more than
//! `memory_entries_max` are held). A record whose window `[t - W, t + W]` lies at or above the
//! horizon is matched in memory; any other (a late record) is matched through the
//! [`History`], which covers the whole stream. Both answer the same question, so the horizon
//! changes speed and memory, never the outputs.
//!
//! Failover: the state that matters (which entries are open, which records are accounted for,
//! the next offset) is all in the stream log, so [`Merger::recover`] needs only the
//! [`Progress`] of the committed log and a history over it; journal records above
//! `Progress::consumed` are fed again.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use twinrx_types::{Key, NodeId, Offset, Seq, UnixNanos};

use crate::history::History;
use crate::record::{Entry, JournalPos, Matched, Output, Progress, Record};

/// Merger settings as given (e.g. from the `[merger]` table of the node's TOML).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `W`: two copies of one event differ in receive time by at most this.
    pub window_ms: u64,
    /// Open entries are kept in memory while their receive time is within this of the newest
    /// receive time seen; older ones are matched through the history. At least `window_ms`.
    pub memory_ms: u64,
    /// At most this many open entries in memory (the horizon moves up to keep it so).
    pub memory_entries_max: usize,
    /// Seed of the in-memory hash table (keys come from device content; a per-node random seed
    /// keeps crafted keys from colliding in the table). Any value is correct.
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            window_ms: 5_000,
            memory_ms: 30_000,
            memory_entries_max: 1 << 20,
            hash_seed: 0,
        }
    }
}

/// A [`Config`] that passed [`Config::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidConfig(Config);

impl ValidConfig {
    pub fn get(&self) -> &Config {
        &self.0
    }
}

/// A setting the merger cannot run with; the message names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("merger.window_ms = 0: must be at least 1, or no two copies would ever match")]
    WindowZero,
    #[error("merger.window_ms = {0}: must be at most 86400000 (one day)")]
    WindowTooLarge(u64),
    #[error("merger.memory_ms = {memory_ms}: must be at least merger.window_ms ({window_ms})")]
    MemoryBelowWindow { memory_ms: u64, window_ms: u64 },
    #[error("merger.memory_entries_max = 0: must be at least 1")]
    MemoryEntriesZero,
}

impl Config {
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.window_ms == 0 {
            return Err(ConfigError::WindowZero);
        }
        if self.window_ms > 86_400_000 {
            return Err(ConfigError::WindowTooLarge(self.window_ms));
        }
        if self.memory_ms < self.window_ms {
            return Err(ConfigError::MemoryBelowWindow {
                memory_ms: self.memory_ms,
                window_ms: self.window_ms,
            });
        }
        if self.memory_entries_max == 0 {
            return Err(ConfigError::MemoryEntriesZero);
        }
        Ok(ValidConfig(self))
    }
}

/// Why a record was not consumed. The merger's state is unchanged in every case.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error<E> {
    /// The record is not the next one of its journal: records must come in seq order per
    /// node, each once. `got <= expected - 1` means it is already accounted for.
    #[error("journal {node}: record {got} fed, expected {expected}")]
    OutOfSequence { node: NodeId, expected: Seq, got: Seq },
    /// The record names a node that is not A or B.
    #[error("record {node}:{seq} names an unknown node")]
    UnknownNode { node: NodeId, seq: Seq },
    /// The history could not be read; feed the same record again later.
    #[error("history lookup for record {copy} failed")]
    History { copy: JournalPos, source: E },
}

/// Counters since this merger was created or recovered (STYLE §8: drivers export them as
/// `twinrx_merger_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records consumed (= entries + matched).
    pub records: u64,
    /// New stream entries.
    pub entries: u64,
    /// Of `entries`, those marked late.
    pub late: u64,
    /// Records suppressed as the peer copy of an entry.
    pub matched: u64,
    /// Of `matched`, those matched through the history (late copies).
    pub matched_from_history: u64,
    /// Lookups in the history (each is a disk index read in the binary).
    pub history_lookups: u64,
    /// Open entries dropped from memory (they stay matchable through the history).
    pub evicted: u64,
    /// Open entries in memory now.
    pub memory_entries: u64,
}

/// The streaming merger. See the module docs for the rule and the contract; in short, the
/// driver:
///
/// 1. creates it with [`Merger::new`] (empty stream) or [`Merger::recover`] (the
///    [`Progress`] of the committed stream log);
/// 2. for each journal record above `progress().consumed` of its node, in seq order per node,
///    calls [`handle_record`](Merger::handle_record) with a [`History`] that reflects every
///    output returned so far, appends the returned [`Output`] to the stream log (entries are
///    published to consumers, `Matched` facts are kept for recovery and the index) and applies
///    it to the history before the next call;
/// 3. persists the stream log; after a failover, a new merger is recovered from the committed
///    log alone.
///
/// Invariants: every record fed is accounted for by exactly one output; entries get offsets
/// `next_offset, next_offset + 1, ...` with no gap; an entry is named by at most one `Matched`,
/// whose copy is from the other node, with the same key, within `W`.
#[derive(Debug)]
pub struct Merger {
    window_ns: i64,
    memory_ns: i64,
    memory_entries_max: usize,
    progress: Progress,
    /// Open entries with `received_at >= horizon` are all in `open` (some older ones may
    /// linger until the next sweep; they are never consulted).
    horizon: i64,
    open: HashMap<Key, Slot, SeededKeyHash>,
    open_len: usize,
    inserted_since_sweep: usize,
    stats: Stats,
}

/// An open entry in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Open {
    node: NodeId,
    received_at: i64,
    offset: Offset,
}

/// The open entries of one key; almost always exactly one, so it lives inline.
#[derive(Clone, Debug)]
struct Slot {
    first: Open,
    more: Vec<Open>,
}

impl Slot {
    fn iter(&self) -> impl Iterator<Item = &Open> {
        std::iter::once(&self.first).chain(self.more.iter())
    }

    /// Removes the entry at `offset`; returns (removed, slot now empty).
    fn remove(&mut self, offset: Offset) -> (bool, bool) {
        if self.first.offset == offset {
            match self.more.pop() {
                Some(o) => {
                    self.first = o;
                    (true, false)
                }
                None => (true, true),
            }
        } else if let Some(i) = self.more.iter().position(|o| o.offset == offset) {
            self.more.swap_remove(i);
            (true, false)
        } else {
            (false, false)
        }
    }
}

const NS_PER_MS: i64 = 1_000_000;
const SWEEP_MIN: usize = 4096;

impl Merger {
    /// A merger for an empty stream.
    pub fn new(config: ValidConfig) -> Merger {
        Merger::recover(config, Progress::start())
    }

    /// A merger that continues the committed stream log whose fold is `progress` (see
    /// [`Progress::from_log`]). The history given to later calls must reflect exactly that
    /// log. Nothing else is carried over: the in-memory window starts empty and everything
    /// already in the stream is matched through the history, so the first `W` of records after
    /// a failover cost a history lookup each.
    pub fn recover(config: ValidConfig, progress: Progress) -> Merger {
        let c = config.0;
        // validate() bounds window_ms to a day; memory_ms may be large, saturate it.
        let window_ns = i64::try_from(c.window_ms)
            .expect("validated: window_ms <= one day")
            .saturating_mul(NS_PER_MS);
        let memory_ns = i64::try_from(c.memory_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(NS_PER_MS);
        Merger {
            window_ns,
            memory_ns,
            memory_entries_max: c.memory_entries_max,
            progress,
            // Every entry already in the stream is below the horizon, i.e. in the history.
            horizon: progress
                .newest
                .map_or(i64::MIN, |t| t.0.saturating_add(1)),
            open: HashMap::with_hasher(SeededKeyHash(c.hash_seed)),
            open_len: 0,
            inserted_since_sweep: 0,
            stats: Stats::default(),
        }
    }

    /// Consumes the next record of a journal and returns what the stream must record for it.
    /// On error nothing is consumed.
    pub fn handle_record<H: History>(
        &mut self,
        record: Record,
        history: &H,
    ) -> Result<Output, Error<H::Error>> {
        let side = usize::from(record.node.0);
        if side > 1 {
            return Err(Error::UnknownNode {
                node: record.node,
                seq: record.seq,
            });
        }
        let expected = self.progress.consumed[side].next();
        if record.seq != expected {
            return Err(Error::OutOfSequence {
                node: record.node,
                expected,
                got: record.seq,
            });
        }
        let t = record.received_at.0;
        let peer = record.node.peer();
        let from = t.saturating_sub(self.window_ns);
        let to = t.saturating_add(self.window_ns);

        // Find the earliest open entry of the peer within the window.
        let found = if from >= self.horizon {
            self.earliest_in_memory(record.key, peer, from, to)
        } else {
            self.stats.history_lookups += 1;
            let h = history
                .earliest_open(record.key, peer, UnixNanos(from), UnixNanos(to))
                .map_err(|source| Error::History {
                    copy: record.pos(),
                    source,
                })?;
            if h.is_some() {
                self.stats.matched_from_history += 1;
            }
            h.map(|e| e.offset)
        };

        let newest_before = self.progress.newest.map_or(i64::MIN, |n| n.0);
        let output = match found {
            Some(offset) => {
                self.remove_open(record.key, offset);
                self.stats.matched += 1;
                Output::Matched(Matched {
                    entry: offset,
                    copy: record.pos(),
                    key: record.key,
                    received_at: record.received_at,
                })
            }
            None => {
                let offset = self.progress.next_offset;
                let late = to < newest_before;
                self.stats.entries += 1;
                if late {
                    self.stats.late += 1;
                }
                Output::Entry(Entry {
                    offset,
                    copy: record.pos(),
                    key: record.key,
                    received_at: record.received_at,
                    late,
                })
            }
        };
        self.progress.apply(&output);
        self.stats.records += 1;

        self.raise_horizon(self.progress.newest.map_or(i64::MIN, |n| n.0));
        if let Output::Entry(e) = &output {
            if t >= self.horizon {
                self.insert_open(
                    e.key,
                    Open {
                        node: record.node,
                        received_at: t,
                        offset: e.offset,
                    },
                );
            }
        }
        Ok(output)
    }

    /// Frees memory when traffic is idle: open entries older than `now - memory_ms` move to
    /// the history. Never changes any output.
    pub fn handle_tick(&mut self, now: UnixNanos) {
        self.raise_horizon(now.0);
        self.sweep();
    }

    /// The fold of every output so far (what recovery would start from if all were committed).
    pub fn progress(&self) -> Progress {
        self.progress
    }

    pub fn stats(&self) -> Stats {
        Stats {
            memory_entries: self.open_len as u64,
            ..self.stats
        }
    }

    fn raise_horizon(&mut self, newest: i64) {
        let h = newest.saturating_sub(self.memory_ns);
        if h > self.horizon {
            self.horizon = h;
        }
    }

    fn earliest_in_memory(&self, key: Key, node: NodeId, from: i64, to: i64) -> Option<Offset> {
        let slot = self.open.get(&key)?;
        slot.iter()
            .filter(|o| o.node == node && o.received_at >= from && o.received_at <= to)
            .min_by_key(|o| (o.received_at, o.offset))
            .map(|o| o.offset)
    }

    fn remove_open(&mut self, key: Key, offset: Offset) {
        if let Some(slot) = self.open.get_mut(&key) {
            let (removed, empty) = slot.remove(offset);
            if removed {
                self.open_len -= 1;
            }
            if empty {
                self.open.remove(&key);
            }
        }
    }

    fn insert_open(&mut self, key: Key, open: Open) {
        match self.open.get_mut(&key) {
            Some(slot) => slot.more.push(open),
            None => {
                self.open.insert(
                    key,
                    Slot {
                        first: open,
                        more: Vec::new(),
                    },
                );
            }
        }
        self.open_len += 1;
        self.inserted_since_sweep += 1;
        // Amortised O(1): a sweep costs O(open_len) and runs after as many insertions.
        if self.inserted_since_sweep >= self.open_len.max(SWEEP_MIN)
            || self.open_len > self.memory_entries_max
        {
            self.sweep();
        }
    }

    /// Drops open entries below the horizon, raising the horizon first if memory is over its
    /// limit. Dropped entries stay in the history, which answers for everything below the
    /// horizon.
    fn sweep(&mut self) {
        self.inserted_since_sweep = 0;
        if self.open_len > self.memory_entries_max {
            // Keep the newest half of the limit: raise the horizon above the time of the
            // (open_len - keep)-th oldest entry.
            let keep = self.memory_entries_max / 2;
            let mut times: Vec<i64> = self
                .open
                .values()
                .flat_map(|s| s.iter().map(|o| o.received_at))
                .collect();
            let cut = times.len().saturating_sub(keep).saturating_sub(1);
            let (_, nth, _) = times.select_nth_unstable(cut);
            let h = nth.saturating_add(1);
            if h > self.horizon {
                self.horizon = h;
            }
        }
        let horizon = self.horizon;
        let mut dropped = 0usize;
        self.open.retain(|_, slot| {
            let before = 1 + slot.more.len();
            slot.more.retain(|o| o.received_at >= horizon);
            if slot.first.received_at < horizon {
                match slot.more.pop() {
                    Some(o) => slot.first = o,
                    None => {
                        dropped += before;
                        return false;
                    }
                }
            }
            dropped += before - (1 + slot.more.len());
            true
        });
        self.open_len -= dropped;
        self.stats.evicted += dropped as u64;
    }
}

/// Hash of a [`Key`] (already a uniform 128-bit content hash) for the in-memory table: fold
/// the two halves with the seed and mix, instead of std's RandomState (which reads the OS RNG;
/// this crate takes its randomness as a seed).
#[derive(Clone, Copy, Debug)]
struct SeededKeyHash(u64);

impl BuildHasher for SeededKeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

#[derive(Clone, Copy, Debug)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(b))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29);
        }
    }
    // `[u8; 16]::hash` writes its length first; it is always 16.
    fn write_usize(&mut self, _len: usize) {}
    fn finish(&self) -> u64 {
        let x = self.0 ^ (self.0 >> 32);
        x.wrapping_mul(0xd6e8_feb8_6659_fd93)
    }
}
