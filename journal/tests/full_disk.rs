//! Full disk on a real, small tmpfs (SPEC G6): the append fails cleanly with ENOSPC naming
//! the file, the journal stays consistent (verify, reads, reopen), and appends resume with
//! the next seq once space returns.
//!
//! Needs root (it mounts a tmpfs). Where that is impossible, set `JOURNAL_SKIP_TMPFS=1` to
//! skip it explicitly; otherwise a failed mount fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use journal::{Error, FsyncPolicy, Journal, Options, Retention, SeqRange};
use twinrx_types::Seq;

const ENOSPC: i32 = 28;

/// A mounted tmpfs, unmounted on drop (also when the test panics).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                if std::env::var_os("JOURNAL_SKIP_TMPFS").is_some() {
                    eprintln!("skipped: cannot mount a tmpfs ({other:?})");
                    return None;
                }
                panic!("cannot mount a tmpfs (needs root; JOURNAL_SKIP_TMPFS=1 skips): {other:?}");
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg(self.dir.path()).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("umount {} failed: {other:?}", self.dir.path().display()),
        }
    }
}

fn record(seq: u64) -> Vec<u8> {
    let mut r = vec![b'x'; 200];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r
}

fn batch(first: u64, n: u64) -> Vec<Vec<u8>> {
    (first..first + n).map(record).collect()
}

fn check_consistent(dir: &Path, j: &Journal) {
    let last = j.next_seq().0 - 1;
    let v = journal::verify(dir).expect("verify after ENOSPC");
    assert_eq!(v.records, last);
    assert_eq!(v.last_seq, Some(Seq(last)));
    assert_eq!(v.torn_tail, None);
    let h = j.handle();
    assert_eq!(h.durable_seq(), Some(Seq(last)));
    let all = h.read(Seq(1), usize::MAX, usize::MAX).expect("read");
    assert_eq!(all.len() as u64, last);
    assert!(all.iter().all(|(s, p)| *p == record(s.0)));
}

fn fill_until_enospc(j: &mut Journal, per_batch: u64) -> Error {
    for _ in 0..10_000 {
        let next = j.next_seq().0;
        match j.append_batch(batch(next, per_batch)) {
            Ok(r) => assert_eq!(
                r,
                SeqRange {
                    first: Seq(next),
                    last: Seq(next + per_batch - 1)
                }
            ),
            Err(e) => {
                assert_eq!(
                    j.next_seq(),
                    Seq(next),
                    "a failed append leaves next_seq unchanged"
                );
                return e;
            }
        }
    }
    panic!("the tmpfs never filled up");
}

fn full_disk_scenario(segment_bytes_max: u64, per_batch: u64, fsync: FsyncPolicy) {
    let Some(fs) = Tmpfs::mount("256k") else {
        return;
    };
    let dir: PathBuf = fs.path().join("journal");
    let o = Options {
        segment_bytes_max,
        fsync,
        retention: Retention::default(),
        compression: journal::Compression::None,
    };
    let (mut j, _) = Journal::open(&dir, o).expect("open");
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 96 << 10]).expect("filler");

    let err = fill_until_enospc(&mut j, per_batch);
    match &err {
        Error::Io { path, source, op } => {
            assert_eq!(
                source.raw_os_error(),
                Some(ENOSPC),
                "{op} {}: {source}",
                path.display()
            );
            assert!(
                path.starts_with(&dir),
                "error names a journal file: {}",
                path.display()
            );
        }
        other => panic!("expected Error::Io(ENOSPC), got {other:?}"),
    }
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
    assert!(j.stats().append_errors_total >= 1);
    // Policy interval: the batches before the failed one were kept, not yet durable.
    j.sync().expect("sync");
    check_consistent(&dir, &j);
    // Still full: fails again, still consistent.
    let next = j.next_seq();
    assert!(j.append_batch(batch(next.0, per_batch)).is_err());
    assert_eq!(j.next_seq(), next);
    check_consistent(&dir, &j);

    // Space returns: the very next append succeeds with the next seq.
    std::fs::remove_file(&filler).expect("remove filler");
    let r = j
        .append_batch(batch(next.0, per_batch))
        .expect("append after space returned");
    assert_eq!(r.first, next);
    j.sync().expect("sync");
    check_consistent(&dir, &j);
    drop(j);
    let (j, rec) = Journal::open(&dir, o).expect("reopen");
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.last_seq, Some(r.last));
    check_consistent(&dir, &j);
    drop(j);
}

#[test]
fn full_disk_write_fails_cleanly_and_resumes() {
    // Large segments: the record write itself hits ENOSPC.
    full_disk_scenario(1 << 20, 20, FsyncPolicy::Batch);
}

#[test]
fn full_disk_during_rotation_fails_cleanly_and_resumes() {
    // Small segments: most batches rotate, so segment creation hits ENOSPC too.
    full_disk_scenario(4 << 10, 20, FsyncPolicy::Batch);
}

#[test]
fn full_disk_under_interval_policy_keeps_earlier_batches() {
    full_disk_scenario(8 << 10, 7, FsyncPolicy::Interval { ms: 3_600_000 });
}
