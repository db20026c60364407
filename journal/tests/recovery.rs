//! Recovery on open: torn tails are truncated and reported, corruption is an error naming the
//! segment and the byte offset, zero-filled tails end the data.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use journal::{Error, FsyncPolicy, Journal, Options, Retention};
use twinrx_types::Seq;

const SEGMENT_HEADER: u64 = 32;
const RECORD_HEADER: u64 = 24;

fn opts(segment_bytes_max: u64) -> Options {
    Options {
        segment_bytes_max,
        fsync: FsyncPolicy::Never,
        retention: Retention::default(),
        compression: journal::Compression::None,
    }
}

fn payload(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; 20 + (i % 5) as usize]
}

/// Writes records 1..=n, one per batch, into `dir`; returns the segment files in order.
fn build(dir: &Path, n: u64, segment_bytes_max: u64) -> Vec<PathBuf> {
    let (mut j, _) = Journal::open(dir, opts(segment_bytes_max)).expect("open");
    for i in 1..=n {
        j.append_batch([payload(i)]).expect("append");
    }
    segments(dir)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Byte offset of each record in a single-segment journal of records 1..=n.
fn offsets(n: u64) -> Vec<u64> {
    let mut off = SEGMENT_HEADER;
    (1..=n)
        .map(|i| {
            let o = off;
            off += RECORD_HEADER + payload(i).len() as u64;
            o
        })
        .collect()
}

fn read_all(j: &Journal) -> Vec<(Seq, Vec<u8>)> {
    let h = j.handle();
    h.read(h.first_seq(), usize::MAX, usize::MAX)
        .expect("read all")
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(len)
        .expect("set_len");
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_is_truncated_and_reported() {
    let n = 10;
    let offs = offsets(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), n, 1 << 20);
    assert_eq!(files.len(), 1);
    let full = std::fs::read(&files[0]).expect("read");
    let last_start = offs[n as usize - 1];
    for cut in last_start + 1..full.len() as u64 {
        std::fs::write(&files[0], &full[..cut as usize]).expect("write");
        let (j, rec) = Journal::open(dir.path(), opts(1 << 20))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(rec.last_seq, Some(Seq(n - 1)), "cut at {cut}");
        assert_eq!(rec.truncated_bytes, cut - last_start, "cut at {cut}");
        assert_eq!(rec.truncated_segment.as_deref(), Some(files[0].as_path()));
        assert!(rec.reason.is_some());
        assert_eq!(
            std::fs::metadata(&files[0]).expect("stat").len(),
            last_start
        );
        let all = read_all(&j);
        assert_eq!(all.len() as u64, n - 1);
        assert!(all.iter().all(|(s, p)| *p == payload(s.0)));
        assert_eq!(j.next_seq(), Seq(n));
    }
    // A cut exactly at a record boundary loses nothing that was there.
    std::fs::write(&files[0], &full[..last_start as usize]).expect("write");
    let (_, rec) = Journal::open(dir.path(), opts(1 << 20)).expect("open");
    assert_eq!((rec.last_seq, rec.truncated_bytes), (Some(Seq(n - 1)), 0));
}

#[test]
fn bit_flip_in_the_middle_of_the_last_segment_is_corruption_naming_file_and_offset() {
    let n = 10;
    let offs = offsets(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), n, 1 << 20);
    // Record 4: a payload byte, then (after restoring) the length field.
    for (at, bit) in [
        (offs[3] + RECORD_HEADER + 3, 0u8),
        (offs[3] + 5, 6),
        (offs[3] + 9, 1),
        (offs[3] + 1, 7),
    ] {
        let before = std::fs::read(&files[0]).expect("read");
        flip_bit(&files[0], at, bit);
        match Journal::open(dir.path(), opts(1 << 20)) {
            Err(Error::Corrupt {
                segment,
                offset,
                seq,
                reason,
            }) => {
                assert_eq!(segment, files[0]);
                assert_eq!(offset, offs[3], "flip at {at}: {reason}");
                assert_eq!(seq, Seq(4));
                assert!(reason.contains("valid record follows"), "{reason}");
            }
            other => panic!(
                "flip at {at}: expected Corrupt, got {:?}",
                other.map(|r| r.1)
            ),
        }
        match journal::verify(dir.path()) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, offs[3]),
            other => panic!("verify: expected Corrupt, got {other:?}"),
        }
        // Nothing was changed by the failed open.
        assert_eq!(
            std::fs::metadata(&files[0]).expect("stat").len(),
            before.len() as u64
        );
        std::fs::write(&files[0], before).expect("restore");
    }
    let (_, rec) = Journal::open(dir.path(), opts(1 << 20)).expect("restored journal opens");
    assert_eq!(rec.last_seq, Some(Seq(n)));
}

#[test]
fn error_message_names_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), 5, 1 << 20);
    flip_bit(&files[0], offsets(5)[1] + 30, 2);
    let msg = match Journal::open(dir.path(), opts(1 << 20)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a corrupt journal"),
    };
    assert!(msg.contains("00000000000000000001.seg"), "{msg}");
    assert!(msg.contains(&format!("offset {}", offsets(5)[1])), "{msg}");
}

#[test]
fn zero_filled_tail_ends_the_data() {
    let n = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), n, 1 << 20);
    let len = std::fs::metadata(&files[0]).expect("stat").len();
    // Preallocation / a crash after the size grew but before the data reached the disk.
    set_len(&files[0], len + 4096);
    let (mut j, rec) = Journal::open(dir.path(), opts(1 << 20)).expect("open");
    assert_eq!(rec.last_seq, Some(Seq(n)));
    assert_eq!(rec.truncated_bytes, 4096);
    assert_eq!(rec.reason.as_deref(), Some("zero-filled tail"));
    assert_eq!(std::fs::metadata(&files[0]).expect("stat").len(), len);
    assert_eq!(j.append_batch([b"next"]).expect("append").first, Seq(n + 1));
    drop(j);
    // Zeros over the last record too (its pages never reached the disk).
    let offs = offsets(n);
    let mut bytes = std::fs::read(&files[0]).expect("read");
    let last = offs[n as usize - 1] as usize;
    for b in &mut bytes[last..] {
        *b = 0;
    }
    std::fs::write(&files[0], &bytes).expect("write");
    let (j, rec) = Journal::open(dir.path(), opts(1 << 20)).expect("open");
    assert_eq!(rec.last_seq, Some(Seq(n - 1)));
    assert_eq!(rec.reason.as_deref(), Some("zero-filled tail"));
    assert_eq!(read_all(&j).len() as u64, n - 1);
}

#[test]
fn zeros_followed_by_a_valid_record_are_corruption() {
    let n = 6;
    let offs = offsets(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), n, 1 << 20);
    let mut bytes = std::fs::read(&files[0]).expect("read");
    let (a, b) = (offs[2] as usize, offs[3] as usize);
    for x in &mut bytes[a..b] {
        *x = 0;
    }
    std::fs::write(&files[0], &bytes).expect("write");
    match Journal::open(dir.path(), opts(1 << 20)) {
        Err(Error::Corrupt { offset, seq, .. }) => assert_eq!((offset, seq), (offs[2], Seq(3))),
        other => panic!("expected Corrupt, got {:?}", other.map(|r| r.1)),
    }
}

#[test]
fn corruption_in_an_older_segment_is_reported_on_read_and_by_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), 40, 200);
    assert!(files.len() > 3);
    // Second record of the first segment (records of 44..48 bytes: 4 per 200-byte segment).
    let at = SEGMENT_HEADER + RECORD_HEADER + payload(1).len() as u64;
    flip_bit(&files[0], at + RECORD_HEADER + 1, 4);
    match journal::verify(dir.path()) {
        Err(Error::Corrupt {
            segment,
            offset,
            seq,
            ..
        }) => {
            assert_eq!((segment, offset, seq), (files[0].clone(), at, Seq(2)))
        }
        other => panic!("verify: expected Corrupt, got {other:?}"),
    }
    // Open scans only the last segment (older ones were fsynced whole at rotation)...
    let (j, rec) = Journal::open(dir.path(), opts(200)).expect("open");
    assert_eq!(rec.last_seq, Some(Seq(40)));
    // ...and a read never returns the damaged record.
    match j.handle().read(Seq(1), 10, 1 << 20) {
        Err(Error::Corrupt {
            segment,
            offset,
            seq,
            ..
        }) => {
            assert_eq!((segment, offset, seq), (files[0].clone(), at, Seq(2)))
        }
        other => panic!("read: expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        j.handle()
            .read(Seq(1), 1, 1 << 20)
            .expect("seq 1 is intact")
            .len(),
        1
    );
}

#[test]
fn damaged_last_record_of_an_older_segment_is_corruption_not_a_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), 20, 200);
    let len0 = std::fs::metadata(&files[0]).expect("stat").len();
    set_len(&files[0], len0 - 3);
    match journal::verify(dir.path()) {
        Err(Error::Corrupt {
            segment, reason, ..
        }) => {
            assert_eq!(segment, files[0]);
            assert!(reason.contains("not the last"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn torn_segment_header_of_the_last_segment_is_rewritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), 20, 200);
    let last = files.last().expect("segments");
    let first_of_last: u64 = last
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("numeric name");
    set_len(last, 10);
    let (j, rec) = Journal::open(dir.path(), opts(200)).expect("open");
    assert_eq!(rec.reason.as_deref(), Some("torn segment header"));
    assert_eq!(rec.truncated_bytes, 10);
    assert_eq!(rec.last_seq, Some(Seq(first_of_last - 1)));
    assert_eq!(j.next_seq(), Seq(first_of_last));
    assert_eq!(read_all(&j).len() as u64, first_of_last - 1);
}

#[test]
fn bad_header_and_interrupted_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), 20, 200);
    std::fs::write(dir.path().join("00000000000000000099.seg.tmp"), b"partial").expect("write");
    flip_bit(&files[0], 2, 0); // magic
    match Journal::open(dir.path(), opts(200)) {
        Err(Error::BadSegment { segment, reason }) => {
            assert_eq!(segment, files[0]);
            assert!(reason.contains("magic"), "{reason}");
        }
        other => panic!("expected BadSegment, got {:?}", other.map(|r| r.1)),
    }
    flip_bit(&files[0], 2, 0);
    let (_, rec) = Journal::open(dir.path(), opts(200)).expect("open");
    assert_eq!(rec.last_seq, Some(Seq(20)));
    assert!(!dir.path().join("00000000000000000099.seg.tmp").exists());
    // A renamed segment (name and header disagree).
    std::fs::rename(&files[0], dir.path().join("00000000000000000000.seg")).expect("rename");
    assert!(matches!(
        Journal::open(dir.path(), opts(200)),
        Err(Error::BadSegment { .. })
    ));
}

#[test]
fn verify_reports_a_torn_tail_without_changing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = build(dir.path(), 5, 1 << 20);
    let len = std::fs::metadata(&files[0]).expect("stat").len();
    set_len(&files[0], len - 7);
    let v = journal::verify(dir.path()).expect("verify");
    let last_start = offsets(5)[4];
    assert_eq!(v.records, 4);
    assert_eq!((v.first_seq, v.last_seq), (Some(Seq(1)), Some(Seq(4))));
    let line = v.to_string();
    assert!(
        line.starts_with("ok: 1 segments, 4 records (seqs 1..=4), "),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "torn tail in {} at offset {last_start}",
            files[0].display()
        )),
        "{line}"
    );
    let t = v.torn_tail.expect("torn tail reported");
    assert_eq!(
        (t.segment, t.offset, t.bytes),
        (files[0].clone(), last_start, len - 7 - last_start)
    );
    assert_eq!(std::fs::metadata(&files[0]).expect("stat").len(), len - 7);
}
