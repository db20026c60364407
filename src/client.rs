//! Client commands that talk to a node's admin HTTP server: `status`, `tail`, `switchover`,
//! `resync`.
//!
//! Contract: each command reads the node's base URL from `--node` or from a config's
//! `admin.listen` ([`Target`]). A node that cannot be reached is an error naming the URL (exit
//! code 2); a refusal by the node (HTTP 409: not active, no in-sync standby, …) and a command
//! that does not finish in time exit 1 with the reason; success exits 0. `switchover` and
//! `resync` only ask: the node does the work, and the command follows it through
//! `GET /status` (`.ha`) until it is done.

use anyhow::Context as _;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which node a client command talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The node's admin URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7401",
        conflicts_with = "config"
    )]
    pub node: String,
    /// A node's config file (its admin.listen is used, and its [admin] token_file).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node's admin token, for control commands (switchover, resync) and a stream that
    /// needs it. Else: $TWINRX_ADMIN_TOKEN_FILE, else the token_file of --config.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// For an https:// admin URL: the CA certificate (PEM) that issued the node's admin
    /// certificate, or that certificate itself. Else: $TWINRX_ADMIN_CA_FILE, else the
    /// tls_cert_file of --config.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The environment variable naming the admin CA file (after `--ca-file`).
pub const CA_FILE_ENV: &str = "TWINRX_ADMIN_CA_FILE";

/// Certificates an https:// admin URL is checked against (set once per command, by
/// [`Target::base_url`]).
static ADMIN_CA: std::sync::OnceLock<Vec<ureq::tls::Certificate<'static>>> =
    std::sync::OnceLock::new();

fn load_ca(file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read(file)
        .with_context(|| format!("cannot read the CA file {}", file.display()))?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&text)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not PEM", file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in it", file.display());
    }
    let _ = ADMIN_CA.set(certs);
    Ok(())
}

/// The environment variable naming a token file (after `--token-file`, before `--config`).
pub const TOKEN_FILE_ENV: &str = "TWINRX_ADMIN_TOKEN_FILE";

impl Target {
    pub fn base_url(&self) -> anyhow::Result<String> {
        let ca = self
            .ca_file
            .clone()
            .or_else(|| std::env::var_os(CA_FILE_ENV).map(PathBuf::from));
        let url = match &self.config {
            Some(path) => {
                let cfg = crate::config::load(path)?;
                match &cfg.admin_tls {
                    Some((cert, _)) => {
                        load_ca(ca.as_deref().unwrap_or(cert))?;
                        format!("https://{}", cfg.admin_listen)
                    }
                    None => format!("http://{}", cfg.admin_listen),
                }
            }
            None => self.node.trim_end_matches('/').to_string(),
        };
        if url.starts_with("https://") && ADMIN_CA.get().is_none() {
            match ca {
                Some(f) => load_ca(&f)?,
                None => anyhow::bail!(
                    "{url}: an https admin URL needs the certificate to trust: --ca-file FILE, \
                     {CA_FILE_ENV}=FILE, or --config with the node's config"
                ),
            }
        }
        Ok(url)
    }

    /// The admin token: from `--token-file`, `$TWINRX_ADMIN_TOKEN_FILE`, or the config's
    /// `[admin] token_file`; `None` when none of them is given.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let from_file = |key: &str, f: &std::path::Path| {
            crate::secret::read_line(key, f).map_err(|e| anyhow::anyhow!(e))
        };
        if let Some(f) = &self.token_file {
            return from_file("--token-file", f).map(Some);
        }
        if let Some(f) = std::env::var_os(TOKEN_FILE_ENV) {
            return from_file(TOKEN_FILE_ENV, std::path::Path::new(&f)).map(Some);
        }
        match &self.config {
            Some(path) => Ok(crate::config::load(path)?.admin_token),
            None => Ok(None),
        }
    }
}

/// What to say on a 401/403 from a control endpoint.
fn auth_hint(code: u16, url: &str, body: &serde_json::Value, had_token: bool) -> anyhow::Error {
    let why = error_text(body);
    if code == 401 && had_token {
        anyhow::anyhow!("{url}: HTTP 401: the node refused the token given ({why})")
    } else if code == 401 {
        anyhow::anyhow!(
            "{url}: HTTP 401: the node needs its admin token: pass --token-file FILE, set \
             {TOKEN_FILE_ENV}=FILE, or use --config with the node's config ({why})"
        )
    } else {
        anyhow::anyhow!("{url}: HTTP {code}: {why}")
    }
}

fn agent() -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(3)))
        .http_status_as_error(false);
    if let Some(certs) = ADMIN_CA.get() {
        b = b.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(certs))
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    tokio_rustls::rustls::crypto::ring::default_provider(),
                ))
                .build(),
        );
    }
    b.build().into()
}

pub fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    let mut resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("cannot reach {url}: is the node running?"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        anyhow::bail!("{url}: HTTP {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{url}: not JSON"))
}

/// `POST url` with an empty body: the HTTP status and the body as JSON (`null` when empty;
/// a body that is not JSON is kept as a string, so that its text can be shown).
fn post_json(url: &str, token: Option<&str>) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut req = agent().post(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req
        .send_empty()
        .with_context(|| format!("cannot reach {url}: is the node running?"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    let v = if body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.trim().to_string()))
    };
    Ok((status, v))
}

/// The error a node gave (`{"error": "..."}`), or its whole answer.
fn error_text(body: &serde_json::Value) -> String {
    match &body["error"] {
        serde_json::Value::String(e) => e.clone(),
        _ => str_of(body),
    }
}

/// A JSON value for humans: strings bare, null as "-".
fn str_of(x: &serde_json::Value) -> String {
    match x {
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The name of the node's peer: `ha.peer` when the node says it, else the other of a/b.
fn peer_name(v: &serde_json::Value) -> String {
    if let Some(p) = v["ha"]["peer"].as_str() {
        return p.to_string();
    }
    match v["node"].as_str() {
        Some("a") => "b".into(),
        Some("b") => "a".into(),
        _ => "the peer".into(),
    }
}

/// `twinrx switchover`: asks the active node to hand its role to the standby (planned: no
/// loss, no gap), then follows `GET /status` until this node is no longer active and its peer
/// is.
pub fn switchover(target: &Target, timeout_secs: u64) -> anyhow::Result<i32> {
    let base = target.base_url()?;
    let url = format!("{base}/switchover");
    let token = target.token()?;
    let started = Instant::now();
    let (code, body) = post_json(&url, token.as_deref())?;
    match code {
        401 | 403 => return Err(auth_hint(code, &url, &body, token.is_some())),
        200 => {}
        409 => {
            eprintln!("switchover refused by {base}: {}", error_text(&body));
            return Ok(1);
        }
        404 => anyhow::bail!(
            "{url}: HTTP 404: this node does not offer switchover (is it a twinrx node of a pair, \
             and of this version?)"
        ),
        _ => anyhow::bail!("{url}: HTTP {code}: {}", error_text(&body)),
    }
    let from = body["from"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| "this node".into());
    eprintln!(
        "switchover accepted by node {from} (epoch {}); waiting for the peer to take over",
        str_of(&body["epoch"])
    );
    let status_url = format!("{base}/status");
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut last;
    loop {
        match get_json(&status_url) {
            Ok(v) => {
                let ha = &v["ha"];
                let role = ha["role"].as_str().unwrap_or("-");
                let peer_role = ha["peer_role"].as_str().unwrap_or("-");
                if !matches!(role, "active" | "solo" | "-") && peer_role == "active" {
                    println!(
                        "switchover done in {} ms: node {from} is now {role}, node {} is active, \
                         epoch {}",
                        started.elapsed().as_millis(),
                        peer_name(&v),
                        str_of(&ha["epoch"])
                    );
                    return Ok(0);
                }
                last = format!("role {role}, peer {peer_role}");
            }
            // The node may be busy handing over; keep asking until the deadline.
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            eprintln!(
                "switchover not finished after {timeout_secs}s (last seen: {last}); \
                 see `twinrx status --node {base}`"
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One line about a resync, from `.ha.resync` (fields may be missing): its state and error
/// only. Where it stands is [`Progress`], read from the positions the node reports (the
/// `phase`, `done` and `total` it also sends are not shown: they counted against a target of 0
/// before the peer was heard, #25).
fn resync_line(r: &serde_json::Value) -> String {
    let mut s = format!("resync {}", r["state"].as_str().unwrap_or("-"));
    match (r["done_bytes"].as_u64(), r["total_bytes"].as_u64()) {
        (Some(d), Some(t)) if t > 0 => {
            s += &format!(
                ", {} of {} ({}%)",
                bytes(d),
                bytes(t),
                d.min(t).saturating_mul(100) / t
            )
        }
        (Some(d), _) => s += &format!(", {} done", bytes(d)),
        _ => {}
    }
    if let Some(e) = r["error"].as_str().filter(|e| !e.is_empty()) {
        s += &format!(": {e}");
    }
    s
}

/// Where a pair's catch-up stands, from one status document of either node: how much of the
/// merged stream the following node holds against the active's end, how far the peer holds
/// this node's journal, and whether this node copies the peer's journal. A position the node
/// has not heard yet is `None` and shown as "not known yet", never as 0 (#25).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Progress {
    /// This node's name and role, and its peer's.
    me: String,
    role: String,
    peer: String,
    peer_role: Option<String>,
    /// True when this node is the active (then the peer is the one catching up).
    leads: bool,
    /// Merged-stream entries the catching-up node holds (`None`: the peer's position is not
    /// known yet).
    held: Option<u64>,
    /// The active's stream end (`None`: not known yet).
    target: Option<u64>,
    /// This node's journal: its last seq, and how far the peer's copy of it is durable
    /// (`None`: the peer has not acknowledged anything since this node started).
    journal_last: Option<u64>,
    peer_holds: Option<u64>,
    /// This node's copy of the peer's journal follows it.
    copying: Option<bool>,
}

impl Progress {
    fn of(v: &serde_json::Value) -> Progress {
        let ha = &v["ha"];
        let role = ha["role"].as_str().unwrap_or("-").to_string();
        let peer_role = ha["peer_role"]
            .as_str()
            .filter(|_| ha["peer_reachable"].as_bool() == Some(true))
            .map(str::to_string);
        let is_active = |r: &str| matches!(r, "active" | "solo");
        let leads = is_active(&role);
        let own_end = ha["stream_end"].as_u64();
        // The peer's stream end is what its last heartbeat said: meaningful only once it has
        // been heard since this node started (peer_role is null until then).
        let peer_end = peer_role.as_ref().and(ha["peer_stream_end"].as_u64());
        let (held, target) = if leads {
            (peer_end, own_end)
        } else {
            let target = match (&peer_role, peer_end) {
                (Some(r), Some(e)) if is_active(r) => Some(e),
                _ => None,
            };
            (own_end, target)
        };
        let sh = &v["pair"]["shipping"];
        let journal_last = sh["journal_last_seq"].as_u64();
        // The peer's acknowledgements are counted from this node's start: 0 means none yet.
        let peer_holds = sh["peer_acked_seq"].as_u64().filter(|&n| n > 0);
        Progress {
            me: str_of(&v["node"]),
            role,
            peer: peer_name(v),
            peer_role,
            leads,
            held,
            target,
            journal_last,
            peer_holds,
            copying: v["pair"]["copy"]["copying"].as_bool(),
        }
    }

    /// The node that catches up and the node it follows.
    fn follower_leader(&self) -> (&str, &str) {
        if self.leads {
            (&self.peer, &self.me)
        } else {
            (&self.me, &self.peer)
        }
    }

    /// One line: what is held of what, and what is left.
    fn line(&self) -> String {
        let (follower, leader) = self.follower_leader();
        let mut s = format!("node {follower} ");
        s += &match (self.held, self.target) {
            (Some(h), Some(t)) => {
                // The active's end comes with its last heartbeat: the follower may already
                // hold more.
                let t = t.max(h);
                format!("holds {h} of {t} merged-stream entries, {} to go", t - h)
            }
            (Some(h), None) => match &self.peer_role {
                Some(r) if !self.leads => format!(
                    "holds {h} merged-stream entries; the target is not known yet (node \
                     {leader} is {r}, not active)"
                ),
                _ => format!(
                    "holds {h} merged-stream entries; the target is not known yet (no recent \
                     heartbeat from node {leader})"
                ),
            },
            (None, Some(t)) => {
                format!("has not reported its merged-stream position yet (node {leader} is at {t})")
            }
            (None, None) => "merged-stream position: not known yet".into(),
        };
        s += &match (self.peer_holds, self.journal_last) {
            (Some(a), Some(l)) => format!(
                "; node {} holds node {}'s journal up to seq {a} of {l}, {} to go",
                self.peer,
                self.me,
                l.saturating_sub(a)
            ),
            (None, Some(l)) => format!(
                "; node {} has not acknowledged node {}'s journal yet ({l} records)",
                self.peer, self.me
            ),
            _ => String::new(),
        };
        s += &format!(
            "; copy of node {}'s journal {}; role {}",
            self.peer,
            match self.copying {
                Some(true) => "following",
                Some(false) => "not running",
                None => "-",
            },
            self.role
        );
        s
    }
}

/// The end of a resync: the pair is redundant by both roles *and* the catching-up node holds
/// the active's merged stream. `leader_before` is the active's stream end as this node said at
/// an earlier poll: a standby's position reaches the active with its heartbeat, so an active
/// compares it with where it was itself before, not now. Returns the final line.
fn caught_up(
    v: &serde_json::Value,
    p: &Progress,
    leader_before: Option<u64>,
    elapsed: Duration,
) -> Option<String> {
    let ha = &v["ha"];
    if ha["redundant"].as_bool() != Some(true) || p.copying != Some(true) {
        return None;
    }
    let (held, target) = (p.held?, p.target?);
    let reference = if p.leads { leader_before? } else { target };
    if held < reference {
        return None;
    }
    let (follower, leader) = p.follower_leader();
    // A standby holds only what the active sent it: the active is at least as far.
    let target = target.max(held);
    Some(format!(
        "pair redundant: node {leader} active at {target} merged-stream entries, node \
         {follower} standby holding {held}; epoch {} ({:.1} s)",
        str_of(&ha["epoch"]),
        elapsed.as_secs_f64()
    ))
}

/// The `disk` block: per area of the data dir its size, its limit (default share or
/// configured) and the hours of history the limit holds at the current rate.
fn render_disk(d: &serde_json::Value) -> String {
    let Some(areas) = d["areas"].as_object() else {
        return String::new();
    };
    // Filesystems are GiB to TiB: GiB from 1 GiB on (`bytes` stays in MiB).
    let b = |x: &serde_json::Value| match x.as_u64() {
        Some(n) if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        Some(n) => bytes(n),
        None => "-".into(),
    };
    let mut s = format!(
        "disk      data dir {} of {} limits ({} % of the {} filesystem at most)  free {}\n",
        b(&d["bytes"]),
        b(&d["bytes_max"]),
        str_of(&d["budget_pct"]),
        b(&d["fs_bytes"]),
        b(&d["free_bytes"]),
    );
    for (name, label) in [
        ("journal", "journal"),
        ("peer", "peer copy"),
        ("stream", "stream"),
        ("history", "history"),
    ] {
        let Some(a) = areas.get(name) else {
            continue;
        };
        if a["bytes_max"].is_null() {
            s += &format!("  {label:<9} {}\n", b(&a["bytes"]));
            continue;
        }
        let limit = match (a["limit"].as_str(), a["share_pct"].as_u64()) {
            (Some("default"), Some(p)) => format!("default, {p} %"),
            (Some(l), _) => l.to_string(),
            _ => "-".into(),
        };
        let history = match (a["hours"].as_f64(), a["entries_per_s"].as_f64()) {
            (Some(h), Some(r)) => {
                let held = if h < 1.0 / 60.0 {
                    format!("{:.0} s", h * 3600.0)
                } else if h < 1.0 {
                    format!("{:.0} min", h * 60.0)
                } else {
                    format!("{h:.1} h")
                };
                format!("{held} of history at {r:.0} entries/s")
            }
            _ => "history unknown (idle)".into(),
        };
        s += &format!(
            "  {label:<9} {} of {} ({limit})  {history}\n",
            b(&a["bytes"]),
            b(&a["bytes_max"]),
        );
    }
    s
}

fn bytes(n: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if n < 1 << 20 {
        format!("{n} B")
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

/// `twinrx resync`: asks the node to rebuild what it lacks from its peer (online), then
/// follows `GET /status` until the pair is redundant again, the resync fails, or the timeout.
pub fn resync(target: &Target, timeout_secs: u64) -> anyhow::Result<i32> {
    let base = target.base_url()?;
    let url = format!("{base}/resync");
    let token = target.token()?;
    let started = Instant::now();
    let (code, body) = post_json(&url, token.as_deref())?;
    match code {
        401 | 403 => return Err(auth_hint(code, &url, &body, token.is_some())),
        200 | 202 => {}
        409 => {
            eprintln!("resync refused by {base}: {}", error_text(&body));
            return Ok(1);
        }
        404 => anyhow::bail!(
            "{url}: HTTP 404: this node does not offer resync (is it a twinrx node of a pair, \
             and of this version?)"
        ),
        _ => anyhow::bail!("{url}: HTTP {code}: {}", error_text(&body)),
    }
    println!("resync started on {base}");
    let status_url = format!("{base}/status");
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut shown = String::new();
    // The active's stream ends at the last polls, oldest first (see `caught_up`).
    let mut leader_ends: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    // Since when the pair has looked redundant from this node, at every poll.
    let mut redundant_since: Option<Instant> = None;
    let mut restart_shown = false;
    loop {
        // The node answers 202 once the resync is under way, so a "failed" state read after it
        // is this resync's.
        let line = match get_json(&status_url) {
            Ok(v) => {
                let ha = &v["ha"];
                let p = Progress::of(&v);
                // This node sees the roles first; the peer sees this node's new role with its
                // next heartbeat. "Redundant" once it has held for two heartbeats.
                let hold =
                    Duration::from_millis(2 * ha["heartbeat_interval_ms"].as_u64().unwrap_or(200));
                match caught_up(&v, &p, leader_ends.front().copied(), started.elapsed()) {
                    Some(done) if redundant_since.is_some_and(|t| t.elapsed() >= hold) => {
                        println!("{done}");
                        return Ok(0);
                    }
                    Some(_) => {
                        redundant_since.get_or_insert_with(Instant::now);
                    }
                    None => redundant_since = None,
                }
                if leader_ends.len() == 2 {
                    leader_ends.pop_front();
                }
                match p.target.filter(|_| p.leads) {
                    Some(t) => leader_ends.push_back(t),
                    None => leader_ends.clear(),
                }
                if let Some(line) = copy_restarted_line(ha).filter(|_| !restart_shown) {
                    println!("{line}");
                    restart_shown = true;
                }
                let r = &ha["resync"];
                if r["state"].as_str() == Some("failed") {
                    eprintln!(
                        "resync failed: {}; see `twinrx status --node {base}` and the node's log",
                        r["error"].as_str().unwrap_or("no reason given")
                    );
                    return Ok(1);
                }
                if ha.is_object() {
                    p.line()
                } else {
                    "waiting for the node to report its HA state".into()
                }
            }
            Err(e) => format!("node not answering: {e:#}"),
        };
        if line != shown {
            println!("{line}");
            shown = line;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "resync not finished after {timeout_secs}s (last: {shown}); it may still be \
                 running: see `twinrx status --node {base}`"
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn status(target: &Target, json: bool) -> anyhow::Result<i32> {
    let url = format!("{}/status", target.base_url()?);
    let v = get_json(&url)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&v));
    }
    Ok(if v["healthy"].as_bool() == Some(true) {
        0
    } else {
        1
    })
}

/// The human form of a status document: the HA block first (when the node is one of a pair),
/// then journal, stream, receivers, sinks, links, problems and the next step. Fields the node
/// does not report are shown as "-".
fn render_status(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let ha = &v["ha"];
    if ha.is_object() {
        s += &render_ha(v);
    }
    s += &format!(
        "node {}  role {}  version {}  up {}s\n",
        str_of(&v["node"]),
        str_of(&v["role"]),
        str_of(&v["version"]),
        str_of(&v["uptime_s"])
    );
    let j = &v["journal"];
    s += &format!(
        "journal   seq {}..{}  fsync {}  disk free {}  {}\n",
        str_of(&j["first_seq"]),
        str_of(&j["last_seq"]),
        str_of(&j["fsync"]),
        j["disk_free_bytes"]
            .as_u64()
            .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "-".into()),
        if j["failing"].as_bool() == Some(true) {
            format!("FAILING: {}", str_of(&j["last_error"]))
        } else {
            "ok".into()
        }
    );
    s += &format!(
        "stream    next offset {}  kept raw {}\n",
        str_of(&v["stream"]["next_offset"]),
        str_of(&v["stream"]["kept_raw"])
    );
    s += &render_disk(&v["disk"]);
    let r = &v["receivers"]["syslog"];
    s += &format!(
        "syslog    accepted udp {} tcp {} tls {}  discarded {}\n",
        str_of(&r["accepted"]["udp"]),
        str_of(&r["accepted"]["tcp"]),
        str_of(&r["accepted"]["tls"]),
        r["discarded"]
            .as_object()
            .map(|m| m
                .iter()
                .filter(|(_, n)| n.as_u64() != Some(0))
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" "))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "none".into())
    );
    let snmp = &v["receivers"]["snmp"];
    if !snmp.is_null() {
        let sum = |o: &serde_json::Value| -> u64 {
            o.as_object()
                .map(|m| m.values().filter_map(|x| x.as_u64()).sum())
                .unwrap_or(0)
        };
        s += &format!(
            "snmp      accepted {}  refused or kept raw {}  informs answered {}  engine {}\n",
            sum(&snmp["accepted"]),
            sum(&snmp["discarded"]),
            str_of(&snmp["informs_answered"]),
            str_of(&snmp["engine_id"])
        );
    }
    if let Some(sinks) = v["sinks"].as_array() {
        for k in sinks {
            s += &format!(
                "sink      {} ({})  {}  delivered up to {}  lag {}{}\n",
                str_of(&k["name"]),
                str_of(&k["type"]),
                str_of(&k["state"]),
                str_of(&k["delivered_offset"]),
                str_of(&k["lag_entries"]),
                match k["last_error"].as_str() {
                    Some(e) if !e.is_empty() => format!("  last error: {e}"),
                    _ => String::new(),
                }
            );
        }
    }
    let pair = &v["pair"];
    if !pair.is_null() {
        if let Some(links) = pair["links"].as_array() {
            for l in links {
                s += &format!(
                    "link {}    {} {} ({} {})  since {}  remote {}  reconnects {}  auth failures {}{}{}\n",
                    str_of(&l["index"]),
                    str_of(&pair["peer"]),
                    str_of(&l["state"]),
                    str_of(&l["side"]),
                    str_of(&l["address"]),
                    str_of(&l["since"]),
                    str_of(&l["remote"]),
                    str_of(&l["reconnects"]),
                    str_of(&l["auth_failures_total"]),
                    match l["clock_offset_ms"].as_f64() {
                        Some(ms) => format!("  clock offset {ms:+.1} ms"),
                        None => String::new(),
                    },
                    match l["last_error"].as_str() {
                        Some(e) if l["state"] != "up" => format!("  last error: {e}"),
                        _ => String::new(),
                    }
                );
            }
        }
        if let Some(fp) = pair["tls"]["cert_sha256"].as_str() {
            let short = |f: &str| f.get(..16).unwrap_or(f).to_string();
            let peers: Vec<String> = pair["links"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .filter_map(|l| l["peer_cert_sha256"].as_str().map(short))
                        .collect()
                })
                .unwrap_or_default();
            s += &format!(
                "tls       certificate sha256 {}…  peer's {}{}\n",
                short(fp),
                if peers.is_empty() {
                    "-".to_string()
                } else {
                    peers.join(", ") + "…"
                },
                match pair["tls"]["reload_error"].as_str() {
                    Some(e) => format!("  reload failed: {e}"),
                    None => String::new(),
                }
            );
        }
        let sh = &pair["shipping"];
        let c = &pair["copy"];
        s += &format!(
            "replic    journal to {}: last {} acked {} lag {} records  copy of {}: durable {}{}\n",
            str_of(&pair["peer"]),
            str_of(&sh["journal_last_seq"]),
            str_of(&sh["peer_acked_seq"]),
            str_of(&sh["lag_records"]),
            str_of(&pair["peer"]),
            str_of(&c["durable_seq"]),
            if c["stopped"].is_null() {
                String::new()
            } else {
                format!(
                    "  STOPPED ({} at seq {})",
                    str_of(&c["stopped"]["kind"]),
                    str_of(&c["stopped"]["seq"])
                )
            }
        );
    }
    s += &format!(
        "udp       kernel drops (receive buffer full) {}\n",
        str_of(&r["udp_kernel_drops"])
    );
    if let Some(problems) = v["problems"].as_array() {
        for p in problems {
            s += &format!("PROBLEM   {}\n", str_of(p));
        }
    }
    // The HA block already led with its next step; repeat the node's only when it differs.
    if ha["next_step"].is_null() || ha["next_step"] != v["next_step"] {
        s += &format!("next step {}\n", str_of(&v["next_step"]));
    }
    s
}

/// The HA block of `twinrx status`: role, epoch, peer, links, witness, positions, resync,
/// and the next step in plain words.
fn render_ha(v: &serde_json::Value) -> String {
    let ha = &v["ha"];
    let yes_no = |x: &serde_json::Value| match x.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let reach = |x: &serde_json::Value| match x.as_bool() {
        Some(true) => " (reachable)",
        Some(false) => " (UNREACHABLE)",
        None => "",
    };
    let links = ha["links_up"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|u| match u.as_bool() {
                    Some(true) => "up",
                    Some(false) => "down",
                    None => "-",
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "-".into());
    let witness = match &ha["witness"] {
        serde_json::Value::Null => "none".to_string(),
        w => format!("{}{}", str_of(w), reach(&ha["witness_reachable"])),
    };
    let mut s = format!(
        "HA        role {}  epoch {}  publishing {}  peer {}{}  links {}  witness {}\n",
        str_of(&ha["role"]),
        str_of(&ha["epoch"]),
        yes_no(&ha["publishing"]),
        str_of(&ha["peer_role"]),
        reach(&ha["peer_reachable"]),
        links,
        witness
    );
    s += &format!(
        "          commit end {}  stream end {}  redundant {}  healthy {}\n",
        str_of(&ha["commit_end"]),
        str_of(&ha["stream_end"]),
        yes_no(&ha["redundant"]),
        yes_no(&ha["healthy"])
    );
    if ha["resync"].is_object() {
        s += &format!("          {}\n", resync_line(&ha["resync"]));
        if ha["resync"]["state"].as_str() == Some("running") {
            s += &format!("          {}\n", Progress::of(v).line());
        }
    }
    if let Some(line) = copy_restarted_line(ha) {
        s += &format!("          {line}\n");
    }
    if let Some(next) = ha["next_step"].as_str() {
        s += &format!("\nNext step: {next}\n");
    }
    s + "\n"
}

/// Where this node's copy of the merged stream restarted, if the active's retention had
/// deleted entries it lacked (issue #14), from `.ha.stream_copy_restarted`.
fn copy_restarted_line(ha: &serde_json::Value) -> Option<String> {
    let r = &ha["stream_copy_restarted"];
    let offset = r["offset"].as_u64()?;
    Some(format!(
        "stream copy restarted at offset {offset} ({}): node {} had deleted the entries this \
         node lacked (stream retention); this node's stream starts there",
        str_of(&r["at"]),
        str_of(&ha["peer"])
    ))
}

/// Where `twinrx tail` starts: an offset, or `earliest` (the oldest entry stream retention
/// has kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailFrom {
    Earliest,
    Offset(u64),
}

impl std::str::FromStr for TailFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<TailFrom, String> {
        match s {
            "earliest" => Ok(TailFrom::Earliest),
            _ => s
                .parse::<u64>()
                .map(TailFrom::Offset)
                .map_err(|_| format!("{s:?}: expected an offset (0, 1, ...) or \"earliest\"")),
        }
    }
}

impl std::fmt::Display for TailFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailFrom::Earliest => f.write_str("earliest"),
            TailFrom::Offset(n) => write!(f, "{n}"),
        }
    }
}

pub fn tail(target: &Target, from: TailFrom, follow: bool) -> anyhow::Result<i32> {
    let url = format!(
        "{}/stream?from={from}{}",
        target.base_url()?,
        if follow { "&follow=1" } else { "" }
    );
    let mut req = agent().get(&url);
    if let Some(t) = target.token()? {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req
        .call()
        .with_context(|| format!("cannot reach {url}: is the node running?"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status.as_u16() == 410 {
            // Stream retention deleted the offset asked for.
            let v: serde_json::Value =
                serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            if let Some(first) = v["first_offset"].as_u64() {
                anyhow::bail!(
                    "offset {from} was deleted by stream retention; the stream now starts at \
                     offset {first}: run `twinrx tail --from earliest` (or --from {first})"
                );
            }
        }
        anyhow::bail!("{url}: HTTP {status}: {}", body.trim());
    }
    let reader = std::io::BufReader::new(resp.body_mut().as_reader());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {url}"))?;
        if writeln!(out, "{line}").is_err() {
            return Ok(0); // stdout closed (e.g. `| head`)
        }
        if follow {
            let _ = out.flush();
        }
    }
    out.flush().ok();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tail_from_parses_an_offset_or_earliest() {
        assert_eq!("earliest".parse::<TailFrom>(), Ok(TailFrom::Earliest));
        assert_eq!("42".parse::<TailFrom>(), Ok(TailFrom::Offset(42)));
        assert!("-1".parse::<TailFrom>().is_err());
        assert!("first".parse::<TailFrom>().is_err());
        assert_eq!(TailFrom::Earliest.to_string(), "earliest");
        assert_eq!(TailFrom::Offset(7).to_string(), "7");
    }

    #[test]
    fn status_leads_with_the_ha_block_and_its_next_step() {
        let v = json!({
            "node": "a", "role": "active", "next_step": "run `twinrx resync` on node b",
            "ha": {
                "role": "active", "epoch": 7, "publishing": true, "peer_role": "standby",
                "peer_reachable": true, "links_up": [true, false],
                "witness": "127.0.0.13:7402", "witness_reachable": false,
                "commit_end": 120, "stream_end": 118, "redundant": false, "healthy": false,
                "next_step": "run `twinrx resync` on node b",
                "resync": {"state": "running", "phase": "journal", "done_bytes": 3 << 20,
                           "total_bytes": 12 << 20}
            }
        });
        let text = render_status(&v);
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("HA        role active  epoch 7  publishing yes"),
            "{text}"
        );
        assert!(first.contains("peer standby (reachable)"), "{text}");
        assert!(first.contains("links up,down"), "{text}");
        assert!(
            first.contains("witness 127.0.0.13:7402 (UNREACHABLE)"),
            "{text}"
        );
        assert!(text.contains("commit end 120  stream end 118  redundant no  healthy no"));
        assert!(
            text.contains("resync running, 3.0 MiB of 12.0 MiB (25%)"),
            "{text}"
        );
        // No peer heard yet: the target is not known, never 0.
        assert!(
            text.contains(
                "node b has not reported its merged-stream position yet (node a is at 118)"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nNext step: run `twinrx resync` on node b\n"),
            "{text}"
        );
        // Said once, at the top.
        assert_eq!(text.matches("twinrx resync").count(), 1, "{text}");
    }

    #[test]
    fn status_shows_the_links_clock_offset_and_certificates() {
        let v = json!({"pair": {
            "peer": "b",
            "tls": {"cert_sha256": "aa".repeat(32), "reload_error": "b.pem: no PEM certificate"},
            "links": [{"index": 0, "state": "up", "side": "dial", "address": "10.0.0.2:7400",
                       "clock_offset_ms": -3012.4, "peer_cert_sha256": "bb".repeat(32)}],
            "shipping": {}, "copy": {}
        }});
        let text = render_status(&v);
        assert!(text.contains("clock offset -3012.4 ms"), "{text}");
        assert!(
            text.contains("certificate sha256 aaaaaaaaaaaaaaaa…  peer's bbbbbbbbbbbbbbbb…"),
            "{text}"
        );
        assert!(text.contains("reload failed: b.pem"), "{text}");
    }

    #[test]
    fn status_shows_each_area_its_limit_and_hours_of_history() {
        let v = json!({"disk": {
            "bytes": 9 << 20, "bytes_max": 80 << 20, "budget_pct": 80, "fs_bytes": 100 << 20,
            "free_bytes": 90 << 20,
            "areas": {
                "journal": {"bytes": 3 << 20, "bytes_max": 20 << 20, "limit": "default",
                            "share_pct": 20, "entries_per_s": 250.0, "hours": 2.25},
                "peer": {"bytes": 2 << 20, "bytes_max": 20 << 20, "limit": "configured",
                         "share_pct": null, "entries_per_s": 250.0, "hours": 0.5},
                "stream": {"bytes": 4 << 20, "bytes_max": 40 << 20, "limit": "default",
                           "share_pct": 40, "entries_per_s": 0.0, "hours": null},
                "history": {"bytes": 0}
            }
        }});
        let text = render_status(&v);
        assert!(
            text.contains(
                "disk      data dir 9.0 MiB of 80.0 MiB limits (80 % of the 100.0 MiB filesystem at most)  free 90.0 MiB\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  journal   3.0 MiB of 20.0 MiB (default, 20 %)  2.2 h of history at 250 entries/s\n"),
            "{text}"
        );
        assert!(
            text.contains("  peer copy 2.0 MiB of 20.0 MiB (configured)  30 min of history at 250 entries/s\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  stream    4.0 MiB of 40.0 MiB (default, 40 %)  history unknown (idle)\n"
            ),
            "{text}"
        );
        assert!(text.contains("  history   0 B\n"), "{text}");
        let at = |what: &str| text.find(what).unwrap_or(usize::MAX);
        assert!(at("  journal ") < at("  peer copy ") && at("  peer copy ") < at("  stream "));
        assert!(at("  stream ") < at("  history "), "{text}");
        let big = render_status(&json!({"disk": {"fs_bytes": 3u64 << 40, "areas": {}}}));
        assert!(big.contains("the 3072.0 GiB filesystem"), "{big}");
    }

    #[test]
    fn status_without_ha_or_with_missing_fields_still_renders() {
        let single = render_status(&json!({"node": "a", "role": "single", "next_step": "nothing"}));
        assert!(!single.contains("HA "), "{single}");
        assert!(single.ends_with("next step nothing\n"), "{single}");
        let sparse = render_status(&json!({"ha": {"role": "standby", "witness": null}}));
        assert!(
            sparse.starts_with(
                "HA        role standby  epoch -  publishing -  peer -  links -  witness none\n"
            ),
            "{sparse}"
        );
        assert!(!sparse.contains("Next step"), "{sparse}");
    }

    /// A node back from a restart, before its peer's first heartbeat (the "2500 of 0" of #25).
    fn restarted() -> serde_json::Value {
        json!({
            "node": "b",
            "ha": {"role": "syncing", "peer": "a", "peer_role": null, "peer_reachable": true,
                   "stream_end": 2049, "peer_stream_end": 0, "redundant": false},
            "pair": {"shipping": {"journal_last_seq": 2074, "peer_acked_seq": 0},
                     "copy": {"copying": false}}
        })
    }

    #[test]
    fn progress_before_the_peer_is_heard_says_not_known_never_of_0() {
        let v = restarted();
        let line = Progress::of(&v).line();
        assert_eq!(
            line,
            "node b holds 2049 merged-stream entries; the target is not known yet (no recent \
             heartbeat from node a); node a has not acknowledged node b's journal yet (2074 \
             records); copy of node a's journal not running; role syncing"
        );
        assert!(!line.contains(" of 0"), "{line}");
        assert_eq!(caught_up(&v, &Progress::of(&v), None, Duration::ZERO), None);
    }

    #[test]
    fn a_standby_behind_the_active_counts_what_is_left_and_is_not_redundant_yet() {
        let mut v = restarted();
        v["ha"] = json!({"role": "standby", "peer": "a", "peer_role": "active",
                         "peer_reachable": true, "redundant": true, "epoch": 3,
                         "stream_end": 132_252, "peer_stream_end": 137_000});
        v["pair"] = json!({"shipping": {"journal_last_seq": 2074, "peer_acked_seq": 2000},
                           "copy": {"copying": true}});
        let p = Progress::of(&v);
        assert_eq!(
            p.line(),
            "node b holds 132252 of 137000 merged-stream entries, 4748 to go; node a holds node \
             b's journal up to seq 2000 of 2074, 74 to go; copy of node a's journal following; \
             role standby"
        );
        assert_eq!(caught_up(&v, &p, None, Duration::from_secs(3)), None);
        v["ha"]["stream_end"] = json!(137_000);
        let p = Progress::of(&v);
        assert_eq!(
            caught_up(&v, &p, None, Duration::from_millis(1500)).as_deref(),
            Some(
                "pair redundant: node a active at 137000 merged-stream entries, node b standby \
                 holding 137000; epoch 3 (1.5 s)"
            )
        );
    }

    #[test]
    fn on_the_active_the_standby_must_reach_where_the_active_was_before() {
        let v = json!({
            "node": "a",
            "ha": {"role": "active", "peer": "b", "peer_role": "standby", "peer_reachable": true,
                   "redundant": true, "epoch": 2, "stream_end": 1000, "peer_stream_end": 900},
            "pair": {"shipping": {"journal_last_seq": 10, "peer_acked_seq": 10},
                     "copy": {"copying": true}}
        });
        let p = Progress::of(&v);
        assert!(
            p.line()
                .starts_with("node b holds 900 of 1000 merged-stream entries, 100 to go"),
            "{}",
            p.line()
        );
        // Without an earlier sample of the active's end there is nothing to compare with.
        assert_eq!(caught_up(&v, &p, None, Duration::ZERO), None);
        assert_eq!(caught_up(&v, &p, Some(950), Duration::ZERO), None);
        assert!(caught_up(&v, &p, Some(900), Duration::ZERO).is_some());
    }

    #[test]
    fn resync_line_renders_what_is_there() {
        assert_eq!(resync_line(&json!({})), "resync -");
        assert_eq!(
            resync_line(&json!({"state": "failed", "error": "peer unreachable"})),
            "resync failed: peer unreachable"
        );
        assert_eq!(
            resync_line(&json!({"state": "running", "done_bytes": 512})),
            "resync running, 512 B done"
        );
    }
}
