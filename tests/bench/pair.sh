#!/usr/bin/env bash
# Benchmark of the pair (two nodes + witness, default settings, loopback) in one run:
#   1. throughput: N syslog/UDP messages sent to BOTH nodes at each rate, committed entries,
#      missing / duplicated (`twinrx check`) and kernel UDP drops; the same against one node
#      without [pair]/[ha] (the single-node figure);
#   2. end-to-end latency at a moderate rate: send (the generator's RFC 5424 timestamp, µs) ->
#      entry read from the active's `GET /stream?follow=1` (committed only), p50/p99/max, plus the
#      node's own receive -> durable-in-stream histogram (`stream.latency_us_p50/p99`, power-of-2
#      buckets);
#   3. failover: SIGKILL of the active at a random moment under continuous load, kill -> the other
#      node publishing (role active|solo) with its ha.stream_end past its value at the kill
#      (polled every 10 ms), restart, wait for redundancy, repeat; then the whole stream is checked;
#   4. resync: the standby is stopped (SIGTERM), ~RESYNC_BYTES of 1 KiB messages go to the active
#      (TCP), the standby is restarted and `twinrx resync` is timed until it exits 0.
#   6. retention (not in the default phases; use with --extra-config holding retention keys):
#      OUTAGE_COUNT 200-byte messages to BOTH nodes (TCP, unpaced); each node's data directory
#      per area, `twinrx tail --from earliest` (count, contiguous to the last offset),
#      `GET /stream?from=0` (410 once retention deleted offset 0), restart to redundant.
#   5. outage (not in the default phases): the standby is stopped, OUTAGE_COUNT 200-byte
#      messages go to the active alone (TCP, unpaced); the active's RSS is sampled every second
#      (peak and a timeline), with its history index (entries in memory / on disk) and data
#      directory size per area; then the standby is restarted, `twinrx resync` is timed and
#      both nodes' streams are checked; finally the active is restarted (SIGTERM) and the
#      time from start to a redundant pair is measured.
#
# usage: tests/bench/pair.sh [--count N] [--rates "R1 R2 ... 0"] [--latency-rate R]
#          [--latency-seconds S] [--failovers N] [--failover-rate R] [--resync-bytes B]
#          [--phases "throughput latency failover resync outage"] [--outage-count N] [--outage-rate R]
#          [--extra-config FILE] [--quick] [--keep]
# Defaults: --count 300000 --rates "50000 100000 150000 0" (0: as fast as the sender goes)
#   --latency-rate 20000 --latency-seconds 10 --failovers 20 --failover-rate 5000
#   --resync-bytes 1073741824 --outage-count 2000000 --outage-rate 0 (unpaced). --extra-config appends FILE to both
#   node configs (e.g. retention keys). --quick: count 20000, rates "20000 0", latency 3 s,
#   3 failovers, 100 MiB resync. --keep keeps the work directory (logs) and prints its path.
# Prints lines starting with BENCH; results go to docs/PERFORMANCE.md by hand.
# Addresses: nodes 127.0.0.71/.72, witness .73, single node .74 (ports as `twinrx lab`).
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=300000
RATES="50000 100000 150000 0"
LAT_RATE=20000
LAT_SECONDS=10
FAILOVERS=20
FO_RATE=5000
RESYNC_BYTES=$((1024 * 1024 * 1024))
PHASES="throughput latency failover resync"
OUTAGE_COUNT=2000000
OUTAGE_RATE=0
EXTRA_CONFIG=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    --latency-rate) LAT_RATE=$2; shift 2 ;;
    --latency-seconds) LAT_SECONDS=$2; shift 2 ;;
    --failovers) FAILOVERS=$2; shift 2 ;;
    --failover-rate) FO_RATE=$2; shift 2 ;;
    --resync-bytes) RESYNC_BYTES=$2; shift 2 ;;
    --phases) PHASES=$2; shift 2 ;;
    --outage-count) OUTAGE_COUNT=$2; shift 2 ;;
    --outage-rate) OUTAGE_RATE=$2; shift 2 ;;
    --extra-config) EXTRA_CONFIG=$(realpath "$2"); shift 2 ;;
    --quick) COUNT=20000; RATES="20000 0"; LAT_SECONDS=3; FAILOVERS=3
             RESYNC_BYTES=$((100 * 1024 * 1024)); shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/targets/bench}
cargo build --release -q
BIN=$CARGO_TARGET_DIR/release/twinrx
WORK=$(mktemp -d /var/tmp/twinrx-pair-bench.XXXXXX)
IP_A=127.0.0.71
IP_B=127.0.0.72
IP_W=127.0.0.73
IP_S=127.0.0.74
declare -A PID=()      # a, b, w, s -> pid of the running process (empty when stopped)
ALL_PIDS=()            # every process started (cleanup signals only those still ours)
LOADER=""              # background load loop (failover phase)
cleanup() {
  [ -n "$LOADER" ] && { touch "$WORK/fo/stop"; kill "$LOADER" 2>/dev/null || true; }
  for p in "${ALL_PIDS[@]}"; do
    # only a process that still is one of ours (our twinrx binary): no pid reuse surprise
    if grep -qs "twinrx" "/proc/$p/cmdline"; then kill -TERM "$p" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
log() { echo "pair.sh: $*" >&2; }
now_ns() { date +%s%N; }

# ---------------------------------------------------------------- helper (status polling etc.)
cat > "$WORK/h.py" <<'PY'
import json, os, re, signal, sys, time, urllib.request, http.client, datetime

def status(url, timeout=1.0):
    with urllib.request.urlopen(url + "/status", timeout=timeout) as r:
        return json.load(r)

def field(d, path):
    for k in path.split("."):
        d = d[k] if d is not None else None
    return d

def out(v):
    print(v if isinstance(v, str) else json.dumps(v))

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "get":                      # URL PATH... : one line per path ('' when unreachable)
    try:
        d = status(args[0])
        for p in args[1:]:
            out(field(d, p))
    except Exception:
        for p in args[1:]:
            print("")
elif cmd == "ready":                  # URL... TIMEOUT_S : all answer /status
    deadline = time.time() + float(args[-1])
    for u in args[:-1]:
        while True:
            try:
                status(u, 0.5); break
            except Exception:
                if time.time() > deadline: sys.exit(1)
                time.sleep(0.05)
elif cmd == "redundant":              # URL_A URL_B TIMEOUT_S : both redundant, one active publishing;
    ua, ub, t = args[0], args[1], float(args[2])      # prints "a" or "b" (the active)
    deadline = time.time() + t
    while time.time() < deadline:
        try:
            sa, sb = status(ua, 0.5), status(ub, 0.5)
            if sa["ha"]["redundant"] and sb["ha"]["redundant"]:
                for name, s in (("a", sa), ("b", sb)):
                    if s["ha"]["role"] == "active" and s["ha"]["publishing"]:
                        print(name); sys.exit(0)
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(1)
elif cmd == "settle":                 # URL TARGET QUIET_S TIMEOUT_S : committed end == TARGET or quiet
    u, target, quiet, t = args[0], int(args[1]), float(args[2]), float(args[3])
    deadline, last, since = time.time() + t, -1, time.time()
    while time.time() < deadline:
        try:
            c = status(u)["stream"]["committed_end"] or 0
        except Exception:
            c = last
        if c >= target:
            last = c; break
        if c != last:
            last, since = c, time.time()
        elif time.time() - since >= quiet:
            break
        time.sleep(0.2)
    print(last)
elif cmd == "failover":               # PID SURVIVOR_URL TIMEOUT_S : SIGKILL pid, print ms to takeover
    pid, u, t = int(args[0]), args[1], float(args[2])
    pre = status(u)["ha"]["stream_end"] or 0
    t0 = time.time_ns()
    os.kill(pid, signal.SIGKILL)
    while (time.time_ns() - t0) / 1e9 < t:
        try:
            h = status(u, 0.5)["ha"]
            if h["publishing"] and h["role"] in ("active", "solo") and (h["stream_end"] or 0) > pre:
                print("%.1f" % ((time.time_ns() - t0) / 1e6)); sys.exit(0)
        except Exception:
            pass
        time.sleep(0.01)
    print("timeout"); sys.exit(1)
elif cmd == "follow":                 # HOSTPORT FROM COUNT TIMEOUT_S OUTFILE : read /stream follow
    host, frm, count, t, outf = args[0], int(args[1]), int(args[2]), float(args[3]), args[4]
    ts = re.compile(rb'"received_at":"([^"]+)".*?"timestamp":"([^"]+)"')
    def ns(s):  # RFC 3339 UTC with up to 9 fraction digits -> ns since the epoch
        s = s.decode().rstrip("Z")
        base, _, frac = s.partition(".")
        sec = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc).timestamp()
        return int(sec) * 10**9 + int((frac + "000000000")[:9])
    c = http.client.HTTPConnection(host, timeout=t)
    c.request("GET", "/stream?from=%d&follow=1" % frm)
    r = c.getresponse()
    deadline, n, buf, res = time.time() + t, 0, b"", []
    while n < count and time.time() < deadline:
        chunk = r.read1(1 << 20)
        now = time.time_ns()
        if not chunk: break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for l in lines:
            if not l: continue
            n += 1
            m = ts.search(l)
            if m:
                res.append((now - ns(m.group(2)), now - ns(m.group(1))))
    with open(outf, "w") as f:
        for a, b in res:
            f.write("%d %d\n" % (a, b))
    print(n)
elif cmd == "pct":                    # FILE COLUMN : p50 p99 max (ms) of column (ns)
    v = sorted(int(l.split()[int(args[1])]) for l in open(args[0]) if l.strip())
    if not v: print("- - -"); sys.exit(0)
    q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
    print("%.2f %.2f %.2f" % (q(0.5) / 1e6, q(0.99) / 1e6, v[-1] / 1e6))
elif cmd == "pctf":                   # FILE : p50 p99 max of floats
    v = sorted(float(l) for l in open(args[0]) if l.strip() and l.strip() != "timeout")
    if not v: print("- - -"); sys.exit(0)
    q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
    print("%.0f %.0f %.0f" % (q(0.5), q(0.99), v[-1]))
elif cmd == "manifest":               # FILE : attempted rate_achieved
    m = json.load(open(args[0]))
    print(m["attempted"], int(m["attempted"] * 1000 / max(m["duration_ms"], 1)))
elif cmd == "check":                  # JSON report on stdin: missing duplicated present gaps
    r = json.load(sys.stdin)
    print(r["missing"], r["duplicated"], r["present"], r["offset_gaps"])
PY
h() { python3 "$WORK/h.py" "$@"; }

# ---------------------------------------------------------------- configs and processes
"$BIN" keys init "$WORK/keys" --days 30 > /dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/admin.token"; chmod 600 "$WORK/admin.token"
node_toml() { # name me other -> pair node config
  cat <<CONF
[node]
name = "$1"
data_dir = "data-$1"
[syslog]
udp = ["$2:5514"]
tcp = ["$2:5514"]
[snmp]
listen = []
[admin]
listen = "$2:7401"
token_file = "admin.token"
[pair]
peer = ["$3:7400"]
listen = ["$2:7400"]
ca_file = "keys/ca.pem"
cert_file = "keys/$1.pem"
key_file = "keys/$1.key"
[ha]
witness = "$IP_W:7402"
CONF
}
node_toml a $IP_A $IP_B > "$WORK/a.toml"
node_toml b $IP_B $IP_A > "$WORK/b.toml"
if [ -n "$EXTRA_CONFIG" ]; then
  cat "$EXTRA_CONFIG" >> "$WORK/a.toml"; cat "$EXTRA_CONFIG" >> "$WORK/b.toml"
fi
cat > "$WORK/w.toml" <<CONF
listen = "$IP_W:7402"
admin_listen = "$IP_W:7403"
data_dir = "data-w"
ca_file = "keys/ca.pem"
cert_file = "keys/witness.pem"
key_file = "keys/witness.key"
CONF
cat > "$WORK/s.toml" <<CONF
[node]
name = "a"
data_dir = "data-s"
[syslog]
udp = ["$IP_S:5514"]
tcp = ["$IP_S:5514"]
[snmp]
listen = []
[admin]
listen = "$IP_S:7401"
CONF
declare -A URL=([a]=http://$IP_A:7401 [b]=http://$IP_B:7401 [s]=http://$IP_S:7401 [w]=http://$IP_W:7403)
declare -A IP=([a]=$IP_A [b]=$IP_B [s]=$IP_S)
other() { [ "$1" = a ] && echo b || echo a; }

start() { # a|b|w|s
  local kind=node; [ "$1" = w ] && kind=witness
  (cd "$WORK" && exec "$BIN" $kind --config "$1.toml" 2>>"$WORK/$1.log") &
  PID[$1]=$!; ALL_PIDS+=("$!")
}
stop() { # a|b|w|s (SIGTERM, wait)
  local p=${PID[$1]:-}
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  PID[$1]=""
}
cpu_ticks() { # a|b|s ... : user + system clock ticks of those processes
  local t=0 p
  for n in "$@"; do
    p=${PID[$n]:-}
    [ -n "$p" ] && [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo $t
}
fresh_pair() { # stops everything, wipes the data, starts the trio; sets ACTIVE/STANDBY
  stop a; stop b; stop w; stop s
  rm -rf "$WORK"/data-*
  start w; start a; start b
  h ready "${URL[a]}" "${URL[b]}" 30 || { log "nodes did not answer"; exit 1; }
  ACTIVE=$(h redundant "${URL[a]}" "${URL[b]}" 60) || { log "pair not redundant within 60 s"; exit 1; }
  STANDBY=$(other "$ACTIVE")
}
fresh_single() {
  stop a; stop b; stop w; stop s
  rm -rf "$WORK"/data-*
  start s
  h ready "${URL[s]}" 30 || { log "single node did not answer"; exit 1; }
}
phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

echo "BENCH pair setup: $(nproc) cpus, $(uname -r), count=$COUNT rates=\"$RATES\" latency_rate=$LAT_RATE failovers=$FAILOVERS failover_rate=$FO_RATE resync_bytes=$RESYNC_BYTES"

# ---------------------------------------------------------------- 1. throughput
if phase throughput; then
  for R in $RATES; do
    for SETUP in pair single; do
      D=$WORK/tp-$SETUP-$R; mkdir -p "$D"
      if [ $SETUP = pair ]; then
        fresh_pair; TO=(--to $IP_A:5514 --to $IP_B:5514); U=${URL[$ACTIVE]}
      else
        fresh_single; TO=(--to $IP_S:5514); U=${URL[s]}
      fi
      if [ $SETUP = pair ]; then NODES=(a b); else NODES=(s); fi
      c0=$(cpu_ticks "${NODES[@]}"); t0=$(date +%s.%N)
      "$BIN" gen "${TO[@]}" --count "$COUNT" --rate "$R" --run-id "tp$SETUP$R" \
        --manifest "$D/m.json" --timeout-s 300 2>"$D/gen.err"
      committed=$(h settle "$U" "$COUNT" 10 180)
      c1=$(cpu_ticks "${NODES[@]}"); t1=$(date +%s.%N)
      # CPU of the node processes (user + system) per 1000 messages, and committed per second.
      cpu=$(python3 -c "print('%.1f' % (($c1 - $c0) * 1000 / $(getconf CLK_TCK) / ($COUNT / 1000)))")
      crate=$(python3 -c "print(int($committed / ($t1 - $t0)))")
      curl -sf "$U/stream?from=0" > "$D/stream.ndjson"
      read -r missing dup present gaps < <("$BIN" check --json --manifest "$D/m.json" \
        --stream "$D/stream.ndjson" 2>/dev/null | h check || echo "- - - -")
      read -r sent srate < <(h manifest "$D/m.json")
      if [ $SETUP = pair ]; then
        drops="$(h get "${URL[a]}" receivers.syslog.udp_kernel_drops)/$(h get "${URL[b]}" receivers.syslog.udp_kernel_drops)"
      else
        drops=$(h get "$U" receivers.syslog.udp_kernel_drops)
      fi
      lossless=no; [ "$missing" = 0 ] && [ "$dup" = 0 ] && lossless=yes
      echo "BENCH throughput setup=$SETUP rate=$R sent=$sent send_rate=$srate (messages/s, each to every node) committed=$committed missing=$missing duplicated=$dup offset_gaps=$gaps udp_kernel_drops=$drops lossless=$lossless commit_rate=$crate cpu_ms_per_1k=$cpu"
      rm -f "$D/stream.ndjson"
    done
  done
fi

# ---------------------------------------------------------------- 2. latency
if phase latency; then
  D=$WORK/lat; mkdir -p "$D"
  fresh_pair; U=${URL[$ACTIVE]}
  N=$((LAT_RATE * LAT_SECONDS))
  from=$(h get "$U" ha.commit_end)
  h follow "${IP[$ACTIVE]}:7401" "${from:-0}" "$N" $((LAT_SECONDS + 60)) "$D/lat.txt" > "$D/read" &
  FOLLOWER=$!
  sleep 0.5
  "$BIN" gen --to $IP_A:5514 --to $IP_B:5514 --count "$N" --rate "$LAT_RATE" --run-id lat \
    --manifest "$D/m.json" 2>"$D/gen.err"
  wait "$FOLLOWER" || true
  read -r sent srate < <(h manifest "$D/m.json")
  read -r e50 e99 emax < <(h pct "$D/lat.txt" 0)
  read -r r50 r99 rmax < <(h pct "$D/lat.txt" 1)
  read -r s50 s99 < <(h get "$U" stream.latency_us_p50 stream.latency_us_p99 | paste -sd' ')
  echo "BENCH latency rate=$LAT_RATE sent=$sent send_rate=$srate entries_read=$(cat "$D/read") send_to_read_ms p50=$e50 p99=$e99 max=$emax (gen timestamp -> committed entry read from /stream?follow=1 on the active)"
  echo "BENCH latency rate=$LAT_RATE received_to_read_ms p50=$r50 p99=$r99 max=$rmax (entry received_at -> read)"
  echo "BENCH latency rate=$LAT_RATE node_status_us p50=$s50 p99=$s99 (stream.latency_us_*, receive -> durable in stream, power-of-2 bucket bounds)"
fi

# ---------------------------------------------------------------- 3. failover
if phase failover; then
  D=$WORK/fo; mkdir -p "$D"
  fresh_pair
  CHUNK=$((FO_RATE * 2))
  # continuous load: 2-second chunks, one manifest each, the same run id, consecutive numbers
  ( i=0; while [ ! -e "$D/stop" ] && [ $i -lt 100000 ]; do
      "$BIN" gen --to $IP_A:5514 --to $IP_B:5514 --count $CHUNK --rate "$FO_RATE" --run-id fo \
        --first $((i * CHUNK)) --manifest "$D/m-$i.json" 2>>"$D/gen.err" || true
      i=$((i + 1))
    done ) &
  LOADER=$!
  : > "$D/ms.txt"; ok=0
  for round in $(seq "$FAILOVERS"); do
    sleep "$(python3 -c 'import random; print(round(random.uniform(1, 3), 3))')"
    victim=$ACTIVE; surv=$(other "$victim")
    ms=$(h failover "${PID[$victim]}" "${URL[$surv]}" 60 || true)
    wait "${PID[$victim]}" 2>/dev/null || true; PID[$victim]=""
    echo "$ms" >> "$D/ms.txt"
    log "failover $round/$FAILOVERS: killed $victim, $surv took over in ${ms} ms"
    start "$victim"
    h ready "${URL[$victim]}" 30 || { log "restarted node $victim does not answer"; exit 1; }
    t0=$(now_ns)
    ACTIVE=$(h redundant "${URL[a]}" "${URL[b]}" 300) || { log "pair not redundant 300 s after restart"; exit 1; }
    log "  redundant again $(( ($(now_ns) - t0) / 1000000 )) ms after $victim answered; active $ACTIVE"
    [ "$ms" != timeout ] && ok=$((ok + 1))
  done
  touch "$D/stop"; wait "$LOADER" 2>/dev/null || true; LOADER=""
  total=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["attempted"] for f in sys.argv[1:]))' "$D"/m-*.json)
  committed=$(h settle "${URL[$ACTIVE]}" "$total" 10 180)
  curl -sf "${URL[$ACTIVE]}/stream?from=0" > "$D/stream.ndjson"
  MAN=(); for f in "$D"/m-*.json; do MAN+=(--manifest "$f"); done
  read -r missing dup present gaps < <("$BIN" check --json "${MAN[@]}" --stream "$D/stream.ndjson" 2>/dev/null | h check || echo "- - - -")
  read -r f50 f99 fmax < <(h pctf "$D/ms.txt")
  lossless=no; [ "$missing" = 0 ] && [ "$dup" = 0 ] && lossless=yes
  echo "BENCH failover kills=$FAILOVERS taken_over=$ok load_rate=$FO_RATE failover_ms p50=$f50 p99=$f99 max=$fmax (SIGKILL of the active -> other node publishing, stream_end grown; polled every 10 ms)"
  echo "BENCH failover stream sent=$total committed=$committed missing=$missing duplicated=$dup offset_gaps=$gaps lossless=$lossless"
  rm -f "$D/stream.ndjson"
fi

# ---------------------------------------------------------------- 4. resync
if phase resync; then
  D=$WORK/rs; mkdir -p "$D"
  fresh_pair
  N=$(( (RESYNC_BYTES + 1023) / 1024 ))
  stop "$STANDBY"
  jdir=$(h get "${URL[$ACTIVE]}" journal.dir)
  j0=$(du -sb "$jdir" | cut -f1); a0=$(h get "${URL[$ACTIVE]}" journal.appended)
  "$BIN" gen --to "${IP[$ACTIVE]}:5514" --transport tcp --size 1024 --count "$N" --rate 0 \
    --run-id rs --manifest "$D/m.json" --timeout-s 1200 2>"$D/gen.err"
  committed=$(h settle "${URL[$ACTIVE]}" "$N" 15 600)
  j1=$(du -sb "$jdir" | cut -f1); a1=$(h get "${URL[$ACTIVE]}" journal.appended)
  jbytes=$((j1 - j0))
  t0=$(now_ns)
  start "$STANDBY"
  h ready "${URL[$STANDBY]}" 60 || { log "restarted standby does not answer"; exit 1; }
  t1=$(now_ns)
  rc=0; "$BIN" resync --node "${URL[$STANDBY]}" --token-file "$WORK/admin.token" --timeout-secs 1800 > "$D/resync.out" 2>&1 || rc=$?
  t2=$(now_ns)
  secs=$(python3 -c "print(f'{($t2 - $t0) / 1e9:.2f}')")
  secs_rs=$(python3 -c "print(f'{($t2 - $t1) / 1e9:.2f}')")
  mbps=$(python3 -c "print(f'{$jbytes / 1e6 / max(($t2 - $t0) / 1e9, 1e-9):.1f}')")
  read -r missing dup present gaps < <("$BIN" check --json --manifest "$D/m.json" \
    --node "${URL[$STANDBY]}" 2>/dev/null | h check || echo "- - - -")
  echo "BENCH resync missed_records=$((a1 - a0)) missed_journal_bytes=$jbytes committed=$committed resync_exit=$rc seconds=$secs (restart -> resync exit 0; $secs_rs from admin up) MB_per_s=$mbps"
  echo "BENCH resync standby_stream missing=$missing duplicated=$dup offset_gaps=$gaps (its own /stream after the resync vs the manifest)"
  tail -1 "$D/resync.out" | sed 's/^/pair.sh: resync: /' >&2
fi

# ---------------------------------------------------------------- 5. outage
if phase outage; then
  D=$WORK/out; mkdir -p "$D"
  fresh_pair
  stop "$STANDBY"
  AP=${PID[$ACTIVE]}
  # RSS of the active every second until told to stop: "seconds rss_kib intake_queued_bytes
  # history_memory_entries"
  ( t0=$(date +%s); n=0
    while [ ! -e "$D/stop-rss" ] && [ $n -lt 7200 ]; do
      echo "$(( $(date +%s) - t0 )) $(awk '/^VmRSS/ {print $2}' "/proc/$AP/status" 2>/dev/null || echo 0)" \
        "$(h get "${URL[$ACTIVE]}" journal.queued_bytes stream.history.memory_entries | paste -sd' ')"
      sleep 1; n=$((n + 1))
    done ) > "$D/rss.txt" &
  SAMPLER=$!
  "$BIN" gen --to "${IP[$ACTIVE]}:5514" --transport tcp --size 200 --count "$OUTAGE_COUNT" \
    --rate "$OUTAGE_RATE" --run-id out --manifest "$D/m.json" --timeout-s 7200 2>"$D/gen.err"
  committed=$(h settle "${URL[$ACTIVE]}" "$OUTAGE_COUNT" 15 1800)
  sleep 6  # one prune/stats period of the writer (5 s) so status shows the final index
  read -r hm hd hr hdb hmb < <(h get "${URL[$ACTIVE]}" stream.history.memory_entries \
    stream.history.disk_entries stream.history.runs stream.history.disk_bytes \
    stream.history.memory_bytes | paste -sd' ')
  touch "$D/stop-rss"; wait "$SAMPLER" 2>/dev/null || true
  peak=$(sort -k2 -n "$D/rss.txt" | tail -1 | cut -d' ' -f2)
  timeline=$(python3 -c '
import sys
v=[l.split() for l in open(sys.argv[1]) if l.strip()]
step=max(1,len(v)//8)
print(" ".join("%ss:%dMiB(queue %dMiB)" % (x[0], int(x[1])//1024, int(x[2] or 0) >> 20) for x in v[::step] if len(x) >= 3))' "$D/rss.txt")
  ddir=$WORK/data-$ACTIVE
  sizes=$(for a in journal peer stream history; do
      [ -d "$ddir/$a" ] && echo -n "$a=$(du -sb "$ddir/$a" | cut -f1) "; done; echo "total=$(du -sb "$ddir" | cut -f1)")
  echo "BENCH outage messages=$OUTAGE_COUNT rate=$OUTAGE_RATE committed=$committed active_rss_peak_MiB=$((peak / 1024)) (sampled every 1 s)"
  echo "BENCH outage rss_timeline $timeline"
  echo "BENCH outage history memory_entries=$hm disk_entries=$hd runs=$hr disk_bytes=$hdb memory_bytes=$hmb"
  echo "BENCH outage data_dir_bytes $sizes"
  t0=$(now_ns)
  start "$STANDBY"
  h ready "${URL[$STANDBY]}" 60 || { log "restarted standby does not answer"; exit 1; }
  rc=0; "$BIN" resync --node "${URL[$STANDBY]}" --token-file "$WORK/admin.token" --timeout-secs 1800 > "$D/resync.out" 2>&1 || rc=$?
  t1=$(now_ns)
  for n in a b; do
    read -r missing dup present gaps < <("$BIN" check --json --manifest "$D/m.json" \
      --node "${URL[$n]}" 2>/dev/null | h check || echo "- - - -")
    echo "BENCH outage node=$n stream missing=$missing duplicated=$dup present=$present offset_gaps=$gaps"
  done
  echo "BENCH outage resync_exit=$rc seconds=$(python3 -c "print(f'{($t1 - $t0) / 1e9:.2f}')") (standby restart -> resync exit 0)"
  # restart of the node holding the whole stream: SIGTERM the active, start it, time to redundant
  ACTIVE=$(h redundant "${URL[a]}" "${URL[b]}" 120) || { log "pair not redundant after resync"; exit 1; }
  victim=$ACTIVE
  stop "$victim"
  t0=$(now_ns)
  start "$victim"
  h ready "${URL[$victim]}" 120 || { log "restarted node does not answer"; exit 1; }
  t1=$(now_ns)
  h redundant "${URL[a]}" "${URL[b]}" 300 > /dev/null || { log "pair not redundant after restart"; exit 1; }
  t2=$(now_ns)
  entries=$(h get "${URL[$victim]}" stream.next_offset)
  echo "BENCH outage restart node=$victim stream_entries=$entries start_to_admin_s=$(python3 -c "print(f'{($t1 - $t0) / 1e9:.2f}')") start_to_redundant_s=$(python3 -c "print(f'{($t2 - $t0) / 1e9:.2f}')")"
fi

# ---------------------------------------------------------------- 6. retention
if phase retention; then
  D=$WORK/ret; mkdir -p "$D"
  fresh_pair
  "$BIN" gen --to $IP_A:5514 --to $IP_B:5514 --transport tcp --size 200 --count "$OUTAGE_COUNT" \
    --rate 0 --run-id ret --manifest "$D/m.json" --timeout-s 3600 2>"$D/gen.err"
  committed=$(h settle "${URL[$ACTIVE]}" "$OUTAGE_COUNT" 15 1800)
  # settle returns at the count: wait for the stream to stop growing (copies still merging)
  committed=$(h settle "${URL[$ACTIVE]}" $((OUTAGE_COUNT * 4)) 15 1800)
  sleep 25  # retention passes: the writer (5 s), the journal (10 s), the copy
  echo "BENCH retention messages=$OUTAGE_COUNT stream_entries=$committed (more entries than messages: duplicates)"
  for n in a b; do
    ddir=$WORK/data-$n
    sizes=$(for a in journal peer stream history; do
        [ -d "$ddir/$a" ] && echo -n "$a=$(du -sb "$ddir/$a" | cut -f1) "; done
        echo "total=$(du -sb "$ddir" | cut -f1) total_MiB=$(( $(du -sb "$ddir" | cut -f1) >> 20 ))")
    echo "BENCH retention node=$n committed=$committed data_dir_bytes $sizes"
    # Bytes on disk per message sent (200 B each), per area and for journal + peer + stream
    # (the #14 target: at most 2x the message, 400 B). Only meaningful while retention has
    # deleted nothing (no retention keys, a large file system).
    per=$(for a in journal peer stream; do
        [ -d "$ddir/$a" ] && echo -n "$a=$(( $(du -sb "$ddir/$a" | cut -f1) / OUTAGE_COUNT )) "; done
        t=0; for a in journal peer stream; do [ -d "$ddir/$a" ] && t=$(( t + $(du -sb "$ddir/$a" | cut -f1) )); done
        echo "journal+peer+stream=$(( t / OUTAGE_COUNT )) message=200")
    echo "BENCH retention node=$n bytes_per_message $per"
  done
  "$BIN" tail --node "${URL[$ACTIVE]}" --from earliest > "$D/tail.ndjson"
  python3 - "$D/tail.ndjson" "$committed" <<'PY'
import json, sys
offs = [json.loads(l)["offset"] for l in open(sys.argv[1]) if l.strip()]
end = int(sys.argv[2])
contiguous = all(b == a + 1 for a, b in zip(offs, offs[1:]))
print("BENCH retention tail_from_earliest entries=%d first=%s last=%s contiguous=%s reaches_last=%s"
      % (len(offs), offs[0] if offs else "-", offs[-1] if offs else "-", contiguous,
         bool(offs) and offs[-1] == end - 1))
PY
  code=$(curl -s -o "$D/gone.json" -w '%{http_code}' "${URL[$ACTIVE]}/stream?from=0")
  echo "BENCH retention GET /stream?from=0 -> $code $(head -c 200 "$D/gone.json")"
  victim=$ACTIVE
  stop "$victim"
  t0=$(now_ns)
  start "$victim"
  h ready "${URL[$victim]}" 120 || { log "restarted node does not answer"; exit 1; }
  h redundant "${URL[a]}" "${URL[b]}" 300 > /dev/null || { log "pair not redundant after restart"; exit 1; }
  t2=$(now_ns)
  echo "BENCH retention restart node=$victim start_to_redundant_s=$(python3 -c "print(f'{($t2 - $t0) / 1e9:.2f}')")"
fi
