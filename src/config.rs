//! Node configuration: one TOML file, deserialized, then validated into [`NodeConfig`].
//!
//! Every key is documented in `docs/config.md`. Unknown keys are refused (a typo must not
//! silently fall back to a default), and validation reports every problem at once, naming
//! the key (STYLE.md §4).

use anyhow::Context as _;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub node: RawNode,
    #[serde(default)]
    pub journal: RawJournal,
    #[serde(default)]
    pub syslog: RawSyslog,
    #[serde(default)]
    pub snmp: RawSnmp,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub stream: RawStream,
    /// `[[sink]]` tables: forwarders of the merged stream (`crate::sink::config`).
    #[serde(default)]
    pub sink: Vec<crate::sink::config::RawSink>,
    /// `[pair]`: the link to the peer node (`crate::pair::config`); absent = single node.
    #[serde(default)]
    pub pair: Option<crate::pair::config::RawPair>,
    /// `[ha]`: witness, policy and timings of the pair (`crate::pair::ha_config`).
    #[serde(default)]
    pub ha: Option<crate::pair::ha_config::RawHa>,
    /// `[merger]`: the pair's de-duplication horizon (`crate::pair::ha_config::RawMerger`).
    #[serde(default)]
    pub merger: Option<crate::pair::ha_config::RawMerger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    #[serde(default = "default_node_name")]
    pub name: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

impl Default for RawNode {
    fn default() -> Self {
        RawNode {
            name: default_node_name(),
            data_dir: default_data_dir(),
        }
    }
}

fn default_node_name() -> String {
    "a".into()
}
fn default_data_dir() -> PathBuf {
    "/var/lib/twinrx".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Unset: 64 MiB, or less on a small filesystem (`crate::disk`).
    #[serde(default)]
    pub segment_bytes_max: Option<u64>,
    #[serde(default)]
    pub retention_bytes_max: Option<u64>,
    #[serde(default)]
    pub retention_age_max_s: Option<u64>,
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes_max: usize,
    /// Sealed segments: `"zstd"` (default), `"zstd:<level>"` or `"none"`.
    #[serde(default = "default_compression")]
    pub compression: String,
}

impl Default for RawJournal {
    fn default() -> Self {
        RawJournal {
            fsync: default_fsync(),
            segment_bytes_max: None,
            retention_bytes_max: None,
            retention_age_max_s: None,
            queue_bytes_max: default_queue_bytes(),
            compression: default_compression(),
        }
    }
}

fn default_compression() -> String {
    "zstd".into()
}

fn default_fsync() -> String {
    "batch".into()
}
fn default_queue_bytes() -> usize {
    64 * 1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyslog {
    #[serde(default = "default_syslog_udp")]
    pub udp: Vec<String>,
    #[serde(default = "default_syslog_tcp")]
    pub tcp: Vec<String>,
    #[serde(default)]
    pub tls: Vec<String>,
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_client_ca_file: Option<PathBuf>,
    #[serde(default = "default_client_cert")]
    pub tls_client_cert: String,
    #[serde(default = "default_message_bytes")]
    pub message_bytes_max: usize,
    #[serde(default = "default_rcvbuf")]
    pub udp_rcvbuf_bytes: usize,
    #[serde(default)]
    pub rate_per_source_per_s: u64,
    #[serde(default)]
    pub rate_burst: Option<u64>,
    #[serde(default = "default_connections")]
    pub connections_max: usize,
    #[serde(default = "default_connections_per_source")]
    pub connections_per_source_max: usize,
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    #[serde(default = "default_tls_handshake_timeout_s")]
    pub tls_handshake_timeout_s: u64,
}

fn default_connections_per_source() -> usize {
    64
}
fn default_idle_timeout_s() -> u64 {
    3600
}
fn default_keepalive_s() -> u64 {
    60
}
fn default_tls_handshake_timeout_s() -> u64 {
    10
}

impl Default for RawSyslog {
    fn default() -> Self {
        RawSyslog {
            udp: default_syslog_udp(),
            tcp: default_syslog_tcp(),
            tls: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_client_cert: default_client_cert(),
            message_bytes_max: default_message_bytes(),
            udp_rcvbuf_bytes: default_rcvbuf(),
            rate_per_source_per_s: 0,
            rate_burst: None,
            connections_max: default_connections(),
            connections_per_source_max: default_connections_per_source(),
            idle_timeout_s: default_idle_timeout_s(),
            keepalive_s: default_keepalive_s(),
            tls_handshake_timeout_s: default_tls_handshake_timeout_s(),
        }
    }
}

fn default_syslog_udp() -> Vec<String> {
    vec!["0.0.0.0:514".into()]
}
fn default_syslog_tcp() -> Vec<String> {
    vec!["0.0.0.0:514".into()]
}
fn default_client_cert() -> String {
    "none".into()
}
fn default_message_bytes() -> usize {
    64 * 1024
}
fn default_rcvbuf() -> usize {
    8 * 1024 * 1024
}
fn default_connections() -> usize {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnmp {
    #[serde(default = "default_snmp_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub communities: Option<Vec<String>>,
    #[serde(default)]
    pub engine_id: Option<String>,
    #[serde(default = "default_message_bytes")]
    pub message_bytes_max: usize,
    #[serde(default = "default_inform_window")]
    pub inform_dedup_window_ms: u64,
    #[serde(default)]
    pub users: Vec<RawUser>,
    /// Datagrams per second per source address (0: no limit); beyond it they are dropped
    /// and counted (`rate_limited`).
    #[serde(default)]
    pub rate_per_source_per_s: u64,
    #[serde(default)]
    pub rate_burst: Option<u64>,
}

impl Default for RawSnmp {
    fn default() -> Self {
        RawSnmp {
            listen: default_snmp_listen(),
            communities: None,
            engine_id: None,
            message_bytes_max: default_message_bytes(),
            inform_dedup_window_ms: default_inform_window(),
            users: Vec::new(),
            rate_per_source_per_s: 0,
            rate_burst: None,
        }
    }
}

fn default_inform_window() -> u64 {
    5_000
}

/// An SNMPv3 USM user. Each secret comes from exactly one of: the TOML (`*_passphrase`), a
/// file (`*_passphrase_file`, first line), an environment variable (`*_passphrase_env`), or a
/// key already localised to one engine (`*_key` hex with `*_key_engine_id` hex).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    #[serde(default)]
    pub auth_protocol: Option<receiver::snmp::AuthProtocol>,
    #[serde(default)]
    pub auth_passphrase: Option<String>,
    #[serde(default)]
    pub auth_passphrase_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_passphrase_env: Option<String>,
    #[serde(default)]
    pub auth_key: Option<String>,
    #[serde(default)]
    pub auth_key_engine_id: Option<String>,
    #[serde(default)]
    pub priv_protocol: Option<receiver::snmp::PrivProtocol>,
    #[serde(default)]
    pub priv_passphrase: Option<String>,
    #[serde(default)]
    pub priv_passphrase_file: Option<PathBuf>,
    #[serde(default)]
    pub priv_passphrase_env: Option<String>,
    #[serde(default)]
    pub priv_key: Option<String>,
    #[serde(default)]
    pub priv_key_engine_id: Option<String>,
}

/// Validated SNMP settings: the core's config with secrets resolved.
#[derive(Debug, Clone)]
pub struct SnmpSettings {
    pub listen: Vec<SocketAddr>,
    pub engine_id: Option<Vec<u8>>,
    pub core: receiver::snmp::SnmpConfig,
    /// Per-source rate limit (0 per second: none).
    pub rate: receiver::limit::RateLimit,
}

/// Resolves one secret of `users[i]` (`what` = "auth" or "priv").
#[allow(clippy::too_many_arguments)]
fn secret(
    i: usize,
    what: &str,
    passphrase: &Option<String>,
    file: &Option<PathBuf>,
    env: &Option<String>,
    key: &Option<String>,
    key_engine: &Option<String>,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<receiver::snmp::Secret> {
    use receiver::snmp::Secret;
    let k = |s: &str| format!("snmp.users[{i}].{what}_{s}");
    let given = [
        passphrase.is_some(),
        file.is_some(),
        env.is_some(),
        key.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        problems.push(format!(
            "snmp.users[{i}]: give only one of {0}_passphrase, {0}_passphrase_file, {0}_passphrase_env, {0}_key",
            what
        ));
        return None;
    }
    if let Some(p) = passphrase {
        return Some(Secret::Passphrase(p.clone()));
    }
    if let Some(f) = file {
        let path = resolve(f);
        return match crate::secret::read_line(&k("passphrase_file"), &path) {
            Ok(t) => Some(Secret::Passphrase(t)),
            Err(e) => {
                problems.push(e);
                None
            }
        };
    }
    if let Some(v) = env {
        return match std::env::var(v) {
            Ok(t) => Some(Secret::Passphrase(t)),
            Err(_) => {
                problems.push(format!(
                    "{} = {v:?}: the variable is not set",
                    k("passphrase_env")
                ));
                None
            }
        };
    }
    if let Some(hexkey) = key {
        let Some(key) = crate::snmp::parse_hex(hexkey) else {
            problems.push(format!("{}: not hex", k("key")));
            return None;
        };
        let Some(engine_id) = key_engine.as_deref().and_then(crate::snmp::parse_hex) else {
            problems.push(format!(
                "{}: a localized key needs {} (hex)",
                k("key"),
                k("key_engine_id")
            ));
            return None;
        };
        return Some(Secret::LocalizedKey { engine_id, key });
    }
    problems.push(format!(
        "snmp.users[{i}]: {what}_protocol is set but no {what} secret ({what}_passphrase, {what}_passphrase_file, {what}_passphrase_env or {what}_key)"
    ));
    None
}

fn default_snmp_listen() -> Vec<String> {
    vec!["0.0.0.0:162".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin")]
    pub listen: String,
    /// The bearer token that control requests (`POST /switchover`, `/resync`, `/fault`) must
    /// carry; without it, control is refused (403).
    pub token_file: Option<PathBuf>,
    /// `/stream` also needs the token.
    #[serde(default)]
    pub stream_token: bool,
    /// HTTPS on the admin listener: the certificate (PEM) and its key (mode 0600).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin(),
            token_file: None,
            stream_token: false,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

fn default_admin() -> String {
    "127.0.0.1:7401".into()
}

/// `[stream]`: the merged stream's journal. Retention keys mean what the `[journal]` ones do;
/// `hold_bytes_max` bounds what a consumer that stays away (a sink whose target is down, the
/// peer's copy of the stream) may keep from deletion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Unset: 64 MiB, or less on a small filesystem (`crate::disk`).
    #[serde(default)]
    pub segment_bytes_max: Option<u64>,
    #[serde(default)]
    pub retention_bytes_max: Option<u64>,
    #[serde(default)]
    pub retention_age_max_s: Option<u64>,
    #[serde(default)]
    pub hold_bytes_max: Option<u64>,
    /// Sealed segments: `"zstd"` (default), `"zstd:<level>"` or `"none"`.
    #[serde(default = "default_compression")]
    pub compression: String,
}

impl Default for RawStream {
    fn default() -> Self {
        RawStream {
            fsync: default_fsync(),
            segment_bytes_max: None,
            retention_bytes_max: None,
            retention_age_max_s: None,
            hold_bytes_max: None,
            compression: default_compression(),
        }
    }
}

/// `[stream] hold_bytes_max` as validated when neither it nor `retention_bytes_max` is set:
/// a placeholder until the node starts, where [`NodeConfig::apply_disk_budget`] makes it the
/// stream's default limit (with `retention_bytes_max` set, the default is that value).
pub const STREAM_HOLD_BYTES_DEFAULT: u64 = 1 << 30;

use crate::disk::SEGMENT_BYTES_MIN;

/// Checks the retention keys of `[section]` (journal or stream) and returns its Retention.
fn retention_of(
    section: &str,
    segment_bytes_max: u64,
    bytes_max: Option<u64>,
    age_max_s: Option<u64>,
    problems: &mut Vec<String>,
) -> journal::Retention {
    if segment_bytes_max < SEGMENT_BYTES_MIN {
        problems.push(format!(
            "{section}.segment_bytes_max = {segment_bytes_max}: must be at least {SEGMENT_BYTES_MIN}"
        ));
    }
    if let Some(b) = bytes_max {
        let two = segment_bytes_max.saturating_mul(2);
        if b < two {
            problems.push(format!(
                "{section}.retention_bytes_max = {b}: must be at least two segments (2 × \
                 {section}.segment_bytes_max = {two}): retention deletes whole segments and \
                 never the one being written"
            ));
        }
    }
    if age_max_s == Some(0) {
        problems.push(format!(
            "{section}.retention_age_max_s = 0: must be at least 1 (leave it out to keep \
             entries regardless of age)"
        ));
    }
    journal::Retention {
        bytes_max,
        age_max_ms: age_max_s.map(|s| s.saturating_mul(1000)),
    }
}

/// TLS client certificate policy of the syslog TLS listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_cert: ClientCert,
}

/// A validated node configuration: every path absolute, every address parsed.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub path: PathBuf,
    pub name: twinrx_types::NodeId,
    pub data_dir: PathBuf,
    pub journal_fsync: journal::FsyncPolicy,
    pub stream_fsync: journal::FsyncPolicy,
    /// `[journal] compression`: the journal's and the peer copy's sealed segments.
    pub journal_compression: journal::Compression,
    /// `[stream] compression`.
    pub stream_compression: journal::Compression,
    pub segment_bytes_max: u64,
    pub retention: journal::Retention,
    /// `[stream] segment_bytes_max`.
    pub stream_segment_bytes_max: u64,
    /// `[stream] retention_bytes_max` / `retention_age_max_s`: applied by the thread that
    /// writes the stream (the stream builder of a single node, a pair's stream writer).
    pub stream_retention: journal::Retention,
    /// `[stream] hold_bytes_max`: the most each consumer of the stream (a sink, the peer's
    /// copy) keeps from retention; past it its oldest undelivered entries are deleted anyway.
    pub stream_hold_bytes_max: u64,
    /// The retention and segment keys as configured (`None`: unset), for the disk budget.
    pub disk_keys: crate::disk::Keys,
    /// The copy of the peer's journal (pair only): the journal's retention keys, or without
    /// `journal.retention_bytes_max` its default share (set by [`NodeConfig::apply_disk_budget`]).
    pub peer_retention: journal::Retention,
    /// The byte limits of the data dir's areas and where each comes from; `None` until
    /// [`NodeConfig::apply_disk_budget`] ran (at start).
    pub disk: Option<crate::disk::Limits>,
    pub queue_bytes_max: usize,
    pub syslog_udp: Vec<SocketAddr>,
    pub syslog_tcp: Vec<SocketAddr>,
    pub syslog_tls: Vec<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub message_bytes_max: usize,
    pub udp_rcvbuf_bytes: usize,
    pub rate: receiver::limit::RateLimit,
    pub connections_max: usize,
    /// `[syslog]` connection limits beyond `connections_max`.
    pub connections_per_source_max: usize,
    pub idle_timeout: Option<std::time::Duration>,
    pub keepalive: Option<std::time::Duration>,
    pub tls_handshake_timeout: std::time::Duration,
    pub snmp: SnmpSettings,
    pub admin_listen: SocketAddr,
    /// `[admin] token_file`'s token: control requests must carry it (`None`: control is off).
    pub admin_token: Option<String>,
    /// `[admin] stream_token`: `/stream` needs the token too.
    pub admin_stream_token: bool,
    /// `[admin] tls_cert_file` and `tls_key_file`: the admin listener speaks HTTPS.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
    pub sinks: Vec<crate::sink::SinkConfig>,
    /// `None`: a single node (no `[pair]` section).
    pub pair: Option<crate::pair::config::PairSettings>,
    /// `[ha]` with its defaults; `Some` exactly when `pair` is.
    pub ha: Option<crate::pair::ha_config::HaSettings>,
}

impl NodeConfig {
    /// Fills the unset `retention_bytes_max` keys (and `hold_bytes_max`, and the segment
    /// sizes on a small filesystem) from the filesystem of `fs_bytes` holding `data_dir`
    /// (docs/config.md "Disk budget"). An error lists every problem, naming the keys to set.
    pub fn apply_disk_budget(&mut self, fs_bytes: u64) -> Result<(), Vec<String>> {
        let limits = crate::disk::limits(fs_bytes, &self.disk_keys)?;
        self.segment_bytes_max = limits.journal_segment_bytes_max;
        self.stream_segment_bytes_max = limits.stream_segment_bytes_max;
        self.retention.bytes_max = Some(limits.journal.bytes_max);
        self.peer_retention = journal::Retention {
            bytes_max: Some(limits.peer.unwrap_or(limits.journal).bytes_max),
            age_max_ms: self.retention.age_max_ms,
        };
        self.stream_retention.bytes_max = Some(limits.stream.bytes_max);
        self.stream_hold_bytes_max = limits.hold_bytes_max;
        self.disk = Some(limits);
        Ok(())
    }
}

/// Largest message size a config may set: records keep lengths in u32 and a UDP datagram
/// carries at most 65,507 bytes anyway; 16 MiB bounds a TCP frame's memory.
const MESSAGE_BYTES_LIMIT: usize = 16 * 1024 * 1024;

pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
    load_toml(path, "config", validate)
}

/// Reads a TOML config file, deserializes it (unknown keys refused by the raw types) and
/// validates it; a refusal lists every problem, each naming its key (STYLE.md §4). Shared by
/// the node's and the witness's configs.
pub fn load_toml<R, T>(
    path: &Path,
    what: &str,
    validate: impl FnOnce(&Path, R) -> Result<T, Vec<String>>,
) -> anyhow::Result<T>
where
    R: serde::de::DeserializeOwned,
{
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let raw: R = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    validate(path, raw).map_err(|problems| {
        let mut msg = format!(
            "{}: {} problem{}",
            path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in problems {
            msg.push_str("\n  ");
            msg.push_str(&p);
        }
        anyhow::anyhow!(msg)
    })
}

pub fn validate(path: &Path, raw: RawConfig) -> Result<NodeConfig, Vec<String>> {
    let mut problems = Vec::new();
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let resolve = |p: &Path| -> PathBuf {
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        std::path::absolute(&joined).unwrap_or(joined)
    };

    let name = match twinrx_types::NodeId::from_name(&raw.node.name) {
        Some(n) => n,
        None => {
            problems.push(format!(
                "node.name = {:?}: must be \"a\" or \"b\" (the two nodes of a pair)",
                raw.node.name
            ));
            twinrx_types::NodeId::A
        }
    };
    let mut fsync_of = |key: &str, v: &str| match v.parse::<journal::FsyncPolicy>() {
        Ok(p) => p,
        Err(_) => {
            problems.push(format!(
                "{key} = {v:?}: must be \"batch\", \"interval:<ms>\" or \"never\""
            ));
            journal::FsyncPolicy::Batch
        }
    };
    let journal_fsync = fsync_of("journal.fsync", &raw.journal.fsync);
    let stream_fsync = fsync_of("stream.fsync", &raw.stream.fsync);
    let mut compression_of = |key: &str, v: &str| match v.parse::<journal::Compression>() {
        Ok(c) => c,
        Err(_) => {
            problems.push(format!(
                "{key} = {v:?}: must be \"zstd\", \"zstd:<level 1-19>\" or \"none\""
            ));
            journal::Compression::None
        }
    };
    let journal_compression = compression_of("journal.compression", &raw.journal.compression);
    let stream_compression = compression_of("stream.compression", &raw.stream.compression);
    let journal_segment = raw
        .journal
        .segment_bytes_max
        .unwrap_or(crate::disk::SEGMENT_BYTES_DEFAULT);
    let stream_segment = raw
        .stream
        .segment_bytes_max
        .unwrap_or(crate::disk::SEGMENT_BYTES_DEFAULT);
    let retention = retention_of(
        "journal",
        journal_segment,
        raw.journal.retention_bytes_max,
        raw.journal.retention_age_max_s,
        &mut problems,
    );
    let st = &raw.stream;
    let stream_retention = retention_of(
        "stream",
        stream_segment,
        st.retention_bytes_max,
        st.retention_age_max_s,
        &mut problems,
    );
    let stream_hold_bytes_max = match (st.hold_bytes_max, st.retention_bytes_max) {
        (Some(h), _) => {
            let two = stream_segment.saturating_mul(2);
            if h < two {
                problems.push(format!(
                    "stream.hold_bytes_max = {h}: must be at least two segments (2 × \
                     stream.segment_bytes_max = {two}), or a consumer that is only a little \
                     behind could lose entries"
                ));
            }
            if let Some(r) = st.retention_bytes_max.filter(|r| h > *r) {
                problems.push(format!(
                    "stream.hold_bytes_max = {h}: must not be above stream.retention_bytes_max \
                     ({r}), or a consumer that is away could keep the stream above its limit"
                ));
            }
            h
        }
        (None, Some(r)) => r,
        // Replaced at start by the stream's default limit (`apply_disk_budget`).
        (None, None) => STREAM_HOLD_BYTES_DEFAULT.max(stream_segment.saturating_mul(2)),
    };
    if !(1 << 20..=1 << 30).contains(&raw.journal.queue_bytes_max) {
        problems.push(format!(
            "journal.queue_bytes_max = {}: must be between 1048576 (1 MiB) and 1073741824 (1 GiB)",
            raw.journal.queue_bytes_max
        ));
    }
    let mut seen: Vec<(SocketAddr, &'static str, String)> = Vec::new();
    let mut addrs = |key: &'static str, list: &[String], udp: bool, problems: &mut Vec<String>| {
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let k = format!("{key}[{i}]");
            match a.parse::<SocketAddr>() {
                Ok(sa) => {
                    let proto = if udp { "udp" } else { "tcp" };
                    if let Some((_, _, other)) =
                        seen.iter().find(|(s, p, _)| *s == sa && *p == proto)
                    {
                        problems.push(format!("{k} = {a:?}: already used by {other}"));
                    } else {
                        seen.push((sa, proto, k.clone()));
                    }
                    out.push(sa)
                }
                Err(_) => problems.push(format!(
                    "{k} = {a:?}: not an address:port (e.g. \"0.0.0.0:514\" or \"[::]:514\")"
                )),
            }
        }
        out
    };
    let syslog_udp = addrs("syslog.udp", &raw.syslog.udp, true, &mut problems);
    let syslog_tcp = addrs("syslog.tcp", &raw.syslog.tcp, false, &mut problems);
    let syslog_tls = addrs("syslog.tls", &raw.syslog.tls, false, &mut problems);
    let snmp_listen = addrs("snmp.listen", &raw.snmp.listen, true, &mut problems);
    let admin_listen = addrs(
        "admin.listen",
        std::slice::from_ref(&raw.admin.listen),
        false,
        &mut problems,
    )
    .into_iter()
    .next()
    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7401)));
    let admin_token = match &raw.admin.token_file {
        Some(f) => match crate::secret::read_line("admin.token_file", &resolve(f)) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        None => None,
    };
    if raw.admin.stream_token && raw.admin.token_file.is_none() {
        problems.push("admin.stream_token = true: needs admin.token_file".into());
    }
    let admin_tls = match (&raw.admin.tls_cert_file, &raw.admin.tls_key_file) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let (c, k) = (resolve(c), resolve(k));
            if let Err(e) = crate::secret::check_private("admin.tls_key_file", &k) {
                problems.push(e);
            } else if let Err(e) = receiver::listen::tls_acceptor(&c, &k, None, false) {
                problems.push(format!("admin.tls_cert_file / tls_key_file: {e}"));
            }
            Some((c, k))
        }
        _ => {
            problems.push(
                "admin: tls_cert_file and tls_key_file go together (HTTPS on admin.listen)".into(),
            );
            None
        }
    };

    let client_cert = match raw.syslog.tls_client_cert.as_str() {
        "none" => ClientCert::None,
        "optional" => ClientCert::Optional,
        "required" => ClientCert::Required,
        other => {
            problems.push(format!(
                "syslog.tls_client_cert = {other:?}: must be \"none\", \"optional\" or \"required\""
            ));
            ClientCert::None
        }
    };
    let tls = if syslog_tls.is_empty() {
        None
    } else {
        match (&raw.syslog.tls_cert_file, &raw.syslog.tls_key_file) {
            (Some(c), Some(k)) => {
                if let Err(e) = crate::secret::check_private("syslog.tls_key_file", &resolve(k)) {
                    problems.push(e);
                }
                if client_cert != ClientCert::None && raw.syslog.tls_client_ca_file.is_none() {
                    problems.push(format!(
                        "syslog.tls_client_cert = {:?}: needs syslog.tls_client_ca_file",
                        raw.syslog.tls_client_cert
                    ));
                }
                Some(TlsFiles {
                    cert: resolve(c),
                    key: resolve(k),
                    client_ca: raw.syslog.tls_client_ca_file.as_deref().map(resolve),
                    client_cert,
                })
            }
            _ => {
                problems.push(
                    "syslog.tls is set: syslog.tls_cert_file and syslog.tls_key_file are required"
                        .into(),
                );
                None
            }
        }
    };
    let m = raw.syslog.message_bytes_max;
    if !(480..=MESSAGE_BYTES_LIMIT).contains(&m) {
        problems.push(format!(
            "syslog.message_bytes_max = {m}: must be between 480 (RFC 3164 minimum) and {MESSAGE_BYTES_LIMIT}"
        ));
    }
    if raw.syslog.connections_max == 0 {
        problems.push("syslog.connections_max = 0: must be at least 1".into());
    }
    if raw.syslog.connections_per_source_max == 0 {
        problems.push("syslog.connections_per_source_max = 0: must be at least 1".into());
    }
    if raw.syslog.tls_handshake_timeout_s == 0 {
        problems.push("syslog.tls_handshake_timeout_s = 0: must be at least 1".into());
    }
    let secs = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
    let mut users = Vec::new();
    for (i, u) in raw.snmp.users.iter().enumerate() {
        let auth = u.auth_protocol.and_then(|p| {
            secret(
                i,
                "auth",
                &u.auth_passphrase,
                &u.auth_passphrase_file,
                &u.auth_passphrase_env,
                &u.auth_key,
                &u.auth_key_engine_id,
                &resolve,
                &mut problems,
            )
            .map(|s| (p, s))
        });
        let privacy = u.priv_protocol.and_then(|p| {
            secret(
                i,
                "priv",
                &u.priv_passphrase,
                &u.priv_passphrase_file,
                &u.priv_passphrase_env,
                &u.priv_key,
                &u.priv_key_engine_id,
                &resolve,
                &mut problems,
            )
            .map(|s| (p, s))
        });
        if u.priv_protocol.is_some() && u.auth_protocol.is_none() {
            problems.push(format!(
                "snmp.users[{i}].priv_protocol: privacy needs authentication (set auth_protocol)"
            ));
        }
        users.push(receiver::snmp::UsmUser {
            name: u.name.clone(),
            auth,
            privacy,
        });
    }
    let engine_id = match raw.snmp.engine_id.as_deref() {
        None => None,
        Some(h) => match crate::snmp::parse_hex(h) {
            Some(id) if (5..=32).contains(&id.len()) => Some(id),
            _ => {
                problems.push(format!(
                    "snmp.engine_id = {h:?}: must be 5 to 32 octets in hex (RFC 3411)"
                ));
                None
            }
        },
    };
    let sm = raw.snmp.message_bytes_max;
    if !(484..=65_535).contains(&sm) && sm != 65_536 {
        problems.push(format!(
            "snmp.message_bytes_max = {sm}: must be between 484 (RFC 3417) and 65536"
        ));
    }
    let snmp = SnmpSettings {
        listen: snmp_listen,
        engine_id,
        core: receiver::snmp::SnmpConfig {
            communities: raw.snmp.communities.clone(),
            users,
            max_message_bytes: sm,
            inform_dedup_window_ms: raw.snmp.inform_dedup_window_ms,
        },
        rate: receiver::limit::RateLimit {
            per_second: raw.snmp.rate_per_source_per_s,
            burst: raw
                .snmp
                .rate_burst
                .unwrap_or(raw.snmp.rate_per_source_per_s.saturating_mul(2)),
        },
    };
    if snmp.rate.per_second > 0 && snmp.rate.burst == 0 {
        problems.push("snmp.rate_burst = 0: must be at least 1 when a rate is set".into());
    }
    let rate = receiver::limit::RateLimit {
        per_second: raw.syslog.rate_per_source_per_s,
        burst: raw
            .syslog
            .rate_burst
            .unwrap_or(raw.syslog.rate_per_source_per_s.saturating_mul(2)),
    };
    if rate.per_second > 0 && rate.burst == 0 {
        problems.push("syslog.rate_burst = 0: must be at least 1 when a rate is set".into());
    }
    let sinks = crate::sink::config::validate(&raw.sink, &resolve, &mut problems);
    let pair = crate::pair::config::validate(raw.pair.as_ref(), name, &resolve, &mut problems);
    let ha = match (&raw.pair, &pair) {
        (None, _) => {
            if raw.ha.is_some() {
                problems.push(
                    "ha: an [ha] section needs a [pair] section (a single node has no HA)".into(),
                );
            }
            if raw.merger.is_some() {
                problems.push(
                    "merger: a [merger] section needs a [pair] section (a single node has one \
                     journal and nothing to merge)"
                        .into(),
                );
            }
            None
        }
        (Some(_), p) => {
            let links = p.as_ref().map_or(1, |p| p.links.len());
            let merger = raw.merger.clone().unwrap_or_default();
            crate::pair::ha_config::validate(raw.ha.as_ref(), &merger, name, links, &mut problems)
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(NodeConfig {
        path: resolve(path.file_name().map(Path::new).unwrap_or(path)),
        name,
        data_dir: resolve(&raw.node.data_dir),
        journal_fsync,
        stream_fsync,
        journal_compression,
        stream_compression,
        segment_bytes_max: journal_segment,
        retention,
        stream_segment_bytes_max: stream_segment,
        stream_retention,
        stream_hold_bytes_max,
        disk_keys: crate::disk::Keys {
            journal_bytes_max: raw.journal.retention_bytes_max,
            journal_segment_bytes_max: raw.journal.segment_bytes_max,
            stream_bytes_max: st.retention_bytes_max,
            stream_segment_bytes_max: st.segment_bytes_max,
            hold_bytes_max: st.hold_bytes_max,
            pair: raw.pair.is_some(),
        },
        peer_retention: retention,
        disk: None,
        queue_bytes_max: raw.journal.queue_bytes_max,
        syslog_udp,
        syslog_tcp,
        syslog_tls,
        tls,
        message_bytes_max: m,
        udp_rcvbuf_bytes: raw.syslog.udp_rcvbuf_bytes,
        rate,
        connections_max: raw.syslog.connections_max,
        connections_per_source_max: raw.syslog.connections_per_source_max,
        idle_timeout: secs(raw.syslog.idle_timeout_s),
        keepalive: secs(raw.syslog.keepalive_s),
        tls_handshake_timeout: std::time::Duration::from_secs(raw.syslog.tls_handshake_timeout_s),
        snmp,
        admin_listen,
        admin_token,
        admin_stream_token: raw.admin.stream_token,
        admin_tls,
        sinks,
        pair,
        ha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<NodeConfig, Vec<String>> {
        let raw: RawConfig = toml::from_str(text).expect("toml");
        validate(Path::new("/etc/twinrx/node.toml"), raw)
    }

    #[test]
    fn defaults_are_valid_and_data_dir_is_relative_to_the_file() {
        let c = check("[node]\ndata_dir = \"data\"\n").expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/etc/twinrx/data"));
        assert_eq!(c.syslog_udp, vec!["0.0.0.0:514".parse().expect("addr")]);
        assert_eq!(c.snmp.listen, vec!["0.0.0.0:162".parse().expect("addr")]);
        assert_eq!(c.admin_listen, "127.0.0.1:7401".parse().expect("addr"));
        assert_eq!(c.journal_fsync, journal::FsyncPolicy::Batch);
        let zstd = journal::Compression::Zstd { level: 3 };
        assert_eq!((c.journal_compression, c.stream_compression), (zstd, zstd));
    }

    #[test]
    fn compression_keys_parse_and_a_bad_one_is_named() {
        let c = check("[journal]\ncompression = \"none\"\n[stream]\ncompression = \"zstd:9\"\n")
            .expect("valid");
        assert_eq!(c.journal_compression, journal::Compression::None);
        assert_eq!(
            c.stream_compression,
            journal::Compression::Zstd { level: 9 }
        );
        let problems =
            check("[journal]\ncompression = \"lz4\"\n[stream]\ncompression = \"zstd:20\"\n")
                .expect_err("invalid");
        let text = problems.join("\n");
        assert!(
            text.contains("journal.compression = \"lz4\": must be"),
            "{text}"
        );
        assert!(
            text.contains("stream.compression = \"zstd:20\": must be"),
            "{text}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_key() {
        let problems = check(
            r#"
[node]
name = "c"
[journal]
fsync = "sometimes"
[syslog]
udp = ["127.0.0.1:5514", "nonsense"]
tcp = ["127.0.0.1:5514"]
tls = ["127.0.0.1:5514"]
message_bytes_max = 10
"#,
        )
        .expect_err("invalid");
        let text = problems.join("\n");
        assert!(text.contains("node.name = \"c\""), "{text}");
        assert!(text.contains("journal.fsync = \"sometimes\""), "{text}");
        assert!(text.contains("syslog.udp[1] = \"nonsense\""), "{text}");
        assert!(
            text.contains("syslog.tls[0] = \"127.0.0.1:5514\": already used by syslog.tcp[0]"),
            "{text}"
        );
        assert!(text.contains("syslog.tls_cert_file"), "{text}");
        assert!(text.contains("syslog.message_bytes_max = 10"), "{text}");
        assert_eq!(problems.len(), 6, "{text}");
    }

    #[test]
    fn stream_retention_keys_and_the_hold_default() {
        let c = check("").expect("valid");
        assert_eq!(c.stream_retention, journal::Retention::default());
        assert_eq!(c.stream_segment_bytes_max, 64 << 20);
        assert_eq!(c.stream_hold_bytes_max, STREAM_HOLD_BYTES_DEFAULT);
        let c = check(
            "[stream]\nsegment_bytes_max = 1048576\nretention_bytes_max = 268435456\n\
             retention_age_max_s = 86400\n",
        )
        .expect("valid");
        assert_eq!(
            c.stream_retention,
            journal::Retention {
                bytes_max: Some(268_435_456),
                age_max_ms: Some(86_400_000)
            }
        );
        assert_eq!(c.stream_segment_bytes_max, 1 << 20);
        assert_eq!(
            c.stream_hold_bytes_max, 268_435_456,
            "default: the retention"
        );
        let c = check("[stream]\nretention_bytes_max = 268435456\nhold_bytes_max = 134217728\n")
            .expect("valid");
        assert_eq!(c.stream_hold_bytes_max, 134_217_728);
    }

    #[test]
    fn the_disk_budget_fills_unset_keys_and_keeps_explicit_ones() {
        const GIB: u64 = 1 << 30;
        let mut c = check("[stream]\nhold_bytes_max = 134217728\n").expect("valid");
        assert_eq!(
            c.retention.bytes_max, None,
            "unset until the filesystem is known"
        );
        c.apply_disk_budget(100 * GIB).expect("budget");
        assert_eq!(c.retention.bytes_max, Some(25 * GIB));
        assert_eq!(c.peer_retention.bytes_max, Some(25 * GIB));
        assert_eq!(c.stream_retention.bytes_max, Some(55 * GIB));
        assert_eq!(c.stream_hold_bytes_max, 128 << 20, "explicit");
        assert_eq!(c.segment_bytes_max, 64 << 20);
        let l = c.disk.as_ref().expect("limits");
        assert_eq!(l.journal.source, crate::disk::Source::Default);
        let mut c = check(
            "[journal]\nretention_bytes_max = 1073741824\nretention_age_max_s = 3600\n\
             [stream]\nsegment_bytes_max = 1048576\n",
        )
        .expect("valid");
        c.apply_disk_budget(GIB).expect("budget");
        assert_eq!(c.retention.bytes_max, Some(GIB), "explicit: wins");
        assert_eq!(c.peer_retention.age_max_ms, Some(3_600_000));
        assert_eq!(c.stream_retention.bytes_max, Some(590_558_003));
        assert_eq!(
            c.stream_hold_bytes_max, 590_558_003,
            "hold: the stream's limit"
        );
        assert_eq!(c.stream_segment_bytes_max, 1 << 20, "explicit segment");
        let l = c.disk.as_ref().expect("limits");
        assert_eq!(l.warnings.len(), 1, "1 GiB + 55 % > 80 %: {:?}", l.warnings);
        // An explicit hold above the stream's default limit names the key.
        let mut c = check("[stream]\nhold_bytes_max = 1073741824\n").expect("valid");
        let problems = c
            .apply_disk_budget(GIB)
            .expect_err("hold above the default");
        assert!(
            problems[0].starts_with("stream.hold_bytes_max = 1073741824"),
            "{problems:?}"
        );
    }

    #[test]
    fn retention_errors_name_the_key() {
        let problems = check(
            r#"
[journal]
segment_bytes_max = 1048576
retention_bytes_max = 1048577
[stream]
segment_bytes_max = 1000
retention_bytes_max = 100000000
retention_age_max_s = 0
hold_bytes_max = 200000000
"#,
        )
        .expect_err("invalid");
        let text = problems.join("\n");
        assert!(
            text.contains("journal.retention_bytes_max = 1048577: must be at least two segments"),
            "{text}"
        );
        assert!(text.contains("stream.segment_bytes_max = 1000"), "{text}");
        assert!(text.contains("stream.retention_age_max_s = 0"), "{text}");
        assert!(
            text.contains(
                "stream.hold_bytes_max = 200000000: must not be above stream.retention_bytes_max"
            ),
            "{text}"
        );
        assert_eq!(problems.len(), 4, "{text}");
        let problems = check(
            "[stream]\nsegment_bytes_max = 1048576\nretention_bytes_max = 1048576\n\
             hold_bytes_max = 1048576\n",
        )
        .expect_err("invalid");
        let text = problems.join("\n");
        assert!(
            text.contains("stream.retention_bytes_max = 1048576: must be at least two segments"),
            "{text}"
        );
        assert!(
            text.contains("stream.hold_bytes_max = 1048576: must be at least two segments"),
            "{text}"
        );
        assert_eq!(problems.len(), 2, "{text}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RawConfig>("[syslog]\nudpp = []\n").expect_err("unknown");
        assert!(err.to_string().contains("udpp"), "{err}");
    }
}
