//! The failure patterns of SPEC "Failure patterns" (F5–F8, F11–F13, a combination, a slow
//! link) made to a real pair + witness in the network-namespace lab (tests/common/netns.rs):
//! the witness in ns `w`, node a in ns `a`, node b in ns `b`, the devices (`twinrx gen`) in ns
//! `dev`, sending every message to both nodes' service addresses. Every pattern injects its
//! fault mid-load, measures the failover (fault → the other node publishing with a growing
//! stream), samples both nodes every 20 ms for a double publisher, then recovers with
//! `twinrx resync` on the affected node and proves the merged stream: identical on both nodes,
//! every sent message exactly once (`twinrx check`), both nodes redundant.
//!
//! Run: `cargo test --features fault-injection --test netns_faults` (F8 needs the feature and
//! fails saying so without it). The campaign: `tests/fault-campaign.sh [--rounds N]
//! [--patterns F5,F7,...]` (the `#[ignore]`d `campaign` test, env FAULT_ROUNDS,
//! FAULT_PATTERNS, FAULT_SEED). Needs root, iproute2, iputils-ping.
//!
//! Each node's admin server listens on 127.0.0.1:7401 inside its own namespace, so it stays
//! reachable while the node's cables are pulled; the test talks to it from a thread that has
//! entered the namespace (`setns`), with a tiny HTTP/1.0 client and short deadlines (a
//! SIGSTOPped node accepts connections but never answers).

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{Host, Net, NetLab};
use common::{creds, fill, write_keys, Scratch, Tmpfs, ADMIN_TOKEN, BIN};
use nix::sys::signal::Signal;
use serde_json::Value;

/// One pattern at a time in this test binary: each runs three nodes and a generator on a
/// machine that may have only two CPUs, and measures timings.
static SERIAL: Mutex<()> = Mutex::new(());

const ADMIN: &str = "127.0.0.1:7401";
const ADMIN_URL: &str = "http://127.0.0.1:7401";
/// G4: failover within 3 s (p99, default settings).
const FAILOVER_LIMIT_MS: u64 = 3000;

// ---------------------------------------------------------------------------------------------
// Small tools: a seeded PRNG, HTTP from inside a namespace.

/// splitmix64: seeded, reproducible timings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi].
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;

/// Moves the calling thread into network namespace `ns` (sockets it creates from now on live
/// there). Only ever called on threads this file spawns for the purpose.
fn enter_ns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid fd with a valid flag; affects only this thread.
    let rc = unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Runs `f` on a fresh thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_ns(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// One HTTP/1.0 request on the calling thread (in whatever namespace it is): (status, body).
fn http_here(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let sa: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(timeout)).ok();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out reading the answer".into());
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// HTTP to `addr` from inside namespace `ns`.
fn http_ns(
    ns: &str,
    addr: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let (addr, method, path) = (addr.to_string(), method.to_string(), path.to_string());
    in_ns(ns, move || http_here(&addr, &method, &path, timeout))
}

// ---------------------------------------------------------------------------------------------
// The trio.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    A,
    B,
}

impl Node {
    fn host(self) -> Host {
        match self {
            Node::A => Host::A,
            Node::B => Host::B,
        }
    }
    fn other(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Node::A => "a",
            Node::B => "b",
        }
    }
}

/// A node's HA view, as sampled.
#[derive(Clone, Debug)]
struct View {
    role: String,
    epoch: u64,
    publishing: bool,
    redundant: bool,
    stream_end: u64,
}

impl View {
    fn of(status: &Value) -> Option<View> {
        let ha = status.get("ha")?;
        Some(View {
            role: ha["role"].as_str()?.to_string(),
            epoch: ha["epoch"].as_u64().unwrap_or(0),
            publishing: ha["publishing"] == true,
            redundant: ha["redundant"] == true,
            stream_end: ha["stream_end"].as_u64().unwrap_or(0),
        })
    }
    fn publishes(&self) -> bool {
        matches!(self.role.as_str(), "active" | "solo") && self.publishing
    }
}

/// Options of a trio that some patterns change.
#[derive(Clone, Default)]
struct TrioOpts {
    /// Mount a tmpfs of this size under each node's data dir (F11).
    tmpfs: Option<&'static str>,
    /// Put each node's data dir on a loop device (ext4) whose writes can be throttled.
    loop_disks: bool,
    /// Node a dials these instead of the peer's link addresses (the userspace impairment).
    a_peer_override: Option<Vec<String>>,
}

struct NetTrio {
    // Field order = drop order: the lab (its processes) goes first, then the mounts, then the
    // directory.
    proxies: Vec<SlowProxy>,
    lab: NetLab,
    _tmpfs: Vec<Tmpfs>,
    disks: BTreeMap<Node, LoopDisk>,
    scratch: Scratch,
    nodes: BTreeMap<Node, u32>,
    witness: Option<u32>,
    runs: Vec<PathBuf>,
    next_run: u32,
    log: Vec<String>,
}

impl NetTrio {
    fn new(tag: &str, opts: &TrioOpts) -> NetTrio {
        let mut t = NetTrio::build(tag, opts);
        t.start_all();
        t
    }

    /// Starts the witness, node a and node b, and waits until the pair is redundant.
    fn start_all(&mut self) {
        self.start_witness();
        // Both at once: a node on a new data dir first asks its peer where the peer's copy of
        // its journal ends (waiting up to 10 s for an answer).
        self.spawn_node(Node::A);
        self.spawn_node(Node::B);
        self.wait_admin(Node::A);
        self.wait_admin(Node::B);
        self.wait_redundant(Duration::from_secs(30));
    }

    /// The lab, the key and the configs; nothing started.
    fn build(tag: &str, opts: &TrioOpts) -> NetTrio {
        let scratch = Scratch::new(tag);
        let lab = NetLab::new();
        let dir = scratch.path().to_path_buf();
        let keys = dir.join("keys");
        write_keys(&keys);
        let mut tmpfs = Vec::new();
        let mut disks = BTreeMap::new();
        for n in [Node::A, Node::B] {
            let nd = dir.join(n.name());
            std::fs::create_dir_all(nd.join("data")).expect("node dir");
            if let Some(size) = opts.tmpfs {
                tmpfs.push(Tmpfs::mount(&nd.join("data"), size));
            }
            if opts.loop_disks {
                disks.insert(
                    n,
                    LoopDisk::new(&nd.join("disk.img"), 400, &nd.join("data")),
                );
            }
            let peer = match (n, &opts.a_peer_override) {
                (Node::A, Some(p)) => p.clone(),
                _ => vec!["10.88.0.12:7400".into(), "10.89.0.12:7400".into()],
            };
            let peer_list = peer
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let ip = format!("10.88.0.{}", if n == Node::A { 11 } else { 12 });
            std::fs::write(
                nd.join("node.toml"),
                format!(
                    "[node]\nname = \"{name}\"\ndata_dir = \"data\"\n\n\
                     [syslog]\nudp = [\"{ip}:5514\"]\ntcp = [\"{ip}:5514\"]\n\n\
                     [snmp]\nlisten = []\n\n\
                     [admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"admin.token\"\n\n\
                     [pair]\npeer = [{peer_list}]\n\
                     listen = [\"10.88.0.12:7400\", \"10.89.0.12:7400\"]\n\
                     {creds}\n\
                     [ha]\nwitness = \"10.88.0.13:7402\"\n",
                    name = n.name(),
                    creds = creds(&keys, n.name()),
                ),
            )
            .expect("node config");
            let token = nd.join("admin.token");
            std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).expect("token");
            std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod token");
        }
        std::fs::create_dir_all(dir.join("w")).expect("witness dir");
        std::fs::write(
            dir.join("w/witness.toml"),
            format!(
                "listen = \"10.88.0.13:7402\"\nadmin_listen = \"10.88.0.13:7403\"\n\
                 data_dir = \"data\"\n{}",
                creds(&keys, "witness")
            ),
        )
        .expect("witness config");
        NetTrio {
            proxies: Vec::new(),
            lab,
            _tmpfs: tmpfs,
            disks,
            scratch,
            nodes: BTreeMap::new(),
            witness: None,
            runs: Vec::new(),
            next_run: 0,
            log: Vec::new(),
        }
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Copies the processes' logs out of the scratch dir (which is removed) for a post-mortem.
    fn keep_logs(&self) -> PathBuf {
        let to = std::env::temp_dir()
            .join("twinrx-netns-faults")
            .join(self.lab.id());
        let _ = std::fs::create_dir_all(&to);
        for name in ["a.log", "b.log", "witness.log", "gen.log"] {
            let _ = std::fs::copy(self.dir().join(name), to.join(name));
        }
        let _ = std::fs::write(to.join("test.log"), self.log.join("\n"));
        to
    }

    fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("  [{}] {s}", self.lab.id());
        self.log.push(s);
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(name))
            .expect("log file")
    }

    fn start_witness(&mut self) {
        let log = self.log_file("witness.log");
        let cfg = self.dir().join("w/witness.toml");
        let pid = self.lab.spawn(
            self.lab
                .command(Host::W, BIN)
                .args(["witness", "--config"])
                .arg(cfg)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        );
        self.witness = Some(pid);
        let ns = self.lab.ns(Host::W);
        common::wait_for("the witness's admin API", Duration::from_secs(20), || {
            if let Some(st) = self.lab.try_wait(pid) {
                panic!(
                    "witness exited during start-up ({st}):\n{}",
                    self.tail_log("witness.log")
                );
            }
            http_ns(
                &ns,
                "10.88.0.13:7403",
                "GET",
                "/status",
                Duration::from_secs(1),
            )
            .ok()
            .filter(|(c, _)| *c == 200)
        });
    }

    fn kill_witness(&mut self) {
        let pid = self.witness.take().expect("witness running");
        self.lab.kill(pid);
    }

    fn start_node(&mut self, n: Node) {
        self.spawn_node(n);
        self.wait_admin(n);
    }

    fn spawn_node(&mut self, n: Node) {
        let log = self.log_file(&format!("{}.log", n.name()));
        let cfg = self.dir().join(n.name()).join("node.toml");
        let pid = self.lab.spawn(
            self.lab
                .command(n.host(), BIN)
                .args(["node", "--config"])
                .arg(cfg)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        );
        self.nodes.insert(n, pid);
    }

    fn wait_admin(&self, n: Node) {
        let pid = self.pid(n);
        common::wait_for(
            &format!("node {}'s admin API", n.name()),
            Duration::from_secs(20),
            || {
                if let Some(st) = self.lab.try_wait(pid) {
                    panic!(
                        "node {} exited during start-up ({st}):\n{}",
                        n.name(),
                        self.tail_log(&format!("{}.log", n.name()))
                    );
                }
                self.status(n)
            },
        );
    }

    fn pid(&self, n: Node) -> u32 {
        self.nodes[&n]
    }

    fn kill_node(&mut self, n: Node) {
        let pid = self.nodes.remove(&n).expect("node running");
        self.lab.kill(pid);
    }

    fn tail_log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn status(&self, n: Node) -> Option<Value> {
        status_in(&self.lab.ns(n.host()), Duration::from_millis(1500))
    }

    fn view(&self, n: Node) -> Option<View> {
        self.status(n).and_then(|s| View::of(&s))
    }

    /// `twinrx status` (human text) run inside the node's namespace, for the report and docs.
    fn status_text(&self, n: Node) -> String {
        // `timeout`: a SIGSTOPped node accepts the connection but never answers.
        let out = self.lab.exec(
            n.host(),
            &["timeout", "3", BIN, "status", "--node", ADMIN_URL],
        );
        if out.status.code() == Some(124) {
            return "(no answer within 3 s: the node is stopped)\n".into();
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn post(&self, n: Node, path: &str) -> Result<(u16, String), String> {
        http_ns(
            &self.lab.ns(n.host()),
            ADMIN,
            "POST",
            path,
            Duration::from_secs(5),
        )
    }

    fn wait_redundant(&self, timeout: Duration) {
        let mut last = (None, None);
        let r = wait_cond(timeout, || {
            let va = self.view(Node::A);
            let vb = self.view(Node::B);
            let ok = matches!((&va, &vb), (Some(a), Some(b)) if a.redundant && b.redundant
                && (a.publishes() ^ b.publishes()));
            last = (va, vb);
            ok
        });
        if !r {
            panic!(
                "the pair did not become redundant within {timeout:?}: a {:?} b {:?}\n\
                 a: {}\nb: {}\n--- a.log\n{}\n--- b.log\n{}",
                last.0,
                last.1,
                self.status_text(Node::A),
                self.status_text(Node::B),
                self.tail_log("a.log"),
                self.tail_log("b.log")
            );
        }
    }

    /// The node that publishes now (waits for exactly one).
    fn active(&self) -> Node {
        common::wait_for(
            "exactly one publishing node",
            Duration::from_secs(20),
            || {
                let a = self.view(Node::A).is_some_and(|v| v.publishes());
                let b = self.view(Node::B).is_some_and(|v| v.publishes());
                match (a, b) {
                    (true, false) => Some(Node::A),
                    (false, true) => Some(Node::B),
                    _ => None,
                }
            },
        )
    }

    /// Starts `twinrx gen` in the devices' namespace, sending to both nodes.
    fn start_load(&mut self, count: u64, rate: u64) -> Load {
        self.next_run += 1;
        let manifest = self.dir().join(format!("run{}.json", self.next_run));
        let log = self.log_file("gen.log");
        let run_id = format!("r{}", self.next_run);
        let pid = self.lab.spawn(
            self.lab
                .command(Host::Dev, BIN)
                .args(["gen", "--to", "10.88.0.11:5514", "--to", "10.88.0.12:5514"])
                .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
                .args(["--run-id", &run_id, "--manifest"])
                .arg(&manifest)
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log),
        );
        self.runs.push(manifest.clone());
        Load {
            pid,
            manifest,
            started: Instant::now(),
            count,
            rate,
        }
    }

    fn wait_load(&self, load: &Load) {
        let budget = Duration::from_secs(load.count / load.rate.max(1) + 60);
        let st = self.lab.wait_exit(load.pid, budget);
        assert!(
            st.success(),
            "twinrx gen failed ({st}):\n{}",
            self.tail_log("gen.log")
        );
        assert!(load.manifest.exists(), "gen wrote no manifest");
    }

    /// `twinrx resync` against `n`; Err with its output and both statuses unless it exits 0.
    fn try_resync(&mut self, n: Node) -> Result<(), String> {
        let t = Instant::now();
        let token = self.dir().join(n.name()).join("admin.token");
        let token = token.to_string_lossy();
        let out = self.lab.exec_timeout(
            n.host(),
            &[
                BIN,
                "resync",
                "--node",
                ADMIN_URL,
                "--token-file",
                &token,
                "--timeout-secs",
                "60",
            ],
            Duration::from_secs(90),
        );
        let so = String::from_utf8_lossy(&out.stdout).into_owned();
        let se = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(format!(
                "twinrx resync on {} failed ({}):\nstdout: {so}\nstderr: {se}\na: {}\nb: {}",
                n.name(),
                out.status,
                self.status_text(Node::A),
                self.status_text(Node::B)
            ));
        }
        self.note(format!(
            "resync {} ok in {} ms: {}",
            n.name(),
            t.elapsed().as_millis(),
            so.lines().last().unwrap_or("")
        ));
        Ok(())
    }

    /// The committed stream of one node (when the pair could not be made redundant again).
    fn stream_of(&self, n: Node) -> String {
        let (code, body) = http_ns(
            &self.lab.ns(n.host()),
            ADMIN,
            "GET",
            "/stream?from=0",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("stream from {}: {e}", n.name()));
        assert_eq!(code, 200, "stream from {}: {body}", n.name());
        body
    }

    /// Waits until both nodes' committed streams stop growing and agree, then returns the
    /// stream (NDJSON) after asserting it is byte-identical on both nodes.
    fn dump(&self) -> String {
        let mut stable_since: Option<(Instant, u64)> = None;
        let ok = wait_cond(Duration::from_secs(60), || {
            let (Some(a), Some(b)) = (self.status(Node::A), self.status(Node::B)) else {
                return false;
            };
            let ca = a["stream"]["committed_end"].as_u64().unwrap_or(0);
            let cb = b["stream"]["committed_end"].as_u64().unwrap_or(0);
            if ca != cb {
                stable_since = None;
                return false;
            }
            match stable_since {
                Some((t, v)) if v == ca => t.elapsed() > Duration::from_secs(6),
                _ => {
                    stable_since = Some((Instant::now(), ca));
                    false
                }
            }
        });
        assert!(ok, "the nodes' committed streams never agreed and settled");
        let a = self.stream_of(Node::A);
        let b = self.stream_of(Node::B);
        if a != b {
            let la: Vec<&str> = a.lines().collect();
            let lb: Vec<&str> = b.lines().collect();
            let first = la.iter().zip(&lb).position(|(x, y)| x != y);
            panic!(
                "the merged stream differs between the nodes: a {} entries, b {} entries, \
                 first difference at line {first:?}",
                la.len(),
                lb.len()
            );
        }
        a
    }

    /// `twinrx check` of every run so far against the stream.
    fn check(&self, stream: &str) -> Value {
        let path = self.dir().join("stream.ndjson");
        std::fs::write(&path, stream).expect("write dump");
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("check");
        for m in &self.runs {
            cmd.arg("--manifest").arg(m);
        }
        cmd.arg("--stream").arg(&path).arg("--json");
        let out = cmd.output().expect("run twinrx check");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "twinrx check --json printed no JSON ({e}): {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn status_in(ns: &str, timeout: Duration) -> Option<Value> {
    let (code, body) = http_ns(ns, ADMIN, "GET", "/status", timeout).ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Polls `f` every 20 ms until true or `timeout`; returns whether it became true.
fn wait_cond(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Load {
    pid: u32,
    manifest: PathBuf,
    started: Instant,
    count: u64,
    rate: u64,
}

// ---------------------------------------------------------------------------------------------
// Sampling both nodes during a fault.

#[derive(Clone, Debug)]
struct Sample {
    /// ms since the fault.
    t: i64,
    /// None: the node did not answer in time (stopped, killed).
    v: Option<View>,
}

/// One thread per node, each inside its node's namespace, polling `/status` every 20 ms.
struct Sampler {
    t0: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<(Node, std::thread::JoinHandle<Vec<Sample>>)>,
}

impl Sampler {
    fn start(trio: &NetTrio) -> Sampler {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [Node::A, Node::B]
            .into_iter()
            .map(|n| {
                let ns = trio.lab.ns(n.host());
                let stop = stop.clone();
                let h = std::thread::spawn(move || {
                    enter_ns(&ns);
                    let mut out = Vec::new();
                    // Bounded: at most 10 minutes of samples.
                    for _ in 0..30_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let s = Instant::now();
                        let v = http_here(ADMIN, "GET", "/status", Duration::from_millis(300))
                            .ok()
                            .filter(|(c, _)| *c == 200)
                            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                            .and_then(|st| View::of(&st));
                        let t = s.duration_since(t0).as_millis() as i64;
                        out.push(Sample { t, v });
                        std::thread::sleep(Duration::from_millis(20).saturating_sub(s.elapsed()));
                    }
                    out
                });
                (n, h)
            })
            .collect();
        Sampler { t0, stop, threads }
    }

    /// Resets the time origin to "now" (the fault instant) for the analysis.
    fn mark(&mut self) -> i64 {
        self.t0.elapsed().as_millis() as i64
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let mut by = BTreeMap::new();
        for (n, h) in self.threads {
            by.insert(n, h.join().expect("sampler thread"));
        }
        Samples { by }
    }
}

struct Samples {
    by: BTreeMap<Node, Vec<Sample>>,
}

impl Samples {
    /// Intervals [t_i, t_{i+1}] in which `n` published with its stream growing, with the epoch.
    fn publishing_intervals(&self, n: Node) -> Vec<(i64, i64, u64)> {
        let s = &self.by[&n];
        s.windows(2)
            .filter_map(|w| match (&w[0].v, &w[1].v) {
                (Some(x), Some(y))
                    if x.publishes()
                        && y.publishes()
                        && x.epoch == y.epoch
                        && y.stream_end > x.stream_end =>
                {
                    Some((w[0].t, w[1].t, x.epoch))
                }
                _ => None,
            })
            .collect()
    }

    /// Both nodes publishing with growing streams in overlapping intervals: a double publisher.
    fn double_publisher(&self) -> Option<String> {
        let a = self.publishing_intervals(Node::A);
        let b = self.publishing_intervals(Node::B);
        for x in &a {
            for y in &b {
                if x.0 < y.1 && y.0 < x.1 {
                    return Some(format!(
                        "a published (epoch {}) in {}..{} ms and b (epoch {}) in {}..{} ms",
                        x.2, x.0, x.1, y.2, y.0, y.1
                    ));
                }
            }
        }
        None
    }

    /// ms from `t_fault` until `n` was seen publishing with a growing stream.
    fn takeover_ms(&self, n: Node, t_fault: i64) -> Option<u64> {
        self.publishing_intervals(n)
            .into_iter()
            .find(|iv| iv.1 > t_fault && iv.0 >= t_fault - 20)
            .map(|iv| (iv.1 - t_fault).max(0) as u64)
    }

    /// Whether `n` published (with a growing stream) at any time after `t`.
    fn published_after(&self, n: Node, t: i64) -> bool {
        self.publishing_intervals(n).iter().any(|iv| iv.1 > t)
    }

    fn roles(&self, n: Node) -> String {
        let mut out: Vec<String> = Vec::new();
        for s in &self.by[&n] {
            let r = match &s.v {
                Some(v) => format!("{}{}", v.role, if v.publishing { "+pub" } else { "" }),
                None => "-".to_string(),
            };
            if out
                .last()
                .map(|l| l.split('@').next() != Some(r.as_str()))
                .unwrap_or(true)
            {
                out.push(format!("{r}@{}", s.t));
            }
        }
        out.join(" ")
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pattern {
    F5,
    F6,
    F7,
    F8Journal,
    F8Merger,
    F8SlowDisk,
    F11,
    F12,
    F13,
    F12Kill,
    SlowLink,
}

impl Pattern {
    const ALL: [Pattern; 11] = [
        Pattern::F5,
        Pattern::F6,
        Pattern::F7,
        Pattern::F8Journal,
        Pattern::F8Merger,
        Pattern::F8SlowDisk,
        Pattern::F11,
        Pattern::F12,
        Pattern::F13,
        Pattern::F12Kill,
        Pattern::SlowLink,
    ];

    fn name(self) -> &'static str {
        match self {
            Pattern::F5 => "F5",
            Pattern::F6 => "F6",
            Pattern::F7 => "F7",
            Pattern::F8Journal => "F8-journal",
            Pattern::F8Merger => "F8-merger",
            Pattern::F8SlowDisk => "F8-slowdisk",
            Pattern::F11 => "F11",
            Pattern::F12 => "F12",
            Pattern::F13 => "F13",
            Pattern::F12Kill => "F12+F1",
            Pattern::SlowLink => "netem",
        }
    }

    fn parse(s: &str) -> Option<Pattern> {
        let s = s.trim().to_ascii_lowercase();
        Pattern::ALL.into_iter().find(|p| {
            p.name().to_ascii_lowercase() == s
                || (s == "f8" && *p == Pattern::F8Journal)
                || (s == "combo" && *p == Pattern::F12Kill)
                || (s == "slow" && *p == Pattern::SlowLink)
        })
    }

    /// Whether the pattern must fail over (measured), must not (epoch unchanged), or either.
    fn expects_failover(self) -> Option<bool> {
        match self {
            Pattern::F5
            | Pattern::F7
            | Pattern::F8Journal
            | Pattern::F8Merger
            | Pattern::F8SlowDisk
            | Pattern::F11 => Some(true),
            Pattern::F6 | Pattern::F13 => Some(false),
            Pattern::F12 | Pattern::F12Kill | Pattern::SlowLink => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Outcome {
    passed: bool,
    failover_ms: Option<u64>,
    sent: u64,
    in_stream: u64,
    missing: u64,
    duplicated: u64,
    double_publisher: bool,
    /// The run passed but noted something unexpected (a line starting `NOTE:`): the logs are
    /// kept and the campaign prints the detail.
    noted: bool,
    detail: String,
}

/// Runs one pattern end to end; never panics for a product failure it can describe (the
/// Outcome says what went wrong); panics only when the lab itself cannot run.
fn run_pattern(p: Pattern, seed: u64) -> Outcome {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("=== pattern {} seed {seed}", p.name());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_pattern_inner(p, seed)));
    match r {
        Ok(o) => o,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Outcome {
                passed: false,
                detail: format!("{} seed {seed}: {msg}", p.name()),
                ..Outcome::default()
            }
        }
    }
}

/// What a pattern did to the pair, for the common proof at the end.
struct Run {
    trio: NetTrio,
    failures: Vec<String>,
    failover_ms: Option<u64>,
    double_publisher: Option<String>,
    /// Node whose recovery is `twinrx resync`.
    affected: Node,
}

fn run_pattern_inner(p: Pattern, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    let mut run = match p {
        Pattern::F5 => f5(&mut rng),
        Pattern::F6 => f6(&mut rng),
        Pattern::F7 => f7(&mut rng),
        Pattern::F8Journal => f8(&mut rng, "journal"),
        Pattern::F8Merger => f8(&mut rng, "merger"),
        Pattern::F8SlowDisk => f8_slow_disk(&mut rng),
        Pattern::F11 => f11(&mut rng),
        Pattern::F12 => f12(&mut rng),
        Pattern::F13 => f13(&mut rng),
        Pattern::F12Kill => f12_kill(&mut rng),
        Pattern::SlowLink => slow_link(&mut rng),
    };
    // The common end: resync of the affected node, both redundant, identical streams, check.
    let affected = run.affected;
    let resynced = run.trio.try_resync(affected);
    let status_after = format!(
        "--- twinrx status on a after recovery:\n{}\n--- on b:\n{}",
        run.trio.status_text(Node::A),
        run.trio.status_text(Node::B)
    );
    let stream = match resynced {
        Ok(()) => {
            run.trio.wait_redundant(Duration::from_secs(60));
            run.trio.dump()
        }
        Err(e) => {
            // Still count what the publisher holds, so the figures say what was (not) lost.
            run.failures.push(e);
            let publisher = run.trio.active();
            std::thread::sleep(Duration::from_secs(6));
            run.trio.stream_of(publisher)
        }
    };
    let rep = run.trio.check(&stream);
    let g = |k: &str| rep[k].as_u64().unwrap_or(u64::MAX);
    let (sent, present, missing, dup) = (g("sent"), g("present"), g("missing"), g("duplicated"));
    if !(missing == 0 && dup == 0 && rep["offset_gaps"] == 0 && rep["epoch_regressions"] == 0) {
        run.failures.push(format!(
            "check: sent {sent} present {present} missing {missing} duplicated {dup} \
             offset gaps {} epoch regressions {}; examples {} {}",
            rep["offset_gaps"],
            rep["epoch_regressions"],
            rep["missing_examples"],
            rep["duplicated_examples"]
        ));
    }
    if let Some(lim) = p
        .expects_failover()
        .filter(|&f| f)
        .map(|_| FAILOVER_LIMIT_MS)
    {
        match run.failover_ms {
            Some(ms) if ms <= lim => {}
            Some(ms) => run
                .failures
                .push(format!("failover took {ms} ms (limit {lim})")),
            None => run.failures.push("no failover observed".into()),
        }
    }
    if let Some(d) = &run.double_publisher {
        run.failures.push(format!("double publisher: {d}"));
    }
    let passed = run.failures.is_empty();
    let noted = run.trio.log.iter().any(|l| l.contains("NOTE:"));
    let mut detail = run.trio.log.join("\n");
    if !passed {
        let kept = run.trio.keep_logs();
        detail = format!(
            "{} seed {seed} FAILED: {}\n{detail}\n{status_after}\nlogs kept in {}",
            p.name(),
            run.failures.join("; "),
            kept.display()
        );
    } else if noted {
        let kept = run.trio.keep_logs();
        detail = format!(
            "{} seed {seed} passed with a note\n{detail}\n{status_after}\nlogs kept in {}",
            p.name(),
            kept.display()
        );
    } else {
        detail = format!("{detail}\n{status_after}");
    }
    Outcome {
        passed,
        noted,
        failover_ms: run.failover_ms,
        sent,
        in_stream: present,
        missing,
        duplicated: dup,
        double_publisher: run.double_publisher.is_some(),
        detail,
    }
}

/// Message count and rate of the load of one pattern: long enough to span the fault.
fn load_for(secs: u64) -> (u64, u64) {
    let rate = 400;
    (rate * secs, rate)
}

/// Waits until `load` has run for `ms` (a point mid-load to inject the fault).
fn at_load_ms(load: &Load, ms: u64) {
    let t = load.started + Duration::from_millis(ms);
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// Records the status text of both nodes in the trio's log (what the operator sees).
fn snapshot(trio: &mut NetTrio, when: &str) {
    let a = trio.status_text(Node::A);
    let b = trio.status_text(Node::B);
    trio.note(format!(
        "twinrx status {when}:\n----- a -----\n{a}\n----- b -----\n{b}"
    ));
}

/// The common shape of a "the active fails, the other takes over" pattern: start, load,
/// inject at a random point, hold, measure, undo.
fn failover_pattern(
    tag: &str,
    opts: TrioOpts,
    rng: &mut Rng,
    inject: impl FnOnce(&mut NetTrio, Node),
    hold: Duration,
    undo: impl FnOnce(&mut NetTrio, Node),
) -> Run {
    let mut trio = NetTrio::new(tag, &opts);
    let active = trio.active();
    let other = active.other();
    let secs = 4 + hold.as_secs() + 4;
    let (count, rate) = load_for(secs);
    let load = trio.start_load(count, rate);
    at_load_ms(&load, rng.range(1000, 2500));
    let mut sampler = Sampler::start(&trio);
    std::thread::sleep(Duration::from_millis(100));
    let t_fault = sampler.mark();
    inject(&mut trio, active);
    trio.note(format!(
        "fault injected on the active {} at {t_fault} ms",
        active.name()
    ));
    let mut took = None;
    let fault_at = Instant::now();
    wait_cond(Duration::from_secs(10), || {
        let ok = trio.view(other).is_some_and(|v| v.publishes());
        if ok && took.is_none() {
            took = Some(fault_at.elapsed());
        }
        ok
    });
    let rest = hold.saturating_sub(fault_at.elapsed());
    std::thread::sleep(rest);
    snapshot(&mut trio, "during the fault");
    undo(&mut trio, active);
    trio.note(format!("fault undone on {}", active.name()));
    trio.wait_load(&load);
    std::thread::sleep(Duration::from_millis(200));
    let samples = sampler.finish();
    let failover_ms = samples.takeover_ms(other, t_fault);
    trio.note(format!(
        "roles a: {}\nroles b: {}",
        samples.roles(Node::A),
        samples.roles(Node::B)
    ));
    trio.note(format!(
        "failover {:?} ms (first publishing seen after {:?})",
        failover_ms, took
    ));
    snapshot(&mut trio, "after the fault was undone, before resync");
    Run {
        failures: Vec::new(),
        failover_ms,
        double_publisher: samples.double_publisher(),
        affected: active,
        trio,
    }
}

fn f5(rng: &mut Rng) -> Run {
    failover_pattern(
        "f5",
        TrioOpts::default(),
        rng,
        |t, n| t.lab.cut(n.host()),
        Duration::from_secs(3),
        |t, n| t.lab.restore(n.host()),
    )
}

fn f7(rng: &mut Rng) -> Run {
    failover_pattern(
        "f7",
        TrioOpts::default(),
        rng,
        |t, n| t.lab.remove_addr(n.host(), Net::Service),
        Duration::from_secs(3),
        |t, n| t.lab.add_addr(n.host(), Net::Service),
    )
}

fn f8(rng: &mut Rng, what: &'static str) -> Run {
    failover_pattern(
        &format!("f8{what}"),
        TrioOpts::default(),
        rng,
        move |t, n| {
            let r = t.post(n, &format!("/fault?freeze={what}"));
            match r {
                Ok((200, _)) => {}
                Ok((404, body)) => panic!(
                    "POST /fault answered 404 ({}): the binary lacks the cargo feature \
                     fault-injection; run `cargo test --features fault-injection --test netns_faults`",
                    body.trim()
                ),
                other => panic!("POST /fault?freeze={what}: {other:?}"),
            }
        },
        Duration::from_secs(3),
        |t, n| {
            let r = t.post(n, "/fault?freeze=none");
            assert!(matches!(r, Ok((200, _))), "unfreeze: {r:?}");
        },
    )
}

/// A real slow disk: the active's data dir is an ext4 file system on a loop device whose
/// writes the block layer throttles to 1 I/O per second (cgroup v1 blkio throttle on the
/// root cgroup, which only this test's loop device is subject to), so its fsyncs take seconds.
fn f8_slow_disk(rng: &mut Rng) -> Run {
    if let Err(e) = LoopDisk::throttle_possible() {
        panic!("a real slow disk cannot be made on this machine: {e}");
    }
    failover_pattern(
        "f8slowdisk",
        TrioOpts {
            loop_disks: true,
            ..TrioOpts::default()
        },
        rng,
        |t, n| t.disks[&n].throttle(1),
        Duration::from_secs(3),
        |t, n| t.disks[&n].throttle(0),
    )
}

const BLKIO_THROTTLE: &str = "/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device";

/// An ext4 file system on a loop device, mounted at a node's data dir; removed on drop.
struct LoopDisk {
    img: PathBuf,
    dev: String,
    majmin: String,
    mnt: PathBuf,
}

impl LoopDisk {
    fn throttle_possible() -> Result<(), String> {
        if !Path::new(BLKIO_THROTTLE).exists() {
            return Err(format!(
                "{BLKIO_THROTTLE} is missing (no cgroup v1 blkio controller; a cgroup v2 io.max \
                 variant is not implemented)"
            ));
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("no /dev/loop-control (loop devices)".into());
        }
        Ok(())
    }

    fn new(img: &Path, size_mb: u64, mnt: &Path) -> LoopDisk {
        let f = std::fs::File::create(img).expect("disk image");
        f.set_len(size_mb << 20).expect("size disk image");
        drop(f);
        let out = common::run(
            std::process::Command::new("losetup")
                .args(["-f", "--show"])
                .arg(img),
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = dev.trim_start_matches("/dev/").to_string();
        let majmin = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .expect("loop device numbers")
            .trim()
            .to_string();
        let d = LoopDisk {
            img: img.to_path_buf(),
            dev: dev.clone(),
            majmin,
            mnt: mnt.to_path_buf(),
        };
        common::run(std::process::Command::new("mkfs.ext4").args(["-q", &dev]));
        common::run(std::process::Command::new("mount").arg(&dev).arg(mnt));
        d
    }

    /// Limits writes to `iops` per second; 0 removes the limit.
    fn throttle(&self, iops: u32) {
        std::fs::write(BLKIO_THROTTLE, format!("{} {iops}\n", self.majmin))
            .unwrap_or_else(|e| panic!("write {BLKIO_THROTTLE}: {e}"));
    }
}

impl Drop for NetTrio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let to = self.keep_logs();
            eprintln!("logs of the failed run kept in {}", to.display());
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = std::fs::write(BLKIO_THROTTLE, format!("{} 0\n", self.majmin));
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
        let _ = std::fs::remove_file(&self.img);
    }
}

fn f11(rng: &mut Rng) -> Run {
    failover_pattern(
        "f11",
        TrioOpts {
            tmpfs: Some("256m"),
            ..TrioOpts::default()
        },
        rng,
        |t, n| {
            let data = t.dir().join(n.name()).join("data");
            fill(&data);
        },
        Duration::from_secs(3),
        |t, n| {
            let data = t.dir().join(n.name()).join("data");
            std::fs::remove_file(data.join("filler")).expect("remove filler");
        },
    )
}

/// F6: one of the two A–B links down: no failover for 3 s, both statuses name the link; then
/// both A–B paths down (a partition between the nodes, both still reaching the witness).
fn f6(rng: &mut Rng) -> Run {
    let mut trio = NetTrio::new("f6", &TrioOpts::default());
    let active = trio.active();
    let mut failures = Vec::new();
    let (count, rate) = load_for(16);
    let load = trio.start_load(count, rate);
    at_load_ms(&load, rng.range(1000, 2000));
    let mut sampler = Sampler::start(&trio);
    let e0 = trio.view(active).map(|v| v.epoch);
    trio.lab.link_down(Host::A, Net::Link2);
    sampler.mark();
    trio.note("link 2 (10.89.0.0/24) of node a pulled");
    // The link shows down in the HA block within a few heartbeats, and as a problem naming
    // the link (`silent`) once nothing was heard on it for the failover delay: well before
    // the session's 10 s idle timeout closes it.
    let t_down = Instant::now();
    for n in [Node::A, Node::B] {
        let mut ha_ms = None;
        let seen = wait_cond(Duration::from_secs(15), || {
            trio.status(n).is_some_and(|s| {
                let ups = s["ha"]["links_up"]
                    .as_array()
                    .map(|a| a.iter().filter(|u| **u == true).count())
                    .unwrap_or(9);
                if ups == 1 && ha_ms.is_none() {
                    ha_ms = Some(t_down.elapsed().as_millis());
                }
                let probs = s["problems"].to_string().to_ascii_lowercase();
                ups == 1 && probs.contains("link 1")
            })
        });
        trio.note(format!(
            "{}: link 1 down in ha.links_up after {ha_ms:?} ms, as a problem after {} ms",
            n.name(),
            t_down.elapsed().as_millis()
        ));
        if !seen {
            failures.push(format!(
                "{}'s status does not show one link down:\n{}",
                n.name(),
                trio.status_text(n)
            ));
        } else if t_down.elapsed() > Duration::from_secs(6) {
            failures.push(format!(
                "{}'s status named the cut link as a problem only after {} ms (the failover \
                 delay is 800 ms; the session idle timeout 10 s)",
                n.name(),
                t_down.elapsed().as_millis()
            ));
        }
    }
    let hold = t_down + Duration::from_secs(3);
    std::thread::sleep(hold.saturating_duration_since(Instant::now()));
    snapshot(&mut trio, "with one of two links down");
    let e1 = trio.view(active).map(|v| v.epoch);
    let still = trio.view(active).is_some_and(|v| v.publishes());
    if e0 != e1 || !still {
        failures.push(format!(
            "one link down caused a failover: epoch {e0:?} -> {e1:?}, {} publishing {still}",
            active.name()
        ));
    }
    // Phase 2: both A–B paths down.
    trio.lab.partition_nodes();
    trio.note("both A-B paths cut (partition_nodes)");
    std::thread::sleep(Duration::from_secs(3));
    snapshot(&mut trio, "with both A-B links down");
    trio.lab.heal_nodes();
    trio.lab.link_up(Host::A, Net::Link2);
    trio.note("links restored");
    trio.wait_load(&load);
    let samples = sampler.finish();
    trio.note(format!(
        "roles a: {}\nroles b: {}",
        samples.roles(Node::A),
        samples.roles(Node::B)
    ));
    snapshot(&mut trio, "after the links came back, before resync");
    let affected = if samples.published_after(active.other(), 0) {
        active
    } else {
        active.other()
    };
    Run {
        trio,
        failures,
        failover_ms: None,
        double_publisher: samples.double_publisher(),
        affected,
    }
}

/// F12: a partition between the nodes only, mid-load, for 4 s.
fn f12(rng: &mut Rng) -> Run {
    let mut trio = NetTrio::new("f12", &TrioOpts::default());
    let active = trio.active();
    let (count, rate) = load_for(12);
    let load = trio.start_load(count, rate);
    at_load_ms(&load, rng.range(1000, 3000));
    let mut sampler = Sampler::start(&trio);
    let t = sampler.mark();
    trio.lab.partition_nodes();
    trio.note(format!(
        "nodes partitioned at {t} ms (active {})",
        active.name()
    ));
    std::thread::sleep(Duration::from_millis(rng.range(3500, 4500)));
    snapshot(&mut trio, "during the partition");
    trio.lab.heal_nodes();
    trio.note("partition healed");
    trio.wait_load(&load);
    let samples = sampler.finish();
    trio.note(format!(
        "roles a: {}\nroles b: {}",
        samples.roles(Node::A),
        samples.roles(Node::B)
    ));
    let now_active = trio.active();
    snapshot(&mut trio, "after the partition healed, before resync");
    Run {
        trio,
        failures: Vec::new(),
        failover_ms: None,
        double_publisher: samples.double_publisher(),
        affected: now_active.other(),
    }
}

/// F13: the witness SIGKILLed, then the active SIGSTOPped for 3 s: the standby cannot be
/// promoted (no majority) and must not publish; SIGCONT: the active carries on.
fn f13(rng: &mut Rng) -> Run {
    let mut trio = NetTrio::new("f13", &TrioOpts::default());
    let first = trio.active();
    let mut failures = Vec::new();
    let (count, rate) = load_for(14);
    let load = trio.start_load(count, rate);
    at_load_ms(&load, rng.range(1000, 2000));
    let mut sampler = Sampler::start(&trio);
    let e_first = trio.view(first).map(|v| v.epoch);
    trio.kill_witness();
    trio.note("witness SIGKILLed");
    // The pair carries on without the witness.
    let wd = wait_cond(Duration::from_secs(5), || {
        trio.status(first)
            .is_some_and(|s| s["ha"]["witness_reachable"] == false)
    });
    if !wd {
        failures.push("the active never noticed the witness was down".into());
    }
    std::thread::sleep(Duration::from_millis(rng.range(500, 1500)));
    // The node to stop is the one publishing now (the roles should not have changed when
    // the witness went; if they did, it is noted: a handover is safe, but unexpected).
    let active = trio.active();
    let standby = active.other();
    let e0 = trio.view(active).map(|v| v.epoch);
    if active != first || e0 != e_first {
        trio.note(format!(
            "NOTE: roles changed after the witness went down: {} (epoch {e_first:?}) -> {} \
             (epoch {e0:?})",
            first.name(),
            active.name()
        ));
    }
    let t_stop = sampler.mark();
    trio.lab.signal(trio.pid(active), Signal::SIGSTOP);
    trio.note(format!(
        "active {} SIGSTOPped at {t_stop} ms",
        active.name()
    ));
    let stopped_at = Instant::now();
    snapshot_one(&mut trio, standby, "witness down, active stopped");
    std::thread::sleep(
        (stopped_at + Duration::from_secs(3)).saturating_duration_since(Instant::now()),
    );
    trio.lab.signal(trio.pid(active), Signal::SIGCONT);
    let t_cont = sampler.mark();
    trio.note(format!("active {} SIGCONTed at {t_cont} ms", active.name()));
    // Both nodes are back: one of them publishes again (the resumed active renewing its
    // lease, or the standby promoted with the resumed node's vote: both are safe).
    let cont_at = Instant::now();
    let back = wait_cond(Duration::from_secs(10), || {
        trio.view(Node::A).is_some_and(|v| v.publishes())
            || trio.view(Node::B).is_some_and(|v| v.publishes())
    });
    if back {
        let who = if trio.view(active).is_some_and(|v| v.publishes()) {
            active
        } else {
            standby
        };
        trio.note(format!(
            "after SIGCONT {} publishes ({} ms)",
            who.name(),
            cont_at.elapsed().as_millis()
        ));
    } else {
        failures.push(format!(
            "nobody publishes 10 s after SIGCONT:\n{}\n{}",
            trio.status_text(Node::A),
            trio.status_text(Node::B)
        ));
    }
    let e1 = trio.view(active).map(|v| v.epoch);
    trio.wait_load(&load);
    let samples = sampler.finish();
    trio.note(format!(
        "roles a: {}\nroles b: {}",
        samples.roles(Node::A),
        samples.roles(Node::B)
    ));
    if samples
        .publishing_intervals(standby)
        .iter()
        .any(|iv| iv.1 > t_stop && iv.0 < t_cont)
    {
        failures.push(format!(
            "the standby {} published while the witness was down and the active stopped",
            standby.name()
        ));
    }
    trio.note(format!("active epoch {e0:?} -> {e1:?}"));
    trio.start_witness();
    trio.note("witness restarted");
    let now = trio.active();
    snapshot(&mut trio, "after the witness was restarted, before resync");
    Run {
        trio,
        failures,
        failover_ms: None,
        double_publisher: samples.double_publisher(),
        affected: now.other(),
    }
}

/// F12 then F1: partitioned, the publisher SIGKILLed; the survivor must not publish what it
/// lacks; heal, restart the killed node with its data dir, resync.
fn f12_kill(rng: &mut Rng) -> Run {
    let mut trio = NetTrio::new("f12kill", &TrioOpts::default());
    let (count, rate) = load_for(16);
    let load = trio.start_load(count, rate);
    at_load_ms(&load, rng.range(1000, 2000));
    let mut sampler = Sampler::start(&trio);
    trio.lab.partition_nodes();
    trio.note("nodes partitioned");
    std::thread::sleep(Duration::from_millis(rng.range(1500, 2500)));
    let publisher = trio.active();
    let t_kill = sampler.mark();
    trio.kill_node(publisher);
    trio.note(format!(
        "publisher {} SIGKILLed at {t_kill} ms while partitioned",
        publisher.name()
    ));
    std::thread::sleep(Duration::from_secs(2));
    let sv = trio.status(publisher.other());
    trio.note(format!(
        "survivor {} after 2 s: {:?}",
        publisher.other().name(),
        sv.as_ref().and_then(View::of)
    ));
    snapshot_one(
        &mut trio,
        publisher.other(),
        "partitioned, publisher killed",
    );
    trio.lab.heal_nodes();
    trio.note("partition healed");
    trio.start_node(publisher);
    trio.note(format!("{} restarted on its data dir", publisher.name()));
    trio.wait_load(&load);
    let samples = sampler.finish();
    trio.note(format!(
        "roles a: {}\nroles b: {}",
        samples.roles(Node::A),
        samples.roles(Node::B)
    ));
    let failover_ms = samples.takeover_ms(publisher.other(), t_kill);
    trio.note(format!("survivor published after {failover_ms:?} ms"));
    let now = trio.active();
    snapshot(&mut trio, "after heal and restart, before resync");
    Run {
        trio,
        failures: Vec::new(),
        failover_ms,
        double_publisher: samples.double_publisher(),
        affected: now.other(),
    }
}

fn snapshot_one(trio: &mut NetTrio, n: Node, when: &str) {
    let s = trio.status_text(n);
    trio.note(format!("twinrx status on {} {when}:\n{s}", n.name()));
}

// ---- a slow, lossy link: netem, or a userspace impairment when the kernel has none ----

/// A TCP proxy in node a's namespace: 50 ms per chunk each way, and for 5 % of chunks an extra
/// stall of 200–400 ms (a retransmitted segment holds up what follows, as TCP does).
struct SlowProxy {
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    fn start(ns: &str, listen: &str, upstream: &str, seed: u64) -> SlowProxy {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, listen, upstream) = (ns.to_string(), listen.to_string(), upstream.to_string());
        let st = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter_ns(&ns);
            let l = TcpListener::bind(&listen).expect("proxy bind");
            l.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).ok();
            let mut conn = 0u64;
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((down, _)) => {
                        conn += 1;
                        down.set_nonblocking(false).ok();
                        let up = match TcpStream::connect_timeout(
                            &upstream.parse().expect("upstream addr"),
                            Duration::from_secs(1),
                        ) {
                            Ok(u) => u,
                            Err(_) => continue,
                        };
                        down.set_nodelay(true).ok();
                        up.set_nodelay(true).ok();
                        let s = seed ^ conn.wrapping_mul(0x1234_5678_9abc_def1);
                        pipe(
                            down.try_clone().expect("clone"),
                            up.try_clone().expect("clone"),
                            s,
                            st.clone(),
                        );
                        pipe(up, down, s.rotate_left(17), st.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("proxy ready");
        SlowProxy { stop }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One direction: a reader stamps chunks, a writer delivers each at stamp + 50 ms (+ a stall
/// for 5 %), in order.
fn pipe(mut from: TcpStream, mut to: TcpStream, seed: u64, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        from.set_read_timeout(Some(Duration::from_millis(200))).ok();
        while !stop2.load(Ordering::Relaxed) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut not_before = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Ok((t, chunk)) = rx.recv_timeout(Duration::from_millis(200)) else {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            };
            let mut due = t + Duration::from_millis(50);
            if rng.range(0, 99) < 5 {
                due += Duration::from_millis(rng.range(200, 400));
            }
            not_before = not_before.max(due);
            std::thread::sleep(not_before.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

fn slow_link(rng: &mut Rng) -> Run {
    // Try the kernel's netem first (on a lab made only for the probe).
    let probe = NetLab::new();
    let netem = probe.try_netem(Host::A, Net::Service, "delay 50ms loss 5%");
    drop(probe);
    let (opts, method) = match &netem {
        Ok(()) => (TrioOpts::default(), "netem (kernel sch_netem)".to_string()),
        Err(e) => (
            TrioOpts {
                a_peer_override: Some(vec!["127.0.0.1:17400".into(), "127.0.0.1:17401".into()]),
                ..TrioOpts::default()
            },
            format!(
                "userspace TCP proxy in ns a (50 ms per chunk each way, 5 % chunks +200..400 ms) \
                 and nftables dropping 5 % of the TCP packets each way in ns a and b, \
                 because: {e}"
            ),
        ),
    };
    eprintln!("slow link method: {method}");
    // The proxies must be up before node a dials: build the lab, start them, then the trio.
    let mut trio = if netem.is_ok() {
        let t = NetTrio::new("slow", &opts);
        for n in [Host::A, Host::B] {
            for net in Net::ALL {
                t.lab.netem(n, net, "delay 50ms loss 5%");
            }
        }
        t
    } else {
        let mut t = NetTrio::build("slow", &opts);
        let ns = t.lab.ns(Host::A);
        let seed = rng.next();
        t.proxies.push(SlowProxy::start(
            &ns,
            "127.0.0.1:17400",
            "10.88.0.12:7400",
            seed,
        ));
        t.proxies.push(SlowProxy::start(
            &ns,
            "127.0.0.1:17401",
            "10.89.0.12:7400",
            seed ^ 1,
        ));
        for h in [Host::A, Host::B] {
            if let Err(e) = t.lab.tcp_loss(h, 50) {
                panic!("{e}");
            }
        }
        t.start_all();
        t
    };
    trio.note(format!("slow link method: {method}"));
    let mut failures = Vec::new();
    let (count, rate) = load_for(26);
    let load = trio.start_load(count, rate);
    let mut sampler = Sampler::start(&trio);
    let active = trio.active();
    let e0 = trio.view(active).map(|v| v.epoch);
    std::thread::sleep(Duration::from_secs(20));
    let e1 = trio.view(active).map(|v| v.epoch);
    let pubs = trio.view(active).is_some_and(|v| v.publishes());
    snapshot(&mut trio, "after 20 s on the slow link");
    if e0 != e1 || !pubs {
        failures.push(format!(
            "false failover on a slow link: epoch {e0:?} -> {e1:?}, {} publishing {pubs}",
            active.name()
        ));
    }
    if netem.is_err() {
        let (a, b) = (
            trio.lab.tcp_loss_counts(Host::A),
            trio.lab.tcp_loss_counts(Host::B),
        );
        trio.note(format!(
            "TCP packets dropped in 20 s (sent, received): a {a:?}, b {b:?}"
        ));
        if a.0 + a.1 + b.0 + b.1 == 0 {
            failures.push("the loss rules dropped no packet: the links were not impaired".into());
        }
    }
    let t_kill = sampler.mark();
    trio.kill_node(active);
    trio.note(format!("active {} SIGKILLed at {t_kill} ms", active.name()));
    let other = active.other();
    wait_cond(Duration::from_secs(10), || {
        trio.view(other).is_some_and(|v| v.publishes())
    });
    trio.wait_load(&load);
    let samples = sampler.finish();
    trio.note(format!(
        "roles a: {}\nroles b: {}",
        samples.roles(Node::A),
        samples.roles(Node::B)
    ));
    let failover_ms = samples.takeover_ms(other, t_kill);
    match failover_ms {
        Some(ms) if ms <= FAILOVER_LIMIT_MS => {}
        x => failures.push(format!("failover on the slow link: {x:?} ms")),
    }
    trio.start_node(active);
    trio.note(format!("{} restarted", active.name()));
    Run {
        trio,
        failures,
        failover_ms,
        double_publisher: samples.double_publisher(),
        affected: active,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

fn assert_pattern(p: Pattern) {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(time_seed);
    let o = run_pattern(p, seed);
    eprintln!(
        "{}: passed {} failover {:?} ms sent {} in stream {} missing {} duplicated {} \
         double publisher {}\n{}",
        p.name(),
        o.passed,
        o.failover_ms,
        o.sent,
        o.in_stream,
        o.missing,
        o.duplicated,
        o.double_publisher,
        o.detail
    );
    assert!(o.passed, "{}", o.detail);
}

fn time_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

#[test]
fn f5_active_network_cut() {
    assert_pattern(Pattern::F5);
}

#[test]
fn f6_one_link_down_no_failover_then_both() {
    assert_pattern(Pattern::F6);
}

#[test]
fn f7_receive_address_lost() {
    assert_pattern(Pattern::F7);
}

#[test]
fn f8_journal_frozen() {
    assert_pattern(Pattern::F8Journal);
}

#[test]
fn f8_merger_frozen() {
    assert_pattern(Pattern::F8Merger);
}

#[test]
fn f8_real_slow_disk() {
    assert_pattern(Pattern::F8SlowDisk);
}

#[test]
fn f11_journal_disk_full() {
    assert_pattern(Pattern::F11);
}

#[test]
fn f12_partition_between_nodes() {
    assert_pattern(Pattern::F12);
}

#[test]
fn f13_witness_down_active_paused() {
    assert_pattern(Pattern::F13);
}

#[test]
fn f12_then_publisher_killed() {
    assert_pattern(Pattern::F12Kill);
}

#[test]
fn slow_lossy_link_no_false_failover() {
    assert_pattern(Pattern::SlowLink);
}

fn pct(v: &[u64], p: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i].to_string()
}

/// The fault campaign: FAULT_ROUNDS (default 1) runs of each of FAULT_PATTERNS (comma list,
/// default all) with seeded random timings (FAULT_SEED, default from the clock; printed).
#[test]
#[ignore = "campaign: tests/fault-campaign.sh"]
fn campaign() {
    let rounds: u32 = std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let patterns: Vec<Pattern> = match std::env::var("FAULT_PATTERNS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| {
                Pattern::parse(x).unwrap_or_else(|| {
                    panic!(
                        "unknown pattern {x:?}; known: {}",
                        Pattern::ALL.map(|p| p.name()).join(",")
                    )
                })
            })
            .collect(),
        _ => Pattern::ALL.to_vec(),
    };
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(time_seed);
    println!("fault campaign: seed {seed} (FAULT_SEED={seed} replays it), {rounds} round(s)");
    let mut rng = Rng(seed);
    let mut results: BTreeMap<Pattern, Vec<(u64, Outcome)>> = BTreeMap::new();
    for round in 0..rounds {
        for &p in &patterns {
            let s = rng.next();
            let t0 = Instant::now();
            let o = run_pattern(p, s);
            println!(
                "round {} {}: {} failover {:?} ms sent {} in stream {} missing {} dup {} \
                 double publisher {} (seed {s}, {} s)",
                round + 1,
                p.name(),
                if o.passed { "PASS" } else { "FAIL" },
                o.failover_ms,
                o.sent,
                o.in_stream,
                o.missing,
                o.duplicated,
                o.double_publisher,
                t0.elapsed().as_secs()
            );
            if !o.passed || o.noted || std::env::var_os("FAULT_VERBOSE").is_some() {
                println!("{}", o.detail);
            }
            results.entry(p).or_default().push((s, o));
        }
    }
    println!();
    println!(
        "{:<11} {:>4} {:>6} {:>22} {:>8} {:>9} {:>7} {:>5} {:>6}",
        "pattern",
        "runs",
        "passed",
        "failover ms p50/p99/max",
        "sent",
        "in stream",
        "missing",
        "dup",
        "2-pub"
    );
    let mut bad = Vec::new();
    for (p, rs) in &results {
        let ms: Vec<u64> = rs.iter().filter_map(|(_, o)| o.failover_ms).collect();
        let sum = |f: fn(&Outcome) -> u64| rs.iter().map(|(_, o)| f(o)).sum::<u64>();
        let passed = rs.iter().filter(|(_, o)| o.passed).count();
        let dp = rs.iter().filter(|(_, o)| o.double_publisher).count();
        println!(
            "{:<11} {:>4} {:>6} {:>22} {:>8} {:>9} {:>7} {:>5} {:>6}",
            p.name(),
            rs.len(),
            passed,
            format!(
                "{}/{}/{}",
                pct(&ms, 0.5),
                pct(&ms, 0.99),
                ms.iter().max().map_or("-".into(), |m| m.to_string())
            ),
            sum(|o| o.sent),
            sum(|o| o.in_stream),
            sum(|o| o.missing),
            sum(|o| o.duplicated),
            dp
        );
        for (s, o) in rs {
            if !o.passed {
                bad.push(format!("{} seed {s}", p.name()));
            }
        }
    }
    println!(
        "{:<11} {:>4} {:>6} {:>22}  covered by tests/sink_e2e.rs",
        "F14", "-", "-", "see sink_e2e"
    );
    assert!(bad.is_empty(), "failed runs: {}", bad.join(", "));
}
