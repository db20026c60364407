//! The bytes of a compressed segment (FORMAT.md "Compressed segments"): its block table,
//! read and checked at open ([`open_blocks`]), and its blocks, read, checked and
//! decompressed on demand ([`Blocks`], the `BlockSource` a `SegReader` of a compressed
//! segment reads through) with a small per-journal cache ([`BlockCache`]). The compactor
//! (`compress.rs`) writes them.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use twinrx_types::Seq;

use crate::format::{
    self, le_u32, le_u64, read_full_at, BlockSource, Index, Loaded, SEGMENT_HEADER_LEN,
    ZSEGMENT_MAGIC,
};
use crate::Error;

/// Records are grouped into blocks of at least this many bytes (the last one of a segment
/// may be smaller, a single larger record makes a larger block).
pub(crate) const BLOCK_RAW_BYTES: u64 = 256 << 10;
/// Bytes of one block-table entry.
pub(crate) const ENTRY_LEN: usize = 40;
/// Bytes of the trailer at the end of a compressed segment.
pub(crate) const TRAILER_LEN: u64 = 48;
/// First 8 bytes of the trailer.
pub(crate) const TRAILER_MAGIC: [u8; 8] = *b"TWRXZEND";
/// Decompressed blocks kept per journal for readers that come back to the same block.
const CACHE_BLOCKS: usize = 4;

/// One block: records `first_seq..` at bytes `raw_start..raw_start + raw_len` of the segment
/// as written, stored as a zstd frame at `comp_off` in the compressed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub first_seq: u64,
    pub raw_start: u64,
    pub comp_off: u64,
    pub raw_len: u32,
    pub comp_len: u32,
    /// CRC-32C of the compressed bytes.
    pub crc: u32,
}

impl Block {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.raw_start.to_le_bytes());
        out.extend_from_slice(&self.comp_off.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.comp_len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
    }

    fn decode(b: &[u8]) -> Block {
        Block {
            first_seq: le_u64(&b[0..8]),
            raw_start: le_u64(&b[8..16]),
            comp_off: le_u64(&b[16..24]),
            raw_len: le_u32(&b[24..28]),
            comp_len: le_u32(&b[28..32]),
            crc: le_u32(&b[32..36]),
        }
    }

    fn raw_end(&self) -> u64 {
        self.raw_start + u64::from(self.raw_len)
    }
}

/// Recently decompressed blocks of one journal, each under its [`Blocks::id`].
#[derive(Default)]
pub(crate) struct BlockCache {
    entries: Mutex<VecDeque<(u64, Loaded)>>,
}

/// The block table of a compressed segment, read once when it is opened or written.
pub(crate) struct Blocks {
    /// Unique per compressed file opened or written by this process: a segment cut and
    /// compressed again gets a new one, so the cache never serves the old file's blocks.
    id: u64,
    pub blocks: Vec<Block>,
    /// One past the last record's seq.
    pub end_seq: u64,
    /// Length of the segment as written (the end of the last block).
    pub raw_len: u64,
    /// Bytes of the compressed file.
    pub file_len: u64,
    cache: Arc<BlockCache>,
}

impl Blocks {
    /// The table of a compressed segment just written: `blocks` hold the records up to
    /// `end_seq`, `raw_len` bytes as written, in a file of `file_len` bytes.
    pub fn new(
        blocks: Vec<Block>,
        end_seq: u64,
        raw_len: u64,
        file_len: u64,
        cache: Arc<BlockCache>,
    ) -> Blocks {
        Blocks {
            id: next_id(),
            blocks,
            end_seq,
            raw_len,
            file_len,
            cache,
        }
    }

    /// The sparse index of the segment: one entry per block.
    pub fn index(&self) -> Index {
        Index {
            entries: self
                .blocks
                .iter()
                .map(|b| (b.first_seq, b.raw_start))
                .collect(),
            frontier_seq: self.end_seq,
            frontier_offset: self.raw_len,
        }
    }
}

impl BlockSource for Blocks {
    /// The block holding `offset` (decompressed, checked) and where it starts; `None` if
    /// `offset` is past the last block.
    fn load(&self, file: &File, path: &Path, offset: u64) -> Result<Option<Loaded>, Error> {
        let i = self.blocks.partition_point(|b| b.raw_start <= offset);
        let Some(b) = i.checked_sub(1).map(|i| self.blocks[i]) else {
            return Ok(None);
        };
        if offset >= b.raw_end() {
            return Ok(None);
        }
        if let Some((_, loaded)) = lock(&self.cache.entries)
            .iter()
            .find(|(id, (r, _))| *id == self.id && *r == b.raw_start)
        {
            return Ok(Some(loaded.clone()));
        }
        let bytes = Arc::new(read_block(file, path, &b)?);
        let mut cache = lock(&self.cache.entries);
        if cache.len() == CACHE_BLOCKS {
            cache.pop_front();
        }
        cache.push_back((self.id, (b.raw_start, bytes.clone())));
        Ok(Some((b.raw_start, bytes)))
    }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Reads, checks and decompresses block `b` of the compressed segment `file`.
pub(crate) fn read_block(file: &File, path: &Path, b: &Block) -> Result<Vec<u8>, Error> {
    let corrupt = |reason: String| Error::Corrupt {
        segment: path.to_path_buf(),
        offset: b.comp_off,
        seq: Seq(b.first_seq),
        reason,
    };
    let mut comp = vec![0u8; b.comp_len as usize];
    let got = read_full_at(file, &mut comp, b.comp_off).map_err(|e| Error::io("read", path, e))?;
    if got != comp.len() {
        return Err(corrupt("compressed segment ends inside a block".into()));
    }
    if crc32c::crc32c(&comp) != b.crc {
        return Err(corrupt("compressed block CRC mismatch".into()));
    }
    let raw = zstd::bulk::decompress(&comp, b.raw_len as usize)
        .map_err(|e| corrupt(format!("compressed block does not decompress: {e}")))?;
    if raw.len() != b.raw_len as usize {
        return Err(corrupt(format!(
            "block decompresses to {} bytes, the table says {}",
            raw.len(),
            b.raw_len
        )));
    }
    Ok(raw)
}

/// Opens the block table of the compressed segment `file` (named for `first_seq`): header,
/// trailer and table checked, blocks contiguous from the first record's offset.
pub(crate) fn open_blocks(
    file: &File,
    path: &Path,
    first_seq: u64,
    cache: Arc<BlockCache>,
) -> Result<Blocks, Error> {
    let bad = |reason: String| Error::BadSegment {
        segment: path.to_path_buf(),
        reason,
    };
    match format::read_header(file, path, ZSEGMENT_MAGIC)? {
        format::HeaderState::Valid(h) if h == first_seq => {}
        format::HeaderState::Valid(h) => {
            return Err(bad(format!(
                "header says first seq {h}, the file name {first_seq}"
            )))
        }
        format::HeaderState::Torn => return Err(bad("torn compressed segment header".into())),
        format::HeaderState::Invalid(reason) => return Err(bad(reason)),
    }
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if file_len < SEGMENT_HEADER_LEN + TRAILER_LEN {
        return Err(bad(format!(
            "{file_len} bytes: too short for a compressed segment"
        )));
    }
    let mut t = [0u8; TRAILER_LEN as usize];
    read_full_at(file, &mut t, file_len - TRAILER_LEN).map_err(|e| Error::io("read", path, e))?;
    if t[0..8] != TRAILER_MAGIC {
        return Err(bad(
            "no trailer: the compressed segment is incomplete".into()
        ));
    }
    let table_off = le_u64(&t[8..16]);
    let end_seq = le_u64(&t[16..24]);
    let raw_len = le_u64(&t[24..32]);
    let count = le_u32(&t[32..36]) as u64;
    let crc_stored = le_u32(&t[36..40]);
    let table_len = count.saturating_mul(ENTRY_LEN as u64);
    if table_off < SEGMENT_HEADER_LEN
        || table_off.saturating_add(table_len) != file_len - TRAILER_LEN
    {
        return Err(bad(format!(
            "trailer places the block table ({count} blocks) at {table_off}, outside the file"
        )));
    }
    let mut table = vec![0u8; table_len as usize];
    read_full_at(file, &mut table, table_off).map_err(|e| Error::io("read", path, e))?;
    let mut digest = table.clone();
    digest.extend_from_slice(&t[0..36]);
    if crc32c::crc32c(&digest) != crc_stored {
        return Err(bad("block table CRC mismatch".into()));
    }
    let blocks: Vec<Block> = table.chunks_exact(ENTRY_LEN).map(Block::decode).collect();
    let (mut raw_at, mut seq, mut comp_at) = (SEGMENT_HEADER_LEN, first_seq, SEGMENT_HEADER_LEN);
    for (i, b) in blocks.iter().enumerate() {
        let first_ok = if i == 0 {
            b.first_seq == seq
        } else {
            b.first_seq > seq
        };
        if b.raw_start != raw_at || !first_ok || b.comp_off != comp_at || b.raw_len == 0 {
            return Err(bad(format!(
                "block {i} of the table does not follow block {}",
                i.saturating_sub(1)
            )));
        }
        raw_at = b.raw_end();
        seq = b.first_seq;
        comp_at = b.comp_off + u64::from(b.comp_len);
    }
    if blocks.is_empty() || raw_at != raw_len || comp_at != table_off || end_seq <= seq {
        return Err(bad(format!(
            "block table ends at byte {raw_at}, seq {seq}; the trailer says {raw_len}, seq {end_seq}"
        )));
    }
    Ok(Blocks::new(blocks, end_seq, raw_len, file_len, cache))
}

/// Locks the cache; a panic elsewhere while holding it leaves it consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
