//! A real writer process that appends and runs retention after every batch, killed with
//! SIGKILL (often in the middle of a retention pass): after reopen nothing retention had to
//! keep is lost. Every acknowledged record at or after the reader's position is there with
//! its content, the seqs on disk are contiguous, and `verify` finds no damage.
//!
//! The test re-runs its own binary as the writer (selected by an environment variable).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use journal::{FsyncPolicy, Journal, Options, Retention};
use twinrx_types::Seq;

const CHILD_DIR: &str = "JOURNAL_CRASH_RETENTION_CHILD_DIR";

fn content(seq: u64) -> Vec<u8> {
    format!("record {seq} ")
        .repeat(1 + (seq % 7) as usize)
        .into_bytes()
}

fn options() -> Options {
    Options {
        segment_bytes_max: 4 << 10,
        fsync: FsyncPolicy::Batch,
        retention: Retention {
            bytes_max: Some(16 << 10),
            age_max_ms: None,
        },
        // Kills land during compaction and its swap with retention too.
        compression: journal::Compression::Zstd { level: 1 },
    }
}

/// The writer: a reader held 200 records behind; per round it prints `hold <position>`,
/// moves the reader there, appends 10 records, prints `ack <last seq>`, runs retention.
fn child(dir: &Path) {
    let (mut j, _) = Journal::open(dir, options()).expect("child open");
    let h = j.handle();
    let guard = h.register_reader("consumer", h.first_seq());
    let stdout = std::io::stdout();
    let started = Instant::now();
    // Bounded, in case the parent is gone.
    while started.elapsed() < Duration::from_secs(30) {
        let next = j.next_seq().0;
        let hold = Seq(next.saturating_sub(200).max(guard.position().0));
        {
            let mut out = stdout.lock();
            writeln!(out, "hold {}", hold.0).expect("stdout");
            out.flush().expect("stdout");
        }
        guard.advance(hold);
        let r = j
            .append_batch((next..next + 10).map(content))
            .expect("child append");
        {
            let mut out = stdout.lock();
            writeln!(out, "ack {}", r.last.0).expect("stdout");
            out.flush().expect("stdout");
        }
        j.enforce_retention(SystemTime::now())
            .expect("child retention");
    }
}

/// Runs the writer until it acknowledged `acks_wanted` batches, kills it; returns the last
/// acknowledged seq and the last hold it announced.
fn run_and_kill(dir: &Path, test_name: &str, acks_wanted: u64) -> (u64, u64) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut acked, mut hold, mut seen) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = BufReader::new(stdout).lines();
    let take = |line: &str, hold: &mut u64| {
        if let Some(n) = line.strip_prefix("hold ") {
            *hold = n.trim().parse().expect("hold number");
        }
    };
    for line in lines.by_ref() {
        let line = line.expect("read child stdout");
        take(&line, &mut hold);
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
    // The writer went on until the kill landed: the holds it announced meanwhile (each
    // printed before the reader moved there) are in the pipe. Retention may have used the
    // last of them.
    for line in lines {
        let Ok(line) = line else { break };
        take(&line, &mut hold);
    }
    assert!(seen >= acks_wanted, "writer stopped early");
    (acked, hold)
}

#[test]
fn killed_during_retention_loses_nothing_retained() {
    const NAME: &str = "killed_during_retention_loses_nothing_retained";
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut deleted_some = false;
    for round in 0..6u64 {
        // Kill points spread over the rounds so that some land inside a retention pass.
        let (acked, hold) = run_and_kill(dir.path(), NAME, 40 + 17 * round);
        let (j, rec) = Journal::open(dir.path(), options()).expect("reopen after kill");
        let last = rec.last_seq.expect("records").0;
        assert!(
            last >= acked,
            "round {round}: acknowledged {acked}, recovered {last}"
        );
        let h = j.handle();
        let first = h.first_seq().0;
        deleted_some |= first > 1;
        assert!(
            first <= hold.max(1),
            "round {round}: first seq {first} is past the reader's last position {hold}"
        );
        let mut next = Seq(first);
        loop {
            let got = h.read(next, 1000, 1 << 20).expect("read retained records");
            let Some(&(l, _)) = got.last() else { break };
            for (s, p) in &got {
                assert_eq!(*p, content(s.0), "seq {s}");
            }
            next = l.next();
        }
        assert_eq!(next, Seq(last + 1), "round {round}: contiguous to the end");
        drop(j);
        let v = journal::verify(dir.path()).expect("verify");
        assert_eq!(
            (v.records, v.torn_tail),
            (last - first + 1, None),
            "round {round}"
        );
    }
    assert!(
        deleted_some,
        "retention never deleted anything: the test tests nothing"
    );
}
