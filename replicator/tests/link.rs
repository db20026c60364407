//! The cluster link's TLS handshake, identities and frame protection over real TCP on
//! 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{cfg, cfg_with, keys, localhost, wait_until, Mutation, Proxy};
use replicator::{connect, AuthFailure, CloseReason, Error, Event, LinkConfig, Listener, Party};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twinrx_types::NodeId;

const LIMIT: Duration = Duration::from_secs(5);

async fn recv_control(s: &mut replicator::Session) -> Vec<u8> {
    match tokio::time::timeout(LIMIT, s.recv()).await {
        Ok(Event::Control(m)) => m,
        other => panic!("expected a control message, got {other:?}"),
    }
}

async fn recv_closed(s: &mut replicator::Session) -> CloseReason {
    match tokio::time::timeout(LIMIT, s.recv()).await {
        Ok(Event::Closed(r)) => r,
        Ok(Event::Control(m)) => panic!("expected the session to close, got control {m:?}"),
        Err(_) => panic!("session did not close within {LIMIT:?}"),
    }
}

/// Reads until EOF (or a reset); returns what came.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection not closed within {LIMIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_succeeds_both_ways_and_control_messages_flow() {
    for (listening, connecting) in [(NodeId::A, NodeId::B), (NodeId::B, NodeId::A)] {
        let mut listener = Listener::bind(localhost(), cfg(listening))
            .await
            .expect("bind");
        let client_cfg = cfg(connecting);
        let mut client = connect(listener.local_addr(), &client_cfg)
            .await
            .expect("connect");
        let mut server = listener.accept().await.expect("accept");
        assert_eq!(client.peer(), Party::Node(listening));
        assert_eq!(server.peer(), Party::Node(connecting));
        assert_eq!(client.version(), replicator::PROTOCOL_VERSION);

        client
            .send_control(b"heartbeat from client".to_vec())
            .await
            .expect("send");
        assert_eq!(recv_control(&mut server).await, b"heartbeat from client");
        server
            .send_control(b"vote from server".to_vec())
            .await
            .expect("send");
        assert_eq!(recv_control(&mut client).await, b"vote from server");
        assert!(client.try_send_control(Vec::new()).expect("open"));
        assert_eq!(recv_control(&mut server).await, b"");

        let s = listener.stats().snapshot();
        assert_eq!(s.sessions_established, 1);
        assert_eq!(s.auth_failures_total(), 0);
        assert_eq!(s.control_received, 2);
        // Counted by the writer after its write returns, which may be after delivery.
        let client_stats = client_cfg.stats.clone();
        wait_until("client counts its sends", LIMIT, || {
            client_stats.snapshot().control_sent == 2
        })
        .await;

        drop(client);
        assert!(matches!(
            recv_closed(&mut server).await,
            CloseReason::PeerClosed | CloseReason::Io(_)
        ));
    }
}

/// Expects `connect` to fail with `reason`.
async fn refused(addr: std::net::SocketAddr, c: &LinkConfig, reason: AuthFailure) {
    match connect(addr, c).await {
        Err(Error::Auth { reason: r, detail }) => {
            assert_eq!(r, reason, "{detail}");
        }
        Err(e) => panic!("expected {reason}, got {e}"),
        Ok(s) => panic!("expected {reason}, but a session with {} came up", s.peer()),
    }
}

const A: Party = Party::Node(NodeId::A);
const B: Party = Party::Node(NodeId::B);
const W: Party = Party::Witness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_with_self_made_certificates_are_refused_and_counted() {
    let mut listener = Listener::bind(localhost(), cfg(NodeId::A))
        .await
        .expect("bind");
    let stats = listener.stats();
    // A stranger that knows the pair's CA certificate (it is not secret) but holds a
    // certificate for "node b" made by another CA.
    let forged = LinkConfig::new(
        B,
        &[A],
        std::sync::Arc::new(
            replicator::Credentials::load(
                &replicator::tls::ca_file(keys(0)),
                &replicator::tls::cert_file(keys(1), B),
                &replicator::tls::key_file(keys(1), B),
            )
            .expect("credentials"),
        ),
    );
    refused(listener.local_addr(), &forged, AuthFailure::RejectedByPeer).await;
    wait_until("the listener counts a bad certificate", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::BadCertificate) == 1
    })
    .await;

    // The listener never handed the stranger out: the next session is the honest node's.
    let good = connect(listener.local_addr(), &cfg(NodeId::B))
        .await
        .expect("connect");
    let accepted = listener.accept().await.expect("accept");
    assert_eq!(accepted.peer(), B);
    assert_eq!(good.peer(), A);
    assert_eq!(stats.snapshot().sessions_established, 1);
    drop(good);

    // A listener of another CA: the connecting node refuses to trust it, before it shows
    // its own certificate.
    let impostor = Listener::bind(localhost(), cfg_with(A, &[B], keys(1)))
        .await
        .expect("bind");
    let honest = cfg(NodeId::B);
    refused(impostor.local_addr(), &honest, AuthFailure::BadCertificate).await;
    assert_eq!(
        honest
            .stats
            .snapshot()
            .auth_failures(AuthFailure::BadCertificate),
        1
    );
    assert_eq!(impostor.stats().snapshot().sessions_established, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_party_speaks_only_where_its_identity_is_accepted() {
    // The witness's certificate cannot replicate: node a's link listener refuses it.
    let node_a = Listener::bind(localhost(), cfg(NodeId::A))
        .await
        .expect("bind");
    let witness_as_client = cfg_with(W, &[A], keys(0));
    refused(
        node_a.local_addr(),
        &witness_as_client,
        AuthFailure::RejectedByPeer,
    )
    .await;
    let stats = node_a.stats();
    wait_until("wrong identity counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::WrongIdentity) == 1
    })
    .await;
    // A second node a, dialing node b, finds node a's certificate there and goes away.
    refused(
        node_a.local_addr(),
        &cfg(NodeId::A),
        AuthFailure::BadCertificate,
    )
    .await;
    assert_eq!(stats.snapshot().sessions_established, 0);

    // A node cannot vote as the witness: node b listening where node a dials its witness is
    // refused by node a (the certificate does not name the witness).
    let fake_witness = Listener::bind(localhost(), cfg_with(B, &[A], keys(0)))
        .await
        .expect("bind");
    let a_to_witness = cfg_with(A, &[W], keys(0));
    refused(
        fake_witness.local_addr(),
        &a_to_witness,
        AuthFailure::BadCertificate,
    )
    .await;

    // The real witness accepts both nodes, and knows which is which.
    let mut witness = Listener::bind(localhost(), cfg_with(W, &[A, B], keys(0)))
        .await
        .expect("bind");
    let from_a = connect(witness.local_addr(), &a_to_witness)
        .await
        .expect("a connects");
    let from_b = connect(witness.local_addr(), &cfg_with(B, &[W], keys(0)))
        .await
        .expect("b connects");
    let mut seen = vec![
        witness.accept().await.expect("accept").peer(),
        witness.accept().await.expect("accept").peer(),
    ];
    seen.sort();
    assert_eq!(seen, [A, B]);
    assert_eq!((from_a.peer(), from_b.peer()), (W, W));
    // A witness session carries no journal shipping.
    let mut s = from_a;
    assert!(s.take_ship_port().is_none() && s.take_copy_port().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silence_are_refused_and_counted() {
    let mut lcfg = cfg(NodeId::A);
    lcfg.handshake_timeout = Duration::from_millis(300);
    let stats = lcfg.stats.clone();
    let listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    let addr = listener.local_addr();

    // An HTTP client: not TLS.
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_to_close(&mut raw).await;
    wait_until("garbage counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::Malformed) == 1
    })
    .await;

    // Silence: closed at the handshake timeout.
    let started = Instant::now();
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    assert!(read_to_close(&mut raw).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    wait_until("timeout counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::Timeout) == 1
    })
    .await;
    assert_eq!(stats.snapshot().sessions_established, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_are_bounded() {
    let mut lcfg = cfg(NodeId::A);
    lcfg.pending_handshakes_max = 2;
    lcfg.pending_handshakes_per_source_max = 10;
    lcfg.handshake_timeout = Duration::from_secs(30);
    let stats = lcfg.stats.clone();
    let mut listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    let addr = listener.local_addr();
    // Two silent connections hold both handshake slots.
    let _slow1 = TcpStream::connect(addr).await.expect("connect");
    let _slow2 = TcpStream::connect(addr).await.expect("connect");
    // Connections are accepted in order: the third finds no slot and is closed unread.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    wait_until("third connection refused", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::TooManyPending) >= 1
    })
    .await;
    assert!(read_to_close(&mut third).await.is_empty());
    // Freeing a slot lets an honest node in.
    drop(_slow1);
    let deadline = Instant::now() + LIMIT;
    let ok = loop {
        assert!(Instant::now() < deadline, "no slot freed within {LIMIT:?}");
        match connect(addr, &cfg(NodeId::B)).await {
            Ok(s) => break s,
            Err(Error::Auth {
                reason: AuthFailure::RejectedByPeer | AuthFailure::Malformed,
                ..
            }) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    };
    let accepted = listener.accept().await.expect("accept");
    assert_eq!(accepted.peer(), B);
    drop(ok);
}

/// A connection from `source` (a loopback address of its own) to `addr`.
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(format!("{source}:0").parse().expect("address"))
        .expect("bind the source address");
    s.connect(addr).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_strangers_cannot_keep_the_peer_out() {
    // Defaults: 64 handshakes at once, 2 per source address, 3 s each.
    let lcfg = cfg(NodeId::A);
    let stats = lcfg.stats.clone();
    let mut listener = Listener::bind("127.0.0.1:0".parse().expect("addr"), lcfg)
        .await
        .expect("bind");
    let addr = listener.local_addr();
    // 200 idle connections from one stranger's address: two hold a slot, the rest are
    // closed unread and counted.
    let mut strangers = Vec::new();
    for _ in 0..200 {
        strangers.push(connect_from("127.0.0.2", addr).await);
    }
    wait_until("198 strangers refused", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::TooManyPending) >= 198
    })
    .await;
    // The peer, from its own address, gets its session at once.
    let started = Instant::now();
    let peer = connect(addr, &cfg(NodeId::B))
        .await
        .expect("the peer is let in");
    let accepted = listener.accept().await.expect("accept");
    let took = started.elapsed();
    eprintln!("peer's session with 200 idle strangers: {took:?}");
    assert_eq!(accepted.peer(), B);
    assert!(took < Duration::from_secs(2), "the peer waited {took:?}");
    assert_eq!(stats.snapshot().sessions_established, 1);
    drop((peer, strangers));
}

/// A client and a listener of the pair through a [`Proxy`]; keepalives far apart, so that
/// the record the proxy alters is the test's.
async fn through_proxy() -> (replicator::Session, replicator::Session, Proxy, LinkConfig) {
    let mut lcfg = cfg(NodeId::A);
    lcfg.keepalive_interval = Duration::from_secs(20);
    lcfg.idle_timeout = Duration::from_secs(30);
    let mut listener = Listener::bind(localhost(), lcfg.clone())
        .await
        .expect("bind");
    let proxy = Proxy::start(listener.local_addr()).await;
    let mut ccfg = cfg(NodeId::B);
    ccfg.keepalive_interval = Duration::from_secs(20);
    ccfg.idle_timeout = Duration::from_secs(30);
    let client = connect(proxy.addr, &ccfg).await.expect("connect");
    let server = listener.accept().await.expect("accept");
    (client, server, proxy, lcfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_record_is_detected_and_the_session_closed() {
    let (client, mut server, proxy, lcfg) = through_proxy().await;
    proxy.arm(Mutation::Tamper, 0);
    client
        .send_control(b"set epoch 7".to_vec())
        .await
        .expect("send");
    match recv_closed(&mut server).await {
        CloseReason::Io(e) => assert!(e.contains("decrypt") || e.contains("MAC"), "{e}"),
        other => panic!("expected a TLS failure, got {other}"),
    }
    assert_eq!(
        lcfg.stats.snapshot().control_received,
        0,
        "the altered message was delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_record_is_rejected() {
    let (client, mut server, proxy, lcfg) = through_proxy().await;
    proxy.arm(Mutation::Replay, 0);
    client
        .send_control(b"vote for epoch 9".to_vec())
        .await
        .expect("send");
    // The copy fails TLS's record check and ends the session; the original may or may not
    // have been handed out before (rustls reports the error first when both arrive
    // together), never twice.
    let closed = loop {
        match tokio::time::timeout(LIMIT, server.recv()).await {
            Ok(Event::Control(m)) => assert_eq!(m, b"vote for epoch 9"),
            Ok(Event::Closed(r)) => break r,
            Err(_) => panic!("session did not close within {LIMIT:?}"),
        }
    };
    match closed {
        CloseReason::Io(e) => assert!(e.contains("decrypt") || e.contains("MAC"), "{e}"),
        other => panic!("expected a TLS failure, got {other}"),
    }
    assert!(lcfg.stats.snapshot().control_received <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_session_carries_is_readable_on_the_wire() {
    let (client, mut server, proxy, _) = through_proxy().await;
    let marker = b"twinrx-wire-marker <134>1 an alarm text";
    client.send_control(marker.to_vec()).await.expect("send");
    assert_eq!(recv_control(&mut server).await, marker);
    server.send_control(marker.to_vec()).await.expect("send");
    let mut client = client;
    assert_eq!(recv_control(&mut client).await, marker);
    let wire = proxy.captured();
    assert!(wire.len() > 1000, "the proxy carried {} bytes", wire.len());
    for needle in [&b"twinrx-wire-marker"[..], b"alarm text", b"TWRXLINK"] {
        assert!(
            !wire.windows(needle.len()).any(|w| w == needle),
            "{:?} is readable on the wire",
            String::from_utf8_lossy(needle)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_an_idle_session_and_a_silent_peer_is_closed() {
    let mut lcfg = cfg(NodeId::A);
    lcfg.keepalive_interval = Duration::from_millis(20);
    lcfg.idle_timeout = Duration::from_millis(300);
    let stats = lcfg.stats.clone();
    let mut listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    let mut ccfg = cfg(NodeId::B);
    ccfg.keepalive_interval = Duration::from_millis(20);
    let client = connect(listener.local_addr(), &ccfg)
        .await
        .expect("connect");
    let server = listener.accept().await.expect("accept");
    // Well over one idle timeout of keepalives; the session holds.
    wait_until("keepalives received", LIMIT, || {
        stats.snapshot().frames_received >= 40
    })
    .await;
    assert_eq!(server.close_reason(), None);
    assert_eq!(client.close_reason(), None);
    drop((client, server));

    // A peer that sends nothing (its keepalive is far longer than our idle timeout).
    let quiet = cfg(NodeId::B); // keepalive 1 s
    let _client = connect(listener.local_addr(), &quiet)
        .await
        .expect("connect");
    let mut server = listener.accept().await.expect("accept");
    assert_eq!(
        recv_closed(&mut server).await,
        CloseReason::IdleTimeout { ms: 300 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_links_carry_heartbeats_independently() {
    // Two configured links (two NICs in production; two ports here), each with its own
    // stats; cutting one leaves the other delivering.
    let mut l1 = Listener::bind(localhost(), cfg(NodeId::A))
        .await
        .expect("bind");
    let mut l2 = Listener::bind(localhost(), cfg(NodeId::A))
        .await
        .expect("bind");
    let nic1 = Proxy::start(l1.local_addr()).await;
    let b1 = connect(nic1.addr, &cfg(NodeId::B))
        .await
        .expect("connect link 1");
    let b2 = connect(l2.local_addr(), &cfg(NodeId::B))
        .await
        .expect("connect link 2");
    let mut a1 = l1.accept().await.expect("accept 1");
    let mut a2 = l2.accept().await.expect("accept 2");
    for (b, a) in [(&b1, &mut a1), (&b2, &mut a2)] {
        b.send_control(b"hb 1".to_vec()).await.expect("send");
        assert_eq!(recv_control(a).await, b"hb 1");
    }
    nic1.cut();
    assert!(matches!(
        recv_closed(&mut a1).await,
        CloseReason::PeerClosed | CloseReason::Io(_)
    ));
    b2.send_control(b"hb 2".to_vec()).await.expect("send");
    assert_eq!(recv_control(&mut a2).await, b"hb 2");
    assert_eq!(l1.stats().snapshot().control_received, 1);
    assert_eq!(l2.stats().snapshot().control_received, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_certificate_files_are_used_by_the_next_session() {
    // Rotation without a restart: a node's files are replaced (a new certificate from the
    // same CA); the next handshake presents it, the running session is not disturbed.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["ca.pem", "b.pem", "b.key"] {
        std::fs::copy(keys(0).join(f), dir.path().join(f)).expect("copy");
    }
    let b_cfg = cfg_with(B, &[A], dir.path());
    let before = b_cfg.credentials.fingerprint();
    let mut listener = Listener::bind(localhost(), cfg(NodeId::A))
        .await
        .expect("bind");
    let first = connect(listener.local_addr(), &b_cfg)
        .await
        .expect("connect");
    let _a1 = listener.accept().await.expect("accept");
    replicator::tls::issue_into(&replicator::tls::ca_key_file(keys(0)), B, 30, dir.path())
        .expect("issue");
    let second = connect(listener.local_addr(), &b_cfg)
        .await
        .expect("connect");
    let _a2 = listener.accept().await.expect("accept");
    let after = b_cfg.credentials.fingerprint();
    assert_ne!(before, after, "the new certificate was not loaded");
    assert_eq!(first.close_reason(), None);
    assert_eq!(second.close_reason(), None);
    // A broken rewrite keeps the last good credentials, and says why.
    std::fs::write(dir.path().join("b.pem"), "not a certificate\n").expect("write");
    let third = connect(listener.local_addr(), &b_cfg)
        .await
        .expect("connect");
    let _a3 = listener.accept().await.expect("accept");
    assert_eq!(b_cfg.credentials.fingerprint(), after);
    assert!(b_cfg
        .credentials
        .reload_error()
        .is_some_and(|e| e.contains("b.pem")));
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_measures_the_peers_clock_offset() {
    let mut lcfg = cfg(NodeId::A);
    lcfg.clock_interval = Duration::from_millis(20);
    let mut listener = Listener::bind(localhost(), lcfg.clone())
        .await
        .expect("bind");
    // Node b's clock runs 3 s ahead.
    let mut ccfg = cfg(NodeId::B);
    ccfg.clock_interval = Duration::from_millis(20);
    ccfg.clock_skew_us = 3_000_000;
    let client = connect(listener.local_addr(), &ccfg)
        .await
        .expect("connect");
    let server = listener.accept().await.expect("accept");
    let (a, b) = (lcfg.stats.clone(), ccfg.stats.clone());
    wait_until("offsets measured on both sides", LIMIT, || {
        a.snapshot().clock_offset_us.is_some() && b.snapshot().clock_offset_us.is_some()
    })
    .await;
    // Let the filter see a few samples.
    let frames = a.snapshot().frames_received;
    wait_until("more samples", LIMIT, || {
        a.snapshot().frames_received >= frames + 8
    })
    .await;
    let (sa, sb) = (a.snapshot(), b.snapshot());
    let (oa, ob) = (
        sa.clock_offset_us.expect("a"),
        sb.clock_offset_us.expect("b"),
    );
    eprintln!(
        "offset seen by a {oa} µs (rtt {:?}), by b {ob} µs (rtt {:?})",
        sa.clock_rtt_us, sb.clock_rtt_us
    );
    assert!((oa - 3_000_000).abs() < 50_000, "a sees b at {oa} µs");
    assert!((ob + 3_000_000).abs() < 50_000, "b sees a at {ob} µs");
    assert!(sa.clock_rtt_us.expect("rtt") >= 0);
    drop((client, server));
}
