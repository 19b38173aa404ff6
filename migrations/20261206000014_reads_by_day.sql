-- Lookups of one message's rows, for the statements every batch runs. Written inline as
-- correlated subqueries, they named a partitioned table whose day is known only while the
-- statement runs: Postgres then plans, locks and starts a scan of every day kept (measured
-- on 90 days: 0.2 to 0.3 ms per write, and 11 ms to plan the write again each time a day is
-- detached, which prune does for every table). Inside a function the day is a parameter
-- of the function's own small query, so each call plans and opens its one day only, and the
-- calling statement names no partition at all.

-- The reply recorded to inbound message `sid` (its TwiML, and its bodies: those of the
-- outbound messages it made, which their status callbacks do not carry), read in that
-- message's day.
create function reply_of(sid text) returns replies
language plpgsql
stable strict
set search_path from current
as $$
declare
    day timestamptz := (select k.received_at from message_keys k where k.message_sid = sid);
    reply replies;
begin
    select * into reply from replies r where r.message_received_at = day and r.message_sid = sid;
    return reply;
end
$$;
comment on function reply_of(text) is 'the reply recorded to inbound message `sid` (NULL: none)';

-- The inbound messages counted in one session, in its day.
create function session_inbound_count(business text, contact text, started_at timestamptz)
returns integer
language plpgsql
stable strict
set search_path from current
as $$
begin
    return (select s.inbound_count from sessions s
            where s.started_at = session_inbound_count.started_at
              and s.business = session_inbound_count.business
              and s.contact = session_inbound_count.contact);
end
$$;
comment on function session_inbound_count(text, text, timestamptz) is
    'the inbound messages counted in the session of (business, contact) that started at started_at';
