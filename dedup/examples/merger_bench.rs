//! Merger throughput: two interleaved journals with 100 % overlap (both nodes got every
//! message), single core. The figures go into README.md "Performance".
//!
//! `cargo run --release -p dedup --example merger_bench -- [--events N] [--lag-records L]
//!  [--history none|mem] [--runs R]`
//!
//! - `--events N`: messages per node (default 2 000 000, i.e. 4 000 000 records fed);
//! - `--lag-records L`: node B's records are fed L records behind A's (default 64: ordinary
//!   replication lag; use e.g. 6 000 000 to make every B record late, matched through history);
//! - `--history mem`: also apply every output to `MemHistory` (a plain in-memory index, what
//!   the binary's index costs on top), with the default unbounded horizon `H` (every record
//!   looks its peer copy up in the history); `none` (default) measures the merger alone, with
//!   a horizon of `W` so that its memory answers every lookup;
//! - `--runs R`: repetitions; the best and the median are printed.

use std::time::Instant;

use dedup::{Config, MemHistory, Merger, NoHistory, Output, Record};
use twinrx_types::{Key, NodeId, Seq, UnixNanos};

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Feed order: A's records, B's trailing `lag` records behind, alternating one by one.
fn workload(events: u64, lag: u64) -> Vec<Record> {
    let t0: i64 = 1_764_000_000_000_000_000;
    let rec = |node: NodeId, i: u64| {
        let h = splitmix(i);
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&h.to_le_bytes());
        k[8..].copy_from_slice(&splitmix(h).to_le_bytes());
        // 100 000 messages/s; B stamps them 0.3-1.3 ms after A.
        let t = t0 + i as i64 * 10_000;
        let t = if node == NodeId::B {
            t + 300_000 + (h % 1_000_000) as i64
        } else {
            t
        };
        Record {
            node,
            seq: Seq(i + 1),
            key: Key(k),
            received_at: UnixNanos(t),
        }
    };
    let mut out = Vec::with_capacity(2 * events as usize);
    let (mut a, mut b) = (0u64, 0u64);
    while a < events || b < events {
        if a < events {
            out.push(rec(NodeId::A, a));
            a += 1;
        }
        if b < events && (b + lag < a || a == events) {
            out.push(rec(NodeId::B, b));
            b += 1;
        }
    }
    out
}

fn run_once(records: &[Record], with_history: bool) -> (f64, dedup::Stats) {
    let config = Config {
        // Without a history the merger can only answer from memory: a horizon of W.
        horizon_ms: (!with_history).then_some(5_000),
        ..Config::default()
    }
    .validate()
    .expect("bench config is valid");
    let mut merger = Merger::new(config);
    let start = Instant::now();
    let mut entries = 0u64;
    if with_history {
        let mut history = MemHistory::new();
        for r in records {
            let o = merger.handle_record(*r, &history).expect("in sequence");
            history.apply(&o);
            entries += u64::from(matches!(o, Output::Entry(_)));
        }
    } else {
        for r in records {
            let o = merger.handle_record(*r, &NoHistory).expect("in sequence");
            entries += u64::from(matches!(o, Output::Entry(_)));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = merger.stats();
    assert_eq!(entries, stats.entries);
    (records.len() as f64 / secs, stats)
}

fn main() {
    let mut events = 2_000_000u64;
    let mut lag = 64u64;
    let mut with_history = false;
    let mut runs = 5usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(String::as_str).unwrap_or("");
        match a.as_str() {
            "--events" => events = v.parse().expect("--events takes a number"),
            "--lag-records" => lag = v.parse().expect("--lag-records takes a number"),
            "--history" => with_history = v == "mem",
            "--runs" => runs = v.parse().expect("--runs takes a number"),
            other => panic!("unknown argument {other}; see the example's doc comment"),
        }
    }
    if !with_history && lag > 400_000 {
        panic!("lagged B records are matched through the history: use --history mem");
    }
    let records = workload(events, lag);
    let mut rates = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let (rate, stats) = run_once(&records, with_history);
        rates.push(rate);
        last = Some(stats);
    }
    rates.sort_by(f64::total_cmp);
    let stats = last.expect("at least one run");
    assert_eq!(
        stats.entries, events,
        "100 % overlap: one entry per message"
    );
    assert_eq!(stats.matched, events);
    println!(
        "records {} (2 x {events}), lag {lag} records, history {}: best {:.2} M records/s, median {:.2} M records/s",
        records.len(),
        if with_history { "mem" } else { "none" },
        rates[rates.len() - 1] / 1e6,
        rates[rates.len() / 2] / 1e6,
    );
    println!("{stats:?}");
}
