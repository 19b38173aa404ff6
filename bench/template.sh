# Sourced by bench/run.sh, bench/prune_load.sh and bench/reads.sh: the fixture of
# bench/fixture.sh with FIXTURE_ROWS messages, built once as a template database and copied
# for each run (a copy of the 1M fixture took 7 to 8 s, building it 131 s). Needs PGURL and
# FIXTURE_ROWS; FIXTURE_EVENTS (1) is bench/fixture.sh's EVENTS, and BIN and CONTACTS are as
# there.
#
# A template is named twr_scale_tpl_<rows>_<day>_<key>: the fixture is 90 days before the UTC
# day it was built, and the key is a hash of the schema BIN's migrations make, of
# bench/fixture.sql and of its settings, so two builds with different schemas (an A/B) each
# get their own. A template of another day for the same rows and key is stale and dropped.
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/twilio-receiver}
FIXTURE_EVENTS=${FIXTURE_EVENTS:-1}

# The hash of the migrations BIN applies (read back from a scratch database), of the
# fixture's SQL and of its settings.
fixture_key() {
  local probe=twr_scale_probe_$$ migrations
  psql -q "$PGURL/postgres" -c "drop database if exists $probe" -c "create database $probe" &&
    DATABASE_URL="$PGURL/$probe" "$BIN" migrate >/dev/null &&
    migrations=$(psql -At "$PGURL/$probe" \
      -c "select string_agg(version || ':' || encode(checksum, 'hex'), ',' order by version)
          from _sqlx_migrations") &&
    psql -q "$PGURL/postgres" -c "drop database $probe" || return
  { echo "$migrations events=$FIXTURE_EVENTS contacts=${CONTACTS:-}"; cat bench/fixture.sql; } |
    md5sum | cut -c1-8
}

# Prints the template's name, building it first when it does not exist (its progress goes to
# stderr). Called as $(fixture_template), where errexit does not reach: every step that can
# fail returns.
fixture_template() {
  local key day name stale
  key=$(fixture_key) || return
  day=$(date -u +%Y%m%d)
  name=twr_scale_tpl_${FIXTURE_ROWS}_${day}_$key
  for stale in $(psql -At "$PGURL/postgres" -c "select datname from pg_database
      where datname like 'twr\_scale\_tpl\_${FIXTURE_ROWS}\_%\_$key' and datname <> '$name'"); do
    psql -q "$PGURL/postgres" -c "drop database $stale with (force)"
  done
  if [[ -z $(psql -At "$PGURL/postgres" -c "select 1 from pg_database where datname = '$name'") ]]; then
    # Built under another name and renamed when complete: an interrupted build is never used.
    ROWS=$FIXTURE_ROWS EVENTS=$FIXTURE_EVENTS DB=twr_scale_building_$key bash bench/fixture.sh >&2 ||
      return
    psql -q "$PGURL/postgres" -c "alter database twr_scale_building_$key rename to $name" || return
  fi
  echo "$name"
}

# Drops the database $1 and creates it as a copy of the template $2 (file_copy: no WAL for
# the copy, only two checkpoints).
fixture_copy() {
  psql -q "$PGURL/postgres" -c "drop database if exists $1 with (force)" \
    -c "create database $1 template $2 strategy file_copy"
}
