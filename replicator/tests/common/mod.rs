//! Helpers of the replicator's real-socket tests: configs, journals in temp dirs, waiting
//! on conditions with deadlines, and a frame-aware TCP proxy that cuts, tampers and replays.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journal::{FsyncPolicy, Journal, JournalHandle, Options};
use replicator::tls::{credentials_in, init_dir};
use replicator::{LinkConfig, Party};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use twinrx_types::{NodeId, Seq};

/// A key directory (`twinrx keys init`'s layout) made once per test process: `which` 0 is
/// the pair's, 1 another pair's (another CA: strangers).
pub fn keys(which: usize) -> &'static Path {
    static DIRS: [std::sync::OnceLock<std::path::PathBuf>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    DIRS[which].get_or_init(|| {
        let d = std::env::temp_dir().join(format!(
            "twinrx-replicator-test-keys-{}-{which}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        init_dir(&d, 30).expect("test keys");
        d
    })
}

/// The link config of `me` towards `peer`, with `me`'s credentials from key directory `dir`.
pub fn cfg_with(me: Party, peers: &[Party], dir: &Path) -> LinkConfig {
    LinkConfig::new(me, peers, credentials_in(dir, me).expect("credentials"))
}

/// Node `node`'s end of the link with its peer node, with the pair's keys.
pub fn cfg(node: NodeId) -> LinkConfig {
    cfg_with(Party::Node(node), &[Party::Node(node.peer())], keys(0))
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

/// The payload of record `seq` in a test journal of flavour `tag`: ~`len` bytes, different
/// for every seq and flavour.
pub fn payload(tag: &str, seq: u64, len: usize) -> Vec<u8> {
    let mut p =
        format!("<134>1 2026-11-25T02:00:00Z host app - - - {tag} record {seq} ").into_bytes();
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag.len() as u64;
    while p.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(b'a' + (x % 26) as u8);
    }
    p
}

pub fn open(dir: &Path, fsync: FsyncPolicy) -> Journal {
    let opts = Options {
        fsync,
        ..Options::default()
    };
    Journal::open(dir, opts).expect("open journal").0
}

/// Appends records `journal.next_seq()..` up to and including `last`, `len` bytes each.
pub fn fill(j: &mut Journal, tag: &str, last: u64, len: usize) {
    let mut next = j.next_seq().0;
    while next <= last {
        let end = (next + 1000).min(last + 1);
        let batch: Vec<Vec<u8>> = (next..end).map(|s| payload(tag, s, len)).collect();
        j.append_batch(&batch).expect("append");
        next = end;
    }
    j.sync().expect("sync");
}

/// Asserts that `copy` holds exactly the records `1..=last` and that they are `source`'s
/// first records, byte for byte (the source may hold more).
pub fn assert_prefix(source: &JournalHandle, copy: &JournalHandle, last: u64) {
    assert_eq!(copy.durable_seq(), Some(Seq(last)), "copy durable seq");
    let mut at = 1;
    while at <= last {
        let b = copy.read(Seq(at), 5000, 8 << 20).expect("read copy");
        let a = source.read(Seq(at), b.len(), 8 << 20).expect("read source");
        assert!(!b.is_empty());
        assert_eq!(a.len(), b.len(), "batch length at {at}");
        for ((sa, pa), (sb, pb)) in a.iter().zip(&b) {
            assert_eq!(sa, sb);
            assert_eq!(pa, pb, "payload of seq {sa}");
        }
        at = b.last().expect("non-empty").0 .0 + 1;
    }
}

/// Asserts that `copy` holds exactly the records `first..=last` of `source`, byte for byte.
pub fn assert_same(source: &JournalHandle, copy: &JournalHandle, first: u64, last: u64) {
    assert_eq!(copy.first_seq(), Seq(first), "copy first seq");
    assert_eq!(copy.durable_seq(), Some(Seq(last)), "copy durable seq");
    let mut at = first;
    while at <= last {
        let a = source.read(Seq(at), 5000, 8 << 20).expect("read source");
        let b = copy.read(Seq(at), 5000, 8 << 20).expect("read copy");
        assert!(!a.is_empty());
        assert_eq!(a.len(), b.len(), "batch length at {at}");
        for ((sa, pa), (sb, pb)) in a.iter().zip(&b) {
            assert_eq!(sa, sb);
            assert_eq!(pa, pb, "payload of seq {sa}");
        }
        at = a.last().expect("non-empty").0 .0 + 1;
    }
}

/// Polls `cond` every 2 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What the proxy does to the next client → server TLS record at least `min_len` bytes
/// long once armed ([`Proxy::arm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Flip one bit of the record's last byte (its AEAD tag).
    Tamper,
    /// Send the record twice.
    Replay,
}

/// A TCP proxy between a client and `target` that reads the client's bytes as TLS records so
/// that it can alter one, and keeps every byte it carried, both ways ([`Proxy::captured`]);
/// [`Proxy::cut`] drops every open connection (new ones are accepted).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    pub connections: Arc<AtomicU64>,
    armed: Arc<std::sync::Mutex<Option<(Mutation, usize)>>>,
    captured: Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(localhost()).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let armed: Arc<std::sync::Mutex<Option<(Mutation, usize)>>> = Arc::default();
        let captured: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        let conns = connections.clone();
        let (armed2, captured2) = (armed.clone(), captured.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                conns.fetch_add(1, Ordering::Relaxed);
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                let (armed, cap_up, cap_down) =
                    (armed2.clone(), captured2.clone(), captured2.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        loop {
                            let mut head = [0u8; 5];
                            if cr.read_exact(&mut head).await.is_err() {
                                return;
                            }
                            let len = u16::from_be_bytes([head[3], head[4]]) as usize;
                            let mut body = vec![0u8; len];
                            if cr.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            let mut times = 1;
                            let mutation = {
                                let mut a = armed.lock().expect("armed");
                                match *a {
                                    Some((m, min)) if len >= min.max(1) => {
                                        *a = None;
                                        Some(m)
                                    }
                                    _ => None,
                                }
                            };
                            match mutation {
                                Some(Mutation::Tamper) => body[len - 1] ^= 0x01,
                                Some(Mutation::Replay) => times = 2,
                                None => {}
                            }
                            {
                                let mut c = cap_up.lock().expect("captured");
                                c.extend_from_slice(&head);
                                c.extend_from_slice(&body);
                            }
                            for _ in 0..times {
                                if sw.write_all(&head).await.is_err()
                                    || sw.write_all(&body).await.is_err()
                                {
                                    return;
                                }
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    cap_down
                                        .lock()
                                        .expect("captured")
                                        .extend_from_slice(&buf[..n]);
                                    if cw.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    // Either direction ending, or a cut, drops both sockets.
                    tokio::select! {
                        _ = up => {},
                        _ = down => {},
                        _ = cut_rx.changed() => {},
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            connections,
            armed,
            captured,
            task,
        }
    }

    /// Applies `m` to the next client → server record of at least `min_len` bytes.
    pub fn arm(&self, m: Mutation, min_len: usize) {
        *self.armed.lock().expect("armed") = Some((m, min_len));
    }

    /// Every byte carried so far, both directions.
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().expect("captured").clone()
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
