//! On-disk layout of segments and records (byte by byte in `journal/FORMAT.md`), the
//! positioned-read buffer every reader uses, and the segment scan shared by recovery
//! ([`crate::Journal::open`]) and `verify.rs`.
//!
//! In: an open segment file and what its name says. Out: decoded records, or a precise verdict
//! on the first invalid byte range: a torn tail (truncate and report) or corruption (an error
//! naming the segment and offset). The rules are in FORMAT.md "Recovery".

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use twinrx_types::Seq;

use crate::Error;

/// A decompressed block of a compressed segment and the offset, in the segment as written,
/// of its first byte.
pub(crate) type Loaded = (u64, Arc<Vec<u8>>);

/// Where a [`SegReader`] of a compressed segment gets its bytes: the block holding an
/// offset of the segment as written (`Blocks`, in blocks.rs).
pub(crate) trait BlockSource {
    /// The block holding `offset` and where it starts; `None` past the last block.
    fn load(&self, file: &File, path: &Path, offset: u64) -> Result<Option<Loaded>, Error>;
}

/// First 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TWRXJRNL";
/// Version of the segment and record layout described in FORMAT.md.
pub(crate) const FORMAT_VERSION: u16 = 1;
/// Bytes of the segment header; the first record starts at this offset.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
/// Bytes of a record header (crc, len, seq, append time).
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// Largest payload a record may carry. Messages are at most 64 KiB (SPEC "Protocols"); the
/// limit leaves room for metadata and merged-stream entries while bounding what a corrupt
/// length field can make a reader allocate.
pub const RECORD_BYTES_MAX: usize = 16 << 20;
/// Suffix of segment file names; the stem is the first seq, 20 decimal digits.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of a segment being created (header written, not yet renamed into place).
pub(crate) const TMP_SUFFIX: &str = ".seg.tmp";
/// First 8 bytes of every compressed segment file (FORMAT.md "Compressed segments").
pub(crate) const ZSEGMENT_MAGIC: [u8; 8] = *b"TWRXJZST";
/// Suffix of compressed segment file names; the stem is the first seq, as for segments.
pub(crate) const ZSEGMENT_SUFFIX: &str = ".zseg";
/// Suffix of a compressed segment being written (not yet renamed into place).
pub(crate) const ZTMP_SUFFIX: &str = ".zseg.tmp";
/// Size of a positioned read when scanning; large enough that sequential reads of small
/// records cost one syscall per 64 KiB.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// File name of the segment whose first record has `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// File name of the compressed segment whose first record has `first_seq`.
pub(crate) fn zsegment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{ZSEGMENT_SUFFIX}")
}

/// The first seq encoded in a segment file name, if `name` is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_stem(name.strip_suffix(SEGMENT_SUFFIX)?)
}

/// The first seq encoded in a compressed segment file name, if `name` is one.
pub(crate) fn parse_zsegment_file_name(name: &str) -> Option<u64> {
    parse_stem(name.strip_suffix(ZSEGMENT_SUFFIX)?)
}

fn parse_stem(stem: &str) -> Option<u64> {
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The 32-byte segment header for a segment starting at `first_seq`.
pub(crate) fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    encode_header(SEGMENT_MAGIC, first_seq)
}

/// The 32-byte header of a segment (`SEGMENT_MAGIC`) or compressed segment
/// (`ZSEGMENT_MAGIC`) starting at `first_seq`.
pub(crate) fn encode_header(magic: [u8; 8], first_seq: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&magic);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
    // 12..16 reserved, zero.
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    // 28..32 reserved, zero.
    h
}

/// What the first bytes of a segment file hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderState {
    /// A valid header naming this first seq.
    Valid(u64),
    /// Shorter than a header, or all zero: a creation that did not reach the disk.
    Torn,
    /// Something else: not ours, another version, or damaged.
    Invalid(String),
}

/// Reads and checks the segment header of `file`.
pub(crate) fn read_segment_header(file: &File, path: &Path) -> Result<HeaderState, Error> {
    read_header(file, path, SEGMENT_MAGIC)
}

/// Reads and checks the 32-byte header of `file`, which must start with `magic`.
pub(crate) fn read_header(file: &File, path: &Path, magic: [u8; 8]) -> Result<HeaderState, Error> {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = read_full_at(file, &mut h, 0).map_err(|e| Error::io("read header of", path, e))?;
    let h = &h[..n];
    if n < SEGMENT_HEADER_LEN as usize || h.iter().all(|&b| b == 0) {
        // A partial header is torn whatever it holds: creation writes the header in one
        // write and renames only after fsync, so only a crash mid-creation leaves one.
        return Ok(HeaderState::Torn);
    }
    if h[0..8] != magic {
        return Ok(HeaderState::Invalid(
            "bad magic: not a twinrx journal segment".into(),
        ));
    }
    let crc_stored = le_u32(&h[24..28]);
    if crc32c::crc32c(&h[0..24]) != crc_stored {
        return Ok(HeaderState::Invalid("segment header CRC mismatch".into()));
    }
    if h[12..16].iter().chain(&h[28..32]).any(|&b| b != 0) {
        return Ok(HeaderState::Invalid(
            "reserved header bytes are not zero".into(),
        ));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != FORMAT_VERSION {
        return Ok(HeaderState::Invalid(format!(
            "format version {version}, this build reads version {FORMAT_VERSION}"
        )));
    }
    let header_len = u16::from_le_bytes([h[10], h[11]]);
    if u64::from(header_len) != SEGMENT_HEADER_LEN {
        return Ok(HeaderState::Invalid(format!(
            "header length {header_len}, expected 32"
        )));
    }
    Ok(HeaderState::Valid(le_u64(&h[16..24])))
}

/// Appends one framed record to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, seq: u64, append_unix_ms: u64, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&append_unix_ms.to_le_bytes());
    let crc = record_crc(&buf[start + 4..start + RECORD_HEADER_LEN], payload);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// CRC32C over the record header after the CRC field, then the payload.
fn record_crc(header_after_crc: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_after_crc), payload)
}

/// A decoded record header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHeader {
    pub crc: u32,
    pub len: u32,
    pub seq: u64,
    pub append_unix_ms: u64,
}

impl RecordHeader {
    fn decode(h: &[u8]) -> RecordHeader {
        RecordHeader {
            crc: le_u32(&h[0..4]),
            len: le_u32(&h[4..8]),
            seq: le_u64(&h[8..16]),
            append_unix_ms: le_u64(&h[16..24]),
        }
    }

    /// Bytes of the whole framed record.
    pub fn frame_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// `read_at` until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Positioned reads through a sliding buffer: no file cursor, so any number of readers share
/// one open file with the writer. On a compressed segment the same offsets (those of the
/// segment as written) are served from its decompressed blocks; a record never straddles
/// two blocks.
pub(crate) struct SegReader<'a> {
    file: &'a File,
    path: &'a Path,
    blocks: Option<&'a dyn BlockSource>,
    buf: Vec<u8>,
    block: Option<Arc<Vec<u8>>>,
    start: u64,
}

impl<'a> SegReader<'a> {
    /// Reads the (uncompressed) segment file `file`.
    pub fn new(file: &'a File, path: &'a Path) -> SegReader<'a> {
        SegReader {
            file,
            path,
            blocks: None,
            buf: Vec::new(),
            block: None,
            start: 0,
        }
    }

    /// Reads the compressed segment `file`, whose block table is `blocks`.
    pub fn compressed(
        file: &'a File,
        path: &'a Path,
        blocks: &'a dyn BlockSource,
    ) -> SegReader<'a> {
        SegReader {
            blocks: Some(blocks),
            ..SegReader::new(file, path)
        }
    }

    /// The `n` bytes at `offset`, or `None` if the file ends before them.
    pub fn get(&mut self, offset: u64, n: usize) -> Result<Option<&[u8]>, Error> {
        if let Some(blocks) = self.blocks {
            let held = self
                .block
                .as_ref()
                .is_some_and(|b| offset >= self.start && offset < self.start + b.len() as u64);
            if !held {
                match blocks.load(self.file, self.path, offset)? {
                    Some((start, bytes)) => {
                        self.start = start;
                        self.block = Some(bytes);
                    }
                    None => return Ok(None),
                }
            }
            let at = (offset - self.start) as usize;
            return Ok(self
                .block
                .as_ref()
                .and_then(|b| b.get(at..at.checked_add(n)?)));
        }
        let cached =
            offset >= self.start && offset + n as u64 <= self.start + self.buf.len() as u64;
        if !cached {
            let want = n.max(READ_CHUNK_BYTES);
            self.buf.resize(want, 0);
            let got = read_full_at(self.file, &mut self.buf, offset)
                .map_err(|e| Error::io("read", self.path, e))?;
            self.buf.truncate(got);
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(self.buf.get(at..at + n))
    }

    /// Reads and checks the record expected at `offset` with `seq`; returns the header and
    /// the payload. Anything but exactly that record is corruption: callers only read where
    /// a record is known to be (below the durable seq).
    pub fn record(&mut self, offset: u64, seq: u64) -> Result<(RecordHeader, &[u8]), Error> {
        let path = self.path.to_path_buf();
        let corrupt = |reason: String| Error::Corrupt {
            segment: path.clone(),
            offset,
            seq: Seq(seq),
            reason,
        };
        let h = match self.get(offset, RECORD_HEADER_LEN)? {
            Some(h) => RecordHeader::decode(h),
            None => return Err(corrupt("segment ends inside a record header".into())),
        };
        if h.len as usize > RECORD_BYTES_MAX {
            return Err(corrupt(format!(
                "record length {} exceeds the maximum",
                h.len
            )));
        }
        if h.seq != seq {
            return Err(corrupt(format!("record carries seq {}", h.seq)));
        }
        let frame = match self.get(offset, h.frame_len() as usize)? {
            Some(f) => f,
            None => return Err(corrupt("segment ends inside a record".into())),
        };
        if record_crc(&frame[4..RECORD_HEADER_LEN], &frame[RECORD_HEADER_LEN..]) != h.crc {
            return Err(corrupt("record CRC mismatch".into()));
        }
        Ok((h, &frame[RECORD_HEADER_LEN..]))
    }

    /// Like [`SegReader::record`] but checks only the header (seq and length): used to skip
    /// forward to a seq without hashing payloads that are not returned.
    pub fn skip_header(&mut self, offset: u64, seq: u64) -> Result<RecordHeader, Error> {
        let h = match self.get(offset, RECORD_HEADER_LEN)? {
            Some(h) => RecordHeader::decode(h),
            None => {
                return Err(Error::Corrupt {
                    segment: self.path.to_path_buf(),
                    offset,
                    seq: Seq(seq),
                    reason: "segment ends inside a record header".into(),
                })
            }
        };
        if h.seq != seq || h.len as usize > RECORD_BYTES_MAX {
            return Err(Error::Corrupt {
                segment: self.path.to_path_buf(),
                offset,
                seq: Seq(seq),
                reason: format!("record header carries seq {} length {}", h.seq, h.len),
            });
        }
        Ok(h)
    }
}

/// Every `INDEX_STRIDE_BYTES` of records get one sparse-index entry, so a lookup reads at
/// most this much before the wanted record, and a 64 MiB segment holds ≤ 1024 entries.
pub(crate) const INDEX_STRIDE_BYTES: u64 = 64 << 10;

/// Sparse index of one segment: `(seq, offset)` entries at least `INDEX_STRIDE_BYTES` apart
/// for every record below `frontier`, and the frontier itself (a record boundary).
#[derive(Debug, Clone)]
pub(crate) struct Index {
    pub entries: Vec<(u64, u64)>,
    pub frontier_seq: u64,
    pub frontier_offset: u64,
}

impl Index {
    pub fn new(first_seq: u64) -> Index {
        Index {
            entries: Vec::new(),
            frontier_seq: first_seq,
            frontier_offset: SEGMENT_HEADER_LEN,
        }
    }

    /// Notes the record `(seq, offset)`, which must be at the frontier, and moves the
    /// frontier past its `frame_len` bytes.
    pub fn push(&mut self, seq: u64, offset: u64, frame_len: u64) {
        debug_assert_eq!(seq, self.frontier_seq);
        if self
            .entries
            .last()
            .is_none_or(|&(_, o)| offset - o >= INDEX_STRIDE_BYTES)
        {
            self.entries.push((seq, offset));
        }
        self.frontier_seq = seq + 1;
        self.frontier_offset = offset + frame_len;
    }

    /// The best known starting point for `seq`: a record boundary `(s, offset)` with `s <= seq`.
    pub fn start_for(&self, seq: u64, first_seq: u64) -> (u64, u64) {
        if seq >= self.frontier_seq {
            return (self.frontier_seq, self.frontier_offset);
        }
        match self.entries.partition_point(|&(s, _)| s <= seq) {
            0 => (first_seq, SEGMENT_HEADER_LEN),
            i => self.entries[i - 1],
        }
    }

    /// Forgets everything at or after `(seq, offset)` (a record boundary being cut).
    pub fn cut(&mut self, seq: u64, offset: u64) {
        self.entries.retain(|&(s, _)| s < seq);
        if self.frontier_seq > seq {
            self.frontier_seq = seq;
            self.frontier_offset = offset;
        }
    }
}

/// Where a segment scan stopped early (FORMAT.md "Recovery").
#[derive(Debug, Clone)]
pub(crate) struct TornTail {
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// Result of scanning one segment from its header to its end.
#[derive(Debug)]
pub(crate) struct Scan {
    pub end_offset: u64,
    pub end_seq: u64,
    pub records: u64,
    pub first_ts_ms: u64,
    pub last_ts_ms: u64,
    pub index: Index,
    pub tail: Option<TornTail>,
}

/// Verdict on the bytes at one offset.
enum Check {
    Valid(RecordHeader),
    /// A record header of 24 zero bytes (or a zero partial header): end of written data if
    /// nothing but zeros follows (a preallocated or zero-extended tail).
    Zero,
    Invalid(String),
}

fn check_record(
    r: &mut SegReader<'_>,
    offset: u64,
    file_len: u64,
    seq: u64,
) -> Result<Check, Error> {
    let left = file_len - offset;
    if left < RECORD_HEADER_LEN as u64 {
        let Some(b) = r.get(offset, left as usize)? else {
            return Ok(Check::Invalid("file shrank while scanning".into()));
        };
        if b.iter().all(|&x| x == 0) {
            return Ok(Check::Zero);
        }
        return Ok(Check::Invalid(format!(
            "partial record header ({left} bytes)"
        )));
    }
    let Some(hb) = r.get(offset, RECORD_HEADER_LEN)? else {
        return Ok(Check::Invalid("file shrank while scanning".into()));
    };
    if hb.iter().all(|&x| x == 0) {
        return Ok(Check::Zero);
    }
    let h = RecordHeader::decode(hb);
    if h.len as usize > RECORD_BYTES_MAX {
        return Ok(Check::Invalid(format!(
            "record length {} exceeds the maximum",
            h.len
        )));
    }
    if offset + h.frame_len() > file_len {
        return Ok(Check::Invalid(format!(
            "record of {} bytes extends {} bytes past the end of the file",
            h.frame_len(),
            offset + h.frame_len() - file_len
        )));
    }
    let Some(frame) = r.get(offset, h.frame_len() as usize)? else {
        return Ok(Check::Invalid("file shrank while scanning".into()));
    };
    if record_crc(&frame[4..RECORD_HEADER_LEN], &frame[RECORD_HEADER_LEN..]) != h.crc {
        return Ok(Check::Invalid("record CRC mismatch".into()));
    }
    if h.seq != seq {
        return Ok(Check::Invalid(format!(
            "record carries seq {}, expected {seq}",
            h.seq
        )));
    }
    Ok(Check::Valid(h))
}

/// Whether bytes `offset..file_len` are all zero.
fn rest_is_zero(r: &mut SegReader<'_>, mut offset: u64, file_len: u64) -> Result<bool, Error> {
    while offset < file_len {
        let n = (file_len - offset).min(READ_CHUNK_BYTES as u64) as usize;
        let Some(b) = r.get(offset, n)? else {
            return Ok(false);
        };
        if b.iter().any(|&x| x != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

/// The offset of the first valid record after `offset` whose seq is greater than `seq`
/// (FORMAT.md: such a record turns an invalid record into corruption). Every candidate is
/// filtered by a plausible seq and length before its CRC is computed, so garbage costs one
/// header decode per byte.
fn valid_record_after(
    r: &mut SegReader<'_>,
    offset: u64,
    file_len: u64,
    seq: u64,
) -> Result<Option<u64>, Error> {
    // Records are at least a header long, so the seq of any real record in the rest of the
    // file is at most this.
    let seq_max = seq + (file_len - offset) / RECORD_HEADER_LEN as u64 + 1;
    let mut q = offset + 1;
    while q + RECORD_HEADER_LEN as u64 <= file_len {
        let Some(hb) = r.get(q, RECORD_HEADER_LEN)? else {
            return Ok(None);
        };
        let h = RecordHeader::decode(hb);
        if h.seq > seq
            && h.seq <= seq_max
            && (h.len as usize) <= RECORD_BYTES_MAX
            && q + h.frame_len() <= file_len
        {
            if let Check::Valid(_) = check_record(r, q, file_len, h.seq)? {
                return Ok(Some(q));
            }
        }
        q += 1;
    }
    Ok(None)
}

/// Scans the records of a segment whose header is valid. `last` says whether it is the last
/// segment of the journal: only there may an invalid record be a torn tail.
pub(crate) fn scan_segment(
    mut r: SegReader<'_>,
    path: &Path,
    file_len: u64,
    first_seq: u64,
    last: bool,
) -> Result<Scan, Error> {
    let mut scan = Scan {
        end_offset: SEGMENT_HEADER_LEN,
        end_seq: first_seq,
        records: 0,
        first_ts_ms: 0,
        last_ts_ms: 0,
        index: Index::new(first_seq),
        tail: None,
    };
    loop {
        let offset = scan.end_offset;
        let seq = scan.end_seq;
        if offset >= file_len {
            return Ok(scan);
        }
        let reason = match check_record(&mut r, offset, file_len, seq)? {
            Check::Valid(h) => {
                scan.index.push(seq, offset, h.frame_len());
                if scan.records == 0 {
                    scan.first_ts_ms = h.append_unix_ms;
                }
                scan.last_ts_ms = h.append_unix_ms;
                scan.records += 1;
                scan.end_offset += h.frame_len();
                scan.end_seq += 1;
                continue;
            }
            Check::Zero if rest_is_zero(&mut r, offset, file_len)? => {
                "zero-filled tail".to_string()
            }
            Check::Zero => "zero record header followed by non-zero bytes".to_string(),
            Check::Invalid(reason) => reason,
        };
        let corrupt = |reason: String| Error::Corrupt {
            segment: path.to_path_buf(),
            offset,
            seq: Seq(seq),
            reason,
        };
        if !last {
            return Err(corrupt(format!(
                "{reason} (in a segment that is not the last)"
            )));
        }
        if let Some(q) = valid_record_after(&mut r, offset, file_len, seq)? {
            return Err(corrupt(format!(
                "{reason}; a valid record follows at offset {q}"
            )));
        }
        scan.tail = Some(TornTail {
            offset,
            bytes: file_len - offset,
            reason,
        });
        return Ok(scan);
    }
}

/// The files of a journal directory.
pub(crate) struct Listing {
    /// `(first seq, path)` of every segment file, sorted by first seq.
    pub segments: Vec<(u64, PathBuf)>,
    /// Leftovers of interrupted segment creations.
    pub interrupted: Vec<PathBuf>,
    /// `(first seq, path)` of every compressed segment file, sorted by first seq.
    pub compressed: Vec<(u64, PathBuf)>,
    /// Leftovers of interrupted compressions (`….zseg.tmp`).
    pub interrupted_compressions: Vec<PathBuf>,
}

/// The segment files of `dir` and the leftovers of interrupted segment creations.
pub(crate) fn list_segments(dir: &Path) -> Result<Listing, Error> {
    let mut segs = Vec::new();
    let mut tmps = Vec::new();
    let mut zsegs = Vec::new();
    let mut ztmps = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_segment_file_name(name) {
            segs.push((first, entry.path()));
        } else if name.ends_with(TMP_SUFFIX) {
            tmps.push(entry.path());
        } else if let Some(first) = parse_zsegment_file_name(name) {
            zsegs.push((first, entry.path()));
        } else if name.ends_with(ZTMP_SUFFIX) {
            ztmps.push(entry.path());
        }
    }
    segs.sort_unstable();
    zsegs.sort_unstable();
    Ok(Listing {
        segments: segs,
        interrupted: tmps,
        compressed: zsegs,
        interrupted_compressions: ztmps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("0000000000000000042.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg.tmp"),
            None
        );
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
    }

    #[test]
    fn record_layout_is_as_documented() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 0x0102_0304_0506_0708, b"hi");
        assert_eq!(buf.len(), 26);
        assert_eq!(&buf[4..8], &2u32.to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        assert_eq!(&buf[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[24..], b"hi");
        let crc = crc32c::crc32c(&buf[4..]);
        assert_eq!(&buf[0..4], &crc.to_le_bytes());
    }

    #[test]
    fn segment_header_layout_is_as_documented() {
        let h = encode_segment_header(5);
        assert_eq!(&h[0..8], b"TWRXJRNL");
        assert_eq!(&h[8..10], &[1, 0]);
        assert_eq!(&h[10..12], &[32, 0]);
        assert_eq!(&h[12..16], &[0; 4]);
        assert_eq!(&h[16..24], &5u64.to_le_bytes());
        assert_eq!(&h[24..28], &crc32c::crc32c(&h[0..24]).to_le_bytes());
        assert_eq!(&h[28..32], &[0; 4]);
    }

    #[test]
    fn index_bounds_lookups() {
        let mut idx = Index::new(10);
        let mut off = SEGMENT_HEADER_LEN;
        for seq in 10..10_000 {
            idx.push(seq, off, 1000);
            off += 1000;
        }
        // One entry every 66 records: the first offset at least 64 KiB after the previous.
        assert_eq!(idx.entries.len(), 9990usize.div_ceil(66));
        let (s, o) = idx.start_for(5000, 10);
        assert!(s <= 5000 && 5000 - s <= 66, "start {s}");
        assert_eq!(o, SEGMENT_HEADER_LEN + (s - 10) * 1000);
        assert_eq!(idx.start_for(20_000, 10), (10_000, off));
        idx.cut(5000, SEGMENT_HEADER_LEN + 4990 * 1000);
        assert_eq!(idx.frontier_seq, 5000);
        assert!(idx.entries.iter().all(|&(s, _)| s < 5000));
    }
}
