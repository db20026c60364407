#!/usr/bin/env bash
# Overload flood: several unpaced `twinrx gen` senders blast UDP syslog at one node for a while;
# the node's RSS is sampled every 0.5 s. Shows that memory stays flat (bounded queue, drops
# counted) whatever the offered load. Prints offered rate, accepted, drops by reason and RSS.
#
# usage: tests/bench/flood-rss.sh [--seconds S] [--senders N]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=10
SENDERS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECS=$2; shift 2 ;;
    --senders) SENDERS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-target}/release/twinrx
WORK=$(mktemp -d /var/tmp/twinrx-flood.XXXXXX)
IP=127.0.0.53
NPID=
cleanup() { [ -n "$NPID" ] && kill "$NPID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
printf '[node]\nname = "a"\ndata_dir = "data"\n[syslog]\nudp = ["%s:5514"]\ntcp = []\n[snmp]\nlisten = []\n[admin]\nlisten = "%s:7401"\n' $IP $IP > "$WORK/node.toml"
"$BIN" node --config "$WORK/node.toml" 2>"$WORK/node.err" & NPID=$!
for _ in $(seq 100); do curl -sf "http://$IP:7401/status" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/"$NPID"/status; }
echo "rss_mib before: $(rss)"
GENS=()
for i in $(seq "$SENDERS"); do
  "$BIN" gen --to $IP:5514 --count 100000000 --rate 0 --timeout-s "$SECS" --run-id "flood$i" \
    --manifest "$WORK/m$i.json" 2>"$WORK/gen$i.err" & GENS+=($!)
done
SAMPLES=()
for _ in $(seq $((SECS * 2))); do SAMPLES+=("$(rss)"); sleep 0.5; done
for g in "${GENS[@]}"; do wait "$g" || true; done
sleep 2
echo "rss_mib samples during the flood: ${SAMPLES[*]}"
echo "rss_mib after: $(rss)"
sent=0; for i in $(seq "$SENDERS"); do
  sent=$((sent + $(python3 -c "import json;print(json.load(open('$WORK/m$i.json'))['attempted'])")))
done
curl -sf "http://$IP:7401/status" | python3 -c "
import json,sys
s=json.load(sys.stdin); r=s['receivers']['syslog']
print(f'offered {$sent} in {$SECS}s ({$sent/$SECS:.0f}/s); journaled {s[\"journal\"][\"last_seq\"]}; '
      f'kernel drops {r[\"udp_kernel_drops\"]}; queue_full {r[\"discarded\"][\"queue_full\"]}; '
      f'stream latency p99 {s[\"stream\"][\"latency_us_p99\"]} us')
"
