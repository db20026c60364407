#!/usr/bin/env bash
# Kafka sink throughput (docs/PERFORMANCE.md "Kafka sink"): records/s from a node's merged
# stream into a real broker through the sink (transactional producer, one transaction per
# batch of 1000), against rdkafka's idempotent producer writing the same entry lines (same
# headers) to the same broker in the same run. The broker is noida-db on 127.0.0.1 with a
# fresh data dir (deploy/install-test-peers.sh installs it).
#
#   tests/bench/kafka-sink.sh [RECORDS]        default 100000
#   BENCH_SINK='batch_records_max = 10000' tests/bench/kafka-sink.sh   (extra sink keys)
#
# Prints one line starting with BENCH.
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_RECORDS="${1:-100000}"
cargo test --release --test sink_e2e -- --ignored --nocapture --exact \
  bench_kafka_sink_vs_idempotent_producer 2>&1 | grep -E '^BENCH|test result|panicked'
