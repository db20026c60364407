//! Configuration of a link, a shipper and a copier. Plain values with documented defaults;
//! [`LinkConfig::validate`] refuses unusable ones naming the field.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use twinrx_types::NodeId;

use crate::frame::{FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MIN};
use crate::stats::LinkStats;
use crate::Error;

/// The pre-shared key of the pair: random bytes, the same on both nodes. At least 16
/// bytes (32 recommended, e.g. `head -c 32 /dev/urandom | xxd -p -c 64`). It must be
/// random, not a password: a node that connects to an impostor listener reveals one MAC
/// computed with it, which a guessable key would not survive.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Vec<u8>);

impl Psk {
    /// Shortest key accepted, in bytes.
    pub const BYTES_MIN: usize = 16;

    /// A key from raw bytes; refused if shorter than [`Psk::BYTES_MIN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Psk, Error> {
        let bytes = bytes.into();
        if bytes.len() < Psk::BYTES_MIN {
            return Err(Error::Config(format!(
                "psk: {} bytes, need at least {}",
                bytes.len(),
                Psk::BYTES_MIN
            )));
        }
        Ok(Psk(bytes))
    }

    /// A key from hex text (the config's form), whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Psk, Error> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if digits.len() % 2 != 0 {
            return Err(Error::Config("psk: odd number of hex digits".into()));
        }
        let mut out = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks_exact(2) {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(Error::Config("psk: not hex".into())),
            }
        }
        Psk::new(out)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk(<{} bytes, redacted>)", self.0.len())
    }
}

/// One configured link (one address pair; a node may have several, e.g. one per NIC).
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This node. The peer must be `node.peer()`.
    pub node: NodeId,
    /// The pair's pre-shared key.
    pub psk: Psk,
    /// Whole handshake (connect included) must finish within this. Default 3 s.
    pub handshake_timeout: Duration,
    /// A listener runs at most this many handshakes at once; more connections are closed at
    /// once and counted (`TooManyPending`). Default 8.
    pub pending_handshakes_max: usize,
    /// Longest frame accepted after the handshake (length field value). Default
    /// [`FRAME_BYTES_MAX_DEFAULT`], enough for any journal record.
    pub frame_bytes_max: u32,
    /// A keepalive frame is sent when nothing else was sent for this long. Default 1 s.
    pub keepalive_interval: Duration,
    /// The session closes when nothing was received for this long. Default 10 s.
    pub idle_timeout: Duration,
    /// Control messages received but not yet taken by [`crate::Session::recv`]; beyond it
    /// new ones are dropped and counted (`control_dropped`). Default 1024.
    pub control_queue_max: usize,
    /// Counters of this link, shared by all its sessions (reconnects included).
    pub stats: Arc<LinkStats>,
}

impl LinkConfig {
    /// Defaults for `node` with `psk` and fresh stats.
    pub fn new(node: NodeId, psk: Psk) -> LinkConfig {
        LinkConfig {
            node,
            psk,
            handshake_timeout: Duration::from_secs(3),
            pending_handshakes_max: 8,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            control_queue_max: 1024,
            stats: Arc::new(LinkStats::default()),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Config(what));
        if self.node.0 > 1 {
            return bad(format!("node = {}: must be a or b", self.node));
        }
        if self.frame_bytes_max < FRAME_BYTES_MIN {
            return bad(format!(
                "frame_bytes_max = {}: must be at least {FRAME_BYTES_MIN}",
                self.frame_bytes_max
            ));
        }
        if self.pending_handshakes_max == 0 {
            return bad("pending_handshakes_max = 0: must be at least 1".into());
        }
        if self.control_queue_max == 0 {
            return bad("control_queue_max = 0: must be at least 1".into());
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.idle_timeout {
            return bad(format!(
                "keepalive_interval = {:?}: must be above zero and below idle_timeout ({:?})",
                self.keepalive_interval, self.idle_timeout
            ));
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout = 0: must be above zero".into());
        }
        Ok(())
    }
}

/// How a [`crate::JournalShipper`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShipConfig {
    /// Record payload bytes per batch frame (a single larger record goes alone). Default
    /// 256 KiB: small enough that a control message never waits long behind one.
    pub batch_bytes_max: usize,
    /// Records per batch frame. Default 4096.
    pub batch_records_max: usize,
    /// Upper bound on the window the copier asks for (unacknowledged payload bytes).
    /// Default 8 MiB.
    pub window_bytes_max: u64,
}

impl Default for ShipConfig {
    fn default() -> ShipConfig {
        ShipConfig {
            batch_bytes_max: 256 << 10,
            batch_records_max: 4096,
            window_bytes_max: 8 << 20,
        }
    }
}

/// How a [`crate::JournalCopier`] receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyConfig {
    /// Unacknowledged payload bytes the shipper may have in flight towards this copier
    /// (receiver-driven flow control). Default 4 MiB.
    pub window_bytes: u32,
    /// How often the copier calls `sync_if_due` on its journal (policy `interval` only).
    /// Default 5 ms.
    pub sync_tick: Duration,
    /// Test and lab aid: wait this long before each append (a slow disk). Default none.
    pub append_delay: Option<Duration>,
    /// Apply the copy journal's retention policy this often while copying. Default 10 s.
    pub retention_every: Option<Duration>,
}

impl Default for CopyConfig {
    fn default() -> CopyConfig {
        CopyConfig {
            window_bytes: 4 << 20,
            sync_tick: Duration::from_millis(5),
            append_delay: None,
            retention_every: Some(Duration::from_secs(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_parses_hex_and_refuses_short_or_bad_keys() {
        let k = Psk::from_hex("00112233 44556677 8899aabb ccddeeff").expect("16 bytes");
        assert_eq!(k.bytes()[0], 0x00);
        assert_eq!(k.bytes()[15], 0xff);
        assert!(format!("{k:?}").contains("redacted"));
        assert!(!format!("{k:?}").contains("ff"));
        assert!(Psk::from_hex("0011").is_err());
        assert!(Psk::from_hex("zz112233445566778899aabbccddeeff").is_err());
        assert!(Psk::from_hex("0").is_err());
        assert!(Psk::new(vec![0u8; 15]).is_err());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let psk = Psk::new(vec![1u8; 32]).expect("long enough");
        let ok = LinkConfig::new(NodeId::A, psk);
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.keepalive_interval = c.idle_timeout;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("keepalive_interval"));
        let mut c = ok.clone();
        c.frame_bytes_max = 100;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("frame_bytes_max"));
        let mut c = ok;
        c.node = NodeId(2);
        assert!(c.validate().unwrap_err().to_string().contains("node"));
    }
}
