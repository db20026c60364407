//! The streaming merger: a sans-IO state machine that turns the two journals into the merged,
//! de-duplicated stream.
//!
//! In: journal records, in seq order per node, with any interleaving and lag between the two
//! nodes ([`Merger::handle_record`]); optionally ticks with the current time
//! ([`Merger::handle_tick`], which only frees memory). Out: for each record, exactly one
//! [`Output`]: a new [`Entry`] (published at once, never held back waiting for the peer copy)
//! or a [`Matched`] fact (the record is the peer copy of an entry already in the stream and is
//! suppressed). The output is returned, not queued for a `poll_*` (STYLE §2): each record
//! yields exactly one output, and the driver must apply it to the history before the next
//! call, so a queue would only hide both rules.
//!
//! Matching rule (SPEC "De-duplication"): a record from node N matches the open entry (one
//! copy, unmatched) from the other node with the same key and a receive time within the
//! *horizon* `H` of its own that comes first in `(received_at, offset)` order (each node's
//! journal order while its clock does not step back); if there is none, it is a new entry.
//! `H` is unbounded by default: copies of one key pair one-to-one however late one node got
//! its copy (a relay's backlog, a TCP sender's buffer, an inform retried to the node that did
//! not answer), so k copies on one node and m on the other give max(k, m) events. With each
//! node's receive times nondecreasing in seq order this online pairing has the same size per
//! key as the reference's (a maximum matching of "within `H`"), whatever the interleaving: the
//! earliest candidate is the one the records still to come (all later) can least use. If a
//! clock steps backwards the pairing stays one-to-one and within `H` but, with a finite `H`,
//! may be smaller than the maximum (an extra event, never a lost one). The window `W` is how
//! close *live* copies are: it decides `late` and counts the copies matched more than `W`
//! apart ([`Stats::matched_late`]); it never limits pairing.
//!
//! Memory: the merger holds the open entries whose receive time is at or above a *floor*
//! that trails the newest receive time seen by `memory_ms` (and is raised further if more than
//! `memory_entries_max` are held). A record whose range `[t - H, t + H]` lies at or above the
//! floor is matched in memory; any other (with the default unbounded `H`, every record) is
//! matched through the [`History`], which covers the whole stream. Both answer the same
//! question, so the floor changes speed and memory, never the outputs.
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
    /// `W`: how far apart in receive time the two copies of a *live* event are expected to
    /// be (both nodes receiving). Decides `late` and [`Stats::matched_late`]; never limits
    /// pairing.
    pub window_ms: u64,
    /// `H`: two copies of one key pair only when their receive times differ by at most this;
    /// `None` (the default): no limit, every copy pairs whatever its delay. At least
    /// `window_ms`.
    pub horizon_ms: Option<u64>,
    /// Open entries are kept in memory while their receive time is within this of the newest
    /// receive time seen; older ones are matched through the history. At least `window_ms`.
    pub memory_ms: u64,
    /// At most this many open entries in memory (the floor moves up to keep it so). Default
    /// 131,072 (a table of at most about 32 MiB): with the default unbounded `H` every
    /// record is looked up in the history anyway, so memory only speeds up a finite `H`; a
    /// larger table would hold a flood's last 30 s (a million entries took 204 MB).
    pub memory_entries_max: usize,
    /// Seed of the in-memory hash table (keys come from device content; a per-node random seed
    /// keeps crafted keys from colliding in the table). Any value is correct.
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            window_ms: 5_000,
            horizon_ms: None,
            memory_ms: 30_000,
            memory_entries_max: 1 << 17,
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
    #[error(
        "merger.horizon_ms = {horizon_ms}: must be at least merger.window_ms ({window_ms}), or live copies would not pair"
    )]
    HorizonBelowWindow { horizon_ms: u64, window_ms: u64 },
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
        if let Some(h) = self.horizon_ms {
            if h < self.window_ms {
                return Err(ConfigError::HorizonBelowWindow {
                    horizon_ms: h,
                    window_ms: self.window_ms,
                });
            }
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
    OutOfSequence {
        node: NodeId,
        expected: Seq,
        got: Seq,
    },
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
    /// Of `matched`, those matched through the history.
    pub matched_from_history: u64,
    /// Of `matched`, copies received more than `W` apart from their entry's copy (one node
    /// got its copy late: a relay's backlog, a retried inform, a node back from a reboot).
    pub matched_late: u64,
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
/// whose copy is from the other node, with the same key, within `H`.
#[derive(Debug)]
pub struct Merger {
    window_ns: i64,
    /// `H` in ns; `i64::MAX` when unbounded.
    horizon_ns: i64,
    memory_ns: i64,
    memory_entries_max: usize,
    progress: Progress,
    /// Open entries with `received_at >= floor` are all in `open` (some older ones may
    /// linger until the next sweep; they are never consulted).
    floor: i64,
    open: HashMap<Key, Slot, SeededKeyHash>,
    open_len: usize,
    inserted_since_sweep: usize,
    /// Insertions until the next sweep: the entries held after the last one (at least
    /// `SWEEP_MIN`), so sweeping is amortised O(1) and memory at most about twice the live set.
    sweep_after: usize,
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
        let horizon_ns = c.horizon_ms.map_or(i64::MAX, |h| {
            i64::try_from(h)
                .unwrap_or(i64::MAX)
                .saturating_mul(NS_PER_MS)
        });
        Merger {
            window_ns,
            horizon_ns,
            memory_ns,
            memory_entries_max: c.memory_entries_max,
            progress,
            // Every entry already in the stream is below the floor, i.e. in the history.
            floor: progress.newest.map_or(i64::MIN, |t| t.0.saturating_add(1)),
            open: HashMap::with_hasher(SeededKeyHash(c.hash_seed)),
            open_len: 0,
            inserted_since_sweep: 0,
            sweep_after: SWEEP_MIN,
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
        let from = t.saturating_sub(self.horizon_ns);
        let to = t.saturating_add(self.horizon_ns);

        // Find the earliest open entry of the peer within the horizon.
        let found = if from >= self.floor {
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
            h.map(|e| (e.offset, e.received_at.0))
        };

        let newest_before = self.progress.newest.map_or(i64::MIN, |n| n.0);
        let output = match found {
            Some((offset, entry_at)) => {
                self.remove_open(record.key, offset);
                self.stats.matched += 1;
                if t.abs_diff(entry_at) > self.window_ns.unsigned_abs() {
                    self.stats.matched_late += 1;
                }
                Output::Matched(Matched {
                    entry: offset,
                    copy: record.pos(),
                    key: record.key,
                    received_at: record.received_at,
                })
            }
            None => {
                let offset = self.progress.next_offset;
                // Published more than W after it was received, on the merger's clock (the
                // newest receive time it accounted for).
                let late = t.saturating_add(self.window_ns) < newest_before;
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

        self.raise_floor(self.progress.newest.map_or(i64::MIN, |n| n.0));
        if let Output::Entry(e) = &output {
            if t >= self.floor {
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
        self.raise_floor(now.0);
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

    fn raise_floor(&mut self, newest: i64) {
        let h = newest.saturating_sub(self.memory_ns);
        if h > self.floor {
            self.floor = h;
        }
    }

    /// The earliest open entry in memory: (offset, receive time).
    fn earliest_in_memory(
        &self,
        key: Key,
        node: NodeId,
        from: i64,
        to: i64,
    ) -> Option<(Offset, i64)> {
        let slot = self.open.get(&key)?;
        slot.iter()
            .filter(|o| o.node == node && o.received_at >= from && o.received_at <= to)
            .min_by_key(|o| (o.received_at, o.offset))
            .map(|o| (o.offset, o.received_at))
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
        if self.inserted_since_sweep >= self.sweep_after || self.open_len > self.memory_entries_max
        {
            self.sweep();
        }
    }

    /// Drops open entries below the floor, raising the floor first if memory is over its
    /// limit. Dropped entries stay in the history, which answers for everything below the
    /// floor.
    fn sweep(&mut self) {
        self.inserted_since_sweep = 0;
        if self.open_len > self.memory_entries_max {
            // Keep the newest half of the limit: raise the floor above the time of the
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
            if h > self.floor {
                self.floor = h;
            }
        }
        let floor = self.floor;
        let mut dropped = 0usize;
        self.open.retain(|_, slot| {
            let before = 1 + slot.more.len();
            slot.more.retain(|o| o.received_at >= floor);
            if slot.first.received_at < floor {
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
        self.sweep_after = self.open_len.max(SWEEP_MIN);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{MemHistory, OpenEntry};

    const T0: i64 = 1_764_000_000_000; // ms

    fn key(k: u8) -> Key {
        Key([k; 16])
    }

    fn rec(node: NodeId, seq: u64, k: u8, ms: i64) -> Record {
        Record {
            node,
            seq: Seq(seq),
            key: key(k),
            received_at: UnixNanos((T0 + ms) * NS_PER_MS),
        }
    }

    fn entry(offset: u64, r: Record, late: bool) -> Output {
        Output::Entry(Entry {
            offset: Offset(offset),
            copy: r.pos(),
            key: r.key,
            received_at: r.received_at,
            late,
        })
    }

    fn matched(offset: u64, r: Record) -> Output {
        Output::Matched(Matched {
            entry: Offset(offset),
            copy: r.pos(),
            key: r.key,
            received_at: r.received_at,
        })
    }

    /// A merger plus the history the binary would keep.
    struct Driver {
        merger: Merger,
        history: MemHistory,
        log: Vec<Output>,
    }

    impl Driver {
        fn new(config: Config) -> Driver {
            Driver {
                merger: Merger::new(config.validate().expect("valid test config")),
                history: MemHistory::new(),
                log: Vec::new(),
            }
        }

        fn feed(&mut self, records: &[Record]) -> Vec<Output> {
            records
                .iter()
                .map(|r| {
                    let o = self
                        .merger
                        .handle_record(*r, &self.history)
                        .expect("fed in sequence");
                    self.history.apply(&o);
                    self.log.push(o);
                    o
                })
                .collect()
        }
    }

    const A: NodeId = NodeId::A;
    const B: NodeId = NodeId::B;

    #[test]
    fn copies_on_both_nodes_give_one_entry_and_a_matched_fact() {
        let mut d = Driver::new(Config::default());
        let (a1, b1) = (rec(A, 1, 1, 0), rec(B, 1, 1, 3));
        assert_eq!(d.feed(&[a1, b1]), vec![entry(0, a1, false), matched(0, b1)]);
        assert_eq!(
            d.merger.progress(),
            Progress {
                next_offset: Offset(1),
                consumed: [Seq(1), Seq(1)],
                newest: Some(b1.received_at),
                last_received: [Some(a1.received_at), Some(b1.received_at)],
            }
        );
        let s = d.merger.stats();
        assert_eq!((s.records, s.entries, s.matched, s.late), (2, 1, 1, 0));
        assert_eq!(s.memory_entries, 0);
    }

    #[test]
    fn a_copy_on_one_node_only_is_emitted_at_once() {
        let mut d = Driver::new(Config::default());
        let b1 = rec(B, 1, 7, 0);
        assert_eq!(d.feed(&[b1]), vec![entry(0, b1, false)]);
        // Node A never gets it; later traffic does not change the entry.
        let a1 = rec(A, 1, 8, 10_000);
        assert_eq!(d.feed(&[a1]), vec![entry(1, a1, false)]);
    }

    #[test]
    fn k_copies_on_a_and_m_on_b_give_max_k_m_matched_in_time_order() {
        let mut d = Driver::new(Config::default());
        let a: Vec<Record> = (0..3).map(|i| rec(A, i + 1, 1, i as i64 * 100)).collect();
        let b: Vec<Record> = (0..2)
            .map(|i| rec(B, i + 1, 1, 50 + i as i64 * 100))
            .collect();
        let out = d.feed(&[a[0], a[1], b[0], a[2], b[1]]);
        assert_eq!(
            out,
            vec![
                entry(0, a[0], false),
                entry(1, a[1], false),
                matched(0, b[0]),
                entry(2, a[2], false),
                matched(1, b[1]),
            ]
        );
    }

    #[test]
    fn skew_up_to_a_short_horizon_matches_beyond_it_does_not() {
        let mut d = Driver::new(Config {
            horizon_ms: Some(5_000),
            ..Config::default()
        });
        let (a1, b1) = (rec(A, 1, 1, 0), rec(B, 1, 1, 5_000));
        let (a2, b2) = (rec(A, 2, 2, 20_000), rec(B, 2, 2, 25_001));
        assert_eq!(
            d.feed(&[a1, b1, a2, b2]),
            vec![
                entry(0, a1, false),
                matched(0, b1),
                entry(1, a2, false),
                entry(2, b2, false),
            ]
        );
        // B's clock running behind A's by the horizon works the same way.
        let (a3, b3) = (rec(A, 3, 3, 40_000), rec(B, 3, 3, 35_000));
        assert_eq!(d.feed(&[b3, a3]), vec![entry(3, b3, false), matched(3, a3)]);
    }

    /// Issue #24: a relay queued node A's copies while A rebooted and delivered them 31 s
    /// later; under the default (unbounded) horizon they are the same events, counted as late
    /// matches; genuine repeats (a second copy on both nodes) stay separate events.
    #[test]
    fn a_relay_backlog_delivered_long_after_w_pairs_with_the_live_copies() {
        let mut d = Driver::new(Config::default());
        let b: Vec<Record> = (0..3)
            .map(|i| rec(B, i + 1, i as u8, i as i64 * 10))
            .collect();
        // The same three messages reach A 31 s later, then a genuine repeat of key 0 reaches
        // both nodes 60 s later.
        let a: Vec<Record> = (0..3)
            .map(|i| rec(A, i + 1, i as u8, 31_000 + i as i64 * 10))
            .collect();
        let (b4, a4) = (rec(B, 4, 0, 91_000), rec(A, 4, 0, 91_002));
        let out = d.feed(&[b[0], b[1], b[2], a[0], a[1], a[2], b4, a4]);
        assert_eq!(
            out,
            vec![
                entry(0, b[0], false),
                entry(1, b[1], false),
                entry(2, b[2], false),
                matched(0, a[0]),
                matched(1, a[1]),
                matched(2, a[2]),
                entry(3, b4, false),
                matched(3, a4),
            ]
        );
        let s = d.merger.stats();
        assert_eq!((s.entries, s.matched, s.matched_late), (4, 4, 3));
    }

    #[test]
    fn late_copies_after_a_partition_are_matched_through_history_or_emitted_late() {
        // Node A receives one message a second for 10 minutes while B's journal is cut off;
        // B got the same messages, except the one at second 100, plus one A lost (key 255).
        let mut d = Driver::new(Config::default());
        let a: Vec<Record> = (0..600)
            .map(|i| rec(A, i + 1, (i % 250) as u8, i as i64 * 1_000))
            .collect();
        d.feed(&a);
        // A tick at the newest time keeps only the last memory_ms (30 s) of open entries.
        d.merger.handle_tick(a[599].received_at);
        assert_eq!(d.merger.stats().memory_entries, 31);
        let mut b: Vec<Record> = (0..600i64)
            .filter(|&i| i != 100)
            .map(|i| rec(B, 0, (i % 250) as u8, i * 1_000 + 2))
            .collect();
        b.insert(150, rec(B, 0, 255, 150_500));
        for (n, r) in b.iter_mut().enumerate() {
            r.seq = Seq(n as u64 + 1);
        }
        let out = d.feed(&b);
        // b:1 is A's first message (entry 0), matched from the history.
        assert_eq!(out[0], matched(0, b[0]));
        // The message A lost is a new entry, late: the stream is 10 minutes ahead.
        assert_eq!(out[150], entry(600, b[150], true));
        assert_eq!(
            out.iter().filter(|o| matches!(o, Output::Entry(_))).count(),
            1
        );
        let s = d.merger.stats();
        assert_eq!((s.entries, s.matched, s.late), (601, 599, 1));
        assert!(s.matched_from_history > 500, "{s:?}");
        // Key 100 has two copies on A (entries 100 and 350) and one on B (at second 350): one
        // to one in journal order, B's copy pairs with A's first, entry 100 (a late match, 250 s
        // apart); entry 350 stays single. Two events for the key either way.
        let pair_of_350 = b
            .iter()
            .position(|r| r.received_at == rec(B, 0, 0, 350_002).received_at);
        assert_eq!(
            out[pair_of_350.expect("b holds second 350")],
            matched(100, b[pair_of_350.expect("idem")])
        );
        assert!(d
            .log
            .iter()
            .all(|o| !matches!(o, Output::Matched(m) if m.entry == Offset(350))));
        assert_eq!(s.matched_late, 1);
    }

    #[test]
    fn a_clock_step_back_can_cost_an_extra_event_never_a_loss() {
        // b1 at 0; A stamps a1 at +4 s, then A's clock steps back and a2 is stamped at -4 s;
        // b2 at +8 s. Best pairing within a 5 s horizon: a2-b1, a1-b2 (2 events). Online, a1
        // arrives first and takes b1, the earliest candidate; a2 and b2 are then alone (12 s
        // apart): 3 events, every record once.
        let mut d = Driver::new(Config {
            horizon_ms: Some(5_000),
            ..Config::default()
        });
        let (b1, a1, a2, b2) = (
            rec(B, 1, 1, 0),
            rec(A, 1, 1, 4_000),
            rec(A, 2, 1, -4_000),
            rec(B, 2, 1, 8_000),
        );
        assert_eq!(
            d.feed(&[b1, a1, a2, b2]),
            vec![
                entry(0, b1, false),
                matched(0, a1),
                entry(1, a2, true),
                entry(2, b2, false),
            ]
        );
        let reference = crate::reference(&[a1, a2], &[b1, b2], Some(5_000));
        assert_eq!(reference.len(), 2);
    }

    #[test]
    fn identical_messages_from_different_sources_are_different_events() {
        // Same bytes, different source IP: different keys (the receiver keys on source + bytes).
        let mut d = Driver::new(Config::default());
        let (a1, a2) = (rec(A, 1, 1, 0), rec(A, 2, 2, 0));
        let (b1, b2) = (rec(B, 1, 2, 1), rec(B, 2, 1, 1));
        assert_eq!(
            d.feed(&[a1, a2, b1, b2]),
            vec![
                entry(0, a1, false),
                entry(1, a2, false),
                matched(1, b1),
                matched(0, b2)
            ]
        );
    }

    #[test]
    fn raw_keyed_unparsable_records_merge_like_any_other() {
        // The receiver keys an unparsable datagram on its raw bytes; for the merger it is a key.
        let mut d = Driver::new(Config::default());
        let mut raw = [0u8; 16];
        raw[..6].copy_from_slice(b"\xff\x00garb");
        let a1 = Record {
            key: Key(raw),
            ..rec(A, 1, 0, 0)
        };
        let b1 = Record {
            key: Key(raw),
            ..rec(B, 1, 0, 4)
        };
        assert_eq!(d.feed(&[a1, b1]), vec![entry(0, a1, false), matched(0, b1)]);
    }

    #[test]
    fn a_recovered_merger_continues_without_loss_or_duplicate() {
        let mut d = Driver::new(Config::default());
        let (a1, a2, b1, b2) = (
            rec(A, 1, 1, 0),
            rec(A, 2, 2, 10),
            rec(B, 1, 1, 2),
            rec(B, 2, 2, 12),
        );
        d.feed(&[a1, a2, b1]);
        // The active dies after committing only a1's entry and b1's match; a2 was lost.
        let committed = vec![d.log[0], d.log[2]];
        let progress = Progress::from_log(&committed);
        assert_eq!(progress.consumed, [Seq(1), Seq(1)]);
        let history = MemHistory::from_log(&committed);
        let config = Config::default().validate().expect("valid");
        let mut m = Merger::recover(config, progress);
        // Re-feeding an accounted record is refused, state unchanged.
        assert_eq!(
            m.handle_record(b1, &history),
            Err(Error::OutOfSequence {
                node: B,
                expected: Seq(2),
                got: Seq(1)
            })
        );
        assert_eq!(m.handle_record(b2, &history), Ok(entry(1, b2, false)));
        let mut history = history;
        history.apply(&entry(1, b2, false));
        assert_eq!(m.handle_record(a2, &history), Ok(matched(1, a2)));
        assert_eq!(m.stats().history_lookups, 2);
    }

    struct Broken;
    impl History for Broken {
        type Error = &'static str;
        fn earliest_open(
            &self,
            _: Key,
            _: NodeId,
            _: UnixNanos,
            _: UnixNanos,
        ) -> Result<Option<OpenEntry>, &'static str> {
            Err("disk gone")
        }
    }

    #[test]
    fn a_failed_history_lookup_consumes_nothing() {
        let config = Config::default().validate().expect("valid");
        let progress = Progress {
            next_offset: Offset(5),
            consumed: [Seq(3), Seq(2)],
            newest: Some(UnixNanos(T0 * NS_PER_MS)),
            last_received: [Some(UnixNanos(T0 * NS_PER_MS)); 2],
        };
        let mut m = Merger::recover(config, progress);
        let b3 = rec(B, 3, 1, 1);
        assert_eq!(
            m.handle_record(b3, &Broken),
            Err(Error::History {
                copy: b3.pos(),
                source: "disk gone"
            })
        );
        assert_eq!(m.progress(), progress);
        assert_eq!(
            m.handle_record(b3, &MemHistory::new()),
            Ok(entry(5, b3, false))
        );
    }

    #[test]
    fn unknown_node_is_refused() {
        let mut m = Merger::new(Config::default().validate().expect("valid"));
        let r = Record {
            node: NodeId(2),
            ..rec(A, 1, 1, 0)
        };
        assert_eq!(
            m.handle_record(r, &MemHistory::new()),
            Err(Error::UnknownNode {
                node: NodeId(2),
                seq: Seq(1)
            })
        );
    }

    #[test]
    fn memory_stays_within_the_window_and_the_entry_limit() {
        // 100 000 unmatched records, one per ms: memory_ms = 5 s keeps at most ~5 000 + a sweep.
        let mut d = Driver::new(Config {
            memory_ms: 5_000,
            ..Config::default()
        });
        let mut peak = 0;
        for i in 0..100_000u64 {
            let r = Record {
                key: Key((i as u128).to_le_bytes()),
                ..rec(A, i + 1, 0, i as i64)
            };
            d.feed(&[r]);
            peak = peak.max(d.merger.stats().memory_entries);
        }
        assert!(peak <= 2 * 5_001 + SWEEP_MIN as u64, "peak {peak}");
        // A hard cap on entries holds even when the times never move.
        let mut d = Driver::new(Config {
            memory_entries_max: 100,
            ..Config::default()
        });
        for i in 0..10_000u64 {
            let r = Record {
                key: Key((i as u128).to_le_bytes()),
                ..rec(A, i + 1, 0, (i / 1000) as i64)
            };
            d.feed(&[r]);
            assert!(d.merger.stats().memory_entries <= 100);
        }
        // ... and matching still works through the history.
        let b1 = Record {
            key: Key(0u128.to_le_bytes()),
            ..rec(B, 1, 0, 0)
        };
        assert_eq!(d.feed(&[b1]), vec![matched(0, b1)]);
    }

    #[test]
    fn a_tick_frees_memory_without_changing_outputs() {
        let mut d = Driver::new(Config::default());
        let a1 = rec(A, 1, 1, 0);
        d.feed(&[a1]);
        assert_eq!(d.merger.stats().memory_entries, 1);
        d.merger.handle_tick(UnixNanos((T0 + 60_000) * NS_PER_MS));
        assert_eq!(d.merger.stats().memory_entries, 0);
        let b1 = rec(B, 1, 1, 1);
        assert_eq!(d.feed(&[b1]), vec![matched(0, b1)]);
        assert_eq!(d.merger.stats().matched_from_history, 1);
    }

    #[test]
    fn config_problems_name_the_key() {
        let bad = Config {
            memory_ms: 1_000,
            ..Config::default()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.to_string()),
            Err("merger.memory_ms = 1000: must be at least merger.window_ms (5000)".into())
        );
        assert_eq!(
            Config {
                window_ms: 0,
                ..Config::default()
            }
            .validate(),
            Err(ConfigError::WindowZero)
        );
        assert_eq!(
            Config {
                horizon_ms: Some(4_999),
                ..Config::default()
            }
            .validate()
            .map_err(|e| e.to_string()),
            Err("merger.horizon_ms = 4999: must be at least merger.window_ms (5000), or live copies would not pair".into())
        );
    }
}
