//! What flows into and out of the merger.
//!
//! In: a [`Record`] per journal record (the receiver already computed its content key; the
//! payload stays with the binary, the merger never sees bytes). Out: one [`Output`] per record,
//! either a new stream [`Entry`] or a [`Matched`] fact saying the record is a copy of an entry
//! the stream already holds. [`Progress`] is the fold of the outputs that recovery starts from.

use std::fmt;

use twinrx_types::{Key, NodeId, Offset, Seq, UnixNanos};

/// One journal record as the merger sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub node: NodeId,
    pub seq: Seq,
    /// Content key (SPEC "De-duplication"); unparsable messages are keyed on their raw bytes.
    pub key: Key,
    /// Receive time stamped by `node`'s clock.
    pub received_at: UnixNanos,
}

impl Record {
    /// Where this record sits in the journals.
    pub fn pos(&self) -> JournalPos {
        JournalPos {
            node: self.node,
            seq: self.seq,
        }
    }
}

/// A journal record's address, `node:seq` in the stream's `copies` field (e.g. `a:17`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JournalPos {
    pub node: NodeId,
    pub seq: Seq,
}

impl fmt::Display for JournalPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.seq)
    }
}

/// A new entry of the merged stream, published as soon as its first copy arrives.
///
/// It stands for exactly one journal record when it is emitted (the merger never waits for
/// the peer copy); if the peer copy arrives later it is recorded as a [`Matched`] fact naming
/// this entry's offset, so the entry stands for `copy` plus every `Matched` copy that names it
/// (at most one, from the other node, however late it came within the horizon `H`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub offset: Offset,
    pub copy: JournalPos,
    pub key: Key,
    /// Receive time of `copy`.
    pub received_at: UnixNanos,
    /// Published more than the window `W` after it was received, on the merger's clock: the
    /// record's receive time is more than `W` behind the newest receive time of any record
    /// accounted for before it (a node's journal catching up after a partition or a restart
    /// of the merger's peer link), and it matched no earlier entry.
    pub late: bool,
}

/// The record `copy` is the peer copy of the entry at `entry`: it is suppressed (not a new
/// entry). The binary appends this fact to the stream log (it is not an entry for consumers:
/// it has no offset of its own) so that recovery and the history index know the entry is
/// matched and that `copy` is accounted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Matched {
    /// The entry this copy belongs to.
    pub entry: Offset,
    pub copy: JournalPos,
    pub key: Key,
    /// Receive time of `copy` (the entry's own time is in the entry).
    pub received_at: UnixNanos,
}

/// What one record produced. Every record fed produces exactly one output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    Entry(Entry),
    Matched(Matched),
}

impl Output {
    /// The journal record this output accounts for.
    pub fn copy(&self) -> JournalPos {
        match self {
            Output::Entry(e) => e.copy,
            Output::Matched(m) => m.copy,
        }
    }

    /// Receive time of the record this output accounts for.
    pub fn received_at(&self) -> UnixNanos {
        match self {
            Output::Entry(e) => e.received_at,
            Output::Matched(m) => m.received_at,
        }
    }

    pub fn key(&self) -> Key {
        match self {
            Output::Entry(e) => e.key,
            Output::Matched(m) => m.key,
        }
    }
}

/// How far the committed stream got: everything recovery needs besides the history index.
///
/// It is a pure fold of the stream log (entries and matched facts, in the order the merger
/// produced them), so the binary may persist it with every committed batch, or checkpoint it
/// now and then and [`apply`](Progress::apply) the records committed after the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// Offset the next entry gets.
    pub next_offset: Offset,
    /// Per node (indexed by `NodeId.0`), the highest seq accounted for; `Seq(0)` = none.
    /// Because each node's records are fed in seq order and each produces one output, every
    /// record at or below it is accounted for, and none above it is.
    pub consumed: [Seq; 2],
    /// Newest receive time of any record accounted for.
    pub newest: Option<UnixNanos>,
    /// Per node (indexed by `NodeId.0`), the receive time of its record at `consumed`.
    pub last_received: [Option<UnixNanos>; 2],
}

impl Progress {
    /// Progress of an empty stream.
    pub fn start() -> Progress {
        Progress::default()
    }

    /// Progress of a stream log given in order.
    pub fn from_log<'a>(log: impl IntoIterator<Item = &'a Output>) -> Progress {
        let mut p = Progress::start();
        for o in log {
            p.apply(o);
        }
        p
    }

    /// Folds one more stream-log record in.
    pub fn apply(&mut self, output: &Output) {
        if let Output::Entry(e) = output {
            self.next_offset = e.offset.next();
        }
        let copy = output.copy();
        let t = output.received_at();
        let side = usize::from(copy.node.0);
        if let (Some(c), Some(l)) = (
            self.consumed.get_mut(side),
            self.last_received.get_mut(side),
        ) {
            *c = copy.seq;
            *l = Some(t);
        }
        self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
    }

    /// Open entries of `node` received before this time can never be matched any more, so a
    /// history index may forget them (bounded memory or disk for the index); `None`: keep
    /// everything (an unbounded horizon, or nothing of the peer consumed yet).
    ///
    /// Only the other node's records can match them, and those still to come are received no
    /// earlier than its last consumed record, minus `clock_step_margin_ms` for a clock that
    /// steps back: pruning below `last_received(peer) - H - margin` never changes an output
    /// while no clock steps back by more than the margin. Before the peer's first record is
    /// consumed, its whole journal may still come: nothing is prunable.
    pub fn prunable_before(
        &self,
        node: NodeId,
        horizon_ms: Option<u64>,
        clock_step_margin_ms: u64,
    ) -> Option<UnixNanos> {
        let horizon_ms = horizon_ms?;
        let peer_last = self
            .last_received
            .get(usize::from(node.peer().0))
            .copied()
            .flatten()?;
        let back_ns = i64::try_from(horizon_ms.saturating_add(clock_step_margin_ms))
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        Some(UnixNanos(peer_last.0.saturating_sub(back_ns)))
    }

    /// Highest seq of `node` accounted for (`Seq(0)` if none).
    pub fn consumed(&self, node: NodeId) -> Seq {
        self.consumed
            .get(usize::from(node.0))
            .copied()
            .unwrap_or_default()
    }
}
