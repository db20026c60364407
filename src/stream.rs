//! Merged-stream entries: one JSON object per line (schema in `docs/stream-schema.md`).
//!
//! An entry is built once, on the node that publishes it, from the journal record(s) it
//! stands for; the bytes are then stored in the stream journal and served as they are. Entry
//! `offset` N is stream-journal seq N+1.

use receiver::record::{Protocol, Record};
use serde::Serialize;
use twinrx_types::{Epoch, NodeId, Offset, Seq};

/// Version of the entry schema (`"v"` in every entry). Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Entry<'a> {
    v: u32,
    offset: u64,
    epoch: u64,
    received_at: String,
    source: String,
    protocol: &'static str,
    transport: &'static str,
    copies: Vec<String>,
    key: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    late: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    syslog: Option<receiver::syslog::SyslogFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snmp: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parse_error: Option<String>,
    /// The raw message when it could not be parsed: as text when it is valid UTF-8 ...
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    /// ... else as hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
    /// Later copies of earlier entries, matched since the previous entry (pair only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<MatchFact>,
}

/// A `Matched` fact of the merger as stored in the stream log (see [`LogLine`]): the copy
/// `copy` (`node:seq`) received at `received_ns` is another copy of the entry at `entry`.
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MatchFact {
    pub entry: u64,
    pub copy: String,
    pub key: String,
    pub received_ns: i64,
}

impl MatchFact {
    pub fn of(m: &dedup::Matched) -> MatchFact {
        MatchFact {
            entry: m.entry.0,
            copy: format!("{}:{}", m.copy.node, m.copy.seq),
            key: m.key.to_string(),
            received_ns: m.received_at.0,
        }
    }
}

/// What building an entry found out (for counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Ok,
    KeptRaw,
}

use receiver::hex;

/// Builds the JSON line (without the trailing LF) of the entry at `offset`.
pub fn entry_json(
    offset: Offset,
    epoch: Epoch,
    copies: &[(NodeId, Seq)],
    late: bool,
    rec: &Record,
    matches: &[dedup::Matched],
) -> (Vec<u8>, Parsed) {
    use chrono::Datelike;
    let at = chrono::DateTime::from_timestamp_nanos(rec.received_at.0);
    let mut entry = Entry {
        v: SCHEMA_VERSION,
        offset: offset.0,
        epoch: epoch.0,
        received_at: at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        source: receiver::key::canonical_ip(rec.source.ip()).to_string(),
        protocol: rec.protocol.as_str(),
        transport: rec.transport.as_str(),
        copies: copies.iter().map(|(n, s)| format!("{n}:{s}")).collect(),
        key: rec.key.to_string(),
        late,
        syslog: None,
        snmp: None,
        parse_error: None,
        raw: None,
        raw_hex: None,
        matches: matches.iter().map(MatchFact::of).collect(),
    };
    fn keep_raw<'a>(entry: &mut Entry<'a>, raw: &'a [u8], why: String) -> Parsed {
        entry.parse_error = Some(why);
        match std::str::from_utf8(raw) {
            Ok(s) => entry.raw = Some(s),
            Err(_) => entry.raw_hex = Some(hex(raw)),
        }
        Parsed::KeptRaw
    }
    let mut parsed = Parsed::Ok;
    match rec.protocol {
        Protocol::Syslog => match receiver::syslog::parse(&rec.raw, at.year(), at.month()) {
            Ok(f) => entry.syslog = Some(f),
            Err(e) => parsed = keep_raw(&mut entry, &rec.raw, e.to_string()),
        },
        Protocol::Snmp => {
            match std::str::from_utf8(&rec.decoded)
                .ok()
                .and_then(|s| serde_json::from_str::<&serde_json::value::RawValue>(s).ok())
            {
                Some(v) => {
                    // The SNMP decoder marks undecodable datagrams with an "error" field.
                    if v.get().starts_with("{\"error\"") {
                        parsed =
                            keep_raw(&mut entry, &rec.raw, "snmp: undecodable datagram".into());
                        entry.raw = None;
                        entry.raw_hex = Some(hex(&rec.raw));
                    }
                    entry.snmp = Some(v);
                }
                None => {
                    parsed = keep_raw(&mut entry, &rec.raw, "snmp: no decoded fields".into());
                    entry.raw = None;
                    entry.raw_hex = Some(hex(&rec.raw));
                }
            }
        }
    }
    let bytes = serde_json::to_vec(&entry).expect("entry serialization cannot fail");
    (bytes, parsed)
}

/// An entry for a journal record that could not be decoded (never lost: kept as hex).
#[allow(clippy::too_many_arguments)]
pub fn undecodable_entry(
    offset: Offset,
    epoch: Epoch,
    node: NodeId,
    seq: Seq,
    payload: &[u8],
    why: &str,
    key: twinrx_types::Key,
    received_at: twinrx_types::UnixNanos,
    matches: &[dedup::Matched],
) -> Vec<u8> {
    let at = chrono::DateTime::from_timestamp_nanos(received_at.0);
    let mut v = serde_json::json!({
        "v": SCHEMA_VERSION,
        "offset": offset.0,
        "epoch": epoch.0,
        "received_at": at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "copies": [format!("{node}:{seq}")],
        "key": key.to_string(),
        "parse_error": format!("undecodable journal record: {why}"),
        "raw_hex": hex(payload),
    });
    if !matches.is_empty() {
        v["matches"] = serde_json::json!(matches.iter().map(MatchFact::of).collect::<Vec<_>>());
    }
    serde_json::to_vec(&v).expect("json value serialization cannot fail")
}

/// The fields of a stored entry that the node itself needs back (resume points, checks).
#[derive(Debug, serde::Deserialize)]
pub struct EntryHead {
    pub copies: Vec<String>,
}

impl EntryHead {
    pub fn parse(line: &[u8]) -> Option<EntryHead> {
        serde_json::from_slice(line).ok()
    }

    /// The journal seqs of `node` this entry stands for.
    pub fn seqs_of(&self, node: NodeId) -> impl Iterator<Item = Seq> + '_ {
        self.copies.iter().filter_map(move |c| {
            let (n, s) = c.split_once(':')?;
            (NodeId::from_name(n)? == node)
                .then(|| s.parse().ok().map(Seq))
                .flatten()
        })
    }
}

/// Where the merger's `matches` facts start in a stored line, if it has them. `matches` is
/// always the last field, and `,"` never occurs inside a JSON string (a quote in a string is
/// escaped), so the cut is exact.
fn matches_at(line: &[u8]) -> Option<usize> {
    const FIELD: &[u8] = b",\"matches\":[";
    if !line.ends_with(b"]}") {
        return None;
    }
    line.windows(FIELD.len()).rposition(|w| w == FIELD)
}

/// The line as consumers get it (`/stream`, `tail`, sinks): without the merger's `matches`
/// facts, which only the nodes need.
pub fn for_consumers(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match matches_at(line) {
        Some(at) => {
            let mut out = Vec::with_capacity(at + 1);
            out.extend_from_slice(&line[..at]);
            out.push(b'}');
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(line),
    }
}

/// [`for_consumers`] for an owned line, in place.
pub fn into_consumer_line(mut line: Vec<u8>) -> Vec<u8> {
    if let Some(at) = matches_at(&line) {
        line.truncate(at);
        line.push(b'}');
    }
    line
}

/// What the merger's state is rebuilt from: a stored line read back as the merger's outputs
/// (its `matches`, then the entry itself), in the order the merger returned them.
#[derive(Debug, serde::Deserialize)]
pub struct LogLine {
    pub offset: u64,
    pub epoch: u64,
    pub copies: Vec<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub received_at: Option<String>,
    #[serde(default)]
    pub late: bool,
    #[serde(default)]
    pub matches: Vec<MatchFact>,
}

fn parse_copy(c: &str) -> Option<dedup::JournalPos> {
    let (n, s) = c.split_once(':')?;
    Some(dedup::JournalPos {
        node: NodeId::from_name(n)?,
        seq: Seq(s.parse().ok()?),
    })
}

impl LogLine {
    pub fn parse(line: &[u8]) -> Option<LogLine> {
        serde_json::from_slice(line).ok()
    }

    /// The merger outputs this line stands for, or `None` if a field is malformed.
    pub fn outputs(&self) -> Option<Vec<dedup::Output>> {
        let mut out = Vec::with_capacity(self.matches.len() + 1);
        for m in &self.matches {
            out.push(dedup::Output::Matched(dedup::Matched {
                entry: Offset(m.entry),
                copy: parse_copy(&m.copy)?,
                key: twinrx_types::Key::from_hex(&m.key)?,
                received_at: twinrx_types::UnixNanos(m.received_ns),
            }));
        }
        let received_at = chrono::DateTime::parse_from_rfc3339(self.received_at.as_deref()?)
            .ok()?
            .timestamp_nanos_opt()?;
        out.push(dedup::Output::Entry(dedup::Entry {
            offset: Offset(self.offset),
            copy: parse_copy(self.copies.first()?)?,
            key: twinrx_types::Key::from_hex(self.key.as_deref()?)?,
            received_at: twinrx_types::UnixNanos(received_at),
            late: self.late,
        }));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use receiver::record::Transport;
    use twinrx_types::{Key, UnixNanos};

    fn rec(raw: &[u8]) -> Record {
        Record {
            protocol: Protocol::Syslog,
            transport: Transport::Tcp,
            received_at: UnixNanos(1_764_036_000_000_000_001),
            key: Key([1; 16]),
            source: "[::ffff:192.0.2.7]:5000".parse().expect("literal"),
            raw: raw.to_vec(),
            decoded: Vec::new(),
        }
    }

    #[test]
    fn parsed_syslog_entry_has_the_schema_fields() {
        let (bytes, p) = entry_json(
            Offset(7),
            Epoch(3),
            &[(NodeId::A, Seq(10)), (NodeId::B, Seq(12))],
            false,
            &rec(b"<13>1 2026-11-25T01:02:03Z host app 42 ID7 - hello"),
            &[],
        );
        assert_eq!(p, Parsed::Ok);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["v"], 1);
        assert_eq!(v["offset"], 7);
        assert_eq!(v["epoch"], 3);
        assert_eq!(v["received_at"], "2025-11-25T02:00:00.000000001Z");
        assert_eq!(v["source"], "192.0.2.7");
        assert_eq!(v["protocol"], "syslog");
        assert_eq!(v["transport"], "tcp");
        assert_eq!(v["copies"], serde_json::json!(["a:10", "b:12"]));
        assert_eq!(v["syslog"]["hostname"], "host");
        assert_eq!(v["syslog"]["message"], "hello");
        assert!(v.get("late").is_none() && v.get("raw").is_none());
        let head = EntryHead::parse(&bytes).expect("head");
        assert_eq!(head.seqs_of(NodeId::B).collect::<Vec<_>>(), vec![Seq(12)]);
    }

    #[test]
    fn unparsable_entry_keeps_raw_bytes_and_reason() {
        let (bytes, p) = entry_json(
            Offset(0),
            Epoch(0),
            &[(NodeId::A, Seq(1))],
            true,
            &rec(b"\xffgarbage"),
            &[],
        );
        assert_eq!(p, Parsed::KeptRaw);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["raw_hex"], "ff67617262616765");
        assert!(v["parse_error"].as_str().expect("reason").contains("PRI"));
        assert_eq!(v["late"], true);
    }

    #[test]
    fn a_stored_line_reads_back_as_the_merger_outputs_it_stands_for() {
        let m = dedup::Matched {
            entry: Offset(3),
            copy: dedup::JournalPos {
                node: NodeId::B,
                seq: Seq(9),
            },
            key: Key([7; 16]),
            received_at: UnixNanos(1_764_036_000_000_000_555),
        };
        let r = rec(b"<13>1 2026-11-25T01:02:03Z host app 42 ID7 - hello");
        let (line, _) = entry_json(Offset(5), Epoch(2), &[(NodeId::A, Seq(11))], true, &r, &[m]);
        let l = LogLine::parse(&line).expect("log line");
        assert_eq!((l.offset, l.epoch), (5, 2));
        let outs = l.outputs().expect("outputs");
        assert_eq!(
            outs,
            vec![
                dedup::Output::Matched(m),
                dedup::Output::Entry(dedup::Entry {
                    offset: Offset(5),
                    copy: dedup::JournalPos {
                        node: NodeId::A,
                        seq: Seq(11)
                    },
                    key: r.key,
                    received_at: r.received_at,
                    late: true,
                }),
            ]
        );
        // Consumers get the entry without the facts, as valid JSON.
        let shown = for_consumers(&line);
        let v: serde_json::Value = serde_json::from_slice(&shown).expect("json");
        assert!(v.get("matches").is_none() && v["offset"] == 5, "{v}");
        let plain = entry_json(Offset(6), Epoch(2), &[(NodeId::A, Seq(12))], false, &r, &[]).0;
        assert_eq!(for_consumers(&plain).as_ref(), plain.as_slice());
        assert_eq!(into_consumer_line(line.clone()), shown.into_owned());
        // A line without the fields the merger needs is reported, not guessed.
        let bad = LogLine::parse(br#"{"offset":1,"epoch":1,"copies":["a:1"]}"#).expect("parses");
        assert!(bad.outputs().is_none());
    }
}
