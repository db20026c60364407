//! `SpillHistory` answers every lookup as `MemHistory` does (pruning included), whatever the
//! memory size, and keeps no run file it no longer needs.

use dedup::{Entry, History, JournalPos, Matched, MemHistory, Output};
use history::{Options, SpillHistory};
use proptest::prelude::*;
use twinrx_types::{Key, NodeId, Offset, Seq, UnixNanos};

#[derive(Clone, Debug)]
enum Op {
    Entry {
        key: u8,
        node: u8,
        at: i64,
    },
    Match {
        pick: u64,
    },
    Prune {
        node: u8,
        before: i64,
    },
    Lookup {
        key: u8,
        node: u8,
        from: i64,
        to: i64,
    },
    /// Forget entries below an offset (the stream's retention).
    PruneOffsets {
        pick: u64,
    },
    /// Take an image and store it (`store`), or take one and drop it.
    Image {
        store: bool,
    },
    /// Drop the index and open it again from the last stored image (a restart); the model
    /// goes back to the same point.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0u8..2, 0i64..300).prop_map(|(key, node, at)| Op::Entry { key, node, at }),
        3 => any::<u64>().prop_map(|pick| Op::Match { pick }),
        1 => (0u8..2, 0i64..300).prop_map(|(node, before)| Op::Prune { node, before }),
        4 => (0u8..6, 0u8..2, 0i64..300, 0i64..300)
            .prop_map(|(key, node, from, to)| Op::Lookup { key, node, from, to }),
        1 => any::<bool>().prop_map(|store| Op::Image { store }),
        1 => any::<u64>().prop_map(|pick| Op::PruneOffsets { pick }),
        1 => Just(Op::Reopen),
    ]
}

fn run_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|f| f.file_name().to_string_lossy().ends_with(".run"))
                .count()
        })
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300)))]

    #[test]
    fn spill_history_answers_as_the_in_memory_one(
        mem_entries_max in 1usize..8,
        // 0: every filter read back evicts all the others; 16 bytes: two small filters stay.
        filter_cache_bytes in prop_oneof![Just(0usize), Just(16usize), Just(1usize << 20)],
        ops in prop::collection::vec(op(), 1..400),
    ) {
        let dir = std::env::temp_dir().join(format!(
            "twinrx-history-prop-{}-{}",
            std::process::id(),
            std::thread::current().name().unwrap_or("t").replace("::", "-")
        ));
        let mut spill = SpillHistory::create(&dir, Options {
            mem_entries_max,
            filter_cache_bytes,
        }).expect("create");
        let mut model = MemHistory::new();
        let mut floor = [i64::MIN; 2];
        let mut next = 0u64;
        let mut entries: Vec<(Key, NodeId, i64)> = Vec::new();
        // The last stored image and the model at that point.
        let mut stored: Option<(Vec<u8>, MemHistory, [i64; 2], u64)> = None;
        for op in ops {
            match op {
                Op::Entry { key, node, at } => {
                    let out = Output::Entry(Entry {
                        offset: Offset(next),
                        copy: JournalPos { node: NodeId(node), seq: Seq(next + 1) },
                        key: Key([key; 16]),
                        received_at: UnixNanos(at),
                        late: false,
                    });
                    next += 1;
                    entries.push((Key([key; 16]), NodeId(node), at));
                    spill.apply(&out);
                    model.apply(&out);
                }
                Op::Match { pick } => {
                    if next == 0 {
                        continue;
                    }
                    let entry = pick % next;
                    let (key, node, at) = entries[entry as usize];
                    let out = Output::Matched(Matched {
                        entry: Offset(entry),
                        copy: JournalPos { node: node.peer(), seq: Seq(1) },
                        key,
                        received_at: UnixNanos(at),
                    });
                    spill.apply(&out);
                    model.apply(&out);
                }
                Op::Prune { node, before } => {
                    spill.prune(NodeId(node), UnixNanos(before));
                    model.prune(NodeId(node), UnixNanos(before));
                    floor[node as usize] = floor[node as usize].max(before);
                }
                Op::PruneOffsets { pick } => {
                    let below = Offset(pick % (next + 1));
                    spill.prune_offsets_below(below);
                    model.close_below(below);
                }
                Op::Image { store } => {
                    let img = spill.image().expect("image");
                    if store {
                        spill.image_stored();
                        stored = Some((img, model.clone(), floor, next));
                    } else {
                        spill.image_dropped();
                    }
                }
                Op::Reopen => {
                    drop(spill);
                    match &stored {
                        Some((img, m, f, n)) => {
                            spill = SpillHistory::open_image(&dir, Options {
            mem_entries_max,
            filter_cache_bytes,
        }, img)
                                .expect("open image");
                            model = m.clone();
                            floor = *f;
                            next = *n;
                            entries.truncate(next as usize);
                        }
                        None => {
                            spill = SpillHistory::create(&dir, Options {
            mem_entries_max,
            filter_cache_bytes,
        })
                                .expect("create");
                            model = MemHistory::new();
                            floor = [i64::MIN; 2];
                            next = 0;
                            entries.clear();
                        }
                    }
                }
                Op::Lookup { key, node, from, to } => {
                    let (k, n) = (Key([key; 16]), NodeId(node));
                    let got = spill
                        .earliest_open(k, n, UnixNanos(from), UnixNanos(to))
                        .expect("lookup");
                    let Ok(want) = model.earliest_open(
                        k,
                        n,
                        UnixNanos(from.max(floor[node as usize])),
                        UnixNanos(to),
                    );
                    prop_assert_eq!(got, want, "lookup {:?} {:?} {}..={}", key, n, from, to);
                }
            }
        }
        let stats = spill.stats();
        // Files: the live runs, and runs an image still names.
        prop_assert!(run_files(&dir) as u64 >= stats.runs);
        spill.image().expect("image");
        spill.image_stored();
        prop_assert_eq!(run_files(&dir) as u64, spill.stats().runs);
        // A new index starts empty and clears the old runs.
        drop(spill);
        let fresh = SpillHistory::create(&dir, Options {
            mem_entries_max,
            filter_cache_bytes,
        }).expect("create");
        prop_assert_eq!(run_files(&dir), 0);
        prop_assert_eq!(fresh.open_len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A uniform 128-bit key for entry `i`.
fn outage_key(i: u64) -> Key {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    k[8..].copy_from_slice(&(i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ 0x5555).to_le_bytes());
    Key(k)
}

/// A one-sided outage in `dir`: `n` entries of node a, received 1 µs apart, 4,096 in memory at
/// most; no filter is loaded once they are written out.
fn outage(dir: &std::path::Path, n: u64, filter_cache_bytes: usize) -> SpillHistory {
    let mut h = SpillHistory::create(
        dir,
        Options {
            mem_entries_max: 4096,
            filter_cache_bytes,
        },
    )
    .expect("create");
    for i in 0..n {
        h.apply(&Output::Entry(Entry {
            offset: Offset(i),
            copy: JournalPos {
                node: NodeId::A,
                seq: Seq(i + 1),
            },
            key: outage_key(i),
            received_at: UnixNanos(i as i64 * 1000),
            late: false,
        }));
        assert!(h.stats().mem_entries <= 4096);
    }
    let s = h.stats();
    assert_eq!(h.open_len(), n);
    assert_eq!(s.runs, n / 4096, "{s:?}");
    assert_eq!(run_files(dir) as u64, s.runs);
    // The filters stay in the runs' footers: memory holds 0.4 byte per entry written out.
    assert_eq!((s.filters_loaded, s.filter_loads), (0, 0), "{s:?}");
    assert!(s.run_mem_bytes * 2 < s.run_entries, "{s:?}");
    h
}

/// The peer's late copy of entry `i` closes it.
fn late_copy(h: &mut SpillHistory, i: u64) {
    h.apply(&Output::Matched(Matched {
        entry: Offset(i),
        copy: JournalPos {
            node: NodeId::B,
            seq: Seq(i + 1),
        },
        key: outage_key(i),
        received_at: UnixNanos(i as i64 * 1000),
    }));
}

/// A one-sided outage: 100,000 entries of one node, then the peer's copies of each arrive
/// (late) and close them; memory holds at most the configured entries, the runs go once every
/// entry in them is matched.
#[test]
fn an_outage_spills_to_runs_and_the_late_copies_empty_them() {
    let dir = std::env::temp_dir().join(format!("twinrx-history-outage-{}", std::process::id()));
    let n = 100_000u64;
    let mut h = outage(&dir, n, Options::default().filter_cache_bytes);
    let runs = h.stats().runs;
    // Lookups for the peer's entries touch no run (the runs hold node a only).
    let Ok(none) = h.earliest_open(
        outage_key(7),
        NodeId::B,
        UnixNanos(i64::MIN),
        UnixNanos(i64::MAX),
    ) else {
        panic!("lookup failed");
    };
    assert_eq!(none, None);
    assert_eq!((h.stats().block_reads, h.stats().filter_loads), (0, 0));
    // Every entry found, then matched by the peer's late copy.
    for i in 0..n {
        let found = h
            .earliest_open(
                outage_key(i),
                NodeId::A,
                UnixNanos(i64::MIN),
                UnixNanos(i64::MAX),
            )
            .expect("lookup");
        assert_eq!(found.map(|e| e.offset), Some(Offset(i)), "entry {i}");
        late_copy(&mut h, i);
    }
    let s = h.stats();
    assert_eq!(h.open_len(), 0);
    assert_eq!(s.runs, 0, "{s:?}");
    assert_eq!(run_files(&dir), 0);
    // About one block read per lookup: the filters keep the other runs out (a key that opens
    // a block costs a second read now and then, and 1 % of the other runs pass the filter).
    assert!(s.block_reads < n + n / 4, "{s:?}");
    // Each filter was read back once (the cache holds them all).
    assert_eq!(s.filter_loads, runs, "{s:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same outage with room for three filters: lookups in the order the late copies come
/// (each within a window around its receive time) keep at most three loaded, read each back
/// about once, and answer every lookup.
#[test]
fn late_copies_keep_the_loaded_filters_within_the_cache() {
    let dir = std::env::temp_dir().join(format!("twinrx-history-filters-{}", std::process::id()));
    let n = 100_000u64;
    // 4,096 entries at 10 bits: 5,120 bytes of filter per run.
    let mut h = outage(&dir, n, 3 * 5120);
    let runs = h.stats().runs;
    let window = 2_000_000; // 2 ms (2,000 entries) either side: one or two runs
    for i in 0..n {
        let at = i as i64 * 1000;
        let found = h
            .earliest_open(
                outage_key(i),
                NodeId::A,
                UnixNanos(at - window),
                UnixNanos(at + window),
            )
            .expect("lookup");
        assert_eq!(found.map(|e| e.offset), Some(Offset(i)), "entry {i}");
        late_copy(&mut h, i);
        let s = h.stats();
        assert!(s.filters_loaded <= 3, "entry {i}: {s:?}");
    }
    let s = h.stats();
    assert_eq!((h.open_len(), s.runs), (0, 0), "{s:?}");
    assert!(s.filter_loads <= runs + 2, "runs {runs}: {s:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged run is refused (open) or its lookup fails: never a wrong answer.
#[test]
fn a_damaged_run_is_refused_not_misread() {
    let dir = std::env::temp_dir().join(format!("twinrx-history-damage-{}", std::process::id()));
    let opts = Options {
        mem_entries_max: 100,
        ..Options::default()
    };
    let mut h = SpillHistory::create(&dir, opts).expect("create");
    for i in 0..100u64 {
        h.apply(&Output::Entry(Entry {
            offset: Offset(i),
            copy: JournalPos {
                node: NodeId::A,
                seq: Seq(i + 1),
            },
            key: Key([i as u8; 16]),
            received_at: UnixNanos(i as i64),
            late: false,
        }));
    }
    assert_eq!(h.stats().runs, 1);
    let img = h.image().expect("image");
    h.image_stored();
    drop(h);
    let run = dir.join("00000001.run");
    let good = std::fs::read(&run).expect("read run");
    // A record's byte flipped: the block's CRC catches it at lookup.
    let mut bad = good.clone();
    bad[40] ^= 0xff;
    std::fs::write(&run, &bad).expect("write");
    let h = SpillHistory::open_image(&dir, opts, &img).expect("footer intact");
    let r = h.earliest_open(Key([1; 16]), NodeId::A, UnixNanos(0), UnixNanos(1000));
    assert!(r.is_err(), "{r:?}");
    drop(h);
    // The footer damaged: the run is refused at open.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 30] ^= 0xff;
    std::fs::write(&run, &bad).expect("write");
    assert!(SpillHistory::open_image(&dir, opts, &img).is_err());
    // The image damaged: refused.
    std::fs::write(&run, &good).expect("write");
    let mut img2 = img.clone();
    img2[10] ^= 1;
    assert!(SpillHistory::open_image(&dir, opts, &img2).is_err());
    let h = SpillHistory::open_image(&dir, opts, &img).expect("intact");
    let Ok(found) = h.earliest_open(Key([1; 16]), NodeId::A, UnixNanos(0), UnixNanos(1000)) else {
        panic!("lookup failed");
    };
    assert_eq!(found.map(|e| e.offset), Some(Offset(1)));
    let _ = std::fs::remove_dir_all(&dir);
}
