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
    #[serde(skip_serializing_if = "<[MatchRun]>::is_empty")]
    matches: &'a [MatchRun],
}

/// A run of the merger's `Matched` facts as stored in the stream log (see [`LogLine`]):
/// records `node:seq .. node:seq+count-1` are later copies of the entries at
/// `entry .. entry+count-1`, in that order; `last_ns` is the receive time of the last record
/// of the run and `max_ns` the latest of the run. Copies arrive at both nodes in the same
/// order, so a long catch-up of matched records is a handful of runs, whatever its length.
/// Stored as a JSON array `[node, seq, entry, count, last_ns, max_ns]`, node 0 = a, 1 = b.
#[derive(Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchRun(pub u8, pub u64, pub u64, pub u64, pub i64, pub i64);

impl MatchRun {
    /// Adds `m` to the last run of `runs` when it continues it, else starts a new run.
    pub fn push(runs: &mut Vec<MatchRun>, m: &dedup::Matched) {
        let t = m.received_at.0;
        if let Some(r) = runs.last_mut() {
            if r.0 == m.copy.node.0 && r.1 + r.3 == m.copy.seq.0 && r.2 + r.3 == m.entry.0 {
                r.3 += 1;
                r.4 = t;
                r.5 = r.5.max(t);
                return;
            }
        }
        runs.push(MatchRun(m.copy.node.0, m.copy.seq.0, m.entry.0, 1, t, t));
    }

    /// Applies the run to a fold of the stream log (what its facts, one by one, would do):
    /// the entries are no longer open; the node's records up to the run's last are accounted
    /// for. `None` for a malformed run (unknown node, empty, overflowing).
    pub fn apply(
        &self,
        progress: &mut dedup::Progress,
        mut history: impl FnMut(&dedup::Output),
    ) -> Option<()> {
        let node = match self.0 {
            0 => NodeId::A,
            1 => NodeId::B,
            _ => return None,
        };
        let last = self.3.checked_sub(1)?;
        let seq_last = self.1.checked_add(last)?;
        let entry_last = self.2.checked_add(last)?;
        for e in self.2..=entry_last {
            history(&dedup::Output::Matched(dedup::Matched {
                entry: Offset(e),
                copy: dedup::JournalPos {
                    node,
                    seq: Seq(seq_last),
                },
                key: twinrx_types::Key::default(),
                received_at: twinrx_types::UnixNanos(self.4),
            }));
        }
        progress.apply(&dedup::Output::Matched(dedup::Matched {
            entry: Offset(entry_last),
            copy: dedup::JournalPos {
                node,
                seq: Seq(seq_last),
            },
            key: twinrx_types::Key::default(),
            received_at: twinrx_types::UnixNanos(self.4),
        }));
        let max = twinrx_types::UnixNanos(self.5);
        progress.newest = Some(progress.newest.map_or(max, |n| n.max(max)));
        Some(())
    }
}

/// What building an entry found out (for counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Ok,
    KeptRaw,
    /// Kept raw because the parser panicked on it ([`crate::guard`]).
    InternalError,
}

impl Parsed {
    /// Counts what building one entry found out.
    pub fn count(self, stats: &crate::node::NodeStats) {
        use std::sync::atomic::Ordering::Relaxed;
        if self != Parsed::Ok {
            stats.stream_kept_raw.fetch_add(1, Relaxed);
        }
        if self == Parsed::InternalError {
            stats.stream_internal_errors.fetch_add(1, Relaxed);
        }
    }
}

/// In builds with the `fault-injection` feature, a syslog message holding this text makes the
/// parser panic (the test of panic isolation); other builds have no such text.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC_PARSER: &[u8] = b"twinrx-fault:panic-parser";

fn parse_syslog(
    raw: &[u8],
    year: i32,
    month: u32,
) -> Result<Result<receiver::syslog::SyslogFields, receiver::syslog::ParseError>, String> {
    crate::guard::catch("syslog parser", || {
        #[cfg(feature = "fault-injection")]
        if raw
            .windows(FAULT_PANIC_PARSER.len())
            .any(|w| w == FAULT_PANIC_PARSER)
        {
            panic!("injected parser panic (fault-injection build)");
        }
        receiver::syslog::parse(raw, year, month)
    })
}

use receiver::hex;

/// Builds the JSON line (without the trailing LF) of the entry at `offset`.
pub fn entry_json(
    offset: Offset,
    epoch: Epoch,
    copies: &[(NodeId, Seq)],
    late: bool,
    rec: &Record,
    matches: &[MatchRun],
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
        matches,
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
        Protocol::Syslog => match parse_syslog(&rec.raw, at.year(), at.month()) {
            Ok(Ok(f)) => entry.syslog = Some(f),
            Ok(Err(e)) => parsed = keep_raw(&mut entry, &rec.raw, e.to_string()),
            Err(internal) => {
                keep_raw(&mut entry, &rec.raw, internal);
                parsed = Parsed::InternalError;
            }
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
    matches: &[MatchRun],
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
        v["matches"] = serde_json::json!(matches);
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
    pub matches: Vec<MatchRun>,
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

    /// The entry this line stores, as the merger output it was, or `None` if a field is
    /// malformed. (Its `matches` runs come before it in the merger's output order.)
    pub fn entry(&self) -> Option<dedup::Entry> {
        let received_at = chrono::DateTime::parse_from_rfc3339(self.received_at.as_deref()?)
            .ok()?
            .timestamp_nanos_opt()?;
        Some(dedup::Entry {
            offset: Offset(self.offset),
            copy: parse_copy(self.copies.first()?)?,
            key: twinrx_types::Key::from_hex(self.key.as_deref()?)?,
            received_at: twinrx_types::UnixNanos(received_at),
            late: self.late,
        })
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

    /// A message that makes the parser panic is kept raw with the internal error, counted
    /// apart, and the next message parses as usual (#16 panic isolation).
    #[cfg(feature = "fault-injection")]
    #[test]
    fn a_parser_panic_keeps_the_message_raw_and_the_next_one_parses() {
        let stats = crate::node::NodeStats::default();
        let poison = b"<13>1 2026-11-25T01:02:03Z host app - - - x twinrx-fault:panic-parser";
        let (bytes, p) = entry_json(
            Offset(1),
            Epoch(1),
            &[(NodeId::A, Seq(1))],
            false,
            &rec(poison),
            &[],
        );
        assert_eq!(p, Parsed::InternalError);
        p.count(&stats);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let why = v["parse_error"].as_str().expect("parse_error");
        assert!(
            why.starts_with("internal error in the syslog parser: injected parser panic"),
            "{why}"
        );
        assert_eq!(v["raw"].as_str().map(str::as_bytes), Some(&poison[..]));
        assert!(v.get("syslog").is_none(), "{v}");
        let (_, p) = entry_json(
            Offset(2),
            Epoch(1),
            &[(NodeId::A, Seq(2))],
            false,
            &rec(b"<13>1 2026-11-25T01:02:03Z host app - - - fine"),
            &[],
        );
        assert_eq!(p, Parsed::Ok);
        p.count(&stats);
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(stats.stream_kept_raw.load(Relaxed), 1);
        assert_eq!(stats.stream_internal_errors.load(Relaxed), 1);
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
        let fact = |seq: u64, entry: u64, t: i64| dedup::Matched {
            entry: Offset(entry),
            copy: dedup::JournalPos {
                node: NodeId::B,
                seq: Seq(seq),
            },
            key: Key([7; 16]),
            received_at: UnixNanos(t),
        };
        // Facts b:9->3, b:10->4, b:11->5 are one run; b:12->9 starts another.
        let facts = [
            fact(9, 3, 100),
            fact(10, 4, 300),
            fact(11, 5, 200),
            fact(12, 9, 400),
        ];
        let mut runs = Vec::new();
        for f in &facts {
            MatchRun::push(&mut runs, f);
        }
        assert_eq!(
            runs,
            vec![
                MatchRun(1, 9, 3, 3, 200, 300),
                MatchRun(1, 12, 9, 1, 400, 400)
            ]
        );
        let r = rec(b"<13>1 2026-11-25T01:02:03Z host app 42 ID7 - hello");
        let (line, _) = entry_json(
            Offset(10),
            Epoch(2),
            &[(NodeId::A, Seq(11))],
            true,
            &r,
            &runs,
        );
        let l = LogLine::parse(&line).expect("log line");
        assert_eq!((l.offset, l.epoch), (10, 2));
        assert_eq!(l.matches, runs);
        let entry = dedup::Entry {
            offset: Offset(10),
            copy: dedup::JournalPos {
                node: NodeId::A,
                seq: Seq(11),
            },
            key: r.key,
            received_at: r.received_at,
            late: true,
        };
        assert_eq!(l.entry(), Some(entry));
        // Applying the runs folds exactly as applying the facts one by one.
        let (mut p1, mut h1) = (dedup::Progress::start(), dedup::MemHistory::new());
        let (mut p2, mut h2) = (dedup::Progress::start(), dedup::MemHistory::new());
        for o in [3, 4, 5, 9].map(|o| {
            dedup::Output::Entry(dedup::Entry {
                offset: Offset(o),
                ..entry
            })
        }) {
            for (p, h) in [(&mut p1, &mut h1), (&mut p2, &mut h2)] {
                p.apply(&o);
                h.apply(&o);
            }
        }
        for f in &facts {
            p1.apply(&dedup::Output::Matched(*f));
            h1.apply(&dedup::Output::Matched(*f));
        }
        for run in &runs {
            run.apply(&mut p2, |o| h2.apply(o))
                .expect("well-formed run");
        }
        assert_eq!(p1, p2);
        assert_eq!((h1.open_len(), h2.open_len()), (0, 0));
        // Consumers get the entry without the facts, as valid JSON.
        let shown = for_consumers(&line);
        let v: serde_json::Value = serde_json::from_slice(&shown).expect("json");
        assert!(v.get("matches").is_none() && v["offset"] == 10, "{v}");
        let plain = entry_json(Offset(6), Epoch(2), &[(NodeId::A, Seq(12))], false, &r, &[]).0;
        assert_eq!(for_consumers(&plain).as_ref(), plain.as_slice());
        assert_eq!(into_consumer_line(line.clone()), shown.into_owned());
        // A line without the fields the merger needs is reported, not guessed.
        let bad = LogLine::parse(br#"{"offset":1,"epoch":1,"copies":["a:1"]}"#).expect("parses");
        assert!(bad.entry().is_none());
        assert!(MatchRun(7, 1, 1, 1, 0, 0)
            .apply(&mut p1, |o| h1.apply(o))
            .is_none());
        assert!(MatchRun(0, 1, 1, 0, 0, 0)
            .apply(&mut p1, |o| h1.apply(o))
            .is_none());
    }
}
