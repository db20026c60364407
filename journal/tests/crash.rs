//! A real writer process killed with SIGKILL mid-stream: every record it acknowledged is
//! there after reopen, with the right content, and appends continue with the next seq.
//!
//! The test re-runs its own binary as the writer (selected by an environment variable).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use journal::{FsyncPolicy, Journal, Options};
use twinrx_types::Seq;

const CHILD_DIR: &str = "JOURNAL_CRASH_CHILD_DIR";
const CHILD_POLICY: &str = "JOURNAL_CRASH_CHILD_POLICY";

fn content(seq: u64) -> Vec<u8> {
    format!("record {seq} ")
        .repeat(1 + (seq % 7) as usize)
        .into_bytes()
}

/// The writer: appends batches of 10 and prints `ack <last seq>` after each returns.
fn child(dir: &Path, policy: FsyncPolicy) {
    let o = Options {
        segment_bytes_max: 16 << 10,
        fsync: policy,
        // Sealed segments are compressed in the background: kills land during compaction
        // too, and the tail segment stays as written.
        compression: journal::Compression::Zstd { level: 1 },
        ..Options::default()
    };
    let (mut j, _) = Journal::open(dir, o).expect("child open");
    let stdout = std::io::stdout();
    let started = Instant::now();
    // Bounded, in case the parent is gone.
    while started.elapsed() < Duration::from_secs(30) {
        let next = j.next_seq().0;
        let r = j
            .append_batch((next..next + 10).map(content))
            .expect("child append");
        let mut out = stdout.lock();
        writeln!(out, "ack {}", r.last.0).expect("stdout");
        out.flush().expect("stdout");
    }
}

fn run_and_kill(dir: &Path, policy: &str, test_name: &str, acks_wanted: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_POLICY, policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = 0;
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        if let Some(n) = line.strip_prefix("ack ") {
            acked = n.trim().parse().expect("ack number");
            seen += 1;
            if seen >= acks_wanted {
                break;
            }
        }
        assert!(Instant::now() < deadline, "writer too slow");
    }
    child.kill().expect("SIGKILL the writer");
    child.wait().expect("reap the writer");
    assert!(seen >= acks_wanted, "writer stopped early");
    acked
}

fn crash_rounds(policy: &str, test_name: &str) {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let policy = std::env::var(CHILD_POLICY)
            .expect("policy")
            .parse()
            .expect("policy");
        child(Path::new(&dir), policy);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut prev_acked = 0;
    for round in 0..3 {
        let acked = run_and_kill(dir.path(), policy, test_name, 30 + 20 * round);
        assert!(acked > prev_acked);
        let (j, rec) = Journal::open(dir.path(), Options::default()).expect("reopen after kill");
        let last = rec.last_seq.expect("records").0;
        assert!(
            last >= acked,
            "round {round}: acknowledged {acked}, recovered {last}"
        );
        let h = j.handle();
        let mut next = Seq(1);
        loop {
            let got = h.read(next, 1000, 1 << 20).expect("read");
            let Some(&(l, _)) = got.last() else { break };
            for (s, p) in &got {
                assert_eq!(*p, content(s.0), "seq {s}");
            }
            next = l.next();
        }
        assert_eq!(next, Seq(last + 1));
        drop(j);
        let v = journal::verify(dir.path()).expect("verify");
        assert_eq!((v.records, v.torn_tail), (last, None));
        prev_acked = last;
    }
}

#[test]
fn killed_writer_loses_no_acknowledged_record_batch() {
    crash_rounds("batch", "killed_writer_loses_no_acknowledged_record_batch");
}

#[test]
fn killed_writer_loses_no_acknowledged_record_never() {
    // Policy never: a process crash (unlike a power loss) keeps what was written.
    crash_rounds("never", "killed_writer_loses_no_acknowledged_record_never");
}
