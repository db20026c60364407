//! Content keys (SPEC "De-duplication: what one event is").
//!
//! A key is computed once, at receive time, from the fields that identify one device event,
//! never from arrival order, request-ids, msgIDs, engine boots/time or salts. Both nodes
//! compute the same key for the two copies of one event, so the merger can match them.
//!
//! The hash is xxh3-128 over a domain tag and length-prefixed parts: the length prefix keeps
//! `("ab", "c")` and `("a", "bc")` apart, the tag keeps syslog and SNMP keys apart.

use std::net::IpAddr;
use twinrx_types::Key;
use xxhash_rust::xxh3::Xxh3;

/// Incremental builder of a content key. Parts are length-prefixed.
pub struct KeyBuilder {
    hasher: Xxh3,
}

impl KeyBuilder {
    /// Starts a key in the given domain (e.g. `"syslog"`, `"snmp-v1"`).
    pub fn new(domain: &str) -> KeyBuilder {
        let mut b = KeyBuilder {
            hasher: Xxh3::new(),
        };
        b.part(domain.as_bytes());
        b
    }

    /// Adds one part. Parts are length-prefixed (u64 LE) so boundaries are unambiguous.
    pub fn part(&mut self, bytes: &[u8]) -> &mut KeyBuilder {
        self.hasher.update(&(bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    /// Adds the source IP (the port is not part of a key: a device may send to the two
    /// nodes from different ephemeral ports). IPv4-mapped IPv6 addresses count as IPv4.
    pub fn source(&mut self, ip: IpAddr) -> &mut KeyBuilder {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => self.part(&v4.octets()),
            IpAddr::V6(v6) => self.part(&v6.octets()),
        }
    }

    pub fn finish(&self) -> Key {
        Key(self.hasher.digest128().to_le_bytes())
    }
}

/// `::ffff:a.b.c.d` is the same device as `a.b.c.d` (a dual-stack socket reports the former).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// SPEC: syslog key = source IP + the message bytes without transport framing (octet count,
/// trailing LF/CR/NUL). The caller passes the frame payload (octet count already removed).
pub fn syslog_key(source: IpAddr, message: &[u8]) -> Key {
    KeyBuilder::new("syslog")
        .source(source)
        .part(trim_trailer(message))
        .finish()
}

/// Strips trailing LF, CR and NUL bytes (transport framing, not content).
pub fn trim_trailer(mut message: &[u8]) -> &[u8] {
    while let Some((&last, rest)) = message.split_last() {
        if last == b'\n' || last == b'\r' || last == 0 {
            message = rest;
        } else {
            break;
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn framing_is_not_content() {
        let a = syslog_key(SRC, b"<13>hello");
        assert_eq!(a, syslog_key(SRC, b"<13>hello\n"));
        assert_eq!(a, syslog_key(SRC, b"<13>hello\r\n\0"));
        assert_ne!(a, syslog_key(SRC, b"<13>hello "));
    }

    #[test]
    fn source_ip_is_content_but_port_and_mapping_are_not() {
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_ne!(syslog_key(SRC, b"x"), syslog_key(other, b"x"));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(syslog_key(SRC, b"x"), syslog_key(mapped, b"x"));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_ne!(syslog_key(v6, b"x"), syslog_key(SRC, b"x"));
    }

    #[test]
    fn parts_are_length_prefixed_and_domains_separate() {
        let ab_c = KeyBuilder::new("t").part(b"ab").part(b"c").finish();
        let a_bc = KeyBuilder::new("t").part(b"a").part(b"bc").finish();
        assert_ne!(ab_c, a_bc);
        let other = KeyBuilder::new("u").part(b"ab").part(b"c").finish();
        assert_ne!(ab_c, other);
    }
}
