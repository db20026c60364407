//! twinrx journal: a durable, append-only, sequenced log.
//!
//! One crate serves three logs of a node (SPEC "Data flow"): the node's own journal of
//! received messages, the copy of the peer's journal (same seqs as the peer's), and the
//! merged stream (seq N holds stream offset N-1).
//!
//! # Layout
//! - [`Journal`] (`writer.rs`): the single writer. [`Journal::open`] recovers the directory
//!   (truncating a torn tail, refusing corruption), then [`Journal::append_batch`] frames
//!   records into segment files and fsyncs them per the [`FsyncPolicy`] (group commit: one
//!   `fdatasync` per batch by default). Retention deletes whole old segments.
//! - [`JournalHandle`] (`reader.rs`): cheap, cloneable, `Send + Sync` read access from other
//!   threads and tasks: reads by seq range, [`Tail`] (async, woken through a
//!   `tokio::sync::watch` channel when the durable seq moves), and [`ReaderGuard`]s that hold
//!   back retention.
//! - [`verify`] (`verify.rs`): read-only full scan of a directory.
//! - `blocks.rs`: a compressed segment's block table and blocks, read and checked.
//! - `compress.rs`: sealed segments rewritten as independent zstd blocks of about 256 KiB of
//!   records with a block table (FORMAT.md "Compressed segments"), by a background thread
//!   per journal ([`Compression::Zstd`]); offsets stay those of the segment as written, so
//!   readers, retention, cuts and verify take either kind.
//! - `format.rs`: the bytes on disk, documented byte by byte in `journal/FORMAT.md`.
//!
//! # Contract
//! - Seqs start at 1 (or where [`Journal::reset_to`] puts them) and have no gaps.
//! - Readers never see a record beyond [`JournalHandle::durable_seq`]: fsynced records under
//!   policies `batch`/`interval`, written records under `never`.
//! - A failed append (full disk, EIO) leaves the journal as it was before the batch: the
//!   files are cut back to their last good length, `next_seq` is unchanged, and the next
//!   append tries again (SPEC G6). A failed *fsync* under policy `interval` also drops the
//!   earlier records that were waiting for it (never durable, never visible): `next_seq`
//!   goes back to `durable_seq + 1`.
//! - A torn tail is truncated and reported in [`Recovery`]; a corrupt record anywhere else is
//!   [`Error::Corrupt`] naming the segment file and byte offset, never skipped (STYLE §3).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use twinrx_types::Seq;

mod blocks;
mod compress;
mod format;
mod reader;
mod segment;
mod verify;
mod writer;

pub use format::RECORD_BYTES_MAX;
pub use reader::{JournalHandle, ReaderGuard, Tail};
pub use verify::{verify, TornTail, VerifyReport};
pub use writer::Journal;

/// Everything that can go wrong in the journal. Every variant names where: the segment file,
/// the byte offset, the seq.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O call failed (full disk, EIO, permissions). For an append, the
    /// journal has been rolled back to its state before the batch; retry later.
    #[error("journal: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done: "write", "fsync", "create segment", …
        op: &'static str,
        /// The segment file or directory concerned.
        path: PathBuf,
        /// The OS error; `source.raw_os_error()` tells ENOSPC from EIO.
        #[source]
        source: std::io::Error,
    },
    /// A record that is not a torn tail fails its checks: start-up (or the read) stops here.
    /// Inspect the file at this offset; `twinrx journal verify` lists the damage.
    #[error("journal corrupt: {} at byte offset {offset} (record seq {seq} expected): {reason}", segment.display())]
    Corrupt {
        /// The segment file holding the bad record.
        segment: PathBuf,
        /// Byte offset of the bad record's first byte within that file.
        offset: u64,
        /// The seq the record at that offset should carry.
        seq: Seq,
        /// What is wrong (CRC mismatch, length, seq).
        reason: String,
    },
    /// A segment file as a whole is unusable: bad header, or it does not continue the seqs of
    /// the segment before it.
    #[error("journal segment {} is invalid: {reason}", segment.display())]
    BadSegment {
        /// The segment file.
        segment: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requested seq was deleted by retention (or by [`Journal::reset_to`]).
    #[error("journal seq {from} is gone: the oldest seq on disk is {first}")]
    Gone {
        /// The seq asked for.
        from: Seq,
        /// The oldest seq still on disk.
        first: Seq,
    },
    /// The [`Journal`] writer was dropped and a [`Tail`] has read everything durable.
    #[error("journal writer closed")]
    Closed,
    /// [`Journal::truncate_from`] cut records a [`Tail`] had already returned: its view of the
    /// log is no longer a prefix of the journal. Re-create the tail from a known position.
    #[error("journal truncated below what a tail already returned: tail at {position}, journal now ends at {last:?}")]
    Truncated {
        /// The tail's position (next seq it would have returned).
        position: Seq,
        /// The journal's durable seq after the truncation.
        last: Option<Seq>,
    },
    /// A record is larger than [`RECORD_BYTES_MAX`]; nothing of its batch was appended.
    #[error("journal record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Payload bytes of the offending record.
        len: usize,
        /// [`RECORD_BYTES_MAX`].
        max: usize,
    },
    /// [`Journal::append_batch`] was given no records.
    #[error("journal append_batch called with no records")]
    EmptyBatch,
    /// A seq argument outside what the journal holds.
    #[error("journal seq {seq} is outside the journal's range {first}..={next} (next seq)")]
    OutOfRange {
        /// The seq given.
        seq: Seq,
        /// The oldest seq on disk.
        first: Seq,
        /// The next seq to be appended.
        next: Seq,
    },
    /// [`Journal::reset_to`] on a journal that still holds records.
    #[error("journal reset_to needs an empty journal, but it holds seqs {first}..={last}")]
    NotEmpty {
        /// Oldest seq on disk.
        first: Seq,
        /// Newest seq on disk.
        last: Seq,
    },
    /// An fsync policy string that does not parse.
    #[error("invalid fsync policy {0:?}: expected \"batch\", \"interval:<ms>\" or \"never\"")]
    BadFsyncPolicy(String),
    /// A compression string that does not parse.
    #[error("invalid compression {0:?}: expected \"zstd\", \"zstd:<level 1-19>\" or \"none\"")]
    BadCompression(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// When appended records are fsynced (and so become visible to readers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Group commit: one `fdatasync` per [`Journal::append_batch`], before it returns.
    #[default]
    Batch,
    /// `fdatasync` when `ms` milliseconds have passed since the last one, checked on append
    /// and by [`Journal::sync_if_due`]. Records become durable (and visible) at that sync.
    Interval {
        /// Longest time between syncs while records are waiting.
        ms: u64,
    },
    /// Never fsync except at segment rotation; records are visible as soon as written. A power
    /// loss may lose them; a process crash does not.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = Error;

    /// Parses `batch`, `interval:<ms>` or `never` (the config's `fsync` key).
    fn from_str(s: &str) -> Result<FsyncPolicy, Error> {
        match s {
            "batch" => Ok(FsyncPolicy::Batch),
            "never" => Ok(FsyncPolicy::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) => Ok(FsyncPolicy::Interval { ms }),
                _ => Err(Error::BadFsyncPolicy(s.to_string())),
            },
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Batch => f.write_str("batch"),
            FsyncPolicy::Interval { ms } => write!(f, "interval:{ms}"),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// Whether sealed segments (every segment but the active one, once the segment after it holds
/// a durable record) are rewritten compressed, off the append path, by a background thread.
/// Either way, compressed segments already on disk are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Keep sealed segments as written.
    #[default]
    None,
    /// zstd frames of about 1 MiB of records each (FORMAT.md "Compressed segments").
    Zstd {
        /// zstd level, 1-19 (3: zstd's default, ~0.3 s of one core per 64 MiB segment).
        level: i32,
    },
}

/// The zstd level of `"zstd"` without one.
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;

impl FromStr for Compression {
    type Err = Error;

    /// Parses `none`, `zstd` (level 3) or `zstd:<level>` with a level from 1 to 19 (the
    /// config's `compression` keys).
    fn from_str(s: &str) -> Result<Compression, Error> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd {
                level: ZSTD_LEVEL_DEFAULT,
            }),
            _ => match s.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(level)) if (1..=19).contains(&level) => Ok(Compression::Zstd { level }),
                _ => Err(Error::BadCompression(s.to_string())),
            },
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd {
                level: ZSTD_LEVEL_DEFAULT,
            } => f.write_str("zstd"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// How much old data [`Journal::enforce_retention`] keeps. `None` means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete the oldest segments while the journal is larger than this, counting its
    /// records' bytes as written (compressed segments count their size before compression,
    /// so the disk holds at most this, and what the limit keeps does not depend on how well
    /// the records compress).
    pub bytes_max: Option<u64>,
    /// Delete segments whose newest record was appended longer ago than this.
    pub age_max_ms: Option<u64>,
}

/// How a journal is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// A segment is closed and a new one started when the next record would make it larger
    /// than this (a single larger record gets a segment of its own). Default 64 MiB.
    pub segment_bytes_max: u64,
    /// Default [`FsyncPolicy::Batch`].
    pub fsync: FsyncPolicy,
    /// Default: keep everything.
    pub retention: Retention,
    /// Default [`Compression::None`] (the node's config defaults to zstd).
    pub compression: Compression,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes_max: 64 << 20,
            fsync: FsyncPolicy::Batch,
            retention: Retention::default(),
            compression: Compression::None,
        }
    }
}

/// What [`Journal::open`] found and dropped.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The newest record after recovery, `None` if the journal holds none.
    pub last_seq: Option<Seq>,
    /// Bytes cut from the end of the last segment (torn or zero-filled tail, torn header).
    pub truncated_bytes: u64,
    /// The segment that was cut, if any.
    pub truncated_segment: Option<PathBuf>,
    /// Why the tail was cut ("record CRC mismatch", "zero-filled tail", …).
    pub reason: Option<String>,
    /// Segment files after recovery.
    pub segments: usize,
}

/// The seqs given to one appended batch, both inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    /// Seq of the batch's first record.
    pub first: Seq,
    /// Seq of the batch's last record.
    pub last: Seq,
}

/// What one [`Journal::enforce_retention`] call deleted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Whole segment files deleted.
    pub segments_deleted: usize,
    /// Their bytes on disk.
    pub bytes_deleted: u64,
    /// The oldest seq on disk afterwards.
    pub first_seq: Seq,
    /// The registered reader that stopped retention from deleting a segment the limits
    /// would have deleted, if one did.
    pub held_by: Option<String>,
    /// Capped readers ([`JournalHandle::register_reader_capped`]) past their ceiling whose
    /// unread records this pass deleted.
    pub lapsed: Vec<String>,
}

/// Counters of a journal, for status and metrics (STYLE §8).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JournalStats {
    /// Records on disk (`next_seq - first_seq`).
    pub records: u64,
    /// Bytes of all segment files (compressed ones at their compressed size).
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Of them, compressed.
    pub segments_compressed: usize,
    /// Bytes the segments held as written (before compression): `bytes_as_written / bytes`
    /// is the compression ratio.
    pub bytes_as_written: u64,
    /// Sealed segments the compactor could not compress (they stay as written; the log
    /// says why).
    pub compress_errors_total: u64,
    /// Records appended since open.
    pub appended_total: u64,
    /// `fdatasync` calls since open (including failed ones).
    pub fsyncs_total: u64,
    /// Duration of the last `fdatasync`, microseconds.
    pub fsync_latency_us_last: u64,
    /// Failed appends and syncs since open.
    pub append_errors_total: u64,
    /// Oldest seq on disk.
    pub first_seq: Seq,
    /// Next seq to be appended.
    pub next_seq: Seq,
    /// Newest seq readers may see.
    pub durable_seq: Option<Seq>,
}

/// `Some(Seq(n))` for `n >= 1`, else `None`: the durable seq of a journal whose next durable
/// seq is `n + 1`.
pub(crate) fn seq_opt(n: u64) -> Option<Seq> {
    (n > 0).then_some(Seq(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_parses_and_displays() {
        for (text, policy) in [
            ("batch", FsyncPolicy::Batch),
            ("never", FsyncPolicy::Never),
            ("interval:5", FsyncPolicy::Interval { ms: 5 }),
            ("interval:0", FsyncPolicy::Interval { ms: 0 }),
        ] {
            assert_eq!(text.parse::<FsyncPolicy>().expect("valid policy"), policy);
            assert_eq!(policy.to_string(), text);
        }
        for bad in [
            "",
            "Batch",
            "interval",
            "interval:",
            "interval:-1",
            "interval:5ms",
            "always",
        ] {
            match bad.parse::<FsyncPolicy>() {
                Err(Error::BadFsyncPolicy(s)) => assert_eq!(s, bad),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn thread_safety_as_documented() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Journal>();
        send_sync::<JournalHandle>();
        send::<Tail>();
        send_sync::<ReaderGuard>();
        send_sync::<Error>();
    }

    #[test]
    fn options_default_as_documented() {
        let o = Options::default();
        assert_eq!(o.segment_bytes_max, 64 * 1024 * 1024);
        assert_eq!(o.fsync, FsyncPolicy::Batch);
        assert_eq!(
            o.retention,
            Retention {
                bytes_max: None,
                age_max_ms: None
            }
        );
        assert_eq!(o.compression, Compression::None);
    }

    #[test]
    fn compression_parses_and_displays() {
        for (text, c) in [
            ("none", Compression::None),
            ("zstd", Compression::Zstd { level: 3 }),
            ("zstd:1", Compression::Zstd { level: 1 }),
            ("zstd:19", Compression::Zstd { level: 19 }),
        ] {
            assert_eq!(text.parse::<Compression>().expect("valid"), c);
            assert_eq!(c.to_string(), text);
        }
        assert_eq!(
            "zstd:3".parse::<Compression>().expect("valid").to_string(),
            "zstd"
        );
        for bad in [
            "", "Zstd", "zstd:", "zstd:0", "zstd:20", "zstd:-1", "lz4", "gzip",
        ] {
            match bad.parse::<Compression>() {
                Err(Error::BadCompression(s)) => assert_eq!(s, bad),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }
}
