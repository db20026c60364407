//! The merger's view of the stream it already wrote: the [`History`] trait and an in-memory
//! implementation, [`MemHistory`], for tests and small deployments.
//!
//! The merger keeps only a window of recent unmatched entries in memory. A record whose match
//! window reaches further back (a node catching up after a partition, a recovered merger) is
//! matched through `History`, which the binary implements over the stream on disk (an index
//! keyed by `(key, node, received_at)` of the entries that stand for one copy and were not
//! matched since).
//!
//! Contract: the history reflects every [`Output`] the merger returned, in order, before the
//! merger is called again (the binary appends each output to its stream log and index; the
//! log need not be committed or fsynced yet, only visible to the index). After a failover it
//! reflects exactly the committed stream the new merger is recovered from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// A history that is never consulted: for a merger whose window covers everything (e.g. a
/// benchmark of in-order journals). If it is consulted it answers "no open entry", which would
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
#[derive(Clone, Debug, Default)]
pub struct MemHistory {
    /// Open entries per (key, node), ordered by `(received_at, offset)`.
    open: HashMap<(Key, NodeId), BTreeSet<OpenEntry>>,
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
                self.open
                    .entry((e.key, e.copy.node))
                    .or_default()
                    .insert(OpenEntry {
                        received_at: e.received_at,
                        offset: e.offset,
                    });
                self.by_offset
                    .insert(e.offset, (e.key, e.copy.node, e.received_at));
            }
            Output::Matched(m) => {
                if let Some((key, node, received_at)) = self.by_offset.remove(&m.entry) {
                    if let Some(set) = self.open.get_mut(&(key, node)) {
                        set.remove(&OpenEntry {
                            received_at,
                            offset: m.entry,
                        });
                        if set.is_empty() {
                            self.open.remove(&(key, node));
                        }
                    }
                }
            }
        }
    }

    /// Forgets the open entries of `node` received before `before` (see
    /// [`crate::Progress::prunable_before`]). Linear in the entries held: for tests.
    pub fn prune(&mut self, node: NodeId, before: UnixNanos) {
        let dead: Vec<(Offset, Key, UnixNanos)> = self
            .by_offset
            .iter()
            .filter(|(_, (_, n, t))| *n == node && *t < before)
            .map(|(o, (k, _, t))| (*o, *k, *t))
            .collect();
        for (offset, key, received_at) in dead {
            self.by_offset.remove(&offset);
            if let Some(set) = self.open.get_mut(&(key, node)) {
                set.remove(&OpenEntry {
                    received_at,
                    offset,
                });
                if set.is_empty() {
                    self.open.remove(&(key, node));
                }
            }
        }
    }

    /// Number of open entries held.
    pub fn open_len(&self) -> usize {
        self.by_offset.len()
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
        let Some(set) = self.open.get(&(key, node)) else {
            return Ok(None);
        };
        let lo = OpenEntry {
            received_at: from,
            offset: Offset(0),
        };
        Ok(set
            .range(lo..)
            .next()
            .filter(|e| e.received_at <= to)
            .copied())
    }
}
