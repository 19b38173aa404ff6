#!/usr/bin/env bash
# Builds the database DB holding a history of about ROWS messages over the 90 whole days
# (UTC) before today, as the server writes them (bench/fixture.sql says what is in it), for
# the benchmarks of history at scale (BENCHMARKS.md, "How to run them"):
#
#   ROWS=1000000 DB=twr_scale_fixture bash bench/fixture.sh
#
# bench/run.sh (FIXTURE_ROWS), bench/prune_load.sh and bench/reads.sh build it once a day as
# a template database (bench/template.sh) and copy it for each run.
#
# Settings (environment): PGURL (as in bench/run.sh), ROWS (1000000), CONTACTS (ROWS / 100,
# at least 1,000: the load generator's 1,000 contacts are the fixture's first ones), EVENTS
# (1; 0: outbound messages without their status events, about a third less disk), DB
# (twr_scale_fixture; dropped and created), BIN (the build whose migrations make the schema;
# ${CARGO_TARGET_DIR:-target}/release/twilio-receiver). Prints a line per day, then what was
# stored and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
ROWS=${ROWS:-1000000}
CONTACTS=${CONTACTS:-$((ROWS / 100 > 1000 ? ROWS / 100 : 1000))}
EVENTS=${EVENTS:-1}
DB=${DB:-twr_scale_fixture}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/twilio-receiver}

# A contact's exchanges (bench/fixture.sql) must be over 24 hours and 30 s apart.
per_day=$(((ROWS + 135) / 270))
if ((CONTACTS * 86280 <= per_day * 86430)); then
  echo "CONTACTS must exceed $per_day, the exchanges of a day" >&2
  exit 2
fi

started=$(date +%s%N)
psql -q "$PGURL/postgres" -c "drop database if exists $DB with (force)" -c "create database $DB"
DATABASE_URL="$PGURL/$DB" "$BIN" migrate >/dev/null
psql -qAt -v rows="$ROWS" -v contacts="$CONTACTS" -v events="$EVENTS" -f bench/fixture.sql "$PGURL/$DB"
loaded=$(date +%s%N)
# As a table that has lived for months: statistics, visibility map, hint bits.
psql -q "$PGURL/$DB" -c "vacuum analyze"
done=$(date +%s%N)
psql -At "$PGURL/$DB" <<SQL
select format('fixture %s: %s messages (%s inbound), %s status events, %s replies, %s media, '
              '%s sessions, %s conversations, %s; from %s to %s',
              current_database(), count(*), count(*) filter (where direction = 'inbound'),
              (select count(*) from message_status_events), (select count(*) from replies),
              (select count(*) from message_media), (select count(*) from sessions),
              (select count(*) from conversations),
              pg_size_pretty(pg_database_size(current_database())),
              min(received_at), max(received_at))
from messages;
SQL
echo "fixture_s=$(((loaded - started) / 1000000000)) vacuum_analyze_s=$(((done - loaded) / 1000000000)) total_s=$(((done - started) / 1000000000))"
