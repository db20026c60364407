//! Test harness: runs the built `twinrx` binary as a real process on its own loopback
//! address, talks to it over its admin HTTP API, and cleans up (kills the process, removes
//! its directory) even when a test fails.
#![allow(dead_code)]
pub mod netns;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
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
    spawn_logged_env(command, config, log, &[])
}

/// [`spawn_logged`] with extra environment variables.
pub fn spawn_logged_env(
    command: &str,
    config: &Path,
    log: &Path,
    env: &[(String, String)],
) -> Child {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the process log");
    Command::new(BIN)
        .args([command, "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
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

// ---------------------------------------------------------------------------------------------
// Evidence of a failing test: every harness object that owns processes calls
// `keep_evidence` from its `Drop` while the test panics, so a failure always leaves its logs,
// the live processes' status and the test's timeline behind.

/// The test's own timeline: what the harness and the test did, in milliseconds since the
/// test began. One per test thread (libtest runs each test on its own thread); clones share it.
#[derive(Clone)]
pub struct Timeline(Arc<(Instant, Mutex<Vec<String>>)>);

thread_local! {
    static TIMELINE: Timeline = Timeline(Arc::new((Instant::now(), Mutex::new(Vec::new()))));
}

impl Timeline {
    /// The timeline of the calling test.
    pub fn current() -> Timeline {
        TIMELINE.with(Timeline::clone)
    }

    pub fn note(&self, what: &str) {
        let ms = self.0 .0.elapsed().as_millis();
        let mut lines = self.0 .1.lock().unwrap_or_else(|e| e.into_inner());
        lines.push(format!("{ms:>8} ms  {what}"));
    }

    pub fn text(&self) -> String {
        let lines = self.0 .1.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// Notes `what` in the calling test's timeline (kept with the logs if the test fails).
pub fn note(what: &str) {
    Timeline::current().note(what);
}

/// One process's evidence: its log, and its `/status` URL while it runs.
pub struct Evidence {
    pub name: String,
    pub log: PathBuf,
    pub status_url: Option<String>,
}

impl Evidence {
    /// A process's evidence; `admin` (`http://host:port`) only while the process runs.
    pub fn new(name: &str, log: &Path, admin: Option<&str>) -> Evidence {
        Evidence {
            name: name.to_string(),
            log: log.to_path_buf(),
            status_url: admin.map(|a| format!("{a}/status")),
        }
    }
}

/// The name of the calling test (libtest names each test's thread after the test).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", "-")
        .replace('/', "-")
}

/// Logs already kept by this test binary, and the evidence directories it made: a trio keeps
/// its nodes' logs, and their own drops, which run after, then keep nothing twice.
static KEPT: Mutex<(BTreeSet<PathBuf>, BTreeSet<PathBuf>)> =
    Mutex::new((BTreeSet::new(), BTreeSet::new()));

/// The last `n` lines of a log (empty when it cannot be read).
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Keeps the evidence of a failing test in `$TWINRX_EVIDENCE_DIR` (else the temporary
/// directory) `/twinrx-failed-<test>/`: each process's log, its `/status` JSON if it answers
/// within 2 s, the test's timeline, and the plain files directly in `extra_files` (manifests,
/// gen logs, dumps); prints the directory and the last 40 lines of each log. Called from
/// `Drop` impls while the test panics, so it never panics itself (a second panic aborts).
pub fn keep_evidence(procs: &[Evidence], extra_files: Option<&Path>) {
    let root = std::env::var_os("TWINRX_EVIDENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let test = test_name();
    let keep = root.join(format!("twinrx-failed-{test}"));
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let fresh: Vec<&Evidence> = procs.iter().filter(|p| !kept.0.contains(&p.log)).collect();
    if fresh.is_empty() {
        return;
    }
    if kept.1.insert(keep.clone()) {
        // The first evidence of this test in this run: nothing of an earlier run mixes in.
        let _ = std::fs::remove_dir_all(&keep);
    }
    if let Err(e) = std::fs::create_dir_all(&keep) {
        eprintln!(
            "[{test}] cannot keep the evidence in {}: {e}",
            keep.display()
        );
        return;
    }
    let said = |what: &Path, r: std::io::Result<()>| {
        if let Err(e) = r {
            eprintln!("[{test}] cannot keep {}: {e}", what.display());
        }
    };
    for e in extra_files
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().is_file() {
            said(
                &e.path(),
                std::fs::copy(e.path(), keep.join(e.file_name())).map(drop),
            );
        }
    }
    for p in fresh {
        kept.0.insert(p.log.clone());
        let to = keep.join(format!("{}.log", p.name));
        said(&p.log, std::fs::copy(&p.log, to).map(drop));
        if let Some(url) = &p.status_url {
            let status = get_json_within(url, Duration::from_secs(2))
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| format!("no answer from {url} within 2 s\n"));
            let to = keep.join(format!("{}.status.json", p.name));
            said(&to, std::fs::write(&to, status));
        }
        eprintln!(
            "----- [{test}] {} log (last 40 lines) -----\n{}",
            p.name,
            log_tail(&p.log, 40)
        );
    }
    let timeline = Timeline::current().text();
    let to = keep.join("timeline.txt");
    said(&to, std::fs::write(&to, &timeline));
    eprintln!("----- [{test}] timeline -----\n{timeline}");
    eprintln!("[{test}] evidence kept in {}", keep.display());
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
    /// Extra environment of the node's process (e.g. `TWINRX_FAULT_*` test aids).
    pub env: Vec<(String, String)>,
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
             [admin]\nlisten = \"{ip}:7401\"\ntoken_file = \"admin.token\"\n\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write config");
        let token = dir.join("admin.token");
        std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).expect("write token");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod token");
        // The test's timeline counts from here at the latest.
        Timeline::current();
        TestNode {
            ip,
            dir: dir.to_path_buf(),
            admin: format!("http://{ip}:7401"),
            config,
            child: None,
            log: dir.join("node.log"),
            env: Vec::new(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn start(&mut self) {
        self.spawn();
        self.wait_admin(Duration::from_secs(20));
    }

    /// The node's name in evidence and the timeline: its directory's name (a, b, old, ...).
    pub fn label(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "node".into())
    }

    pub fn evidence(&self) -> Evidence {
        let admin = self.child.is_some().then_some(self.admin.as_str());
        Evidence::new(&self.label(), &self.log, admin)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("node running").id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        note(&format!("{}: {sig} (pid {})", self.label(), self.pid()));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("node running");
        let st = wait_for("the node to exit", timeout, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        note(&format!("{}: exited ({st})", self.label()));
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
        if std::thread::panicking() {
            keep_evidence(&[self.evidence()], None);
        }
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

/// Fills the file system under `dir` until writes fail; returns the filler's path.
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let block = vec![0x5au8; 1 << 20];
    // Bounded: a tmpfs of at most a few GiB (16 GiB written at most).
    for _ in 0..16_384 {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    // Fill the last bytes too.
    for _ in 0..1_000_000 {
        if f.write_all(&block[..512]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
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

/// Writes a key directory as `twinrx keys init` does (a pair CA, certificates for a, b and
/// the witness; keys 0600) at `dir`.
pub fn write_keys(dir: &Path) {
    replicator::tls::init_dir(dir, 30).expect("write keys");
}

/// The credential keys (`ca_file`, `cert_file`, `key_file`) of party `who` (a, b, witness)
/// in key directory `keys`.
pub fn creds(keys: &Path, who: &str) -> String {
    let k = keys.display();
    format!(
        "ca_file = \"{k}/ca.pem\"\ncert_file = \"{k}/{who}.pem\"\nkey_file = \"{k}/{who}.key\"\n"
    )
}

/// The admin token every [`TestNode`] is configured with (in `DIR/admin.token`).
pub const ADMIN_TOKEN: &str = "test-admin-token-5b1e0c";

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
    pub fn new(dir: &Path, keys: &Path) -> TrioWitness {
        let ip = unique_ip();
        std::fs::create_dir_all(dir).expect("witness dir");
        let config = dir.join("witness.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{ip}:7402\"\nadmin_listen = \"{ip}:7403\"\n\
                 data_dir = \"data\"\n{}",
                creds(keys, "witness")
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

    pub fn evidence(&self) -> Evidence {
        let admin = self.child.is_some().then_some(self.admin.as_str());
        Evidence::new("witness", &self.log, admin)
    }

    pub fn start(&mut self) {
        self.child = Some(spawn_logged("witness", &self.config, &self.log));
        note("witness: started");
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
        note("witness: SIGKILL");
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
        if std::thread::panicking() {
            keep_evidence(&[self.evidence()], None);
        }
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
        let run = self
            .manifest
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        note(&format!("gen {run}: finished ({st})"));
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
        let keys = s.path().join("keys");
        write_keys(&keys);
        let w = TrioWitness::new(&s.path().join("witness"), &keys);
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
                "{text}\n[pair]\npeer = [\"{peer}:7400\"]\nlisten = [\"{}:7400\"]\n{}\n\
                 [ha]\n{ha_body}",
                node.ip,
                creds(&keys, name),
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
        note(&format!("[{}] trio: starting", self.tag));
        self.w.start();
        self.a.spawn();
        self.b.spawn();
        self.a.wait_admin(Duration::from_secs(30));
        self.b.wait_admin(Duration::from_secs(30));
        let active = self.wait_redundant(Duration::from_secs(30));
        note(&format!("[{}] trio: started, {active} active", self.tag));
        active
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
                    let active = match (role_of(ha), role_of(hb)) {
                        ("active", "standby") => "a",
                        ("standby", "active") => "b",
                        _ => "",
                    };
                    if !active.is_empty() {
                        note(&format!("[{}] redundant: {active} active", self.tag));
                        return active;
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
        note(&format!(
            "gen {run_id}: started, {count} {protocol} messages at {rate}/s over {transport}"
        ));
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
        note(&format!("[{}] resync {name}: started", self.tag));
        let out = Command::new(BIN)
            .args([
                "resync",
                "--timeout-secs",
                "60",
                "--node",
                &self.node(name).admin,
            ])
            .arg("--token-file")
            .arg(self.node(name).dir.join("admin.token"))
            .output()
            .expect("run twinrx resync");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        note(&format!("[{}] resync {name}: {}", self.tag, out.status));
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

    /// Both nodes' committed streams, once they are one dump holding an entry or a match for
    /// every record in either journal (see [`Trio::final_check`]); `seen` says what was not.
    fn settled_dump(&self, seen: &mut String, prev: &mut Option<String>) -> Option<String> {
        // Read before the statuses: what left the kernel after this is in a node's intake
        // queue or journal when the status is read.
        let in_kernel = [self.a.ip, self.b.ip].map(kernel_queued_to);
        let sa = get_json(&format!("{}/status", self.a.admin))?;
        let sb = get_json(&format!("{}/status", self.b.admin))?;
        let intake = [&sa, &sb].map(|s| s["journal"]["queued_bytes"].as_u64());
        let active = [&sa, &sb]
            .into_iter()
            .find(|s| s["ha"]["publishing"] == true)?;
        let last = |s: &serde_json::Value| s["journal"]["last_seq"].as_u64().unwrap_or(0);
        let merged = &active["stream"]["merged_seq"];
        let (ea, eb) = (
            sa["ha"]["stream_end"].as_u64()?,
            sb["ha"]["stream_end"].as_u64()?,
        );
        let now = format!(
            "stream ends a={ea} b={eb}; active {}: merged_seq {merged}, next_offset {}, \
             committed_end {}; journals' last seq a={} b={}; intake queues {intake:?}; bytes \
             in the kernel on their way to a, b: {in_kernel:?}",
            active["node"],
            active["stream"]["next_offset"],
            active["stream"]["committed_end"],
            last(&sa),
            last(&sb)
        );
        let received = in_kernel == [0, 0] && intake == [Some(0), Some(0)];
        let all_merged =
            merged["a"].as_u64() == Some(last(&sa)) && merged["b"].as_u64() == Some(last(&sb));
        let committed = active["stream"]["committed_end"] == active["stream"]["next_offset"]
            && active["stream"]["next_offset"].as_u64() == Some(ea);
        // The same at two polls in a row: a message a receiver had taken from the kernel but
        // not yet queued (an in-process hop) would show at the second.
        let again = prev.as_deref() == Some(now.as_str());
        *prev = Some(now.clone());
        *seen = now;
        if !(received && all_merged && committed && ea == eb && again) {
            return None;
        }
        let da = get_text(&format!("{}/stream?from=0", self.a.admin))?;
        let db = get_text(&format!("{}/stream?from=0", self.b.admin))?;
        (da == db && da.lines().count() as u64 == ea).then_some(da)
    }

    /// The end-of-test proof: both nodes redundant, their committed streams byte-identical,
    /// `twinrx check` on the dump passes (every message once, offsets contiguous, epochs
    /// non-decreasing). Returns the parsed dump.
    pub fn final_check(&self, manifests: &[&Path]) -> Vec<serde_json::Value> {
        note(&format!("[{}] final check: started", self.tag));
        self.wait_redundant(Duration::from_secs(30));
        // What it waits for: every message sent has reached a node (nothing in the kernel's
        // queues to the receivers, nor in the nodes' intake queues), the active's merger has
        // stored an output for every record of either node's journal (its `merged_seq` equals
        // each journal's last seq), all of it committed, both nodes' committed streams at
        // that end and byte-identical. Not a quiet moment: a merger restarting (a lapsed lease
        // under load) can leave the stream still for seconds with records waiting, and a
        // receiver on a loaded machine can be behind its sender.
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        let mut prev = None;
        let dump = loop {
            if let Some(d) = self.settled_dump(&mut seen, &mut prev) {
                break d;
            }
            if Instant::now() > deadline {
                panic!(
                    "[{}] timed out after {timeout:?} waiting for both streams to hold every \
                     journal record, committed and identical; last seen: {seen}",
                    self.tag
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        note(&format!(
            "[{}] final check: both streams identical and settled, {} entries",
            self.tag,
            dump.lines().count()
        ));
        let path = self.dir().join("stream.ndjson");
        std::fs::write(&path, &dump).expect("write dump");
        let mut cmd = Command::new(BIN);
        cmd.arg("check");
        for m in manifests {
            cmd.arg("--manifest").arg(m);
        }
        let out = cmd.arg("--stream").arg(&path).output().expect("run check");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        note(&format!(
            "[{}] final check: twinrx check {}",
            self.tag, out.status
        ));
        eprintln!("[{}] twinrx check:\n{text}", self.tag);
        if !out.status.success() {
            eprintln!(
                "[{}] ha at the check: a={:?}\nb={:?}",
                self.tag,
                ha_of(&self.a),
                ha_of(&self.b)
            );
            for (name, n) in [("a", &self.a), ("b", &self.b)] {
                let drops = get_json(&format!("{}/status", n.admin))
                    .map(|s| s["receivers"]["syslog"]["udp_kernel_drops"].clone());
                eprintln!(
                    "[{}] {name}: UDP datagrams the kernel dropped before the receiver: {drops:?}",
                    self.tag
                );
            }
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
            eprintln!(
                "----- [{}] {what} log (last 40 lines) -----\n{}",
                self.tag,
                log_tail(log, 40)
            );
        }
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Before the fields drop: the processes still run and answer /status.
            note(&format!("[{}] trio: test failed", self.tag));
            keep_evidence(
                &[self.w.evidence(), self.a.evidence(), self.b.evidence()],
                Some(self.scratch.path()),
            );
        }
    }
}

impl TestNode {
    /// Starts the process without waiting for its admin API (a node of a pair waits for its
    /// peer up to 10 s before it serves: start both, then `wait_admin` on each).
    pub fn spawn(&mut self) {
        let child = spawn_logged_env("node", &self.config, &self.log, &self.env);
        note(&format!("{}: spawned (pid {})", self.label(), child.id()));
        self.child = Some(child);
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
        note(&format!("{}: admin API up", self.label()));
    }
}

/// `twinrx gen` of `count` syslog messages over TCP to one node (background).
pub fn gen(node: &TestNode, manifest: &Path, count: u64, rate: u64, run_id: &str) -> Child {
    Command::new(BIN)
        .args(["gen", "--transport", "tcp", "--run-id", run_id])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--to", &format!("{}:5514", node.ip)])
        .arg("--manifest")
        .arg(manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn twinrx gen")
}

/// Waits for a child to exit, and asserts it succeeded.
pub fn wait_child(c: &mut Child, what: &str, timeout: Duration) {
    let st = wait_for(what, timeout, || c.try_wait().ok().flatten());
    assert!(st.success(), "{what}: {st}");
}

/// A log without its terminal colours (CSI sequences: ESC [ ... final byte).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A sink's delivered offsets around one retention gap: `0..lost_from`, then `resumed..end`,
/// each once and in order. The gap starts at `from` (the sink's position when retention
/// passed it) or a little after (what it had read, or could still read from a segment it held
/// open, it delivers) and ends at or after `first` (the first offset retention had kept when
/// the test looked). Returns `(lost_from, resumed)`.
pub fn assert_one_gap(offsets: &[u64], from: u64, first: u64, end: u64) -> (u64, u64) {
    let lost_from = (from..offsets.len() as u64)
        .find(|&i| offsets[i as usize] != i)
        .unwrap_or_else(|| panic!("no gap after offset {from} in {} offsets", offsets.len()));
    let resumed = offsets[lost_from as usize];
    assert!(
        resumed >= first && lost_from < first,
        "delivered 0..{lost_from}, resumed at {resumed}, first retained {first}"
    );
    let mut want: Vec<u64> = (0..lost_from).collect();
    want.extend(resumed..end);
    assert_eq!(
        offsets, want,
        "0..{lost_from}, then the first retained offset .. the end, once each"
    );
    (lost_from, resumed)
}

/// Bytes the kernel still holds on their way to a node's receivers (syslog 5514, SNMP 5162):
/// the receive queues of its UDP sockets and TCP connections, and the send queues of local
/// senders' TCP connections to it (`/proc/net/{udp,tcp}`: `tx_queue:rx_queue`, hex). A
/// sender that has finished may leave data there; the node has not received it yet.
pub fn kernel_queued_to(ip: Ipv4Addr) -> u64 {
    let ends: Vec<String> = [5514u16, 5162]
        .iter()
        .map(|port| format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets())))
        .collect();
    let mut queued = 0;
    for file in ["/proc/net/udp", "/proc/net/tcp"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(queues)) = (cols.get(1), cols.get(2), cols.get(4))
            else {
                continue;
            };
            let Some((tx, rx)) = queues.split_once(':') else {
                continue;
            };
            let hex = |v: &str| u64::from_str_radix(v, 16).unwrap_or(0);
            if ends.iter().any(|e| e == local) {
                queued += hex(rx);
            }
            if ends.iter().any(|e| e == remote) {
                queued += hex(tx);
            }
        }
    }
    queued
}
