//! End-to-end: two real `twinrx node` processes, a and b, each on its own loopback address,
//! with a `[pair]` section: they cross-replicate their journals over the authenticated
//! cluster link. The copies are read back from disk with the `journal` crate and compared
//! with the source journals byte for byte. Real signals (SIGKILL, SIGTERM), a stranger with
//! the wrong key, a wiped data directory.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LINK_PORT: u16 = 7400;

/// Two nodes configured as a pair (not started).
struct TestPair {
    a: TestNode,
    b: TestNode,
    _scratch: Scratch,
}

impl TestPair {
    fn new(tag: &str) -> TestPair {
        TestPair::with_links(tag, 1, None)
    }

    /// A pair with `links` links (ports 7400, 7410, …); `via(i, b_addr)` may route node a's
    /// dial of link `i` elsewhere (a proxy).
    fn with_links(
        tag: &str,
        links: u16,
        via: Option<&dyn Fn(u16, std::net::SocketAddr) -> std::net::SocketAddr>,
    ) -> TestPair {
        let s = Scratch::new(tag);
        let keys = s.path().join("keys");
        write_keys(&keys);
        let a = TestNode::new(&s.path().join("a"), "", "");
        let b = TestNode::new(&s.path().join("b"), "", "");
        let (ia, ib) = (a.ip, b.ip);
        let list = |ip: std::net::Ipv4Addr, dial: bool| -> String {
            (0..links)
                .map(|i| {
                    let addr = std::net::SocketAddr::from((ip, LINK_PORT + 10 * i));
                    let addr = match via {
                        Some(f) if dial => f(i, addr),
                        _ => addr,
                    };
                    format!("\"{addr}\"")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (node, name) in [(&a, "a"), (&b, "b")] {
            let text = std::fs::read_to_string(&node.config).expect("read config");
            let text = text.replacen("name = \"a\"", &format!("name = \"{name}\""), 1);
            let (me, peer) = if name == "a" { (ia, ib) } else { (ib, ia) };
            let text = format!(
                "{text}\n[pair]\npeer = [{}]\nlisten = [{}]\n{}",
                list(peer, name == "a"),
                list(me, false),
                creds(&keys, name)
            );
            std::fs::write(&node.config, text).expect("write config");
        }
        TestPair { a, b, _scratch: s }
    }

    fn start(&mut self) {
        self.a.start();
        self.b.start();
        wait_link_up(&self.a);
        wait_link_up(&self.b);
    }

    /// Waits until everything sent has reached a node and both copies hold the other's
    /// whole journal: nothing in the kernel's queues to either node's receivers, nothing in
    /// either intake (gen's end is not the journals' end), each copy at the other's last
    /// seq, and the same at two polls in a row.
    fn wait_copies_caught_up(&self, timeout: Duration) {
        let mut prev = None;
        wait_for(
            "both nodes settled and both copies caught up",
            timeout,
            || {
                let (sa, sb) = (self.a.status(), self.b.status());
                let queued = kernel_queued_to(self.a.ip)
                    + kernel_queued_to(self.b.ip)
                    + sa["journal"]["queued_bytes"].as_u64()?
                    + sb["journal"]["queued_bytes"].as_u64()?;
                let a_last = sa["journal"]["last_seq"].as_u64()?;
                let b_last = sb["journal"]["last_seq"].as_u64()?;
                let a_copy = sa["pair"]["copy"]["durable_seq"].as_u64()?;
                let b_copy = sb["pair"]["copy"]["durable_seq"].as_u64()?;
                let settled =
                    queued == 0 && a_copy == b_last && b_copy == a_last && a_last > 0 && b_last > 0;
                let state = Some((a_last, b_last));
                let same = settled && prev == state;
                prev = if settled { state } else { None };
                same.then_some(())
            },
        );
    }

    fn stop(&mut self) {
        for n in [&mut self.a, &mut self.b] {
            n.signal(nix::sys::signal::Signal::SIGTERM);
            let st = n.wait_exit(Duration::from_secs(20));
            assert!(st.success(), "node exit: {st}\n{}", n.log_text());
        }
    }
}

fn link_addr(n: &TestNode) -> std::net::SocketAddr {
    std::net::SocketAddr::from((n.ip, LINK_PORT))
}

fn wait_link_up(n: &TestNode) {
    wait_for("the pair link to come up", Duration::from_secs(20), || {
        (n.status()["pair"]["links"][0]["state"] == "up").then_some(())
    });
}

/// Every record of the journal in `dir`: (seq, payload). The node must be stopped.
fn read_all(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let (j, _) = journal::Journal::open(dir, journal::Options::default())
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let h = j.handle();
    let mut out = Vec::new();
    let mut from = h.first_seq();
    loop {
        let recs = h.read(from, 10_000, 64 << 20).expect("read journal");
        let Some((last, _)) = recs.last() else { break };
        from = last.next();
        out.extend(recs.into_iter().map(|(s, p)| (s.0, p)));
    }
    out
}

/// The copy equals the source: same seqs, same bytes, no gap, no duplicate.
fn assert_same_journal(source: &Path, copy: &Path) -> usize {
    let src = read_all(source);
    let cp = read_all(copy);
    assert_eq!(
        src.len(),
        cp.len(),
        "record counts of {source:?} and {copy:?}"
    );
    for (i, (s, c)) in src.iter().zip(cp.iter()).enumerate() {
        assert_eq!(s.0, c.0, "seq of record {i}");
        assert!(s.1 == c.1, "bytes of seq {} differ", s.0);
    }
    for w in cp.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "gap or duplicate in {copy:?}");
    }
    src.len()
}

fn gen(dir: &Path, to: &[&TestNode], count: u64, rate: u64, run_id: &str) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["gen", "--transport", "tcp", "--run-id", run_id])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .arg("--manifest")
        .arg(dir.join(format!("{run_id}.json")));
    for n in to {
        cmd.args(["--to", &format!("{}:5514", n.ip)]);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gen")
}

fn wait_gen(mut g: Child) {
    let st = wait_for("gen to finish", Duration::from_secs(120), || {
        g.try_wait().ok().flatten()
    });
    assert!(st.success(), "gen: {st}");
}

fn scratch_dir(p: &TestPair) -> PathBuf {
    p.a.dir.parent().expect("pair dir").to_path_buf()
}

#[test]
fn each_node_holds_an_exact_copy_of_the_others_journal() {
    let mut p = TestPair::new("pair-copy");
    p.start();
    let mut g = gen(&scratch_dir(&p), &[&p.a, &p.b], 5000, 5000, "copy");
    // Sample the replication lag (a's journal not yet durable in b's copy) under the load.
    let mut lag_max = 0;
    let g_done = wait_for("gen to finish", Duration::from_secs(120), || {
        if let Some(l) = p.a.status()["pair"]["shipping"]["lag_records"].as_u64() {
            lag_max = lag_max.max(l);
        }
        g.try_wait().ok().flatten()
    });
    assert!(g_done.success(), "gen: {g_done}");
    p.wait_copies_caught_up(Duration::from_secs(60));
    let sa = p.a.status();
    assert_eq!(sa["journal"]["last_seq"].as_u64(), Some(5000), "{sa:#}");
    assert_eq!(
        sa["pair"]["shipping"]["lag_records"].as_u64(),
        Some(0),
        "{sa:#}"
    );
    assert_eq!(sa["pair"]["healthy"], true, "{sa:#}");
    eprintln!("replication lag under 5000 msg/s per node: max {lag_max} records");
    // Human status and metrics.
    let out = run(Command::new(BIN).args(["status", "--node", &p.a.admin]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("link 0    b up (dial"), "{text}");
    assert!(text.contains("lag 0 records"), "{text}");
    let metrics = get_text(&format!("{}/metrics", p.b.admin)).expect("metrics");
    assert!(
        metrics.contains("twinrx_link_up{link=\"0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("twinrx_replication_copied_records_total 5000"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("twinrx_link_auth_failures_total{link=\"0\",reason=\"bad_certificate\"} 0"),
        "{metrics}"
    );
    p.stop();
    let (da, db) = (p.a.data_dir(), p.b.data_dir());
    assert_eq!(
        assert_same_journal(&da.join("journal"), &db.join("peer")),
        5000
    );
    assert_eq!(
        assert_same_journal(&db.join("journal"), &da.join("peer")),
        5000
    );
}

#[test]
fn a_node_killed_mid_load_catches_up_without_gap_or_duplicate() {
    let mut p = TestPair::new("pair-kill");
    p.start();
    let dir = scratch_dir(&p);
    let g = gen(&dir, &[&p.a, &p.b], 20_000, 4000, "kill");
    wait_for(
        "3000 records on b before the kill",
        Duration::from_secs(60),
        || (p.b.status()["journal"]["last_seq"].as_u64()? >= 3000).then_some(()),
    );
    p.b.kill9();
    wait_for("a to see the link down", Duration::from_secs(20), || {
        (p.a.status()["pair"]["links"][0]["state"] == "down").then_some(())
    });
    let down = p.a.status();
    assert_eq!(down["healthy"], false, "{down:#}");
    assert!(
        down["next_step"]
            .as_str()
            .unwrap_or("")
            .contains("node b runs"),
        "{down:#}"
    );
    p.b.start();
    wait_link_up(&p.b);
    wait_gen(g);
    p.wait_copies_caught_up(Duration::from_secs(60));
    let sa = p.a.status();
    assert!(
        sa["pair"]["links"][0]["reconnects"].as_u64() >= Some(1),
        "{sa:#}"
    );
    assert!(sa["pair"]["copy"]["stopped"].is_null(), "{sa:#}");
    p.stop();
    let (da, db) = (p.a.data_dir(), p.b.data_dir());
    let n_a = assert_same_journal(&da.join("journal"), &db.join("peer"));
    let n_b = assert_same_journal(&db.join("journal"), &da.join("peer"));
    assert_eq!(n_a, 20_000);
    assert!(n_b >= 3000, "{n_b}");
}

#[test]
fn a_stranger_with_a_self_made_certificate_or_garbage_is_refused_and_counted() {
    use std::io::{Read as _, Write as _};
    let mut p = TestPair::new("pair-stranger");
    p.start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A client that claims to be node a with a certificate of its own CA (it trusts the
    // pair's CA: its certificate is public).
    let foreign = p._scratch.path().join("foreign-keys");
    write_keys(&foreign);
    let pair_keys = p._scratch.path().join("keys");
    let (a, b) = (
        replicator::Party::Node(twinrx_types::NodeId::A),
        replicator::Party::Node(twinrx_types::NodeId::B),
    );
    let creds = replicator::Credentials::load(
        &replicator::tls::ca_file(&pair_keys),
        &replicator::tls::cert_file(&foreign, a),
        &replicator::tls::key_file(&foreign, a),
    )
    .expect("credentials");
    let cfg = replicator::LinkConfig::new(a, &[b], std::sync::Arc::new(creds));
    let r = rt.block_on(replicator::connect(link_addr(&p.b), &cfg));
    assert!(r.is_err(), "a self-made certificate must not get a session");
    assert_eq!(
        cfg.stats
            .snapshot()
            .auth_failures(replicator::AuthFailure::RejectedByPeer),
        1
    );
    // Garbage on the link port.
    let mut sock = std::net::TcpStream::connect(link_addr(&p.b)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let _ = sock.read_to_end(&mut buf); // the node closes it
    let st = wait_for(
        "both refusals counted on b",
        Duration::from_secs(10),
        || {
            let st = p.b.status();
            let f = &st["pair"]["links"][0]["auth_failures"];
            (f["bad_certificate"].as_u64()? >= 1 && f["malformed"].as_u64()? >= 1).then_some(st)
        },
    );
    // The real session is untouched and still carries the journals.
    assert_eq!(st["pair"]["links"][0]["state"], "up", "{st:#}");
    assert_eq!(
        st["pair"]["links"][0]["sessions"].as_u64(),
        Some(1),
        "{st:#}"
    );
    let g = gen(&scratch_dir(&p), &[&p.a, &p.b], 200, 2000, "stranger");
    wait_gen(g);
    p.wait_copies_caught_up(Duration::from_secs(30));
    let metrics = get_text(&format!("{}/metrics", p.b.admin)).expect("metrics");
    assert!(
        metrics
            .contains("twinrx_link_auth_failures_total{link=\"0\",reason=\"bad_certificate\"} 1"),
        "{metrics}"
    );
    p.stop();
}

#[test]
fn a_wiped_peer_continues_its_journal_after_the_copy_the_other_node_holds() {
    let mut p = TestPair::new("pair-wipe");
    p.start();
    let dir = scratch_dir(&p);
    wait_gen(gen(&dir, &[&p.a, &p.b], 1000, 2000, "before"));
    p.wait_copies_caught_up(Duration::from_secs(30));
    p.b.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(p.b.wait_exit(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(p.b.data_dir()).expect("wipe b");
    // A replaced disk (F15): b learns from a where a's copy of its journal ends and continues
    // after it, so no seq is reused and a's copy simply goes on.
    p.b.start();
    wait_gen(gen(&dir, &[&p.b], 300, 2000, "after"));
    let sb = wait_for(
        "b to journal after seq 1000",
        Duration::from_secs(30),
        || {
            let st = p.b.status();
            (st["journal"]["last_seq"].as_u64()? >= 1300).then_some(st)
        },
    );
    assert_eq!(sb["journal"]["first_seq"].as_u64(), Some(1001), "{sb:#}");
    wait_for(
        "a's copy to follow b's new records",
        Duration::from_secs(30),
        || {
            let st = p.a.status();
            (st["pair"]["copy"]["durable_seq"].as_u64()? >= 1300).then_some(())
        },
    );
    let sa = p.a.status();
    assert!(sa["pair"]["copy"]["stopped"].is_null(), "{sa:#}");
    p.stop();
    // The copy holds the old journal's 1..1000 and, after it, exactly b's new records.
    let copy = read_all(&p.a.data_dir().join("peer"));
    let new_b = read_all(&p.b.data_dir().join("journal"));
    assert_eq!(copy.len(), 1300);
    assert_eq!(
        &copy[1000..],
        &new_b[..],
        "a's copy after seq 1000 = b's new journal"
    );
}

/// A peer whose journal really diverged (wiped while the other node was down, so it could not
/// learn where the copy ends, and then longer than the copy): reported, never mixed in.
#[test]
fn a_diverged_peer_is_reported_and_nothing_is_mixed_into_the_copy() {
    let mut p = TestPair::new("pair-diverge");
    p.start();
    let dir = scratch_dir(&p);
    wait_gen(gen(&dir, &[&p.a, &p.b], 1000, 2000, "before"));
    p.wait_copies_caught_up(Duration::from_secs(30));
    p.a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(p.a.wait_exit(Duration::from_secs(20)).success());
    p.b.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(p.b.wait_exit(Duration::from_secs(20)).success());
    let old_b = read_all(&p.b.data_dir().join("journal"));
    assert_eq!(old_b.len(), 1000);
    std::fs::remove_dir_all(p.b.data_dir()).expect("wipe b");
    // b starts alone: after waiting for a (10 s) its journal starts at seq 1 again.
    p.b.start();
    wait_gen(gen(&dir, &[&p.b], 1500, 3000, "alone"));
    wait_for("b to journal 1500 records", Duration::from_secs(60), || {
        (p.b.status()["journal"]["last_seq"].as_u64()? >= 1500).then_some(())
    });
    p.a.start();
    let sa = wait_for(
        "a to report the divergence",
        Duration::from_secs(30),
        || {
            let st = p.a.status();
            (st["pair"]["copy"]["stopped"]["kind"] == "diverged").then_some(st)
        },
    );
    assert_eq!(sa["healthy"], false, "{sa:#}");
    let next = sa["next_step"].as_str().unwrap_or("");
    assert!(
        next.contains("twinrx resync") && next.contains("node a"),
        "{sa:#}"
    );
    assert!(
        sa["problems"]
            .to_string()
            .contains("copy of node b's journal diverged"),
        "{sa:#}"
    );
    assert_eq!(
        sa["pair"]["copy"]["durable_seq"].as_u64(),
        Some(1000),
        "{sa:#}"
    );
    let sessions = sa["pair"]["links"][0]["sessions"].as_u64();
    wait_gen(gen(&dir, &[&p.b], 300, 2000, "after"));
    let sa = p.a.status();
    assert_eq!(sa["pair"]["copy"]["stopped"]["kind"], "diverged", "{sa:#}");
    // The stopped copy does not make the link flap: the session stays up.
    assert_eq!(
        sa["pair"]["links"][0]["sessions"].as_u64(),
        sessions,
        "{sa:#}"
    );
    assert_eq!(sa["pair"]["links"][0]["state"], "up", "{sa:#}");
    // b says the same from its side: its journal no longer matches a's copy of it.
    let sb = p.b.status();
    assert!(
        sb["pair"]["shipping"]["peer_copy_stopped"]["kind"] == "diverged"
            && sb["next_step"].as_str().unwrap_or("").contains("on node a"),
        "{sb:#}"
    );
    p.stop();
    assert!(
        read_all(&p.a.data_dir().join("peer")) == old_b,
        "a's copy changed"
    );
}

/// A TCP proxy for one link that the test can cut (every connection closed, new ones closed
/// on accept) and heal.
struct Proxy {
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(addr: std::net::SocketAddr, target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind(addr).expect("proxy bind");
        let proxy = Proxy {
            cut: Default::default(),
            conns: Default::default(),
        };
        let (cut, conns) = (proxy.cut.clone(), proxy.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                if let Ok(mut c) = conns.lock() {
                    c.extend([client, server]);
                }
                for (from, to) in pipes {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            let _ = from.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        proxy
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for s in c.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn copying_moves_to_the_other_link_when_one_is_cut_and_back_when_it_heals() {
    // Both links go through proxies, so the one the copies run on can be cut.
    let proxy_addrs: Vec<std::net::SocketAddr> = (0..2u16)
        .map(|i| std::net::SocketAddr::from((unique_ip(), LINK_PORT + 10 * i)))
        .collect();
    let routes = proxy_addrs.clone();
    let route = move |i: u16, _: std::net::SocketAddr| routes[usize::from(i)];
    let mut p = TestPair::with_links("pair-links", 2, Some(&route));
    let b_links: Vec<std::net::SocketAddr> = (0..2u16)
        .map(|i| std::net::SocketAddr::from((p.b.ip, LINK_PORT + 10 * i)))
        .collect();
    let proxies: Vec<Proxy> = proxy_addrs
        .iter()
        .zip(&b_links)
        .map(|(at, to)| Proxy::start(*at, *to))
        .collect();
    p.start();
    for n in [&p.a, &p.b] {
        wait_for("both links up", Duration::from_secs(20), || {
            (n.status()["pair"]["links_up"].as_u64()? == 2).then_some(())
        });
    }
    let dir = scratch_dir(&p);
    let g = gen(&dir, &[&p.a, &p.b], 15_000, 5000, "links");
    let k = wait_for(
        "2000 records copied before the cut",
        Duration::from_secs(30),
        || {
            let sb = p.b.status();
            (sb["pair"]["copy"]["durable_seq"].as_u64()? >= 2000)
                .then(|| sb["pair"]["copy"]["link"].as_u64())
                .flatten()
        },
    ) as usize;
    let other = 1 - k;
    proxies[k].cut();
    wait_for(
        "the copies' link down on both nodes",
        Duration::from_secs(20),
        || {
            let (sa, sb) = (p.a.status(), p.b.status());
            (sa["pair"]["links"][k]["state"] == "down" && sb["pair"]["links"][k]["state"] == "down")
                .then_some(())
        },
    );
    // Copying goes on over the other link while this one is cut.
    let at_cut = p.b.status()["pair"]["copy"]["durable_seq"]
        .as_u64()
        .unwrap_or(0);
    wait_for(
        "copying to go on over the other link",
        Duration::from_secs(20),
        || {
            let (sa, sb) = (p.a.status(), p.b.status());
            (sb["pair"]["copy"]["durable_seq"].as_u64()? > at_cut
                && sb["pair"]["copy"]["link"].as_u64()? == other as u64
                && sa["pair"]["copy"]["link"].as_u64()? == other as u64)
                .then_some(())
        },
    );
    proxies[k].heal();
    wait_for("the cut link back up", Duration::from_secs(20), || {
        (p.a.status()["pair"]["links_up"].as_u64()? == 2).then_some(())
    });
    wait_gen(g);
    p.wait_copies_caught_up(Duration::from_secs(60));
    p.stop();
    let (da, db) = (p.a.data_dir(), p.b.data_dir());
    assert_eq!(
        assert_same_journal(&da.join("journal"), &db.join("peer")),
        15_000
    );
    assert_eq!(
        assert_same_journal(&db.join("journal"), &da.join("peer")),
        15_000
    );
}

/// A node whose clock is off by more than half the de-duplication window: the pair measures
/// it over the link and says so (status problem, metric) on both nodes.
#[test]
fn a_clock_offset_between_the_nodes_is_measured_and_reported() {
    let mut p = TestPair::new("pair-clock");
    // Node b reports a clock 4 s ahead (fault-injection test aid); W is 5 s: limit 2.5 s.
    p.b.env
        .push(("TWINRX_FAULT_CLOCK_SKEW_MS".into(), "4000".into()));
    p.start();
    wait_link_up(&p.b);
    let st = wait_for("a to measure b's clock", Duration::from_secs(20), || {
        let st = p.a.status();
        let off = st["pair"]["links"][0]["clock_offset_ms"].as_f64()?;
        ((off - 4000.0).abs() < 200.0).then_some(st)
    });
    let problems = st["problems"].to_string();
    assert!(
        problems.contains("clocks of node a and node b differ by") && problems.contains("ahead"),
        "{st:#}"
    );
    let sb = wait_for("b to measure a's clock", Duration::from_secs(20), || {
        let st = p.b.status();
        let off = st["pair"]["links"][0]["clock_offset_ms"].as_f64()?;
        ((off + 4000.0).abs() < 200.0).then_some(st)
    });
    assert!(sb["problems"].to_string().contains("behind"), "{sb:#}");
    let metrics = get_text(&format!("{}/metrics", p.a.admin)).expect("metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("twinrx_link_clock_offset_seconds{link=\"0\"}"))
        .unwrap_or_else(|| panic!("no clock offset metric in:\n{metrics}"));
    let v: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert!((v - 4.0).abs() < 0.2, "{line}");
    p.stop();
}
