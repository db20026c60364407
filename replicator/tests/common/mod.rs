//! Helpers of the replicator's real-socket tests: configs, journals in temp dirs, waiting
//! on conditions with deadlines, and a frame-aware TCP proxy that cuts, tampers and replays.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journal::{FsyncPolicy, Journal, JournalHandle, Options};
use replicator::{LinkConfig, Psk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use twinrx_types::{NodeId, Seq};

pub fn psk() -> Psk {
    Psk::new(*b"0123456789abcdef0123456789abcdef").expect("32 bytes")
}

pub fn wrong_psk() -> Psk {
    Psk::new(*b"fedcba9876543210fedcba9876543210").expect("32 bytes")
}

pub fn cfg(node: NodeId) -> LinkConfig {
    LinkConfig::new(node, psk())
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

/// What the proxy does to the client → server direction (frame indices count from 0, the
/// client's HELLO; 1 is its proof; 2 is the first authenticated frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// Flip one bit of the frame's last byte (its tag) — or, with `byte`, of that body byte.
    Tamper {
        frame: u64,
        byte: Option<usize>,
    },
    /// Send the frame twice.
    Replay {
        frame: u64,
    },
    /// Replace the frame's length field (the body follows unchanged).
    Length {
        frame: u64,
        len: u32,
    },
}

/// A TCP proxy between a client and `target`, parsing the client's frames so that it can
/// alter one; [`Proxy::cut`] drops every open connection (new ones are accepted).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr, mutation: Mutation) -> Proxy {
        let listener = TcpListener::bind(localhost()).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let conns = connections.clone();
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
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut index = 0u64;
                        loop {
                            let mut len = [0u8; 4];
                            if cr.read_exact(&mut len).await.is_err() {
                                return;
                            }
                            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                            if cr.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            let mut times = 1;
                            match mutation {
                                Mutation::Length { frame, len: l } if frame == index => {
                                    len = l.to_be_bytes();
                                }
                                Mutation::Tamper { frame, byte } if frame == index => {
                                    let at = byte.unwrap_or(body.len() - 1);
                                    body[at] ^= 0x01;
                                }
                                Mutation::Replay { frame } if frame == index => times = 2,
                                _ => {}
                            }
                            for _ in 0..times {
                                if sw.write_all(&len).await.is_err()
                                    || sw.write_all(&body).await.is_err()
                                {
                                    return;
                                }
                            }
                            index += 1;
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
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
            task,
        }
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
