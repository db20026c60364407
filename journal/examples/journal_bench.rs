//! Micro benchmark of the journal: appends/s and MB/s for 200-byte records in batches of 64
//! and 1024 under fsync policy `batch` (one fdatasync per batch), fsync latency p50/p99, and
//! sequential read throughput; and the cost of a retention pass over a journal of 1,000
//! segments, with nothing to delete (the node runs one every 250 ms at most) and deleting one
//! segment.
//!
//! `cargo run --release -p journal --example journal_bench [-- DIR [SECONDS]]`
//! DIR defaults to a fresh temporary directory (so: the disk holding /tmp).

use std::time::{Duration, Instant};

use journal::{FsyncPolicy, Journal, Options, Retention};
use twinrx_types::Seq;

const RECORD_BYTES: usize = 200;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn run(dir: &std::path::Path, batch: usize, policy: FsyncPolicy, secs: f64) {
    let sub = dir.join(format!("b{batch}-{policy}").replace(':', "_"));
    if sub.exists() {
        std::fs::remove_dir_all(&sub).expect("clear bench dir");
    }
    let opts = Options {
        fsync: policy,
        ..Options::default()
    };
    let (mut j, _) = Journal::open(&sub, opts).expect("open");
    let records: Vec<Vec<u8>> = (0..batch)
        .map(|i| vec![(i % 251) as u8; RECORD_BYTES])
        .collect();
    let mut fsync_us = Vec::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let before = j.stats().fsyncs_total;
        j.append_batch(&records).expect("append");
        let st = j.stats();
        if st.fsyncs_total > before {
            fsync_us.push(st.fsync_latency_us_last);
        }
        n += batch as u64;
    }
    let el = start.elapsed().as_secs_f64();
    fsync_us.sort_unstable();
    println!(
        "append  batch={batch:<5} fsync={policy:<7} {:>10.0} records/s {:>7.1} MB/s  fsync p50={} µs p99={} µs  ({} records, {} fsyncs, {:.1} s)",
        n as f64 / el,
        n as f64 * RECORD_BYTES as f64 / el / 1e6,
        percentile(&fsync_us, 0.50),
        percentile(&fsync_us, 0.99),
        n,
        fsync_us.len(),
        el
    );
    // Sequential read of everything just written, 1024 records per call.
    let h = j.handle();
    let start = Instant::now();
    let mut next = Seq(1);
    let mut read = 0u64;
    loop {
        let got = h.read(next, 1024, 1 << 20).expect("read");
        let Some(&(last, _)) = got.last() else { break };
        read += got.len() as u64;
        next = last.next();
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "read    1024/call   (page cache)  {:>10.0} records/s {:>7.1} MB/s",
        read as f64 / el,
        read as f64 * RECORD_BYTES as f64 / el / 1e6
    );
    drop(j);
    std::fs::remove_dir_all(&sub).expect("clean up");
}

/// Retention passes over `SEGMENTS` segments of 64 KiB: idle (under the limit) and deleting
/// the oldest segment after each segment's worth of appends.
fn retention(dir: &std::path::Path) {
    const SEGMENTS: u64 = 1000;
    const SEGMENT_BYTES: u64 = 64 << 10;
    let sub = dir.join("retention");
    if sub.exists() {
        std::fs::remove_dir_all(&sub).expect("clear bench dir");
    }
    let opts = Options {
        segment_bytes_max: SEGMENT_BYTES,
        fsync: FsyncPolicy::Never,
        retention: Retention {
            bytes_max: Some(SEGMENTS * SEGMENT_BYTES),
            age_max_ms: None,
        },
        ..Options::default()
    };
    let (mut j, _) = Journal::open(&sub, opts).expect("open");
    // Records per segment (each record has a small header besides its payload).
    let per_segment = (SEGMENT_BYTES / (RECORD_BYTES as u64 + 32)) as usize;
    let segment: Vec<Vec<u8>> = (0..per_segment)
        .map(|i| vec![(i % 251) as u8; RECORD_BYTES])
        .collect();
    let mut n = 0usize;
    while j.stats().segments < SEGMENTS as usize - 1 {
        j.append_batch(&segment).expect("append");
        n += 1;
        assert!(n < 4 * SEGMENTS as usize, "segments do not grow");
    }
    let now = std::time::SystemTime::now();
    let idle_passes = 10_000u32;
    let start = Instant::now();
    for _ in 0..idle_passes {
        let r = j.enforce_retention(now).expect("retention");
        assert_eq!(r.segments_deleted, 0);
    }
    let idle_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(idle_passes);
    let mut pass_us = Vec::new();
    let mut deleted = 0usize;
    while pass_us.len() < 500 {
        j.append_batch(&segment).expect("append");
        let start = Instant::now();
        let r = j.enforce_retention(now).expect("retention");
        let us = start.elapsed().as_micros() as u64;
        if r.segments_deleted > 0 {
            deleted += r.segments_deleted;
            pass_us.push(us);
        }
    }
    pass_us.sort_unstable();
    println!(
        "retention {} segments of {} KiB: idle pass {idle_us:.1} µs; pass deleting a segment p50={} µs p99={} µs ({} passes, {deleted} segments deleted)",
        j.stats().segments,
        SEGMENT_BYTES >> 10,
        percentile(&pass_us, 0.50),
        percentile(&pass_us, 0.99),
        pass_us.len()
    );
    drop(j);
    std::fs::remove_dir_all(&sub).expect("clean up");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    println!(
        "journal bench: {RECORD_BYTES}-byte records, dir {}",
        dir.display()
    );
    for batch in [64, 1024] {
        run(&dir, batch, FsyncPolicy::Batch, secs);
    }
    run(&dir, 1024, FsyncPolicy::Never, secs.min(1.0));
    retention(&dir);
}
