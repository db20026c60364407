//! The merger's view of the stream it already wrote: the [`History`] trait and an in-memory
//! implementation, [`MemHistory`], for tests and small deployments.
//!
//! The merger keeps only the recent unmatched entries in memory. A record whose match range
//! (the horizon `H`, unbounded by default) reaches further back (every record, with the
//! default `H`; a node catching up after a partition, a recovered merger) is
//! matched through `History`, which the binary implements over the stream on disk (an index
//! keyed by `(key, node, received_at)` of the entries that stand for one copy and were not
//! matched since).
//!
//! Contract: the history reflects every [`Output`] the merger returned, in order, before the
//! merger is called again (the binary appends each output to its stream log and index; the
//! log need not be committed or fsynced yet, only visible to the index). After a failover it
//! reflects exactly the committed stream the new merger is recovered from.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use twinrx_types::{Key, NodeId, Offset, UnixNanos};

use crate::record::Output;

/// An entry of the stream that stands for one copy and may still be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpenEntry {
    pub received_at: UnixNanos,
    pub offset: Offset,
}

/// Read access to the stream the merger already produced (see the module docs for the
/// contract).
pub trait History {
    /// A failed lookup (disk error). The merger then consumes nothing; the caller retries.
    type Error;

    /// The open entry (one copy, from `node`, with `key`, no `Matched` fact naming it) with
    /// `from <= received_at <= to` that comes first in `(received_at, offset)` order.
    fn earliest_open(
        &self,
        key: Key,
        node: NodeId,
        from: UnixNanos,
        to: UnixNanos,
    ) -> Result<Option<OpenEntry>, Self::Error>;
}

/// A history that is never consulted: for a merger with a finite horizon that its memory
/// covers entirely (e.g. a benchmark of in-order journals). If it is consulted it answers "no open entry", which would
/// be wrong; use it only where [`crate::Stats::history_lookups`] stays 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHistory;

impl History for NoHistory {
    type Error = Infallible;

    fn earliest_open(
        &self,
        _key: Key,
        _node: NodeId,
        _from: UnixNanos,
        _to: UnixNanos,
    ) -> Result<Option<OpenEntry>, Infallible> {
        Ok(None)
    }
}

/// The whole history in memory: what the binary's on-disk index must answer, written plainly.
///
/// Two ordered sets of fixed-size keys, 141 bytes per open entry in all (measured by
/// `cargo run --release -p dedup --example history_mem`): a `HashMap` of one small `BTreeSet`
/// per (key, node), the first version, took 373 bytes, because almost every key is
/// unique and each set allocates a whole node for its one entry.
#[derive(Clone, Debug, Default)]
pub struct MemHistory {
    /// Open entries ordered by `(key, node, received_at, offset)`.
    open: BTreeSet<(Key, NodeId, OpenEntry)>,
    /// Every open entry by offset, to close it when a `Matched` fact names it.
    by_offset: BTreeMap<Offset, (Key, NodeId, UnixNanos)>,
}

impl MemHistory {
    pub fn new() -> MemHistory {
        MemHistory::default()
    }

    /// Builds the history of a stream log given in order.
    pub fn from_log<'a>(log: impl IntoIterator<Item = &'a Output>) -> MemHistory {
        let mut h = MemHistory::new();
        for o in log {
            h.apply(o);
        }
        h
    }

    /// Folds one more stream-log record in.
    pub fn apply(&mut self, output: &Output) {
        match output {
            Output::Entry(e) => {
                self.open.insert((
                    e.key,
                    e.copy.node,
                    OpenEntry {
                        received_at: e.received_at,
                        offset: e.offset,
                    },
                ));
                self.by_offset
                    .insert(e.offset, (e.key, e.copy.node, e.received_at));
            }
            Output::Matched(m) => {
                self.close(m.entry);
            }
        }
    }

    /// Forgets the open entries of `node` received before `before` (see
    /// [`crate::Progress::prunable_before`]). Linear in the entries held.
    pub fn prune(&mut self, node: NodeId, before: UnixNanos) {
        let open = &mut self.open;
        self.by_offset
            .retain(|&offset, &mut (key, n, received_at)| {
                let dead = n == node && received_at < before;
                if dead {
                    open.remove(&(
                        key,
                        n,
                        OpenEntry {
                            received_at,
                            offset,
                        },
                    ));
                }
                !dead
            });
    }

    /// Number of open entries held.
    pub fn open_len(&self) -> usize {
        self.by_offset.len()
    }

    /// Closes the open entry at `offset` (a `Matched` fact named it); false if it is not held.
    pub fn close(&mut self, offset: Offset) -> bool {
        match self.by_offset.remove(&offset) {
            Some((key, node, received_at)) => {
                self.open.remove(&(
                    key,
                    node,
                    OpenEntry {
                        received_at,
                        offset,
                    },
                ));
                true
            }
            None => false,
        }
    }

    /// Closes every open entry whose offset is below `offset` (they left the stream);
    /// touches only those entries.
    pub fn close_below(&mut self, offset: Offset) {
        let gone: Vec<Offset> = self.by_offset.range(..offset).map(|(o, _)| *o).collect();
        for o in gone {
            self.close(o);
        }
    }

    /// The open entries in `(key, node, received_at, offset)` order (an index spilling to disk
    /// writes them out as one sorted run).
    pub fn iter_open(&self) -> impl Iterator<Item = (Key, NodeId, OpenEntry)> + '_ {
        self.open.iter().copied()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.open.clear();
        self.by_offset.clear();
    }
}

impl History for MemHistory {
    type Error = Infallible;

    fn earliest_open(
        &self,
        key: Key,
        node: NodeId,
        from: UnixNanos,
        to: UnixNanos,
    ) -> Result<Option<OpenEntry>, Infallible> {
        if from > to {
            return Ok(None);
        }
        let lo = (
            key,
            node,
            OpenEntry {
                received_at: from,
                offset: Offset(0),
            },
        );
        Ok(self
            .open
            .range(lo..)
            .next()
            .filter(|(k, n, e)| *k == key && *n == node && e.received_at <= to)
            .map(|(_, _, e)| *e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Entry, JournalPos, Matched};
    use twinrx_types::Seq;

    fn entry(offset: u64, key: u8, node: NodeId, at: i64) -> Output {
        Output::Entry(Entry {
            offset: Offset(offset),
            copy: JournalPos {
                node,
                seq: Seq(offset + 1),
            },
            key: Key([key; 16]),
            received_at: UnixNanos(at),
            late: false,
        })
    }

    fn find(h: &MemHistory, key: u8, node: NodeId, from: i64, to: i64) -> Option<u64> {
        let r = h.earliest_open(Key([key; 16]), node, UnixNanos(from), UnixNanos(to));
        r.ok().flatten().map(|e| e.offset.0)
    }

    #[test]
    fn lookups_keep_to_their_key_node_and_window_and_matches_and_prunes_close_entries() {
        let (a, b) = (NodeId::A, NodeId::B);
        let mut h = MemHistory::from_log(&[
            entry(0, 1, a, 100),
            entry(1, 1, a, 200),
            entry(2, 1, b, 150),
            entry(3, 2, a, 120),
            entry(4, 0, a, 50),
        ]);
        assert_eq!(h.open_len(), 5);
        // The earliest in the window, of that key and node only.
        assert_eq!(find(&h, 1, a, 0, 1000), Some(0));
        assert_eq!(find(&h, 1, a, 101, 1000), Some(1));
        assert_eq!(find(&h, 1, a, 201, 1000), None);
        assert_eq!(find(&h, 1, a, 0, 99), None);
        assert_eq!(find(&h, 1, b, 0, 1000), Some(2));
        assert_eq!(find(&h, 2, b, 0, 1000), None);
        // Neighbouring keys in the ordered set do not leak into a lookup.
        assert_eq!(find(&h, 0, a, 60, 1000), None);
        assert_eq!(find(&h, 3, a, 0, 1000), None);
        // A match closes the entry it names; the next one becomes the earliest.
        h.apply(&Output::Matched(Matched {
            entry: Offset(0),
            copy: JournalPos {
                node: b,
                seq: Seq(9),
            },
            key: Key([1; 16]),
            received_at: UnixNanos(101),
        }));
        assert_eq!(find(&h, 1, a, 0, 1000), Some(1));
        assert_eq!(h.open_len(), 4);
        // Pruning node a before 130 drops offsets 4 (at 50) and 3 (at 120), keeps 1 (at 200) and
        // node b's 2.
        h.prune(a, UnixNanos(130));
        assert_eq!(find(&h, 0, a, 0, 1000), None);
        assert_eq!(find(&h, 2, a, 0, 1000), None);
        assert_eq!(find(&h, 1, a, 0, 1000), Some(1));
        assert_eq!(find(&h, 1, b, 0, 1000), Some(2));
        assert_eq!(h.open_len(), 2);
    }
}
