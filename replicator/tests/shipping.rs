//! Journal shipping over real TCP on 127.0.0.1 between real journals in temp dirs.
//!
//! Node A listens and keeps the copy of node B's journal (copier); node B connects and ships
//! its journal (shipper) — the direction does not matter to the protocol.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    assert_prefix, assert_same, cfg, fill, localhost, open, payload, wait_until, Mutation, Proxy,
};
use journal::{FsyncPolicy, JournalHandle};
use replicator::{
    connect, CopyConfig, Error, Event, JournalCopier, JournalShipper, LinkConfig, Listener,
    Session, ShipConfig,
};
use tokio::task::JoinHandle;
use twinrx_types::{NodeId, Seq};

const LIMIT: Duration = Duration::from_secs(20);

/// One session with a shipper and a copier running over it.
struct Running {
    copier: JoinHandle<(JournalCopier, Error)>,
    shipper: JoinHandle<(JournalShipper, Error)>,
    /// A's session (copier side), B's session (shipper side); dropping them closes the link.
    a: Session,
    b: Session,
}

async fn start(
    listener: &mut Listener,
    via: Option<SocketAddr>,
    b_cfg: &LinkConfig,
    mut shipper: JournalShipper,
    mut copier: JournalCopier,
) -> Running {
    let mut b = connect(via.unwrap_or(listener.local_addr()), b_cfg)
        .await
        .expect("connect");
    let mut a = listener.accept().await.expect("accept");
    let ship_port = b.take_ship_port().expect("ship port");
    let copy_port = a.take_copy_port().expect("copy port");
    let shipper = tokio::spawn(async move {
        let e = shipper.run(ship_port).await;
        (shipper, e)
    });
    let copier = tokio::spawn(async move {
        let e = copier.run(copy_port).await;
        (copier, e)
    });
    Running {
        copier,
        shipper,
        a,
        b,
    }
}

impl Running {
    /// Closes the link and returns both ends with why they stopped.
    async fn stop(self) -> (JournalShipper, Error, JournalCopier, Error) {
        let Running {
            copier,
            shipper,
            a,
            b,
        } = self;
        drop((a, b));
        Running::join(shipper, copier).await
    }

    /// Waits for both ends to stop by themselves (the sessions stay open meanwhile).
    async fn finish(self) -> (JournalShipper, Error, JournalCopier, Error) {
        let Running {
            copier,
            shipper,
            a,
            b,
        } = self;
        let out = Running::join(shipper, copier).await;
        drop((a, b));
        out
    }

    /// Waits for both ends to stop by themselves and hands back the sessions, still open.
    async fn finish_keep_sessions(
        self,
    ) -> (
        JournalShipper,
        Error,
        JournalCopier,
        Error,
        Session,
        Session,
    ) {
        let Running {
            copier,
            shipper,
            a,
            b,
        } = self;
        let (s, se, c, ce) = Running::join(shipper, copier).await;
        (s, se, c, ce, a, b)
    }

    async fn join(
        shipper: JoinHandle<(JournalShipper, Error)>,
        copier: JoinHandle<(JournalCopier, Error)>,
    ) -> (JournalShipper, Error, JournalCopier, Error) {
        let (s, se) = tokio::time::timeout(LIMIT, shipper)
            .await
            .expect("shipper ends")
            .expect("shipper task");
        let (c, ce) = tokio::time::timeout(LIMIT, copier)
            .await
            .expect("copier ends")
            .expect("copier task");
        (s, se, c, ce)
    }
}

fn durable(h: &JournalHandle) -> u64 {
    h.durable_seq().map_or(0, |s| s.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_100k_records_with_identical_seqs_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = open(&dir.path().join("b"), FsyncPolicy::Never);
    const N: u64 = 100_000;
    const LEN: usize = 200;
    fill(&mut source, "b", N, LEN);
    let copy = open(&dir.path().join("copy-of-b"), FsyncPolicy::Batch);
    let copy_handle = copy.handle();

    let a_cfg = cfg(NodeId::A);
    let b_cfg = cfg(NodeId::B);
    let mut listener = Listener::bind(localhost(), a_cfg.clone())
        .await
        .expect("bind");
    let started = Instant::now();
    let run = start(
        &mut listener,
        None,
        &b_cfg,
        JournalShipper::new(source.handle(), ShipConfig::default()),
        JournalCopier::new(copy, CopyConfig::default()),
    )
    .await;
    wait_until("all records copied", Duration::from_secs(60), || {
        durable(&copy_handle) == N
    })
    .await;
    let elapsed = started.elapsed();
    let b_stats = b_cfg.stats.clone();
    wait_until("all records acknowledged", LIMIT, || {
        b_stats.snapshot().ship_acked_seq == N
    })
    .await;
    let mb = (N as f64 * LEN as f64) / 1e6;
    println!(
        "shipped {N} records of {LEN} B in {:.3} s: {:.0} records/s, {:.1} MB/s of payload (this build's profile)",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64(),
        mb / elapsed.as_secs_f64()
    );
    assert_same(&source.handle(), &copy_handle, 1, N);
    let b = b_stats.snapshot();
    let a = a_cfg.stats.snapshot();
    assert_eq!(b.records_shipped, N);
    assert_eq!(a.records_copied, N);
    assert_eq!(b.lag_records, 0);
    assert_eq!(b.in_flight_bytes, 0);
    assert_eq!(a.copy_durable_seq, N);
    // A live tail: records appended now are shipped without a new request.
    fill(&mut source, "b", N + 10, LEN);
    wait_until("tail shipped", LIMIT, || durable(&copy_handle) == N + 10).await;
    let (_, se, _, ce) = run.stop().await;
    assert!(matches!(se, Error::Closed(_)), "{se}");
    assert!(matches!(ce, Error::Closed(_)), "{ce}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_the_link_is_cut_mid_stream_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = open(&dir.path().join("b"), FsyncPolicy::Never);
    fill(&mut source, "b", 30_000, 150);
    let copy = open(&dir.path().join("copy-of-b"), FsyncPolicy::Batch);
    let copy_handle = copy.handle();
    let a_cfg = cfg(NodeId::A);
    let b_cfg = cfg(NodeId::B);
    let mut listener = Listener::bind(localhost(), a_cfg.clone())
        .await
        .expect("bind");
    let proxy = Proxy::start(listener.local_addr()).await;
    // Small batches and a slightly slow copy, so that the cuts land mid-stream.
    let ship_cfg = ShipConfig {
        batch_bytes_max: 16 << 10,
        ..ShipConfig::default()
    };
    let copy_cfg = CopyConfig {
        window_bytes: 128 << 10,
        append_delay: Some(Duration::from_millis(1)),
        ..CopyConfig::default()
    };
    let mut shipper = JournalShipper::new(source.handle(), ship_cfg);
    let mut copier = JournalCopier::new(copy, copy_cfg);
    for (cut_at, total) in [(5_000, 30_000), (20_000, 40_000)] {
        let run = start(&mut listener, Some(proxy.addr), &b_cfg, shipper, copier).await;
        wait_until("copy reaches the cut point", LIMIT, || {
            durable(&copy_handle) >= cut_at
        })
        .await;
        proxy.cut();
        let (s, se, c, ce) = run.finish().await;
        assert!(matches!(se, Error::Closed(_)), "shipper: {se}");
        assert!(matches!(ce, Error::Closed(_)), "copier: {ce}");
        let at_cut = durable(&copy_handle);
        assert!(at_cut < 30_000, "the cut came after the end ({at_cut})");
        // While disconnected, node B journals more.
        fill(&mut source, "b", total, 150);
        shipper = s;
        copier = c;
    }
    let run = start(&mut listener, Some(proxy.addr), &b_cfg, shipper, copier).await;
    wait_until("copy complete", LIMIT, || durable(&copy_handle) == 40_000).await;
    assert_same(&source.handle(), &copy_handle, 1, 40_000);
    let a = a_cfg.stats.snapshot();
    assert_eq!(a.sessions_established, 3);
    assert_eq!(a.reconnects, 2);
    // Nothing was appended twice: the records appended equal the seqs the copy holds
    // (counted just after the append that made them durable).
    let a_stats = a_cfg.stats.clone();
    wait_until("copier counts its last append", LIMIT, || {
        a_stats.snapshot().records_copied >= 40_000
    })
    .await;
    assert_eq!(a_stats.snapshot().records_copied, 40_000);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_copy_follows_a_peer_journal_that_starts_later_and_a_gap_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = open(&dir.path().join("b"), FsyncPolicy::Batch);
    // Retention removed the beginning: the peer's journal starts at 1000.
    source.reset_to(Seq(1000)).expect("reset");
    fill(&mut source, "b", 1499, 100);
    assert_eq!(source.handle().first_seq(), Seq(1000));

    let a_cfg = cfg(NodeId::A);
    let b_cfg = cfg(NodeId::B);
    let mut listener = Listener::bind(localhost(), a_cfg.clone())
        .await
        .expect("bind");
    let copy = open(&dir.path().join("copy-of-b"), FsyncPolicy::Batch);
    let copy_handle = copy.handle();
    let run = start(
        &mut listener,
        None,
        &b_cfg,
        JournalShipper::new(source.handle(), ShipConfig::default()),
        JournalCopier::new(copy, CopyConfig::default()),
    )
    .await;
    wait_until("copy complete", LIMIT, || durable(&copy_handle) == 1499).await;
    assert_same(&source.handle(), &copy_handle, 1000, 1499);
    run.stop().await;

    // A copy holding 1..=10 cannot continue from a journal that starts at 1000.
    let mut holey = open(&dir.path().join("old-copy"), FsyncPolicy::Batch);
    let early: Vec<Vec<u8>> = (1..=10).map(|s| payload("b", s, 100)).collect();
    holey.append_batch(&early).expect("append");
    let holey_handle = holey.handle();
    let run = start(
        &mut listener,
        None,
        &b_cfg,
        JournalShipper::new(source.handle(), ShipConfig::default()),
        JournalCopier::new(holey, CopyConfig::default()),
    )
    .await;
    let (_, se, _, ce) = run.finish().await;
    match (&se, &ce) {
        (
            Error::Gap {
                node: sn,
                copy_next: Seq(11),
                peer_first: Seq(1000),
            },
            Error::Gap {
                node: cn,
                copy_next: Seq(11),
                peer_first: Seq(1000),
            },
        ) => {
            assert_eq!((*sn, *cn), (NodeId::B, NodeId::B));
        }
        _ => panic!("expected a gap on both sides, got shipper: {se}; copier: {ce}"),
    }
    assert_eq!(durable(&holey_handle), 10, "nothing appended after the gap");
    assert_eq!(a_cfg.stats.snapshot().gaps, 1);
    assert_eq!(b_cfg.stats.snapshot().gaps, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_or_wiped_peer_journal_is_reported_as_divergence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p1 = open(&dir.path().join("b1"), FsyncPolicy::Batch);
    fill(&mut p1, "first life", 1000, 120);
    let a_cfg = cfg(NodeId::A);
    let b_cfg = cfg(NodeId::B);
    let mut listener = Listener::bind(localhost(), a_cfg.clone())
        .await
        .expect("bind");
    let copy = open(&dir.path().join("copy-of-b"), FsyncPolicy::Batch);
    let copy_handle = copy.handle();
    let run = start(
        &mut listener,
        None,
        &b_cfg,
        JournalShipper::new(p1.handle(), ShipConfig::default()),
        JournalCopier::new(copy, CopyConfig::default()),
    )
    .await;
    wait_until("copy complete", LIMIT, || durable(&copy_handle) == 1000).await;
    let (_, _, mut copier, _) = run.stop().await;

    // Node B's data dir replaced by another journal that has the same seqs and more.
    let mut p2 = open(&dir.path().join("b2"), FsyncPolicy::Batch);
    fill(&mut p2, "second life", 1500, 120);
    // Node B wiped and restarted from seq 1 (F15): its journal is shorter than the copy.
    let mut p3 = open(&dir.path().join("b3"), FsyncPolicy::Batch);
    fill(&mut p3, "third life", 10, 120);
    for (peer, what) in [
        (&p2, "the record at this seq differs"),
        (&p3, "ends at seq 10"),
    ] {
        let run = start(
            &mut listener,
            None,
            &b_cfg,
            JournalShipper::new(peer.handle(), ShipConfig::default()),
            copier,
        )
        .await;
        let (_, se, c, ce, mut a, b) = run.finish_keep_sessions().await;
        // Shipping stopped; the link itself stays up for the HA core's messages.
        assert_eq!(a.close_reason(), None);
        b.send_control(b"heartbeat".to_vec()).await.expect("send");
        match tokio::time::timeout(LIMIT, a.recv()).await {
            Ok(Event::Control(m)) => assert_eq!(m, b"heartbeat"),
            other => panic!("expected a heartbeat after the divergence, got {other:?}"),
        }
        drop((a, b));
        for e in [&se, &ce] {
            match e {
                Error::Diverged {
                    node: NodeId::B,
                    seq: Seq(1000),
                    detail,
                } => {
                    assert!(detail.contains(what), "{detail}");
                }
                other => panic!("expected divergence at 1000, got {other}"),
            }
        }
        copier = c;
        // The copy is untouched: still the first life's 1..=1000.
        assert_same(&p1.handle(), &copy_handle, 1, 1000);
    }
    assert_eq!(a_cfg.stats.snapshot().divergences, 2);
    assert_eq!(b_cfg.stats.snapshot().divergences, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_copy_holds_the_sender_to_its_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = open(&dir.path().join("b"), FsyncPolicy::Never);
    const N: u64 = 1000;
    fill(&mut source, "b", N, 1000);
    const WINDOW: u32 = 64 << 10;
    let a_cfg = cfg(NodeId::A);
    let b_cfg = cfg(NodeId::B);
    let mut listener = Listener::bind(localhost(), a_cfg.clone())
        .await
        .expect("bind");
    let copy = open(&dir.path().join("copy-of-b"), FsyncPolicy::Batch);
    let copy_handle = copy.handle();
    let run = start(
        &mut listener,
        None,
        &b_cfg,
        JournalShipper::new(
            source.handle(),
            ShipConfig {
                batch_bytes_max: 8 << 10,
                ..ShipConfig::default()
            },
        ),
        JournalCopier::new(
            copy,
            CopyConfig {
                window_bytes: WINDOW,
                append_delay: Some(Duration::from_millis(10)),
                ..CopyConfig::default()
            },
        ),
    )
    .await;
    let stats = b_cfg.stats.clone();
    let mut samples = 0;
    wait_until("copy complete", Duration::from_secs(30), || {
        let s = stats.snapshot();
        assert!(
            s.in_flight_bytes <= u64::from(WINDOW),
            "in flight {} > window",
            s.in_flight_bytes
        );
        samples += 1;
        durable(&copy_handle) == N
    })
    .await;
    let s = stats.snapshot();
    println!(
        "slow copy: window {WINDOW} B, in-flight peak {} B, {samples} samples",
        s.in_flight_bytes_max
    );
    assert_eq!(s.window_bytes, u64::from(WINDOW));
    assert!(s.in_flight_bytes_max <= u64::from(WINDOW));
    // The sender really was held back: it filled the window and waited.
    assert!(
        s.in_flight_bytes_max >= u64::from(WINDOW) / 2,
        "peak {}",
        s.in_flight_bytes_max
    );
    assert_same(&source.handle(), &copy_handle, 1, N);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_messages_overtake_a_large_journal_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = open(&dir.path().join("b"), FsyncPolicy::Never);
    const N: u64 = 200_000;
    fill(&mut source, "b", N, 200);
    let a_cfg = cfg(NodeId::A);
    let b_cfg = cfg(NodeId::B);
    let mut listener = Listener::bind(localhost(), a_cfg.clone())
        .await
        .expect("bind");
    let copy = open(&dir.path().join("copy-of-b"), FsyncPolicy::Batch);
    let copy_handle = copy.handle();
    let mut run = start(
        &mut listener,
        None,
        &b_cfg,
        JournalShipper::new(source.handle(), ShipConfig::default()),
        JournalCopier::new(copy, CopyConfig::default()),
    )
    .await;
    wait_until("shipping under way", LIMIT, || durable(&copy_handle) > 1000).await;

    // B sends heartbeats every 2 ms while its backlog ships (each sent while the copy is
    // still behind); A timestamps their arrival.
    const MESSAGES_MAX: usize = 100;
    let mut a = run.a;
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(LIMIT, a.recv()).await {
                Ok(Event::Control(m)) if m == b"end" => break,
                Ok(Event::Control(m)) => got.push((m, Instant::now())),
                other => panic!("expected heartbeats, got {other:?}"),
            }
        }
        (a, got)
    });
    let mut sent_at = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for i in 0..MESSAGES_MAX {
        tick.tick().await;
        if durable(&copy_handle) >= N {
            break;
        }
        sent_at.push(Instant::now());
        run.b
            .send_control(format!("heartbeat {i}").into_bytes())
            .await
            .expect("send");
    }
    let behind = N - durable(&copy_handle);
    run.b.send_control(b"end".to_vec()).await.expect("send");
    let (a, got) = tokio::time::timeout(LIMIT, receiver)
        .await
        .expect("received")
        .expect("task");
    run.a = a;
    assert_eq!(got.len(), sent_at.len(), "every heartbeat delivered");
    assert!(
        got.len() >= 10,
        "only {} heartbeats went out during the backlog: the test measured too little",
        got.len()
    );
    let mut latencies: Vec<Duration> = got
        .iter()
        .enumerate()
        .map(|(i, (m, at))| {
            assert_eq!(
                m,
                format!("heartbeat {i}").as_bytes(),
                "in order, none lost"
            );
            at.duration_since(sent_at[i])
        })
        .collect();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    println!(
        "control latency under a journal backlog: p50 {:.2} ms, max {:.2} ms over {} messages; copy {behind} records behind after the last",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        latencies.len()
    );
    assert!(
        max < Duration::from_millis(200),
        "heartbeat waited {max:?} behind journal data"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_replayed_journal_batch_is_never_appended() {
    use replicator::CloseReason;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = open(&dir.path().join("b"), FsyncPolicy::Batch);
    fill(&mut source, "b", 2000, 100);
    let ship_cfg = ShipConfig {
        batch_records_max: 100,
        ..ShipConfig::default()
    };
    for (i, mutation) in [Mutation::Tamper, Mutation::Replay].into_iter().enumerate() {
        let a_cfg = cfg(NodeId::A);
        let b_cfg = cfg(NodeId::B);
        let mut listener = Listener::bind(localhost(), a_cfg.clone())
            .await
            .expect("bind");
        let proxy = Proxy::start(listener.local_addr()).await;
        // The first TLS record from node b of over 4 KiB carries journal data (a batch of
        // 100 records of 100 bytes; handshake records are smaller).
        proxy.arm(mutation, 4096);
        let copy = open(&dir.path().join(format!("copy-{i}")), FsyncPolicy::Batch);
        let copy_handle = copy.handle();
        let run = start(
            &mut listener,
            Some(proxy.addr),
            &b_cfg,
            JournalShipper::new(source.handle(), ship_cfg),
            JournalCopier::new(copy, CopyConfig::default()),
        )
        .await;
        let (_, _, _, ce) = run.finish().await;
        match ce {
            Error::Closed(CloseReason::Io(e)) => {
                assert!(
                    e.contains("decrypt") || e.contains("MAC"),
                    "{mutation:?}: {e}"
                )
            }
            other => panic!("{mutation:?}: expected the copier to close on TLS, got {other}"),
        }
        // Only whole batches that passed TLS's check were appended, and they are the
        // source's records exactly.
        let copied = durable(&copy_handle);
        assert!(copied < 2000, "{mutation:?}: {copied} records copied");
        assert_eq!(
            copied % 100,
            0,
            "{mutation:?}: a partial batch was appended"
        );
        if copied > 0 {
            assert_prefix(&source.handle(), &copy_handle, copied);
        }
        eprintln!("{mutation:?}: {copied} records copied before the altered record");
        assert_eq!(a_cfg.stats.snapshot().records_copied, copied);
    }
}

/// The figure for the README: `cargo test --release -p replicator --test shipping --
/// --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release"]
async fn throughput_1m_records() {
    for (n, len) in [(1_000_000u64, 200usize), (100_000, 2000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut source = open(&dir.path().join("b"), FsyncPolicy::Never);
        fill(&mut source, "b", n, len);
        let copy = open(&dir.path().join("copy-of-b"), FsyncPolicy::Batch);
        let copy_handle = copy.handle();
        let mut listener = Listener::bind(localhost(), cfg(NodeId::A))
            .await
            .expect("bind");
        let b_cfg = cfg(NodeId::B);
        let started = Instant::now();
        let run = start(
            &mut listener,
            None,
            &b_cfg,
            JournalShipper::new(source.handle(), ShipConfig::default()),
            JournalCopier::new(copy, CopyConfig::default()),
        )
        .await;
        wait_until("all copied", Duration::from_secs(300), || {
            durable(&copy_handle) == n
        })
        .await;
        let secs = started.elapsed().as_secs_f64();
        let s = b_cfg.stats.snapshot();
        println!(
            "{n} records of {len} B: {secs:.2} s, {:.0} records/s, {:.1} MB/s payload, {:.1} MB/s on the wire",
            n as f64 / secs,
            (n as f64 * len as f64) / 1e6 / secs,
            s.bytes_sent as f64 / 1e6 / secs,
        );
        run.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_interval_fsync_acknowledges_only_what_it_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = open(&dir.path().join("b"), FsyncPolicy::Batch);
    fill(&mut source, "b", 5000, 100);
    let a_cfg = cfg(NodeId::A);
    let b_cfg = cfg(NodeId::B);
    let mut listener = Listener::bind(localhost(), a_cfg.clone())
        .await
        .expect("bind");
    let copy = open(
        &dir.path().join("copy-of-b"),
        FsyncPolicy::Interval { ms: 20 },
    );
    let copy_handle = copy.handle();
    let run = start(
        &mut listener,
        None,
        &b_cfg,
        JournalShipper::new(source.handle(), ShipConfig::default()),
        JournalCopier::new(copy, CopyConfig::default()),
    )
    .await;
    let b_stats = b_cfg.stats.clone();
    let copy_for_check = copy_handle.clone();
    wait_until("all acknowledged", LIMIT, || {
        let acked = b_stats.snapshot().ship_acked_seq;
        // Never acknowledged beyond what the copy made durable.
        assert!(
            acked <= durable(&copy_for_check),
            "ack {acked} ahead of the copy"
        );
        acked == 5000
    })
    .await;
    assert_same(&source.handle(), &copy_handle, 1, 5000);
    run.stop().await;
}
