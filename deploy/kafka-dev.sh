#!/usr/bin/env bash
# Starts a local Kafka-protocol broker (noida-db, from PyPI) for trying twinrx's Kafka sink,
# in the foreground (Ctrl-C stops it; the data stays in the data dir).
#
#   deploy/kafka-dev.sh [PORT] [DATA_DIR]      defaults: 9092, ./.kafka-dev
#
# Then add to the node's config (e.g. deploy/examples/single.toml) and restart the node:
#
#   [[sink]]
#   name = "kafka"
#   type = "kafka"
#   brokers = "127.0.0.1:9092"
#   topic = "twinrx"
#
# and read the topic as the monitoring pipeline would (read_committed), e.g. with kcat:
#   kcat -b 127.0.0.1:9092 -C -t twinrx -X isolation.level=read_committed -f '%h %s\n'
#
# noida-db is young: a development broker, not a production one. Give it a fresh data dir
# when in doubt.
set -euo pipefail
port="${1:-9092}"
dir="${2:-./.kafka-dev}"
version=0.2.3
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('noida-db') != '$version')" 2>/dev/null; then
  echo "installing noida-db==$version (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check "noida-db==$version" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "noida-db==$version"
fi
bin="$(python3 -c "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))")"
mkdir -p "$dir"
echo "Kafka broker on 127.0.0.1:$port, data in $dir (Ctrl-C stops it)" >&2
exec "$bin" start --data-dir "$dir" --host 127.0.0.1 --only kafka --kafka-port "$port"
