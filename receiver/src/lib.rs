//! twinrx receivers: everything between a socket and a journal record.
//!
//! Layout:
//! - [`key`]: content keys (SPEC "De-duplication"), computed once at receive time.
//! - [`record`]: the node-journal record a receiver produces for each accepted message.
//! - [`syslog`]: RFC 6587 framing and RFC 3164/5424 parsing, as pure functions.
//! - [`snmp`]: SNMP v1/v2c/v3 trap and inform handling (USM), sans-IO.

pub mod key;
pub mod limit;
pub mod listen;
pub mod record;
pub mod snmp;
pub mod syslog;

/// Lowercase hex without separators (stream fields, engine IDs, raw bytes).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}
