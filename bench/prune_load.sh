#!/usr/bin/env bash
# Retention under load (BENCHMARKS.md, "How to run them"): on a copy of the fixture of
# bench/fixture.sh, the release server takes the inbound load for RUN_SECONDS; PRUNE_AT
# seconds in, `twilio-receiver prune` removes exactly the fixture's oldest day. Prints the
# webhooks acknowledged in each second (before, during and after the prune), then one
# results line with the worst second during the prune as a fraction of the median second
# before it.
#
#   bash bench/prune_load.sh
#   REPORT=1 bash bench/prune_load.sh
#
# REPORT=1 also starts, 0.5 s before the prune, a 4-second report reading `messages` in one
# transaction (a count of the last 2 days, then pg_sleep(4)), as a dashboard might.
# REPORT=idle holds the same transaction open as long, idle (psql's `\! sleep 4`): its
# lock on `messages` without a snapshot, which tells the cost of the lock from the cost of
# the snapshot (row versions the writers replace cannot be cleaned up while it lasts).
# PRUNE_REST sets prune's --rest (its default when unset).
# PRUNE=0 is the control run: the same without the prune, its worst second taken over the
# report (REPORT=1), or over the 2 seconds from the prune's start (about as long as a day's
# prune takes at 10M).
#
# Settings (environment): PGURL, CONNECTIONS (64), RULES and BIN as in bench/run.sh;
# FIXTURE_ROWS (1000000) and FIXTURE_EVENTS (1) as in bench/run.sh, RUN_SECONDS (30),
# PRUNE_AT (8), REPORT (0), REQUESTS (25,000 per second of the run: the generator stops
# early when they run out), LOAD_CONTACTS (1,000: the contacts the load's webhooks come
# from), PORT (18280), DB (twr_scale_prune: created from the fixture's template, dropped at
# the end).
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
CONNECTIONS=${CONNECTIONS:-64}
RULES=${RULES:-config/rules.toml}
FIXTURE_ROWS=${FIXTURE_ROWS:-1000000}
RUN_SECONDS=${RUN_SECONDS:-30}
PRUNE_AT=${PRUNE_AT:-8}
REPORT=${REPORT:-0}
LOAD_CONTACTS=${LOAD_CONTACTS:-1000}
PRUNE=${PRUNE:-1}
REQUESTS=${REQUESTS:-$((25000 * RUN_SECONDS))}
PORT=${PORT:-18280}
DB=${DB:-twr_scale_prune}

cargo build --release --locked --quiet --bin twilio-receiver
# The generator's own executable, started in the background and stopped by the trap.
load_bin=$(cargo bench --locked --no-run --bench load --message-format=json 2>/dev/null |
  grep '"name":"load"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
work=$(mktemp -d)
pids=()
trap 'kill "${servers[@]}" "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=bench/server.sh
source bench/server.sh
# shellcheck source=bench/template.sh
source bench/template.sh

now_ms() { echo $(($(date +%s%N) / 1000000)); }
sleep_until_ms() {
  local wait=$(($1 - $(now_ms)))
  if ((wait > 0)); then sleep "$((wait / 1000)).$(printf %03d $((wait % 1000)))"; fi
}

template=$(fixture_template)
fixture_copy "$DB" "$template"
start_server 0
psql -q "$PGURL/$DB" -c checkpoint
# The fixture's oldest day ends at this midnight (Unix seconds).
cutoff=$(psql -At "$PGURL/$DB" \
  -c "select extract(epoch from date_trunc('day', min(received_at)) + interval '1 day')::bigint
      from messages")

"$load_bin" --addr "127.0.0.1:$PORT" --workload inbound --connections "$CONNECTIONS" \
  --seconds "$RUN_SECONDS" --requests "$REQUESTS" --contacts "$LOAD_CONTACTS" --token bench-token \
  --public-url https://hooks.example.com --database-url "$PGURL/$DB" --per-second \
  --label "rules=$RULES" >"$work/load" 2>"$work/load.err" &
load_pid=$!
pids+=("$load_pid")
until grep -q '^started_unix_ms=' "$work/load"; do
  kill -0 "$load_pid" 2>/dev/null || { cat "$work/load.err"; exit 1; }
  sleep 0.05
done
start=$(sed -n 's/^started_unix_ms=//p' "$work/load")

report_start=0 report_end=0
reporting=0
if [[ $REPORT != 0 ]]; then reporting=1; fi
hold=(-c "select pg_sleep(4)")
if [[ $REPORT == idle ]]; then hold=(-c '\! sleep 4'); fi
if ((reporting)); then
  sleep_until_ms $((start + PRUNE_AT * 1000 - 500))
  report_start=$(now_ms)
  {
    psql -q -o /dev/null "$PGURL/$DB" -c "begin" \
      -c "select count(*) from messages where received_at > now() - interval '2 days'" \
      "${hold[@]}" -c "commit"
    now_ms >"$work/report_end"
  } &
  report_pid=$!
  pids+=("$report_pid")
fi

sleep_until_ms $((start + PRUNE_AT * 1000))
# Whole seconds since the midnight: prune's cutoff falls less than a second after it, plus
# its own start-up; the fixture has no row in a day's first minute.
age=$(($(date +%s) - cutoff))s
prune_start=$(now_ms)
if ((PRUNE)); then
  DATABASE_URL="$PGURL/$DB" RUST_LOG=warn "$BIN" prune --older-than "$age" \
    ${PRUNE_REST:+--rest "$PRUNE_REST"} >"$work/prune" 2>&1
else
  echo "(control run: no prune)" >"$work/prune"
  ((reporting)) || sleep_until_ms $((prune_start + 2000))
fi
prune_end=$(now_ms)
if ((reporting)); then
  wait "$report_pid"
  report_end=$(cat "$work/report_end")
  # The control run's window is the report's.
  ((PRUNE)) || prune_end=$report_end
fi
wait "$load_pid"
stop_servers
psql -q "$PGURL/postgres" -c "drop database $DB"

# Seconds of the run (from the generator's start) as s.mmm.
at() { local ms=$(($1 - start)); echo "$((ms / 1000)).$(printf %03d $((ms % 1000)))"; }
echo "prune: $(at "$prune_start") to $(at "$prune_end") s: $(tr '\n' ' ' <"$work/prune")"
rs=$PRUNE_AT
if ((reporting)); then
  rs=$(at "$report_start")
  echo "report: $rs to $(at "$report_end") s"
fi
grep '^second=' "$work/load" | sed 's/[a-z_]*=//g' |
  awk -v ps="$(at "$prune_start")" -v pe="$(at "$prune_end")" -v rs="$rs" \
    -v report="$reporting" -v kind="$REPORT" -v contacts="$LOAD_CONTACTS" -v prune="$PRUNE" -v run="$RUN_SECONDS" '
    function median(a, n,   i, j, t) {
      if (!n) return 0
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    BEGIN { first = report ? (rs < ps ? rs : ps) : ps; worst = -1 }
    # Only whole seconds of the run; second 0 opens the connections.
    $1 >= 1 && $1 < run {
      s = $1; n = $2; max = $3
      if (s + 1 <= first) { phase = "before"; b[++nb] = n; if (max > bmax) bmax = max }
      else if (s <= pe && s + 1 > ps) {
        phase = "prune"; if (worst < 0 || n < worst) worst = n; if (max > dmax) dmax = max
      } else if (s > pe) { phase = "after"; a[++na] = n }
      else phase = "report"
      printf "second=%d acknowledged=%d max_ms=%s %s\n", s, n, max, phase
    }
    END {
      before = median(b, nb)
      printf "prune_under_load prune=" prune " report=" kind " contacts=" contacts " prune_s=%.2f before_median_per_s=%d worst_during_per_s=%d worst_ratio=%.2f after_median_per_s=%d max_ms_before=%s max_ms_during=%s\n",
        pe - ps, before, worst, before ? worst / before : 0, median(a, na), bmax, dmax
    }'
grep -v -e '^second=' -e '^started_unix_ms=' "$work/load" | sed "s/\$/ fixture_rows=$FIXTURE_ROWS/"
