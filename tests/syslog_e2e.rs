//! End-to-end: real syslog clients (util-linux `logger`, rsyslog, openssl s_client) against
//! the built `twinrx node`, checked through `twinrx tail` / the admin API.

mod common;

use common::*;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

fn logger(ip: &str, args: &[&str], msg: &str) {
    run(Command::new("logger")
        .args(["-n", ip, "-P", "5514", "-t", "e2e"])
        .args(args)
        .arg(msg));
}

#[test]
fn logger_rfc3164_and_rfc5424_over_udp_tcp_octet_and_tcp_lf_each_once_parsed() {
    let s = Scratch::new("logger");
    let mut node = TestNode::new(s.path(), "", "");
    node.start();
    let ip = node.ip.to_string();
    let cases: [(&str, &[&str]); 6] = [
        ("udp-3164", &["-d", "--rfc3164"]),
        ("udp-5424", &["-d", "--rfc5424"]),
        ("tcpoctet-3164", &["-T", "--octet-count", "--rfc3164"]),
        ("tcpoctet-5424", &["-T", "--octet-count", "--rfc5424"]),
        ("tcplf-3164", &["-T", "--rfc3164"]),
        ("tcplf-5424", &["-T", "--rfc5424"]),
    ];
    for (tag, args) in cases {
        logger(&ip, args, &format!("hello from case {tag} end"));
    }
    let stream = node.wait_stream(6, Duration::from_secs(10));
    // Also through the CLI: `twinrx tail` prints the same committed entries and exits.
    let tail = run(Command::new(BIN).args(["tail", "--node", &node.admin]));
    let tail_lines = String::from_utf8_lossy(&tail.stdout).lines().count();
    assert_eq!(tail_lines, 6, "twinrx tail printed {tail_lines} lines");
    assert_eq!(stream.len(), 6, "{stream:#?}");
    for (tag, _) in cases {
        let found = entries_with(&stream, &format!("case {tag} end"));
        assert_eq!(found.len(), 1, "case {tag}: {found:#?}");
        let e = found[0];
        let sys = &e["syslog"];
        assert_eq!(sys["message"], format!("hello from case {tag} end"), "{e}");
        assert_eq!(sys["app_name"], "e2e", "{e}");
        assert_eq!(sys["facility"], 1, "{e}");
        assert_eq!(sys["severity"], 5, "{e}");
        assert!(sys["timestamp"].is_string(), "{e}");
        let want_format = if tag.ends_with("3164") {
            "rfc3164"
        } else {
            "rfc5424"
        };
        assert_eq!(sys["format"], want_format, "{e}");
        let want_transport = if tag.starts_with("udp") { "udp" } else { "tcp" };
        assert_eq!(e["transport"], want_transport, "{e}");
        assert_eq!(e["protocol"], "syslog");
        // The kernel picks the loopback source address; it is the sender's IP, never a port.
        assert!(
            e["source"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.") && !a.contains(':')),
            "{e}"
        );
        assert!(e.get("parse_error").is_none(), "{e}");
    }
    let offsets: Vec<u64> = stream
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, (0..6).collect::<Vec<_>>());
    // The latency histogram counts each entry once: the +Inf bucket equals the count (6).
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    let value = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(
        value("twinrx_stream_latency_seconds_bucket{le=\"+Inf\"}"),
        Some(6),
        "{metrics}"
    );
    assert_eq!(value("twinrx_stream_latency_seconds_count"), Some(6));
    node.signal(nix::sys::signal::Signal::SIGTERM);
    let st = node.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "SIGTERM must exit 0, got {st}");
}

fn rsyslog_conf(
    work: &std::path::Path,
    listen_ip: &str,
    node_ip: &str,
    ca: &std::path::Path,
) -> String {
    format!(
        r#"global(workDirectory="{work}" defaultNetstreamDriverCAFile="{ca}")
module(load="imudp")
input(type="imudp" address="{listen_ip}" port="10514" ruleset="fwd")
ruleset(name="fwd") {{
  action(type="omfwd" target="{node_ip}" port="5514" protocol="tcp" TCP_Framing="octet-counted"
         template="RSYSLOG_SyslogProtocol23Format")
  action(type="omfwd" target="{node_ip}" port="6514" protocol="tcp"
         StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
         StreamDriverPermittedPeers="localhost" template="RSYSLOG_SyslogProtocol23Format")
}}
"#,
        work = work.display(),
        ca = ca.display()
    )
}

#[test]
fn rsyslog_forwards_over_tcp_and_tls_and_messages_arrive_parsed() {
    let s = Scratch::new("rsyslog");
    let ip_for_certs = unique_ip();
    let certs = make_certs(s.path(), ip_for_certs);
    let mut node = TestNode::new(
        &s.path().join("node"),
        &format!(
            "tls = [\"{ip}:6514\"]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            certs.server_cert.display(),
            certs.server_key.display(),
            ip = "IPADDR"
        ),
        "",
    );
    // The TLS listener shares the node's address.
    let cfg = std::fs::read_to_string(&node.config)
        .expect("config")
        .replace("IPADDR", &node.ip.to_string());
    std::fs::write(&node.config, cfg).expect("config");
    node.start();
    let work = s.path().join("rsyslog");
    std::fs::create_dir_all(&work).expect("work dir");
    let conf = work.join("rsyslog.conf");
    let relay_ip = node.ip.to_string(); // rsyslog listens on the node's address, port 10514
    std::fs::write(
        &conf,
        rsyslog_conf(&work, &relay_ip, &node.ip.to_string(), &certs.ca),
    )
    .expect("conf");
    let pidfile = work.join("rsyslog.pid");
    let mut rsyslog = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(&pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rsyslogd (apt-get install rsyslog rsyslog-gnutls)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut rsyslog);
    wait_for("rsyslogd to start", Duration::from_secs(10), || {
        pidfile.exists().then_some(())
    });
    // rsyslog connects lazily; keep sending distinct messages until one arrives over each
    // transport, then send the real batch.
    for i in 0..5 {
        run(Command::new("logger")
            .args([
                "-n",
                &relay_ip,
                "-P",
                "10514",
                "-d",
                "--rfc5424",
                "-t",
                "relay",
            ])
            .arg(format!("relayed message {i} via rsyslog")));
    }
    let stream = wait_for(
        "5 messages over tcp and 5 over tls",
        Duration::from_secs(30),
        || {
            let st = node.stream();
            let tcp = st.iter().filter(|e| e["transport"] == "tcp").count();
            let tls = st.iter().filter(|e| e["transport"] == "tls").count();
            (tcp >= 5 && tls >= 5).then_some(st)
        },
    );
    drop(guard);
    for transport in ["tcp", "tls"] {
        for i in 0..5 {
            let needle = format!("relayed message {i} via rsyslog");
            let found: Vec<_> = stream
                .iter()
                .filter(|e| {
                    e["transport"] == transport && e["syslog"]["message"] == needle.as_str()
                })
                .collect();
            assert_eq!(found.len(), 1, "{transport} {needle}: {stream:#?}");
            assert_eq!(found[0]["syslog"]["app_name"], "relay");
            assert_eq!(found[0]["syslog"]["format"], "rfc5424");
        }
    }
    assert_eq!(stream.len(), 10, "{stream:#?}");
}

/// Sends `msg` over TLS with openssl s_client (LF framing); returns whether it exited 0.
fn s_client(
    addr: &str,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    msg: &str,
) {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-connect",
            addr,
            "-servername",
            "localhost",
            "-CAfile",
        ])
        .arg(ca)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(msg.as_bytes());
    }
    let _ = wait_for("s_client to finish", Duration::from_secs(10), || {
        child.try_wait().ok().flatten()
    });
}

#[test]
fn bad_input_is_counted_by_reason_and_valid_messages_in_between_all_arrive() {
    let s = Scratch::new("badinput");
    let certs = make_certs(s.path(), std::net::Ipv4Addr::LOCALHOST);
    let mut node = TestNode::new(
        &s.path().join("node"),
        &format!(
            "tls = [\"IPADDR:6514\"]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
             tls_client_ca_file = \"{}\"\ntls_client_cert = \"required\"",
            certs.server_cert.display(),
            certs.server_key.display(),
            certs.ca.display()
        ),
        "",
    );
    let cfg = std::fs::read_to_string(&node.config)
        .expect("config")
        .replace("IPADDR", &node.ip.to_string());
    std::fs::write(&node.config, cfg).expect("config");
    node.start();
    let ip = node.ip.to_string();
    let udp_addr = format!("{ip}:5514");
    let tls_addr = format!("{ip}:6514");
    let udp = std::net::UdpSocket::bind((node.ip, 0)).expect("udp");
    let valid = |n: u32| format!("<13>1 2026-11-25T00:00:00Z h app - - - valid {n} end");
    let mut sent_valid = 0;
    let send_valid_udp = |n: u32| {
        udp.send_to(valid(n).as_bytes(), &udp_addr).expect("send");
    };

    // 1. garbage datagrams: kept raw with the parse error (SPEC: never dropped).
    send_valid_udp(0);
    sent_valid += 1;
    for g in [
        &b"\x00\x01\x02garbage"[..],
        b"no pri at all",
        b"<999>bad pri",
        b"\xff\xfe\xfd",
    ] {
        udp.send_to(g, &udp_addr).expect("send");
    }
    send_valid_udp(1);
    sent_valid += 1;

    // 2. a TCP stream of random bytes (starts with a digit: octet counting, then garbage).
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut random = vec![b'7'];
    for _ in 0..4096 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        random.push(rng as u8);
    }
    {
        let mut c = std::net::TcpStream::connect((node.ip, 5514)).expect("tcp");
        let _ = c.write_all(&random);
    }
    // 3. a 70 KiB octet-counted frame, then a valid frame on the same connection.
    {
        let mut c = std::net::TcpStream::connect((node.ip, 5514)).expect("tcp");
        let big = vec![b'x'; 70 * 1024];
        c.write_all(format!("{} ", big.len()).as_bytes())
            .expect("write");
        c.write_all(&big).expect("write");
        let v = valid(2);
        c.write_all(format!("{} {v}", v.len()).as_bytes())
            .expect("write");
        sent_valid += 1;
    }
    // 4. an octet count larger than the limit with no body following: refused.
    {
        let mut c = std::net::TcpStream::connect((node.ip, 5514)).expect("tcp");
        c.write_all(b"999999999 <13>x").expect("write");
    }
    send_valid_udp(3);
    sent_valid += 1;
    // 5. TLS: a client with a self-signed certificate is refused; a client with a
    //    CA-signed certificate gets through.
    s_client(
        &tls_addr,
        &certs.ca,
        &certs.wrong_cert,
        &certs.wrong_key,
        &format!("{}\n", valid(100)),
    );
    s_client(
        &tls_addr,
        &certs.ca,
        &certs.client_cert,
        &certs.client_key,
        &format!("{}\n", valid(4)),
    );
    sent_valid += 1;
    send_valid_udp(5);
    sent_valid += 1;

    let stream = wait_for("all valid messages", Duration::from_secs(20), || {
        let st = node.stream();
        (0..6)
            .all(|n| !entries_with(&st, &format!("valid {n} end")).is_empty())
            .then_some(st)
    });
    for n in 0..6 {
        assert_eq!(
            entries_with(&stream, &format!("valid {n} end")).len(),
            1,
            "valid {n}"
        );
    }
    assert!(
        entries_with(&stream, "valid 100 end").is_empty(),
        "the stranger's message got in"
    );
    let raw: Vec<_> = stream
        .iter()
        .filter(|e| e.get("parse_error").is_some())
        .collect();
    assert_eq!(raw.len(), 4, "garbage datagrams are kept raw: {raw:#?}");
    assert!(raw.iter().any(|e| e["raw_hex"] == "fffefd"));
    assert!(raw.iter().any(|e| e["raw"] == "no pri at all"));
    let st = wait_for("counters", Duration::from_secs(10), || {
        let st = node.status();
        let d = &st["receivers"]["syslog"]["discarded"];
        (d["tls_failure"].as_u64() >= Some(1) && d["oversize"].as_u64() >= Some(2)).then_some(st)
    });
    let d = &st["receivers"]["syslog"]["discarded"];
    assert_eq!(d["tls_failure"], 1, "{st:#}");
    assert_eq!(
        d["oversize"], 2,
        "70 KiB frame and huge octet count: {st:#}"
    );
    assert!(d["bad_framing"].as_u64() >= Some(1), "random bytes: {st:#}");
    assert_eq!(st["stream"]["kept_raw"], 4, "{st:#}");
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    assert!(
        metrics.contains(
            "twinrx_receiver_discarded_total{protocol=\"syslog\",reason=\"tls_failure\"} 1"
        ),
        "{metrics}"
    );
    assert_eq!(sent_valid, 6);
    // The node still serves.
    send_valid_udp(6);
    node.wait_stream(stream.len() + 1, Duration::from_secs(10));
}

#[test]
fn a_bad_config_is_refused_naming_every_key() {
    let s = Scratch::new("badcfg");
    let cfg = s.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[node]\nname = \"z\"\n[journal]\nfsync = \"often\"\n[syslog]\nudp = [\"localhost\"]\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems"), "{err}");
    assert!(err.contains("node.name = \"z\""), "{err}");
    assert!(err.contains("journal.fsync = \"often\""), "{err}");
    assert!(err.contains("syslog.udp[0] = \"localhost\""), "{err}");
    std::fs::write(&cfg, "[syslog]\nudpp = []\n").expect("write");
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("udpp"));
}

#[test]
fn per_source_rate_limit_drops_and_counts_udp_and_slows_tcp_without_loss() {
    let s = Scratch::new("ratelimit");
    let mut node = TestNode::new(
        s.path(),
        "rate_per_source_per_s = 200\nrate_burst = 100",
        "",
    );
    node.start();
    let udp = std::net::UdpSocket::bind((node.ip, 0)).expect("udp");
    let addr = format!("{}:5514", node.ip);
    let started = std::time::Instant::now();
    for n in 0..2000 {
        udp.send_to(
            format!("<13>1 - h app - - - udp flood {n}").as_bytes(),
            &addr,
        )
        .expect("send");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let st = wait_for("udp counters", Duration::from_secs(10), || {
        let st = node.status();
        let r = &st["receivers"]["syslog"];
        let acc = r["accepted"]["udp"].as_u64()?;
        let lim = r["discarded"]["rate_limited"].as_u64()?;
        (acc + lim + r["discarded"]["queue_full"].as_u64()? == 2000).then_some(st)
    });
    let acc = st["receivers"]["syslog"]["accepted"]["udp"]
        .as_u64()
        .expect("accepted");
    // The burst plus what the rate refilled while sending (with slack for scheduling).
    let allowed = 100.0 + 200.0 * (elapsed + 0.5);
    assert!(
        acc >= 100 && (acc as f64) <= allowed,
        "accepted {acc} in {elapsed:.2}s: {st:#}"
    );
    // TCP from the same kind of source waits instead: all 300 arrive, over ~1 s.
    let t0 = std::time::Instant::now();
    {
        let mut c = std::net::TcpStream::connect((node.ip, 5514)).expect("tcp");
        for n in 0..300 {
            c.write_all(format!("<13>1 - h app - - - tcp paced {n}\n").as_bytes())
                .expect("write");
        }
    }
    let stream = wait_for("300 tcp messages", Duration::from_secs(20), || {
        let st = node.stream();
        (entries_with(&st, "tcp paced").len() == 300).then_some(st)
    });
    assert_eq!(entries_with(&stream, "tcp paced").len(), 300);
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "TCP was not paced: {:?}",
        t0.elapsed()
    );
}

#[test]
fn tail_follow_prints_entries_as_they_are_committed() {
    use std::io::BufRead as _;
    let s = Scratch::new("follow");
    let mut node = TestNode::new(s.path(), "", "");
    node.start();
    let mut tail = Command::new(BIN)
        .args(["tail", "--follow", "--from", "0", "--node", &node.admin])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = tail.stdout.take().expect("stdout");
    let _guard = KillOnDrop(tail);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let udp = std::net::UdpSocket::bind((node.ip, 0)).expect("udp");
    for n in 0..3 {
        udp.send_to(
            format!("<13>1 - h app - - - follow {n}").as_bytes(),
            (node.ip, 5514),
        )
        .expect("send");
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("tail printed the entry");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["offset"], n);
        assert_eq!(v["syslog"]["message"], format!("follow {n}"));
    }
}

/// `[syslog] connections_per_source_max` and `idle_timeout_s`: one host cannot take every TCP
/// connection, and a silent connection is closed (counted); another host and a sender that
/// talks are served.
#[test]
fn tcp_connections_are_capped_per_source_and_idle_ones_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = Scratch::new("syslog-limits");
    let mut node = TestNode::new(
        s.path(),
        "connections_per_source_max = 3\nidle_timeout_s = 2",
        "",
    );
    node.start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr: std::net::SocketAddr = format!("{}:5514", node.ip).parse().expect("addr");
    let from = |ip: std::net::Ipv4Addr| {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind((ip, 0).into()).expect("bind");
        sock.connect(addr)
    };
    let flooder = unique_ip();
    let (mut held, mut fourth) = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(from(flooder).await.expect("connect"));
        }
        (held, from(flooder).await.expect("connect"))
    });
    // The fourth from the same host is closed at once.
    let n = rt.block_on(async {
        let mut b = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut b)).await
    });
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the 4th connection stayed open: {n:?}"
    );
    let st = node.status();
    assert_eq!(
        st["receivers"]["syslog"]["discarded"]["connections_refused_per_source"], 1,
        "{st:#}"
    );
    // Another host is served, and a message on a held connection is accepted.
    rt.block_on(async {
        let mut other = from(unique_ip()).await.expect("another host connects");
        let line = b"<134>1 2026-12-07T10:00:00Z host app - - - limits-other-host\n";
        other.write_all(line).await.expect("write");
        let line = b"<134>1 2026-12-07T10:00:00Z host app - - - limits-held-conn\n";
        held[0].write_all(line).await.expect("write");
    });
    let stream = node.wait_stream(2, Duration::from_secs(10));
    for token in ["limits-other-host", "limits-held-conn"] {
        assert_eq!(entries_with(&stream, token).len(), 1, "{token}");
    }
    // Silent for idle_timeout_s: the node closes the held connections and counts them.
    let started = std::time::Instant::now();
    rt.block_on(async {
        for c in &mut held {
            let mut b = [0u8; 16];
            let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "not closed when idle: {r:?}"
            );
        }
    });
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after {waited:?}"
    );
    let st = wait_for("idle closes counted", Duration::from_secs(5), || {
        let st = node.status();
        (st["receivers"]["syslog"]["connections_idle_closed"].as_u64()? >= 3).then_some(st)
    });
    eprintln!(
        "[syslog-limits] idle connections closed after {waited:?}; open now {}",
        st["receivers"]["syslog"]["connections_open"]
    );
}
