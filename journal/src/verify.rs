//! [`verify`]: a read-only full scan of a journal directory, for crash tests and the
//! `twinrx journal verify` command. It checks what [`crate::Journal::open`] checks, and
//! additionally every record of every segment, without changing any file.

use std::fs::File;
use std::path::{Path, PathBuf};

use twinrx_types::Seq;

use std::sync::Arc;

use crate::blocks::{self, BlockCache};
use crate::format::{self, HeaderState, SegReader, SEGMENT_HEADER_LEN};
use crate::Error;

/// What [`verify`] found in a journal directory.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Segment files (including empty leftovers of a reset, which open would remove).
    pub segments: usize,
    /// Valid records.
    pub records: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Seq of the oldest record, `None` without records.
    pub first_seq: Option<Seq>,
    /// Seq of the newest valid record, `None` without records.
    pub last_seq: Option<Seq>,
    /// A torn or zero-filled tail at the end of the last segment, which open would truncate.
    /// Not an error: it is what a crash leaves.
    pub torn_tail: Option<TornTail>,
}

/// Bytes at the end of the last segment that are not a valid record (FORMAT.md "Recovery").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment file.
    pub segment: PathBuf,
    /// Where the invalid bytes start (a record boundary; 0 for a torn header).
    pub offset: u64,
    /// How many bytes open would cut.
    pub bytes: u64,
    /// Why they are invalid.
    pub reason: String,
}

impl std::fmt::Display for VerifyReport {
    /// One line for `twinrx journal verify`, e.g.
    /// `ok: 3 segments, 1200 records (seqs 1..=1200), 262176 bytes`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {} segments, {} records",
            self.segments, self.records
        )?;
        if let (Some(a), Some(b)) = (self.first_seq, self.last_seq) {
            write!(f, " (seqs {a}..={b})")?;
        }
        write!(f, ", {} bytes", self.bytes)?;
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; torn tail in {} at offset {}: {} bytes ({}), open will truncate it",
                t.segment.display(),
                t.offset,
                t.bytes,
                t.reason
            )?;
        }
        Ok(())
    }
}

/// Scans every segment of `dir`: headers, every record's CRC and seq, seqs contiguous from
/// segment to segment. Returns [`Error::Corrupt`] / [`Error::BadSegment`] for damage that
/// open would refuse (naming file and offset), a report otherwise.
pub fn verify(dir: &Path) -> Result<VerifyReport, Error> {
    let listing = format::list_segments(dir)?;
    let mut segs: Vec<(u64, PathBuf, bool)> = listing
        .segments
        .into_iter()
        .map(|(f, p)| (f, p, false))
        .collect();
    for (first, zpath) in listing.compressed {
        // Beside its segment as written, a compressed copy is a leftover open removes.
        if !segs.iter().any(|(f, _, _)| *f == first) {
            segs.push((first, zpath, true));
        }
    }
    segs.sort_unstable_by_key(|(f, _, _)| *f);
    let cache = Arc::new(BlockCache::default());
    let mut report = VerifyReport {
        segments: segs.len(),
        ..VerifyReport::default()
    };
    let mut expected: Option<u64> = None;
    let count = segs.len();
    for (i, (first, path, compressed)) in segs.into_iter().enumerate() {
        let last = i + 1 == count;
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        report.bytes += len;
        if compressed {
            let blocks = blocks::open_blocks(&file, &path, first, cache.clone())?;
            check_follows(expected, first, &path)?;
            let r = SegReader::compressed(&file, &path, &blocks);
            let scan = format::scan_segment(r, &path, blocks.raw_len, first, false)?;
            if scan.end_seq != blocks.end_seq {
                return Err(Error::BadSegment {
                    segment: path,
                    reason: format!(
                        "records end before seq {}, the block table says {}",
                        scan.end_seq, blocks.end_seq
                    ),
                });
            }
            report.first_seq.get_or_insert(Seq(first));
            report.last_seq = Some(Seq(scan.end_seq - 1));
            report.records += scan.records;
            expected = Some(scan.end_seq);
            continue;
        }
        match format::read_segment_header(&file, &path)? {
            HeaderState::Valid(h) if h == first => {}
            HeaderState::Valid(h) => {
                return Err(Error::BadSegment {
                    segment: path,
                    reason: format!("header says first seq {h}, the file name {first}"),
                })
            }
            HeaderState::Torn if last => {
                report.torn_tail = Some(TornTail {
                    segment: path,
                    offset: 0,
                    bytes: len,
                    reason: "torn segment header".into(),
                });
                continue;
            }
            HeaderState::Torn => {
                return Err(Error::BadSegment {
                    segment: path,
                    reason: "torn header in a segment that is not the last".into(),
                })
            }
            HeaderState::Invalid(reason) => {
                return Err(Error::BadSegment {
                    segment: path,
                    reason,
                })
            }
        }
        if len == SEGMENT_HEADER_LEN && !last {
            // Leftover of a reset; open removes it.
            continue;
        }
        check_follows(expected, first, &path)?;
        let scan = format::scan_segment(SegReader::new(&file, &path), &path, len, first, last)?;
        if scan.records > 0 {
            report.first_seq.get_or_insert(Seq(first));
            report.last_seq = Some(Seq(scan.end_seq - 1));
        }
        report.records += scan.records;
        expected = Some(scan.end_seq);
        if let Some(t) = scan.tail {
            report.torn_tail = Some(TornTail {
                segment: path,
                offset: t.offset,
                bytes: t.bytes,
                reason: t.reason,
            });
        }
    }
    Ok(report)
}

/// A segment must start where the one before it ended.
fn check_follows(expected: Option<u64>, first: u64, path: &Path) -> Result<(), Error> {
    match expected {
        Some(exp) if first != exp => Err(Error::BadSegment {
            segment: path.to_path_buf(),
            reason: format!(
                "starts at seq {first}, but the previous segment ends before seq {exp}"
            ),
        }),
        _ => Ok(()),
    }
}
