//! Property: random sequences of appends, reads, truncations, resets, retention and reopens
//! behave like a plain vector of records (the model). Exercises the sparse index, the read
//! position cache, rollback and segment bookkeeping together, with and without compression
//! of sealed segments (cuts into compressed segments, a compactor racing the writer).

use std::path::Path;
use std::time::SystemTime;

use journal::{Compression, Error, FsyncPolicy, Journal, Options, Retention};
use proptest::prelude::*;
use proptest::sample::Index;
use twinrx_types::Seq;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Read {
        from: Index,
        max_records: usize,
        max_bytes: usize,
    },
    Truncate(Index),
    Reset(u64),
    Retention,
    Advance(Index),
    Reopen,
    /// Waits for the compactor: the following ops see compressed segments.
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..12).prop_map(Op::Append),
        4 => (any::<Index>(), 1usize..20, 0usize..600)
            .prop_map(|(from, max_records, max_bytes)| Op::Read { from, max_records, max_bytes }),
        2 => any::<Index>().prop_map(Op::Truncate),
        1 => (1u64..300).prop_map(Op::Reset),
        1 => Just(Op::Retention),
        1 => any::<Index>().prop_map(Op::Advance),
        1 => Just(Op::Reopen),
        2 => Just(Op::Compact),
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

/// The model: seqs `first..first + records.len()`.
struct Model {
    first: u64,
    records: Vec<Vec<u8>>,
}

impl Model {
    fn next(&self) -> u64 {
        self.first + self.records.len() as u64
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn journal_behaves_like_a_vector(
        ops in prop::collection::vec(op(), 1..60),
        segment_bytes_max in 150u64..4000,
        bytes_max in 300u64..3000,
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
        let mut h = j.handle();
        let mut m = Model { first: 1, records: Vec::new() };
        let mut guard = h.register_reader("model", Seq(1));
        for op in ops {
            match op {
                Op::Append(batch) => {
                    let r = j.append_batch(&batch).expect("append");
                    prop_assert_eq!(r.first, Seq(m.next()));
                    prop_assert_eq!(r.last, Seq(m.next() + batch.len() as u64 - 1));
                    m.records.extend(batch);
                }
                Op::Read { from, max_records, max_bytes } => {
                    // Anywhere from one below first to one past next.
                    let span = m.records.len() + 3;
                    let from = (m.first + from.index(span) as u64).saturating_sub(1).max(1);
                    match h.read(Seq(from), max_records, max_bytes) {
                        Err(Error::Gone { first, .. }) => {
                            prop_assert!(from < m.first);
                            prop_assert_eq!(first, Seq(m.first));
                        }
                        Err(e) => prop_assert!(false, "read {}: {}", from, e),
                        Ok(got) => {
                            prop_assert!(from >= m.first);
                            let avail = m.next().saturating_sub(from) as usize;
                            if avail == 0 {
                                prop_assert!(got.is_empty());
                            } else {
                                prop_assert!(!got.is_empty() && got.len() <= max_records.min(avail));
                                let bytes: usize = got.iter().skip(1).map(|r| r.1.len()).sum::<usize>() + got[0].1.len();
                                prop_assert!(got.len() == 1 || bytes <= max_bytes);
                                for (k, (s, p)) in got.iter().enumerate() {
                                    prop_assert_eq!(*s, Seq(from + k as u64));
                                    prop_assert_eq!(p, &m.records[(from - m.first) as usize + k]);
                                }
                                // Stopped by a limit or at the end, never early.
                                let stopped_at_end = got.len() == avail;
                                let stopped_by_count = got.len() == max_records;
                                let next_len = m.records.get((from - m.first) as usize + got.len()).map_or(0, Vec::len);
                                let stopped_by_bytes = bytes + next_len > max_bytes;
                                prop_assert!(stopped_at_end || stopped_by_count || stopped_by_bytes);
                            }
                        }
                    }
                }
                Op::Truncate(i) => {
                    let seq = m.first + i.index(m.records.len() + 1) as u64;
                    j.truncate_from(Seq(seq)).expect("truncate");
                    m.records.truncate((seq - m.first) as usize);
                }
                Op::Reset(n) => {
                    match j.reset_to(Seq(n)) {
                        Ok(()) => {
                            prop_assert!(m.records.is_empty());
                            m.first = n;
                        }
                        Err(Error::NotEmpty { first, last }) => {
                            prop_assert!(!m.records.is_empty());
                            prop_assert_eq!((first, last), (Seq(m.first), Seq(m.next() - 1)));
                        }
                        Err(e) => prop_assert!(false, "reset: {}", e),
                    }
                }
                Op::Retention => {
                    let before = m.first;
                    let rep = j.enforce_retention(SystemTime::now()).expect("retention");
                    let first = h.first_seq().0;
                    prop_assert_eq!(rep.first_seq, Seq(first));
                    prop_assert!(first >= before && first <= m.next());
                    // Never past what the registered reader still needs.
                    if guard.position().0 >= before {
                        prop_assert!(first <= guard.position().0, "first {} reader {}", first, guard.position());
                    }
                    m.records.drain(..(first - before) as usize);
                    m.first = first;
                }
                Op::Compact => j.wait_compacted(),
                Op::Advance(i) => {
                    let to = m.first + i.index(m.records.len() + 1) as u64;
                    guard.advance(Seq(to));
                }
                Op::Reopen => {
                    let pos = guard.position();
                    drop(guard);
                    drop(h);
                    drop(j);
                    let (j2, rec) = Journal::open(dir.path(), o).expect("reopen");
                    prop_assert_eq!(rec.truncated_bytes, 0);
                    j = j2;
                    h = j.handle();
                    guard = h.register_reader("model", pos);
                    prop_assert_eq!(h.first_seq(), Seq(m.first));
                }
            }
            prop_assert_eq!(j.next_seq(), Seq(m.next()));
            prop_assert_eq!(h.durable_seq(), (m.next() > 1).then(|| Seq(m.next() - 1)));
            prop_assert_eq!(j.stats().records, m.records.len() as u64);
        }
        drop(guard);
        drop(j);
        let v = journal::verify(dir.path()).expect("verify");
        prop_assert_eq!(v.records, m.records.len() as u64);
        prop_assert_eq!(v.torn_tail, None);
    }
}
