#!/usr/bin/env bash
# The fault campaign (SPEC "Failure patterns"): runs every network-namespace failure pattern of
# tests/netns_faults.rs N times with seeded random timings against a release build with the
# `fault-injection` feature, and prints a table per pattern (runs, passed, failover ms
# p50/p99/max, sent / in stream / missing / duplicated, double publishers). Exit non-zero on
# any failed run (a loss, a duplicate, a double publisher, a failover over 3 s, a failed
# resync). Needs root, iproute2, iputils-ping, nftables (deploy/install-test-peers.sh).
#
#   tests/fault-campaign.sh [--rounds N] [--patterns F5,F7,...] [--seed S] [--verbose]
#
# Patterns: F5 F6 F7 F8-journal F8-merger F8-slowdisk F11 F12 F13 F12+F1 netem (F8 = F8-journal,
# combo = F12+F1, slow = netem). F14 (Kafka down) is covered by tests/sink_e2e.rs.
# A failed run prints its seed: FAULT_SEED=S replays the campaign's timings.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=1
patterns=""
seed=""
verbose=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --patterns) patterns="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --verbose) verbose=1; shift ;;
        -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fault-campaign.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

export FAULT_ROUNDS="$rounds"
export FAULT_PATTERNS="$patterns"
[ -n "$seed" ] && export FAULT_SEED="$seed"
[ -n "$verbose" ] && export FAULT_VERBOSE=1

cargo build --release --features fault-injection --bin twinrx
exec cargo test --release --features fault-injection --test netns_faults -- \
    --ignored --exact campaign --nocapture --test-threads=1
