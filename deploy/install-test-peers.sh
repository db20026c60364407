#!/usr/bin/env bash
# Installs the real peers twinrx is tested against (Debian packages):
#   logger (util-linux/bsdutils), rsyslog + rsyslog-gnutls (forwarding over TCP and TLS),
#   Net-SNMP's snmptrap/snmpinform (snmp) and snmptrapd (the baseline), openssl (test
#   certificates, s_client), iproute2 (network namespaces for fault tests), nftables (packet
#   loss on the namespaces' links: this kernel has no netem), tcpdump (the cluster link's
#   bytes must hold no message text); and, from PyPI,
#   noida-db (a Kafka-protocol broker for the sink tests).
# Run as root. Safe to run again.
set -euo pipefail
pkgs=(bsdutils util-linux rsyslog rsyslog-gnutls snmp snmptrapd openssl iproute2 procps iputils-ping nftables tcpdump)
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
for t in logger rsyslogd snmptrap snmpinform snmptrapd openssl ip ping nft tcpdump; do
  command -v "$t" >/dev/null || { echo "missing $t after install" >&2; exit 1; }
done
# A Kafka-protocol broker for the sink tests (tests/sink_e2e.rs): noida-db from PyPI (there is
# no Kafka in Debian). The tests run its server binary directly (found through the package).
# rdkafka's bundled librdkafka builds with gcc/make/perl alone: no cmake or -dev package.
noida_version=0.2.3
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('noida-db') != '$noida_version')" 2>/dev/null; then
  pip_args=(-q --disable-pip-version-check --root-user-action=ignore "noida-db==$noida_version")
  # Debian's own python3 refuses pip installs (PEP 668); a test machine may have only that one.
  python3 -m pip install "${pip_args[@]}" 2>/dev/null \
    || python3 -m pip install --break-system-packages "${pip_args[@]}"
fi
python3 -c "import noida_db, os; p = os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'); assert os.access(p, os.X_OK), p" \
  || { echo "noida-db installed without its server binary" >&2; exit 1; }
echo "test peers installed: ${pkgs[*]} noida-db==$noida_version"
