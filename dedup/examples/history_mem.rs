//! Memory of the in-memory history index (`MemHistory`) per open entry: what the active holds
//! for every entry it publishes while the peer is down (SPEC G6; docs/PERFORMANCE.md).
//!
//! `cargo run --release -p dedup --example history_mem -- [--entries N]`
//!
//! Feeds N entries of node A (distinct keys, 1 ms apart, as while the peer is away), then
//! matches every other one (the peer's copies arriving late), then prunes. Live heap bytes
//! are counted by a wrapping global allocator, so the figures are exact, not RSS estimates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use dedup::{Entry, History, JournalPos, Matched, MemHistory, Output};
use twinrx_types::{Key, NodeId, Offset, Seq, UnixNanos};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged and only counts the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(i: u64) -> Key {
    let h = splitmix(i);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&h.to_le_bytes());
    k[8..].copy_from_slice(&splitmix(h).to_le_bytes());
    Key(k)
}

/// Record `i` of `node`'s journal.
fn pos(node: NodeId, i: u64) -> JournalPos {
    JournalPos {
        node,
        seq: Seq(i + 1),
    }
}

fn main() {
    let mut entries: u64 = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--entries", Some(n)) => entries = n,
            _ => {
                eprintln!("usage: history_mem [--entries N]");
                std::process::exit(2);
            }
        }
    }
    let t0: i64 = 1_764_000_000_000_000_000;
    let at = |i: u64| UnixNanos(t0 + i as i64 * 1_000_000);
    let base = LIVE.load(Relaxed);
    let mut h = MemHistory::new();
    for i in 0..entries {
        h.apply(&Output::Entry(Entry {
            offset: Offset(i),
            copy: pos(NodeId::A, i),
            key: key(i),
            received_at: at(i),
            late: false,
        }));
    }
    let full = LIVE.load(Relaxed) - base;
    println!(
        "{entries} open entries: {:.1} MB, {:.0} bytes per entry",
        full as f64 / 1e6,
        full as f64 / entries as f64
    );
    // Every lookup finds what was put in.
    for i in (0..entries).step_by(997) {
        let found = h.earliest_open(key(i), NodeId::A, at(i), at(i));
        assert!(
            matches!(found, Ok(Some(e)) if e.offset == Offset(i)),
            "lookup {i}"
        );
    }
    for i in (0..entries).step_by(2) {
        h.apply(&Output::Matched(Matched {
            entry: Offset(i),
            copy: pos(NodeId::B, i),
            key: key(i),
            received_at: at(i),
        }));
    }
    let half = LIVE.load(Relaxed) - base;
    println!(
        "after matching every other one: {} open, {:.1} MB",
        h.open_len(),
        half as f64 / 1e6
    );
    h.prune(NodeId::A, at(entries));
    let pruned = LIVE.load(Relaxed) - base;
    println!(
        "after pruning: {} open, {:.1} MB",
        h.open_len(),
        pruned as f64 / 1e6
    );
}
