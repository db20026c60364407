//! Journal shipping: [`JournalShipper`] serves this node's journal to the peer;
//! [`JournalCopier`] keeps this node's copy of the peer's journal, with the peer's seqs.
//!
//! The copier drives (PROTOCOL.md "Journal shipping"): on each session it sends
//! `SHIP_REQUEST { from = copy.next_seq, window, copy_empty, check }`, where `check` is the
//! copy's last record and a digest of it. The shipper
//! - reports **divergence** if its journal ends before that record or holds a different one
//!   there (its data directory was wiped or replaced, SPEC F15), and a **gap** if retention
//!   deleted `from` and the copy is not empty; both end shipping, with a typed error on both
//!   sides, and nothing is appended;
//! - otherwise streams `SHIP_BATCH`es from `from` (or from its first seq, for an empty copy,
//!   which then does `reset_to`), woken by the journal's durable-seq watch, keeping at most
//!   `window` payload bytes unacknowledged (a single larger record goes alone).
//!
//! The copier appends each batch (with the copy's fsync policy, on a blocking thread) and
//! then acknowledges the copy's **durable** seq. After any disconnect the next session
//! resumes from the copy's `next_seq`: no gap, no duplicate, because the copy's own seqs are
//! the resume point and batches must continue them exactly.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use journal::{Journal, JournalHandle};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use twinrx_types::{NodeId, Seq};

use crate::auth::{Opener, Sealer};
use crate::config::{CopyConfig, ShipConfig};
use crate::frame::{
    copy_error, decode_batch, encode_batch, ship_error, ty, Batch, ErrorMsg, ShipRequest,
    BATCH_HEADER_LEN, BATCH_RECORD_OVERHEAD, TAG_LEN,
};
use crate::session::{closed, CopyIn, CopyPort, Out, ShipIn, ShipPort};
use crate::stats::AuthFailure;
use crate::stats::LinkStats;
use crate::{CloseReason, Error};

/// Digest of one record for divergence checks: SHA-256(seq u64 BE ‖ payload), first 16 bytes.
pub(crate) fn record_digest(seq: Seq, payload: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(seq.0.to_be_bytes());
    h.update(payload);
    let full = h.finalize();
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// Tells the peer why shipping or copying stopped (best effort: the session may be gone).
async fn report_error(
    tx: &mpsc::Sender<Out>,
    closed_rx: &mut tokio::sync::watch::Receiver<Option<CloseReason>>,
    frame_type: u8,
    (code, seq, seq2): (u8, Seq, Seq),
    err: &Error,
) {
    let msg = ErrorMsg {
        code,
        seq,
        seq2,
        detail: err.to_string(),
    };
    if let Err(e) = send_control(tx, frame_type, msg.encode(), closed_rx).await {
        tracing::debug!(error = %e, frame_type, "could not report the error to the peer");
    }
}

async fn send_control(
    tx: &mpsc::Sender<Out>,
    frame_type: u8,
    payload: Vec<u8>,
    closed_rx: &mut tokio::sync::watch::Receiver<Option<CloseReason>>,
) -> Result<(), Error> {
    match tx
        .send(Out {
            frame_type,
            payload,
        })
        .await
    {
        Ok(()) => Ok(()),
        Err(_) => Err(Error::Closed(closed(closed_rx).await)),
    }
}

/// Payload bytes the copier appends with one fsync at most (group commit of the batches it
/// has already received).
const GROUP_BYTES_MAX: u64 = 4 << 20;

/// Verifies (bulk lane) and decodes one `SHIP_BATCH` frame body.
fn open_batch(opener: &mut Opener, raw: Vec<u8>) -> Result<Batch, CloseReason> {
    match opener.open(raw) {
        Ok((ty::SHIP_BATCH, payload)) => decode_batch(&payload).map_err(CloseReason::Protocol),
        Ok((other, _)) => Err(CloseReason::Protocol(format!(
            "frame type {other:#04x} in the bulk lane"
        ))),
        Err(counter) => Err(CloseReason::BadFrameMac { counter }),
    }
}

/// What applying a group of received bulk frames to the copy did.
struct Applied {
    /// Records appended and their payload bytes (0 when none).
    records: u64,
    bytes: u64,
    /// The append failed (nothing of the group is in the copy).
    journal: Option<journal::Error>,
    /// A frame failed verification or continuity: the session must close (frames before it
    /// were appended).
    close: Option<CloseReason>,
    /// The first batch does not continue a non-empty copy: (copy's next seq, batch's first).
    gap: Option<(Seq, Seq)>,
}

/// Verifies, decodes and appends (with one fsync) a group of bulk frames, on a blocking
/// thread. Frames after the first bad one are not looked at; verified ones before it are
/// genuine and appended.
/// Opens (MAC-checks) and appends a group of batches. `resuming`: the copy asked again after
/// it could not store, and batches of the earlier request may still arrive first; until one
/// starts where the copy ends, those that do not are dropped (opened all the same: the MAC
/// counter counts every frame), not taken for a gap. A real gap is the shipper's to report
/// when it reads the new request.
fn apply_group(
    j: &mut Journal,
    opener: &mut Opener,
    raws: Vec<Vec<u8>>,
    resuming: bool,
) -> Applied {
    let mut out = Applied {
        records: 0,
        bytes: 0,
        journal: None,
        close: None,
        gap: None,
    };
    let next = j.next_seq();
    let empty = j.handle().first_seq() == next;
    let mut records = Vec::new();
    let mut expect: Option<u64> = None;
    let mut reset = None;
    for raw in raws {
        let b = match open_batch(opener, raw) {
            Ok(b) => b,
            Err(reason) => {
                out.close = Some(reason);
                break;
            }
        };
        match expect {
            None if b.first == next => {}
            None if resuming => continue,
            // The peer's journal starts later (retention) or elsewhere: an empty copy
            // follows it.
            None if empty => reset = Some(b.first),
            None => {
                out.gap = Some((next, b.first));
                return out;
            }
            Some(e) if e == b.first.0 => {}
            Some(e) => {
                out.close = Some(CloseReason::Protocol(format!(
                    "batch starts at seq {}, expected {e}",
                    b.first
                )));
                break;
            }
        }
        expect = Some(b.first.0 + b.records.len() as u64);
        out.bytes += b.payload_bytes;
        records.extend(b.records);
    }
    if records.is_empty() {
        out.bytes = 0;
        return out;
    }
    let result = match reset {
        Some(first) => j.reset_to(first).and_then(|()| j.append_batch(&records)),
        None => j.append_batch(&records),
    };
    match result {
        Ok(_) => out.records = records.len() as u64,
        Err(e) => {
            out.bytes = 0;
            out.journal = Some(e);
        }
    }
    out
}

/// Serves the local journal to the peer's copier, one session at a time.
pub struct JournalShipper {
    handle: JournalHandle,
    cfg: ShipConfig,
    gate: Option<ShipGate>,
}

/// See [`JournalShipper::with_gate`].
struct ShipGate {
    requests: tokio::sync::mpsc::UnboundedSender<(Seq, bool)>,
    hold: tokio::sync::watch::Receiver<bool>,
}

/// How one request's service ended.
enum Served {
    /// The copier asked again (e.g. after restarting): serve the new request.
    Restart(ShipRequest),
}

impl JournalShipper {
    /// A shipper of the journal behind `handle` (this node's own journal).
    pub fn new(handle: JournalHandle, cfg: ShipConfig) -> JournalShipper {
        JournalShipper {
            handle,
            cfg,
            gate: None,
        }
    }

    /// Reports each request's `(from, copy_empty)` — where the peer's copy of this journal
    /// ends — on `requests`, and serves it only once `hold` is false. A node whose data
    /// directory is new uses it to continue its journal after the records the peer already
    /// copied (a replaced disk, SPEC F15) before anything is shipped.
    pub fn with_gate(
        mut self,
        requests: tokio::sync::mpsc::UnboundedSender<(Seq, bool)>,
        hold: tokio::sync::watch::Receiver<bool>,
    ) -> JournalShipper {
        self.gate = Some(ShipGate { requests, hold });
        self
    }

    async fn pass_gate(&mut self, req: &ShipRequest) {
        if let Some(g) = self.gate.as_mut() {
            let _ = g.requests.send((req.from, req.copy_empty));
            let _ = g.hold.wait_for(|h| !*h).await;
        }
    }

    /// Serves the peer over `port` until the session ends or shipping fails, and returns
    /// why: [`Error::Closed`] for a session that ended (reconnect and call again),
    /// [`Error::Diverged`] / [`Error::Gap`] when the peer's copy cannot continue from this
    /// journal (also reported to the peer), [`Error::PeerError`] when the peer's copier
    /// failed, [`Error::Journal`] when this journal cannot be read.
    pub async fn run(&mut self, mut port: ShipPort) -> Error {
        loop {
            let mut request = loop {
                tokio::select! {
                    m = port.rx.recv() => match m {
                        Some(ShipIn::Request(r)) => break r,
                        // An ack from an earlier request: nothing to do with it.
                        Some(ShipIn::Ack(_)) => {}
                        Some(ShipIn::PeerError(m)) if m.code == copy_error::JOURNAL => {
                            LinkStats::add(&port.shared.stats.peer_copy_store_errors, 1);
                        }
                        Some(ShipIn::PeerError(m)) => return peer_error(m),
                        None => return Error::Closed(closed(&mut port.closed).await),
                    },
                    r = closed(&mut port.closed) => return Error::Closed(r),
                }
            };
            loop {
                self.pass_gate(&request).await;
                match self.serve(&mut port, request).await {
                    Ok(Served::Restart(r)) => request = r,
                    Err(Error::PeerError { code, seq, detail }) if code == copy_error::JOURNAL => {
                        // The peer's copy cannot store (full disk): it keeps the session and
                        // asks again from what it holds once it can; wait for that request.
                        LinkStats::add(&port.shared.stats.peer_copy_store_errors, 1);
                        tracing::warn!(peer = %port.peer, seq = seq.0, detail = %detail, "the peer's copy of this journal cannot store; shipping waits for its next request");
                        break;
                    }
                    Err(e) => return e,
                }
            }
        }
    }

    async fn fail(&self, port: &mut ShipPort, code: u8, seq: Seq, seq2: Seq, err: Error) -> Error {
        let stats = &port.shared.stats;
        match &err {
            Error::Diverged { .. } => LinkStats::add(&stats.divergences, 1),
            Error::Gap { .. } => LinkStats::add(&stats.gaps, 1),
            _ => {}
        }
        tracing::warn!(peer = %port.peer, error = %err, "journal shipping stopped");
        report_error(
            &port.control,
            &mut port.closed,
            ty::SHIP_ERROR,
            (code, seq, seq2),
            &err,
        )
        .await;
        err
    }

    /// Where to start for `req`, or why not.
    async fn start(&self, port: &mut ShipPort, req: &ShipRequest) -> Result<u64, Error> {
        let node = port.peer.peer();
        let first = self.handle.first_seq().0;
        let durable = self.handle.durable_seq().map_or(0, |s| s.0);
        let copy_last = req.from.0 - 1;
        if req.copy_empty {
            // An empty copy can start anywhere (it resets to the first batch's seq).
            return Ok(if req.from.0 < first || req.from.0 > durable + 1 {
                first
            } else {
                req.from.0
            });
        }
        if copy_last > durable {
            let err = Error::Diverged {
                node,
                seq: Seq(copy_last),
                detail: format!(
                    "the journal ends at seq {durable} but its copy holds seq {copy_last}: the journal lost records (data directory wiped or replaced?)"
                ),
            };
            return Err(self
                .fail(
                    port,
                    ship_error::DIVERGED,
                    Seq(copy_last),
                    Seq(durable),
                    err,
                )
                .await);
        }
        if let Some((seq, digest)) = req.check {
            match self.handle.read(seq, 1, 0) {
                Ok(recs) => match recs.first() {
                    Some((s, payload)) if *s == seq => {
                        if record_digest(seq, payload) != digest {
                            let err = Error::Diverged {
                                node,
                                seq,
                                detail: "the record at this seq differs from the copy's".into(),
                            };
                            return Err(self.fail(port, ship_error::DIVERGED, seq, seq, err).await);
                        }
                    }
                    _ => {
                        let err = Error::Journal(journal::Error::OutOfRange {
                            seq,
                            first: Seq(first),
                            next: Seq(durable + 1),
                        });
                        return Err(self.fail(port, ship_error::JOURNAL, seq, seq, err).await);
                    }
                },
                Err(journal::Error::Gone { .. }) => {
                    // Retention deleted the record to compare with: the check cannot be
                    // made; continuity (below) still is.
                    tracing::info!(%seq, "divergence check skipped: record deleted by retention");
                }
                Err(e) => {
                    return Err(self
                        .fail(port, ship_error::JOURNAL, seq, seq, Error::Journal(e))
                        .await)
                }
            }
        }
        if req.from.0 < first {
            let err = Error::Gap {
                node,
                copy_next: req.from,
                peer_first: Seq(first),
            };
            return Err(self
                .fail(port, ship_error::GAP, req.from, Seq(first), err)
                .await);
        }
        Ok(req.from.0)
    }

    async fn serve(&mut self, port: &mut ShipPort, req: ShipRequest) -> Result<Served, Error> {
        let stats = port.shared.stats.clone();
        let mut next = self.start(port, &req).await?;
        let window = u64::from(req.window_bytes)
            .min(self.cfg.window_bytes_max)
            .max(1);
        LinkStats::set(&stats.window_bytes, window);
        let guard = self.handle.register_reader("replicator-ship", Seq(next));
        let mut durable_rx = self.handle.subscribe();
        // Unacknowledged batches: (last seq, frame bytes after the length field).
        let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
        let mut in_flight_bytes = 0u64;
        LinkStats::set(&stats.in_flight_bytes, 0);
        tracing::info!(peer = %port.peer, from = next, window, "journal shipping started");
        loop {
            // Take everything the peer sent without waiting.
            loop {
                match port.rx.try_recv() {
                    Ok(ShipIn::Ack(acked)) => {
                        ack(&stats, &guard, &mut in_flight, &mut in_flight_bytes, acked);
                    }
                    Ok(ShipIn::Request(r)) => return Ok(Served::Restart(r)),
                    Ok(ShipIn::PeerError(m)) => return Err(peer_error(m)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        return Err(Error::Closed(closed(&mut port.closed).await))
                    }
                }
            }
            let durable = (*durable_rx.borrow_and_update()).map_or(0, |s| s.0);
            LinkStats::set(&stats.ship_source_durable_seq, durable);
            if next <= durable && in_flight_bytes < window {
                let room = window - in_flight_bytes;
                // Reading, framing and sealing take CPU and disk time: on a blocking thread,
                // so that the session's socket tasks (and heartbeats) never wait for them.
                let sealer = port.sealer.take().expect("sealer present between batches");
                let handle = self.handle.clone();
                let limits = Limits {
                    records_max: self.cfg.batch_records_max,
                    bytes_max: (room as usize).min(self.cfg.batch_bytes_max),
                    room,
                    alone: in_flight_bytes == 0,
                    frame_bytes_max: port.frame_bytes_max,
                };
                let (sealer, prepared) = match tokio::task::spawn_blocking(move || {
                    prepare(handle, sealer, Seq(next), limits)
                })
                .await
                {
                    Ok(x) => x,
                    Err(e) => return Err(Error::Config(format!("shipper task failed: {e}"))),
                };
                port.sealer = Some(sealer);
                let b = match prepared {
                    Ok(Some(b)) => b,
                    // The records do not fit what is left of the window: wait for acks.
                    Ok(None) => Prepared::none(),
                    Err(Prep::Journal(journal::Error::Gone { first, .. })) => {
                        let err = Error::Gap {
                            node: port.peer.peer(),
                            copy_next: Seq(next),
                            peer_first: first,
                        };
                        return Err(self
                            .fail(port, ship_error::GAP, Seq(next), first, err)
                            .await);
                    }
                    Err(Prep::Journal(e)) => {
                        let err = Error::Journal(e);
                        return Err(self
                            .fail(port, ship_error::JOURNAL, Seq(next), Seq(next), err)
                            .await);
                    }
                    Err(Prep::TooLarge { wire }) => {
                        let err = Error::Config(format!(
                            "record {next} needs a frame of {wire} bytes, above frame_bytes_max {}",
                            port.frame_bytes_max
                        ));
                        return Err(self
                            .fail(port, ship_error::JOURNAL, Seq(next), Seq(next), err)
                            .await);
                    }
                };
                if let Some(frame) = b.frame {
                    tokio::select! {
                        r = port.bulk.send(frame) => if r.is_err() {
                            return Err(Error::Closed(closed(&mut port.closed).await));
                        },
                        r = closed(&mut port.closed) => return Err(Error::Closed(r)),
                    }
                    in_flight.push_back((b.last, b.wire));
                    in_flight_bytes += b.wire;
                    next = b.last + 1;
                    LinkStats::set(&stats.in_flight_bytes, in_flight_bytes);
                    stats
                        .in_flight_bytes_max
                        .fetch_max(in_flight_bytes, Ordering::Relaxed);
                    LinkStats::set(&stats.ship_sent_seq, b.last);
                    LinkStats::add(&stats.records_shipped, b.count);
                    LinkStats::add(&stats.record_bytes_shipped, b.payload_bytes);
                    continue;
                }
            }
            tokio::select! {
                m = port.rx.recv() => match m {
                    Some(ShipIn::Ack(acked)) => ack(&stats, &guard, &mut in_flight, &mut in_flight_bytes, acked),
                    Some(ShipIn::Request(r)) => return Ok(Served::Restart(r)),
                    Some(ShipIn::PeerError(m)) => return Err(peer_error(m)),
                    None => return Err(Error::Closed(closed(&mut port.closed).await)),
                },
                r = durable_rx.changed() => if r.is_err() {
                    // The journal writer was dropped: this node is shutting down.
                    return Err(Error::Journal(journal::Error::Closed));
                },
                r = closed(&mut port.closed) => return Err(Error::Closed(r)),
            }
        }
    }
}

/// Bounds of one batch.
struct Limits {
    records_max: usize,
    bytes_max: usize,
    /// Window bytes left.
    room: u64,
    /// Nothing in flight: one frame larger than the window may go.
    alone: bool,
    frame_bytes_max: u32,
}

/// A sealed batch ready for the bulk lane.
struct Prepared {
    frame: Option<Vec<u8>>,
    last: u64,
    count: u64,
    wire: u64,
    payload_bytes: u64,
}

impl Prepared {
    fn none() -> Prepared {
        Prepared {
            frame: None,
            last: 0,
            count: 0,
            wire: 0,
            payload_bytes: 0,
        }
    }
}

enum Prep {
    Journal(journal::Error),
    TooLarge { wire: u64 },
}

/// Reads the next batch from `next`, cuts it to the window, frames and seals it (bulk lane).
/// `Ok(None)`: nothing fits the window now (or nothing durable).
fn prepare(
    handle: JournalHandle,
    mut sealer: Sealer,
    next: Seq,
    l: Limits,
) -> (Sealer, Result<Option<Prepared>, Prep>) {
    let mut recs = match handle.read(next, l.records_max, l.bytes_max) {
        Ok(r) => r,
        Err(e) => return (sealer, Err(Prep::Journal(e))),
    };
    // The window counts frame bytes (what the peer's reader queues). A batch that does not
    // fit what is left is cut; a single record larger than the whole window goes alone,
    // when nothing else is in flight.
    let mut wire = batch_frame_len(&recs);
    while wire > l.room && !l.alone {
        let Some((_, r)) = recs.pop() else { break };
        wire -= (r.len() + BATCH_RECORD_OVERHEAD) as u64;
    }
    let Some(&(last, _)) = recs.last() else {
        return (sealer, Ok(None));
    };
    if wire > u64::from(l.frame_bytes_max) {
        return (sealer, Err(Prep::TooLarge { wire }));
    }
    let count = recs.len() as u64;
    let payload_bytes: u64 = recs.iter().map(|(_, r)| r.len() as u64).sum();
    let payload = encode_batch(&recs);
    drop(recs);
    let frame = sealer.seal(ty::SHIP_BATCH, &payload);
    debug_assert_eq!(frame.len() as u64, 4 + wire);
    let b = Prepared {
        frame: Some(frame),
        last: last.0,
        count,
        wire,
        payload_bytes,
    };
    (sealer, Ok(Some(b)))
}

/// Bytes of the `SHIP_BATCH` frame for `recs` after its length field (type, payload, tag).
fn batch_frame_len(recs: &[(Seq, Vec<u8>)]) -> u64 {
    let records: usize = recs
        .iter()
        .map(|(_, r)| r.len() + BATCH_RECORD_OVERHEAD)
        .sum();
    (1 + BATCH_HEADER_LEN + records + TAG_LEN) as u64
}

/// The peer's copy made `acked` durable: release what it covers.
fn ack(
    stats: &LinkStats,
    guard: &journal::ReaderGuard,
    in_flight: &mut VecDeque<(u64, u64)>,
    in_flight_bytes: &mut u64,
    acked: Seq,
) {
    while let Some(&(last, bytes)) = in_flight.front() {
        if last > acked.0 {
            break;
        }
        in_flight.pop_front();
        *in_flight_bytes -= bytes;
    }
    guard.advance(acked.next());
    stats.ship_acked_seq.fetch_max(acked.0, Ordering::Relaxed);
    LinkStats::set(&stats.in_flight_bytes, *in_flight_bytes);
}

/// First pause before a copy that could not store asks the peer again; doubles up to the max.
const STORE_RETRY_MIN: Duration = Duration::from_millis(200);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

fn peer_error(m: ErrorMsg) -> Error {
    Error::PeerError {
        code: m.code,
        seq: m.seq,
        detail: m.detail,
    }
}

/// Keeps the local copy of the peer's journal. Owns the copy's [`Journal`] across sessions.
///
/// [`JournalCopier::run`] appends on a blocking thread that owns the journal meanwhile; do
/// not drop its future mid-way (end it by closing the session instead), or the journal is
/// closed with the dropped append and [`JournalCopier::run`] fails from then on.
pub struct JournalCopier {
    journal: Option<Journal>,
    handle: JournalHandle,
    cfg: CopyConfig,
}

impl JournalCopier {
    /// A copier appending to `copy`, the copy of the peer's journal (same seqs as the peer's).
    pub fn new(copy: Journal, cfg: CopyConfig) -> JournalCopier {
        let handle = copy.handle();
        JournalCopier {
            journal: Some(copy),
            handle,
            cfg,
        }
    }

    /// Read access to the copy (for the merger).
    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// The copy's journal back (e.g. for `resync` to rebuild it); `None` if an append was
    /// abandoned mid-way.
    pub fn into_journal(self) -> Option<Journal> {
        self.journal
    }

    /// Runs `f` on the journal on a blocking thread (appends fsync).
    async fn with_journal<T, F>(&mut self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Journal) -> T + Send + 'static,
    {
        let Some(mut j) = self.journal.take() else {
            return Err(Error::Config(
                "the copy journal was lost with an abandoned append; reopen it".into(),
            ));
        };
        match tokio::task::spawn_blocking(move || {
            let out = f(&mut j);
            (j, out)
        })
        .await
        {
            Ok((j, out)) => {
                self.journal = Some(j);
                Ok(out)
            }
            Err(e) => Err(Error::Config(format!("copy journal task failed: {e}"))),
        }
    }

    /// Copies the peer's journal over `port` until the session ends or copying fails, and
    /// returns why: [`Error::Closed`] (reconnect and call again: it resumes from the copy's
    /// next seq), [`Error::Diverged`] / [`Error::Gap`] (the copy must be rebuilt),
    /// [`Error::Journal`] (the copy cannot append: full disk; also reported to the peer).
    pub async fn run(&mut self, mut port: CopyPort) -> Error {
        match self.copy(&mut port).await {
            Ok(never) => match never {},
            Err(e) => {
                match &e {
                    Error::Closed(_) => {}
                    other => {
                        tracing::warn!(peer = %port.peer, error = %other, "journal copy stopped")
                    }
                }
                e
            }
        }
    }

    /// Copies until the session ends or copying cannot continue. An append that fails (a full
    /// disk, an I/O error) is retried in this session with backoff, and never closes it: the
    /// session also carries the heartbeats and this node's own journal shipping, and closing
    /// it made the active see its peer come and go once a second.
    async fn copy(&mut self, port: &mut CopyPort) -> Result<std::convert::Infallible, Error> {
        let mut backoff = STORE_RETRY_MIN;
        let mut resuming = false;
        loop {
            match self.copy_from_here(port, resuming).await {
                Err(Error::Journal(e)) => {
                    let stats = &port.shared.stats;
                    LinkStats::add(&stats.copy_store_errors, 1);
                    if stats.copy_store_failing.swap(1, Ordering::AcqRel) == 0 {
                        // A new episode (the copy stored since the last one).
                        backoff = STORE_RETRY_MIN;
                        tracing::warn!(peer = %port.peer, error = %e, "the copy of the peer's journal cannot store; retrying in this session");
                    }
                    self.discard_for(port, backoff).await?;
                    backoff = (backoff * 2).min(STORE_RETRY_MAX);
                    resuming = true;
                }
                other => return other,
            }
        }
    }

    /// Waits `pause`, discarding the batches the peer sent for the request that failed (it
    /// ships them again from the next request).
    async fn discard_for(&mut self, port: &mut CopyPort, pause: Duration) -> Result<(), Error> {
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                m = port.rx.recv() => match m {
                    Some(CopyIn::Batch(raw)) => {
                        port.queued.fetch_sub(raw.len() as u64, Ordering::AcqRel);
                        // Opened all the same: the MAC counter counts every frame.
                        let opener = port.opener.as_mut().expect("opener present between appends");
                        if let Err(reason) = open_batch(opener, raw) {
                            if let CloseReason::BadFrameMac { .. } = reason {
                                port.shared.stats.auth_failure(AuthFailure::FrameMac);
                            }
                            port.shared.close(reason.clone());
                            return Err(Error::Closed(reason));
                        }
                    }
                    Some(CopyIn::PeerError(m)) => {
                        let stats = port.shared.stats.clone();
                        return Err(self.peer_failed(port.peer, m, &stats));
                    }
                    None => return Err(Error::Closed(closed(&mut port.closed).await)),
                },
                _ = tokio::time::sleep_until(until) => return Ok(()),
                r = closed(&mut port.closed) => return Err(Error::Closed(r)),
            }
        }
    }

    /// One request to the peer, from what the copy holds, and the copying that follows it.
    async fn copy_from_here(
        &mut self,
        port: &mut CopyPort,
        mut resuming: bool,
    ) -> Result<std::convert::Infallible, Error> {
        let stats = port.shared.stats.clone();
        let node = port.peer;
        // Everything appended is made durable, so the resume point is what the copy holds.
        self.with_journal(|j| j.sync()).await??;
        let next = self
            .journal
            .as_ref()
            .expect("with_journal put the journal back")
            .next_seq();
        let empty = self.handle.first_seq() == next;
        let check = if empty {
            None
        } else {
            let last = Seq(next.0 - 1);
            let recs = self.handle.read(last, 1, 0)?;
            match recs.first() {
                Some((s, payload)) if *s == last => Some((last, record_digest(last, payload))),
                _ => {
                    return Err(Error::Journal(journal::Error::OutOfRange {
                        seq: last,
                        first: self.handle.first_seq(),
                        next,
                    }))
                }
            }
        };
        port.window
            .store(u64::from(self.cfg.window_bytes), Ordering::Release);
        let req = ShipRequest {
            from: next,
            window_bytes: self.cfg.window_bytes,
            copy_empty: empty,
            check,
        };
        send_control(
            &port.control,
            ty::SHIP_REQUEST,
            req.encode(),
            &mut port.closed,
        )
        .await?;
        tracing::info!(peer = %node, from = %next, "journal copy requested");
        let mut acked = self.handle.durable_seq().map_or(0, |s| s.0);
        LinkStats::set(&stats.copy_durable_seq, acked);
        let mut tick = tokio::time::interval(self.cfg.sync_tick);
        let mut last_retention = std::time::Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let pending_sync = {
                let j = self
                    .journal
                    .as_ref()
                    .expect("journal present between appends");
                j.next_seq().0 > acked + 1
            };
            tokio::select! {
                m = port.rx.recv() => match m {
                    Some(CopyIn::Batch(raw)) => {
                        // Group commit: take every batch already received (up to a bound)
                        // and append them with one fsync.
                        let mut bytes = raw.len() as u64;
                        let mut raws = vec![raw];
                        let mut deferred = None;
                        while bytes < GROUP_BYTES_MAX {
                            match port.rx.try_recv() {
                                Ok(CopyIn::Batch(raw)) => {
                                    bytes += raw.len() as u64;
                                    raws.push(raw);
                                }
                                Ok(other) => {
                                    deferred = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        port.queued.fetch_sub(bytes, Ordering::AcqRel);
                        resuming &= !self.append(port, node, raws, &stats, resuming).await?;
                        if let Some(CopyIn::PeerError(m)) = deferred {
                            return Err(self.peer_failed(node, m, &stats));
                        }
                    }
                    Some(CopyIn::PeerError(m)) => return Err(self.peer_failed(node, m, &stats)),
                    None => return Err(Error::Closed(closed(&mut port.closed).await)),
                },
                _ = tick.tick(), if pending_sync => {
                    // Policy `interval`: records become durable (and acknowledgeable) here.
                    self.with_journal(|j| j.sync_if_due(std::time::Instant::now())).await??;
                }
                // An idle copy still gets its retention passes (the merger's hold moves on
                // after the last batch arrived).
                _ = tokio::time::sleep(self.cfg.retention_every.unwrap_or(Duration::MAX)),
                    if self.cfg.retention_every.is_some() => {}
                r = closed(&mut port.closed) => return Err(Error::Closed(r)),
            }
            if let Some(every) = self.cfg.retention_every {
                if last_retention.elapsed() >= every {
                    last_retention = std::time::Instant::now();
                    // Old segments go by the copy's retention policy; readers registered on
                    // the copy (the merger's position) hold what they still need.
                    if let Err(e) = self
                        .with_journal(|j| j.enforce_retention(std::time::SystemTime::now()))
                        .await?
                    {
                        tracing::warn!(peer = %node, error = %e, "copy retention failed");
                    }
                }
            }
            let durable = self.handle.durable_seq().map_or(0, |s| s.0);
            if durable > acked {
                acked = durable;
                LinkStats::set(&stats.copy_durable_seq, acked);
                // Only what the copy made durable is acknowledged (STYLE §9).
                send_control(
                    &port.control,
                    ty::SHIP_ACK,
                    acked.to_be_bytes().to_vec(),
                    &mut port.closed,
                )
                .await?;
            }
        }
    }

    /// Appends a group of batches (see [`apply_group`]); true when it appended records.
    async fn append(
        &mut self,
        port: &mut CopyPort,
        node: NodeId,
        raws: Vec<Vec<u8>>,
        stats: &LinkStats,
        resuming: bool,
    ) -> Result<bool, Error> {
        if let Some(d) = self.cfg.append_delay {
            tokio::time::sleep(d).await;
        }
        let next = self
            .journal
            .as_ref()
            .expect("journal present between appends")
            .next_seq();
        // MAC checks, decoding and the fsync take CPU and disk time: on a blocking thread,
        // so that the session's socket tasks (and heartbeats) never wait for them.
        let mut opener = port.opener.take().expect("opener present between appends");
        let (opener, applied) = self
            .with_journal(move |j| {
                let applied = apply_group(j, &mut opener, raws, resuming);
                (opener, applied)
            })
            .await?;
        port.opener = Some(opener);
        if applied.journal.is_none()
            && applied.records > 0
            && stats.copy_store_failing.swap(0, Ordering::AcqRel) == 1
        {
            tracing::info!(peer = %node, "the copy of the peer's journal stores again");
        }
        LinkStats::add(&stats.records_copied, applied.records);
        LinkStats::add(&stats.record_bytes_copied, applied.bytes);
        if let Some((copy_next, first)) = applied.gap {
            let err = Error::Gap {
                node,
                copy_next,
                peer_first: first,
            };
            LinkStats::add(&stats.gaps, 1);
            self.report(port, copy_error::GAP, copy_next, first, &err)
                .await;
            return Err(err);
        }
        if let Some(e) = applied.journal {
            let err = Error::Journal(e);
            self.report(port, copy_error::JOURNAL, next, next, &err)
                .await;
            return Err(err);
        }
        if let Some(reason) = applied.close {
            if let CloseReason::BadFrameMac { counter } = reason {
                stats.auth_failure(AuthFailure::FrameMac);
                tracing::warn!(
                    counter,
                    "cluster link bulk frame failed its MAC check; closing"
                );
            }
            port.shared.close(reason.clone());
            return Err(Error::Closed(reason));
        }
        Ok(applied.records > 0)
    }

    async fn report(&self, port: &mut CopyPort, code: u8, seq: Seq, seq2: Seq, err: &Error) {
        report_error(
            &port.control,
            &mut port.closed,
            ty::COPY_ERROR,
            (code, seq, seq2),
            err,
        )
        .await;
    }

    fn peer_failed(&self, node: NodeId, m: ErrorMsg, stats: &LinkStats) -> Error {
        match m.code {
            ship_error::DIVERGED => {
                LinkStats::add(&stats.divergences, 1);
                Error::Diverged {
                    node,
                    seq: m.seq,
                    detail: m.detail,
                }
            }
            ship_error::GAP => {
                LinkStats::add(&stats.gaps, 1);
                Error::Gap {
                    node,
                    copy_next: m.seq,
                    peer_first: m.seq2,
                }
            }
            _ => peer_error(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_binds_seq_and_payload() {
        let d = record_digest(Seq(5), b"abc");
        assert_eq!(d, record_digest(Seq(5), b"abc"));
        assert_ne!(d, record_digest(Seq(6), b"abc"));
        assert_ne!(d, record_digest(Seq(5), b"abd"));
    }
}
