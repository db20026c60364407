//! `twinrx lab`: a local pair and witness on loopback addresses, for trying the product out.
//!
//! Contract:
//! - **In**: a directory (default `./twinrx-lab`) and three loopback addresses (node a
//!   127.0.0.11, node b 127.0.0.12, witness 127.0.0.13; all of 127.0.0.0/8 is loopback on
//!   Linux).
//! - **Generated once** into the directory, and reused as they are when `lab` runs again (so a
//!   user can stop and restart the lab and keep its data): `keys/` (the link's CA and a
//!   certificate for each node and the witness: `twinrx keys init`), `admin.token` (32 random
//!   bytes as hex, mode 0600: control needs it), a self-signed TLS certificate for the syslog TLS
//!   listeners (`tls/cert.pem`, `tls/key.pem`, made with the `openssl` CLI; without it the lab
//!   runs without TLS and says so), `a.toml`, `b.toml`, `witness.toml`, and the data
//!   directories `data/a`, `data/b`, `data/witness`.
//! - **Runs** three children of this same binary (`node --config`, `witness --config`), each
//!   logging to `DIR/<name>.log`, and writes `DIR/lab.json` (addresses, configs, pids, logs)
//!   each time it starts them. It waits (at most [`READY_TIMEOUT`]) until every child answers
//!   `GET /status`, prints what to send where and what to try, then supervises: a child that
//!   exits is reported with the command that restarts it, never restarted by the lab (failures
//!   are what the user came to play with).
//! - **Stops** on SIGINT or SIGTERM: SIGTERM to every child still running, up to
//!   [`STOP_TIMEOUT`] for them to exit, SIGKILL for stragglers, a summary, exit 0.
//! - **Refuses** to start when one of its addresses is in use (e.g. a lab already runs),
//!   naming the address; a child that dies during start-up stops the others, and the error
//!   quotes the end of its log. Either way the exit code is non-zero and no child is left.

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the children have to answer `GET /status` after they are started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long each child has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks at its children.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of a child's log quoted when it dies during start-up.
const LOG_TAIL_LINES: usize = 15;

// The lab's ports, the same on each node address (the product defaults are 514, 6514, 162,
// 7400, 7401; the lab uses unprivileged ports so it runs without root).
const SYSLOG_PORT: u16 = 5514;
const SYSLOG_TLS_PORT: u16 = 6514;
const SNMP_PORT: u16 = 5162;
const LINK_PORT: u16 = 7400;
const ADMIN_PORT: u16 = 7401;
const WITNESS_PORT: u16 = 7402;
const WITNESS_ADMIN_PORT: u16 = 7403;

/// `twinrx lab` arguments.
#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Where the lab keeps its configs, key, certificate, data and logs (created if missing;
    /// reused as it is when it exists).
    #[arg(long, default_value = "./twinrx-lab")]
    pub dir: PathBuf,
    /// Node a's address (a loopback address, so the lab needs no network).
    #[arg(long, default_value = "127.0.0.11", hide = true)]
    pub ip_a: Ipv4Addr,
    /// Node b's address.
    #[arg(long, default_value = "127.0.0.12", hide = true)]
    pub ip_b: Ipv4Addr,
    /// The witness's address.
    #[arg(long, default_value = "127.0.0.13", hide = true)]
    pub ip_witness: Ipv4Addr,
}

/// One child of the lab: a node or the witness.
struct Member {
    /// "a", "b" or "witness".
    name: &'static str,
    /// "node" or "witness": the subcommand that runs it.
    command: &'static str,
    config: PathBuf,
    log: PathBuf,
    /// Base URL of its admin HTTP server.
    admin: String,
    /// Addresses it binds, with what they are for (checked before start-up).
    binds: Vec<(Transport, SocketAddr, &'static str)>,
    child: Option<Child>,
    /// Set once the child has exited and been reaped (its pid may be reused from then on).
    exited: Option<ExitStatus>,
}

#[derive(Clone, Copy)]
enum Transport {
    Tcp,
    Udp,
}

impl Member {
    fn label(&self) -> String {
        match self.command {
            "node" => format!("node {}", self.name),
            _ => self.name.to_string(),
        }
    }

    /// The pid of a child not yet reaped (so the pid is still ours to signal).
    fn live_pid(&self) -> Option<Pid> {
        match (&self.child, self.exited) {
            (Some(c), None) => i32::try_from(c.id()).ok().map(Pid::from_raw),
            _ => None,
        }
    }

    /// Reaps the child if it has exited; returns its status the first time only.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return None;
        }
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.exited = Some(st);
        Some(st)
    }
}

/// Runs the lab until SIGINT/SIGTERM; the exit code is 0 after a clean stop.
pub fn run(args: LabArgs) -> anyhow::Result<i32> {
    // Signal handlers first: a Ctrl-C from here on stops the children we started.
    let mut signals = Signals::install()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create the lab directory {}", args.dir.display()))?;
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let tls = prepare(&dir, &args)?;
    let mut members = members(&dir, &args, tls);
    check_ports(&dir, &members)?;

    let exe = std::env::current_exe().context("cannot find this program's path")?;
    for m in members.iter_mut() {
        if let Err(e) = spawn(&exe, m) {
            stop_all(&mut members);
            return Err(e);
        }
    }
    write_lab_json(&dir, &args, &members)?;

    match wait_ready(&dir, &mut members, &mut signals) {
        Ok(true) => {}
        Ok(false) => {
            println!("lab: stopping before it was ready");
            let clean = stop_all(&mut members);
            return Ok(if clean { 0 } else { 1 });
        }
        Err(e) => {
            stop_all(&mut members);
            return Err(e);
        }
    }
    print!("{}", welcome(&dir, &args, &members, tls));
    std::io::stdout().flush().ok();

    supervise(&mut members, &mut signals);
    println!("lab: stopping");
    stop_all(&mut members);
    println!(
        "lab: stopped; configs, data and logs stay in {} (run the same command to start it again)",
        dir.display()
    );
    Ok(0)
}

/// SIGINT and SIGTERM, caught from the moment of [`Signals::install`].
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the signal runtime")?;
        let _guard = rt.enter();
        let term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        Ok(Signals { rt, term, int })
    }

    /// Waits `d`; true when SIGINT or SIGTERM arrived (also one that arrived before the call).
    fn wait(&mut self, d: Duration) -> bool {
        let Signals { rt, term, int } = self;
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => true,
                _ = int.recv() => true,
                _ = tokio::time::sleep(d) => false,
            }
        })
    }
}

/// Creates what the lab needs in `dir` unless it is there already; returns whether the
/// syslog TLS listeners are configured.
fn prepare(dir: &Path, args: &LabArgs) -> anyhow::Result<bool> {
    for sub in ["data/a", "data/b", "data/witness", "tls"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let keys = dir.join("keys");
    if !replicator::tls::ca_file(&keys).exists() {
        replicator::tls::init_dir(&keys, 3650)
            .with_context(|| format!("cannot make the link's keys in {}", keys.display()))?;
    }
    let token = dir.join("admin.token");
    if !token.exists() {
        let t =
            crate::secret::random_hex().context("cannot read /dev/urandom for the admin token")?;
        crate::secret::write_new(&token, format!("{t}\n").as_bytes())
            .with_context(|| format!("cannot write {}", token.display()))?;
    }
    let a = dir.join("a.toml");
    let tls = if a.exists() {
        // Reused: the configs say whether TLS was set up when they were written.
        let text =
            std::fs::read_to_string(&a).with_context(|| format!("cannot read {}", a.display()))?;
        let admin = format!("\"{}:{ADMIN_PORT}\"", args.ip_a);
        if text.contains("psk_file") {
            anyhow::bail!(
                "{} was written by an older twinrx (a pre-shared key on the link, which now runs \
                 over TLS with certificates): remove a.toml, b.toml and witness.toml there to \
                 have them written again (the data stays)",
                a.display()
            );
        }
        if !text.contains(&admin) {
            anyhow::bail!(
                "{} was written for other addresses than node a = {}: use another --dir, or \
                 remove the configs there to have them written again",
                a.display(),
                args.ip_a
            );
        }
        text.contains("tls_cert_file")
    } else {
        make_cert(dir, args)
    };
    for (name, text) in [
        ("a.toml", node_toml("a", args, tls)),
        ("b.toml", node_toml("b", args, tls)),
        ("witness.toml", witness_toml(args)),
    ] {
        let p = dir.join(name);
        if !p.exists() {
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        }
    }
    Ok(tls)
}

/// Makes the self-signed certificate of the syslog TLS listeners (both nodes) with the
/// `openssl` CLI, unless it exists; false (and a note) when it cannot.
fn make_cert(dir: &Path, args: &LabArgs) -> bool {
    let cert = dir.join("tls/cert.pem");
    let key = dir.join("tls/key.pem");
    if cert.exists() && key.exists() {
        return true;
    }
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"])
        .args(["-subj", "/CN=twinrx-lab", "-addext"])
        .arg(format!(
            "subjectAltName=DNS:localhost,IP:{},IP:{}",
            args.ip_a, args.ip_b
        ))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output();
    let problem = match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "openssl failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run openssl: {e}")),
    };
    if let Some(problem) = problem {
        println!("lab: note: syslog over TLS is not set up ({problem}); UDP, TCP and SNMP are");
        return false;
    }
    // The key is a secret even in a lab; a failure here leaves openssl's own mode (0600 on
    // OpenSSL 3), which the node accepts.
    if let Err(e) =
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
    {
        println!("lab: note: cannot chmod 600 {}: {e}", key.display());
    }
    true
}

/// A node's config. Node a dials, node b listens (docs/config.md `[pair]`); both files name
/// both lists so that they describe the same link.
fn node_toml(name: &str, args: &LabArgs, tls: bool) -> String {
    let (me, other) = match name {
        "a" => (args.ip_a, args.ip_b),
        _ => (args.ip_b, args.ip_a),
    };
    let tls_keys = if tls {
        format!(
            "tls = [\"{me}:{SYSLOG_TLS_PORT}\"]\n\
             tls_cert_file = \"tls/cert.pem\"\n\
             tls_key_file = \"tls/key.pem\"\n"
        )
    } else {
        String::new()
    };
    format!(
        "# Node {name} of a twinrx lab, written by `twinrx lab` (once: edit it freely, the lab\n\
         # reuses it). Every key is documented in docs/config.md. Relative paths are resolved\n\
         # against this file's directory.\n\n\
         [node]\nname = \"{name}\"\ndata_dir = \"data/{name}\"\n\n\
         [syslog]\nudp = [\"{me}:{SYSLOG_PORT}\"]\ntcp = [\"{me}:{SYSLOG_PORT}\"]\n{tls_keys}\n\
         [snmp]\nlisten = [\"{me}:{SNMP_PORT}\"]\n\n\
         [admin]\nlisten = \"{me}:{ADMIN_PORT}\"\n\
         # Control (switchover, resync) needs this token: `--config` finds it here.\n\
         token_file = \"admin.token\"\n\n\
         [pair]\n\
         # Node a dials the peer's address, node b listens on its own.\n\
         peer = [\"{other}:{LINK_PORT}\"]\nlisten = [\"{me}:{LINK_PORT}\"]\n\
         # The link runs over TLS 1.3: this node's certificate, and the pair's CA\n\
         # (keys/ was written by `twinrx keys init`).\n\
         ca_file = \"keys/ca.pem\"\ncert_file = \"keys/{name}.pem\"\nkey_file = \"keys/{name}.key\"\n\n\
         [ha]\nwitness = \"{w}:{WITNESS_PORT}\"\n",
        w = args.ip_witness
    )
}

fn witness_toml(args: &LabArgs) -> String {
    let w = args.ip_witness;
    format!(
        "# The witness of a twinrx lab, written by `twinrx lab` (once: edit it freely, the lab\n\
         # reuses it). Every key is documented in docs/config.md, \"Witness config\".\n\n\
         listen = \"{w}:{WITNESS_PORT}\"\n\
         admin_listen = \"{w}:{WITNESS_ADMIN_PORT}\"\n\
         data_dir = \"data/witness\"\n\
         ca_file = \"keys/ca.pem\"\ncert_file = \"keys/witness.pem\"\nkey_file = \"keys/witness.key\"\n"
    )
}

fn members(dir: &Path, args: &LabArgs, tls: bool) -> Vec<Member> {
    let node = |name: &'static str, ip: Ipv4Addr| {
        let at = |port| SocketAddr::from((ip, port));
        let mut binds = vec![
            (Transport::Udp, at(SYSLOG_PORT), "syslog UDP"),
            (Transport::Tcp, at(SYSLOG_PORT), "syslog TCP"),
            (Transport::Udp, at(SNMP_PORT), "SNMP"),
            (Transport::Tcp, at(ADMIN_PORT), "admin"),
        ];
        if tls {
            binds.push((Transport::Tcp, at(SYSLOG_TLS_PORT), "syslog TLS"));
        }
        if name == "b" {
            binds.push((Transport::Tcp, at(LINK_PORT), "cluster link"));
        }
        Member {
            name,
            command: "node",
            config: dir.join(format!("{name}.toml")),
            log: dir.join(format!("{name}.log")),
            admin: format!("http://{}", at(ADMIN_PORT)),
            binds,
            child: None,
            exited: None,
        }
    };
    let w = args.ip_witness;
    vec![
        node("a", args.ip_a),
        node("b", args.ip_b),
        Member {
            name: "witness",
            command: "witness",
            config: dir.join("witness.toml"),
            log: dir.join("witness.log"),
            admin: format!("http://{w}:{WITNESS_ADMIN_PORT}"),
            binds: vec![
                (
                    Transport::Tcp,
                    SocketAddr::from((w, WITNESS_PORT)),
                    "witness",
                ),
                (
                    Transport::Tcp,
                    SocketAddr::from((w, WITNESS_ADMIN_PORT)),
                    "witness admin",
                ),
            ],
            child: None,
            exited: None,
        },
    ]
}

/// Binds (and releases) every address the children will bind, so that a busy port is
/// reported by name before anything starts.
fn check_ports(dir: &Path, members: &[Member]) -> anyhow::Result<()> {
    for m in members {
        for &(transport, addr, what) in &m.binds {
            let res = match transport {
                Transport::Tcp => TcpListener::bind(addr).map(drop),
                Transport::Udp => UdpSocket::bind(addr).map(drop),
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
                    "{addr} ({} {what}) is already in use: is another lab running? see {}",
                    m.label(),
                    dir.join("lab.json").display()
                ),
                Err(e) => anyhow::bail!(
                    "cannot bind {addr} ({} {what}): {e} (the lab uses loopback addresses \
                     127.0.0.x, all of which are local on Linux)",
                    m.label()
                ),
            }
        }
    }
    Ok(())
}

fn spawn(exe: &Path, m: &mut Member) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.log)
        .with_context(|| format!("cannot open {}", m.log.display()))?;
    let log2 = log
        .try_clone()
        .with_context(|| format!("cannot open {}", m.log.display()))?;
    let child = Command::new(exe)
        .arg(m.command)
        .arg("--config")
        .arg(&m.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .with_context(|| format!("cannot start {}", m.label()))?;
    m.child = Some(child);
    m.exited = None;
    Ok(())
}

/// Writes `DIR/lab.json` (atomically: a reader never sees half a file).
fn write_lab_json(dir: &Path, args: &LabArgs, members: &[Member]) -> anyhow::Result<()> {
    let pid = |m: &Member| m.child.as_ref().map(|c| c.id());
    let mut nodes = Vec::new();
    let mut witness = serde_json::Value::Null;
    for m in members {
        if m.command == "node" {
            let ip = if m.name == "a" { args.ip_a } else { args.ip_b };
            nodes.push(json!({
                "name": m.name,
                "config": m.config,
                "admin": m.admin,
                "syslog_udp": format!("{ip}:{SYSLOG_PORT}"),
                "syslog_tcp": format!("{ip}:{SYSLOG_PORT}"),
                "syslog_tls": format!("{ip}:{SYSLOG_TLS_PORT}"),
                "snmp": format!("{ip}:{SNMP_PORT}"),
                "pid": pid(m),
                "log": m.log,
            }));
        } else {
            witness = json!({
                "config": m.config,
                "listen": format!("{}:{WITNESS_PORT}", args.ip_witness),
                "admin": m.admin,
                "pid": pid(m),
                "log": m.log,
            });
        }
    }
    let doc = json!({
        "dir": dir,
        "lab_pid": std::process::id(),
        "nodes": nodes,
        "witness": witness,
    });
    let path = dir.join("lab.json");
    let tmp = dir.join("lab.json.tmp");
    let text = serde_json::to_string_pretty(&doc).context("encoding lab.json")?;
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Waits until every child answers `GET /status`. Ok(false): a signal asked to stop first.
fn wait_ready(dir: &Path, members: &mut [Member], signals: &mut Signals) -> anyhow::Result<bool> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; members.len()];
    loop {
        for (m, ready) in members.iter_mut().zip(ready.iter_mut()) {
            if let Some(st) = m.poll_exit() {
                let log = log_tail(&m.log);
                let hint = if log.contains("in use") {
                    format!(
                        "\n(is another lab running? see {})",
                        dir.join("lab.json").display()
                    )
                } else {
                    String::new()
                };
                anyhow::bail!(
                    "{} exited during start-up ({st}); the end of {}:\n{log}{hint}",
                    m.label(),
                    m.log.display()
                );
            }
            if !*ready {
                *ready = crate::client::get_json(&format!("{}/status", m.admin)).is_ok();
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            let late: Vec<String> = members
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(m, _)| format!("{} ({})", m.label(), m.log.display()))
                .collect();
            anyhow::bail!(
                "not answering GET /status after {}s: {}; see the logs",
                READY_TIMEOUT.as_secs(),
                late.join(", ")
            );
        }
        if signals.wait(POLL_INTERVAL) {
            return Ok(false);
        }
    }
}

/// The last lines of a log, indented (empty when it cannot be read).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..]
        .iter()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
}

/// How to run this binary in the printed commands: as typed when found through PATH,
/// otherwise by its full path.
fn program() -> String {
    match std::env::args().next() {
        Some(a) if !a.contains('/') => a,
        _ => std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "twinrx".into()),
    }
}

fn welcome(dir: &Path, args: &LabArgs, members: &[Member], tls: bool) -> String {
    let me = program();
    let pid = |name: &str| {
        members
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.child.as_ref())
            .map_or_else(|| "?".to_string(), |c| c.id().to_string())
    };
    let (a, b, w) = (args.ip_a, args.ip_b, args.ip_witness);
    let cfg = |n: &str| dir.join(format!("{n}.toml")).display().to_string();
    let mut s = format!("\ntwinrx lab is running in {}\n", dir.display());
    for (name, ip) in [("a", a), ("b", b)] {
        s += &format!(
            "  node {name}    pid {:<7} syslog udp+tcp {ip}:{SYSLOG_PORT}{}  snmp {ip}:{SNMP_PORT}  \
             admin http://{ip}:{ADMIN_PORT}\n",
            pid(name),
            if tls {
                format!("  tls {ip}:{SYSLOG_TLS_PORT}")
            } else {
                String::new()
            },
        );
    }
    s += &format!(
        "  witness   pid {:<7} listen {w}:{WITNESS_PORT}  admin http://{w}:{WITNESS_ADMIN_PORT}\n",
        pid("witness")
    );
    s += &format!(
        "  logs: {}/{{a,b,witness}}.log   pids and addresses: {}/lab.json\n",
        dir.display(),
        dir.display()
    );
    let (ca, pa) = (cfg("a"), pid("a"));
    let tries = [
        (
            format!("{me} status --config {ca}"),
            "roles, HA, next step".to_string(),
        ),
        (
            format!("{me} tail --config {ca} --follow"),
            "the merged stream (NDJSON)".into(),
        ),
        (
            format!("kill -9 {pa}"),
            "fail node a; watch node b take over".into(),
        ),
        (
            format!("{me} node --config {ca}"),
            "restart it, in another shell".into(),
        ),
        (
            format!("{me} resync --config {ca}"),
            "restore redundancy, online".into(),
        ),
        (
            format!("{me} switchover --config {ca}"),
            "planned role swap: no loss, no gap".into(),
        ),
        (
            format!(
                "TWINRX_ADMIN_TOKEN_FILE={}/admin.token {me} switchover --node http://{a}:{ADMIN_PORT}",
                dir.display()
            ),
            "the same, by URL: control needs the admin token".into(),
        ),
        (
            format!(
                "{me} check --manifest {}/run.json --node http://{a}:{ADMIN_PORT}",
                dir.display()
            ),
            "after gen: anything missing?".into(),
        ),
    ];
    let width = tries.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let try_lines: String = tries
        .iter()
        .map(|(c, why)| format!("  {c:<width$}   # {why}\n"))
        .collect();
    s += &format!(
        "\nSend to both nodes, as a device does:\n\
         \x20 logger -n {a} -P {SYSLOG_PORT} -d --rfc5424 hello; logger -n {b} -P {SYSLOG_PORT} -d --rfc5424 hello\n\
         \x20 snmptrap -v2c -c public {a}:{SNMP_PORT} '' 1.3.6.1.6.3.1.1.5.1; snmptrap -v2c -c public {b}:{SNMP_PORT} '' 1.3.6.1.6.3.1.1.5.1\n\
         \x20 {me} gen --to {a}:{SYSLOG_PORT} --to {b}:{SYSLOG_PORT} --count 10000 --rate 500 --manifest {d}/run.json\n\
         \nThen try:\n{try_lines}\
         \nCtrl-C stops the lab; its configs, data and logs stay in {d}.\n",
        d = dir.display(),
    );
    s
}

/// Reports children that exit, until SIGINT or SIGTERM.
fn supervise(members: &mut [Member], signals: &mut Signals) {
    let me = program();
    while !signals.wait(POLL_INTERVAL) {
        for m in members.iter_mut() {
            if let Some(st) = m.poll_exit() {
                println!(
                    "lab: {} exited ({st}); restart it with `{me} {} --config {}` (log: {})",
                    m.label(),
                    m.command,
                    m.config.display(),
                    m.log.display()
                );
            }
        }
    }
}

/// SIGTERM to every child still running, SIGKILL after [`STOP_TIMEOUT`]; prints one line
/// per child. True when every child stopped by itself.
fn stop_all(members: &mut [Member]) -> bool {
    for m in members.iter_mut() {
        m.poll_exit();
        if let Some(pid) = m.live_pid() {
            if let Err(e) = kill(pid, Signal::SIGTERM) {
                println!("lab: cannot signal {} (pid {pid}): {e}", m.label());
            }
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut clean = true;
    for m in members.iter_mut() {
        let Some(pid) = m.live_pid() else {
            if let (Some(c), Some(st)) = (&m.child, m.exited) {
                println!(
                    "lab: {} (pid {}) had exited: {st} (if you restarted it yourself, stop \
                     that one in its own shell)",
                    m.label(),
                    c.id()
                );
            }
            continue;
        };
        while m.poll_exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        match m.exited {
            Some(st) => println!("lab: {} (pid {pid}) stopped: {st}", m.label()),
            None => {
                clean = false;
                let killed = m.child.as_mut().map(|c| c.kill().and_then(|()| c.wait()));
                match killed {
                    Some(Ok(st)) => {
                        m.exited = Some(st);
                        println!(
                            "lab: {} (pid {pid}) did not stop within {}s: killed",
                            m.label(),
                            STOP_TIMEOUT.as_secs()
                        );
                    }
                    Some(Err(e)) => println!("lab: cannot kill {} (pid {pid}): {e}", m.label()),
                    None => {}
                }
            }
        }
    }
    clean
}
