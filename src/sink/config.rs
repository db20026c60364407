//! `[[sink]]` sections of the node config: deserialized as [`RawSink`], validated into
//! [`SinkConfig`] (every problem named by key, `sink[i].key`, as in `config.rs`). Every key is
//! documented in `docs/config.md` under `[[sink]]`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One `[[sink]]` table as written. Keys that belong to another `type` are refused.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub batch_records_max: Option<usize>,
    pub retry_backoff_ms_min: Option<u64>,
    pub retry_backoff_ms_max: Option<u64>,
    // kafka
    pub brokers: Option<String>,
    pub topic: Option<String>,
    pub partitions: Option<u32>,
    pub create_topic: Option<bool>,
    pub replication_factor: Option<i32>,
    pub pair: Option<String>,
    pub transactional_id: Option<String>,
    pub linger_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub transaction_timeout_ms: Option<u64>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    // file
    pub path: Option<PathBuf>,
    pub rotate_bytes_max: Option<u64>,
    pub keep_files: Option<usize>,
    pub fsync: Option<bool>,
    // stdout
    pub start_at: Option<String>,
}

/// A validated sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    /// Entries per delivery (one Kafka transaction, one file write + fsync) at most.
    pub batch_records_max: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub kind: SinkKind,
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    Kafka(KafkaConfig),
    File(FileConfig),
    Stdout(StdoutConfig),
}

impl SinkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Kafka(_) => "kafka",
            SinkKind::File(_) => "file",
            SinkKind::Stdout(_) => "stdout",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub partitions: u32,
    pub create_topic: bool,
    pub replication_factor: i32,
    pub transactional_id: String,
    pub linger_ms: u64,
    pub timeout: Duration,
    pub transaction_timeout_ms: u64,
    /// librdkafka properties passed through as they are (TLS, SASL, tuning).
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: PathBuf,
    pub rotate_bytes_max: u64,
    pub keep_files: usize,
    pub fsync: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first entry the stream holds.
    Start,
    /// Only entries committed after the node started.
    End,
}

#[derive(Debug, Clone)]
pub struct StdoutConfig {
    /// Where to start when stdout is not a regular file (nothing to read back).
    pub start_at: StartAt,
}

const KAFKA_KEYS: &[&str] = &[
    "brokers",
    "topic",
    "partitions",
    "create_topic",
    "replication_factor",
    "pair",
    "transactional_id",
    "linger_ms",
    "timeout_ms",
    "transaction_timeout_ms",
    "properties",
];
const FILE_KEYS: &[&str] = &["path", "rotate_bytes_max", "keep_files", "fsync"];
const STDOUT_KEYS: &[&str] = &["start_at"];

/// Keys of `s` that are set (for the "only for type = …" check).
fn set_keys(s: &RawSink) -> Vec<&'static str> {
    let mut k = Vec::new();
    let mut add = |set: bool, name: &'static str| {
        if set {
            k.push(name)
        }
    };
    add(s.brokers.is_some(), "brokers");
    add(s.topic.is_some(), "topic");
    add(s.partitions.is_some(), "partitions");
    add(s.create_topic.is_some(), "create_topic");
    add(s.replication_factor.is_some(), "replication_factor");
    add(s.pair.is_some(), "pair");
    add(s.transactional_id.is_some(), "transactional_id");
    add(s.linger_ms.is_some(), "linger_ms");
    add(s.timeout_ms.is_some(), "timeout_ms");
    add(s.transaction_timeout_ms.is_some(), "transaction_timeout_ms");
    add(!s.properties.is_empty(), "properties");
    add(s.path.is_some(), "path");
    add(s.rotate_bytes_max.is_some(), "rotate_bytes_max");
    add(s.keep_files.is_some(), "keep_files");
    add(s.fsync.is_some(), "fsync");
    add(s.start_at.is_some(), "start_at");
    k
}

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Validates every `[[sink]]`; problems are pushed naming `sink[i].key`.
pub fn validate(
    raw: &[RawSink],
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Vec<String>,
) -> Vec<SinkConfig> {
    let mut out: Vec<SinkConfig> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let k = |key: &str| format!("sink[{i}].{key}");
        let name = match &s.name {
            Some(n) if name_ok(n) => n.clone(),
            Some(n) => {
                problems.push(format!(
                    "{} = {n:?}: 1 to 64 of A-Z a-z 0-9 - _ .",
                    k("name")
                ));
                continue;
            }
            None => {
                problems.push(format!("{}: required (names the sink in status, metrics and the default transactional_id)", k("name")));
                continue;
            }
        };
        if out.iter().any(|o| o.name == name) {
            problems.push(format!(
                "{} = {name:?}: another sink has this name",
                k("name")
            ));
        }
        let kind_str = s.kind.as_deref().unwrap_or("");
        let allowed: &[&str] = match kind_str {
            "kafka" => KAFKA_KEYS,
            "file" => FILE_KEYS,
            "stdout" => STDOUT_KEYS,
            other => {
                problems.push(format!(
                    "{} = {other:?}: must be \"kafka\", \"file\" or \"stdout\"",
                    k("type")
                ));
                continue;
            }
        };
        for key in set_keys(s) {
            if !allowed.contains(&key) {
                problems.push(format!("{}: not a key of a {kind_str} sink", k(key)));
            }
        }
        let batch = s.batch_records_max.unwrap_or(1000);
        if !(1..=100_000).contains(&batch) {
            problems.push(format!(
                "{} = {batch}: must be between 1 and 100000",
                k("batch_records_max")
            ));
        }
        let bmin = s.retry_backoff_ms_min.unwrap_or(100);
        let bmax = s.retry_backoff_ms_max.unwrap_or(10_000);
        if bmin == 0 || bmin > bmax {
            problems.push(format!(
                "{} = {bmin}: must be at least 1 and at most {} ({bmax})",
                k("retry_backoff_ms_min"),
                k("retry_backoff_ms_max")
            ));
        }
        let kind = match kind_str {
            "kafka" => {
                let brokers = s.brokers.clone().unwrap_or_default();
                if brokers.trim().is_empty() {
                    problems.push(format!(
                        "{}: required, e.g. \"kafka1:9092,kafka2:9092\"",
                        k("brokers")
                    ));
                }
                let topic = s.topic.clone().unwrap_or_default();
                let topic_ok = !topic.is_empty()
                    && topic.len() <= 249
                    && topic
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !topic_ok {
                    problems.push(format!(
                        "{} = {topic:?}: required, 1 to 249 of A-Z a-z 0-9 - _ . (Kafka topic name)",
                        k("topic")
                    ));
                }
                let partitions = s.partitions.unwrap_or(1);
                if !(1..=1024).contains(&partitions) {
                    problems.push(format!(
                        "{} = {partitions}: must be between 1 and 1024",
                        k("partitions")
                    ));
                }
                let pair = s.pair.clone().unwrap_or_else(|| "twinrx".into());
                let transactional_id = s
                    .transactional_id
                    .clone()
                    .unwrap_or_else(|| format!("twinrx.{pair}.{name}"));
                if transactional_id.is_empty() {
                    problems.push(format!("{}: must not be empty", k("transactional_id")));
                }
                let timeout_ms = s.timeout_ms.unwrap_or(10_000);
                if !(100..=600_000).contains(&timeout_ms) {
                    problems.push(format!(
                        "{} = {timeout_ms}: must be between 100 and 600000",
                        k("timeout_ms")
                    ));
                }
                let txn_ms = s.transaction_timeout_ms.unwrap_or(60_000);
                if txn_ms < 1000 {
                    problems.push(format!(
                        "{} = {txn_ms}: must be at least 1000",
                        k("transaction_timeout_ms")
                    ));
                }
                for reserved in [
                    "bootstrap.servers",
                    "transactional.id",
                    "enable.idempotence",
                ] {
                    if s.properties.contains_key(reserved) {
                        problems.push(format!(
                            "{}.\"{reserved}\": set by the sink itself (use {})",
                            k("properties"),
                            match reserved {
                                "bootstrap.servers" => k("brokers"),
                                "transactional.id" => k("transactional_id"),
                                _ => "nothing: the sink is always idempotent".into(),
                            }
                        ));
                    }
                }
                SinkKind::Kafka(KafkaConfig {
                    brokers,
                    topic,
                    partitions,
                    create_topic: s.create_topic.unwrap_or(true),
                    replication_factor: s.replication_factor.unwrap_or(1),
                    transactional_id,
                    linger_ms: s.linger_ms.unwrap_or(5),
                    timeout: Duration::from_millis(timeout_ms),
                    transaction_timeout_ms: txn_ms,
                    properties: s.properties.clone(),
                })
            }
            "file" => {
                let path = match &s.path {
                    Some(p) if !p.as_os_str().is_empty() => resolve(p),
                    _ => {
                        problems.push(format!(
                            "{}: required, e.g. \"/var/log/twinrx/stream.ndjson\"",
                            k("path")
                        ));
                        PathBuf::new()
                    }
                };
                let rotate = s.rotate_bytes_max.unwrap_or(64 * 1024 * 1024);
                if rotate < 4096 {
                    problems.push(format!(
                        "{} = {rotate}: must be at least 4096",
                        k("rotate_bytes_max")
                    ));
                }
                let keep = s.keep_files.unwrap_or(10);
                if !(1..=10_000).contains(&keep) {
                    problems.push(format!(
                        "{} = {keep}: must be between 1 and 10000",
                        k("keep_files")
                    ));
                }
                SinkKind::File(FileConfig {
                    path,
                    rotate_bytes_max: rotate,
                    keep_files: keep,
                    fsync: s.fsync.unwrap_or(true),
                })
            }
            _ => {
                let start_at = match s.start_at.as_deref().unwrap_or("end") {
                    "end" => StartAt::End,
                    "start" => StartAt::Start,
                    other => {
                        problems.push(format!(
                            "{} = {other:?}: must be \"end\" or \"start\"",
                            k("start_at")
                        ));
                        StartAt::End
                    }
                };
                SinkKind::Stdout(StdoutConfig { start_at })
            }
        };
        out.push(SinkConfig {
            name,
            batch_records_max: batch,
            backoff_min: Duration::from_millis(bmin),
            backoff_max: Duration::from_millis(bmax.max(bmin)),
            kind,
        });
    }
    let stdouts = out
        .iter()
        .filter(|s| matches!(s.kind, SinkKind::Stdout(_)))
        .count();
    if stdouts > 1 {
        problems.push(format!(
            "sink: {stdouts} sinks of type \"stdout\": at most one (they would interleave)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        sink: Vec<RawSink>,
    }

    fn check(text: &str) -> (Vec<SinkConfig>, Vec<String>) {
        let doc: Doc = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        let out = validate(
            &doc.sink,
            &|p: &Path| Path::new("/etc").join(p),
            &mut problems,
        );
        (out, problems)
    }

    #[test]
    fn kafka_defaults_and_derived_transactional_id() {
        let (s, p) = check(
            "[[sink]]\nname = \"main\"\ntype = \"kafka\"\nbrokers = \"k:9092\"\ntopic = \"syslog\"\npair = \"site1\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let SinkKind::Kafka(k) = &s[0].kind else {
            panic!("kafka")
        };
        assert_eq!(k.transactional_id, "twinrx.site1.main");
        assert_eq!(k.partitions, 1);
        assert_eq!(s[0].batch_records_max, 1000);
    }

    #[test]
    fn problems_name_the_key() {
        let (_, p) = check(
            "[[sink]]\nname = \"x\"\ntype = \"kafka\"\npath = \"a\"\npartitions = 0\n\
             [[sink]]\nname = \"x\"\ntype = \"file\"\n\
             [[sink]]\nname = \"y\"\ntype = \"smtp\"\n",
        );
        let text = p.join("\n");
        assert!(text.contains("sink[0].brokers: required"), "{text}");
        assert!(text.contains("sink[0].topic"), "{text}");
        assert!(
            text.contains("sink[0].path: not a key of a kafka sink"),
            "{text}"
        );
        assert!(text.contains("sink[0].partitions = 0"), "{text}");
        assert!(
            text.contains("sink[1].name = \"x\": another sink"),
            "{text}"
        );
        assert!(text.contains("sink[1].path: required"), "{text}");
        assert!(text.contains("sink[2].type = \"smtp\""), "{text}");
    }

    #[test]
    fn file_path_is_resolved_against_the_config_dir() {
        let (s, p) = check("[[sink]]\nname = \"f\"\ntype = \"file\"\npath = \"out/s.ndjson\"\n");
        assert!(p.is_empty(), "{p:?}");
        let SinkKind::File(f) = &s[0].kind else {
            panic!("file")
        };
        assert_eq!(f.path, PathBuf::from("/etc/out/s.ndjson"));
        assert_eq!(f.keep_files, 10);
    }
}
