//! `dedup`: the merger of twinrx. It turns the two nodes' journals into one merged stream in
//! which every event appears once (SPEC G1 no loss, G2 no duplicate).
//!
//! Layout:
//! - [`record`]: what flows in ([`Record`]: node, seq, content key, receive time) and out
//!   ([`Output`]: a new stream [`Entry`] or a [`Matched`] fact), and [`Progress`], the fold of
//!   the stream log that recovery starts from.
//! - [`merger`]: [`Merger`], the sans-IO streaming state machine: no I/O, no clock, no RNG.
//! - [`history`]: [`History`], the merger's read access to the stream it already wrote (the
//!   binary implements it over the stream on disk), and [`MemHistory`] for tests.
//! - [`mod@reference`]: the reference function (whole journals in, expected events out) the
//!   property tests hold the merger against.
//!
//! The stream log the binary keeps is the sequence of [`Output`]s in the order the merger
//! returned them: entries (what consumers read, with contiguous offsets) interleaved with
//! `Matched` facts (no offset of their own: "record b:7 is the peer copy of entry 41"). The
//! log is append-only; an entry is never amended. Everything the merger needs to continue after
//! a failover is derivable from the committed log: see [`Merger::recover`].

pub mod history;
pub mod merger;
pub mod record;
pub mod reference;

pub use history::{History, MemHistory, NoHistory, OpenEntry};
pub use merger::{Config, ConfigError, Error, Merger, Stats, ValidConfig};
pub use record::{Entry, JournalPos, Matched, Output, Progress, Record};
pub use reference::{counts_per_key, reference, RefEvent};
