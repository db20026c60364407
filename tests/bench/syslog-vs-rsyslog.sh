#!/usr/bin/env bash
# Benchmark: twinrx (one node, default fsync policy "batch") vs rsyslog (imudp/imtcp -> omfile,
# in-memory queue, no fsync), same sender (`twinrx gen`), same 200-byte RFC 5424 messages,
# same rate steps, same machine, one run. Method: ../shared/BASELINES.md.
#
# usage: tests/bench/syslog-vs-rsyslog.sh [--seconds S] [--rates "R1 R2 ..."] [--transports "udp tcp"]
# Prints one line per (transport, rate, receiver) and a summary; results go to docs/PERFORMANCE.md by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_STEP=5
RATES="50000 100000 200000 300000 0"
TRANSPORTS="udp tcp"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_STEP=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    --transports) TRANSPORTS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-target}/release/twinrx
WORK=$(mktemp -d /var/tmp/twinrx-bench.XXXXXX)
IP_RS=127.0.0.51
IP_TX=127.0.0.52
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

rss_max_kib() { # pid -> prints max VmRSS (KiB) sampled every 100 ms until the pid's file $2 exists
  local pid=$1 stop=$2 max=0 v
  while [ ! -e "$stop" ] && kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$max" ] && max=$v
    sleep 0.1
  done
  echo "$max"
}

wait_stable() { # command printing a number; waits until it stops changing for 1 s (max 60 s)
  local last=-1 cur n=0
  while [ $n -lt 600 ]; do
    cur=$("$@" 2>/dev/null || echo 0)
    if [ "$cur" = "$last" ]; then
      sleep 1; cur2=$("$@" 2>/dev/null || echo 0); [ "$cur2" = "$cur" ] && { echo "$cur"; return; }
    fi
    last=$cur; sleep 0.2; n=$((n+1))
  done
  echo "$last"
}

cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }   # utime + stime, 1/100 s
TCK=$(getconf CLK_TCK)
printf '%-4s %-8s %-8s %9s %9s %9s %7s %9s %9s %8s\n' transport rate receiver sent got lost_pct send_rate rss_mib p99_us cpu_us/msg
for T in $TRANSPORTS; do
  for R in $RATES; do
    if [ "$R" = 0 ]; then COUNT=$((400000 * SECONDS_PER_STEP)); else COUNT=$((R * SECONDS_PER_STEP)); fi
    # ---- rsyslog
    D=$WORK/rs-$T-$R; mkdir -p "$D"
    if [ "$T" = udp ]; then
      IN='module(load="imudp" threads="1" batchSize="128")
input(type="imudp" address="'$IP_RS'" port="5514" ruleset="r" rcvbufSize="4m")'
    else
      IN='module(load="imtcp" maxSessions="10")
input(type="imtcp" address="'$IP_RS'" port="5514" ruleset="r")'
    fi
    cat > "$D/rs.conf" <<CONF
global(workDirectory="$D" maxMessageSize="8k")
$IN
ruleset(name="r" queue.type="fixedArray" queue.size="500000" queue.dequeueBatchSize="4096") {
  action(type="omfile" file="$D/out" ioBufferSize="64k" flushOnTXEnd="off" asyncWriting="on")
}
CONF
    rsyslogd -n -f "$D/rs.conf" -i "$D/rs.pid" 2>"$D/rs.err" & RSPID=$!; PIDS+=("$RSPID")
    for _ in $(seq 50); do [ -e "$D/rs.pid" ] && break; sleep 0.1; done
    rss_max_kib "$RSPID" "$D/done" > "$D/rss" &
    "$BIN" gen --to $IP_RS:5514 --transport "$T" --count "$COUNT" --rate "$R" --size 200 \
      --run-id "rs$T$R" --manifest "$D/m.json" 2>"$D/gen.err"
    got=$(wait_stable sh -c "grep -o 'T=rs$T$R:[0-9]*' '$D/out' 2>/dev/null | sort -u | wc -l")
    touch "$D/done"; sleep 0.2
    ticks=$(cpu_ticks "$RSPID")
    kill -TERM "$RSPID"; wait "$RSPID" 2>/dev/null || true
    sent=$(python3 -c "import json;print(json.load(open('$D/m.json'))['attempted'])")
    srate=$(python3 -c "import json;m=json.load(open('$D/m.json'));print(int(m['attempted']*1000/max(m['duration_ms'],1)))")
    printf '%-4s %-8s %-8s %9s %9s %9s %7s %9s %9s %8s\n' "$T" "$R" rsyslog "$sent" "$got" \
      "$(python3 -c "print(f'{100*($sent-$got)/$sent:.3f}')")" "$srate" "$(( $(cat "$D/rss") / 1024 ))" - \
      "$(python3 -c "print(f'{$ticks*1e6/$TCK/max($got,1):.2f}')")"
    # ---- twinrx
    D=$WORK/tx-$T-$R; mkdir -p "$D"
    cat > "$D/node.toml" <<CONF
[node]
name = "a"
data_dir = "data"
[syslog]
udp = ["$IP_TX:5514"]
tcp = ["$IP_TX:5514"]
[snmp]
listen = []
[admin]
listen = "$IP_TX:7401"
CONF
    "$BIN" node --config "$D/node.toml" 2>"$D/node.err" & NPID=$!; PIDS+=("$NPID")
    for _ in $(seq 100); do curl -sf "http://$IP_TX:7401/status" >/dev/null && break; sleep 0.1; done
    rss_max_kib "$NPID" "$D/done" > "$D/rss" &
    "$BIN" gen --to $IP_TX:5514 --transport "$T" --count "$COUNT" --rate "$R" --size 200 \
      --run-id "tx$T$R" --manifest "$D/m.json" 2>"$D/gen.err"
    wait_stable sh -c "curl -sf http://$IP_TX:7401/status | python3 -c 'import json,sys;print(json.load(sys.stdin)[\"stream\"][\"next_offset\"])'" >/dev/null
    curl -sf "http://$IP_TX:7401/stream?from=0" > "$D/stream.ndjson"
    p99=$(curl -sf "http://$IP_TX:7401/status" | python3 -c 'import json,sys;print(json.load(sys.stdin)["stream"]["latency_us_p99"])')
    touch "$D/done"; sleep 0.2
    ticks=$(cpu_ticks "$NPID")
    kill -TERM "$NPID"; wait "$NPID" 2>/dev/null || true
    got=$("$BIN" check --json --manifest "$D/m.json" --stream "$D/stream.ndjson" | python3 -c 'import json,sys;r=json.load(sys.stdin);print(r["present"])' || true)
    sent=$(python3 -c "import json;print(json.load(open('$D/m.json'))['attempted'])")
    srate=$(python3 -c "import json;m=json.load(open('$D/m.json'));print(int(m['attempted']*1000/max(m['duration_ms'],1)))")
    printf '%-4s %-8s %-8s %9s %9s %9s %7s %9s %9s %8s\n' "$T" "$R" twinrx "$sent" "$got" \
      "$(python3 -c "print(f'{100*($sent-$got)/$sent:.3f}')")" "$srate" "$(( $(cat "$D/rss") / 1024 ))" "$p99" \
      "$(python3 -c "print(f'{$ticks*1e6/$TCK/max($got,1):.2f}')")"
    rm -rf "$D/data" "$WORK"/rs-*/out
  done
done
