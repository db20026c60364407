//! End-to-end durability: SIGKILL during a flood, restart on the same data dir; a data dir on
//! a small tmpfs that fills up and frees again. Real processes, real signals, real tmpfs.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every stream entry's offset and copies; asserts offsets are 0.. contiguous and each
/// journal seq appears exactly once, contiguous from 1. Returns the number of entries.
fn assert_stream_consistent(stream: &[serde_json::Value]) -> usize {
    let mut seqs = Vec::new();
    for (i, e) in stream.iter().enumerate() {
        assert_eq!(
            e["offset"].as_u64(),
            Some(i as u64),
            "offset gap at entry {i}: {e}"
        );
        let copies = e["copies"].as_array().expect("copies");
        assert_eq!(copies.len(), 1, "single node: one copy per entry: {e}");
        let c = copies[0].as_str().expect("copy");
        let seq: u64 = c.strip_prefix("a:").expect("node a").parse().expect("seq");
        seqs.push(seq);
    }
    let expect: Vec<u64> = (1..=stream.len() as u64).collect();
    assert_eq!(
        seqs, expect,
        "journal seqs in the stream are not 1..=N in order"
    );
    stream.len()
}

fn verify_journal(dir: &std::path::Path) -> String {
    let out = run(Command::new(BIN).args(["journal", "verify"]).arg(dir));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn sigkill_during_a_flood_then_restart_loses_nothing_journaled_and_duplicates_nothing() {
    let s = Scratch::new("crash");
    let mut node = TestNode::new(s.path(), "", "");
    node.start();
    let manifest = s.path().join("gen.json");
    let mut gen = Command::new(BIN)
        .args([
            "gen",
            "--transport",
            "tcp",
            "--count",
            "60000",
            "--rate",
            "20000",
            "--run-id",
            "crash",
        ])
        .args(["--to", &format!("{}:5514", node.ip)])
        .arg("--manifest")
        .arg(&manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gen");
    // Kill while the flood is in full swing.
    wait_for(
        "5000 entries before the kill",
        Duration::from_secs(30),
        || {
            let st = node.status();
            (st["journal"]["last_seq"].as_u64() >= Some(5000)).then_some(())
        },
    );
    node.kill9();
    let before_restart = verify_journal(&node.data_dir().join("journal"));
    assert!(before_restart.contains("\nrecords "), "{before_restart}");
    node.start();
    let gen_status = wait_for("gen to finish", Duration::from_secs(60), || {
        gen.try_wait().ok().flatten()
    });
    assert!(gen_status.success());
    // Everything the journal holds reaches the stream, once.
    wait_for(
        "the stream to catch up with the journal",
        Duration::from_secs(30),
        || {
            let st = node.status();
            let last = st["journal"]["last_seq"].as_u64()?;
            (st["stream"]["next_offset"].as_u64()? == last).then_some(())
        },
    );
    let stream = node.stream();
    let n = assert_stream_consistent(&stream);
    assert!(n >= 5000, "{n}");
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    verify_journal(&node.data_dir().join("journal"));
    verify_journal(&node.data_dir().join("stream"));
    // No generator message appears twice; the ones lost were in flight at the kill
    // (in socket buffers, never journaled).
    let mut seen: HashMap<String, u32> = HashMap::new();
    for e in &stream {
        if let Some(m) = e["syslog"]["message"].as_str() {
            if let Some(tok) = m.split_whitespace().find(|t| t.starts_with("T=crash:")) {
                *seen.entry(tok.to_string()).or_default() += 1;
            }
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "duplicated: {dups:?}");
    assert_eq!(seen.len(), n, "every entry is a generator message");
    // `twinrx check` agrees: no duplicate, offsets contiguous (missing is allowed here).
    let dump = s.path().join("stream.ndjson");
    std::fs::write(
        &dump,
        stream.iter().map(|e| format!("{e}\n")).collect::<String>(),
    )
    .expect("dump");
    let out = Command::new(BIN)
        .args(["check", "--json", "--manifest"])
        .arg(&manifest)
        .arg("--stream")
        .arg(&dump)
        .output()
        .expect("check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check json");
    assert_eq!(report["duplicated"], 0, "{report:#}");
    assert_eq!(report["offset_gaps"], 0, "{report:#}");
    assert_eq!(report["present"].as_u64(), Some(n as u64), "{report:#}");
}

#[test]
fn full_disk_refuses_and_counts_then_resumes_by_itself_when_space_returns() {
    let s = Scratch::new("diskfull");
    let mut node = TestNode::new(s.path(), "", "[journal]\nsegment_bytes_max = 65536\n");
    let tmpfs = Tmpfs::mount(&node.data_dir(), "2m");
    // Take most of the space with a filler we can delete later.
    let filler = node.data_dir().join("filler");
    std::fs::write(&filler, vec![0u8; 1200 * 1024]).expect("filler");
    node.start();
    let mut c = std::net::TcpStream::connect((node.ip, 5514)).expect("tcp");
    c.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // Text that does not compress (pseudo-random printable bytes): retention limits count
    // bytes as written, so 900 repeated bytes would be deleted long before they filled the
    // disk compressed; these fill it as they would without compression.
    let msg = |n: u32| {
        let mut x = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let noise: String = (0..900)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'0' + (x % 75) as u8)
            })
            .collect();
        let body = format!("<13>1 2026-11-25T00:00:00Z h app - - - fill {n} end {noise}");
        format!("{} {body}", body.len())
    };
    // Send until the journal reports failure (or the socket stops taking bytes).
    let mut sent = 0u32;
    let st = wait_for(
        "the journal to report a full disk",
        Duration::from_secs(60),
        || {
            for _ in 0..50 {
                if c.write_all(msg(sent).as_bytes()).is_err() {
                    break;
                }
                sent += 1;
            }
            let st = node.status();
            (st["journal"]["failing"] == true).then_some(st)
        },
    );
    assert_eq!(st["healthy"], false, "{st:#}");
    assert!(
        st["journal"]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("space"),
        "{st:#}"
    );
    assert!(
        st["next_step"]
            .as_str()
            .unwrap_or("")
            .contains("free space"),
        "{st:#}"
    );
    assert!(st["journal"]["append_errors"].as_u64() >= Some(1));
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    assert!(metrics.contains("twinrx_journal_failing 1"), "{metrics}");
    // Free the space: the node resumes by itself, and everything sent over TCP (which waited
    // instead of dropping) is journaled and published once.
    std::fs::remove_file(&filler).expect("remove filler");
    wait_for("the journal to resume", Duration::from_secs(30), || {
        (node.status()["journal"]["failing"] == false).then_some(())
    });
    // The connection may have been stalled; finish on a fresh one.
    drop(c);
    let mut c2 = std::net::TcpStream::connect((node.ip, 5514)).expect("tcp");
    c2.write_all(msg(1_000_000).as_bytes()).expect("write");
    drop(c2);
    let stream = wait_for("the marker after recovery", Duration::from_secs(30), || {
        let st = node.stream();
        (!entries_with(&st, "fill 1000000 end").is_empty()).then_some(st)
    });
    assert_stream_consistent(&stream);
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for e in &stream {
        let m = e["syslog"]["message"].as_str().expect("message");
        let n: u32 = m.split_whitespace().nth(1).expect("n").parse().expect("n");
        *counts.entry(n).or_default() += 1;
    }
    assert!(
        counts.values().all(|&c| c == 1),
        "duplicates after a full disk"
    );
    // Every message whose write the kernel accepted before the stall was journaled.
    let journaled_before = (0..sent).filter(|n| counts.contains_key(n)).count() as u32;
    assert!(
        journaled_before + 2 >= sent,
        "sent {sent}, journaled {journaled_before}"
    );
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    verify_journal(&node.data_dir().join("journal"));
    verify_journal(&node.data_dir().join("stream"));
    drop(tmpfs);
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let s = Scratch::new("dirlock");
    let mut node = TestNode::new(s.path(), "", "");
    node.start();
    // Same data dir, other addresses: refused before it touches the journal.
    let other = unique_ip();
    let cfg = std::fs::read_to_string(&node.config)
        .expect("config")
        .replace(&node.ip.to_string(), &other.to_string());
    let second = s.path().join("second.toml");
    std::fs::write(&second, cfg).expect("config");
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&second)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another node runs on data_dir"), "{err}");
    // The first node is unharmed.
    assert_eq!(node.status()["healthy"], true);
}
