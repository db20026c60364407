//! Test harness shared by the property tests and the campaign example: builds journals, drives
//! a merger through an arrival schedule with failovers, and checks the resulting stream log.

#![allow(dead_code)]

use std::collections::BTreeMap;

use dedup::{
    counts_per_key, reference, Config, MemHistory, Merger, Output, Progress, Record, ValidConfig,
};
use twinrx_types::{Key, NodeId, Seq, UnixNanos};

pub const W_MS: u64 = 5_000;
pub const T0_MS: i64 = 1_764_000_000_000;

pub fn key(k: u8) -> Key {
    let mut b = [0u8; 16];
    b[0] = k;
    b[15] = 0x5a;
    Key(b)
}

/// One device event as the scenario generator sees it.
#[derive(Clone, Debug)]
pub struct Event {
    pub key: u8,
    /// Milliseconds since the previous event.
    pub gap_ms: u32,
    /// Which nodes got it: 0 = A only, 1 = B only, otherwise both.
    pub presence: u8,
    pub jitter_a_ms: u16,
    pub jitter_b_ms: u16,
}

/// Per-node journals with receive times nondecreasing in seq order (B's clock is skewed by
/// `skew_b_ms`); seqs from 1.
pub fn journals(events: &[Event], skew_b_ms: i64) -> [Vec<Record>; 2] {
    let mut per: [Vec<(i64, u8)>; 2] = [Vec::new(), Vec::new()];
    let mut base = T0_MS;
    for e in events {
        base += i64::from(e.gap_ms);
        if e.presence != 1 {
            per[0].push((base + i64::from(e.jitter_a_ms), e.key));
        }
        if e.presence != 0 {
            per[1].push((base + skew_b_ms + i64::from(e.jitter_b_ms), e.key));
        }
    }
    let nodes = [NodeId::A, NodeId::B];
    let mut out: [Vec<Record>; 2] = [Vec::new(), Vec::new()];
    for side in 0..2 {
        per[side].sort_by_key(|&(t, _)| t); // stable: ties keep event order
        out[side] = per[side]
            .iter()
            .enumerate()
            .map(|(i, &(t, k))| Record {
                node: nodes[side],
                seq: Seq(i as u64 + 1),
                key: key(k),
                received_at: UnixNanos(t * 1_000_000),
            })
            .collect();
    }
    out
}

/// A node away (rebooting, cut off) from `start_ms` for `len_ms` after T0 behind a queued sender
/// (a relay, a TCP sender's buffer, an inform retried): the copies it would have received
/// then reach it at once when it returns, 1 ms apart, in the sender's order, before what the
/// sender sends live after the return. Seqs are renumbered; times stay nondecreasing.
pub fn backlog(journal: &mut [Record], start_ms: i64, len_ms: i64) {
    let (from, to) = (
        (T0_MS + start_ms) * 1_000_000,
        (T0_MS + start_ms + len_ms) * 1_000_000,
    );
    let mut k = 0i64;
    let mut last = i64::MIN;
    for r in journal.iter_mut() {
        let t = r.received_at.0;
        if t >= from && t < to {
            r.received_at = UnixNanos(to + k * 1_000_000);
            k += 1;
        } else if t >= to {
            // Live traffic after the return queues behind the backlog.
            r.received_at = UnixNanos(t.max(last));
        }
        last = last.max(r.received_at.0);
    }
    journal.sort_by_key(|r| r.received_at); // stable: the sender's order
    for (i, r) in journal.iter_mut().enumerate() {
        r.seq = Seq(i as u64 + 1);
    }
}

/// Steps a node's clock back by `step_ms` from its record `at` on (times no longer monotone).
pub fn step_back(journal: &mut [Record], at: usize, step_ms: i64) {
    for r in journal.iter_mut().skip(at) {
        r.received_at = UnixNanos(r.received_at.0 - step_ms * 1_000_000);
    }
}

/// How records arrive and when the active fails.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Runs of arrivals: (from node B?, how many). After the runs, the nodes alternate.
    pub runs: Vec<(bool, u8)>,
    /// Failovers: after this many records fed in total, the active dies with up to this many
    /// of its latest outputs not yet committed (they are lost), and a fresh merger is
    /// recovered from the committed log.
    pub crashes: Vec<(usize, usize)>,
    /// Ticks at run boundaries, this many ms after the newest receive time (None: no tick).
    pub tick_ms: Option<u32>,
    /// Prune the history after every output as `Progress::prunable_before` allows, with this
    /// clock-step margin (ms); it must be at least the largest step back of the journals.
    pub prune_margin_ms: Option<u64>,
}

/// Largest clock step back the generators make.
pub const STEP_MAX_MS: u64 = 4_000;

pub fn config(
    horizon_ms: Option<u64>,
    memory_ms: u64,
    memory_entries_max: usize,
    hash_seed: u64,
) -> ValidConfig {
    Config {
        window_ms: W_MS,
        horizon_ms,
        memory_ms,
        memory_entries_max,
        hash_seed,
    }
    .validate()
    .expect("test configs are valid")
}

/// Feeds both journals to a merger per `plan` and returns the committed stream log.
pub fn drive(journals: &[Vec<Record>; 2], plan: &Plan, cfg: ValidConfig) -> Vec<Output> {
    let mut log: Vec<Output> = Vec::new();
    let mut pending: Vec<Output> = Vec::new();
    let mut history = MemHistory::new();
    let mut merger = Merger::new(cfg);
    let mut crashes = plan.crashes.clone();
    crashes.sort();
    let mut crashes = crashes.into_iter().peekable();
    let mut runs = plan.runs.iter().copied();
    let (mut run_b, mut run_left) = (false, 0u8);
    let mut fed = 0usize;
    loop {
        let p = merger.progress();
        let left = [
            journals[0].len() as u64 - p.consumed(NodeId::A).0,
            journals[1].len() as u64 - p.consumed(NodeId::B).0,
        ];
        if left == [0, 0] {
            break;
        }
        if run_left == 0 {
            match runs.next() {
                Some((b, n)) => (run_b, run_left) = (b, n.max(1)),
                None => (run_b, run_left) = (!run_b, 1),
            }
            if let (Some(ms), Some(newest)) = (plan.tick_ms, p.newest) {
                merger.handle_tick(newest.saturating_add_ms(u64::from(ms)));
            }
        }
        run_left -= 1;
        let mut side = usize::from(run_b);
        if left[side] == 0 {
            side = 1 - side;
        }
        let next = p.consumed[side].0 as usize; // index of the next record (seq - 1)
        let out = merger
            .handle_record(journals[side][next], &history)
            .expect("records are fed in sequence");
        history.apply(&out);
        if let Some(margin_ms) = plan.prune_margin_ms {
            let p = merger.progress();
            for node in [NodeId::A, NodeId::B] {
                if let Some(before) = p.prunable_before(node, cfg.get().horizon_ms, margin_ms) {
                    history.prune(node, before);
                }
            }
        }
        pending.push(out);
        fed += 1;
        while let Some(&(at, lost)) = crashes.peek() {
            if at > fed {
                break;
            }
            crashes.next();
            let keep = pending.len().saturating_sub(lost);
            log.extend(pending.drain(..keep));
            pending.clear();
            history = MemHistory::from_log(&log);
            merger = Merger::recover(cfg, Progress::from_log(&log));
        }
    }
    log.extend(pending);
    log
}

/// Checks a committed stream log against the journals; returns a description of the first
/// violation. `exact`: per-key event counts must equal the reference (journals with
/// nondecreasing times); otherwise they may only exceed it.
pub fn check(
    journals: &[Vec<Record>; 2],
    log: &[Output],
    horizon_ms: Option<u64>,
    exact: bool,
) -> Result<(), String> {
    let w_ns = i128::from(W_MS) * 1_000_000;
    let h_ns = horizon_ms.map_or(i128::MAX, |h| i128::from(h) * 1_000_000);
    let mut seen: BTreeMap<(NodeId, Seq), usize> = BTreeMap::new();
    // offset -> (entry record, matched already?)
    let mut entries: Vec<(Record, bool)> = Vec::new();
    let mut newest: Option<i64> = None;
    for (i, o) in log.iter().enumerate() {
        let c = o.copy();
        let side = usize::from(c.node.0);
        let rec = journals
            .get(side)
            .and_then(|j| j.get((c.seq.0 as usize).wrapping_sub(1)))
            .ok_or(format!("log[{i}] names {c}, not in the journals"))?;
        if rec.key != o.key() || rec.received_at != o.received_at() {
            return Err(format!("log[{i}] {o:?} does not describe record {rec:?}"));
        }
        if let Some(prev) = seen.insert((c.node, c.seq), i) {
            return Err(format!(
                "record {c} accounted twice: log[{prev}] and log[{i}]"
            ));
        }
        match o {
            Output::Entry(e) => {
                if e.offset.0 != entries.len() as u64 {
                    return Err(format!(
                        "log[{i}]: entry offset {} where {} is next",
                        e.offset,
                        entries.len()
                    ));
                }
                let late =
                    newest.is_some_and(|n| i128::from(e.received_at.0) + w_ns < i128::from(n));
                if e.late != late {
                    return Err(format!("log[{i}]: late = {}, expected {late}", e.late));
                }
                entries.push((*rec, false));
            }
            Output::Matched(m) => {
                let (first, matched) = entries
                    .get_mut(m.entry.0 as usize)
                    .ok_or(format!("log[{i}]: matched to missing entry {}", m.entry))?;
                if *matched {
                    return Err(format!("log[{i}]: entry {} matched twice", m.entry));
                }
                if first.node == rec.node || first.key != rec.key {
                    return Err(format!("log[{i}]: {rec:?} is no peer copy of {first:?}"));
                }
                let d = i128::from(first.received_at.0) - i128::from(rec.received_at.0);
                if d.abs() > h_ns {
                    return Err(format!("log[{i}]: matched {d} ns apart, beyond H"));
                }
                *matched = true;
            }
        }
        newest = Some(newest.map_or(o.received_at().0, |n| n.max(o.received_at().0)));
    }
    for j in journals {
        for r in j {
            if !seen.contains_key(&(r.node, r.seq)) {
                return Err(format!("record {} lost", r.pos()));
            }
        }
    }
    let expected = counts_per_key(&reference(&journals[0], &journals[1], horizon_ms));
    let mut got: BTreeMap<Key, usize> = BTreeMap::new();
    for (r, _) in &entries {
        *got.entry(r.key).or_insert(0) += 1;
    }
    for (k, &n) in &expected {
        let g = got.get(k).copied().unwrap_or(0);
        if (exact && g != n) || g < n {
            return Err(format!("key {k}: {g} events, reference has {n}"));
        }
    }
    Ok(())
}
