//! The wire: frames and their payloads, byte by byte as in `replicator/PROTOCOL.md`.
//!
//! A frame is `length: u32 BE` (bytes after this field), `type: u8`, payload, and — after
//! the handshake — a 16-byte tag. Payload codecs here are pure functions over byte slices;
//! decoding never panics on any input and reports what is wrong as a string (the caller
//! closes the connection and counts it). Integers are big-endian with the width given.

use tokio::io::{AsyncRead, AsyncReadExt};
use twinrx_types::Seq;

/// The protocol version this build speaks: 2, the link inside TLS 1.3 (1 was the
/// pre-shared-key handshake in clear, no longer spoken).
pub const PROTOCOL_VERSION: u16 = 2;
/// Oldest version this build accepts.
pub(crate) const PROTOCOL_VERSION_MIN: u16 = 2;
/// First bytes of both hellos.
pub(crate) const MAGIC: [u8; 8] = *b"TWRXLINK";
/// Handshake frames are tiny; a stranger cannot make us allocate more than this.
pub(crate) const HANDSHAKE_FRAME_BYTES_MAX: u32 = 128;
/// Bytes of the truncated HMAC-SHA256 tag that ends every authenticated frame.
pub(crate) const TAG_LEN: usize = 16;
/// Default maximum of the length field after the handshake: a batch holding one journal
/// record of the largest size (`journal::RECORD_BYTES_MAX`) fits, with room to spare.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = journal::RECORD_BYTES_MAX as u32 + 4096;
/// Smallest `frame_bytes_max` a config may set.
pub(crate) const FRAME_BYTES_MIN: u32 = 4096;
/// Bytes of a batch payload before its records (first seq u64, count u32).
pub(crate) const BATCH_HEADER_LEN: usize = 12;
/// Bytes before each record in a batch (length u32).
pub(crate) const BATCH_RECORD_OVERHEAD: usize = 4;
/// Longest error detail text carried in a `SHIP_ERROR` / `COPY_ERROR` frame.
pub(crate) const ERROR_DETAIL_BYTES_MAX: usize = 512;

/// Frame types (PROTOCOL.md "Frame types").
pub(crate) mod ty {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_REPLY: u8 = 0x02;
    pub const REFUSE: u8 = 0x0F;
    pub const CONTROL: u8 = 0x10;
    pub const PING: u8 = 0x11;
    pub const CLOCK: u8 = 0x12;
    pub const SHIP_REQUEST: u8 = 0x20;
    pub const SHIP_BATCH: u8 = 0x21;
    pub const SHIP_ACK: u8 = 0x22;
    pub const SHIP_ERROR: u8 = 0x23;
    pub const COPY_ERROR: u8 = 0x24;
}

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// EOF before the first byte of a frame: the peer closed cleanly.
    Eof,
    /// Socket error, or EOF inside a frame.
    Io(std::io::Error),
    /// The length field is above the maximum in force.
    TooLarge { len: u32, max: u32 },
    /// The length field is below the minimum (type byte, and tag if authenticated).
    TooShort { len: u32 },
}

/// Reads one frame's body (`type` byte first, then payload and tag), refusing lengths
/// outside `min..=max` before allocating.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    min: u32,
    max: u32,
) -> Result<Vec<u8>, ReadError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Err(ReadError::Eof),
            Ok(0) => {
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => got += n,
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(ReadError::TooLarge { len, max });
    }
    if len < min {
        return Err(ReadError::TooShort { len });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await.map_err(ReadError::Io)?;
    Ok(body)
}

/// An unauthenticated handshake frame, ready to write.
pub(crate) fn handshake_frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&(1 + payload.len() as u32).to_be_bytes());
    out.push(ty);
    out.extend_from_slice(payload);
    out
}

/// A cursor over a payload that reports truncation instead of panicking.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("{}: truncated", self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn end(&self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {} trailing bytes", self.what, self.buf.len()))
        }
    }
}

/// `HELLO` (client → server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub version_min: u16,
    pub version_max: u16,
    pub node: u8,
    pub nonce: [u8; 32],
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(45);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&self.version_min.to_be_bytes());
        p.extend_from_slice(&self.version_max.to_be_bytes());
        p.push(self.node);
        p.extend_from_slice(&self.nonce);
        p
    }

    pub(crate) fn decode(p: &[u8]) -> Result<Hello, String> {
        let mut c = Cursor::new(p, "hello");
        if c.array::<8>()? != MAGIC {
            return Err("hello: bad magic".into());
        }
        let h = Hello {
            version_min: c.u16()?,
            version_max: c.u16()?,
            node: c.u8()?,
            nonce: c.array()?,
        };
        c.end()?;
        Ok(h)
    }
}

/// `HELLO_REPLY` (server → client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HelloReply {
    pub version: u16,
    pub node: u8,
    pub nonce: [u8; 32],
}

impl HelloReply {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(43);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&self.version.to_be_bytes());
        p.push(self.node);
        p.extend_from_slice(&self.nonce);
        p
    }

    pub(crate) fn decode(p: &[u8]) -> Result<HelloReply, String> {
        let mut c = Cursor::new(p, "hello reply");
        if c.array::<8>()? != MAGIC {
            return Err("hello reply: bad magic".into());
        }
        let h = HelloReply {
            version: c.u16()?,
            node: c.u8()?,
            nonce: c.array()?,
        };
        c.end()?;
        Ok(h)
    }
}

/// `REFUSE` reason codes (PROTOCOL.md).
pub(crate) mod refuse {
    pub const MALFORMED: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const WRONG_NODE: u8 = 4;
    pub const WRONG_IDENTITY: u8 = 5;
}

/// `REFUSE`: reason u8, the refuser's version range (u16, u16).
pub(crate) fn encode_refuse(reason: u8) -> Vec<u8> {
    let mut p = vec![reason];
    p.extend_from_slice(&PROTOCOL_VERSION_MIN.to_be_bytes());
    p.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p
}

/// `SHIP_REQUEST` flags.
pub(crate) const REQUEST_HAS_CHECK: u8 = 0x01;
pub(crate) const REQUEST_COPY_EMPTY: u8 = 0x02;

/// `SHIP_REQUEST` (copier → shipper): "send from `from`; my copy's record `from - 1` has this
/// digest".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShipRequest {
    pub from: Seq,
    pub window_bytes: u32,
    /// The copy holds no record (it may still be reset to start anywhere).
    pub copy_empty: bool,
    /// The copy's last record and its digest, for divergence detection.
    pub check: Option<(Seq, [u8; 16])>,
}

impl ShipRequest {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(37);
        p.extend_from_slice(&self.from.0.to_be_bytes());
        p.extend_from_slice(&self.window_bytes.to_be_bytes());
        let mut flags = 0;
        if self.check.is_some() {
            flags |= REQUEST_HAS_CHECK;
        }
        if self.copy_empty {
            flags |= REQUEST_COPY_EMPTY;
        }
        p.push(flags);
        let (seq, digest) = self.check.unwrap_or((Seq(0), [0; 16]));
        p.extend_from_slice(&seq.0.to_be_bytes());
        p.extend_from_slice(&digest);
        p
    }

    pub(crate) fn decode(p: &[u8]) -> Result<ShipRequest, String> {
        let mut c = Cursor::new(p, "ship request");
        let from = Seq(c.u64()?);
        let window_bytes = c.u32()?;
        let flags = c.u8()?;
        let seq = Seq(c.u64()?);
        let digest = c.array::<16>()?;
        c.end()?;
        if from.0 == 0 {
            return Err("ship request: from seq 0".into());
        }
        if flags & !(REQUEST_HAS_CHECK | REQUEST_COPY_EMPTY) != 0 {
            return Err(format!("ship request: unknown flags {flags:#04x}"));
        }
        let check = (flags & REQUEST_HAS_CHECK != 0).then_some((seq, digest));
        if check.is_some_and(|(s, _)| s.0 + 1 != from.0) {
            return Err("ship request: check seq is not from - 1".into());
        }
        Ok(ShipRequest {
            from,
            window_bytes,
            copy_empty: flags & REQUEST_COPY_EMPTY != 0,
            check,
        })
    }
}

/// `SHIP_BATCH` payload for records with consecutive seqs (the caller guarantees it).
pub(crate) fn encode_batch(records: &[(Seq, Vec<u8>)]) -> Vec<u8> {
    let bytes: usize = records
        .iter()
        .map(|(_, r)| r.len() + BATCH_RECORD_OVERHEAD)
        .sum();
    let mut p = Vec::with_capacity(BATCH_HEADER_LEN + bytes);
    let first = records.first().map_or(0, |(s, _)| s.0);
    p.extend_from_slice(&first.to_be_bytes());
    p.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for (_, r) in records {
        p.extend_from_slice(&(r.len() as u32).to_be_bytes());
        p.extend_from_slice(r);
    }
    p
}

/// A decoded `SHIP_BATCH`: the first record's seq and the records, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    pub first: Seq,
    pub records: Vec<Vec<u8>>,
    /// Sum of record payload lengths (what the window counts).
    pub payload_bytes: u64,
}

pub(crate) fn decode_batch(p: &[u8]) -> Result<Batch, String> {
    let mut c = Cursor::new(p, "ship batch");
    let first = Seq(c.u64()?);
    let count = c.u32()?;
    if first.0 == 0 || count == 0 {
        return Err("ship batch: empty or starting at seq 0".into());
    }
    // Each record takes at least 4 bytes: a lying count cannot make us reserve much.
    let mut records = Vec::with_capacity((count as usize).min(p.len() / BATCH_RECORD_OVERHEAD));
    let mut payload_bytes = 0u64;
    for _ in 0..count {
        let len = c.u32()? as usize;
        let r = c.take(len)?;
        payload_bytes += len as u64;
        records.push(r.to_vec());
    }
    c.end()?;
    Ok(Batch {
        first,
        records,
        payload_bytes,
    })
}

/// `SHIP_ERROR` codes (shipper → copier).
pub(crate) mod ship_error {
    pub const DIVERGED: u8 = 1;
    pub const GAP: u8 = 2;
    pub const JOURNAL: u8 = 3;
}

/// `COPY_ERROR` codes (copier → shipper).
pub(crate) mod copy_error {
    pub const JOURNAL: u8 = 1;
    pub const GAP: u8 = 3;
}

/// `SHIP_ERROR` / `COPY_ERROR`: code u8, seq u64, seq2 u64, UTF-8 detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ErrorMsg {
    pub code: u8,
    pub seq: Seq,
    pub seq2: Seq,
    pub detail: String,
}

impl ErrorMsg {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut detail = self.detail.as_bytes();
        if detail.len() > ERROR_DETAIL_BYTES_MAX {
            let mut cut = ERROR_DETAIL_BYTES_MAX;
            while !self.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail = &detail[..cut];
        }
        let mut p = Vec::with_capacity(17 + detail.len());
        p.push(self.code);
        p.extend_from_slice(&self.seq.0.to_be_bytes());
        p.extend_from_slice(&self.seq2.0.to_be_bytes());
        p.extend_from_slice(detail);
        p
    }

    pub(crate) fn decode(p: &[u8]) -> Result<ErrorMsg, String> {
        let mut c = Cursor::new(p, "error message");
        let code = c.u8()?;
        let seq = Seq(c.u64()?);
        let seq2 = Seq(c.u64()?);
        let detail = c.rest();
        if detail.len() > ERROR_DETAIL_BYTES_MAX {
            return Err("error message: detail too long".into());
        }
        Ok(ErrorMsg {
            code,
            seq,
            seq2,
            detail: String::from_utf8_lossy(detail).into_owned(),
        })
    }
}

/// `SHIP_ACK`: the copy's durable seq (0: none).
pub(crate) fn decode_ack(p: &[u8]) -> Result<Seq, String> {
    let mut c = Cursor::new(p, "ship ack");
    let s = c.u64()?;
    c.end()?;
    Ok(Seq(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_roundtrips_and_has_documented_size() {
        let h = Hello {
            version_min: 1,
            version_max: 3,
            node: 1,
            nonce: [7; 32],
        };
        let p = h.encode();
        assert_eq!(p.len(), 45);
        assert_eq!(Hello::decode(&p), Ok(h));
        assert!(Hello::decode(&p[..44]).is_err());
        let mut bad = p.clone();
        bad[0] = b'X';
        assert_eq!(Hello::decode(&bad), Err("hello: bad magic".into()));
    }

    #[test]
    fn batch_roundtrips_and_rejects_lies() {
        let recs = vec![(Seq(5), b"abc".to_vec()), (Seq(6), Vec::new())];
        let p = encode_batch(&recs);
        assert_eq!(p.len(), 12 + 4 + 3 + 4);
        let b = decode_batch(&p).expect("valid batch");
        assert_eq!(b.first, Seq(5));
        assert_eq!(b.records, vec![b"abc".to_vec(), Vec::new()]);
        assert_eq!(b.payload_bytes, 3);
        // A count larger than the records present.
        let mut lie = p.clone();
        lie[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_batch(&lie).is_err());
        // Trailing garbage.
        let mut trailing = p;
        trailing.push(0);
        assert!(decode_batch(&trailing).is_err());
    }

    #[test]
    fn request_roundtrips_and_validates() {
        let r = ShipRequest {
            from: Seq(11),
            window_bytes: 4096,
            copy_empty: false,
            check: Some((Seq(10), [9; 16])),
        };
        let p = r.encode();
        assert_eq!(p.len(), 37);
        assert_eq!(ShipRequest::decode(&p), Ok(r));
        let mut bad = p.clone();
        bad[12] = 0x80;
        assert!(ShipRequest::decode(&bad).is_err());
        let mut wrong_check = p;
        wrong_check[13..21].copy_from_slice(&3u64.to_be_bytes());
        assert!(ShipRequest::decode(&wrong_check).is_err());
    }

    #[test]
    fn error_detail_is_cut_on_a_char_boundary() {
        let m = ErrorMsg {
            code: 1,
            seq: Seq(2),
            seq2: Seq(3),
            detail: "é".repeat(400),
        };
        let d = ErrorMsg::decode(&m.encode()).expect("valid");
        assert!(d.detail.len() <= ERROR_DETAIL_BYTES_MAX);
        assert!(d.detail.chars().all(|c| c == 'é'));
    }

    #[test]
    fn decoders_never_panic_on_short_input() {
        let long = [0xffu8; 64];
        for n in 0..long.len() {
            let p = &long[..n];
            let _ = Hello::decode(p);
            let _ = HelloReply::decode(p);
            let _ = ShipRequest::decode(p);
            let _ = decode_batch(p);
            let _ = ErrorMsg::decode(p);
            let _ = decode_ack(p);
        }
    }
}
