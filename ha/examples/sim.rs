//! Long simulator campaigns: `cargo run --release -p ha --example sim -- --schedules N [--seed S]
//! [--pattern NAME] [--policy witness|fence|ping] [--verbose]`.
//!
//! Prints one summary line `schedules=N violations=V failover_ms_p50=… failover_ms_p99=…
//! failover_ms_max=…` (with `--verbose`, also per-pattern figures and schedules per second) and
//! exits non-zero on any violation, after printing each failing seed and its replay command.

use std::process::ExitCode;
use std::time::Instant;

use ha::sim::{percentiles, run_schedule, Pattern, SimOptions, Summary};
use ha::Policy;

fn main() -> ExitCode {
    let mut schedules = 1000u64;
    let mut seed = 1u64;
    let mut verbose = false;
    let mut opts = SimOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_default();
        match a.as_str() {
            "--schedules" => schedules = val().parse().unwrap_or(schedules),
            "--seed" => seed = val().parse().unwrap_or(seed),
            "--verbose" => verbose = true,
            "--trace" => opts.trace = true,
            "--pattern" => {
                let name = val();
                match Pattern::ALL
                    .iter()
                    .find(|p| format!("{p:?}").eq_ignore_ascii_case(&name))
                {
                    Some(p) => opts.patterns = vec![*p],
                    None => {
                        eprintln!("unknown --pattern {name}; one of {:?}", Pattern::ALL);
                        return ExitCode::from(2);
                    }
                }
            }
            "--policy" => {
                opts.policy = match val().as_str() {
                    "witness" => Policy::Witness,
                    "fence" => Policy::FenceCommand,
                    "ping" => Policy::PingTargets,
                    other => {
                        eprintln!("unknown --policy {other}: witness, fence or ping");
                        return ExitCode::from(2);
                    }
                }
            }
            "--help" | "-h" => {
                println!(
                    "usage: sim [--schedules N] [--seed S] [--pattern NAME] [--policy witness|fence|ping] [--verbose]"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}; try --help");
                return ExitCode::from(2);
            }
        }
    }
    let started = Instant::now();
    let mut summary = Summary::default();
    for k in 0..schedules {
        summary.add(run_schedule(seed.wrapping_add(k), &opts));
    }
    let secs = started.elapsed().as_secs_f64();
    for o in &summary.failed {
        eprintln!("seed {} ({:?}) violated:", o.seed, o.pattern);
        for v in &o.violations {
            eprintln!("  {v}");
        }
        let pat = if opts.patterns.len() == 1 {
            format!(" --pattern {:?}", o.pattern)
        } else {
            String::new()
        };
        eprintln!(
            "  replay: cargo run --release -p ha --example sim -- --schedules 1 --seed {}{pat}",
            o.seed
        );
    }
    if verbose {
        for (p, v) in &summary.per_pattern {
            let mut v = v.clone();
            if let Some((p50, p99, max)) = percentiles(&mut v) {
                println!("pattern={p:?} n={} failover_ms_p50={p50} failover_ms_p99={p99} failover_ms_max={max}", v.len());
            }
        }
        println!(
            "measured={} events={} seconds={secs:.2} schedules_per_s={:.0}",
            summary.measured,
            summary.events,
            schedules as f64 / secs
        );
    }
    println!("{}", summary.line());
    if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
