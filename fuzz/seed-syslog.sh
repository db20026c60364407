#!/usr/bin/env bash
# Captures the syslog seed corpus (fuzz/corpus/syslog) from util-linux `logger`, a real sender:
# each UDP datagram and each TCP connection's whole byte stream (RFC 6587 octet counting and
# non-transparent framing) becomes one file. Run from anywhere; needs python3 and logger.
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/syslog
mkdir -p "$out"
port=$(( 20000 + RANDOM % 20000 ))
python3 - "$out" "$port" <<'PY' &
import socket, sys, threading, os
out, port = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port)); u.settimeout(8)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", port)); t.listen(8); t.settimeout(8)
def tcp():
    n = 0
    try:
        while True:
            c, _ = t.accept(); data = b""
            while True:
                b = c.recv(65536)
                if not b: break
                data += b
            n += 1
            open(os.path.join(out, f"logger-tcp-{n}"), "wb").write(data)
    except socket.timeout:
        pass
th = threading.Thread(target=tcp); th.start()
n = 0
try:
    while True:
        d, _ = u.recvfrom(65536); n += 1
        open(os.path.join(out, f"logger-udp-{n}"), "wb").write(d)
except socket.timeout:
    pass
th.join()
PY
listener=$!
sleep 1
to=(-n 127.0.0.1 -P "$port")
logger "${to[@]}" --udp --rfc5424 -t app -p local3.warning "link down on Gi0/1"
logger "${to[@]}" --udp --rfc5424=notq,notime --msgid ID47 'structured [x] "quoted" \\ back'
logger "${to[@]}" --udp --rfc5424 --sd-id 'meta@32473' --sd-param 'sequenceId="7"' "with SD"
logger "${to[@]}" --udp --rfc3164 -t sshd -p auth.info "Accepted publickey for ops"
logger "${to[@]}" --udp --rfc3164 "$(printf 'tab\there, utf-8 \xc3\xa9, high \xff byte')"
logger "${to[@]}" --tcp --octet-count --rfc5424 "octet counted one" 
printf 'line one\nline two\n' | logger "${to[@]}" --tcp --octet-count --rfc5424 -t batch
printf 'nt one\nnt two\n' | logger "${to[@]}" --tcp --rfc3164 -t batch
wait "$listener"
ls -l "$out"
