#!/usr/bin/env bash
# Instructions the server executes per webhook, counted by valgrind's callgrind: unlike
# webhooks/s and CPU seconds, the count does not move with a noisy host, so it compares two
# builds on any machine (BENCHMARKS.md). The release server runs under callgrind twice, for
# 1,000 and 3,000 requests of one workload at 16 connections; the difference of the totals,
# divided by 2,000, leaves out start-up and shutdown.
#
#   bash bench/instructions.sh [workload]      (inbound by default; status, mixed, duplicates)
#
# BIN (${CARGO_TARGET_DIR:-target}/release/twilio-receiver, built if missing), PGURL and RULES as in
# bench/run.sh, PORT (18180). The database twr_instructions is dropped and created for each run. Note that
# valgrind counts a `rep movsb` copy per byte, so large memcpy weighs more here than in time.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${1:-inbound}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
PORT=${PORT:-18180}
RULES=${RULES:-config/rules.toml}
DB=twr_instructions
[ -x "${BIN:-${CARGO_TARGET_DIR:-target}/release/twilio-receiver}" ] ||
  cargo build --release --locked --quiet --bin twilio-receiver
cargo bench --locked --quiet --no-run --bench load 2>/dev/null
work=$(mktemp -d)
trap 'kill "${servers[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=bench/server.sh
source bench/server.sh

# The total of instructions for a run of $1 requests, start-up and shutdown included.
total() {
  psql -q "$PGURL/postgres" -c "drop database if exists $DB with (force)" 2>/dev/null
  start_server 0 valgrind --tool=callgrind --callgrind-out-file="$work/out"
  cargo bench --locked --quiet --bench load -- --addr "127.0.0.1:$PORT" \
    --workload "$WORKLOAD" --connections 16 --seconds 1000 --requests "$1" >/dev/null 2>&1
  stop_servers
  awk '/^summary:/ { print $2 }' "$work/out"
}

small=$(total 1000)
large=$(total 3000)
echo "workload=$WORKLOAD instructions_per_webhook=$(( (large - small) / 2000 ))"
