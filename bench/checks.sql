-- Consistency of a benchmark database after a run: every figure must be 0.
-- bench/run.sh prints them after each workload; by hand:
--   psql -At postgres://postgres@127.0.0.1:5432/twr_bench -f bench/checks.sql
-- The ranks mirror src/twilio/status.rs (precedence of delivery statuses).
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
        select count(*) from messages m
        join ranks r on r.status = m.status
        where m.direction = 'outbound'
          and r.rank <> (select max(k.rank) from message_status_events e
                         join ranks k on k.status = e.status
                         where e.message_sid = m.message_sid)),
    -- a status callback of an outbound message with no message row
    'events_without_message=' || (
        select count(distinct e.message_sid) from message_status_events e
        where not exists (select 1 from messages m where m.message_sid = e.message_sid)),
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
          and not exists (select 1 from replies r where r.message_sid = m.message_sid));
