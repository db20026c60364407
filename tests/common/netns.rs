//! A network-namespace lab for failure tests (issue #8): node A, node B, the witness and the
//! devices each live in a network namespace of their own, cabled to a "switch" namespace that
//! holds two Linux bridges, so faults (a pulled cable, a lost address, a partition between the
//! nodes, delay and loss) can be made to real processes without touching the root namespace.
//!
//! ```text
//!   ns dev (devices)     ns w (witness)
//!   eth0 10.88.0.100     eth0 10.88.0.13
//!        |                    |
//!   +----d0--------------------w0-----+   ns sw ("switch", nothing else in it)
//!   |    br0: service net 10.88.0.0/24 |
//!   +----a0--------------------b0-----+
//!        |                    |
//!   eth0 10.88.0.11      eth0 10.88.0.12
//!   ns a (node A)        ns b (node B)
//!   eth1 10.89.0.11      eth1 10.89.0.12
//!        |                    |
//!   +----a1--------------------b1-----+   ns sw
//!   |    br1: second A-B link 10.89.0.0/24
//!   +----------------------------------+
//! ```
//! Every namespace has `lo` up (a node's admin server may listen on 127.0.0.1 inside its own
//! namespace). Namespace names are `twx-<pid>-<n>-<host>` (`host` = `a`, `b`, `w`, `dev`,
//! `sw`): the creating process's pid and a per-process counter, so labs in parallel tests and
//! in parallel test processes never clash. Interface names are per namespace, hence fixed.
//!
//! # API
//! - [`NetLab::new`] builds everything (first sweeping stale labs, see [`sweep_stale`]); on
//!   any error it panics naming the failing command and its stderr. A machine without
//!   iproute2 or without root fails here with a message saying so: no silent skip.
//! - Where things are: [`NetLab::ns`], [`NetLab::addr`] (or the static [`addr_of`]),
//!   [`NetLab::id`] (the prefix of every namespace of this lab).
//! - Processes: [`NetLab::command`] makes a `Command` that runs a program inside a host's
//!   namespace (`ip netns exec NS program`; `ip` execs, so the child's pid is the program's);
//!   add args and stdio, then [`NetLab::spawn`] starts it and keeps the `Child`: the lab owns
//!   it (so its pid cannot be reused behind our back) and hands out the pid for
//!   [`NetLab::signal`], [`NetLab::try_wait`], [`NetLab::wait_exit`], [`NetLab::kill`].
//!   [`NetLab::exec`] runs a command to completion inside a namespace (with a deadline).
//!   [`NetLab::ping`] / [`NetLab::wait_reachable`] probe with ICMP (`ping` from iputils-ping).
//! - Faults, each with its inverse:
//!   - [`NetLab::link_down`] / [`NetLab::link_up`]: the switch-side end of a host's cable on one
//!     network down/up (the node sees its carrier go; F6 with `Net::Link2`);
//!   - [`NetLab::cut`] / [`NetLab::restore`]: every cable of a host (F5);
//!   - [`NetLab::remove_addr`] / [`NetLab::add_addr`]: the host's address on a network deleted
//!     inside its namespace, the interface staying up (F7, "receive address lost");
//!   - [`NetLab::partition_nodes`] / [`NetLab::heal_nodes`]: A and B cannot reach each other
//!     on either network while both still reach the witness and the devices (F12). Made in the
//!     switch with bridge port isolation (`bridge_slave isolated on` on a0, b0, a1, b1:
//!     isolated ports never forward to each other, only to non-isolated ones), so the nodes
//!     see pure silence (no local error), and no firewall tool (nft/iptables) is needed;
//!   - [`NetLab::netem`] / [`NetLab::netem_clear`]: `tc qdisc replace dev IF root netem SPEC` on
//!     the host-side interface (its egress). Needs the kernel's `sch_netem`;
//!     [`NetLab::try_netem`] reports a kernel without it as an `Err` instead of a panic.
//!
//! # Cleanup contract
//! Dropping the lab (also on unwind, when a test panics) SIGKILLs and reaps every child it
//! spawned, SIGKILLs any other process still inside one of its namespaces (`ip netns pids`),
//! then deletes its namespaces (`ip netns del`), which removes the veths and bridges with
//! them. Nothing is created in the root namespace. A lab left behind by a process that died
//! without unwinding (SIGKILL) is removed by [`sweep_stale`] (run by every `NetLab::new`): any
//! `twx-<pid>-...` namespace whose pid is no longer alive.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

/// Prefix of every namespace a lab creates.
pub const PREFIX: &str = "twx-";

/// How long [`NetLab::exec`] lets a command run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A machine of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Node A.
    A,
    /// Node B.
    B,
    /// The witness.
    W,
    /// The devices that send syslog and traps.
    Dev,
}

impl Host {
    pub const ALL: [Host; 4] = [Host::A, Host::B, Host::W, Host::Dev];

    fn tag(self) -> &'static str {
        match self {
            Host::A => "a",
            Host::B => "b",
            Host::W => "w",
            Host::Dev => "dev",
        }
    }

    /// The networks this host is cabled to.
    pub fn nets(self) -> &'static [Net] {
        match self {
            Host::A | Host::B => &[Net::Service, Net::Link2],
            Host::W | Host::Dev => &[Net::Service],
        }
    }

    /// The switch-side end of this host's cable on `net` (an interface in the `sw` namespace).
    fn port(self, net: Net) -> String {
        let p = match self {
            Host::A => "a",
            Host::B => "b",
            Host::W => "w",
            Host::Dev => "d",
        };
        let n = match net {
            Net::Service => 0,
            Net::Link2 => 1,
        };
        format!("{p}{n}")
    }
}

/// A network of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Net {
    /// 10.88.0.0/24 on bridge `br0`: A, B, witness, devices.
    Service,
    /// 10.89.0.0/24 on bridge `br1`: the second A–B link.
    Link2,
}

impl Net {
    pub const ALL: [Net; 2] = [Net::Service, Net::Link2];

    fn bridge(self) -> &'static str {
        match self {
            Net::Service => "br0",
            Net::Link2 => "br1",
        }
    }

    /// The interface name on the host side (inside the host's namespace).
    pub fn iface(self) -> &'static str {
        match self {
            Net::Service => "eth0",
            Net::Link2 => "eth1",
        }
    }
}

/// The plan's address of `host` on `net`, None when the host is not on that network.
pub fn addr_of(host: Host, net: Net) -> Option<Ipv4Addr> {
    let last = match host {
        Host::A => 11,
        Host::B => 12,
        Host::W => 13,
        Host::Dev => 100,
    };
    match net {
        Net::Service => Some(Ipv4Addr::new(10, 88, 0, last)),
        Net::Link2 => host
            .nets()
            .contains(&net)
            .then(|| Ipv4Addr::new(10, 89, 0, last)),
    }
}

/// Waits until `f` returns Some, or panics with `what` after `timeout` (the harness's
/// `wait_for`).
pub use super::wait_for as wait_until;

enum Kid {
    Running(Child),
    Exited(ExitStatus),
}

/// A built lab; see the module documentation.
pub struct NetLab {
    id: String,
    /// Namespaces created so far, in creation order (Drop deletes exactly these).
    created: Vec<String>,
    children: Mutex<HashMap<u32, Kid>>,
}

impl NetLab {
    /// Builds the whole lab; panics (after cleaning up what it made) with the failing command
    /// and its stderr.
    pub fn new() -> NetLab {
        check_ip_tool();
        sweep_stale();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let mut lab = NetLab {
            id: format!("{PREFIX}{}-{n}", std::process::id()),
            created: Vec::new(),
            children: Mutex::new(HashMap::new()),
        };
        // A panic from here on drops `lab`, which deletes what was created so far.
        let sw = lab.switch_ns();
        lab.add_ns(&sw);
        for h in Host::ALL {
            let ns = lab.ns(h).to_string();
            lab.add_ns(&ns);
        }
        for net in Net::ALL {
            let br = net.bridge();
            run_ip(&[
                "-n",
                &sw,
                "link",
                "add",
                br,
                "type",
                "bridge",
                "stp_state",
                "0",
            ]);
            run_ip(&["-n", &sw, "link", "set", br, "up"]);
        }
        for h in Host::ALL {
            let ns = lab.ns(h).to_string();
            for &net in h.nets() {
                let port = h.port(net);
                let iface = net.iface();
                run_ip(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", iface,
                    "netns", &ns,
                ]);
                run_ip(&["-n", &sw, "link", "set", &port, "master", net.bridge()]);
                run_ip(&["-n", &sw, "link", "set", &port, "up"]);
                let cidr = format!("{}/24", lab.addr(h, net));
                run_ip(&["-n", &ns, "addr", "add", &cidr, "dev", iface]);
                run_ip(&["-n", &ns, "link", "set", iface, "up"]);
            }
        }
        lab
    }

    fn add_ns(&mut self, name: &str) {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .expect("run `ip netns add` (iproute2 was found a moment ago)");
        if !out.status.success() {
            panic!(
                "`ip netns add {name}` failed ({}): {}\nthe netns lab needs root \
                 (CAP_SYS_ADMIN) and a kernel with network namespaces",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.created.push(name.to_string());
        run_ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// The prefix of every namespace of this lab (`twx-<pid>-<n>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.id, host.tag())
    }

    /// The switch namespace (holds br0, br1 and the switch-side cable ends).
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.id)
    }

    /// Every namespace this lab created.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The address of `host` on `net`; panics when the host is not on that network.
    pub fn addr(&self, host: Host, net: Net) -> Ipv4Addr {
        addr_of(host, net).unwrap_or_else(|| panic!("{host:?} is not on {net:?}"))
    }

    // ---- processes ----

    /// A command that runs `program` inside `host`'s namespace; add args, env and stdio, then
    /// start it with [`NetLab::spawn`] (or `.output()` for a short one).
    pub fn command(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(self.ns(host)).arg(program);
        c
    }

    /// Starts a command made by [`NetLab::command`] and keeps it; returns its pid. The child
    /// is SIGKILLed and reaped when the lab is dropped unless it was reaped before.
    pub fn spawn(&self, cmd: &mut Command) -> u32 {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let ours = cmd.get_program() == "ip"
            && args.len() >= 4
            && args[0] == "netns"
            && args[1] == "exec"
            && self.created.contains(&args[2]);
        assert!(
            ours,
            "NetLab::spawn takes a command made by NetLab::command, got {cmd:?}"
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let pid = child.id();
        self.kids().insert(pid, Kid::Running(child));
        pid
    }

    fn kids(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Kid>> {
        // A panic while holding the lock leaves the map consistent: keep using it.
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pids of every process spawned by this lab (running or not).
    pub fn pids(&self) -> Vec<u32> {
        self.kids().keys().copied().collect()
    }

    /// Sends `sig` to a running child of this lab; panics if it is not ours or was reaped.
    pub fn signal(&self, pid: u32, sig: Signal) {
        let kids = self.kids();
        match kids.get(&pid) {
            Some(Kid::Running(_)) => {
                let raw = i32::try_from(pid).expect("pid fits in i32");
                send_signal(Pid::from_raw(raw), sig)
                    .unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
            }
            Some(Kid::Exited(st)) => panic!("cannot signal {pid}: it already exited ({st})"),
            None => panic!("{pid} is not a child of this lab"),
        }
    }

    /// The child's exit status if it has exited (reaping it), else None.
    pub fn try_wait(&self, pid: u32) -> Option<ExitStatus> {
        let mut kids = self.kids();
        let kid = kids
            .get_mut(&pid)
            .unwrap_or_else(|| panic!("{pid} is not a child of this lab"));
        match kid {
            Kid::Exited(st) => Some(*st),
            Kid::Running(child) => {
                let st = child
                    .try_wait()
                    .unwrap_or_else(|e| panic!("waitpid {pid}: {e}"))?;
                *kid = Kid::Exited(st);
                Some(st)
            }
        }
    }

    /// Waits for the child to exit; panics after `timeout`.
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> ExitStatus {
        wait_until(&format!("process {pid} to exit"), timeout, || {
            self.try_wait(pid)
        })
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&self, pid: u32) -> ExitStatus {
        if let Some(st) = self.try_wait(pid) {
            return st;
        }
        self.signal(pid, Signal::SIGKILL);
        self.wait_exit(pid, Duration::from_secs(10))
    }

    /// Runs `args` (program first) inside `host`'s namespace to completion, within
    /// [`EXEC_TIMEOUT`]. The exit status is not checked: look at `Output::status`.
    pub fn exec(&self, host: Host, args: &[&str]) -> Output {
        self.exec_timeout(host, args, EXEC_TIMEOUT)
    }

    /// [`NetLab::exec`] with a deadline of your own; panics (killing the command) on timeout.
    pub fn exec_timeout(&self, host: Host, args: &[&str], timeout: Duration) -> Output {
        let (program, rest) = args.split_first().expect("exec needs a program");
        let mut cmd = self.command(host, program);
        cmd.args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}")),
            Err(_) => {
                // Not reaped yet (the waiting thread has not returned), so the pid is its own.
                let raw = i32::try_from(pid).expect("pid fits in i32");
                let _ = send_signal(Pid::from_raw(raw), Signal::SIGKILL);
                let out = rx.recv().ok().and_then(|r| r.ok());
                let (so, se) = out.map(|o| (o.stdout, o.stderr)).unwrap_or_default();
                panic!(
                    "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&so),
                    String::from_utf8_lossy(&se)
                );
            }
        }
    }

    /// [`NetLab::exec`] that panics with the output unless the command exits 0.
    pub fn exec_ok(&self, host: Host, args: &[&str]) -> Output {
        let out = self.exec(host, args);
        if !out.status.success() {
            panic!(
                "{args:?} in {host:?} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// One ICMP echo from `from` to `to` (`ping -n -c1 -W1`): the round-trip time, or None when
    /// no reply came. Panics when ping cannot run at all (not installed, bad arguments), so a
    /// missing tool is never mistaken for an unreachable host.
    pub fn ping(&self, from: Host, to: Ipv4Addr) -> Option<Duration> {
        let out = self.exec(from, &["ping", "-n", "-c1", "-W1", &to.to_string()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => Some(parse_rtt(&stdout).unwrap_or_else(|| {
                panic!("ping {to} from {from:?} succeeded without a time=: {stdout}")
            })),
            Some(1) => None,
            Some(2) if stderr.contains("nreachable") => None,
            _ => panic!(
                "ping {to} from {from:?} could not run ({}); is iputils-ping installed?\n\
                 stdout: {stdout}\nstderr: {stderr}",
                out.status
            ),
        }
    }

    /// Whether `from` gets an echo reply from `to`.
    pub fn reachable(&self, from: Host, to: Ipv4Addr) -> bool {
        self.ping(from, to).is_some()
    }

    /// Pings until reachability is `want`; panics after `timeout`.
    pub fn wait_reachable(&self, from: Host, to: Ipv4Addr, want: bool, timeout: Duration) {
        let what = format!(
            "{to} to become {} from {from:?}",
            if want { "reachable" } else { "unreachable" }
        );
        wait_until(&what, timeout, || {
            (self.reachable(from, to) == want).then_some(())
        });
    }

    // ---- faults ----

    /// Pulls `host`'s cable on `net`: the switch-side veth end goes down.
    pub fn link_down(&self, host: Host, net: Net) {
        self.set_port(host, net, "down");
    }

    /// Plugs `host`'s cable on `net` back in.
    pub fn link_up(&self, host: Host, net: Net) {
        self.set_port(host, net, "up");
    }

    fn set_port(&self, host: Host, net: Net, state: &str) {
        assert!(host.nets().contains(&net), "{host:?} is not on {net:?}");
        run_ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &host.port(net),
            state,
        ]);
    }

    /// Every cable of `host` pulled (F5, a network cut).
    pub fn cut(&self, host: Host) {
        for &net in host.nets() {
            self.link_down(host, net);
        }
    }

    /// Every cable of `host` plugged back in (also those pulled one by one).
    pub fn restore(&self, host: Host) {
        for &net in host.nets() {
            self.link_up(host, net);
        }
    }

    /// Deletes `host`'s address on `net` inside its namespace; the link stays up (F7).
    pub fn remove_addr(&self, host: Host, net: Net) {
        let cidr = format!("{}/24", self.addr(host, net));
        run_ip(&[
            "-n",
            &self.ns(host),
            "addr",
            "del",
            &cidr,
            "dev",
            net.iface(),
        ]);
    }

    /// Gives `host` its address on `net` back.
    pub fn add_addr(&self, host: Host, net: Net) {
        let cidr = format!("{}/24", self.addr(host, net));
        run_ip(&[
            "-n",
            &self.ns(host),
            "addr",
            "add",
            &cidr,
            "dev",
            net.iface(),
        ]);
    }

    /// A and B cannot reach each other on either network; both still reach the witness and
    /// the devices (F12). Bridge port isolation in the switch: see the module documentation.
    pub fn partition_nodes(&self) {
        self.isolate_nodes("on");
    }

    /// Undoes [`NetLab::partition_nodes`].
    pub fn heal_nodes(&self) {
        self.isolate_nodes("off");
    }

    fn isolate_nodes(&self, on: &str) {
        let sw = self.switch_ns();
        for h in [Host::A, Host::B] {
            for net in Net::ALL {
                run_ip(&[
                    "-n",
                    &sw,
                    "link",
                    "set",
                    "dev",
                    &h.port(net),
                    "type",
                    "bridge_slave",
                    "isolated",
                    on,
                ]);
            }
        }
    }

    /// `tc qdisc replace dev IF root netem SPEC` on `host`'s interface on `net` (its egress):
    /// e.g. `"delay 50ms loss 5%"`. Panics with the reason when it cannot be applied.
    pub fn netem(&self, host: Host, net: Net, spec: &str) {
        if let Err(e) = self.try_netem(host, net, spec) {
            panic!("{e}");
        }
    }

    /// [`NetLab::netem`] that returns why it could not be applied (e.g. a kernel without
    /// `sch_netem`, the message then says so).
    pub fn try_netem(&self, host: Host, net: Net, spec: &str) -> Result<(), String> {
        assert!(host.nets().contains(&net), "{host:?} is not on {net:?}");
        let mut args = vec![
            "tc",
            "qdisc",
            "replace",
            "dev",
            net.iface(),
            "root",
            "netem",
        ];
        args.extend(spec.split_whitespace());
        let out = self.exec(host, &args);
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let why = if stderr.contains("qdisc kind is unknown") {
            "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM / module sch_netem)"
        } else {
            "tc refused it"
        };
        Err(format!(
            "netem {spec:?} on {host:?} {}: {why}: `{}` exited {}: {stderr}",
            net.iface(),
            args.join(" "),
            out.status
        ))
    }

    /// Drops `per_mille`/1000 of `host`'s TCP packets at random, each way, on every interface
    /// but loopback (nftables `numgen random`; UDP, i.e. the devices' messages, untouched): real
    /// packet loss for the cluster links and the witness sessions, which TCP retransmits. For
    /// kernels without `sch_netem`. Needs the `nft` tool (package nftables).
    pub fn tcp_loss(&self, host: Host, per_mille: u32) -> Result<(), String> {
        let t = "twx_impair";
        let rules = format!(
            "add table ip {t}; \
             add chain ip {t} out {{ type filter hook output priority 0; policy accept; }}; \
             add rule ip {t} out oifname \"lo\" accept; \
             add rule ip {t} out meta l4proto tcp numgen random mod 1000 < {per_mille} counter drop; \
             add chain ip {t} in {{ type filter hook input priority 0; policy accept; }}; \
             add rule ip {t} in iifname \"lo\" accept; \
             add rule ip {t} in meta l4proto tcp numgen random mod 1000 < {per_mille} counter drop"
        );
        let out = self
            .command(host, "nft")
            .arg(&rules)
            .output()
            .map_err(|e| format!("cannot run nft (package nftables) in {host:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft refused the loss rules in {host:?} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Packets dropped so far by [`NetLab::tcp_loss`] on `host`: (sent side, received side).
    pub fn tcp_loss_counts(&self, host: Host) -> (u64, u64) {
        let out = self.exec_ok(host, &["nft", "list", "table", "ip", "twx_impair"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts = text.lines().filter(|l| l.contains("drop")).map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        });
        (counts.next().unwrap_or(0), counts.next().unwrap_or(0))
    }

    /// Removes a netem qdisc set by [`NetLab::netem`] (nothing to do when there is none).
    pub fn netem_clear(&self, host: Host, net: Net) {
        let show = self.exec_ok(host, &["tc", "qdisc", "show", "dev", net.iface()]);
        if String::from_utf8_lossy(&show.stdout).contains("netem") {
            self.exec_ok(host, &["tc", "qdisc", "del", "dev", net.iface(), "root"]);
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Never panic here: a drop during unwind that panics aborts the test binary.
        let mut kids = std::mem::take(&mut *self.kids());
        for (pid, kid) in kids.iter_mut() {
            if let Kid::Running(child) = kid {
                let _ = child.kill();
                if let Err(e) = child.wait() {
                    eprintln!("netns lab {}: cannot reap {pid}: {e}", self.id);
                }
            }
        }
        for ns in &self.created {
            kill_ns_processes(ns);
        }
        for ns in self.created.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "netns lab: `ip netns del {ns}` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("netns lab: cannot run `ip netns del {ns}`: {e}"),
            }
        }
    }
}

/// Deletes every lab namespace (`twx-<pid>-...`) whose creating process is gone, first
/// killing any process still inside it. Namespaces of live processes are left alone.
pub fn sweep_stale() {
    for ns in lab_namespaces() {
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_ns_processes(&ns);
        // Another process may be sweeping the same one: errors do not matter.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
}

/// Names of every namespace with our prefix (`ip netns list`).
pub fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run `ip netns list`");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// SIGKILLs every process inside namespace `ns` and waits (bounded) for them to go.
fn kill_ns_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for &p in &pids {
        let _ = send_signal(Pid::from_raw(p), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    // A killed process that is not our child stays a zombie until its parent reaps it: only
    // wait for it to stop running.
    while Instant::now() < deadline
        && pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails clearly when iproute2's `ip` is missing.
fn check_ip_tool() {
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`ip -V` failed ({}): {}; the netns lab needs iproute2",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run `ip` ({e}): the netns lab needs iproute2 (apt-get install iproute2) \
             and root"
        ),
    }
}

/// Runs `ip ARGS`, panicking with the command and its stderr on failure.
fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    if !out.status.success() {
        panic!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// The `time=X ms` of a ping reply.
pub fn parse_rtt(ping_stdout: &str) -> Option<Duration> {
    let rest = &ping_stdout[ping_stdout.find("time=")? + 5..];
    let ms: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}
