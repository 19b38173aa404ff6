#!/usr/bin/env bash
# What this machine's Postgres commits on its own, to set the server's figures against (see
# BENCHMARKS.md, "The machine"): pgbench, 32 clients, 10 s, each transaction one statement
# that inserts a message and upserts its conversation, synchronous commit on; then, as a
# measure of the CPU alone (machines of one kind differ, and hosts get noisy), `select 1`
# from 2 clients: no disk, no locks.
#
#   bash bench/baseline.sh
#
# PGURL as in bench/run.sh; the database twr_baseline is dropped and created.
set -euo pipefail
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
DB=twr_baseline
script=$(mktemp)
trap 'rm -f "$script"' EXIT

psql -q "$PGURL/postgres" -c "drop database if exists $DB with (force)" -c "create database $DB"
psql -q "$PGURL/$DB" <<'SQL'
create table messages (sid text primary key, contact text not null, body text not null,
                       received_at timestamptz not null default now());
create table conversations (contact text primary key, inbound_count bigint not null,
                            last_inbound_at timestamptz not null);
SQL
cat >"$script" <<'SQL'
\set contact random(1, 1000)
with m as (
    insert into messages (sid, contact, body)
    values ('SM' || md5(random()::text), 'whatsapp:+1555' || :contact, 'hello')
    returning contact, received_at
)
insert into conversations (contact, inbound_count, last_inbound_at)
select contact, 1, received_at from m
on conflict (contact) do update
set inbound_count = conversations.inbound_count + 1, last_inbound_at = excluded.last_inbound_at;
SQL
psql -q "$PGURL/$DB" -c checkpoint
echo "insert and upsert, 32 clients:"
pgbench -n -c 32 -j 2 -T 10 -f "$script" "$PGURL/$DB" 2>&1 | grep -E "^(tps|latency average)"
echo 'select 1;' >"$script"
echo "select 1, 2 clients:"
pgbench -n -c 2 -j 2 -T 5 -f "$script" "$PGURL/$DB" 2>&1 | grep -E "^tps"
