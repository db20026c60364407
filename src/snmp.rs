//! The node's SNMP trap listener: a UDP socket around `receiver::snmp::SnmpReceiver`.
//!
//! The core decides; this module does the I/O it asks for: journal accepted and kept-raw
//! datagrams, answer an inform only once its record is durable (the journal writer fires the
//! batch's durability signal after the fsync), send Reports at once. The engine ID is
//! persisted in `DATA_DIR/snmp-engine.json` and its boots counter is incremented (and
//! fsynced) at every start, before the first datagram is handled (RFC 3414 §2.2.2).

use crate::config::SnmpSettings;
use anyhow::Context as _;
use receiver::listen::{now_unix_nanos, Intake, PushError};
use receiver::record::{Protocol, Record, Transport};
use receiver::snmp::{Engine, Outcome, SnmpReceiver};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use twinrx_types::Millis;

#[derive(serde::Serialize, serde::Deserialize)]
struct EngineFile {
    engine_id: String,
    boots: u32,
}

pub use receiver::hex;

pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x");
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Loads (or creates) this node's engine, increments boots and persists it before use.
pub fn load_engine(data_dir: &Path, configured: Option<&[u8]>) -> anyhow::Result<Engine> {
    load_engine_at(data_dir, configured, std::time::SystemTime::now())
}

/// [`load_engine`] with the wall clock at `now` (tests).
fn load_engine_at(
    data_dir: &Path,
    configured: Option<&[u8]>,
    now: std::time::SystemTime,
) -> anyhow::Result<Engine> {
    let path = data_dir.join("snmp-engine.json");
    let previous: Option<EngineFile> = match std::fs::read(&path) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("{} is not a valid engine file", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (engine_id, boots) = match (previous, configured) {
        (Some(p), Some(c)) if parse_hex(&p.engine_id).as_deref() == Some(c) => (
            c.to_vec(),
            p.boots
                .saturating_add(1)
                .max(boots_floor(now))
                .min(2_147_483_646),
        ),
        (Some(p), None) => (
            parse_hex(&p.engine_id)
                .with_context(|| format!("{}: engine_id is not hex", path.display()))?,
            p.boots + 1,
        ),
        // A configured engine ID without its file (a wiped or new data dir): its boots must
        // not go back, or old v3 messages of that engine would fall in its time window
        // again (RFC 3414 §3.2.7): start above any count an earlier life of it reached.
        (_, Some(c)) => (c.to_vec(), boots_floor(now)),
        (None, None) => (generate_engine_id()?, 1),
    };
    let file = EngineFile {
        engine_id: hex(&engine_id),
        boots,
    };
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write as _;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&file)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        dir.sync_all().ok();
    }
    Ok(Engine { engine_id, boots })
}

/// A lower bound for engineBoots of a configured engine ID: seconds since 2020-01-01 UTC
/// (about 220 million in 2027; the limit, 2^31 − 1, is reached in 2088). A count that grew
/// by one per restart stays below it unless the engine restarted more than once a second on
/// average, so a wiped data dir never brings boots back to a value it had.
fn boots_floor(now: std::time::SystemTime) -> u32 {
    const EPOCH_2020: u64 = 1_577_836_800;
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(now.saturating_sub(EPOCH_2020))
        .unwrap_or(u32::MAX)
        .clamp(1, 2_147_483_646)
}

/// RFC 3411 §5 SnmpEngineID, format 5 (octets, administratively assigned): 0x80 | enterprise
/// 8072 (Net-SNMP's, as snmptrapd uses), 0x05, then 12 random octets.
fn generate_engine_id() -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut id = vec![0x80, 0x00, 0x1f, 0x88, 0x05];
    let mut rnd = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut rnd))
        .context("reading /dev/urandom for a new SNMP engine ID")?;
    id.extend_from_slice(&rnd);
    Ok(id)
}

/// Shared between the listener task and the tasks that wait for durability.
pub type SharedReceiver = Arc<Mutex<SnmpReceiver>>;

pub fn new_receiver(settings: &SnmpSettings, engine: Engine) -> anyhow::Result<SharedReceiver> {
    let r = SnmpReceiver::new(settings.core.clone(), engine, monotonic_ms())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Arc::new(Mutex::new(r)))
}

fn monotonic_ms() -> Millis {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    Millis(START.get_or_init(Instant::now).elapsed().as_millis() as u64)
}

/// Counters the listener keeps beside the core's (queue drops, send failures).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub queue_full: std::sync::atomic::AtomicU64,
    /// Datagrams dropped by `[snmp] rate_per_source_per_s` (never journaled, never answered:
    /// an inform's sender retransmits).
    pub rate_limited: std::sync::atomic::AtomicU64,
    pub reply_send_errors: std::sync::atomic::AtomicU64,
    pub informs_answered: std::sync::atomic::AtomicU64,
}

pub async fn run(
    sock: Arc<UdpSocket>,
    core: SharedReceiver,
    rate: receiver::limit::RateLimit,
    max_bytes: usize,
    intake: Intake,
    stats: Arc<ListenerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    // One byte over the limit so an oversize datagram is seen as such (the core counts it).
    let slot_bytes = max_bytes.saturating_add(1).min(65_536);
    let mut slots: Vec<Vec<u8>> = (0..receiver::listen::RECVMMSG_SLOTS)
        .map(|_| vec![0u8; slot_bytes])
        .collect();
    let mut received: Vec<receiver::listen::Datagram> = Vec::new();
    let mut limiter = receiver::limit::TokenBuckets::new(rate, 65_536);
    loop {
        tokio::select! {
            r = sock.readable() => if let Err(e) = r {
                tracing::warn!(error = %e, "snmp socket failed");
                return;
            },
            _ = shutdown.changed() => return,
        }
        match sock.try_io(tokio::io::Interest::READABLE, || {
            receiver::listen::recv_many(&sock, &mut slots, &mut received)
        }) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "snmp recv error");
                continue;
            }
        }
        let read_at = now_unix_nanos();
        let now = std::time::Instant::now();
        for (src, datagram, kernel_at) in received.drain(..) {
            if limiter.wait_for(src.ip(), now).is_some() {
                stats
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let received_at = kernel_at.unwrap_or(read_at);
            handle(&sock, &core, &intake, &stats, src, datagram, received_at).await;
        }
    }
}

/// Acts on the core's decision for one datagram.
async fn handle(
    sock: &Arc<UdpSocket>,
    core: &SharedReceiver,
    intake: &Intake,
    stats: &Arc<ListenerStats>,
    src: SocketAddr,
    datagram: Vec<u8>,
    received_at: twinrx_types::UnixNanos,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let outcome = match core.lock() {
        Ok(mut c) => c.handle_datagram(monotonic_ms(), received_at, src, &datagram),
        Err(_) => return,
    };
    {
        let record = |key, decoded, raw| Record {
            protocol: Protocol::Snmp,
            transport: Transport::Udp,
            received_at,
            key,
            source: src,
            raw,
            decoded,
        };
        match outcome {
            Outcome::Accept {
                key,
                decoded,
                reply: None,
            }
            | Outcome::KeepRaw { key, decoded, .. } => {
                if intake
                    .try_push(vec![record(key, decoded, datagram)])
                    .is_err()
                {
                    stats.queue_full.fetch_add(1, Relaxed);
                }
            }
            Outcome::Accept {
                key,
                decoded,
                reply: Some(reply),
            } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                match intake.try_push_durable(vec![record(key, decoded, datagram)], tx) {
                    Ok(()) => {
                        answer_when_durable(
                            sock.clone(),
                            src,
                            reply,
                            rx,
                            Some((core.clone(), key)),
                            stats.clone(),
                        );
                    }
                    Err(PushError::Full) | Err(PushError::Closed) => {
                        // Not journaled: no answer, so the sender retransmits.
                        stats.queue_full.fetch_add(1, Relaxed);
                        if let Ok(mut c) = core.lock() {
                            c.handle_append_failed(src, key);
                        }
                    }
                }
            }
            Outcome::DuplicateInform { reply } => {
                // Answer once everything appended so far is durable: an empty batch behind
                // the original's is fired only after it.
                let (tx, rx) = tokio::sync::oneshot::channel();
                if intake.try_push_durable(Vec::new(), tx).is_ok() {
                    answer_when_durable(sock.clone(), src, reply, rx, None, stats.clone());
                }
            }
            Outcome::Reply(bytes) => {
                if sock.send_to(&bytes, src).await.is_err() {
                    stats.reply_send_errors.fetch_add(1, Relaxed);
                }
            }
            Outcome::Discard(_) => {}
        }
    }
}

fn answer_when_durable(
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    reply: Vec<u8>,
    durable: tokio::sync::oneshot::Receiver<()>,
    forget_on_failure: Option<(SharedReceiver, twinrx_types::Key)>,
    stats: Arc<ListenerStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::spawn(async move {
        match durable.await {
            Ok(()) => {
                if sock.send_to(&reply, to).await.is_ok() {
                    stats.informs_answered.fetch_add(1, Relaxed);
                } else {
                    stats.reply_send_errors.fetch_add(1, Relaxed);
                }
            }
            Err(_) => {
                // The journal could not take it: never acknowledge.
                if let Some((core, key)) = forget_on_failure {
                    if let Ok(mut c) = core.lock() {
                        c.handle_append_failed(to, key);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_engine_keeps_its_boots_growing_across_a_wiped_data_dir() {
        let dir = std::env::temp_dir().join(format!("twinrx-engine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let id = parse_hex("800000090300aabbccddeeff").expect("hex");
        // Starts a second apart (restarts are slower than that: the contract's premise).
        let at = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + s);
        let first = load_engine_at(&dir, Some(&id), at(0)).expect("engine");
        let second = load_engine_at(&dir, Some(&id), at(1)).expect("engine");
        assert_eq!(first.engine_id, id);
        assert!(
            second.boots > first.boots,
            "{} -> {}",
            first.boots,
            second.boots
        );
        // The data dir is wiped (F15): boots does not start again at 1.
        std::fs::remove_dir_all(&dir).expect("wipe");
        std::fs::create_dir_all(&dir).expect("dir");
        let after_wipe = load_engine_at(&dir, Some(&id), at(2)).expect("engine");
        assert!(
            after_wipe.boots > second.boots,
            "{} after the wipe, {} before",
            after_wipe.boots,
            second.boots
        );
        assert!(after_wipe.boots > 200_000_000, "{}", after_wipe.boots);
        // A generated engine ID is new after a wipe: its own count starts at 1.
        std::fs::remove_dir_all(&dir).expect("wipe");
        std::fs::create_dir_all(&dir).expect("dir");
        let generated = load_engine(&dir, None).expect("engine");
        assert_eq!(generated.boots, 1);
        assert_ne!(generated.engine_id, id);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
