#!/usr/bin/env bash
# Flake hunt: runs the test suite, or chosen test binaries, N times (optionally beside
# stress-ng) and prints a table of test x failures, the runs passed / total and each run's wall
# time. Builds once first; every run's whole output is kept, and a failing end-to-end test
# keeps its evidence (logs, status, timeline: tests/common `keep_evidence`) beside it.
#
#   tests/soak.sh --runs N [--stress] [--tests "ha_e2e sink_e2e ..."] [--debug]
#                 [--out DIR] [--run-timeout SECS] [-- extra cargo test args]
#
#   --runs N           how many runs (default 5)
#   --stress           run `stress-ng --cpu 2 --hdd 1` beside the runs (started here, killed
#                      by its PID at the end and on any exit)
#   --tests "A B"      test binaries to run, each `cargo test --test A`; `PKG:A` for a binary of
#                      a workspace crate (`cargo test -p PKG --test A`). Default: the whole
#                      workspace suite, `cargo test --workspace --features fault-injection`
#   --debug            debug build (default: --release)
#   --out DIR          where the runs' output goes (default: target/soak/<date>-<time>)
#   --run-timeout SECS one run is killed after this long and counts as failed (default 1800)
#   -- ARGS            passed to the test binaries, e.g. `-- --test-threads 2 file_sink`
#
# Output in DIR: run-K.log (cargo's and libtest's output of run K), run-K-evidence/ (kept
# evidence of failing tests), summary.txt (the table). Exit 0 when every run passed.
# Needs root and the test peers (deploy/install-test-peers.sh), stress-ng for --stress.
# Example: tests/soak.sh --runs 20 --stress --tests sink_e2e -- file_sink
set -euo pipefail
cd "$(dirname "$0")/.."

runs=5
stress=""
tests=""
profile="--release"
out=""
run_timeout=1800
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --stress) stress=1; shift ;;
        --tests) tests="$2"; shift 2 ;;
        --debug) profile=""; shift ;;
        --out) out="$2"; shift 2 ;;
        --run-timeout) run_timeout="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
extra=("$@")
case "$runs" in ''|*[!0-9]*|0) echo "soak.sh: --runs takes a positive number" >&2; exit 2 ;; esac
case "$run_timeout" in ''|*[!0-9]*|0) echo "soak.sh: --run-timeout takes seconds" >&2; exit 2 ;; esac

out="${out:-target/soak/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export MIBS="${MIBS-}"

# One cargo invocation per selected binary (cargo runs binaries one after the other anyway).
invocations=()
if [ -z "$tests" ]; then
    invocations+=("--workspace")
else
    for t in $tests; do
        case "$t" in
            *:*) invocations+=("-p ${t%%:*} --test ${t#*:}") ;;
            *) invocations+=("--test $t") ;;
        esac
    done
fi

stress_pid=""
stop_stress() {
    if [ -n "$stress_pid" ]; then
        kill -TERM "$stress_pid" 2>/dev/null || true
        wait "$stress_pid" 2>/dev/null || true
        stress_pid=""
    fi
}
trap stop_stress EXIT
trap 'exit 130' INT TERM

echo "soak: building once ($([ -n "$profile" ] && echo release || echo debug))" >&2
for inv in "${invocations[@]}"; do
    # shellcheck disable=SC2086 # $inv is a list of cargo arguments
    cargo test $profile --features fault-injection $inv --no-run
done

if [ -n "$stress" ]; then
    command -v stress-ng >/dev/null || { echo "soak.sh: stress-ng is not installed" >&2; exit 2; }
    # Bounded even if this script is killed with SIGKILL: at most every run's timeout.
    stress-ng --cpu 2 --hdd 1 --temp-path "$out" --timeout "$((runs * run_timeout))" \
        >"$out/stress-ng.log" 2>&1 &
    stress_pid=$!
    echo "soak: stress-ng --cpu 2 --hdd 1 running (pid $stress_pid)" >&2
fi

passed=0
walls=()
for k in $(seq 1 "$runs"); do
    log="$out/run-$k.log"
    : >"$log"
    export TWINRX_EVIDENCE_DIR="$out/run-$k-evidence"
    t0=$(date +%s.%N)
    rc=0
    for inv in "${invocations[@]}"; do
        r=0
        # shellcheck disable=SC2086
        timeout --kill-after=30 "$run_timeout" \
            cargo test $profile --features fault-injection $inv -- "${extra[@]}" \
            >>"$log" 2>&1 || r=$?
        [ "$r" -ne 0 ] && rc=$r
    done
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    walls+=("$wall")
    [ "$rc" -eq 0 ] && passed=$((passed + 1))
    printf 'soak: run %d/%d: exit %d, %.0f s\n' "$k" "$runs" "$rc" "$wall" >&2
    echo "SOAK-RUN $k exit $rc" >>"$log"
done
stop_stress

# The table: `test NAME ... FAILED` lines of libtest, named by their test binary (cargo's
# `Running tests/x.rs (target/.../x-HASH)` line before them); a run that failed without any
# such line (a crash, a timeout, a build error) counts under "(run failed, no FAILED test)".
{
    echo "runs passed: $passed / $runs$([ -n "$stress" ] && echo ' (beside stress-ng --cpu 2 --hdd 1)')"
    echo "selection: ${tests:-whole workspace suite}  ${extra[*]:+test args: ${extra[*]}}"
    for k in $(seq 1 "$runs"); do
        printf 'run %d: %.0f s, exit %s\n' "$k" "${walls[$((k - 1))]}" \
            "$(sed -n 's/^SOAK-RUN [0-9]* exit //p' "$out/run-$k.log")"
    done
    echo
    printf '%-8s %-10s %s\n' failures runs test
    for k in $(seq 1 "$runs"); do
        awk -v run="$k" '
            /^ *Running / { bin = $0; sub(/.*\(/, "", bin); sub(/\).*/, "", bin);
                            sub(/.*\//, "", bin); sub(/-[0-9a-f]+$/, "", bin) }
            /^ *Doc-tests / { bin = "doctest-" $2 }
            /^test .* \.\.\. FAILED$/ { name = $2; print bin "::" name "\t" run; found = 1 }
            /^SOAK-RUN / && $4 != 0 && !found { print "(run failed, no FAILED test)\t" run }
        ' "$out/run-$k.log"
    done | sort -t "$(printf '\t')" -k1,1 -k2,2n | awk -F'\t' '
        { n[$1]++; r[$1] = r[$1] (r[$1] == "" ? "" : ",") $2 }
        END { for (t in n) printf "%-8d %-10s %s\n", n[t], r[t], t }' | sort -k1,1nr -k3
    echo
    echo "output: $out (run-K.log, run-K-evidence/)"
} | tee "$out/summary.txt"
[ "$passed" -eq "$runs" ]
