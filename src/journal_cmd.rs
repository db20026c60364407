//! `twinrx journal verify DIR [--json]`: a read-only full scan of a journal directory
//! ([`journal::verify`]), shown as plain lines or as one JSON object.
//!
//! Exit codes: 0 when every record checks (a torn tail is what a crash leaves, not damage);
//! 2 when the journal is damaged or cannot be read (the error names segment and offset).

use journal::VerifyReport;
use serde_json::{json, Value};
use std::path::Path;

/// Runs the check and prints its result; the exit code.
pub fn verify(dir: &Path, as_json: bool) -> anyhow::Result<i32> {
    match journal::verify(dir) {
        Ok(report) => {
            if as_json {
                println!("{}", report_json(dir, &report));
            } else {
                print!("{}", report_text(dir, &report));
            }
            Ok(0)
        }
        Err(e) if as_json => {
            println!(
                "{}",
                json!({"dir": dir.display().to_string(), "ok": false, "error": e.to_string()})
            );
            Ok(2)
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", dir.display())),
    }
}

/// Plain lines, one fact each:
/// ```text
/// journal   /var/lib/twinrx/journal
/// segments  3
/// records   12000 (seq 1..12000)
/// bytes     2621760 (2.5 MiB)
/// torn tail none
/// result    ok: every record's CRC and seq check
/// ```
fn report_text(dir: &Path, r: &VerifyReport) -> String {
    let mut s = format!("journal   {}\n", dir.display());
    s += &format!("segments  {}\n", r.segments);
    s += &match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!("records   {} (seq {a}..{b})\n", r.records),
        _ => format!("records   {}\n", r.records),
    };
    s += &format!("bytes     {}{}\n", r.bytes, human_bytes(r.bytes));
    s += &match &r.torn_tail {
        None => "torn tail none\n".to_string(),
        Some(t) => format!(
            "torn tail {} bytes at offset {} of {} ({}): what a crash leaves; opening the \
             journal truncates them\n",
            t.bytes,
            t.offset,
            t.segment.display(),
            t.reason
        ),
    };
    s + "result    ok: every record's CRC and seq check\n"
}

/// " (2.5 MiB)" above 1 KiB, else nothing.
fn human_bytes(n: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let (unit, div) = match n {
        n if n >= GIB => ("GiB", GIB),
        n if n >= MIB => ("MiB", MIB),
        n if n >= KIB => ("KiB", KIB),
        _ => return String::new(),
    };
    format!(" ({:.1} {unit})", n as f64 / div as f64)
}

/// One JSON object: `dir`, `ok`, `segments`, `records`, `first_seq`, `last_seq` (null without
/// records), `bytes`, `torn_tail` (null, or `segment`, `offset`, `bytes`, `reason`).
fn report_json(dir: &Path, r: &VerifyReport) -> Value {
    json!({
        "dir": dir.display().to_string(),
        "ok": true,
        "segments": r.segments,
        "records": r.records,
        "first_seq": r.first_seq.map(|s| s.0),
        "last_seq": r.last_seq.map(|s| s.0),
        "bytes": r.bytes,
        "torn_tail": r.torn_tail.as_ref().map(|t| json!({
            "segment": t.segment.display().to_string(),
            "offset": t.offset,
            "bytes": t.bytes,
            "reason": t.reason,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal::TornTail;
    use twinrx_types::Seq;

    fn report() -> VerifyReport {
        VerifyReport {
            segments: 3,
            records: 12000,
            bytes: 2_621_760,
            first_seq: Some(Seq(1)),
            last_seq: Some(Seq(12000)),
            torn_tail: None,
        }
    }

    #[test]
    fn plain_lines_name_each_fact() {
        let text = report_text(Path::new("/d/journal"), &report());
        assert_eq!(
            text,
            "journal   /d/journal\nsegments  3\nrecords   12000 (seq 1..12000)\n\
             bytes     2621760 (2.5 MiB)\ntorn tail none\n\
             result    ok: every record's CRC and seq check\n"
        );
    }

    #[test]
    fn a_torn_tail_and_an_empty_journal_are_said_plainly() {
        let mut r = report();
        r.torn_tail = Some(TornTail {
            segment: "/d/journal/00000000000000000001.seg".into(),
            offset: 4096,
            bytes: 17,
            reason: "zero-filled".into(),
        });
        let text = report_text(Path::new("/d/journal"), &r);
        assert!(
            text.contains(
                "torn tail 17 bytes at offset 4096 of /d/journal/00000000000000000001.seg \
                 (zero-filled)"
            ),
            "{text}"
        );
        let empty = report_text(Path::new("/e"), &VerifyReport::default());
        assert!(empty.contains("records   0\n"), "{empty}");
        assert!(empty.contains("bytes     0\n"), "{empty}");
    }

    #[test]
    fn json_is_one_object_with_plain_numbers() {
        let v = report_json(Path::new("/d"), &report());
        assert_eq!(v["ok"], true);
        assert_eq!(v["records"], 12000);
        assert_eq!(v["first_seq"], 1);
        assert_eq!(v["last_seq"], 12000);
        assert_eq!(v["torn_tail"], Value::Null);
        let empty = report_json(Path::new("/e"), &VerifyReport::default());
        assert_eq!(empty["first_seq"], Value::Null);
    }
}
