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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log");
        let child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn twinrx node");
        self.child = Some(child);
        let admin = self.admin.clone();
        let log = self.log.clone();
        wait_for("the node's admin API", Duration::from_secs(20), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "node exited during start-up ({st}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            get_json(&format!("{admin}/status"))
        });
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
