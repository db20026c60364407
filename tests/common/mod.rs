//! Test harness: runs the built `twinrx` binary as a real process on its own loopback
//! address, talks to it over its admin HTTP API, and cleans up (kills the process, removes
//! its directory) even when a test fails.
#![allow(dead_code)]
pub mod netns;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_twinrx");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback address of its own for each test, so tests run in parallel without port
/// clashes (127.0.0.0/8 is all loopback on Linux).
pub fn unique_ip() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        (n / 250) as u8,
        (n % 250 + 2) as u8,
    )
}

/// Starts `twinrx <command> --config CONFIG` with its log (stderr) appended to `log`.
pub fn spawn_logged(command: &str, config: &Path, log: &Path) -> Child {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the process log");
    Command::new(BIN)
        .args([command, "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn twinrx {command}: {e}"))
}

/// Kills and waits for a child the harness started, if it still holds one.
pub fn reap(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("twinrx-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `f` returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct TestNode {
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub admin: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl TestNode {
    /// Writes a config for a node listening on its own loopback address: syslog UDP+TCP
    /// 5514, admin 7401, plus `extra` TOML appended (sections not already present).
    pub fn new(dir: &Path, extra_syslog: &str, extra: &str) -> TestNode {
        let ip = unique_ip();
        std::fs::create_dir_all(dir).expect("node dir");
        let config = dir.join("node.toml");
        let text = format!(
            "[node]\nname = \"a\"\ndata_dir = \"data\"\n\n\
             [syslog]\nudp = [\"{ip}:5514\"]\ntcp = [\"{ip}:5514\"]\n{extra_syslog}\n\n\
             [snmp]\nlisten = [\"{ip}:5162\"]\n\n\
             [admin]\nlisten = \"{ip}:7401\"\n\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write config");
        TestNode {
            ip,
            dir: dir.to_path_buf(),
            admin: format!("http://{ip}:7401"),
            config,
            child: None,
            log: dir.join("node.log"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn start(&mut self) {
        self.spawn();
        self.wait_admin(Duration::from_secs(20));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("node running").id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("node running");
        let st = wait_for("the node to exit", timeout, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        st
    }

    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    pub fn status(&self) -> serde_json::Value {
        get_json(&format!("{}/status", self.admin)).expect("status")
    }

    pub fn stream(&self) -> Vec<serde_json::Value> {
        let text = get_text(&format!("{}/stream?from=0", self.admin)).expect("stream");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("stream line is JSON"))
            .collect()
    }

    /// Waits until the stream holds at least `n` entries and returns them.
    pub fn wait_stream(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        wait_for(&format!("{n} stream entries"), timeout, || {
            let s = self.stream();
            (s.len() >= n).then_some(s)
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

pub fn get_text(url: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    agent
        .get(url)
        .call()
        .ok()?
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .ok()
}

pub fn get_json(url: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get_text(url)?).ok()
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A test CA, a server certificate for `localhost` and `ip`, a client certificate signed by
/// the CA, and a self-signed ("wrong") client certificate, made with the openssl CLI.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub wrong_cert: PathBuf,
    pub wrong_key: PathBuf,
}

pub fn make_certs(dir: &Path, ip: Ipv4Addr) -> Certs {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=twinrx-test-ca", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    for (name, cn, san) in [
        (
            "server",
            "localhost",
            format!("subjectAltName=DNS:localhost,IP:{ip}"),
        ),
        ("client", "device", "subjectAltName=DNS:device".to_string()),
    ] {
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", &format!("/CN={cn}"), "-keyout"])
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.csr"))));
        std::fs::write(p(&format!("{name}.ext")), format!("{san}\n")).expect("ext");
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(p(&format!("{name}.csr")))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(p(&format!("{name}.ext")))
            .arg("-out")
            .arg(p(&format!("{name}.pem"))));
    }
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=stranger", "-keyout"])
        .arg(p("wrong.key"))
        .arg("-out")
        .arg(p("wrong.pem")));
    Certs {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        wrong_cert: p("wrong.pem"),
        wrong_key: p("wrong.key"),
    }
}

/// Entries whose message (parsed or raw) contains `needle`.
pub fn entries_with<'a>(
    stream: &'a [serde_json::Value],
    needle: &str,
) -> Vec<&'a serde_json::Value> {
    stream
        .iter()
        .filter(|e| e.to_string().contains(needle))
        .collect()
}

/// A tmpfs mounted for a test (needs root), unmounted on drop even when the test fails.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// ---------------------------------------------------------------------------------------------
// A whole HA trio: witness + node a + node b, each on its own loopback address, all with the
// same pre-shared key; load from `twinrx gen`; the end-of-test proof (identical dumps from both
// nodes, `twinrx check`, redundancy).

pub const TRIO_KEY: &str = "6a1f0c55e2b94d7f8e3a21c4b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
pub const TRIO_WRONG_KEY: &str = "00000000000000000000000000000000ffffffffffffffffffffffffffffffff";

/// Writes a pre-shared key file (mode 0600).
pub fn write_psk(path: &Path, key: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("{key}\n")).expect("write psk");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod psk");
}

/// GET with a short deadline (a SIGSTOPped process accepts TCP but never answers).
pub fn get_json_within(url: &str, timeout: Duration) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let text = agent
        .get(url)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// The node's `ha` object, or None when it does not answer within 1 s.
pub fn ha_of(n: &TestNode) -> Option<serde_json::Value> {
    let st = get_json_within(&format!("{}/status", n.admin), Duration::from_secs(1))?;
    let ha = st.get("ha")?.clone();
    ha.is_object().then_some(ha)
}

pub fn role_of(ha: &serde_json::Value) -> &str {
    ha["role"].as_str().unwrap_or("")
}

pub fn is_publishing_active(ha: &serde_json::Value) -> bool {
    matches!(role_of(ha), "active" | "solo") && ha["publishing"] == true
}

/// A `twinrx witness` process of a trio.
pub struct TrioWitness {
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub admin: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl TrioWitness {
    pub fn new(dir: &Path, psk: &Path) -> TrioWitness {
        let ip = unique_ip();
        std::fs::create_dir_all(dir).expect("witness dir");
        let config = dir.join("witness.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{ip}:7402\"\nadmin_listen = \"{ip}:7403\"\n\
                 data_dir = \"data\"\npsk_file = \"{}\"\n",
                psk.display()
            ),
        )
        .expect("write witness config");
        TrioWitness {
            ip,
            dir: dir.to_path_buf(),
            config,
            admin: format!("http://{ip}:7403"),
            child: None,
            log: dir.join("witness.log"),
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:7402", self.ip)
    }

    pub fn start(&mut self) {
        self.child = Some(spawn_logged("witness", &self.config, &self.log));
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
            get_json_within(&url, Duration::from_secs(2))
        });
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("witness running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL witness");
        wait_for("the witness to exit", Duration::from_secs(10), || {
            c.try_wait().ok().flatten()
        });
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        get_json_within(&format!("{}/status", self.admin), Duration::from_secs(2))
    }
}

impl Drop for TrioWitness {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// A running `twinrx gen`, with its manifest.
pub struct GenRun {
    pub child: Option<Child>,
    pub manifest: PathBuf,
    pub log: PathBuf,
}

impl GenRun {
    /// Waits for gen to finish and asserts it succeeded.
    pub fn wait(&mut self, timeout: Duration) {
        let mut c = self.child.take().expect("gen running");
        let st = wait_for("gen to finish", timeout, || c.try_wait().ok().flatten());
        assert!(
            st.success(),
            "gen: {st}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for GenRun {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// Witness + node a + node b (configs written, nothing started).
pub struct Trio {
    pub w: TrioWitness,
    pub a: TestNode,
    pub b: TestNode,
    pub tag: String,
    pub scratch: Scratch,
    /// Held while the trio lives (dropped last, after its processes are killed).
    _permit: TrioPermit,
}

/// At most this many trios run at once in one test binary: each is three processes under
/// load, and the failure tests measure timings (2-core CI machines).
const TRIOS_AT_ONCE: usize = 2;
static TRIOS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

struct TrioPermit;

impl TrioPermit {
    fn acquire() -> TrioPermit {
        let mut n = TRIOS.0.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= TRIOS_AT_ONCE {
            n = TRIOS.1.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        TrioPermit
    }
}

impl Drop for TrioPermit {
    fn drop(&mut self) {
        let mut n = TRIOS.0.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        TRIOS.1.notify_one();
    }
}

/// Writes the body of a node's `[ha]` section: (node name, the trio's directory) → TOML.
pub type HaBody = dyn Fn(&str, &Path) -> String;

impl Trio {
    pub fn new(tag: &str) -> Trio {
        Trio::with_ha(tag, None)
    }

    /// A trio whose nodes use `ha` as the body of their `[ha]` section instead of the witness
    /// (the witness process still runs, unused): the two-node policies.
    pub fn with_ha(tag: &str, ha: Option<&HaBody>) -> Trio {
        let permit = TrioPermit::acquire();
        let s = Scratch::new(tag);
        let psk = s.path().join("cluster.psk");
        write_psk(&psk, TRIO_KEY);
        let w = TrioWitness::new(&s.path().join("witness"), &psk);
        let a = TestNode::new(&s.path().join("a"), "", "");
        let b = TestNode::new(&s.path().join("b"), "", "");
        for (node, name, peer) in [(&a, "a", b.ip), (&b, "b", a.ip)] {
            let text = std::fs::read_to_string(&node.config).expect("read config");
            let text = text.replacen("name = \"a\"", &format!("name = \"{name}\""), 1);
            let ha_body = match ha {
                Some(f) => f(name, s.path()),
                None => format!("witness = \"{}\"\n", w.addr()),
            };
            let text = format!(
                "{text}\n[pair]\npeer = [\"{peer}:7400\"]\nlisten = [\"{}:7400\"]\npsk_file = \"{}\"\n\n\
                 [ha]\n{ha_body}",
                node.ip,
                psk.display(),
            );
            std::fs::write(&node.config, text).expect("write config");
        }
        Trio {
            w,
            a,
            b,
            tag: tag.to_string(),
            scratch: s,
            _permit: permit,
        }
    }

    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Starts the witness and both nodes and waits until the pair is redundant; returns the
    /// name of the active.
    pub fn start(&mut self) -> &'static str {
        self.w.start();
        self.a.spawn();
        self.b.spawn();
        self.a.wait_admin(Duration::from_secs(30));
        self.b.wait_admin(Duration::from_secs(30));
        self.wait_redundant(Duration::from_secs(30))
    }

    pub fn node(&self, name: &str) -> &TestNode {
        match name {
            "a" => &self.a,
            "b" => &self.b,
            _ => panic!("no node {name}"),
        }
    }

    pub fn node_mut(&mut self, name: &str) -> &mut TestNode {
        match name {
            "a" => &mut self.a,
            "b" => &mut self.b,
            _ => panic!("no node {name}"),
        }
    }

    pub fn other(name: &str) -> &'static str {
        if name == "a" {
            "b"
        } else {
            "a"
        }
    }

    /// Waits until both nodes report `ha.redundant == true`, one active and one standby, and
    /// returns the active's name.
    pub fn wait_redundant(&self, timeout: Duration) -> &'static str {
        let what = format!("[{}] both nodes redundant", self.tag);
        let deadline = Instant::now() + timeout;
        loop {
            let (ha, hb) = (ha_of(&self.a), ha_of(&self.b));
            if let (Some(ha), Some(hb)) = (&ha, &hb) {
                if ha["redundant"] == true && hb["redundant"] == true {
                    match (role_of(ha), role_of(hb)) {
                        ("active", "standby") => return "a",
                        ("standby", "active") => return "b",
                        _ => {}
                    }
                }
            }
            if Instant::now() > deadline {
                self.dump_logs_tail();
                panic!("timed out after {timeout:?} waiting for {what}: a={ha:?} b={hb:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `twinrx gen` to both nodes' syslog (or SNMP) address in the background.
    pub fn gen(&self, run_id: &str, count: u64, rate: u64, transport: &str) -> GenRun {
        self.gen_with(run_id, count, rate, transport, "syslog")
    }

    pub fn gen_with(
        &self,
        run_id: &str,
        count: u64,
        rate: u64,
        transport: &str,
        protocol: &str,
    ) -> GenRun {
        let manifest = self.dir().join(format!("{run_id}.json"));
        let log = self.dir().join(format!("gen-{run_id}.log"));
        let port = if protocol == "syslog" { 5514 } else { 5162 };
        let mut cmd = Command::new(BIN);
        cmd.args(["gen", "--run-id", run_id, "--protocol", protocol])
            .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
            .arg("--manifest")
            .arg(&manifest);
        if protocol == "syslog" {
            cmd.args(["--transport", transport]);
        }
        for n in [&self.a, &self.b] {
            cmd.args(["--to", &format!("{}:{port}", n.ip)]);
        }
        let logf = std::fs::File::create(&log).expect("gen log");
        let child = cmd
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn gen");
        GenRun {
            child: Some(child),
            manifest,
            log,
        }
    }

    /// Waits until node `name`'s stream holds at least `n` entries (mid-load fault point).
    pub fn wait_stream_end(&self, name: &str, n: u64, timeout: Duration) {
        let node = self.node(name);
        wait_for(
            &format!("[{}] {n} stream entries on {name}", self.tag),
            timeout,
            || (ha_of(node)?["stream_end"].as_u64()? >= n).then_some(()),
        );
    }

    /// `twinrx resync --node URL` of node `name`: asserts exit 0, returns its output.
    pub fn resync(&self, name: &str) -> String {
        let out = Command::new(BIN)
            .args([
                "resync",
                "--timeout-secs",
                "60",
                "--node",
                &self.node(name).admin,
            ])
            .output()
            .expect("run twinrx resync");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            self.dump_logs_tail();
        }
        assert!(
            out.status.success(),
            "[{}] twinrx resync on {name}: {}\n{text}",
            self.tag,
            out.status
        );
        text
    }

    /// The end-of-test proof: both nodes redundant, their committed streams byte-identical,
    /// `twinrx check` on the dump passes (every message once, offsets contiguous, epochs
    /// non-decreasing). Returns the parsed dump.
    pub fn final_check(&self, manifests: &[&Path]) -> Vec<serde_json::Value> {
        self.wait_redundant(Duration::from_secs(30));
        let stable = Duration::from_millis(600);
        let mut last: Option<(u64, Instant)> = None;
        let dump = wait_for(
            &format!("[{}] identical, settled streams on both nodes", self.tag),
            Duration::from_secs(60),
            || {
                let ea = ha_of(&self.a)?["stream_end"].as_u64()?;
                let eb = ha_of(&self.b)?["stream_end"].as_u64()?;
                if ea != eb {
                    last = None;
                    return None;
                }
                match last {
                    Some((e, since)) if e == ea => {
                        if since.elapsed() < stable {
                            return None;
                        }
                    }
                    _ => {
                        last = Some((ea, Instant::now()));
                        return None;
                    }
                }
                let da = get_text(&format!("{}/stream?from=0", self.a.admin))?;
                let db = get_text(&format!("{}/stream?from=0", self.b.admin))?;
                if da != db || da.lines().count() as u64 != ea {
                    last = None;
                    return None;
                }
                Some(da)
            },
        );
        let path = self.dir().join("stream.ndjson");
        std::fs::write(&path, &dump).expect("write dump");
        let mut cmd = Command::new(BIN);
        cmd.arg("check");
        for m in manifests {
            cmd.arg("--manifest").arg(m);
        }
        let out = cmd.arg("--stream").arg(&path).output().expect("run check");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("[{}] twinrx check:\n{text}", self.tag);
        if !out.status.success() {
            eprintln!(
                "[{}] ha at the check: a={:?}\nb={:?}",
                self.tag,
                ha_of(&self.a),
                ha_of(&self.b)
            );
        }
        assert!(
            out.status.success() && text.contains("missing 0  duplicated 0"),
            "[{}] twinrx check failed ({}):\n{text}{}",
            self.tag,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for n in [&self.a, &self.b] {
            let ha = ha_of(n).expect("status");
            assert_eq!(ha["redundant"], true, "[{}] {ha:#}", self.tag);
        }
        dump.lines()
            .map(|l| serde_json::from_str(l).expect("stream line is JSON"))
            .collect()
    }

    /// Prints the tail of every log (for a failing test).
    pub fn dump_logs_tail(&self) {
        for (what, log) in [
            ("witness", &self.w.log),
            ("a", &self.a.log),
            ("b", &self.b.log),
        ] {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            eprintln!(
                "----- [{}] {what} log (last {} lines) -----\n{}",
                self.tag,
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the evidence: copy logs (not data) next to the scratch dir.
            let keep = std::env::temp_dir().join(format!("twinrx-failed-{}", self.tag));
            let _ = std::fs::create_dir_all(&keep);
            for (what, log) in [
                ("witness", &self.w.log),
                ("a", &self.a.log),
                ("b", &self.b.log),
            ] {
                let _ = std::fs::copy(log, keep.join(format!("{what}.log")));
            }
            for e in std::fs::read_dir(self.scratch.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = e.path();
                if p.is_file() {
                    let _ = std::fs::copy(&p, keep.join(e.file_name()));
                }
            }
            eprintln!("[{}] logs kept in {}", self.tag, keep.display());
        }
    }
}

impl TestNode {
    /// Starts the process without waiting for its admin API (a node of a pair waits for its
    /// peer up to 10 s before it serves: start both, then `wait_admin` on each).
    pub fn spawn(&mut self) {
        self.child = Some(spawn_logged("node", &self.config, &self.log));
    }

    /// Waits for the admin API of a spawned node (panics if the process exits first).
    pub fn wait_admin(&mut self, timeout: Duration) {
        let admin = self.admin.clone();
        let log = self.log.clone();
        wait_for("the node's admin API", timeout, || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "node exited during start-up ({st}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            get_json_within(&format!("{admin}/status"), Duration::from_secs(2))
        });
    }
}
