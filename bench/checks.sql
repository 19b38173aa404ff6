-- Consistency of a benchmark database after a run: every figure must be 0.
-- bench/run.sh prints them after each workload; by hand:
--   psql -At postgres://postgres@127.0.0.1:5432/twr_bench -f bench/checks.sql
-- The ranks mirror src/twilio/status.rs (precedence of delivery statuses).
-- The schema of daily partitions (issue 22): rows about a message are found by its day and
-- SID (message_received_at, message_sid), as the server reads them, so each probe reads one
-- partition; every message has its key in the SID directory message_keys with its day, and
-- every key its message.
with ranks (status, rank) as (
    values ('queued', 30), ('sending', 40), ('sent', 50), ('undelivered', 60),
           ('partially_delivered', 65), ('delivered', 70), ('read', 80),
           ('failed', 90), ('canceled', 90), ('accepted', 20), ('scheduled', 10)
),
inbound as (
    select business, contact, count(*) as n, max(received_at) as last
    from messages where direction = 'inbound' group by business, contact
),
outbound as (
    select business, contact, count(*) as n
    from messages where direction = 'outbound' group by business, contact
),
by_session as (
    select business, contact, sum(inbound_count) as n from sessions group by business, contact
)
select
    -- an outbound message whose status is not the highest-ranked of its callbacks
    -- (it went backwards, or it never moved forward)
    'status_not_newest=' || (
        -- (a join with the events grouped by message: a correlated subquery would prune
        -- the partitions again for every message, 1.5 ms each with 90 days)
        select count(*) from messages m
        join ranks r on r.status = m.status
        join (select e.message_received_at, e.message_sid, max(k.rank) as rank
              from message_status_events e
              join ranks k on k.status = e.status
              group by 1, 2) as x
          on x.message_received_at = m.received_at and x.message_sid = m.message_sid
        where m.direction = 'outbound' and r.rank <> x.rank),
    -- a status callback of an outbound message with no message row
    'events_without_message=' || (
        select count(distinct e.message_sid) from message_status_events e
        where not exists (select 1 from messages m
                          where m.received_at = e.message_received_at
                            and m.message_sid = e.message_sid)),
    -- a conversation whose counters or last inbound time disagree with its messages
    'conversations_off=' || (
        select count(*) from conversations c
        left join inbound i using (business, contact)
        left join outbound o using (business, contact)
        where c.inbound_count <> coalesce(i.n, 0)
           or c.outbound_count <> coalesce(o.n, 0)
           or c.last_inbound_at is distinct from i.last),
    -- a conversation whose sessions do not count each inbound message once
    'sessions_off=' || (
        select count(*) from conversations c
        left join by_session s using (business, contact)
        where c.inbound_count <> coalesce(s.n, 0)),
    -- two sessions of one pair whose windows overlap
    'sessions_overlapping=' || (
        select count(*) from sessions a join sessions b
          on a.business = b.business and a.contact = b.contact and a.started_at < b.started_at
        where b.started_at < a.expires_at),
    -- an inbound message without the reply it was answered with (one found through the
    -- REST API was never answered)
    'inbound_without_reply=' || (
        select count(*) from messages m
        where m.direction = 'inbound' and m.source not in ('reconcile', 'backfill')
          and not exists (select 1 from replies r
                          where r.message_received_at = m.received_at
                            and r.message_sid = m.message_sid)),
    -- a message without its key in the SID directory, or whose key names another day
    'messages_without_key=' || (
        select count(*) from messages m
        where not exists (select 1 from message_keys k
                          where k.message_sid = m.message_sid
                            and k.received_at = m.received_at)),
    -- a key of the SID directory with no message in its day
    'keys_without_message=' || (
        select count(*) from message_keys k
        where not exists (select 1 from messages m
                          where m.received_at = k.received_at
                            and m.message_sid = k.message_sid));
