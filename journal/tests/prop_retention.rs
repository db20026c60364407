//! Property: retention with registered readers, some of them capped
//! (`register_reader_capped`), under random appends, reader moves and reopens:
//! - never deletes a segment holding a seq at or after the position of a reader that is within
//!   its ceiling (an uncapped reader is always within);
//! - a capped reader past its ceiling is deleted past only when it holds more than its ceiling,
//!   and then it is told (`lapsed`, and `RetentionReport::lapsed` names it);
//! - what remains is contiguous: seqs `first_seq..next_seq`, each with the bytes appended;
//! - a reopen after deletions finds the same first seq and the same records;
//! - without a holding reader, the journal ends within `bytes_max` (or only its active segment
//!   remains).

use std::path::Path;
use std::time::SystemTime;

use journal::{Compression, FsyncPolicy, Journal, JournalHandle, Options, ReaderGuard, Retention};
use proptest::prelude::*;
use proptest::sample::Index;
use twinrx_types::Seq;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Register { at: Index, cap: Option<u64> },
    Advance { reader: Index, to: Index },
    Drop(Index),
    Retention,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..200, 1..20).prop_map(Op::Append),
        2 => (any::<Index>(), prop::option::of(200u64..4000))
            .prop_map(|(at, cap)| Op::Register { at, cap }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(reader, to)| Op::Advance { reader, to }),
        1 => any::<Index>().prop_map(Op::Drop),
        4 => Just(Op::Retention),
        1 => Just(Op::Reopen),
    ]
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// Record `seq`'s bytes: its seq, then `len` filler bytes (the model keeps only the length).
fn record(seq: u64, len: usize) -> Vec<u8> {
    let mut r = seq.to_be_bytes().to_vec();
    r.resize(8 + len, (seq % 251) as u8);
    r
}

struct Reader {
    name: String,
    guard: ReaderGuard,
    cap: Option<u64>,
}

/// Every record on disk, `first_seq..next_seq`, is the one appended, in order without gaps.
fn check_contents(h: &JournalHandle, lens: &[usize], next: u64) {
    let first = h.first_seq().0;
    let mut seq = first;
    while seq < next {
        let recs = h.read(Seq(seq), 64, usize::MAX).expect("read retained");
        assert!(
            !recs.is_empty(),
            "seq {seq} below next {next} is not readable"
        );
        for (s, payload) in recs {
            assert_eq!(s.0, seq, "seqs are contiguous");
            assert_eq!(payload, record(seq, lens[(seq - 1) as usize]));
            seq += 1;
        }
    }
    assert_eq!(seq, next);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn retention_never_deletes_what_a_reader_within_its_ceiling_holds(
        ops in prop::collection::vec(op(), 1..50),
        segment_bytes_max in 300u64..2000,
        bytes_max in 600u64..5000,
        compress in any::<bool>(),
    ) {
        let dir = scratch_dir();
        let o = Options {
            segment_bytes_max,
            fsync: FsyncPolicy::Never,
            retention: Retention { bytes_max: Some(bytes_max), age_max_ms: None },
            compression: if compress { Compression::Zstd { level: 1 } } else { Compression::None },
        };
        let (mut j, _) = Journal::open(dir.path(), o).expect("open");
        let mut lens: Vec<usize> = Vec::new();
        let mut readers: Vec<Reader> = Vec::new();
        let mut registered = 0;
        for op in ops {
            match op {
                Op::Append(sizes) => {
                    let first = lens.len() as u64 + 1;
                    let recs: Vec<Vec<u8>> = sizes
                        .iter()
                        .enumerate()
                        .map(|(i, len)| record(first + i as u64, *len))
                        .collect();
                    j.append_batch(recs.iter()).expect("append");
                    lens.extend(sizes);
                }
                Op::Register { at, cap } => {
                    let h = j.handle();
                    let first = h.first_seq().0;
                    let next = j.next_seq().0;
                    let at = Seq(first + at.index((next - first + 1) as usize) as u64);
                    registered += 1;
                    let name = format!("r{registered}");
                    let guard = match cap {
                        Some(c) => h.register_reader_capped(&name, at, c),
                        None => h.register_reader(&name, at),
                    };
                    readers.push(Reader { name, guard, cap });
                }
                Op::Advance { reader, to } => {
                    if !readers.is_empty() {
                        let r = &readers[reader.index(readers.len())];
                        let next = j.next_seq().0;
                        let from = r.guard.position().0.min(next);
                        r.guard.advance(Seq(from + to.index((next - from + 1) as usize) as u64));
                    }
                }
                Op::Drop(i) => {
                    if !readers.is_empty() {
                        readers.remove(i.index(readers.len()));
                    }
                }
                Op::Retention => {
                    // Limits and ceilings count bytes as written, which compression does not
                    // change; settling the compactor still makes the pass meet compressed
                    // segments.
                    j.wait_compacted();
                    let h = j.handle();
                    let before = h.first_seq().0;
                    // Who holds what before the pass: position and whether within its ceiling.
                    let holds: Vec<(u64, bool)> = readers
                        .iter()
                        .map(|r| {
                            let p = r.guard.position().0;
                            (p, r.cap.is_none_or(|c| h.bytes_from(Seq(p)) <= c))
                        })
                        .collect();
                    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
                    let after = h.first_seq().0;
                    prop_assert_eq!(rep.first_seq.0, after);
                    for (r, (p, within)) in readers.iter().zip(&holds) {
                        if *within {
                            prop_assert!(
                                after <= (*p).max(before),
                                "reader {} at {} within its ceiling, yet first seq went {} -> {}",
                                r.name, p, before, after
                            );
                            prop_assert!(!rep.lapsed.contains(&r.name));
                        } else if after > (*p).max(before) {
                            // This pass deleted records it had not read.
                            prop_assert!(r.guard.lapsed(), "reader {} not told", r.name);
                            prop_assert!(rep.lapsed.contains(&r.name));
                        }
                    }
                    if rep.held_by.is_none() {
                        let st = j.stats();
                        prop_assert!(
                            st.bytes_as_written <= bytes_max || st.segments == 1,
                            "nothing held, yet {} bytes as written in {} segments (max {})",
                            st.bytes_as_written, st.segments, bytes_max
                        );
                    }
                    check_contents(&h, &lens, j.next_seq().0);
                }
                Op::Reopen => {
                    let first = j.handle().first_seq();
                    let positions: Vec<(String, Seq, Option<u64>)> = readers
                        .drain(..)
                        .map(|r| (r.name, r.guard.position(), r.cap))
                        .collect();
                    drop(j);
                    let (j2, _) = Journal::open(dir.path(), o).expect("reopen");
                    j = j2;
                    let h = j.handle();
                    prop_assert_eq!(h.first_seq(), first, "first seq survives a reopen");
                    prop_assert_eq!(j.next_seq().0, lens.len() as u64 + 1);
                    check_contents(&h, &lens, j.next_seq().0);
                    // Readers come back where they were (as a process re-registers them).
                    for (name, at, cap) in positions {
                        let guard = match cap {
                            Some(c) => h.register_reader_capped(&name, at, c),
                            None => h.register_reader(&name, at),
                        };
                        readers.push(Reader { name, guard, cap });
                    }
                }
            }
        }
    }
}

#[test]
fn a_capped_reader_holds_up_to_its_ceiling_then_lapses() {
    let dir = scratch_dir();
    let o = Options {
        segment_bytes_max: 1000,
        fsync: FsyncPolicy::Never,
        retention: Retention {
            bytes_max: Some(2000),
            age_max_ms: None,
        },
        compression: Compression::None,
    };
    let (mut j, _) = Journal::open(dir.path(), o).expect("open");
    let h = j.handle();
    let guard = h.register_reader_capped("sink", Seq(1), 6000);
    let batch =
        |first: u64| -> Vec<Vec<u8>> { (first..first + 5).map(|s| record(s, 92)).collect() };
    // 5 records of ~120 bytes per batch: under 6000 bytes the reader holds everything.
    let mut next = 1;
    while h.bytes() < 5500 {
        j.append_batch(batch(next).iter()).expect("append");
        next += 5;
        let rep = j.enforce_retention(SystemTime::now()).expect("retention");
        assert_eq!(rep.segments_deleted, 0, "held within the ceiling");
        if h.bytes() > 3000 {
            assert_eq!(rep.held_by.as_deref(), Some("sink"));
        }
    }
    assert!(!guard.lapsed());
    while h.bytes() <= 6000 {
        j.append_batch(batch(next).iter()).expect("append");
        next += 5;
    }
    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
    assert!(rep.segments_deleted > 0, "past the ceiling: deleted anyway");
    assert_eq!(rep.lapsed, vec!["sink".to_string()]);
    assert!(guard.lapsed());
    assert!(
        h.bytes() <= 2000 + 1000,
        "back within retention: {}",
        h.bytes()
    );
    match h.read(Seq(1), 1, usize::MAX) {
        Err(journal::Error::Gone { from, first }) => {
            assert_eq!(from, Seq(1));
            assert_eq!(first, h.first_seq());
        }
        other => panic!("expected Gone, got {other:?}"),
    }
    // Moved to the first retained seq, the reader holds again.
    let again = h.register_reader_capped("sink", h.first_seq(), 6000);
    drop(guard);
    let first = h.first_seq();
    for _ in 0..4 {
        j.append_batch(batch(next).iter()).expect("append");
        next += 5;
    }
    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
    assert_eq!(h.first_seq(), first, "{rep:?}");
    assert!(!again.lapsed());
}
