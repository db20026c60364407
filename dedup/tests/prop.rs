//! Property tests: the streaming merger, driven through random journals, arrival
//! interleavings, lags, ticks and failovers, against the reference function.
//!
//! What is compared, and why: the streaming merger pairs copies as they arrive, so *which*
//! copies it pairs may differ from the reference's pairing; the events per key may not. Each
//! committed stream log must satisfy (see `common::check`):
//! - every journal record is accounted for exactly once (an entry's copy or a `Matched` copy),
//!   and no output names a record that is not in the journals;
//! - entry offsets are contiguous from 0;
//! - each entry is matched at most once, by a copy from the other node, same key, within the
//!   horizon `H` (so an event stands for at most one copy per node);
//! - the number of events per key equals the reference's (monotone clocks) or is at least it
//!   (a clock stepped back: pairing stays valid but may not be maximal);
//! - `late` is set exactly on entries more than `W` older than the newest record before them.
//!
//! Default: a few hundred cases (seconds). Long campaign (see README):
//! `PROPTEST_CASES=1000000 cargo test --release -p dedup --test prop`.

mod common;

use common::{backlog, check, config, drive, journals, step_back, Event, Plan, STEP_MAX_MS};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(192)
}

fn event(n_keys: u8) -> impl Strategy<Value = Event> {
    (
        0..n_keys,
        prop_oneof![
            3 => 0u32..50,
            3 => 0u32..3_000,
            2 => (0u32..12).prop_map(|x| x * 500),
            1 => 0u32..30_000,
            // Simulated time over days: quiet hours between bursts.
            1 => 0u32..200_000_000
        ],
        0u8..10,
        jitter(),
        jitter(),
    )
        .prop_map(|(key, gap_ms, presence, jitter_a_ms, jitter_b_ms)| Event {
            key,
            gap_ms,
            presence,
            jitter_a_ms,
            jitter_b_ms,
        })
}

/// Receive-time jitter; often whole half-seconds so that copies land exactly `W` apart.
fn jitter() -> impl Strategy<Value = u16> {
    prop_oneof![0u16..1_500, (0u16..4).prop_map(|x| x * 500)]
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    (1u8..=6).prop_flat_map(|n| prop::collection::vec(event(n), 0..48))
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec((any::<bool>(), 1u8..40), 0..12),
        prop::collection::vec((0usize..100, 0usize..6), 0..4),
        prop::option::of(0u32..40_000),
        any::<bool>(),
    )
        .prop_map(|(runs, crashes, tick_ms, prune)| Plan {
            runs,
            crashes,
            tick_ms,
            // Monotone clocks: the tightest pruning (no margin) must not change anything.
            prune_margin_ms: prune.then_some(0),
        })
}

/// The horizon `H`: the default (unbounded), or configured, down to `W` itself.
fn horizon() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(5_000u64)),
        1 => Just(Some(60_000u64)),
        1 => Just(Some(3_600_000u64)),
        1 => Just(Some(86_400_000u64)),
    ]
}

/// A node away behind a queued sender (none, or on A or B): start and length in ms after T0,
/// from a few ms to beyond any horizon above.
fn outage() -> impl Strategy<Value = Option<(bool, i64, i64)>> {
    prop::option::of((
        any::<bool>(),
        0i64..200_000,
        prop_oneof![0i64..6_000, 0i64..120_000, 0i64..172_800_000],
    ))
}

fn cfg() -> impl Strategy<Value = (u64, usize, u64)> {
    (
        prop_oneof![Just(5_000u64), Just(6_000), Just(60_000)],
        prop_oneof![Just(1usize), Just(3), Just(1 << 20)],
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Relative to the crate directory (cargo runs tests there): dedup/proptest-regressions/.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/prop.txt"
        ))),
        ..ProptestConfig::default()
    })]

    /// Nondecreasing clocks per node, random skew between them, a node away behind a queued
    /// sender (its copies delivered late, beyond `W` and beyond `H`): exact per-key counts.
    #[test]
    fn streaming_equals_reference(
        events in events(),
        skew_b_ms in prop_oneof![
            -1_500i64..1_500,
            -12_000i64..12_000,
            (-24i64..24).prop_map(|x| x * 500)
        ],
        outage in outage(),
        plan in plan(),
        horizon_ms in horizon(),
        (memory_ms, entries_max, seed) in cfg(),
    ) {
        let mut j = journals(&events, skew_b_ms);
        if let Some((on_b, start_ms, len_ms)) = outage {
            backlog(&mut j[usize::from(on_b)], start_ms, len_ms);
        }
        let log = drive(&j, &plan, config(horizon_ms, memory_ms, entries_max, seed));
        if let Err(e) = check(&j, &log, horizon_ms, true) {
            prop_assert!(false, "{}", e);
        }
    }

    /// A node's clock steps back a little: nothing lost or doubled, pairing stays valid.
    #[test]
    fn clock_step_back_loses_and_doubles_nothing(
        events in events(),
        skew_b_ms in -3_000i64..3_000,
        step in (any::<bool>(), 0usize..48, 1i64..=STEP_MAX_MS as i64),
        plan in plan(),
        horizon_ms in horizon(),
        (memory_ms, entries_max, seed) in cfg(),
    ) {
        let mut j = journals(&events, skew_b_ms);
        let (on_b, at, step_ms) = step;
        step_back(&mut j[usize::from(on_b)], at, step_ms);
        let plan = Plan { prune_margin_ms: plan.prune_margin_ms.map(|_| STEP_MAX_MS), ..plan };
        let log = drive(&j, &plan, config(horizon_ms, memory_ms, entries_max, seed));
        if let Err(e) = check(&j, &log, horizon_ms, false) {
            prop_assert!(false, "{}", e);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/prop.txt"
        ))),
        ..ProptestConfig::default()
    })]

    /// The in-memory horizon (memory_ms, memory_entries_max, ticks), the hash seed and pruning
    /// the history (within the clock-step margin) change only speed and memory: the stream
    /// log is identical, entry for entry, with everything matched through the history (1 entry
    /// in memory) or everything in memory.
    #[test]
    fn memory_settings_never_change_outputs(
        events in events(),
        skew_b_ms in -12_000i64..12_000,
        step in (any::<bool>(), 0usize..48, 0i64..=STEP_MAX_MS as i64),
        outage in outage(),
        plan in plan(),
        horizon_ms in horizon(),
        seed in any::<u64>(),
    ) {
        let mut j = journals(&events, skew_b_ms);
        let (on_b, at, step_ms) = step;
        step_back(&mut j[usize::from(on_b)], at, step_ms);
        if let Some((on_b, start_ms, len_ms)) = outage {
            backlog(&mut j[usize::from(on_b)], start_ms, len_ms);
        }
        let all_in_memory = drive(
            &j,
            &Plan { tick_ms: None, prune_margin_ms: None, ..plan.clone() },
            config(horizon_ms, u64::MAX / 2, 1 << 20, 0),
        );
        let plan = Plan { prune_margin_ms: plan.prune_margin_ms.map(|_| STEP_MAX_MS), ..plan };
        let mostly_history = drive(&j, &plan, config(horizon_ms, 5_000, 1, seed));
        prop_assert_eq!(all_in_memory, mostly_history);
    }
}
