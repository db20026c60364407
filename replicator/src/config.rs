//! Configuration of a link, a shipper and a copier. Plain values with documented defaults;
//! [`LinkConfig::validate`] refuses unusable ones naming the field.

use std::sync::Arc;
use std::time::Duration;

use crate::frame::{FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MIN};
use crate::stats::LinkStats;
use crate::tls::{Credentials, Party};
use crate::Error;

/// One configured link (one address pair; a node may have several, e.g. one per NIC), or
/// the witness's listener.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This end.
    pub me: Party,
    /// Who may be on the other end: a connecting side expects exactly one (the first); a
    /// listening side accepts any of them, and refuses every other party (`wrong_identity`).
    pub peers: Vec<Party>,
    /// This end's certificate, key and the pair's CA.
    pub credentials: Arc<Credentials>,
    /// Whole handshake (connect included) must finish within this. Default 3 s.
    pub handshake_timeout: Duration,
    /// A listener runs at most this many handshakes at once; more connections are closed at
    /// once and counted (`TooManyPending`). Default 64.
    pub pending_handshakes_max: usize,
    /// ... and at most this many from one source address, so that one host holding idle
    /// connections cannot keep the peer out (the peer dials from its own address). Default 2.
    pub pending_handshakes_per_source_max: usize,
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
    /// Each side sends a clock sample this often (PROTOCOL.md "Clock samples"). Default 2 s.
    pub clock_interval: Duration,
    /// Test aid: added to this side's wall clock in its clock samples (a skewed clock without
    /// touching the host's). 0 in production.
    pub clock_skew_us: i64,
    /// Counters of this link, shared by all its sessions (reconnects included).
    pub stats: Arc<LinkStats>,
}

impl LinkConfig {
    /// Defaults for the link of `me` with `peers`, and fresh stats.
    pub fn new(me: Party, peers: &[Party], credentials: Arc<Credentials>) -> LinkConfig {
        LinkConfig {
            me,
            peers: peers.to_vec(),
            credentials,
            handshake_timeout: Duration::from_secs(3),
            pending_handshakes_max: 64,
            pending_handshakes_per_source_max: 2,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            control_queue_max: 1024,
            clock_interval: Duration::from_secs(2),
            clock_skew_us: 0,
            stats: Arc::new(LinkStats::default()),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Config(what));
        if self.peers.is_empty() || self.peers.contains(&self.me) {
            return bad(format!(
                "peers = {:?}: must name at least one party other than {}",
                self.peers, self.me
            ));
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
        if self.pending_handshakes_per_source_max == 0 {
            return bad("pending_handshakes_per_source_max = 0: must be at least 1".into());
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
        if self.clock_interval.is_zero() {
            return bad("clock_interval = 0: must be above zero".into());
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
    use twinrx_types::NodeId;

    #[test]
    fn validate_names_the_bad_field() {
        let ok = LinkConfig::new(
            Party::Node(NodeId::A),
            &[Party::Node(NodeId::B)],
            crate::tls::test_credentials(Party::Node(NodeId::A)),
        );
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
        c.peers = vec![c.me];
        assert!(c.validate().unwrap_err().to_string().contains("peers"));
    }
}
