//! Compressed segments on a real directory: what is written compressed reads back the same,
//! cuts into a compressed segment, retention by compressed size, the states a crash leaves
//! between a segment and its compressed copy, and damage inside a compressed block.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use journal::{Compression, Error, FsyncPolicy, Journal, JournalHandle, Options, Retention};
use twinrx_types::Seq;

fn opts(segment_bytes_max: u64) -> Options {
    Options {
        segment_bytes_max,
        fsync: FsyncPolicy::Never,
        retention: Retention::default(),
        compression: Compression::Zstd { level: 3 },
    }
}

/// Syslog-like records: similar text, varying numbers (they compress as real logs do).
fn record(seq: u64) -> Vec<u8> {
    format!(
        "<134>1 2026-12-07T10:{:02}:{:02}.{:03}Z router-{} ifmgr 1042 LINK - interface ge-0/0/{} changed state to {} (seq {seq})",
        seq / 60 % 60,
        seq % 60,
        seq % 1000,
        seq % 17,
        seq % 48,
        if seq % 3 == 0 { "down" } else { "up" }
    )
    .into_bytes()
}

fn append(j: &mut Journal, from: u64, n: u64) {
    let mut i = from;
    while i < from + n {
        let end = (i + 100).min(from + n);
        let batch: Vec<Vec<u8>> = (i..end).map(record).collect();
        j.append_batch(&batch).expect("append");
        i = end;
    }
}

fn read_all(h: &JournalHandle, from: u64) -> Vec<(Seq, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = Seq(from);
    loop {
        let got = h.read(next, 500, 1 << 20).expect("read");
        match got.last() {
            Some(&(s, _)) => next = s.next(),
            None => return out,
        }
        out.extend(got);
    }
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn assert_records(h: &JournalHandle, from: u64, to_inclusive: u64) {
    let got = read_all(h, from);
    assert_eq!(got.len() as u64, to_inclusive + 1 - from);
    for (k, (s, p)) in got.iter().enumerate() {
        let seq = from + k as u64;
        assert_eq!(*s, Seq(seq));
        assert_eq!(p, &record(seq), "record {seq}");
    }
}

#[test]
fn sealed_segments_are_compressed_and_read_back_the_same_before_and_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1 MiB segments, several blocks each.
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20)).expect("open");
    append(&mut j, 1, 30_000);
    j.wait_compacted();
    let z = files(dir.path(), ".zseg");
    let s = files(dir.path(), ".seg");
    assert!(z.len() >= 3, "compressed segments: {z:?}");
    assert_eq!(
        s.len(),
        1,
        "only the active segment stays as written: {s:?}"
    );
    let st = j.stats();
    assert_eq!(st.segments, z.len() + 1);
    assert_eq!(st.segments_compressed, z.len());
    assert_eq!(st.compress_errors_total, 0);
    let on_disk: u64 = z
        .iter()
        .chain(&s)
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(
        st.bytes, on_disk,
        "stats count the files as they are on disk"
    );
    let active = std::fs::metadata(&s[0]).expect("stat").len();
    assert!(
        (st.bytes - active) * 4 < st.bytes_as_written - active,
        "sealed segments compressed to {} of {} bytes as written",
        st.bytes - active,
        st.bytes_as_written - active
    );
    let h = j.handle();
    assert_records(&h, 1, 30_000);
    // Reads starting anywhere, including mid-block and at block and segment boundaries.
    for from in [1, 2, 999, 4_321, 12_345, 29_999, 30_000] {
        let got = h.read(Seq(from), 3, 1 << 20).expect("read");
        assert_eq!(got[0], (Seq(from), record(from)));
    }
    drop(h);
    drop(j);
    let v = journal::verify(dir.path()).expect("verify");
    assert_eq!(v.records, 30_000);
    assert_eq!(v.segments, z.len() + 1);
    let (mut j, rec) = Journal::open(dir.path(), opts(1 << 20)).expect("reopen");
    assert_eq!(rec.last_seq, Some(Seq(30_000)));
    assert_eq!(j.stats().segments_compressed, z.len());
    append(&mut j, 30_001, 100);
    assert_records(&j.handle(), 1, 30_100);
}

#[test]
fn a_cut_into_a_compressed_segment_rewrites_it_as_written_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut j, _) = Journal::open(dir.path(), opts(256 << 10)).expect("open");
    append(&mut j, 1, 10_000);
    j.wait_compacted();
    let before = j.stats();
    assert!(before.segments_compressed >= 3);
    // Into the middle of the second segment, compressed.
    let h = j.handle();
    let cut = 3_000;
    j.truncate_from(Seq(cut)).expect("truncate");
    assert_eq!(j.next_seq(), Seq(cut));
    assert_eq!(h.durable_seq(), Some(Seq(cut - 1)));
    assert_records(&h, 1, cut - 1);
    let st = j.stats();
    assert!(st.segments < before.segments);
    assert_eq!(
        st.segments_compressed,
        st.segments - 1,
        "only the cut one is as written"
    );
    append(&mut j, cut, 5_000);
    assert_records(&h, 1, cut + 4_999);
    drop(h);
    drop(j);
    assert_eq!(
        journal::verify(dir.path()).expect("verify").records,
        cut + 4_999
    );
    let (j, _) = Journal::open(dir.path(), opts(256 << 10)).expect("reopen");
    assert_records(&j.handle(), 1, cut + 4_999);
}

#[test]
fn retention_counts_bytes_as_written_and_deletes_compressed_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(256 << 10);
    o.retention.bytes_max = Some(1 << 20);
    let (mut j, _) = Journal::open(dir.path(), o).expect("open");
    append(&mut j, 1, 40_000);
    j.wait_compacted();
    let st = j.stats();
    // As written, 40,000 records take ~5 MiB: far over the limit; compressed, they would fit.
    assert!(st.bytes_as_written > 4 << 20, "{st:?}");
    assert!(st.bytes < 1 << 20, "{st:?}");
    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
    let st = j.stats();
    // The limit holds the records as written: between the limit less one segment and it.
    assert!(st.bytes_as_written <= 1 << 20, "{st:?} after {rep:?}");
    assert!(
        st.bytes_as_written > (1 << 20) - (256 << 10),
        "{st:?} after {rep:?}"
    );
    assert!(st.bytes <= st.bytes_as_written, "{st:?}");
    assert!(rep.segments_deleted > 0);
    let first = j.handle().first_seq().0;
    assert_eq!(rep.first_seq, Seq(first));
    assert_records(&j.handle(), first, 40_000);
    let z_left = files(dir.path(), ".zseg").len();
    assert_eq!(z_left, st.segments_compressed);
    assert!(z_left > 0, "{st:?}");
    assert!(files(dir.path(), ".zseg.tmp").is_empty());
    // The compactor's progress does not move the limit: a second pass deletes nothing.
    let again = j.enforce_retention(SystemTime::now()).expect("retention");
    assert_eq!(again.segments_deleted, 0, "{again:?}");
}

/// Runs `damage` on a closed journal of 30,000 records: three compressed segments of
/// several blocks each, and the active one.
fn with_compressed(damage: impl FnOnce(&Path, &[PathBuf], &[PathBuf])) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut j, _) = Journal::open(dir.path(), opts(1 << 20)).expect("open");
        append(&mut j, 1, 30_000);
        j.wait_compacted();
    }
    let z = files(dir.path(), ".zseg");
    let s = files(dir.path(), ".seg");
    assert!(z.len() >= 3 && s.len() == 1, "{z:?} {s:?}");
    damage(dir.path(), &z, &s);
    dir
}

#[test]
fn a_crash_between_rename_and_removal_keeps_the_segment_as_written() {
    // The compactor renamed the compressed copy into place and died before removing the
    // segment: both exist, and a leftover of another, interrupted compression.
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = Options {
        compression: Compression::None,
        ..opts(256 << 10)
    };
    {
        let (mut j, _) = Journal::open(dir.path(), plain).expect("open");
        append(&mut j, 1, 8_000);
    }
    let seg = files(dir.path(), ".seg")[0].clone();
    let twin = std::fs::read(&seg).expect("read");
    {
        let (j, _) = Journal::open(dir.path(), opts(256 << 10)).expect("open");
        j.wait_compacted();
    }
    let zseg = PathBuf::from(seg.to_string_lossy().replace(".seg", ".zseg"));
    assert!(zseg.exists() && !seg.exists());
    std::fs::write(&seg, twin).expect("put the segment back");
    let leftover = dir.path().join("00000000000000000009.zseg.tmp");
    std::fs::write(&leftover, b"partial").expect("write");

    let (j, _) = Journal::open(dir.path(), opts(256 << 10)).expect("open");
    assert!(
        !zseg.exists(),
        "the compressed copy beside its segment is removed"
    );
    assert!(seg.exists());
    assert!(!leftover.exists(), "leftover removed");
    assert_records(&j.handle(), 1, 8_000);
    // And the compactor compresses it again.
    j.wait_compacted();
    assert!(zseg.exists() && !seg.exists());
    assert_records(&j.handle(), 1, 8_000);
}

#[test]
fn a_compressed_segment_left_last_is_decompressed_at_open_and_appended_to() {
    // A cut into a compressed segment removes the newer segments first; a crash before the
    // rewrite leaves the compressed one last.
    let dir = with_compressed(|_, z, s| {
        for f in &z[2..] {
            std::fs::remove_file(f).expect("remove");
        }
        std::fs::remove_file(&s[0]).expect("remove");
    });
    let z = files(dir.path(), ".zseg");
    assert_eq!(z.len(), 2);
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20)).expect("open");
    assert_eq!(
        files(dir.path(), ".zseg").len(),
        1,
        "the last one is as written again"
    );
    let next = j.next_seq().0;
    append(&mut j, next, 1_000);
    assert_records(&j.handle(), 1, next + 999);
}

#[test]
fn damage_in_a_compressed_block_is_corruption_naming_the_file() {
    let dir = with_compressed(|_, z, _| {
        // Inside a block past the first (open checks each segment's first record).
        let mut bytes = std::fs::read(&z[1]).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&z[1], bytes).expect("write");
    });
    let z = files(dir.path(), ".zseg");
    let (j, _) = Journal::open(dir.path(), opts(1 << 20)).expect("open");
    let h = j.handle();
    let mut seen = None;
    let mut next = Seq(1);
    loop {
        match h.read(next, 500, 1 << 20) {
            Ok(got) if got.is_empty() => break,
            Ok(got) => next = got.last().expect("non-empty").0.next(),
            Err(e) => {
                seen = Some(e);
                break;
            }
        }
    }
    match seen {
        Some(Error::Corrupt {
            segment, reason, ..
        }) => {
            assert_eq!(segment, z[1]);
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("expected corruption in {}, got {other:?}", z[1].display()),
    }
    drop(h);
    drop(j);
    match journal::verify(dir.path()) {
        Err(Error::Corrupt { segment, .. }) => assert_eq!(segment, z[1]),
        other => panic!("verify: {other:?}"),
    }
}

#[test]
fn a_truncated_compressed_segment_is_refused_at_open() {
    let dir = with_compressed(|_, z, _| {
        let len = std::fs::metadata(&z[0]).expect("stat").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&z[0])
            .expect("open");
        f.set_len(len - 10).expect("truncate");
    });
    match Journal::open(dir.path(), opts(1 << 20)) {
        Err(Error::BadSegment { segment, reason }) => {
            assert!(
                segment.to_string_lossy().ends_with(".zseg"),
                "{}",
                segment.display()
            );
            assert!(reason.contains("trailer"), "{reason}");
        }
        Ok(_) => panic!("opened a journal with a truncated compressed segment"),
        Err(e) => panic!("unexpected error {e}"),
    }
}
