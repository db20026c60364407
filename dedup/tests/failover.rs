//! Failover at every point: for fixed journals and arrival orders, the active dies after
//! every possible number of records fed, losing 0 to 3 uncommitted outputs, and a fresh merger
//! recovered from the committed log finishes the job. Each run must account for every record
//! exactly once with the reference's events per key (`common::check`).

mod common;

use common::{check, config, drive, journals, Event, Plan};

/// 40 events on 3 keys: repeats, copies on one node only, B's clock 3.5 s behind, gaps long
/// enough that some copies are matched through the history.
fn scenario() -> Vec<Event> {
    (0u32..40)
        .map(|i| Event {
            key: (i % 3) as u8,
            gap_ms: [10, 900, 2_600, 7_000][(i % 4) as usize],
            presence: [2, 2, 0, 2, 1, 2, 2][(i % 7) as usize],
            jitter_a_ms: ((i * 37) % 1_500) as u16,
            jitter_b_ms: ((i * 53) % 1_500) as u16,
        })
        .collect()
}

#[test]
fn recovery_after_any_record_loses_and_doubles_nothing() {
    let j = journals(&scenario(), -3_500);
    let total = j[0].len() + j[1].len();
    let orders: [Vec<(bool, u8)>; 3] = [
        vec![],                        // alternate one by one
        vec![(false, 30), (true, 30)], // B lags 30 records
        vec![(true, 200)],             // all of B first, then A
    ];
    let mut runs = 0;
    for runs_plan in &orders {
        for at in 0..=total {
            for lost in 0..=3 {
                for (horizon_ms, memory_ms, entries_max) in [
                    (None, 60_000, 1 << 20),
                    (None, 5_000, 2),
                    (Some(5_000), 60_000, 1 << 20),
                    (Some(5_000), 5_000, 2),
                ] {
                    let plan = Plan {
                        runs: runs_plan.clone(),
                        crashes: vec![(at, lost), (at + 7, 1)],
                        tick_ms: None,
                        prune_margin_ms: Some(0),
                    };
                    let log = drive(&j, &plan, config(horizon_ms, memory_ms, entries_max, 7));
                    if let Err(e) = check(&j, &log, horizon_ms, true) {
                        panic!("order {runs_plan:?}, crash after {at} lost {lost}: {e}");
                    }
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 3 * (total + 1) * 4 * 4);
}
