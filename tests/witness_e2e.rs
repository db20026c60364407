//! End-to-end: the built `twinrx witness` as a real process, a test client acting as node a or
//! node b over the real cluster link (`replicator::connect`, PSK) speaking real `ha` messages
//! (`ha::wire`), real signals, the state file read from disk.

mod common;

use common::*;
use ha::{HaMsg, Health, LogPos, Role};
use replicator::{AuthFailure, LinkConfig, Party, Session};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use twinrx_types::{Epoch, Millis, NodeId, Offset};

/// The pair's key directory (`twinrx keys init`), one per test process.
fn keys() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d =
            std::env::temp_dir().join(format!("twinrx-witness-e2e-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        write_keys(&d);
        d
    })
}

struct TestWitness {
    ip: Ipv4Addr,
    dir: PathBuf,
    config: PathBuf,
    admin: String,
    child: Option<Child>,
    log: PathBuf,
}

impl TestWitness {
    /// A config on its own loopback address: link 7402, admin 7403, data in `dir/data`.
    fn new(dir: &Path) -> TestWitness {
        let ip = unique_ip();
        let config = dir.join("witness.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{ip}:7402\"\nadmin_listen = \"{ip}:7403\"\n\
                 data_dir = \"data\"\n{}",
                creds(keys(), "witness")
            ),
        )
        .expect("write config");
        TestWitness {
            ip,
            dir: dir.to_path_buf(),
            config,
            admin: format!("http://{ip}:7403"),
            child: None,
            log: dir.join("witness.log"),
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 7402))
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("data").join("witness.json")
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("witness log");
        let child = Command::new(BIN)
            .args(["witness", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,twinrx::witness=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn twinrx witness");
        self.child = Some(child);
        let url = format!("{}/status", self.admin);
        let log = self.log.clone();
        wait_for("the witness's admin API", Duration::from_secs(20), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "witness exited during start-up ({st}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            get_json(&url)
        });
    }

    fn status(&self) -> serde_json::Value {
        get_json(&format!("{}/status", self.admin)).expect("witness status")
    }

    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("witness running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        wait_for("the witness to exit", Duration::from_secs(10), || {
            child.try_wait().ok().flatten()
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestWitness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let admin = self.child.is_some().then_some(self.admin.as_str());
            keep_evidence(&[Evidence::new("witness", &self.log, admin)], None);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the state file holds: (voted epoch, recorded log epoch, recorded end).
fn read_state(path: &Path) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(path).expect("state file exists");
    let v: serde_json::Value = serde_json::from_str(&text).expect("state file is JSON");
    let n = |p: &str| v.pointer(p).and_then(|x| x.as_u64()).expect(p);
    (n("/voted_epoch"), n("/record/log_epoch"), n("/record/end"))
}

/// A node of the pair, as far as the witness can tell: a cluster-link session with the key.
struct TestNodeClient {
    rt: tokio::runtime::Runtime,
    session: Session,
    node: NodeId,
    clock: u64,
}

fn runtime() -> tokio::runtime::Runtime {
    // Multi-threaded: the session's keepalives run while the test waits on the witness.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Node `node`'s link to the witness, with the certificate in `cert_dir` (the pair's keys:
/// [`keys`]) and the pair's CA.
fn link_with(node: NodeId, cert_dir: &Path, who: Party) -> LinkConfig {
    let creds = replicator::Credentials::load(
        &replicator::tls::ca_file(keys()),
        &replicator::tls::cert_file(cert_dir, who),
        &replicator::tls::key_file(cert_dir, who),
    )
    .expect("credentials");
    LinkConfig::new(
        Party::Node(node),
        &[Party::Witness],
        std::sync::Arc::new(creds),
    )
}

fn link(node: NodeId) -> LinkConfig {
    link_with(node, keys(), Party::Node(node))
}

impl TestNodeClient {
    fn connect(addr: SocketAddr, node: NodeId) -> TestNodeClient {
        let rt = runtime();
        let session = rt
            .block_on(replicator::connect(addr, &link(node)))
            .expect("the witness accepts a node of the pair");
        assert_eq!(session.peer(), Party::Witness);
        TestNodeClient {
            rt,
            session,
            node,
            clock: 1000,
        }
    }

    fn send_raw(&self, bytes: Vec<u8>) {
        self.rt
            .block_on(self.session.send_control(bytes))
            .expect("send on the session");
    }

    fn send(&self, msg: &HaMsg) {
        let mut bytes = Vec::new();
        ha::wire::encode(msg, &mut bytes);
        self.send_raw(bytes);
    }

    /// Sends `make(sent_at)` and returns the witness's answer to it (matched by its echo).
    fn ask(&mut self, make: impl Fn(Millis) -> HaMsg) -> HaMsg {
        self.ask_until(make, |_| true)
    }

    /// Sends `make(sent_at)` and returns the first answer to it that `wanted` accepts.
    fn ask_until(
        &mut self,
        make: impl Fn(Millis) -> HaMsg,
        wanted: impl Fn(&HaMsg) -> bool,
    ) -> HaMsg {
        self.clock += 1;
        let sent_at = Millis(self.clock);
        self.send(&make(sent_at));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.session.recv()).await })
                .unwrap_or_else(|_| panic!("no answer from the witness within 10 s"));
            let bytes = match ev {
                replicator::Event::Control(b) => b,
                replicator::Event::Closed(r) => panic!("the witness closed the session: {r}"),
            };
            let msg = ha::wire::decode(&bytes).expect("the witness sends valid HA messages");
            let echo = match &msg {
                HaMsg::VoteReply { echo, .. } | HaMsg::LeaseReply { echo, .. } => *echo,
                other => panic!("unexpected message from the witness: {other:?}"),
            };
            if echo == sent_at && wanted(&msg) {
                return msg;
            }
        }
    }

    fn vote(&mut self, epoch: u64, log: LogPos) -> HaMsg {
        let node = self.node;
        self.ask(|sent_at| HaMsg::VoteRequest {
            epoch: Epoch(epoch),
            candidate: node,
            log,
            sent_at,
        })
    }

    /// Asks for the vote until granted, as a candidate does while the witness's promise runs.
    fn vote_until_granted(&mut self, epoch: u64, log: LogPos) -> HaMsg {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let reply = self.vote(epoch, log);
            match reply {
                HaMsg::VoteReply { granted: true, .. } => return reply,
                HaMsg::VoteReply {
                    granted: false,
                    wait_ms,
                    ..
                } if wait_ms > 0 && Instant::now() < deadline => {
                    // The witness said how long its promise still runs: poll until then.
                    std::thread::sleep(Duration::from_millis(wait_ms.clamp(5, 100)));
                }
                other => panic!("vote for epoch {epoch} refused for good: {other:?}"),
            }
        }
    }

    /// A lease request, and the answer that records `record`: a renewal that only moves the
    /// record is granted at once with the record already durable, and answered again once
    /// the new one is.
    fn lease_recorded(&mut self, epoch: u64, record: LogPos) -> HaMsg {
        self.lease_until(
            epoch,
            record,
            |m| matches!(m, HaMsg::LeaseReply { recorded, .. } if *recorded == record),
        )
    }

    fn lease_until(
        &mut self,
        epoch: u64,
        record: LogPos,
        wanted: impl Fn(&HaMsg) -> bool,
    ) -> HaMsg {
        let node = self.node;
        self.ask_until(
            |sent_at| HaMsg::LeaseRequest {
                epoch: Epoch(epoch),
                node,
                sent_at,
                record,
            },
            wanted,
        )
    }
}

fn pos(log_epoch: u64, end: u64) -> LogPos {
    LogPos {
        log_epoch: Epoch(log_epoch),
        end: Offset(end),
    }
}

/// Runs `cmd` to its exit (bounded) and returns the status and stderr.
fn run_to_exit(cmd: &mut Command) -> (ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn twinrx");
    let st = wait_for("twinrx to exit", Duration::from_secs(20), || {
        child.try_wait().ok().flatten()
    });
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("read stderr");
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).expect("read stdout");
    }
    (st, format!("{out}{err}"))
}

#[test]
fn a_vote_is_persisted_before_the_answer_and_remembered_across_a_restart() {
    let s = Scratch::new("witness-vote");
    let mut w = TestWitness::new(s.path());
    w.start();

    let mut a = TestNodeClient::connect(w.addr(), NodeId::A);
    // Right after start the witness promises for lease + margin (it may have granted a lease
    // just before a restart), so node a is told to wait, then granted.
    let reply = a.vote_until_granted(1, pos(0, 0));
    assert_eq!(
        reply,
        HaMsg::VoteReply {
            epoch: Epoch(1),
            granted: true,
            voter_epoch: Epoch(1),
            wait_ms: 0,
            echo: Millis(a.clock),
        }
    );
    // Read at once, no waiting: the vote was durable before the answer left.
    assert_eq!(read_state(&w.state_file()), (1, 0, 0));

    // As active of epoch 1, node a renews its lease and has its committed position recorded
    // (the grant leaves at once; the answer naming the new record after its fsync).
    let reply = a.lease_recorded(1, pos(1, 10));
    assert!(
        matches!(reply, HaMsg::LeaseReply { granted: true, recorded, .. } if recorded == pos(1, 10)),
        "{reply:?}"
    );
    assert_eq!(read_state(&w.state_file()), (1, 1, 10));

    let st = w.status();
    assert_eq!(st["voted_epoch"], 1, "{st:#}");
    assert_eq!(st["recorded"]["log_epoch"], 1, "{st:#}");
    assert_eq!(st["recorded"]["end"], 10, "{st:#}");
    assert_eq!(st["nodes"]["a"]["connected"], true, "{st:#}");
    assert!(st["nodes"]["a"]["last_heard"].is_string(), "{st:#}");
    assert!(
        st["nodes"]["a"]["sessions"][0]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.")),
        "{st:#}"
    );
    assert_eq!(st["nodes"]["b"]["connected"], false, "{st:#}");
    assert_eq!(st["votes"]["granted"], 1, "{st:#}");
    assert_eq!(st["leases"]["granted"], 1, "{st:#}");

    // A second witness on the same data_dir is refused (two voters sharing one record).
    let (code, text) = run_to_exit(
        Command::new(BIN)
            .args(["witness", "--config"])
            .arg(&w.config),
    );
    assert_eq!(code.code(), Some(2), "{text}");
    assert!(text.contains("another witness runs"), "{text}");

    drop(a);
    let code = w.stop();
    assert!(code.success(), "SIGTERM must exit 0, got {code}");
    assert!(w.log_text().contains("stopped cleanly"), "{}", w.log_text());

    // Restarted: the vote for epoch 1 is remembered.
    w.start();
    let st = w.status();
    assert_eq!(st["voted_epoch"], 1, "{st:#}");
    assert_eq!(st["recorded"]["end"], 10, "{st:#}");
    let mut b = TestNodeClient::connect(w.addr(), NodeId::B);
    // Node b asks for the same epoch 1, even with a stream as long as the record: refused,
    // one vote per epoch.
    let reply = b.vote(1, pos(1, 10));
    assert!(
        matches!(
            reply,
            HaMsg::VoteReply {
                granted: false,
                voter_epoch: Epoch(1),
                ..
            }
        ),
        "{reply:?}"
    );
    // A stale candidate (it lacks the recorded committed entries) is refused for any epoch,
    // and told nothing that makes it retry higher.
    let reply = b.vote(2, pos(0, 0));
    assert!(
        matches!(
            reply,
            HaMsg::VoteReply {
                granted: false,
                voter_epoch: Epoch(0),
                ..
            }
        ),
        "{reply:?}"
    );
    // An up-to-date candidate gets epoch 2 once the restart promise has run out.
    let reply = b.vote_until_granted(2, pos(1, 10));
    assert!(
        matches!(
            reply,
            HaMsg::VoteReply {
                granted: true,
                epoch: Epoch(2),
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(read_state(&w.state_file()), (2, 1, 10));
    let st = w.status();
    assert_eq!(st["nodes"]["b"]["connected"], true, "{st:#}");
    assert!(st["votes"]["refused"].as_u64() >= Some(2), "{st:#}");
    drop(b);
    assert!(w.stop().success());
}

#[test]
fn strangers_and_garbage_are_refused_and_counted_and_the_right_node_is_still_served() {
    let s = Scratch::new("witness-strangers");
    let mut w = TestWitness::new(s.path());
    w.start();
    let rt = runtime();

    // A certificate of another CA (the stranger trusts the pair's CA: it is public): the
    // witness refuses it; the client learns it was refused.
    let foreign = s.path().join("foreign-keys");
    write_keys(&foreign);
    let a_party = Party::Node(NodeId::A);
    let wrong = rt.block_on(replicator::connect(
        w.addr(),
        &link_with(NodeId::A, &foreign, a_party),
    ));
    match wrong {
        Err(replicator::Error::Auth { reason, .. }) => {
            assert_eq!(reason, AuthFailure::RejectedByPeer)
        }
        Err(e) => panic!("unexpected error for a foreign certificate: {e}"),
        Ok(_) => panic!("a client with a foreign certificate got a session"),
    }
    wait_for("bad_certificate counted", Duration::from_secs(10), || {
        (w.status()["auth_failures"]["bad_certificate"] == 1).then_some(())
    });

    // Garbage on the port (an HTTP request): closed, counted as malformed.
    let mut tcp = std::net::TcpStream::connect(w.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(b"GET /status HTTP/1.1\r\nHost: witness\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    tcp.read_to_end(&mut got)
        .expect("the witness closes the connection");
    assert!(!String::from_utf8_lossy(&got).contains("HTTP"), "{got:?}");
    wait_for("malformed counted", Duration::from_secs(10), || {
        (w.status()["auth_failures"]["malformed"] == 1).then_some(())
    });

    // The pair's own witness certificate, used by a client posing as node a (a stolen
    // witness key cannot vote as a node): refused, counted.
    let thief = rt.block_on(replicator::connect(
        w.addr(),
        &link_with(NodeId::A, keys(), Party::Witness),
    ));
    assert!(thief.is_err(), "the witness's own identity got a session");
    wait_for("wrong_identity counted", Duration::from_secs(10), || {
        (w.status()["auth_failures"]["wrong_identity"] == 1).then_some(())
    });

    // The right node is served; what it sends that the witness cannot use is dropped and
    // counted, and the session keeps working.
    let mut a = TestNodeClient::connect(w.addr(), NodeId::A);
    a.send_raw(vec![0xff, 0x00, 0x13]);
    a.send(&HaMsg::VoteRequest {
        epoch: Epoch(5),
        candidate: NodeId::B,
        log: pos(0, 0),
        sent_at: Millis(1),
    });
    a.send(&HaMsg::Heartbeat {
        epoch: Epoch(5),
        role: Role::Active,
        log: pos(0, 0),
        commit_end: Offset(0),
        health: Health::default(),
        healthy: true,
        sent_at: Millis(2),
    });
    let reply = a.lease_recorded(1, pos(1, 5));
    assert!(
        matches!(reply, HaMsg::LeaseReply { granted: true, recorded, .. } if recorded == pos(1, 5)),
        "{reply:?}"
    );
    assert_eq!(read_state(&w.state_file()), (1, 1, 5));
    let st = w.status();
    assert_eq!(st["discarded"]["malformed"], 1, "{st:#}");
    assert_eq!(st["discarded"]["node_mismatch"], 1, "{st:#}");
    assert_eq!(st["discarded"]["not_for_witness"], 1, "{st:#}");
    assert_eq!(st["nodes"]["a"]["messages_total"], 4, "{st:#}");
    // Nothing the stranger or the misattributed vote request said was voted on.
    assert_eq!(st["voted_epoch"], 1, "{st:#}");
    assert_eq!(st["votes"]["granted"], 0, "{st:#}");
    assert_eq!(st["auth_failures"]["total"], 3, "{st:#}");

    let metrics = get_text(&format!("{}/metrics", w.admin)).expect("metrics");
    for line in [
        "twinrx_witness_auth_failures_total{reason=\"bad_certificate\"} 1",
        "twinrx_witness_auth_failures_total{reason=\"wrong_identity\"} 1",
        "twinrx_witness_auth_failures_total{reason=\"malformed\"} 1",
        "twinrx_witness_discarded_total{reason=\"malformed\"} 1",
        "twinrx_witness_voted_epoch 1",
        "twinrx_witness_recorded_end_offset 5",
        "twinrx_witness_node_sessions{node=\"a\"} 1",
        "twinrx_witness_leases_total{result=\"granted\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    // Stopping with a node connected is clean too.
    let code = w.stop();
    assert!(code.success(), "SIGTERM must exit 0, got {code}");
    drop(a);
    assert!(!w.log_text().contains("panicked"), "{}", w.log_text());
}

#[test]
fn a_bad_config_or_a_corrupt_state_file_is_refused_at_start_naming_the_problem() {
    let s = Scratch::new("witness-config");
    let dir = s.path();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "listen = \"nowhere\"\nlease_ms = 0\npsk_file = \"open.psk\"\ndata_dir = \"data\"\n",
    )
    .expect("config");
    let (code, text) = run_to_exit(Command::new(BIN).args(["witness", "--config"]).arg(&cfg));
    assert_eq!(code.code(), Some(2), "{text}");
    assert!(text.contains("bad.toml: 4 problems"), "{text}");
    assert!(text.contains("listen = \"nowhere\""), "{text}");
    assert!(text.contains("lease_ms = 0"), "{text}");
    assert!(text.contains("lease_margin_ms = 100"), "{text}");
    assert!(
        text.contains("psk_file") && text.contains("twinrx keys init"),
        "{text}"
    );

    std::fs::write(&cfg, "listn = \"127.0.0.1:7402\"\n").expect("config");
    let (code, text) = run_to_exit(Command::new(BIN).args(["witness", "--config"]).arg(&cfg));
    assert_eq!(code.code(), Some(2), "{text}");
    assert!(text.contains("listn"), "{text}");

    // A valid config, but the state file is damaged: refuse rather than forget the vote.
    let w = TestWitness::new(dir);
    std::fs::create_dir_all(dir.join("data")).expect("data dir");
    std::fs::write(w.state_file(), b"{\"format\":1,\"voted_epo").expect("corrupt state");
    let (code, text) = run_to_exit(
        Command::new(BIN)
            .args(["witness", "--config"])
            .arg(&w.config),
    );
    assert_eq!(code.code(), Some(2), "{text}");
    assert!(text.contains("witness.json is corrupt"), "{text}");
    assert!(text.contains("vote twice"), "{text}");
}

#[test]
fn witness_help_documents_the_command() {
    let (code, text) = run_to_exit(Command::new(BIN).args(["witness", "--help"]));
    assert!(code.success(), "{text}");
    for needle in [
        "--config",
        "third voter",
        "7402",
        "/status",
        "docs/config.md",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let (code, text) = run_to_exit(Command::new(BIN).arg("--help"));
    assert!(code.success(), "{text}");
    assert!(text.contains("witness"), "{text}");
}

#[test]
fn a_witness_that_cannot_persist_its_vote_never_grants_it_and_stops() {
    let s = Scratch::new("witness-full");
    let mut w = TestWitness::new(s.path());
    let _fs = Tmpfs::mount(&s.path().join("data"), "64k");
    w.start();
    // Fill the data directory's file system to the last byte.
    let mut filler = std::fs::File::create(s.path().join("data").join("filler")).expect("filler");
    let chunk = vec![0u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);

    let mut a = TestNodeClient::connect(w.addr(), NodeId::A);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "the witness neither granted nor stopped"
        );
        a.clock += 1;
        a.send(&HaMsg::VoteRequest {
            epoch: Epoch(1),
            candidate: NodeId::A,
            log: pos(0, 0),
            sent_at: Millis(a.clock),
        });
        let left = deadline.saturating_duration_since(Instant::now());
        let ev =
            a.rt.block_on(async { tokio::time::timeout(left, a.session.recv()).await })
                .expect("an answer or the end of the session");
        match ev {
            replicator::Event::Control(bytes) => match ha::wire::decode(&bytes) {
                Ok(HaMsg::VoteReply {
                    granted: false,
                    wait_ms,
                    ..
                }) => std::thread::sleep(Duration::from_millis(wait_ms.clamp(5, 100))),
                other => panic!("answered without a durable vote: {other:?}"),
            },
            // The witness could not make the vote durable and stopped without answering.
            replicator::Event::Closed(_) => break,
        }
    }
    let mut child = w.child.take().expect("witness process");
    let code = wait_for("the witness to stop", Duration::from_secs(10), || {
        child.try_wait().ok().flatten()
    });
    assert_eq!(code.code(), Some(2), "{}", w.log_text());
    assert!(
        w.log_text().contains("cannot persist the witness state"),
        "{}",
        w.log_text()
    );
    assert!(
        !w.state_file().exists() || read_state(&w.state_file()).0 == 0,
        "no vote may be on disk"
    );
}
