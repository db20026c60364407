//! The node-journal record: what a receiver hands to the journal for each accepted message.
//!
//! Layout (version 1, little-endian, explicit widths), documented byte by byte in
//! `journal/FORMAT.md` ("payload of a node-journal record"):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | record version = 1 |
//! | 1 | protocol: 1 syslog, 2 snmp |
//! | 1 | transport: 1 udp, 2 tcp, 3 tls |
//! | 1 | address family of the source: 4 or 6 |
//! | 8 | receive time, i64 ns since the Unix epoch |
//! | 16 | content key |
//! | 4 or 16 | source IP |
//! | 2 | source port |
//! | 4 | raw length R (u32) |
//! | R | raw message bytes, as received (framing removed) |
//! | 4 | decoded length D (u32) |
//! | D | protocol-specific decoded fields, JSON (SNMP: the parsed PDU, decrypted for v3; syslog: empty, parsed when the stream entry is built) |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use twinrx_types::{Key, UnixNanos};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Syslog,
    Snmp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Syslog => "syslog",
            Protocol::Snmp => "snmp",
        }
    }
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One accepted message, as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub protocol: Protocol,
    pub transport: Transport,
    pub received_at: UnixNanos,
    pub key: Key,
    pub source: SocketAddr,
    pub raw: Vec<u8>,
    pub decoded: Vec<u8>,
}

/// A journal payload that is not a valid record (it passed the journal's CRC, so this is a
/// bug or a version mismatch, never line noise).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is truncated at byte {at} (needs {needed} more)")]
    Truncated { at: usize, needed: usize },
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown {field} code {code}")]
    Code { field: &'static str, code: u8 },
}

const VERSION: u8 = 1;

impl Record {
    pub fn encoded_len(&self) -> usize {
        let ip = if self.source.is_ipv4() { 4 } else { 16 };
        4 + 8 + 16 + ip + 2 + 4 + self.raw.len() + 4 + self.decoded.len()
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(VERSION);
        out.push(match self.protocol {
            Protocol::Syslog => 1,
            Protocol::Snmp => 2,
        });
        out.push(match self.transport {
            Transport::Udp => 1,
            Transport::Tcp => 2,
            Transport::Tls => 3,
        });
        match self.source.ip() {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&self.received_at.0.to_le_bytes());
                out.extend_from_slice(&self.key.0);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&self.received_at.0.to_le_bytes());
                out.extend_from_slice(&self.key.0);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&self.source.port().to_le_bytes());
        put_bytes(out, &self.raw);
        put_bytes(out, &self.decoded);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let protocol = match r.u8()? {
            1 => Protocol::Syslog,
            2 => Protocol::Snmp,
            code => {
                return Err(RecordError::Code {
                    field: "protocol",
                    code,
                })
            }
        };
        let transport = match r.u8()? {
            1 => Transport::Udp,
            2 => Transport::Tcp,
            3 => Transport::Tls,
            code => {
                return Err(RecordError::Code {
                    field: "transport",
                    code,
                })
            }
        };
        let family = r.u8()?;
        let received_at = UnixNanos(i64::from_le_bytes(r.array::<8>()?));
        let key = Key(r.array::<16>()?);
        let ip = match family {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            code => {
                return Err(RecordError::Code {
                    field: "address family",
                    code,
                })
            }
        };
        let port = u16::from_le_bytes(r.array::<2>()?);
        let raw = r.bytes()?.to_vec();
        let decoded = r.bytes()?.to_vec();
        Ok(Record {
            protocol,
            transport,
            received_at,
            key,
            source: SocketAddr::new(ip, port),
            raw,
            decoded,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Messages are capped at the receive limit (64 KiB by default, 16 MiB at most by config
    // validation), so the length always fits in u32.
    let len = u32::try_from(bytes.len()).expect("record fields are capped far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(RecordError::Truncated {
                at: self.at,
                needed: n - (self.bytes.len() - self.at),
            }),
        }
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = u32::from_le_bytes(self.array::<4>()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(source: SocketAddr) -> Record {
        Record {
            protocol: Protocol::Snmp,
            transport: Transport::Udp,
            received_at: UnixNanos(1_700_000_000_123_456_789),
            key: Key([7; 16]),
            source,
            raw: b"\x30\x03abc".to_vec(),
            decoded: br#"{"version":"2c"}"#.to_vec(),
        }
    }

    #[test]
    fn round_trips_v4_and_v6() {
        for src in ["192.0.2.9:40000", "[2001:db8::1]:162"] {
            let rec = sample(src.parse().expect("literal"));
            let bytes = rec.encode();
            assert_eq!(bytes.len(), rec.encoded_len());
            assert_eq!(Record::decode(&bytes), Ok(rec));
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample("192.0.2.9:1".parse().expect("literal")).encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = sample("192.0.2.9:1".parse().expect("literal")).encode();
        bytes[0] = 9;
        assert_eq!(Record::decode(&bytes), Err(RecordError::Version(9)));
    }
}
