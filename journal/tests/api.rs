//! The journal API end to end on a real directory: appends, reads, rotation, reopen,
//! truncation, reset, retention, fsync policies, tailing and concurrent readers.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use journal::{Compression, Error, FsyncPolicy, Journal, Options, Retention, SeqRange};
use twinrx_types::Seq;

fn opts(segment_bytes_max: u64, fsync: FsyncPolicy) -> Options {
    Options {
        segment_bytes_max,
        fsync,
        retention: Retention::default(),
        compression: Compression::None,
    }
}

fn payload(i: u64) -> Vec<u8> {
    // Varying lengths, content derived from the index.
    let len = 10 + (i * 7 % 90) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn append_n(j: &mut Journal, from: u64, n: u64, per_batch: u64) {
    let mut i = from;
    while i < from + n {
        let end = (i + per_batch).min(from + n);
        let batch: Vec<Vec<u8>> = (i..end).map(payload).collect();
        let r = j.append_batch(&batch).expect("append");
        assert_eq!(
            r,
            SeqRange {
                first: Seq(i),
                last: Seq(end - 1)
            }
        );
        i = end;
    }
}

fn read_all(h: &journal::JournalHandle, from: u64) -> Vec<(Seq, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = Seq(from);
    loop {
        let got = h.read(next, 37, 4096).expect("read");
        match got.last() {
            Some(&(s, _)) => next = s.next(),
            None => return out,
        }
        out.extend(got);
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_across_rotations_seqs_contiguous_from_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, rec) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Never)).expect("open");
    assert_eq!(rec.last_seq, None);
    assert_eq!(rec.segments, 1);
    assert_eq!(j.next_seq(), Seq(1));
    let h = j.handle();
    assert_eq!(h.first_seq(), Seq(1));
    assert_eq!(h.durable_seq(), None);
    append_n(&mut j, 1, 500, 13);
    assert_eq!(j.next_seq(), Seq(501));
    assert_eq!(h.durable_seq(), Some(Seq(500)));
    let all = read_all(&h, 1);
    assert_eq!(all.len(), 500);
    for (k, (s, p)) in all.iter().enumerate() {
        assert_eq!(*s, Seq(k as u64 + 1));
        assert_eq!(*p, payload(k as u64 + 1));
    }
    let files = segment_files(dir.path());
    assert!(files.len() > 10, "rotation happened: {files:?}");
    assert_eq!(files[0], "00000000000000000001.seg");
    let stats = j.stats();
    assert_eq!(stats.records, 500);
    assert_eq!(stats.segments, files.len());
    assert_eq!(stats.appended_total, 500);
    // Reads from the middle, with limits.
    let mid = h.read(Seq(250), 3, 1 << 20).expect("read");
    assert_eq!(
        mid.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![Seq(250), Seq(251), Seq(252)]
    );
    assert_eq!(mid[0].1, payload(250));
    // max_bytes: one record even if larger.
    let one = h.read(Seq(7), 100, 1).expect("read");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0], (Seq(7), payload(7)));
    assert!(h.read(Seq(501), 10, 1000).expect("read").is_empty());
    assert!(h.read(Seq(5), 0, 1000).expect("read").is_empty());
    let v = journal::verify(dir.path()).expect("verify");
    assert_eq!(
        (v.records, v.first_seq, v.last_seq, v.torn_tail),
        (500, Some(Seq(1)), Some(Seq(500)), None)
    );
}

#[test]
fn reopen_continues_seq_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut j, _) = Journal::open(dir.path(), opts(2000, FsyncPolicy::Batch)).expect("open");
        append_n(&mut j, 1, 100, 10);
    }
    let (mut j, rec) = Journal::open(dir.path(), opts(2000, FsyncPolicy::Batch)).expect("reopen");
    assert_eq!(rec.last_seq, Some(Seq(100)));
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.reason, None);
    assert_eq!(j.next_seq(), Seq(101));
    append_n(&mut j, 101, 50, 7);
    let h = j.handle();
    let all = read_all(&h, 1);
    assert_eq!(all.len(), 150);
    assert!(all
        .iter()
        .enumerate()
        .all(|(k, (s, p))| s.0 == k as u64 + 1 && *p == payload(s.0)));
    assert!(j.stats().fsyncs_total >= 8);
}

#[test]
fn empty_batch_and_oversized_record_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20, FsyncPolicy::Batch)).expect("open");
    append_n(&mut j, 1, 3, 3);
    assert!(matches!(
        j.append_batch(Vec::<Vec<u8>>::new()),
        Err(Error::EmptyBatch)
    ));
    let big = vec![0u8; journal::RECORD_BYTES_MAX + 1];
    let batch = vec![vec![1u8; 10], big];
    match j.append_batch(&batch) {
        Err(Error::RecordTooLarge { len, max }) => {
            assert_eq!(
                (len, max),
                (journal::RECORD_BYTES_MAX + 1, journal::RECORD_BYTES_MAX)
            )
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(j.next_seq(), Seq(4));
    let r = j.append_batch([b"x"]).expect("append");
    assert_eq!(
        r,
        SeqRange {
            first: Seq(4),
            last: Seq(4)
        }
    );
    let v = journal::verify(dir.path()).expect("verify");
    assert_eq!(v.records, 4);
}

#[test]
fn truncate_from_drops_suffix_and_lowers_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(800, FsyncPolicy::Batch)).expect("open");
    append_n(&mut j, 1, 100, 9);
    let h = j.handle();
    let mut rx = h.subscribe();
    rx.borrow_and_update();
    j.truncate_from(Seq(42)).expect("truncate");
    assert!(rx.has_changed().expect("open"));
    assert_eq!(*rx.borrow(), Some(Seq(41)));
    assert_eq!(h.durable_seq(), Some(Seq(41)));
    assert_eq!(j.next_seq(), Seq(42));
    assert_eq!(read_all(&h, 1).len(), 41);
    // Append continues at 42 with new content.
    let r = j.append_batch([b"new42".as_slice()]).expect("append");
    assert_eq!(r.first, Seq(42));
    assert_eq!(
        h.read(Seq(42), 1, 100).expect("read"),
        vec![(Seq(42), b"new42".to_vec())]
    );
    // Out of range.
    assert!(matches!(
        j.truncate_from(Seq(44)),
        Err(Error::OutOfRange { .. })
    ));
    // At next_seq: no-op.
    j.truncate_from(Seq(43)).expect("no-op");
    drop(j);
    let (j, rec) = Journal::open(dir.path(), opts(800, FsyncPolicy::Batch)).expect("reopen");
    assert_eq!(rec.last_seq, Some(Seq(42)));
    assert_eq!(rec.truncated_bytes, 0);
    let all = read_all(&j.handle(), 1);
    assert_eq!(all.len(), 42);
    assert_eq!(all[40].1, payload(41));
    // Truncate everything.
    let (mut j, _) = (j, ());
    j.truncate_from(Seq(1)).expect("truncate all");
    assert_eq!(j.next_seq(), Seq(1));
    assert_eq!(j.handle().durable_seq(), None);
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000001.seg"]);
}

#[test]
fn reset_to_on_empty_journal_starts_mid_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("open");
    j.reset_to(Seq(1001)).expect("reset");
    let h = j.handle();
    assert_eq!(h.first_seq(), Seq(1001));
    assert_eq!(h.durable_seq(), Some(Seq(1000)));
    assert_eq!(j.next_seq(), Seq(1001));
    assert_eq!(segment_files(dir.path()), vec!["00000000000000001001.seg"]);
    match h.read(Seq(5), 1, 100) {
        Err(Error::Gone { from, first }) => assert_eq!((from, first), (Seq(5), Seq(1001))),
        other => panic!("expected Gone, got {other:?}"),
    }
    append_n(&mut j, 1001, 10, 4);
    assert!(matches!(
        j.reset_to(Seq(5)),
        Err(Error::NotEmpty {
            first: Seq(1001),
            last: Seq(1010)
        })
    ));
    drop(j);
    let (j, rec) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("reopen");
    assert_eq!(rec.last_seq, Some(Seq(1010)));
    assert_eq!(j.handle().first_seq(), Seq(1001));
    assert_eq!(read_all(&j.handle(), 1001).len(), 10);
}

#[test]
fn reset_leftover_empty_segment_is_removed_at_open() {
    // A crash inside reset_to after the new segment exists but before the old one is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut j, _) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("open");
        j.reset_to(Seq(50)).expect("reset");
    }
    std::fs::write(dir.path().join("00000000000000000001.seg"), {
        // A valid empty segment header for seq 1, copied from a fresh journal.
        let d2 = tempfile::tempdir().expect("tempdir");
        drop(Journal::open(d2.path(), Options::default()).expect("open"));
        std::fs::read(d2.path().join("00000000000000000001.seg")).expect("read")
    })
    .expect("write");
    let (j, rec) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("reopen");
    assert_eq!(rec.segments, 1);
    assert_eq!(j.next_seq(), Seq(50));
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000050.seg"]);
}

#[test]
fn retention_by_size_keeps_what_a_registered_reader_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(1000, FsyncPolicy::Never);
    o.retention.bytes_max = Some(3000);
    let (mut j, _) = Journal::open(dir.path(), o).expect("open");
    let h = j.handle();
    let guard = h.register_reader("replication", Seq(1));
    append_n(&mut j, 1, 200, 10);
    let segs_before = j.stats().segments;
    assert!(segs_before > 5);
    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
    assert_eq!(rep.segments_deleted, 0);
    assert_eq!(rep.held_by.as_deref(), Some("replication"));
    assert_eq!(h.first_seq(), Seq(1));
    // The reader moves on: segments wholly below its position go, no further.
    guard.advance(Seq(100));
    guard.advance(Seq(50)); // never backwards
    assert_eq!(guard.position(), Seq(100));
    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
    assert!(rep.segments_deleted > 0);
    assert_eq!(rep.held_by.as_deref(), Some("replication"));
    let first = h.first_seq();
    assert!(first <= Seq(100) && first > Seq(1), "first {first}");
    assert_eq!(rep.first_seq, first);
    assert!(h.read(Seq(100), 1, 1).is_ok());
    match h.read(Seq(1), 1, 1) {
        Err(Error::Gone { from, first: f }) => assert_eq!((from, f), (Seq(1), first)),
        other => panic!("expected Gone, got {other:?}"),
    }
    // Without readers, size rules alone; the active segment always stays.
    drop(guard);
    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
    assert_eq!(rep.held_by, None);
    let st = j.stats();
    assert!(st.bytes <= 3000, "bytes {}", st.bytes);
    assert!(st.segments >= 1);
    let all = read_all(&h, h.first_seq().0);
    assert_eq!(all.last().map(|r| r.0), Some(Seq(200)));
    assert_eq!(all.len() as u64, 200 - h.first_seq().0 + 1);
    drop(j);
    let (j, _) = Journal::open(dir.path(), o).expect("reopen");
    assert_eq!(j.handle().first_seq(), first_after(&all));
}

fn first_after(all: &[(Seq, Vec<u8>)]) -> Seq {
    all[0].0
}

#[test]
fn retention_by_age_uses_record_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(1000, FsyncPolicy::Never);
    o.retention.age_max_ms = Some(60_000);
    let (mut j, _) = Journal::open(dir.path(), o).expect("open");
    append_n(&mut j, 1, 100, 10);
    let segs = j.stats().segments;
    // Now: nothing is a minute old.
    assert_eq!(
        j.enforce_retention(SystemTime::now())
            .expect("retention")
            .segments_deleted,
        0
    );
    // An hour later: all but the active segment.
    let later = SystemTime::now() + Duration::from_secs(3600);
    let h = j.handle();
    let guard = h.register_reader("stream", Seq(30));
    let rep = j.enforce_retention(later).expect("retention");
    assert!(rep.segments_deleted > 0 && rep.segments_deleted < segs - 1);
    assert!(h.first_seq() <= Seq(30));
    drop(guard);
    let rep = j.enforce_retention(later).expect("retention");
    assert!(rep.segments_deleted > 0);
    assert_eq!(j.stats().segments, 1);
    assert!(
        h.read(h.first_seq(), 1000, 1 << 20)
            .expect("read")
            .last()
            .map(|r| r.0)
            == Some(Seq(100))
    );
}

#[test]
fn interval_policy_publishes_on_sync_if_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) =
        Journal::open(dir.path(), opts(1 << 20, FsyncPolicy::Interval { ms: 50 })).expect("open");
    let h = j.handle();
    let t0 = Instant::now();
    j.append_batch([b"a", b"b"]).expect("append");
    // Right after open the interval has not elapsed: written, not durable, not readable.
    if t0.elapsed() < Duration::from_millis(50) {
        assert_eq!(h.durable_seq(), None);
        assert!(h.read(Seq(1), 10, 100).expect("read").is_empty());
        assert!(!j
            .sync_if_due(Instant::now() - Duration::from_millis(60).min(t0.elapsed()))
            .expect("not due"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if j.sync_if_due(Instant::now()).expect("sync") || h.durable_seq() == Some(Seq(2)) {
            break;
        }
        assert!(Instant::now() < deadline, "interval sync never became due");
        std::thread::yield_now();
    }
    assert_eq!(h.durable_seq(), Some(Seq(2)));
    assert!(!j.sync_if_due(Instant::now()).expect("nothing waiting"));
    // Explicit sync publishes at once.
    j.append_batch([b"c"]).expect("append");
    j.sync().expect("sync");
    assert_eq!(h.durable_seq(), Some(Seq(3)));
}

#[test]
fn batch_policy_syncs_each_batch_and_never_policy_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20, FsyncPolicy::Batch)).expect("open");
    for _ in 0..5 {
        j.append_batch([b"x"; 10]).expect("append");
    }
    assert_eq!(j.stats().fsyncs_total, 5);
    assert_eq!(j.handle().durable_seq(), Some(Seq(50)));
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir2.path(), opts(1 << 20, FsyncPolicy::Never)).expect("open");
    for _ in 0..5 {
        j.append_batch([b"x"; 10]).expect("append");
    }
    assert_eq!(j.stats().fsyncs_total, 0);
    assert_eq!(j.handle().durable_seq(), Some(Seq(50)));
    assert!(!j.sync_if_due(Instant::now()).expect("never"));
}

#[test]
fn concurrent_readers_see_only_a_durable_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(4096, FsyncPolicy::Never)).expect("open");
    let total = 3000u64;
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let h = j.handle();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut next = 1u64;
                while next <= total {
                    assert!(Instant::now() < deadline, "reader stuck at {next}");
                    let durable = h.durable_seq().map_or(0, |s| s.0);
                    let got = h.read(Seq(next), 100, 8192).expect("read");
                    for (s, p) in &got {
                        assert_eq!(s.0, next);
                        assert!(s.0 <= h.durable_seq().map_or(0, |d| d.0));
                        assert_eq!(*p, payload(s.0));
                        next += 1;
                    }
                    if got.is_empty() {
                        assert!(next > durable, "no records below durable {durable}");
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    append_n(&mut j, 1, total, 17);
    for r in readers {
        r.join().expect("reader thread");
    }
}

#[tokio::test]
async fn tail_wakes_on_append_and_closes_with_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("open");
    let h = j.handle();
    let mut tail = h.tail(Seq(1));
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match tail.next_batch(10, 1 << 20).await {
                Ok(b) => got.extend(b),
                Err(Error::Closed) => return got,
                Err(e) => panic!("tail: {e}"),
            }
        }
    });
    let writer = std::thread::spawn(move || {
        for i in 0..20u64 {
            j.append_batch([payload(2 * i + 1), payload(2 * i + 2)])
                .expect("append");
        }
        // dropped here: closes tails
    });
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("tail finished before the deadline")
        .expect("tail task");
    writer.join().expect("writer");
    assert_eq!(got.len(), 40);
    assert!(got
        .iter()
        .enumerate()
        .all(|(k, (s, p))| s.0 == k as u64 + 1 && *p == payload(s.0)));
}

#[tokio::test]
async fn tail_waits_then_returns_new_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Never)).expect("open");
    j.append_batch([b"one"]).expect("append");
    let mut tail = j.handle().tail(Seq(2));
    // Nothing at 2 yet: the future stays pending.
    let pending = tokio::time::timeout(Duration::from_millis(20), tail.next_batch(10, 100)).await;
    assert!(pending.is_err(), "tail returned before seq 2 existed");
    let waiter = tokio::spawn(async move { (tail.next_batch(10, 100).await, tail) });
    j.append_batch([b"two".as_slice(), b"three"])
        .expect("append");
    let (got, mut tail) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken before the deadline")
        .expect("task");
    assert_eq!(
        got.expect("batch"),
        vec![(Seq(2), b"two".to_vec()), (Seq(3), b"three".to_vec())]
    );
    assert_eq!(tail.position(), Seq(4));
    // A truncation below what the tail returned ends it.
    j.truncate_from(Seq(3)).expect("truncate");
    j.append_batch([b"THREE".as_slice(), b"four"])
        .expect("append");
    match tail.next_batch(10, 100).await {
        Err(Error::Truncated { position, .. }) => assert_eq!(position, Seq(4)),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn reset_interrupted_after_removing_old_segments_completes_at_open() {
    // reset_to prepares `N.seg.tmp`, removes the old segments, then renames: a crash before
    // the rename leaves only the temporary file, which open promotes.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut j, _) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("open");
        append_n(&mut j, 1, 30, 10);
        j.truncate_from(Seq(1)).expect("wipe");
        j.reset_to(Seq(7))
            .expect("reset backwards of nothing: to 7");
    }
    let seg = dir.path().join("00000000000000000007.seg");
    std::fs::rename(&seg, dir.path().join("00000000000000000007.seg.tmp")).expect("rename");
    let (mut j, rec) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("open");
    assert_eq!(rec.last_seq, None);
    assert_eq!(j.next_seq(), Seq(7));
    assert_eq!(j.handle().first_seq(), Seq(7));
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000007.seg"]);
    assert_eq!(j.append_batch([b"seven"]).expect("append").first, Seq(7));
    // With a segment present, a stray temporary file is an interrupted rotation: removed.
    std::fs::write(dir.path().join("00000000000000000099.seg.tmp"), b"x").expect("write");
    drop(j);
    let (j, _) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("open");
    assert_eq!(j.next_seq(), Seq(8));
    assert!(!dir.path().join("00000000000000000099.seg.tmp").exists());
}

#[test]
fn reset_backwards_after_wipe() {
    // The peer's disk was replaced: its journal restarts at 1, our copy is wiped and reset.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(500, FsyncPolicy::Batch)).expect("open");
    append_n(&mut j, 1, 50, 10);
    let h = j.handle();
    let mut tail = h.tail(Seq(1));
    j.truncate_from(h.first_seq()).expect("wipe");
    j.reset_to(Seq(1000)).expect("reset");
    j.reset_to(Seq(1)).expect("reset back");
    assert_eq!(h.first_seq(), Seq(1));
    assert_eq!(h.durable_seq(), None);
    append_n(&mut j, 1, 5, 5);
    assert_eq!(read_all(&h, 1).len(), 5);
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000001.seg"]);
    // A tail created before the wipe that had returned nothing yet just continues.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let got = rt.block_on(tail.next_batch(100, 1 << 20)).expect("tail");
    assert_eq!(got.len(), 5);
}

#[tokio::test]
async fn tail_is_unaffected_by_a_cut_above_what_it_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(1000, FsyncPolicy::Batch)).expect("open");
    append_n(&mut j, 1, 6, 6);
    let mut tail = j.handle().tail(Seq(1));
    let got = tail.next_batch(3, 1 << 20).await.expect("batch");
    assert_eq!(got.last().map(|r| r.0), Some(Seq(3)));
    j.truncate_from(Seq(5)).expect("cut above the tail");
    j.append_batch([b"new5".as_slice()]).expect("append");
    let got = tail
        .next_batch(10, 1 << 20)
        .await
        .expect("batch after the cut");
    assert_eq!(got, vec![(Seq(4), payload(4)), (Seq(5), b"new5".to_vec())]);
}

#[test]
fn readers_racing_retention_get_correct_records_or_gone() {
    // On tmpfs when there is one: ~300 rotations, each with directory fsyncs.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().expect("tempdir"),
    };
    let mut o = opts(600, FsyncPolicy::Never);
    o.retention.bytes_max = Some(3000);
    let (mut j, _) = Journal::open(dir.path(), o).expect("open");
    let total = 20_000u64;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|k| {
            let h = j.handle();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut checked = 0u64;
                let mut gone = 0u64;
                let mut pos = 1u64 + k;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    match h.read(Seq(pos), 50, 4096) {
                        Ok(got) => {
                            for (s, p) in &got {
                                assert_eq!(*p, payload(s.0), "seq {s}");
                                checked += 1;
                            }
                            pos = got.last().map_or(pos, |r| r.0 .0 + 1);
                        }
                        Err(Error::Gone { first, .. }) => {
                            gone += 1;
                            pos = first.0;
                        }
                        Err(e) => panic!("read {pos}: {e}"),
                    }
                    std::thread::yield_now();
                }
                (checked, gone)
            })
        })
        .collect();
    let mut i = 1;
    while i <= total {
        let n = 7.min(total - i + 1);
        j.append_batch((i..i + n).map(payload)).expect("append");
        j.enforce_retention(SystemTime::now()).expect("retention");
        i += n;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for r in readers {
        let (checked, _gone) = r.join().expect("reader");
        assert!(checked > 0);
    }
    assert!(j.handle().first_seq() > Seq(total / 2));
    assert!(j.stats().bytes <= 3000 + 600);
}
