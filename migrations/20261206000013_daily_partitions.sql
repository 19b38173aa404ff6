-- History at scale: every table that grows with traffic is split into daily partitions
-- (midnight to midnight UTC), so retention drops whole days instead of deleting rows, and
-- each day's indexes stay one day big. Everything about a message lives in the day of its
-- first sighting (message_keys.received_at) and goes with it: its message row, media, reply
-- and status events. Fallback calls live in the day they arrived, sessions in the day they
-- started. conversations, consent, consent_events, the reconciliation state and the erase
-- tombstones stay single tables: one row per pair, or small.
--
-- Postgres's rules shape the keys: a partitioned table's unique keys must hold its
-- partition key (so each leads with its time column), no foreign key may point at a
-- partitioned table whose days are dropped, and there is no default partition (a row for a
-- day that does not exist fails, loudly, instead of parking where it would block that
-- day's creation; DETACH CONCURRENTLY also refuses a table that has one).
--
-- An installation with history keeps it without a rewrite: `twilio-receiver migrate`
-- first fills the directory and the children's message_received_at, builds the new keys
-- concurrently and proves each table's bound with a validated CHECK (src/store/migrate.rs);
-- here each table then becomes the "legacy" partition of its new parent, from the oldest
-- row up to legacy_cutover, attached without a scan. It ages out through prune like any day.

do $$
begin
    if not exists (select 1 from legacy_cutover)
       and (exists (select 1 from messages) or exists (select 1 from message_media)
            or exists (select 1 from replies) or exists (select 1 from message_status_events)
            or exists (select 1 from webhook_failures) or exists (select 1 from sessions)) then
        raise exception 'these tables hold history: run `twilio-receiver migrate`, which prepares them for daily partitions, not another migration tool';
    end if;
end $$;

-- Rows about a message carry its day. (No default: instant; a prepared installation has
-- them filled already.)
alter table message_media add column if not exists message_received_at timestamptz;
alter table replies add column if not exists message_received_at timestamptz;
alter table message_status_events add column if not exists message_received_at timestamptz;

-- What a partition may not have, or what would keep pointing at the old tables.
drop trigger messages_delete_replies on messages;
drop trigger messages_truncate_replies on messages;
alter table message_media drop constraint message_media_message_sid_fkey;

-- Today's tables step aside, with their indexes and sequences renamed out of the way.
do $$
declare
    t text;
    i record;
begin
    foreach t in array array['messages', 'message_media', 'replies', 'message_status_events',
                             'webhook_failures', 'sessions'] loop
        execute format('alter table %I rename to %I', t, t || '_legacy');
        for i in select c.relname from pg_index x join pg_class c on c.oid = x.indexrelid
                 where x.indrelid = (t || '_legacy')::regclass loop
            execute format('alter index %I rename to %I', i.relname, 'legacy_' || i.relname);
        end loop;
        for i in select s.relname from pg_depend d join pg_class s on s.oid = d.objid
                 where d.refobjid = (t || '_legacy')::regclass and s.relkind = 'S' loop
            execute format('alter sequence %I rename to %I', i.relname, 'legacy_' || i.relname);
        end loop;
    end loop;
end $$;

-- The new parents: the same columns, defaults, checks and column comments.
create table messages (like messages_legacy including defaults including constraints including comments)
    partition by range (received_at);
alter table messages add primary key (received_at, message_sid);
create index messages_conversation_idx on messages (business, contact, received_at);
create index messages_contact_idx on messages (contact, received_at);
create index messages_in_reply_to_idx on messages (in_reply_to) where in_reply_to is not null;

create table message_media (like message_media_legacy including defaults including constraints including comments)
    partition by range (message_received_at);
alter table message_media alter column message_received_at set not null;
alter table message_media add primary key (message_received_at, message_sid, index);
create index message_media_archive_due_idx on message_media (archive_next_at)
    where archive_state = 'pending';

create table replies (like replies_legacy including defaults including constraints including comments)
    partition by range (message_received_at);
alter table replies alter column message_received_at set not null;
alter table replies add primary key (message_received_at, message_sid);

create table message_status_events (like message_status_events_legacy including defaults including constraints including comments including identity)
    partition by range (message_received_at);
alter table message_status_events alter column message_received_at set not null;
alter table message_status_events add primary key (message_received_at, id);
create unique index message_status_events_dedup_idx on message_status_events
    (message_received_at, message_sid, status, error_code_raw, raw_dlr_done_date) nulls not distinct;
create index message_status_events_received_at_idx on message_status_events (received_at);

create table webhook_failures (like webhook_failures_legacy including defaults including constraints including comments including identity)
    partition by range (received_at);
alter table webhook_failures add primary key (received_at, id);
-- A spool replay keeps the call's arrival time, so the pair stays the replay's key.
create unique index webhook_failures_spool_record_key on webhook_failures (received_at, spool_record);
create index webhook_failures_message_sid_idx on webhook_failures (message_sid);

create table sessions (like sessions_legacy including defaults including constraints including comments including identity)
    partition by range (started_at);
alter table sessions add primary key (started_at, id);
-- Led by time like every key here: a day's index grows at its right edge. (None of these
-- columns changes, so a session's updates stay HOT.)
alter table sessions add constraint sessions_started_at_business_contact_key
    unique (started_at, business, contact);
alter table sessions add constraint sessions_business_contact_fkey
    foreign key (business, contact) references conversations (business, contact) on delete cascade;

-- The CHECK that proved a legacy table's bound was copied with the others; it holds for
-- the legacy partition only.
do $$
declare
    t text;
begin
    foreach t in array array['messages', 'message_media', 'replies', 'message_status_events',
                             'webhook_failures', 'sessions'] loop
        execute format('alter table %I drop constraint if exists %I', t, t || '_before_cutover');
    end loop;
end $$;

-- Identities go on from where the old tables stopped: ids keep their insertion order.
do $$
declare
    t text;
    old_seq text;
    last bigint;
    called boolean;
begin
    foreach t in array array['message_status_events', 'webhook_failures', 'sessions'] loop
        old_seq := pg_get_serial_sequence(t || '_legacy', 'id');
        execute format('select last_value, is_called from %s', old_seq) into last, called;
        perform setval(pg_get_serial_sequence(t, 'id'), last, called);
        -- A partition takes its ids from the parent's identity.
        execute format('alter table %I alter column id drop identity', t || '_legacy');
    end loop;
end $$;

comment on table messages is
    'one row per message SID, inbound and outbound, with its current status (daily partitions by received_at)';
comment on table message_media is
    'one row per media item of a message, and its archive state (in its message''s day)';
comment on column message_media.message_received_at is 'messages.received_at of the message (its day)';
comment on table replies is 'the TwiML each inbound message was answered with (in its message''s day)';
comment on column replies.message_received_at is 'messages.received_at of the message answered (its day)';
comment on table message_status_events is
    'every status callback (and status read from the API), as history, in its message''s day';
comment on column message_status_events.message_received_at is
    'messages.received_at of the message (its day): an event is kept as long as its message';
comment on table webhook_failures is
    'every call to the fallback URL: why Twilio could not use the primary URL (daily partitions by received_at)';
comment on table sessions is
    'one row per 24-hour customer-service window of a (business, contact) (daily partitions by started_at)';

-- Replies go with their message when it is deleted (erase); a dropped day takes its own
-- replies (the same day), and fires nothing.
create or replace function delete_replies_of_deleted_messages() returns trigger
language plpgsql
set search_path from current
as $$
begin
    delete from replies r
    using deleted_messages d
    where r.message_received_at = d.received_at and r.message_sid = d.message_sid;
    return null;
end
$$;

create trigger messages_delete_replies
after delete on messages
referencing old table as deleted_messages
for each statement execute function delete_replies_of_deleted_messages();

create trigger messages_truncate_replies
after truncate on messages
for each statement execute function truncate_replies_with_messages();

-- The views read the new tables (create or replace keeps their comments), joined on the
-- pair, and grouped by it.
create or replace view conversation_messages as
select business,
       contact,
       channel,
       direction,
       message_sid,
       received_at as at,
       status,
       body,
       num_media,
       message_type,
       profile_name,
       in_reply_to,
       reply_part,
       error_code,
       source
from messages;

create or replace view open_sessions as
select s.business,
       s.contact,
       s.started_at,
       s.last_inbound_at,
       s.expires_at,
       s.inbound_count,
       s.expires_at - now() as time_left,
       c.channel
from conversations c
join sessions s on s.business = c.business
               and s.contact = c.contact
               and s.started_at = c.session_started_at
where c.window_expires_at > now()
  and s.expires_at > now();

create or replace view message_deliveries as
select m.message_sid,
       m.business,
       m.contact,
       m.channel,
       m.in_reply_to,
       m.rule,
       m.body,
       m.status,
       m.error_code,
       m.error_message,
       m.received_at as first_seen_at,
       min(e.received_at) filter (where e.status = 'queued')    as queued_at,
       min(e.received_at) filter (where e.status = 'sent')      as sent_at,
       min(e.received_at) filter (where e.status = 'delivered') as delivered_at,
       min(e.received_at) filter (where e.status = 'read')      as read_at,
       min(e.received_at) filter (where e.status in ('failed', 'undelivered')) as failed_at
from messages m
left join message_status_events e on e.message_received_at = m.received_at
                                 and e.message_sid = m.message_sid
where m.direction = 'outbound'
group by m.received_at, m.message_sid;

create or replace view reply_deliveries as
select m.in_reply_to,
       i.received_at as inbound_at,
       r.rule,
       m.message_sid,
       m.reply_part,
       m.status,
       m.error_code,
       d.sent_at,
       d.delivered_at,
       d.read_at,
       least(d.delivered_at, d.read_at) as delivered_or_read_at,
       least(d.delivered_at, d.read_at) - i.received_at as delay
from messages m
join message_keys ik on ik.message_sid = m.in_reply_to
join messages i on i.received_at = ik.received_at and i.message_sid = ik.message_sid
left join replies r on r.message_received_at = i.received_at and r.message_sid = i.message_sid
cross join lateral (
    select min(e.received_at) filter (where e.status = 'sent') as sent_at,
           min(e.received_at) filter (where e.status = 'delivered') as delivered_at,
           min(e.received_at) filter (where e.status = 'read') as read_at
    from message_status_events e
    where e.message_received_at = m.received_at and e.message_sid = m.message_sid) as d
where m.in_reply_to is not null;

-- Every partition of the split tables, with its bounds: what upkeep, prune and the
-- partition_days_ahead gauge read. Bounds are parsed from Postgres's own text of them
-- (always FROM (MINVALUE) or FROM ('…') TO ('…') here, as a timestamptz with its offset).
create view day_partitions as
select p.relname::text as parent,
       c.relname::text as partition,
       case when b.expr like 'FOR VALUES FROM (MINVALUE)%' then '-infinity'::timestamptz
            else substring(b.expr from 'FROM \(''([^'']*)''\)')::timestamptz end as lower,
       substring(b.expr from 'TO \(''([^'']*)''\)')::timestamptz as upper,
       i.inhdetachpending as detach_pending
from pg_inherits i
join pg_class p on p.oid = i.inhparent
join pg_class c on c.oid = i.inhrelid
cross join lateral (select pg_get_expr(c.relpartbound, c.oid) as expr) as b
where i.inhparent in ('messages'::regclass, 'message_media'::regclass, 'replies'::regclass,
                      'message_status_events'::regclass, 'webhook_failures'::regclass,
                      'sessions'::regclass);
comment on view day_partitions is
    'each partition of the tables split by day, and the time range it holds';
comment on column day_partitions.parent is 'the table';
comment on column day_partitions.partition is 'the partition (<table>_pYYYYMMDD, or <table>_legacy)';
comment on column day_partitions.lower is 'the first time it holds (-infinity: the legacy partition)';
comment on column day_partitions.upper is 'the first time it no longer holds';
comment on column day_partitions.detach_pending is
    'a DETACH CONCURRENTLY was interrupted: prune finishes it';

-- Creates the missing days from first_day to last_day (UTC) of every split table, and
-- returns how many partitions it made. One caller at a time (an advisory lock), so replicas
-- can all call it. Each day is made as a table and then attached: ATTACH takes only a SHARE
-- UPDATE EXCLUSIVE lock on the parent, which writers and readers never wait behind, where
-- CREATE TABLE … PARTITION OF would take an ACCESS EXCLUSIVE lock and queue every writer
-- behind a long report.
create function create_day_partitions(first_day date, last_day date) returns integer
language plpgsql
set search_path from current
as $$
declare
    t record;
    d date;
    lo timestamptz;
    hi timestamptz;
    name text;
    made integer := 0;
begin
    perform pg_advisory_xact_lock(7243019283746251);
    for t in select * from unnest(array['messages', 'message_media', 'replies',
                                        'message_status_events', 'webhook_failures',
                                        'sessions']) as tbl loop
        for d in select g::date from generate_series(first_day, last_day, interval '1 day') g loop
            lo := d::timestamp at time zone 'UTC';
            hi := lo + interval '1 day';
            continue when exists (select 1 from day_partitions p
                                  where p.parent = t.tbl and p.lower < hi and p.upper > lo);
            name := t.tbl || '_p' || to_char(d, 'YYYYMMDD');
            execute format('create table %I (like %I including defaults including constraints)',
                           name, t.tbl);
            execute format('alter table %I attach partition %I for values from (%L) to (%L)',
                           t.tbl, name, lo, hi);
            made := made + 1;
        end loop;
    end loop;
    return made;
end
$$;
comment on function create_day_partitions(date, date) is
    'creates the missing daily partitions from first_day to last_day (UTC); returns how many';

-- How many whole days after today (UTC) every split table covers: 0 when only today
-- exists, -1 when today itself is missing somewhere. Webhooks for a day that does not
-- exist cannot be stored.
create function partition_days_ahead() returns integer
language plpgsql
stable
set search_path from current
as $$
declare
    today constant timestamptz := (now() at time zone 'UTC')::date::timestamp at time zone 'UTC';
    t text;
    p record;
    reach timestamptz;
    ahead integer;
begin
    -- Each table's partitions from today on, in order, read once: how far they reach
    -- without a gap.
    foreach t in array array['messages', 'message_media', 'replies', 'message_status_events',
                             'webhook_failures', 'sessions'] loop
        reach := today;
        for p in select d.lower, d.upper from day_partitions d
                 where d.parent = t and not d.detach_pending and d.upper > today
                 order by d.lower loop
            exit when p.lower > reach;
            reach := greatest(reach, p.upper);
        end loop;
        -- (least ignores the NULL of the first table.)
        ahead := least(ahead, floor(extract(epoch from reach - today) / 86400)::integer - 1);
    end loop;
    return ahead;
end
$$;
comment on function partition_days_ahead() is
    'whole days after today (UTC) that every table split by day covers (-1: today is missing)';

-- An installation with history: each old table becomes its new parent's legacy partition,
-- up to the cut-over. Its new keys and the CHECK that proves its bound were made by
-- `twilio-receiver migrate`, so nothing here scans or builds an index. Without history the
-- old tables simply go.
do $$
declare
    cut timestamptz := (select cutover from legacy_cutover);
    t record;
begin
    if cut is null then
        drop table messages_legacy, message_media_legacy, replies_legacy,
                   message_status_events_legacy, webhook_failures_legacy, sessions_legacy;
        return;
    end if;
    -- The old single-column keys go; the prepared ones become the primary keys.
    alter table messages_legacy drop constraint legacy_messages_pkey;
    alter table messages_legacy add constraint messages_legacy_pkey
        primary key using index legacy_messages_by_day_key;
    alter table message_media_legacy drop constraint legacy_message_media_pkey;
    alter table message_media_legacy alter column message_received_at set not null;
    alter table message_media_legacy add constraint message_media_legacy_pkey
        primary key using index legacy_message_media_by_day_key;
    alter table replies_legacy drop constraint legacy_replies_pkey;
    alter table replies_legacy alter column message_received_at set not null;
    alter table replies_legacy add constraint replies_legacy_pkey
        primary key using index legacy_replies_by_day_key;
    alter table message_status_events_legacy drop constraint legacy_message_status_events_pkey;
    drop index legacy_message_status_events_dedup_idx;
    -- (legacy_message_status_events_by_day_dedup_idx, prepared, takes its place)
    alter table message_status_events_legacy alter column message_received_at set not null;
    alter table message_status_events_legacy add constraint message_status_events_legacy_pkey
        primary key using index legacy_message_status_events_by_day_key;
    alter table webhook_failures_legacy drop constraint legacy_webhook_failures_pkey;
    drop index legacy_webhook_failures_spool_record_key;
    alter table webhook_failures_legacy add constraint webhook_failures_legacy_pkey
        primary key using index legacy_webhook_failures_by_day_key;
    alter table sessions_legacy drop constraint legacy_sessions_pkey;
    alter table sessions_legacy add constraint sessions_legacy_pkey
        primary key using index legacy_sessions_by_day_key;
    alter table sessions_legacy drop constraint legacy_sessions_business_contact_started_at_key;
    alter table sessions_legacy add constraint sessions_legacy_started_at_business_contact_key
        unique using index legacy_sessions_by_day_unique;
    for t in select * from (values ('messages'), ('message_media'), ('replies'),
                                   ('message_status_events'), ('webhook_failures'),
                                   ('sessions')) as v (tbl) loop
        execute format('alter table %I attach partition %I for values from (minvalue) to (%L)',
                       t.tbl, t.tbl || '_legacy', cut);
    end loop;
end $$;

drop table legacy_cutover;

-- Today and the week ahead; the server keeps database.partition_days_ahead days ahead
-- from here on, and writers of the past create the days they need.
select create_day_partitions((now() at time zone 'UTC')::date, (now() at time zone 'UTC')::date + 7);
