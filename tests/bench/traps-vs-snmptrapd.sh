#!/usr/bin/env bash
# Benchmark: SNMPv2c traps into one twinrx node (default fsync policy "batch") vs snmptrapd -Lf
# (the reference), same sender (`twinrx gen --protocol snmp-trap`), same ~200-byte traps, same
# rate steps, one run. Method: ../shared/BASELINES.md.
#
# usage: tests/bench/traps-vs-snmptrapd.sh [--seconds S] [--rates "R1 R2 ..."]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_STEP=5
RATES="20000 40000 100000 200000 400000"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_STEP=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-target}/release/twinrx
WORK=$(mktemp -d /var/tmp/twinrx-bench.XXXXXX)
IP_REF=127.0.0.61
IP_TX=127.0.0.62
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
export MIBS=""

settle() { # cmd printing a number: wait until it is stable for 1 s (at most 60 s)
  local last=-1 cur i
  for i in $(seq 300); do
    cur=$("$@" 2>/dev/null || echo 0)
    [ "$cur" = "$last" ] && { echo "$cur"; return; }
    last=$cur; sleep 1
  done
  echo "$last"
}

cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }   # utime + stime
TCK=$(getconf CLK_TCK)
printf '%-8s %-10s %9s %9s %9s %9s %8s\n' rate receiver sent got lost_pct send_rate cpu_us/msg
for R in $RATES; do
  COUNT=$((R * SECONDS_PER_STEP))
  D=$WORK/ref-$R; mkdir -p "$D"
  printf 'disableAuthorization yes\n[snmp] serverRecvBuf 4194304\n' > "$D/snmptrapd.conf"
  snmptrapd -f -C -c "$D/snmptrapd.conf" -Lf "$D/out" -p "$D/pid" udp:$IP_REF:5162 2>/dev/null & P=$!; PIDS+=("$P")
  for _ in $(seq 50); do [ -e "$D/pid" ] && break; sleep 0.1; done
  "$BIN" gen --protocol snmp-trap --to $IP_REF:5162 --count "$COUNT" --rate "$R" --size 200 \
    --run-id "ref$R" --manifest "$D/m.json" 2>/dev/null
  got=$(settle sh -c "grep -o 'T=ref$R:[0-9]*' '$D/out' | sort -u | wc -l")
  ticks=$(cpu_ticks "$P")
  kill -TERM "$P"; wait "$P" 2>/dev/null || true
  sent=$(python3 -c "import json;print(json.load(open('$D/m.json'))['attempted'])")
  srate=$(python3 -c "import json;m=json.load(open('$D/m.json'));print(int(m['attempted']*1000/max(m['duration_ms'],1)))")
  printf '%-8s %-10s %9s %9s %9s %9s %8s\n' "$R" snmptrapd "$sent" "$got" "$(python3 -c "print(f'{100*($sent-$got)/$sent:.3f}')")" "$srate" \
    "$(python3 -c "print(f'{$ticks*1e6/$TCK/max($got,1):.2f}')")"
  rm -f "$D/out"

  D=$WORK/tx-$R; mkdir -p "$D"
  printf '[node]\nname = "a"\ndata_dir = "data"\n[syslog]\nudp = []\ntcp = []\n[snmp]\nlisten = ["%s:5162"]\n[admin]\nlisten = "%s:7401"\n' $IP_TX $IP_TX > "$D/node.toml"
  "$BIN" node --config "$D/node.toml" 2>"$D/node.err" & P=$!; PIDS+=("$P")
  for _ in $(seq 100); do curl -sf "http://$IP_TX:7401/status" >/dev/null && break; sleep 0.1; done
  "$BIN" gen --protocol snmp-trap --to $IP_TX:5162 --count "$COUNT" --rate "$R" --size 200 \
    --run-id "tx$R" --manifest "$D/m.json" 2>/dev/null
  settle sh -c "curl -sf http://$IP_TX:7401/status | python3 -c 'import json,sys;print(json.load(sys.stdin)[\"stream\"][\"next_offset\"])'" >/dev/null
  got=$("$BIN" check --json --manifest "$D/m.json" --node "http://$IP_TX:7401" | python3 -c 'import json,sys;print(json.load(sys.stdin)["present"])' || true)
  ticks=$(cpu_ticks "$P")
  kill -TERM "$P"; wait "$P" 2>/dev/null || true
  sent=$(python3 -c "import json;print(json.load(open('$D/m.json'))['attempted'])")
  srate=$(python3 -c "import json;m=json.load(open('$D/m.json'));print(int(m['attempted']*1000/max(m['duration_ms'],1)))")
  printf '%-8s %-10s %9s %9s %9s %9s %8s\n' "$R" twinrx "$sent" "$got" "$(python3 -c "print(f'{100*($sent-$got)/$sent:.3f}')")" "$srate" \
    "$(python3 -c "print(f'{$ticks*1e6/$TCK/max($got,1):.2f}')")"
  rm -rf "$D/data"
done
