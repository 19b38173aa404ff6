-- The lookups of migration 14 plan their one day on every call. After five calls a
-- function's query may switch to a generic plan, made once per connection for every day
-- kept and reused: it locks every day on each call, and it keeps the plan chosen for each
-- day when it was made. A day that was empty then (today's partition, made days ahead and
-- analyzed while empty) keeps a sequential scan as it fills. Measured on the 10M fixture
-- with 100,000 contacts: 3.6 ms per call by the afternoon, and the writers fell from 8,700
-- to 480 webhooks a second until the connections were renewed. A custom plan reads the
-- day's size as it is, and planning one day costs microseconds.

-- Only the query on the split table is planned each time (`execute`): the directory's
-- lookup keeps its cached plan, which saved 4 of the 6.5 µs a call that planning the
-- whole function each time cost (20,000 calls, 98 days).
create or replace function reply_of(sid text) returns replies
language plpgsql
stable strict
set search_path from current
as $$
declare
    day timestamptz := (select k.received_at from message_keys k where k.message_sid = sid);
    reply replies;
begin
    execute 'select * from replies r where r.message_received_at = $1 and r.message_sid = $2'
        into reply using day, sid;
    return reply;
end
$$;

alter function session_inbound_count(text, text, timestamptz)
    set plan_cache_mode = force_custom_plan;
