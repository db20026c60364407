//! Simulator campaigns (STYLE §5.3). A failure prints the seed and the replay command.

use ha::sim::{percentiles, run_schedule, Broken, Outcome, Pattern, SimOptions, Summary};
use ha::Policy;

/// Runs seeds `first..first+n` on two threads (the machine is shared; one test, two cores).
fn campaign(first: u64, n: u64, opts: &SimOptions) -> Summary {
    let half = n / 2;
    let (a, b) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            (first..first + half)
                .map(|k| run_schedule(k, opts))
                .collect::<Vec<_>>()
        });
        let b: Vec<Outcome> = (first + half..first + n)
            .map(|k| run_schedule(k, opts))
            .collect();
        (h.join().expect("simulator thread panicked"), b)
    });
    let mut s = Summary::default();
    for o in a.into_iter().chain(b) {
        s.add(o);
    }
    s
}

fn report(s: &Summary) -> String {
    let mut out = String::new();
    for o in s.failed.iter().take(5) {
        out += &format!(
            "seed {} ({:?}): {:?}\n  replay: cargo run --release -p ha --example sim -- --schedules 1 --seed {}\n",
            o.seed, o.pattern, o.violations, o.seed
        );
    }
    out
}

/// The bar: at least 10,000 schedules, every invariant, every failure pattern.
#[test]
fn ten_thousand_schedules_hold_every_invariant() {
    let opts = SimOptions::default();
    let s = campaign(1, 10_000, &opts);
    println!("{}", s.line());
    for (p, v) in &s.per_pattern {
        let mut v = v.clone();
        println!("{p:?}: {:?}", percentiles(&mut v));
    }
    assert!(s.failed.is_empty(), "{}", report(&s));
    assert!(
        s.measured > 8_000,
        "too few schedules reached a redundant pair: {}",
        s.measured
    );
    // G4 with default settings where a quorum remains: p99 ≤ 1.5 s (the goal), except the
    // faults seen through health limits, a failing disk (a write hung for
    // fsync_latency_ms_max, 1 s) and a frozen pipeline (no merger progress for 1 s): there a
    // limit must hold over three reports and the standby's health be confirmed by a report
    // as recent as the trouble (issue #25: load that both nodes share hands nothing over),
    // so the bound is the target, 3 s. And a reboot (F3), whose p99 was already 1,554 ms over
    // 10,000 F3 schedules before that change (the restarted node's start-up promise holds
    // votes for lease + margin): this campaign's ~700 F3 schedules straddle the goal, so F3
    // is held to the target too.
    for (p, v) in &s.per_pattern {
        let mut v = v.clone();
        let (_, p99, _) = percentiles(&mut v).expect("non-empty");
        // F1AfterSlowStandby: the standby that takes over persists its vote and epoch through
        // its slow disk (up to a second per write), so its bound is the target too.
        let bound = if matches!(
            format!("{p:?}").as_str(),
            "F11DiskFails" | "F8PipelineStall" | "F3Reboot" | "F1AfterSlowStandby"
        ) {
            3000
        } else {
            1500
        };
        assert!(p99 <= bound, "{p:?}: failover p99 {p99} ms (bound {bound})");
    }
}

/// The same seed replays exactly.
#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions::default();
    for seed in [7, 4242, 99_991] {
        let a = run_schedule(seed, &opts);
        let b = run_schedule(seed, &opts);
        assert_eq!(
            (a.pattern, a.events, a.failover_ms, a.violations),
            (b.pattern, b.events, b.failover_ms, b.violations)
        );
    }
}

/// The checker can fail: a witness that votes without its lease promise and without checking
/// the candidate's stream lets a partitioned standby promote next to a live active.
#[test]
fn broken_witness_is_caught_within_200_seeds() {
    let opts = SimOptions {
        broken: Some(Broken::WitnessVotesBlindly),
        patterns: vec![
            Pattern::F12Partition,
            Pattern::F10StandbyDown,
            Pattern::Chaos,
        ],
        ..SimOptions::default()
    };
    let caught = (1..=200).map(|seed| run_schedule(seed, &opts)).find(|o| {
        o.violations
            .iter()
            .any(|v| v.contains("two publishers") || v.contains("lacking committed"))
    });
    let o = caught.expect("the broken witness was not caught in 200 seeds");
    println!("caught at seed {}: {:?}", o.seed, o.violations);
}

const SAFETY: [&str; 7] = [
    "two publishers",
    "two actives",
    "lacking committed",
    "committed",
    "backwards",
    "truncates",
    "uncommitted or wrong",
];

fn safety_violations(s: &Summary) -> Vec<(u64, String)> {
    s.failed
        .iter()
        .flat_map(|o| o.violations.iter().map(move |v| (o.seed, v.clone())))
        .filter(|(_, v)| SAFETY.iter().any(|k| v.contains(k)))
        .collect()
}

/// Two-node policy with a fence command: safe under every pattern (the fence powers the peer
/// off before anyone promotes or goes solo). Liveness is weaker than with a witness (see
/// README "Policies"), so only safety is asserted.
#[test]
fn fence_policy_is_safe() {
    let opts = SimOptions {
        policy: Policy::FenceCommand,
        ..SimOptions::default()
    };
    let s = campaign(1, 1000, &opts);
    let v = safety_violations(&s);
    assert!(v.is_empty(), "{v:?}");
}

/// The documented limit of ping targets: under a symmetric partition where both nodes still
/// reach the targets, both publish. This test keeps the README honest.
#[test]
fn ping_policy_split_brain_under_symmetric_partition() {
    let opts = SimOptions {
        policy: Policy::PingTargets,
        patterns: vec![Pattern::F12Partition],
        ..SimOptions::default()
    };
    let s = campaign(1, 50, &opts);
    let v = safety_violations(&s);
    assert!(
        v.iter().any(|(_, v)| v.contains("two publishers")),
        "expected split brain: {v:?}"
    );
}
