//! The cluster link's handshake and frame authentication over real TCP on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{cfg, localhost, wait_until, wrong_psk, Mutation, Proxy};
use replicator::{connect, AuthFailure, CloseReason, Error, Event, LinkConfig, Listener};
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
        assert_eq!(client.peer(), listening);
        assert_eq!(server.peer(), connecting);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranger_with_a_wrong_key_is_refused_and_counted_on_both_sides() {
    let mut listener = Listener::bind(localhost(), cfg(NodeId::A))
        .await
        .expect("bind");
    let stranger = LinkConfig::new(NodeId::B, wrong_psk());
    match connect(listener.local_addr(), &stranger).await {
        Err(Error::Auth {
            reason: AuthFailure::RejectedByPeer,
            ..
        }) => {}
        Err(e) => panic!("expected RejectedByPeer, got {e}"),
        Ok(_) => panic!("a wrong key was accepted"),
    }
    assert_eq!(
        stranger
            .stats
            .snapshot()
            .auth_failures(AuthFailure::RejectedByPeer),
        1
    );
    let stats = listener.stats();
    wait_until("the listener counts a bad proof", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::BadProof) == 1
    })
    .await;

    // The listener never handed the stranger out: the next session is the honest node's.
    let good = connect(listener.local_addr(), &cfg(NodeId::B))
        .await
        .expect("connect");
    let accepted = listener.accept().await.expect("accept");
    assert_eq!(accepted.peer(), NodeId::B);
    assert_eq!(stats.snapshot().sessions_established, 1);
    drop(good);

    // A listener holding the wrong key: the connecting node refuses to trust it, the
    // listener counts the connecting node's proof as bad (the client proves first).
    let impostor_cfg = LinkConfig::new(NodeId::A, wrong_psk());
    let impostor = Listener::bind(localhost(), impostor_cfg.clone())
        .await
        .expect("bind");
    let honest = cfg(NodeId::B);
    match connect(impostor.local_addr(), &honest).await {
        Err(Error::Auth {
            reason: AuthFailure::RejectedByPeer,
            ..
        }) => {}
        other => panic!("expected RejectedByPeer, got {:?}", other.map(|s| s.peer())),
    }
    wait_until("the impostor counts a bad proof", LIMIT, || {
        impostor_cfg
            .stats
            .snapshot()
            .auth_failures(AuthFailure::BadProof)
            == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silence_wrong_node_and_wrong_version_are_refused_and_counted() {
    let mut lcfg = cfg(NodeId::A);
    lcfg.handshake_timeout = Duration::from_millis(300);
    let stats = lcfg.stats.clone();
    let listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    let addr = listener.local_addr();

    // An HTTP client: "GET " read as a length field is far above any handshake frame.
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_to_close(&mut raw).await;
    wait_until("garbage counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::Malformed) == 1
    })
    .await;

    // A well-formed frame of the wrong type gets a REFUSE (type 0x0F, reason 1) and a close.
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    raw.write_all(&[0, 0, 0, 3, 0x10, 0xde, 0xad])
        .await
        .expect("write");
    let got = read_to_close(&mut raw).await;
    assert_eq!(got, [0, 0, 0, 6, 0x0F, 1, 0, 1, 0, 1]);
    wait_until("wrong type counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::Malformed) == 2
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

    // A hello asking for versions 2..=5 only: REFUSE reason 2 with our range 1..=1.
    let mut hello = vec![0, 0, 0, 46, 0x01];
    hello.extend_from_slice(b"TWRXLINK");
    hello.extend_from_slice(&[0, 2, 0, 5, 1]);
    hello.extend_from_slice(&[9u8; 32]);
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    raw.write_all(&hello).await.expect("write");
    assert_eq!(
        read_to_close(&mut raw).await,
        [0, 0, 0, 6, 0x0F, 2, 0, 1, 0, 1]
    );
    wait_until("version counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::Version) == 1
    })
    .await;

    // A node claiming to be A (the listener is A): refused on both sides.
    let twin = cfg(NodeId::A);
    match connect(addr, &twin).await {
        Err(Error::Auth {
            reason: AuthFailure::WrongNode,
            ..
        }) => {}
        Err(e) => panic!("expected WrongNode, got {e}"),
        Ok(_) => panic!("a second node A was accepted"),
    }
    wait_until("wrong node counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::WrongNode) == 1
    })
    .await;
    assert_eq!(stats.snapshot().sessions_established, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_are_bounded() {
    let mut lcfg = cfg(NodeId::A);
    lcfg.pending_handshakes_max = 2;
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
                reason: AuthFailure::RejectedByPeer,
                ..
            }) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    };
    let accepted = listener.accept().await.expect("accept");
    assert_eq!(accepted.peer(), NodeId::B);
    drop(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_frame_is_detected_and_the_session_closed() {
    let lcfg = cfg(NodeId::A);
    let stats = lcfg.stats.clone();
    let mut listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    // Frame 2 is the client's first authenticated frame: flip a bit of its payload.
    let proxy = Proxy::start(
        listener.local_addr(),
        Mutation::Tamper {
            frame: 2,
            byte: Some(3),
        },
    )
    .await;
    let mut client = connect(proxy.addr, &cfg(NodeId::B)).await.expect("connect");
    let mut server = listener.accept().await.expect("accept");
    client
        .send_control(b"set epoch 7".to_vec())
        .await
        .expect("send");
    assert_eq!(
        recv_closed(&mut server).await,
        CloseReason::BadFrameMac { counter: 0 }
    );
    assert_eq!(stats.snapshot().auth_failures(AuthFailure::FrameMac), 1);
    assert_eq!(
        stats.snapshot().control_received,
        0,
        "the altered message was delivered"
    );
    // The server closed the connection: the client sees it too.
    assert!(matches!(
        recv_closed(&mut client).await,
        CloseReason::PeerClosed | CloseReason::Io(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_frame_is_rejected() {
    let lcfg = cfg(NodeId::A);
    let stats = lcfg.stats.clone();
    let mut listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    let proxy = Proxy::start(listener.local_addr(), Mutation::Replay { frame: 2 }).await;
    let client = connect(proxy.addr, &cfg(NodeId::B)).await.expect("connect");
    let mut server = listener.accept().await.expect("accept");
    client
        .send_control(b"vote for epoch 9".to_vec())
        .await
        .expect("send");
    // Delivered once; its copy fails at counter 1 and ends the session.
    assert_eq!(recv_control(&mut server).await, b"vote for epoch 9");
    assert_eq!(
        recv_closed(&mut server).await,
        CloseReason::BadFrameMac { counter: 1 }
    );
    assert_eq!(stats.snapshot().control_received, 1);
    assert_eq!(stats.snapshot().auth_failures(AuthFailure::FrameMac), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_handshake_fails_the_handshake() {
    let lcfg = cfg(NodeId::A);
    let stats = lcfg.stats.clone();
    let listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    // Frame 1 is the client's proof: one flipped bit and it no longer verifies.
    let proxy = Proxy::start(
        listener.local_addr(),
        Mutation::Tamper {
            frame: 1,
            byte: None,
        },
    )
    .await;
    match connect(proxy.addr, &cfg(NodeId::B)).await {
        Err(Error::Auth {
            reason: AuthFailure::RejectedByPeer,
            ..
        }) => {}
        other => panic!("expected RejectedByPeer, got {:?}", other.map(|s| s.peer())),
    }
    wait_until("bad proof counted", LIMIT, || {
        stats.snapshot().auth_failures(AuthFailure::BadProof) == 1
    })
    .await;
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
    let nic1 = Proxy::start(l1.local_addr(), Mutation::None).await;
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
async fn an_oversized_frame_closes_the_session_before_it_is_read() {
    let lcfg = cfg(NodeId::A);
    let mut listener = Listener::bind(localhost(), lcfg).await.expect("bind");
    let proxy = Proxy::start(
        listener.local_addr(),
        Mutation::Length {
            frame: 2,
            len: u32::MAX,
        },
    )
    .await;
    let client = connect(proxy.addr, &cfg(NodeId::B)).await.expect("connect");
    let mut server = listener.accept().await.expect("accept");
    client.send_control(b"hb".to_vec()).await.expect("send");
    assert_eq!(
        recv_closed(&mut server).await,
        CloseReason::FrameTooLarge {
            len: u32::MAX,
            max: replicator::FRAME_BYTES_MAX_DEFAULT
        }
    );
}
