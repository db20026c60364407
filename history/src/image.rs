//! A small binary encoding for checkpoint images: little-endian integers, length-prefixed
//! sections, a CRC-32C over the whole image at its end.

use std::io;

use twinrx_types::{Key, NodeId, Offset, UnixNanos};

/// Appends fields to an image.
#[derive(Default)]
pub struct Enc(Vec<u8>);

impl Enc {
    pub fn new(magic: &[u8; 8]) -> Enc {
        Enc::with_capacity(magic, 0)
    }
    /// An image of about `bytes` bytes (one allocation instead of doublings: images of a
    /// large index are megabytes).
    pub fn with_capacity(magic: &[u8; 8], bytes: usize) -> Enc {
        let mut v = Vec::with_capacity(bytes + magic.len() + 4);
        v.extend_from_slice(magic);
        Enc(v)
    }
    pub fn u64(&mut self, v: u64) -> &mut Enc {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Enc {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn opt_i64(&mut self, v: Option<i64>) -> &mut Enc {
        self.u64(u64::from(v.is_some())).i64(v.unwrap_or(0))
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Enc {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    pub fn entry(&mut self, key: Key, node: NodeId, at: UnixNanos, offset: Offset) -> &mut Enc {
        self.0.extend_from_slice(&key.0);
        self.0.push(node.0);
        self.i64(at.0).u64(offset.0)
    }
    /// The image with its CRC appended.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.0);
        self.0.extend_from_slice(&crc.to_le_bytes());
        self.0
    }
}

/// Reads fields of an image checked by [`Dec::open`].
pub struct Dec<'a>(&'a [u8]);

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("checkpoint image: {what}"),
    )
}

impl<'a> Dec<'a> {
    /// Checks the magic and the CRC.
    pub fn open(image: &'a [u8], magic: &[u8; 8]) -> io::Result<Dec<'a>> {
        let body_len = image.len().checked_sub(4).ok_or_else(|| bad("too short"))?;
        let (body, crc) = image.split_at(body_len);
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if crc32c::crc32c(body) != u32::from_le_bytes(c) {
            return Err(bad("CRC mismatch"));
        }
        let rest = body
            .strip_prefix(magic.as_slice())
            .ok_or_else(|| bad("unknown format"))?;
        Ok(Dec(rest))
    }
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    pub fn i64(&mut self) -> io::Result<i64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }
    pub fn opt_i64(&mut self) -> io::Result<Option<i64>> {
        let some = self.u64()? != 0;
        let v = self.i64()?;
        Ok(some.then_some(v))
    }
    pub fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = usize::try_from(self.u64()?).map_err(|_| bad("length"))?;
        self.take(n)
    }
    pub fn entry(&mut self) -> io::Result<(Key, NodeId, UnixNanos, Offset)> {
        let mut k = [0u8; 16];
        k.copy_from_slice(self.take(16)?);
        let node = NodeId(*self.take(1)?.first().ok_or_else(|| bad("node"))?);
        if node.0 > 1 {
            return Err(bad("node"));
        }
        let at = UnixNanos(self.i64()?);
        let off = Offset(self.u64()?);
        Ok((Key(k), node, at, off))
    }
    /// A count that must fit what is left (each item at least `min_item` bytes).
    pub fn count(&mut self, min_item: usize) -> io::Result<usize> {
        let n = usize::try_from(self.u64()?).map_err(|_| bad("count"))?;
        if n.saturating_mul(min_item) > self.0.len() {
            return Err(bad("count beyond the image"));
        }
        Ok(n)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
