#!/usr/bin/env bash
# Reads on the fixture of bench/fixture.sh (BENCHMARKS.md, "How to run them"): planning and
# execution time of a contact's history (README, "Questions and the SQL that answers them")
# and of a 24-hour count per channel. Each query runs under EXPLAIN (ANALYZE, BUFFERS) with
# jit off (as the server's connections) RUNS + 1 times in one session, as on a pooled
# connection; the first run is discarded (it warms the cache) and the median of the others
# is printed, one line per query.
#
#   bash bench/reads.sh
#
# Settings (environment): PGURL and BIN as in bench/run.sh; FIXTURE_ROWS (1000000) and
# FIXTURE_EVENTS (1) as there; DB (the fixture's template itself, read in place: nothing here
# writes); CONTACT (a contact of the fixture and of the load generator,
# whatsapp:+15550000042); RUNS (3); PLANS (0; 1: also print each query's last plan).
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
FIXTURE_ROWS=${FIXTURE_ROWS:-1000000}
CONTACT=${CONTACT:-whatsapp:+15550000042}
RUNS=${RUNS:-3}
PLANS=${PLANS:-0}
if [[ -z ${DB:-} ]]; then
  cargo build --release --locked --quiet --bin twilio-receiver
  # shellcheck source=bench/template.sh
  source bench/template.sh
  DB=$(fixture_template)
fi
plan=$(mktemp)
trap 'rm -f "$plan"' EXIT

# name|SQL: the README's questions as written, and the count of SCALE.md 4.3.
queries=(
  "history|select at, direction, body, num_media, status, error_code, in_reply_to
   from conversation_messages where contact = '$CONTACT' order by at"
  "last_20|select at, direction, body, status from conversation_messages
   where contact = '$CONTACT' order by at desc limit 20"
  "count_24h|select channel, direction, count(*) from messages
   where received_at > now() - interval '24 hours' group by 1, 2"
)

for query in "${queries[@]}"; do
  name=${query%%|*} sql=${query#*|}
  for ((i = 0; i <= RUNS; i++)); do
    echo "explain (analyze, buffers) $sql;"
  done | psql -qAt -v ON_ERROR_STOP=1 "$PGURL/$DB" -c "set jit = off" -f - >"$plan"
  if ((PLANS)); then
    echo "-- $name, the last run:"
    awk -v runs="$RUNS" 'n == runs; /^Execution Time:/ { n++ }' "$plan"
  fi
  # The times of each run but the first, and the rows of the top node.
  awk -v name="$name" -v runs="$RUNS" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    /^Planning Time:/ { if (++p > 1) plan[p - 1] = $3 }
    /^Execution Time:/ { if (++e > 1) exec[e - 1] = $3 }
    /actual time=/ && !top { top = 1; match($0, /rows=[0-9]+ loops/); rows = substr($0, RSTART + 5, RLENGTH - 11) }
    /^Execution Time:/ { top = 0 }
    END {
      printf "query=%s planning_ms=%.3f execution_ms=%.3f rows=%s runs=%d fixture_rows='"$FIXTURE_ROWS"' db='"$DB"'\n",
        name, median(plan, runs), median(exec, runs), rows, runs
    }' "$plan"
done
# What the 24-hour window held (the fixture ends at today's midnight, so it depends on the
# time of day).
echo "messages_last_24h=$(psql -At "$PGURL/$DB" \
  -c "select count(*) from messages where received_at > now() - interval '24 hours'")"
