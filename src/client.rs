//! Client commands that talk to a node's admin HTTP server: `status`, `tail`.

use anyhow::Context as _;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;

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
    /// A node's config file (its admin.listen is used).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl Target {
    pub fn base_url(&self) -> anyhow::Result<String> {
        match &self.config {
            Some(path) => {
                let cfg = crate::config::load(path)?;
                Ok(format!("http://{}", cfg.admin_listen))
            }
            None => Ok(self.node.trim_end_matches('/').to_string()),
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into()
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

fn render_status(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let str_of = |x: &serde_json::Value| match x {
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
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
                    "link {}    {} {} ({} {})  since {}  remote {}  reconnects {}  auth failures {}{}\n",
                    str_of(&l["index"]),
                    str_of(&pair["peer"]),
                    str_of(&l["state"]),
                    str_of(&l["side"]),
                    str_of(&l["address"]),
                    str_of(&l["since"]),
                    str_of(&l["remote"]),
                    str_of(&l["reconnects"]),
                    str_of(&l["auth_failures_total"]),
                    match l["last_error"].as_str() {
                        Some(e) if l["state"] != "up" => format!("  last error: {e}"),
                        _ => String::new(),
                    }
                );
            }
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
    s += &format!("next step {}\n", str_of(&v["next_step"]));
    s
}

pub fn tail(target: &Target, from: u64, follow: bool) -> anyhow::Result<i32> {
    let url = format!(
        "{}/stream?from={from}{}",
        target.base_url()?,
        if follow { "&follow=1" } else { "" }
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .call()
        .with_context(|| format!("cannot reach {url}: is the node running?"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
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
