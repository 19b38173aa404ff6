#!/usr/bin/env bash
# Runs every workload against a fresh database and the release server, and prints one
# results line per workload (see BENCHMARKS.md):
#
#   bash bench/run.sh
#
# Settings (environment): PGURL (a Postgres server where this user may create databases,
# default postgres://postgres@127.0.0.1:5432), CONNECTIONS (64), RUN_SECONDS (10), RULES
# (config/rules.toml, the shipped defaults), WORKLOADS ("inbound status mixed duplicates"),
# PORT (18080). The database twr_bench is dropped and created for each workload.
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
CONNECTIONS=${CONNECTIONS:-64}
RUN_SECONDS=${RUN_SECONDS:-10}
RULES=${RULES:-config/rules.toml}
WORKLOADS=${WORKLOADS:-inbound status mixed duplicates}
PORT=${PORT:-18080}
DB=twr_bench

cargo build --release --locked --quiet --bin twilio-receiver
cargo bench --locked --quiet --no-run --bench load 2>/dev/null
spool=$(mktemp -d)
log=$(mktemp)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$spool" "$log"' EXIT

start_server() {
  TWILIO_AUTH_TOKEN=bench-token \
  TWILIO_RECEIVER__SERVER__PUBLIC_URL=https://hooks.example.com \
  TWILIO_RECEIVER__SERVER__LISTEN=127.0.0.1:$PORT \
  TWILIO_RECEIVER__SERVER__ADMIN_LISTEN=127.0.0.1:0 \
  TWILIO_RECEIVER__SPOOL__DIR="$spool" \
  TWILIO_RECEIVER__RULES__PATH="$RULES" \
  DATABASE_URL="$PGURL/$DB" RUST_LOG=warn \
    target/release/twilio-receiver serve >"$log" 2>&1 &
  server=$!
  # Migrations run before the listener is bound, so an accepted connection means ready.
  # (bash's /dev/tcp: no process per attempt, so the wait measures the server, not us.)
  until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
  done
}

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
postgres_ticks() {
  local sum=0 pid
  for pid in $(pgrep -x postgres || true); do sum=$((sum + $(cpu_ticks "$pid"))); done
  echo "$sum"
}
status_kb() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

for workload in $WORKLOADS; do
  psql -q "$PGURL/postgres" -c "drop database if exists $DB with (force)"
  start_server
  # Every run starts just after a checkpoint, so each pays the same full-page writes.
  psql -q "$PGURL/$DB" -c checkpoint
  idle_kb=$(status_kb "$server" VmRSS)
  server_before=$(cpu_ticks "$server"); postgres_before=$(postgres_ticks)
  line=$(cargo bench --locked --quiet --bench load -- --addr "127.0.0.1:$PORT" \
    --workload "$workload" --connections "$CONNECTIONS" --seconds "$RUN_SECONDS" \
    --token bench-token --public-url https://hooks.example.com \
    --database-url "$PGURL/$DB" --label "rules=$RULES" 2>/dev/null)
  server_cpu=$(( $(cpu_ticks "$server") - server_before ))
  postgres_cpu=$(( $(postgres_ticks) - postgres_before ))
  peak_kb=$(status_kb "$server" VmHWM)
  kill -TERM "$server"; wait "$server" || true
  echo "$line server_cpu_s=$((server_cpu / 100)) postgres_cpu_s=$((postgres_cpu / 100)) server_rss_idle_mb=$((idle_kb / 1024)) server_rss_peak_mb=$((peak_kb / 1024))"
done

# Start to ready with migrations already applied (the database of the last run).
started=$(date +%s%N)
start_server
ready=$(date +%s%N)
echo "start_to_ready_ms=$(( (ready - started) / 1000000 )) server_rss_idle_mb=$(( $(status_kb "$server" VmRSS) / 1024 ))"
kill -TERM "$server"; wait "$server" || true
