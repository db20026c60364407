//! End-to-end tests of `twinrx lab` and of the `switchover`/`resync` clients' error paths:
//! the built binary as a real process, on loopback addresses of the test's own
//! (`common::unique_ip`), real signals, a real `logger`.
//!
//! The full behaviour of switchover and resync (against a node that answers them) is tested
//! with the pair's HA (tests/pair_e2e.rs).

mod common;

use common::{get_json, get_text, keep_evidence, unique_ip, wait_for, Evidence, Scratch, BIN};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Debug builds of three processes on a busy test machine: generous, but bounded.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `twinrx lab` process, killed (SIGKILL) with its children on drop if a test fails.
struct Lab {
    dir: PathBuf,
    out: PathBuf,
    ips: [Ipv4Addr; 3],
    child: Option<Child>,
}

impl Lab {
    fn start(dir: &Path, ips: [Ipv4Addr; 3]) -> Lab {
        // One output file per lab process: a re-run must not see its predecessor's lines.
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let out = dir.with_extension(format!("out{}", RUNS.fetch_add(1, Ordering::Relaxed)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .expect("lab output file");
        let child = Command::new(BIN)
            .arg("lab")
            .arg("--dir")
            .arg(dir)
            .arg("--ip-a")
            .arg(ips[0].to_string())
            .arg("--ip-b")
            .arg(ips[1].to_string())
            .arg("--ip-witness")
            .arg(ips[2].to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("spawn twinrx lab");
        Lab {
            dir: dir.to_path_buf(),
            out,
            ips,
            child: Some(child),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("lab running").id() as i32
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until the lab says it is running (all three answered), and returns lab.json.
    fn wait_ready(&mut self) -> serde_json::Value {
        wait_for("the lab to be ready", START_TIMEOUT, || {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("lab exited during start-up ({st}):\n{}", self.output());
            }
            if !self.output().contains("twinrx lab is running") {
                return None;
            }
            let text = std::fs::read_to_string(self.dir.join("lab.json")).ok()?;
            serde_json::from_str(&text).ok()
        })
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal the lab");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("lab running");
        let st = wait_for("the lab to exit", timeout, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        st
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut procs = vec![Evidence::new("lab", &self.out, None)];
            for n in ["a", "b", "witness"] {
                procs.push(Evidence::new(n, &self.dir.join(format!("{n}.log")), None));
            }
            keep_evidence(&procs, None);
        }
        // A failed test: kill the children the lab started (from lab.json), then the lab.
        if let Some(mut c) = self.child.take() {
            if let Some(doc) = std::fs::read_to_string(self.dir.join("lab.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            {
                for pid in member_pids(&doc) {
                    if parent_of(pid) == Some(c.id() as i32) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.out);
    }
}

/// The pids of node a, node b and the witness in a lab.json.
fn member_pids(doc: &serde_json::Value) -> Vec<i32> {
    let mut pids: Vec<i32> = doc["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|n| n["pid"].as_i64())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(doc["witness"]["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    pids.sort_unstable();
    pids
}

/// The parent pid of a live process (None once it is gone).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Processes whose command line mentions `needle` (e.g. the lab's directory).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn ips() -> [Ipv4Addr; 3] {
    [unique_ip(), unique_ip(), unique_ip()]
}

#[test]
fn lab_runs_pair_and_witness_receives_and_stops_on_sigint() {
    let scratch = Scratch::new("lab");
    let dir = scratch.path().join("lab");
    let ips = ips();
    let mut lab = Lab::start(&dir, ips);
    let doc = lab.wait_ready();

    // lab.json: addresses, configs and live pids, all children of the lab.
    assert_eq!(doc["dir"], dir.display().to_string());
    let nodes = doc["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{doc}");
    for (n, (name, ip)) in nodes.iter().zip([("a", ips[0]), ("b", ips[1])]) {
        assert_eq!(n["name"], name, "{doc}");
        assert_eq!(n["admin"], format!("http://{ip}:7401"), "{doc}");
        assert_eq!(n["syslog_udp"], format!("{ip}:5514"), "{doc}");
        assert_eq!(n["syslog_tcp"], format!("{ip}:5514"), "{doc}");
        assert_eq!(n["syslog_tls"], format!("{ip}:6514"), "{doc}");
        assert_eq!(n["snmp"], format!("{ip}:5162"), "{doc}");
        assert_eq!(
            n["config"],
            dir.join(format!("{name}.toml")).display().to_string()
        );
        assert_eq!(
            n["log"],
            dir.join(format!("{name}.log")).display().to_string()
        );
        let status = get_json(&format!("http://{ip}:7401/status")).expect("node status");
        assert_eq!(status["node"], name, "{status}");
    }
    let w = &doc["witness"];
    assert_eq!(w["listen"], format!("{}:7402", ips[2]), "{doc}");
    assert_eq!(w["admin"], format!("http://{}:7403", ips[2]), "{doc}");
    get_json(&format!("http://{}:7403/status", ips[2])).expect("witness status");
    let pids = member_pids(&doc);
    assert_eq!(pids.len(), 3, "{doc}");
    for &pid in &pids {
        assert!(alive(pid), "pid {pid} of lab.json is not running");
        assert_eq!(
            parent_of(pid),
            Some(lab.pid()),
            "pid {pid} is not the lab's child"
        );
    }
    let config = std::fs::read_to_string(dir.join("a.toml")).expect("a.toml");
    assert!(
        config.contains(&format!("[ha]\nwitness = \"{}:7402\"\n", ips[2])),
        "{config}"
    );

    // A device sends to both nodes; the message reaches the stream.
    let token = format!("lab-token-{}", std::process::id());
    for ip in &ips[..2] {
        common::run(
            Command::new("logger")
                .args(["-n", &ip.to_string(), "-P", "5514", "--udp", "--rfc5424"])
                .arg(&token),
        );
    }
    wait_for("the message in a node's stream", START_TIMEOUT, || {
        ips[..2]
            .iter()
            .filter_map(|ip| get_text(&format!("http://{ip}:7401/stream?from=0")))
            .any(|s| s.contains(&token))
            .then_some(())
    });

    // Ctrl-C: every child stops, the lab exits 0.
    lab.signal(Signal::SIGINT);
    let st = lab.wait_exit(STOP_TIMEOUT);
    assert!(st.success(), "lab exit {st}:\n{}", lab.output());
    for &pid in &pids {
        assert!(!alive(pid), "pid {pid} still running after the lab stopped");
    }
    let out = lab.output();
    for what in ["node a", "node b", "witness"] {
        assert!(out.contains(&format!("lab: {what} (pid")), "{out}");
    }
}

#[test]
fn lab_rerun_reuses_its_directory() {
    let scratch = Scratch::new("lab-rerun");
    let dir = scratch.path().join("lab");
    let ips = ips();
    let mut lab = Lab::start(&dir, ips);
    let first = lab.wait_ready();
    let secrets = [
        "keys/a.key",
        "keys/b.key",
        "keys/witness.key",
        "keys/ca.key",
        "admin.token",
    ];
    let before: Vec<Vec<u8>> = secrets
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect(f))
        .collect();
    let config = std::fs::read(dir.join("a.toml")).expect("a.toml");
    for f in secrets {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(f)).expect(f).permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{f} mode {mode:o}");
    }
    lab.signal(Signal::SIGTERM);
    assert!(lab.wait_exit(STOP_TIMEOUT).success(), "{}", lab.output());

    let mut again = Lab::start(&dir, lab.ips);
    let second = again.wait_ready();
    for (f, b) in secrets.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(dir.join(f)).expect(f),
            b,
            "{f} was rewritten"
        );
    }
    assert_eq!(std::fs::read(dir.join("a.toml")).expect("a.toml"), config);
    let pids = member_pids(&second);
    assert_eq!(pids.len(), 3, "{second}");
    for &pid in &pids {
        assert_eq!(parent_of(pid), Some(again.pid()), "lab.json has stale pids");
    }
    assert_ne!(member_pids(&first), pids);
    again.signal(Signal::SIGTERM);
    assert!(
        again.wait_exit(STOP_TIMEOUT).success(),
        "{}",
        again.output()
    );
}

#[test]
fn lab_refuses_a_port_in_use_and_leaves_nothing_running() {
    let scratch = Scratch::new("lab-busy");
    let dir = scratch.path().join("lab");
    let ips = ips();
    let busy = format!("{}:7401", ips[0]);
    let _holder = TcpListener::bind(&busy).expect("bind node a's admin address");
    let mut lab = Lab::start(&dir, ips);
    let st = lab.wait_exit(START_TIMEOUT);
    let out = lab.output();
    assert!(!st.success(), "lab exit {st}:\n{out}");
    assert!(out.contains(&busy), "{out}");
    assert!(out.contains("another lab"), "{out}");
    let dir_text = dir.display().to_string();
    assert_eq!(processes_mentioning(&dir_text), Vec::<i32>::new(), "{out}");
}

#[test]
fn switchover_and_resync_report_an_unreachable_node() {
    let url = format!("http://{}:7401", unique_ip());
    for cmd in ["switchover", "resync"] {
        let out = Command::new(BIN)
            .args([cmd, "--node", &url, "--timeout-secs", "1"])
            .output()
            .expect("run the client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(stderr.contains("cannot reach"), "{cmd}: {stderr}");
        assert!(stderr.contains(&url), "{cmd}: {stderr}");
    }
}

/// POST `path` on `admin` with an optional bearer token: the HTTP status.
fn post_status(admin: &str, path: &str, token: Option<&str>) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.post(format!("{admin}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    req.send_empty().expect("POST").status().as_u16()
}

/// The issue's checks (#15) on a lab: a capture of the link and witness ports holds no
/// message text; control is refused without the token and works with it.
#[test]
fn lab_link_carries_no_message_text_and_control_needs_the_token() {
    let scratch = Scratch::new("lab-trust");
    let dir = scratch.path().join("lab");
    let ips = ips();
    let mut lab = Lab::start(&dir, ips);
    lab.wait_ready();
    let admin = |i: usize| format!("http://{}:7401", ips[i]);
    // Wait for a redundant pair: the link is up and carries the journals.
    let active = wait_for("a redundant pair", START_TIMEOUT, || {
        let a = get_json(&format!("{}/status", admin(0)))?;
        let b = get_json(&format!("{}/status", admin(1)))?;
        let act = |s: &serde_json::Value| s["ha"]["role"] == "active";
        (a["ha"]["redundant"] == true && b["ha"]["redundant"] == true && (act(&a) ^ act(&b)))
            .then(|| usize::from(act(&b)))
    });

    // tcpdump on lo, the lab's three addresses, ports 7400 and 7402.
    let pcap = scratch.path().join("link.pcap");
    let tcpdump_err = scratch.path().join("tcpdump.err");
    let filter = format!(
        "(host {} or host {} or host {}) and (tcp port 7400 or tcp port 7402)",
        ips[0], ips[1], ips[2]
    );
    let mut tcpdump = Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg(&filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&tcpdump_err).expect("tcpdump stderr"))
        .spawn()
        .expect("run tcpdump (apt-get install tcpdump)");
    wait_for("tcpdump to listen", Duration::from_secs(20), || {
        std::fs::read_to_string(&tcpdump_err)
            .ok()?
            .contains("listening on")
            .then_some(())
    });
    // 200 marked messages to each node over TCP, the same bytes to both (as a device does).
    let marker = "TRUSTMARKER7f3a";
    let manifest = scratch.path().join("run.json");
    let out = Command::new(BIN)
        .args([
            "gen",
            "--transport",
            "tcp",
            "--count",
            "200",
            "--rate",
            "400",
        ])
        .args(["--run-id", marker])
        .args(["--to", &format!("{}:5514", ips[0])])
        .args(["--to", &format!("{}:5514", ips[1])])
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .expect("run gen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both nodes hold all 400 records (their own and the peer's copy): the link carried
    // each message, so its text crossed the capture.
    for i in 0..2 {
        wait_for("both journals copied", Duration::from_secs(60), || {
            let s = get_json(&format!("{}/status", admin(i)))?;
            let own = s["journal"]["last_seq"].as_u64()?;
            let copy = s["pair"]["copy"]["durable_seq"].as_u64()?;
            (own >= 200 && copy >= 200).then_some(())
        });
    }
    let stream = get_text(&format!("{}/stream?from=0", admin(active))).expect("stream");
    assert!(stream.contains(marker), "the marker is not in the stream");
    kill(Pid::from_raw(tcpdump.id() as i32), Signal::SIGINT).expect("stop tcpdump");
    wait_for("tcpdump to stop", Duration::from_secs(20), || {
        tcpdump.try_wait().ok().flatten()
    });
    let captured = std::fs::read(&pcap).expect("pcap");
    eprintln!(
        "[lab-trust] captured {} bytes on the link and witness ports ({})",
        captured.len(),
        std::fs::read_to_string(&tcpdump_err)
            .unwrap_or_default()
            .trim()
    );
    assert!(
        captured.len() > 100_000,
        "the capture holds {} bytes: it did not see the journals cross",
        captured.len()
    );
    for needle in [marker.as_bytes(), b"TWRXLINK"] {
        assert!(
            !captured.windows(needle.len()).any(|w| w == needle),
            "{:?} is readable on the link",
            String::from_utf8_lossy(needle)
        );
    }

    // Control without credentials: refused; read-only endpoints stay open.
    for path in ["/switchover", "/resync"] {
        assert_eq!(post_status(&admin(active), path, None), 401, "{path}");
        assert_eq!(
            post_status(&admin(active), path, Some("not-the-token")),
            401,
            "{path}"
        );
    }
    assert!(get_json(&format!("{}/status", admin(active))).is_some());
    // With the token from the lab's file: the roles swap.
    let out = Command::new(BIN)
        .args(["switchover", "--node", &admin(active)])
        .env("TWINRX_ADMIN_TOKEN_FILE", dir.join("admin.token"))
        .output()
        .expect("run switchover");
    assert!(
        out.status.success(),
        "switchover: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the roles to swap", Duration::from_secs(20), || {
        let s = get_json(&format!("{}/status", admin(1 - active)))?;
        (s["ha"]["role"] == "active").then_some(())
    });
    let st = get_json(&format!("{}/status", admin(active))).expect("status");
    assert!(st["admin"]["unauthorized"].as_u64() >= Some(4), "{st:#}");
    lab.signal(Signal::SIGTERM);
    assert!(lab.wait_exit(STOP_TIMEOUT).success(), "{}", lab.output());
}

/// `[admin] tls_cert_file`/`tls_key_file`: the admin API speaks HTTPS only; the CLI reaches it
/// with `--ca-file` (or `TWINRX_ADMIN_CA_FILE`), and control still needs the token.
#[test]
fn admin_over_https_needs_the_ca_and_control_the_token() {
    let s = Scratch::new("admin-https");
    let mut node = common::TestNode::new(&s.path().join("n"), "", "");
    let certs = common::make_certs(s.path(), node.ip);
    let text = std::fs::read_to_string(&node.config).expect("config");
    let text = text.replacen(
        "token_file = \"admin.token\"\n",
        &format!(
            "token_file = \"admin.token\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            certs.server_cert.display(),
            certs.server_key.display()
        ),
        1,
    );
    std::fs::write(&node.config, text).expect("config");
    node.spawn();
    let https = format!("https://{}:7401", node.ip);
    let twinrx = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().expect("run twinrx");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let ca = certs.ca.to_string_lossy().to_string();
    let (code, text) = wait_for("the node over https", START_TIMEOUT, || {
        let (code, text) = twinrx(&["status", "--node", &https, "--ca-file", &ca]);
        (code == Some(0)).then_some((code, text))
    });
    assert_eq!(code, Some(0), "{text}");
    // Plain HTTP gets nothing; HTTPS without the CA is refused by the CLI, naming the fix.
    let (code, text) = twinrx(&["status", "--node", &format!("http://{}:7401", node.ip)]);
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = twinrx(&["status", "--node", &https]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--ca-file"), "{text}");
    // A certificate the CA did not issue: refused.
    let wrong = certs.wrong_cert.to_string_lossy().to_string();
    let (code, text) = twinrx(&["status", "--node", &https, "--ca-file", &wrong]);
    assert_eq!(code, Some(2), "{text}");
    // Control over HTTPS: 401 without the token (exit 2, naming how to give it); with it the
    // node answers (409: a single node has no pair to resync).
    let (code, text) = twinrx(&["resync", "--node", &https, "--ca-file", &ca]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("401") && text.contains("--token-file"),
        "{text}"
    );
    let token = node.dir.join("admin.token").to_string_lossy().to_string();
    let (code, text) = twinrx(&[
        "resync",
        "--node",
        &https,
        "--ca-file",
        &ca,
        "--token-file",
        &token,
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not part of a pair"), "{text}");
}

/// `twinrx keys init` and `twinrx keys issue`, as an operator runs them: the files, their
/// modes, a second init refused, and a re-issued certificate that the pair's CA still vouches
/// for (the link loads it).
#[test]
fn keys_init_and_issue_make_what_the_link_loads() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Scratch::new("keys-cli");
    let dir = s.path().join("pair1");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(BIN)
            .args(args)
            .output()
            .expect("run twinrx keys");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["keys".as_ref(), "init".as_ref(), dir.as_os_str()]);
    assert_eq!(code, Some(0), "{text}");
    for f in ["ca.key", "a.key", "b.key", "witness.key"] {
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}: {mode:o}");
    }
    for p in ["a", "b", "witness"] {
        assert!(text.contains(&format!("{p}.pem")), "{text}");
        let party = replicator::Party::from_short(p).expect("party");
        replicator::tls::credentials_in(&dir, party).expect("the link loads what init wrote");
    }
    // A second init over the same CA is refused, naming why.
    let (code, text) = run(&["keys".as_ref(), "init".as_ref(), dir.as_os_str()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a CA is there already"), "{text}");
    // Re-issue node b into another directory: a new certificate the CA vouches for.
    let out = s.path().join("new-b");
    let ca_key = dir.join("ca.key");
    let (code, text) = run(&[
        "keys".as_ref(),
        "issue".as_ref(),
        "b".as_ref(),
        "--ca-key".as_ref(),
        ca_key.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    let old =
        replicator::tls::credentials_in(&dir, replicator::Party::Node(twinrx_types::NodeId::B))
            .expect("old b");
    let new =
        replicator::Credentials::load(&dir.join("ca.pem"), &out.join("b.pem"), &out.join("b.key"))
            .expect("the re-issued certificate loads with the pair's CA");
    let new_fp = new.fingerprint();
    assert_ne!(old.fingerprint(), new.fingerprint());
    assert!(text.contains(&new.fingerprint()), "{text}");
    // The proof: node a (from init) accepts the new node b in a real TLS handshake.
    let (a, b) = (
        replicator::Party::Node(twinrx_types::NodeId::A),
        replicator::Party::Node(twinrx_types::NodeId::B),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let peer = rt.block_on(async {
        let a_cfg = replicator::LinkConfig::new(
            a,
            &[b],
            replicator::tls::credentials_in(&dir, a).expect("a"),
        );
        let mut l = replicator::Listener::bind("127.0.0.1:0".parse().expect("addr"), a_cfg)
            .await
            .expect("bind");
        let b_cfg = replicator::LinkConfig::new(b, &[a], std::sync::Arc::new(new));
        let _client = replicator::connect(l.local_addr(), &b_cfg)
            .await
            .expect("the re-issued b is accepted");
        l.accept()
            .await
            .expect("accept")
            .peer_cert_sha256()
            .to_string()
    });
    assert_eq!(peer, new_fp);
    // An unknown party is refused.
    let (code, text) = run(&[
        "keys".as_ref(),
        "issue".as_ref(),
        "c".as_ref(),
        "--ca-key".as_ref(),
        ca_key.as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("must be a, b or witness"), "{text}");
}
