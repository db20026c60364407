//! A minimal BER tag-length-value walker, for the few places where the *byte offsets* of a
//! message matter and a decoded value cannot give them.
//!
//! This is not a second BER library: every value is decoded by `rasn`/`rasn-snmp`. The walker
//! only reads headers, to
//! - peek at the `version` of a message before choosing which `rasn-snmp` type to decode,
//! - find `msgAuthenticationParameters` inside the exact datagram bytes (RFC 3414 §6.3.2 and
//!   §7.3.2: the HMAC covers the whole message *as received* with that field zeroed, so the
//!   bytes cannot be re-encoded; senders such as Net-SNMP use long-form lengths that `rasn`
//!   would encode differently),
//! - trim a decrypted scoped PDU to its outer TLV (DES-CBC leaves padding after it).
//!
//! SNMP uses only low tag numbers (< 31) and definite lengths (RFC 3417 §8), so anything else
//! is rejected as malformed.

use std::ops::Range;

/// One TLV found at some offset of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tlv {
    /// The identifier octet (class, constructed bit, tag number).
    pub tag: u8,
    /// Absolute range of the contents within the buffer that was walked.
    pub content: Range<usize>,
}

impl Tlv {
    /// Offset just past this TLV.
    pub fn end(&self) -> usize {
        self.content.end
    }
}

/// Universal SEQUENCE (constructed).
pub(crate) const SEQUENCE: u8 = 0x30;
/// Universal INTEGER.
pub(crate) const INTEGER: u8 = 0x02;
/// Universal OCTET STRING.
pub(crate) const OCTET_STRING: u8 = 0x04;

/// The identifier octet, the offset of the contents and their stated length.
fn header(buf: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let tag = *buf.get(at)?;
    if tag & 0x1f == 0x1f {
        return None; // high tag number form: never used by SNMP
    }
    let first = *buf.get(at.checked_add(1)?)?;
    if first < 0x80 {
        return Some((tag, at + 2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None; // indefinite form (0x80) is forbidden in SNMP; > 4 octets is absurd
    }
    let bytes = buf.get(at + 2..at + 2 + n)?;
    let len = bytes
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    Some((tag, at + 2 + n, len))
}

/// Reads the TLV starting at `at` within `buf`; `None` if it is malformed or runs past the end.
pub(crate) fn read(buf: &[u8], at: usize) -> Option<Tlv> {
    let (tag, start, len) = header(buf, at)?;
    let end = start.checked_add(len).filter(|&e| e <= buf.len())?;
    Some(Tlv {
        tag,
        content: start..end,
    })
}

/// Like [`read`], with the contents clipped to the buffer: the header of a truncated message
/// still tells its version and community.
fn read_clipped(buf: &[u8], at: usize) -> Option<Tlv> {
    let (tag, start, len) = header(buf, at)?;
    Some(Tlv {
        tag,
        content: start..start.saturating_add(len).min(buf.len()),
    })
}

/// Reads the TLV at `at` and checks its tag.
pub(crate) fn expect(buf: &[u8], at: usize, tag: u8) -> Option<Tlv> {
    read(buf, at).filter(|t| t.tag == tag)
}

/// The `version` INTEGER of an SNMP message (`SEQUENCE { version INTEGER, ... }`), if it is
/// small enough to matter (SNMP versions are 0, 1 and 3).
pub(crate) fn message_version(buf: &[u8]) -> Option<i64> {
    let msg = read_clipped(buf, 0).filter(|t| t.tag == SEQUENCE)?;
    let v = expect(buf, msg.content.start, INTEGER)?;
    let bytes = &buf[v.content.clone()];
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    let mut value: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for &b in bytes {
        value = (value << 8) | i64::from(b);
    }
    Some(value)
}

/// The community OCTET STRING of a v1/v2c message (`SEQUENCE { version, community, ... }`),
/// found without decoding the PDU (so a garbage PDU from a stranger can still be refused by the
/// community allow-list).
pub(crate) fn community(buf: &[u8]) -> Option<&[u8]> {
    let msg = read_clipped(buf, 0).filter(|t| t.tag == SEQUENCE)?;
    let v = expect(buf, msg.content.start, INTEGER)?;
    let c = expect(buf, v.end(), OCTET_STRING)?;
    Some(&buf[c.content])
}

/// Absolute range of the contents of `msgAuthenticationParameters` in a v3 message:
///
/// ```text
/// SEQUENCE {                       -- SNMPv3Message
///   INTEGER                        -- msgVersion
///   SEQUENCE { ... }               -- msgGlobalData
///   OCTET STRING {                 -- msgSecurityParameters, containing
///     SEQUENCE {                   -- UsmSecurityParameters
///       OCTET STRING, INTEGER, INTEGER, OCTET STRING,  -- engine id, boots, time, user
///       OCTET STRING               -- msgAuthenticationParameters  <- this one
///       OCTET STRING } }           -- msgPrivacyParameters
///   ... }                          -- msgData
/// ```
pub(crate) fn v3_auth_params(buf: &[u8]) -> Option<Range<usize>> {
    let msg = expect(buf, 0, SEQUENCE)?;
    let version = expect(buf, msg.content.start, INTEGER)?;
    let global = expect(buf, version.end(), SEQUENCE)?;
    let sec = expect(buf, global.end(), OCTET_STRING)?;
    let usm = expect(buf, sec.content.start, SEQUENCE)?;
    let engine = expect(buf, usm.content.start, OCTET_STRING)?;
    let boots = expect(buf, engine.end(), INTEGER)?;
    let time = expect(buf, boots.end(), INTEGER)?;
    let user = expect(buf, time.end(), OCTET_STRING)?;
    let auth = expect(buf, user.end(), OCTET_STRING)?;
    if auth.end() > usm.end() || usm.end() > sec.end() || sec.end() > msg.end() {
        return None;
    }
    Some(auth.content)
}

/// The length of the outermost TLV at the start of `buf` (header included), if well formed.
pub(crate) fn outer_len(buf: &[u8]) -> Option<usize> {
    read(buf, 0).map(|t| t.end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        assert_eq!(
            read(&[0x04, 0x02, b'a', b'b'], 0),
            Some(Tlv {
                tag: 4,
                content: 2..4
            })
        );
        assert_eq!(
            read(&[0x04, 0x82, 0x00, 0x01, b'a'], 0),
            Some(Tlv {
                tag: 4,
                content: 4..5
            })
        );
    }

    #[test]
    fn malformed_headers_are_none() {
        assert_eq!(read(&[], 0), None);
        assert_eq!(read(&[0x04], 0), None);
        assert_eq!(read(&[0x04, 0x03, 1, 2], 0), None, "runs past the end");
        assert_eq!(read(&[0x30, 0x80, 0, 0], 0), None, "indefinite length");
        assert_eq!(read(&[0x1f, 0x01, 0], 0), None, "high tag number");
        assert_eq!(read(&[0x04, 0x85, 1, 1, 1, 1, 1], 0), None);
        assert_eq!(read(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff], 0), None);
    }

    #[test]
    fn version_and_community() {
        let msg = [
            0x30, 0x09, 0x02, 0x01, 0x01, 0x04, 0x04, b'p', b'u', b'b', b'l',
        ];
        assert_eq!(message_version(&msg), Some(1));
        assert_eq!(community(&msg), Some(&b"publ"[..]));
        assert_eq!(message_version(&[0x30, 0x03, 0x02, 0x01, 0xff]), Some(-1));
    }
}
