#!/usr/bin/env bash
# Runs every workload against a fresh database and the release server, and prints one
# results line per workload (see BENCHMARKS.md):
#
#   bash bench/run.sh
#
# Settings (environment): PGURL (a Postgres server where this user may create databases,
# default postgres://postgres@127.0.0.1:5432), CONNECTIONS (64), RUN_SECONDS (10), RULES
# (config/rules.toml, the shipped defaults), WORKLOADS ("inbound status mixed duplicates"),
# PORT (18080), REPLICAS (1: that many server processes on PORT, PORT+1, ... share the
# database and the connections; AFFINITY=1 sends each contact to one replica only, as a load
# balancer hashing on the numbers would), RECONCILE (0; 1: a fake Twilio API with 2,000
# messages of the last hour on PORT+100, and the servers reconcile against it every second,
# as with reconcile.enabled), FIXTURE_ROWS (0; N: each workload starts on a copy of the
# history of bench/fixture.sh with about N messages over the last 90 days, its template built
# once a day by bench/template.sh; FIXTURE_EVENTS=0 leaves out its status events, and the
# copy is dropped at the end), DB (twr_bench). The database DB is dropped and created for
# each workload; after each run bench/checks.sql prints its consistency checks (all must be 0;
# CHECKS=0 skips them, which takes minutes on a large fixture). REQUESTS (200000) are
# prepared per workload; a run also ends when they are used up (status callbacks may take
# fewer than RUN_SECONDS: raise it for a full-length run).
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
CONNECTIONS=${CONNECTIONS:-64}
RUN_SECONDS=${RUN_SECONDS:-10}
RULES=${RULES:-config/rules.toml}
WORKLOADS=${WORKLOADS:-inbound status mixed duplicates}
PORT=${PORT:-18080}
REPLICAS=${REPLICAS:-1}
AFFINITY=${AFFINITY:-0}
RECONCILE=${RECONCILE:-0}
FIXTURE_ROWS=${FIXTURE_ROWS:-0}
CHECKS=${CHECKS:-1}
REQUESTS=${REQUESTS:-200000}
DB=${DB:-twr_bench}

cargo build --release --locked --quiet --bin twilio-receiver
cargo bench --locked --quiet --no-run --bench load 2>/dev/null
work=$(mktemp -d)
fake=()
trap 'kill "${servers[@]}" "${fake[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
if ((RECONCILE)); then
  fake_port=$((PORT + 100))
  # The benchmark's own executable, so that the trap stops the fake itself (not a cargo
  # process above it) and nothing else holds this script's output open.
  fake_bin=$(cargo bench --locked --no-run --bench backfill --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4)
  "$fake_bin" --serve-fake "$fake_port" --messages 2000 >"$work/fake.log" 2>&1 &
  fake+=($!)
  until (exec 3<>"/dev/tcp/127.0.0.1/$fake_port") 2>/dev/null; do
    kill -0 "${fake[0]}" 2>/dev/null || { cat "$work/fake.log"; exit 1; }
  done
  # Read by bench/server.sh: every server reconciles against the fake every second.
  SERVER_ENV="TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000
    TWILIO_RECEIVER__TWILIO__API_BASE_URL=http://127.0.0.1:$fake_port
    TWILIO_RECEIVER__RECONCILE__ENABLED=true TWILIO_RECEIVER__RECONCILE__INTERVAL_MS=1000"
fi
# shellcheck source=bench/server.sh
source bench/server.sh
if ((FIXTURE_ROWS)); then
  # shellcheck source=bench/template.sh
  source bench/template.sh
  template=$(fixture_template)
fi

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
postgres_ticks() {
  local sum=0 pid
  for pid in $(pgrep -x postgres || true); do sum=$((sum + $(cpu_ticks "$pid"))); done
  echo "$sum"
}
servers_ticks() {
  local sum=0 pid
  for pid in "${servers[@]}"; do sum=$((sum + $(cpu_ticks "$pid"))); done
  echo "$sum"
}
status_kb() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }
# The largest value of a /proc/<pid>/status field over the servers (memory is per process).
servers_kb() {
  local max=0 pid kb
  for pid in "${servers[@]}"; do
    kb=$(status_kb "$pid" "$1"); ((kb > max)) && max=$kb
  done
  echo "$max"
}

# Clock ticks (1/100 s) as seconds with one decimal.
tenths() { printf '%d.%d' $(($1 / 100)) $(($1 % 100 / 10)); }

addrs=127.0.0.1:$PORT
for ((i = 1; i < REPLICAS; i++)); do addrs+=",127.0.0.1:$((PORT + i))"; done

for workload in $WORKLOADS; do
  if ((FIXTURE_ROWS)); then
    fixture_copy "$DB" "$template"
  else
    psql -q "$PGURL/postgres" -c "drop database if exists $DB with (force)"
  fi
  for ((i = 0; i < REPLICAS; i++)); do start_server "$i"; done
  # Every run starts just after a checkpoint, so each pays the same full-page writes.
  psql -q "$PGURL/$DB" -c checkpoint
  idle_kb=$(servers_kb VmRSS)
  server_before=$(servers_ticks); postgres_before=$(postgres_ticks)
  fake_before=$( ((RECONCILE)) && cpu_ticks "${fake[0]}" || echo 0)
  line=$(cargo bench --locked --quiet --bench load -- --addr "$addrs" \
    --workload "$workload" --connections "$CONNECTIONS" --seconds "$RUN_SECONDS" \
    --requests "$REQUESTS" --token bench-token --public-url https://hooks.example.com \
    --database-url "$PGURL/$DB" --label "rules=$RULES" \
    $( ((AFFINITY)) && echo --affinity) 2>/dev/null)
  server_cpu=$(( $(servers_ticks) - server_before ))
  postgres_cpu=$(( $(postgres_ticks) - postgres_before ))
  fake_cpu=$(( $( ((RECONCILE)) && cpu_ticks "${fake[0]}" || echo 0) - fake_before ))
  peak_kb=$(servers_kb VmHWM)
  stop_servers
  checks=checks=skipped
  ((CHECKS)) && checks=$(psql -At "$PGURL/$DB" -F ' ' -f bench/checks.sql)
  ((FIXTURE_ROWS)) && checks+=" fixture_rows=$FIXTURE_ROWS"
  echo "$line replicas=$REPLICAS affinity=$AFFINITY reconcile=$RECONCILE server_cpu_s=$(tenths "$server_cpu") postgres_cpu_s=$(tenths "$postgres_cpu") fake_api_cpu_s=$(tenths "$fake_cpu") server_rss_idle_mb=$((idle_kb / 1024)) server_rss_peak_mb=$((peak_kb / 1024)) $checks"
done

# Start to ready with migrations already applied (the database of the last run).
started=$(date +%s%N)
start_server 0
ready=$(date +%s%N)
echo "start_to_ready_ms=$(( (ready - started) / 1000000 )) server_rss_idle_mb=$(( $(servers_kb VmRSS) / 1024 ))"
stop_servers
# A copy of a large fixture is no use after the run.
if ((FIXTURE_ROWS)); then psql -q "$PGURL/postgres" -c "drop database $DB"; fi
