#!/usr/bin/env bash
# Installs the real peers twinrx is tested against (Debian packages):
#   logger (util-linux/bsdutils), rsyslog + rsyslog-gnutls (forwarding over TCP and TLS),
#   Net-SNMP's snmptrap/snmpinform (snmp) and snmptrapd (the baseline), openssl (test
#   certificates, s_client), iproute2 (network namespaces for fault tests).
# Run as root. Safe to run again.
set -euo pipefail
pkgs=(bsdutils util-linux rsyslog rsyslog-gnutls snmp snmptrapd openssl iproute2 procps)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101: do not start the packaged daemons; the tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi
for t in logger rsyslogd snmptrap snmpinform snmptrapd openssl ip; do
  command -v "$t" >/dev/null || { echo "missing $t after install" >&2; exit 1; }
done
echo "test peers installed: ${pkgs[*]}"
