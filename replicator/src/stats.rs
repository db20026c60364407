//! Counters of one configured link, shared by its listener or connector and every session
//! over it (reconnects included). Lock-free atomics, read with [`LinkStats::snapshot`]; the
//! node exports them as `twinrx_link_*` metrics.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a handshake (or, `FrameMac`, a later frame) failed authentication. The counter label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthFailure {
    /// Not our protocol: bad magic, wrong frame type, bad length (garbage, port scanners).
    Malformed,
    /// No protocol version in common.
    Version,
    /// The TLS handshake failed on the peer's certificate: none, not from the pair's CA,
    /// expired, or not for the party expected.
    BadCertificate,
    /// A valid certificate of a party that may not speak here (the witness's on the
    /// replication link, a node's where the witness is expected).
    WrongIdentity,
    /// The peer refused us (our certificate, our identity) or closed during the handshake.
    RejectedByPeer,
    /// The peer's `HELLO` names another party than its certificate, or than expected.
    WrongNode,
    /// The handshake did not finish in time.
    Timeout,
    /// Too many handshakes were already running; the connection was closed unread.
    TooManyPending,
    /// After the handshake, a frame failed its MAC (tampering, injection, replay).
    FrameMac,
}

impl AuthFailure {
    /// Every reason, in counter order.
    pub const ALL: [AuthFailure; 9] = [
        AuthFailure::Malformed,
        AuthFailure::Version,
        AuthFailure::BadCertificate,
        AuthFailure::WrongIdentity,
        AuthFailure::RejectedByPeer,
        AuthFailure::WrongNode,
        AuthFailure::Timeout,
        AuthFailure::TooManyPending,
        AuthFailure::FrameMac,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::Version => "version",
            AuthFailure::BadCertificate => "bad_certificate",
            AuthFailure::WrongIdentity => "wrong_identity",
            AuthFailure::RejectedByPeer => "rejected_by_peer",
            AuthFailure::WrongNode => "wrong_node",
            AuthFailure::Timeout => "timeout",
            AuthFailure::TooManyPending => "too_many_pending",
            AuthFailure::FrameMac => "frame_mac",
        }
    }

    fn index(self) -> usize {
        AuthFailure::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters and gauges of one link. All fields are monotonic counters unless documented as
/// gauges.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) control_sent: AtomicU64,
    pub(crate) control_received: AtomicU64,
    pub(crate) control_dropped: AtomicU64,
    pub(crate) records_shipped: AtomicU64,
    pub(crate) record_bytes_shipped: AtomicU64,
    pub(crate) records_copied: AtomicU64,
    pub(crate) record_bytes_copied: AtomicU64,
    pub(crate) ship_source_durable_seq: AtomicU64,
    pub(crate) ship_acked_seq: AtomicU64,
    pub(crate) ship_sent_seq: AtomicU64,
    pub(crate) in_flight_bytes: AtomicU64,
    pub(crate) in_flight_bytes_max: AtomicU64,
    pub(crate) window_bytes: AtomicU64,
    pub(crate) copy_durable_seq: AtomicU64,
    pub(crate) sessions_established: AtomicU64,
    pub(crate) divergences: AtomicU64,
    pub(crate) gaps: AtomicU64,
    /// Appends to the local copy that failed (full disk, I/O error), each retried in the
    /// session.
    pub(crate) copy_store_errors: AtomicU64,
    /// Gauge, 1 while the local copy cannot store (until an append succeeds again).
    pub(crate) copy_store_failing: AtomicU64,
    /// Times the peer reported that its copy of this journal cannot store.
    pub(crate) peer_copy_store_errors: AtomicU64,
    auth_failures: [AtomicU64; 9],
    /// The peer's clock minus ours (µs) and the round trip of the sample it comes from
    /// (`crate::clock`); `clock_samples` counts the measurements (0: none yet).
    pub(crate) clock_offset_us: std::sync::atomic::AtomicI64,
    pub(crate) clock_rtt_us: std::sync::atomic::AtomicI64,
    pub(crate) clock_samples: AtomicU64,
}

/// A point-in-time copy of [`LinkStats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatsSnapshot {
    /// Bytes written to / read from the socket, frame headers and tags included.
    pub bytes_sent: u64,
    /// See `bytes_sent`.
    pub bytes_received: u64,
    /// Authenticated frames sent.
    pub frames_sent: u64,
    /// Authenticated frames received and verified.
    pub frames_received: u64,
    /// Control (application) messages sent.
    pub control_sent: u64,
    /// Control messages received.
    pub control_received: u64,
    /// Control messages dropped because the application did not take them in time.
    pub control_dropped: u64,
    /// Records of the local journal sent to the peer.
    pub records_shipped: u64,
    /// Their payload bytes.
    pub record_bytes_shipped: u64,
    /// Records of the peer's journal appended to the local copy.
    pub records_copied: u64,
    /// Their payload bytes.
    pub record_bytes_copied: u64,
    /// Gauge: durable seq of the shipped journal, as last seen by the shipper.
    pub ship_source_durable_seq: u64,
    /// Gauge: highest seq the peer acknowledged as durable in its copy.
    pub ship_acked_seq: u64,
    /// Gauge: highest seq sent.
    pub ship_sent_seq: u64,
    /// Gauge: replication lag in records, `ship_source_durable_seq - ship_acked_seq`.
    pub lag_records: u64,
    /// Gauge: payload bytes sent and not yet acknowledged.
    pub in_flight_bytes: u64,
    /// Highest `in_flight_bytes` ever seen.
    pub in_flight_bytes_max: u64,
    /// Gauge: the window in force (asked by the copier, capped by the shipper).
    pub window_bytes: u64,
    /// Gauge: durable seq of the local copy of the peer's journal.
    pub copy_durable_seq: u64,
    /// Sessions that completed the handshake.
    pub sessions_established: u64,
    /// Sessions after the first (`sessions_established - 1`, at least 0).
    pub reconnects: u64,
    /// Divergences detected between a journal and its copy.
    pub divergences: u64,
    /// Gaps detected (the peer no longer holds what the copy needs).
    pub gaps: u64,
    /// Appends to the local copy that failed (full disk, I/O error); each is retried in the
    /// same session, which keeps carrying the heartbeats.
    pub copy_store_errors: u64,
    /// The local copy cannot store now (its last append failed).
    pub copy_store_failing: bool,
    /// Times the peer reported that its copy of this journal cannot store.
    pub peer_copy_store_errors: u64,
    /// Authentication failures per reason, in [`AuthFailure::ALL`] order.
    pub auth_failures: [(AuthFailure, u64); 9],
    /// The peer's clock minus this node's, µs, from the best of the last clock samples
    /// (`None` before the first): PROTOCOL.md "Clock samples".
    pub clock_offset_us: Option<i64>,
    /// The round trip of that sample, µs (its error is at most half of it).
    pub clock_rtt_us: Option<i64>,
}

impl LinkStatsSnapshot {
    /// Failures counted under `reason`.
    pub fn auth_failures(&self, reason: AuthFailure) -> u64 {
        self.auth_failures
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// All authentication failures.
    pub fn auth_failures_total(&self) -> u64 {
        self.auth_failures.iter().map(|(_, n)| n).sum()
    }
}

impl LinkStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> LinkStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sessions = l(&self.sessions_established);
        let durable = l(&self.ship_source_durable_seq);
        let acked = l(&self.ship_acked_seq);
        let mut auth_failures = [(AuthFailure::Malformed, 0); 9];
        for (slot, reason) in auth_failures.iter_mut().zip(AuthFailure::ALL) {
            *slot = (reason, l(&self.auth_failures[reason.index()]));
        }
        LinkStatsSnapshot {
            bytes_sent: l(&self.bytes_sent),
            bytes_received: l(&self.bytes_received),
            frames_sent: l(&self.frames_sent),
            frames_received: l(&self.frames_received),
            control_sent: l(&self.control_sent),
            control_received: l(&self.control_received),
            control_dropped: l(&self.control_dropped),
            records_shipped: l(&self.records_shipped),
            record_bytes_shipped: l(&self.record_bytes_shipped),
            records_copied: l(&self.records_copied),
            record_bytes_copied: l(&self.record_bytes_copied),
            ship_source_durable_seq: durable,
            ship_acked_seq: acked,
            ship_sent_seq: l(&self.ship_sent_seq),
            lag_records: durable.saturating_sub(acked),
            in_flight_bytes: l(&self.in_flight_bytes),
            in_flight_bytes_max: l(&self.in_flight_bytes_max),
            window_bytes: l(&self.window_bytes),
            copy_durable_seq: l(&self.copy_durable_seq),
            sessions_established: sessions,
            reconnects: sessions.saturating_sub(1),
            divergences: l(&self.divergences),
            gaps: l(&self.gaps),
            copy_store_errors: l(&self.copy_store_errors),
            copy_store_failing: l(&self.copy_store_failing) != 0,
            peer_copy_store_errors: l(&self.peer_copy_store_errors),
            auth_failures,
            clock_offset_us: (l(&self.clock_samples) > 0)
                .then(|| self.clock_offset_us.load(Ordering::Relaxed)),
            clock_rtt_us: (l(&self.clock_samples) > 0)
                .then(|| self.clock_rtt_us.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn clock(&self, s: crate::clock::Sample) {
        self.clock_offset_us.store(s.offset_us, Ordering::Relaxed);
        self.clock_rtt_us.store(s.rtt_us, Ordering::Relaxed);
        self.clock_samples.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}
