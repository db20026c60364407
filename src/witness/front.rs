//! One port for both nodes: routes each incoming connection to the `replicator` listener
//! that authenticates that node.
//!
//! Why: a `replicator::Listener` accepts exactly one peer, `cfg.node.peer()` (the cluster link
//! pairs node a with node b), and `NodeId` has no witness value. The witness must accept both
//! nodes on `listen`. So it runs two listeners on loopback ephemeral ports — one as node b
//! (accepts a), one as node a (accepts b) — and this front reads the first 18 bytes of each
//! connection, the start of the cluster link's `HELLO` frame (PROTOCOL.md: length u32 = 46,
//! type 0x01, magic `TWRXLINK`, version min u16, version max u16, node u8), and splices the
//! connection, those bytes first, to the listener for that node. The handshake, the PSK
//! proofs and every later frame MAC are the replicator's, unchanged; a node connects to the
//! witness exactly as to its peer (`replicator::connect` with its own `LinkConfig`), and the
//! witness answers as that node's peer id. Anything that is not a `HELLO` is spliced to the
//! listener for node a as is, which refuses it (`REFUSE`) and counts it as `malformed`: one
//! place counts every refusal.
//!
//! Bounds: at most [`CONNECTIONS_MAX`] connections at once (more are closed at once and
//! counted); the first bytes must arrive within the handshake timeout.
//!
//! Cost: one loopback hop per connection (a few HA messages per second per node).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use twinrx_types::NodeId;

use super::stopping;

/// Connections handled at once (two nodes with a few links each, reconnects, strangers).
pub const CONNECTIONS_MAX: usize = 64;
/// Bytes of the `HELLO` frame that name the node: length 4, type 1, magic 8, versions 4, node 1.
const PREFIX_BYTES: usize = 18;
const HELLO_LEN: u32 = 46;
const HELLO_TYPE: u8 = 0x01;
const MAGIC: &[u8; 8] = b"TWRXLINK";

/// Where a connection goes, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Not decided yet: need more bytes.
    More,
    /// A `HELLO` from this node.
    Node(NodeId),
    /// Not a cluster-link `HELLO` (or a node id other than a or b).
    Stranger,
}

/// Decides from the bytes read so far; decides as early as a byte disagrees.
pub fn classify(b: &[u8]) -> Route {
    if b.len() >= 4 && u32::from_be_bytes([b[0], b[1], b[2], b[3]]) != HELLO_LEN {
        return Route::Stranger;
    }
    if b.len() >= 5 && b[4] != HELLO_TYPE {
        return Route::Stranger;
    }
    for (i, m) in MAGIC.iter().enumerate() {
        match b.get(5 + i) {
            Some(x) if x != m => return Route::Stranger,
            Some(_) => {}
            None => return Route::More,
        }
    }
    match b.get(PREFIX_BYTES - 1) {
        None => Route::More,
        Some(0) => Route::Node(NodeId::A),
        Some(1) => Route::Node(NodeId::B),
        Some(_) => Route::Stranger,
    }
}

/// Counters of the front itself (the handshake refusals are the listeners').
#[derive(Debug, Default)]
pub struct FrontStats {
    pub connections_total: AtomicU64,
    /// Closed at once: [`CONNECTIONS_MAX`] already open.
    pub refused_too_many: AtomicU64,
    /// Closed, or silent for the handshake timeout, before a decisive first byte.
    pub refused_no_hello: AtomicU64,
    /// Could not reach the internal listener (should not happen).
    pub splice_failed: AtomicU64,
}

/// The internal listener address of each node, and the real remote address of each spliced
/// connection keyed by the loopback address the listener sees (for `/status`).
pub struct Front {
    pub to_a: SocketAddr,
    pub to_b: SocketAddr,
    pub remotes: Mutex<HashMap<SocketAddr, SocketAddr>>,
    pub stats: FrontStats,
    pub handshake_timeout: Duration,
}

impl Front {
    /// The real remote address behind a session's loopback peer address.
    pub fn remote_of(&self, internal: SocketAddr) -> Option<SocketAddr> {
        self.remotes
            .lock()
            .ok()
            .and_then(|m| m.get(&internal).copied())
    }
}

/// Accepts on `listener` until `shutdown` turns true.
pub async fn run(listener: TcpListener, front: Arc<Front>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping(&mut shutdown) => return,
        };
        let (stream, from) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "witness: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        front.stats.connections_total.fetch_add(1, Relaxed);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            front.stats.refused_too_many.fetch_add(1, Relaxed);
            tracing::warn!(%from, max = CONNECTIONS_MAX, "witness: too many connections; closed");
            continue;
        };
        let front = front.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            splice(stream, from, &front, shutdown).await;
        });
    }
}

async fn splice(
    mut stream: TcpStream,
    from: SocketAddr,
    front: &Front,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut prefix = Vec::with_capacity(PREFIX_BYTES);
    let read_prefix = async {
        let mut buf = [0u8; PREFIX_BYTES];
        loop {
            let route = classify(&prefix);
            if route != Route::More {
                return Ok(route);
            }
            let n = stream.read(&mut buf[..PREFIX_BYTES - prefix.len()]).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            prefix.extend_from_slice(&buf[..n]);
        }
    };
    let route = match tokio::time::timeout(front.handshake_timeout, read_prefix).await {
        Ok(Ok(r)) => r,
        // Closed before saying anything decisive: the listener would count it the same way.
        Ok(Err(_)) | Err(_) => {
            front.stats.refused_no_hello.fetch_add(1, Relaxed);
            tracing::info!(%from, "witness: connection closed or silent before a cluster-link hello");
            return;
        }
    };
    let target = match route {
        Route::Node(NodeId::B) => front.to_b,
        _ => front.to_a,
    };
    let mut inner = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            front.stats.splice_failed.fetch_add(1, Relaxed);
            tracing::error!(%from, error = %e, "witness: cannot reach its own link listener");
            return;
        }
    };
    let local = inner.local_addr().ok();
    if let Some(l) = local {
        if let Ok(mut m) = front.remotes.lock() {
            m.insert(l, from);
        }
    }
    if let Err(e) = inner.set_nodelay(true).and(stream.set_nodelay(true)) {
        tracing::debug!(error = %e, "witness: TCP_NODELAY not set");
    }
    let copied = async {
        tokio::io::AsyncWriteExt::write_all(&mut inner, &prefix).await?;
        tokio::io::copy_bidirectional(&mut stream, &mut inner).await
    };
    tokio::select! {
        r = copied => if let Err(e) = r {
            tracing::debug!(%from, error = %e, "witness: connection ended");
        },
        _ = stopping(&mut shutdown) => {}
    }
    if let Some(l) = local {
        if let Ok(mut m) = front.remotes.lock() {
            m.remove(&l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: u8) -> Vec<u8> {
        let mut b = HELLO_LEN.to_be_bytes().to_vec();
        b.push(HELLO_TYPE);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&[0, 1, 0, 1, node]);
        b
    }

    #[test]
    fn a_hello_routes_by_node_and_anything_else_is_a_stranger_as_early_as_possible() {
        assert_eq!(classify(&hello(0)), Route::Node(NodeId::A));
        assert_eq!(classify(&hello(1)), Route::Node(NodeId::B));
        assert_eq!(classify(&hello(2)), Route::Stranger);
        for n in 0..PREFIX_BYTES {
            assert_eq!(classify(&hello(1)[..n]), Route::More, "prefix of {n} bytes");
        }
        // HTTP is decided on its first four bytes ("GET " is not length 46).
        assert_eq!(classify(b"GET "), Route::Stranger);
        assert_eq!(classify(b"GE"), Route::More);
        let mut wrong_magic = hello(0);
        wrong_magic[7] = b'X';
        assert_eq!(classify(&wrong_magic[..8]), Route::Stranger);
        let mut wrong_type = hello(0);
        wrong_type[4] = 0x03;
        assert_eq!(classify(&wrong_type[..5]), Route::Stranger);
    }
}
