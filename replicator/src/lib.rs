//! twinrx replicator: the cluster link between the two nodes of a pair.
//!
//! SPEC "Data flow": each node journals what it receives and ships its journal to the peer,
//! which keeps a *copy of the peer's journal* with the same seqs; SPEC "Bad input and
//! security": "the cluster link authenticates both ends; a stranger cannot inject into a
//! journal, vote, or read the stream". This crate is that link, as a library; the node
//! runtime (`twinrx node`) wires it to sockets, journals and the HA core.
//!
//! # Layout
//! - `frame.rs`: the wire — length-prefixed frames with explicit widths, payload codecs as
//!   pure functions. Byte layout in `replicator/PROTOCOL.md`.
//! - `tls.rs`: the parties (node a, node b, the witness), their TLS 1.3 credentials with
//!   mutual certificate authentication (reloaded when their files change), and the pair CA
//!   that issues them (`twinrx keys`).
//! - `auth.rs`: the handshake inside TLS (version, parties, nonces), HKDF-SHA256 session keys
//!   from the TLS exporter, and the per-frame MAC with an implicit per-direction counter.
//! - `session.rs`: [`connect`] and [`Listener`] produce an authenticated [`Session`]: a
//!   reader task and a writer task over one TCP connection carrying two lanes with their own
//!   keys and counters; control messages (the HA core's, opaque bytes) and shipping
//!   requests/acks travel in the control lane, drained first, so they never wait behind bulk
//!   journal data; keepalive and idle timeout. A shipping error stops shipping, not the
//!   session: HA messages keep flowing.
//! - `ship.rs`: [`JournalShipper`] (serves the local journal to the peer) and
//!   [`JournalCopier`] (keeps the local copy of the peer's journal), with receiver-driven
//!   flow control (a window of unacknowledged bytes), acknowledgements of durable seqs,
//!   resume by seq, `reset_to` after the peer's retention, and divergence detection.
//! - `clock.rs`: the peers' clock offset from `CLOCK` frames (an NTP exchange over the link).
//! - `stats.rs`: [`LinkStats`], counters per configured link (STYLE §8).
//!
//! # Contract
//! - Nothing reaches the caller from a connection that has not completed the handshake, and
//!   every later frame is verified before it is looked at; a failed check closes the session.
//! - The copy of the peer's journal only ever holds records the peer had made durable, at
//!   the peer's seqs, without gaps; a copy that does not match the peer's journal is
//!   reported ([`Error::Diverged`], [`Error::Gap`]), never mixed.
//! - An acknowledgement is sent only for records the copy has made durable (STYLE §9).
//! - Memory per session is bounded: frame size, queue lengths, and the shipping window.

mod auth;
pub mod clock;
mod config;
mod frame;
#[doc(hidden)]
pub mod fuzz;
mod session;
mod ship;
mod stats;
pub mod tls;

use std::fmt;

use twinrx_types::{NodeId, Seq};

pub use config::{CopyConfig, LinkConfig, ShipConfig};
pub use frame::{FRAME_BYTES_MAX_DEFAULT, PROTOCOL_VERSION};
pub use session::{connect, ControlSender, CopyPort, Event, Listener, Session, ShipPort};
pub use ship::{JournalCopier, JournalShipper};
pub use stats::{AuthFailure, LinkStats, LinkStatsSnapshot};
pub use tls::{Credentials, Party};

/// Why a session ended. Cloneable: every task of the session learns the same reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed the connection (EOF).
    PeerClosed,
    /// This side closed the session ([`Session::close`] or drop).
    LocalClose,
    /// A frame failed its MAC check (tampered, injected, replayed, reordered or reflected).
    BadFrameMac {
        /// The frame counter the frame was checked against.
        counter: u64,
    },
    /// A frame was longer than the configured maximum.
    FrameTooLarge {
        /// The length field received.
        len: u32,
        /// The maximum.
        max: u32,
    },
    /// The peer broke the protocol (unknown frame type, bad payload, window exceeded).
    Protocol(String),
    /// Nothing was received for this long (no frame, not even a keepalive).
    IdleTimeout {
        /// The configured idle timeout.
        ms: u64,
    },
    /// A socket read or write failed.
    Io(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed the connection"),
            CloseReason::LocalClose => f.write_str("closed locally"),
            CloseReason::BadFrameMac { counter } => {
                write!(
                    f,
                    "frame {counter} failed its MAC check (tampered, injected or replayed)"
                )
            }
            CloseReason::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            CloseReason::Protocol(what) => write!(f, "protocol violation: {what}"),
            CloseReason::IdleTimeout { ms } => write!(f, "nothing received for {ms} ms"),
            CloseReason::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// Everything that can go wrong on the cluster link. Variants name the peer, the seq, the
/// reason, so that a log line or `twinrx status` can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed (connect, bind, accept).
    #[error("cluster link: cannot {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The handshake did not authenticate the peer (or the peer refused us). Counted in
    /// [`LinkStats`] under `reason`. A wrong key on either node shows as `BadProof` on the
    /// listening side and `RejectedByPeer` on the connecting side: check that both nodes
    /// have the same `cluster.psk`.
    #[error("cluster link handshake failed ({reason}): {detail}")]
    Auth {
        /// The counted reason.
        reason: AuthFailure,
        /// Details for the log.
        detail: String,
    },
    /// The session ended.
    #[error("cluster link session closed: {0}")]
    Closed(CloseReason),
    /// The listener's accept loop has stopped.
    #[error("cluster link listener stopped")]
    ListenerClosed,
    /// The peer's journal does not match the copy of it held here: the peer's data directory
    /// was wiped or replaced (SPEC F15), or it lost records it had made durable. The copy
    /// must be rebuilt (`twinrx resync`); nothing was appended.
    #[error(
        "journal of node {node} diverged from its copy at seq {seq}: {detail}; run `twinrx resync`"
    )]
    Diverged {
        /// The node whose journal is shipped.
        node: NodeId,
        /// The seq at which they differ.
        seq: Seq,
        /// What differs.
        detail: String,
    },
    /// The peer's journal no longer holds the records the copy needs next (retention
    /// deleted them), and the copy is not empty: it cannot continue without a gap.
    #[error("journal of node {node} starts at seq {peer_first}, but its copy needs seq {copy_next}: gap; run `twinrx resync`")]
    Gap {
        /// The node whose journal is shipped.
        node: NodeId,
        /// The next seq the copy needs.
        copy_next: Seq,
        /// The oldest seq the peer still holds.
        peer_first: Seq,
    },
    /// The peer reported a problem on its side of journal shipping (e.g. its copy could not
    /// append: full disk). Shipping stops; reconnect to retry.
    #[error("peer reported a shipping error ({code}) at seq {seq}: {detail}")]
    PeerError {
        /// Error code from `PROTOCOL.md`.
        code: u8,
        /// The seq concerned.
        seq: Seq,
        /// The peer's message.
        detail: String,
    },
    /// The local journal (the shipped one or the copy) failed.
    #[error("cluster link: {0}")]
    Journal(#[from] journal::Error),
    /// A configuration value is unusable.
    #[error("cluster link config: {0}")]
    Config(String),
    /// The operating system's random number generator failed.
    #[error("cluster link: no randomness from the OS: {0}")]
    Rng(String),
}
