//! Identifier newtypes shared by every twinrx crate.
//!
//! STYLE.md §6: no bare `u64` crosses a crate boundary. These types are the one home for the
//! identifiers that more than one crate speaks about (the journal's `Seq`, the stream's
//! `Offset`, the HA core's `Epoch`, a node's `NodeId`, a record's content `Key`), so that the
//! pure cores (`dedup`, `ha`) and the I/O crates agree without depending on each other.
//! This crate has no dependencies and no I/O. Beside them, [`per_source`]: the per-source
//! slot table the receivers and the cluster link both bound their listeners with.

use std::fmt;

pub mod per_source;

/// A node of the pair. A pair has exactly two nodes, `A` and `B`; the witness is not a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u8);

impl NodeId {
    pub const A: NodeId = NodeId(0);
    pub const B: NodeId = NodeId(1);

    /// The other node of the pair.
    pub fn peer(self) -> NodeId {
        NodeId(1 - (self.0 & 1))
    }

    /// Parses the names used in configs and in the stream's `copies` field.
    pub fn from_name(name: &str) -> Option<NodeId> {
        match name {
            "a" | "A" => Some(NodeId::A),
            "b" | "B" => Some(NodeId::B),
            _ => None,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("a"),
            1 => f.write_str("b"),
            n => write!(f, "node{n}"),
        }
    }
}

/// Position of a record in one node's journal: starts at 1, no gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    pub const FIRST: Seq = Seq(1);
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Position of an entry in the merged stream: 0, 1, 2, … without gaps or reuse, forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// HA epoch: monotonic, persisted before use; anything from a lower epoch is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Wall-clock receive time: nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixNanos(pub i64);

impl UnixNanos {
    pub fn saturating_add_ms(self, ms: u64) -> UnixNanos {
        UnixNanos(self.0.saturating_add((ms as i64).saturating_mul(1_000_000)))
    }
}

/// Monotonic time given to the sans-IO cores, in milliseconds from an arbitrary origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn saturating_add(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
    pub fn saturating_sub(self, other: Millis) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

/// Content key of a received message (SPEC "De-duplication"): a 128-bit hash of the fields
/// that identify one device event, computed once at receive time. Two copies of one event
/// received by the two nodes have the same key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key(pub [u8; 16]);

impl Key {
    /// Lowercase hex, 32 digits (what the stream's `key` field shows).
    pub fn to_hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        out
    }

    /// Parses what [`Key::to_hex`] wrote (32 hex digits, either case); `None` otherwise.
    pub fn from_hex(s: &str) -> Option<Key> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let digit = |c: u8| {
            char::from(c)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
        }
        Some(Key(out))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // Only ASCII hex digits were written above.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_of_a_is_b() {
        assert_eq!(NodeId::A.peer(), NodeId::B);
        assert_eq!(NodeId::B.peer(), NodeId::A);
        assert_eq!(NodeId::from_name("b"), Some(NodeId::B));
        assert_eq!(NodeId::A.to_string(), "a");
    }

    #[test]
    fn key_displays_as_hex() {
        let mut k = [0u8; 16];
        k[0] = 0xab;
        k[15] = 0x01;
        assert_eq!(Key(k).to_string(), "ab000000000000000000000000000001");
        assert_eq!(
            Key::from_hex("AB000000000000000000000000000001"),
            Some(Key(k))
        );
        assert_eq!(Key::from_hex("ab00"), None);
        assert_eq!(Key::from_hex("zz000000000000000000000000000001"), None);
    }
}
