//! Texts that are true (#25), read from the real commands against real nodes:
//! - `twinrx resync` on a standby that fell thousands of entries behind under load counts what
//!   is left against a real target (never "N of 0"; "not known yet" before the active is
//!   heard), its numbers only move toward the target, and it says "pair redundant" only when
//!   it is: right after it returns, both nodes are redundant with equal stream ends;
//! - `twinrx journal verify DIR [--json]` on a journal written by a node: plain lines, or one
//!   JSON object, with the same numbers; exit 2 on a damaged journal.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn stream_end(ha: &serde_json::Value) -> u64 {
    ha["stream_end"].as_u64().expect("ha.stream_end")
}

/// Waits until node `name`'s stream end has not moved for `quiet`; returns it.
fn settled_stream_end(t: &Trio, name: &str, quiet: Duration, timeout: Duration) -> u64 {
    let mut last: Option<(u64, Instant)> = None;
    wait_for(
        &format!("[{}] {name}'s stream end to settle", t.tag),
        timeout,
        || {
            let end = stream_end(&ha_of(t.node(name))?);
            match last {
                Some((e, since)) if e == end => (since.elapsed() >= quiet).then_some(end),
                _ => {
                    last = Some((end, Instant::now()));
                    None
                }
            }
        },
    )
}

/// The numbers of "holds H of T merged-stream entries, L to go".
fn held_of_target(line: &str) -> Option<(u64, u64, u64)> {
    let rest = &line[line.find(" holds ")? + " holds ".len()..];
    let mut w = rest.split_whitespace();
    let held = w.next()?.parse().ok()?;
    (w.next()? == "of").then_some(())?;
    let target = w.next()?.parse().ok()?;
    (w.next()? == "merged-stream").then_some(())?;
    let left_at = rest.find("entries, ")? + "entries, ".len();
    let left = rest[left_at..].split_whitespace().next()?.parse().ok()?;
    Some((held, target, left))
}

#[test]
fn resync_counts_what_is_left_and_says_redundant_only_when_it_is() {
    let mut t = Trio::new("texts-resync");
    let act = t.start();
    let sby = Trio::other(act);
    let mut g = t.gen("texts", 24_000, 2000, "udp");
    t.wait_stream_end(act, 2000, 30 * SEC);
    t.node_mut(sby).kill9();
    let behind_from = stream_end(&ha_of(t.node(act)).expect("active answers"));
    // The load ends before the standby returns, so that "redundant" can be checked as equal
    // stream ends on both nodes.
    g.wait(120 * SEC);
    let target = settled_stream_end(&t, act, SEC, 60 * SEC);
    assert!(
        target >= behind_from + 5000,
        "[{}] the standby should be thousands behind: killed at {behind_from}, active at \
         {target}",
        t.tag
    );
    t.node_mut(sby).start();
    let out = t.resync(sby);
    // Right after it returns: the active first, so that the standby is read no earlier.
    let ha_act = ha_of(t.node(act)).expect("active answers");
    let ha_sby = ha_of(t.node(sby)).expect("standby answers");
    eprintln!("[{}] twinrx resync said:\n{out}", t.tag);
    note(&format!("[{}] resync output:\n{out}", t.tag));

    for line in out.lines() {
        assert!(
            !line.contains(" of 0") && !line.contains("(0 s)"),
            "[{}] a count against a target of 0: {line:?}\n{out}",
            t.tag
        );
    }
    // Every progress line counts against the real target, and only moves toward it.
    let progress: Vec<(u64, u64, u64)> = out.lines().filter_map(held_of_target).collect();
    assert!(
        !progress.is_empty(),
        "[{}] no progress line while {} entries were to go:\n{out}",
        t.tag,
        target - behind_from
    );
    for &(held, of, left) in &progress {
        assert_eq!(
            of - held,
            left,
            "[{}] 'to go' is not what is left:\n{out}",
            t.tag
        );
        assert_eq!(
            of, target,
            "[{}] the target is not the active's stream end {target}:\n{out}",
            t.tag
        );
    }
    for w in progress.windows(2) {
        assert!(
            w[1].0 >= w[0].0 && w[1].2 <= w[0].2,
            "[{}] progress went backwards ({:?} then {:?}):\n{out}",
            t.tag,
            w[0],
            w[1]
        );
    }
    // "Redundant" is the last line, and true when it is said.
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pair redundant: ")
            && last.contains(&format!("active at {target} "))
            && last.contains(&format!("holding {target};")),
        "[{}] last line: {last:?}\n{out}",
        t.tag
    );
    assert_eq!(
        out.matches("pair redundant").count(),
        1,
        "[{}] {out}",
        t.tag
    );
    for (name, ha) in [(act, &ha_act), (sby, &ha_sby)] {
        assert_eq!(
            ha["redundant"], true,
            "[{}] {name} right after resync: {ha:#}",
            t.tag
        );
    }
    assert_eq!(
        (stream_end(&ha_act), stream_end(&ha_sby)),
        (target, target),
        "[{}] stream ends right after resync said redundant: active {act} {ha_act:#}\nstandby \
         {sby} {ha_sby:#}",
        t.tag
    );
    t.final_check(&[&g.manifest]);
}

/// `twinrx journal verify` with `args` on `dir`: (exit code, stdout, stderr).
fn journal_verify(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["journal", "verify"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run twinrx journal verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value after `key` on its plain line ("records   3000 (seq 1..3000)" → "3000 (seq ...").
fn plain<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no line {key:?} in:\n{text}"))
}

#[test]
fn journal_verify_prints_plain_lines_and_json_for_a_real_journal() {
    const COUNT: u64 = 3000;
    let s = Scratch::new("texts-verify");
    let mut node = TestNode::new(s.path(), "", "");
    node.start();
    let manifest = s.path().join("gen.json");
    let gen = run(Command::new(BIN)
        .args(["gen", "--transport", "tcp", "--run-id", "verify"])
        .args(["--count", &COUNT.to_string(), "--rate", "5000"])
        .args(["--to", &format!("{}:5514", node.ip)])
        .arg("--manifest")
        .arg(&manifest));
    assert!(gen.status.success(), "gen: {}", gen.status);
    node.wait_stream(COUNT as usize, 60 * SEC);
    node.signal(nix::sys::signal::Signal::SIGTERM);
    let st = node.wait_exit(30 * SEC);
    assert!(st.success(), "node exit: {st}");

    for (sub, records) in [("journal", COUNT), ("stream", COUNT)] {
        let dir = node.data_dir().join(sub);
        let (code, text, err) = journal_verify(&dir, &[]);
        eprintln!("journal verify {sub}:\n{text}{err}");
        assert_eq!(code, 0, "{text}{err}");
        assert!(
            !text.contains("VerifyReport") && !text.contains('{'),
            "not plain lines:\n{text}"
        );
        assert_eq!(plain(&text, "journal "), dir.display().to_string());
        let segments: u64 = plain(&text, "segments ").parse().expect("segments N");
        assert!(segments >= 1, "{text}");
        assert_eq!(
            plain(&text, "records "),
            format!("{records} (seq 1..{records})"),
            "{text}"
        );
        let bytes: u64 = plain(&text, "bytes ")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("bytes N");
        assert_eq!(plain(&text, "torn tail"), "none", "{text}");
        assert!(plain(&text, "result ").starts_with("ok"), "{text}");

        let (code, text, err) = journal_verify(&dir, &["--json"]);
        assert_eq!(code, 0, "{text}{err}");
        assert_eq!(text.trim().lines().count(), 1, "one JSON object:\n{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["segments"], segments, "{v}");
        assert_eq!(v["records"], records, "{v}");
        assert_eq!(v["first_seq"], 1, "{v}");
        assert_eq!(v["last_seq"], records, "{v}");
        assert_eq!(v["bytes"], bytes, "{v}");
        assert!(v["torn_tail"].is_null(), "{v}");
    }

    // Damage in the middle of a segment: exit 2, and the place is named either way.
    let dir = node.data_dir().join("journal");
    let seg = std::fs::read_dir(&dir)
        .expect("journal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 4096))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a segment with records");
    let mut bytes = std::fs::read(&seg).expect("read segment");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write segment");
    let (code, text, err) = journal_verify(&dir, &[]);
    eprintln!("journal verify, damaged:\n{text}{err}");
    assert_eq!(code, 2, "{text}{err}");
    assert!(err.contains("corrupt") || err.contains("invalid"), "{err}");
    let (code, text, err) = journal_verify(&dir, &["--json"]);
    assert_eq!(code, 2, "{text}{err}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON on damage");
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains(&seg.display().to_string())),
        "{v}"
    );
}
