-- A duplicate's reply, looked up in the day the read already found. The read of every
-- batch probes the directory for each SID to learn which are stored; `reply_of` then
-- probed it again for the same key. Passing the day on saves that probe and a function
-- call per duplicate. Like `reply_of` (migration 15), the query on the split table is
-- planned for its one day on each call (`execute`), never kept as a generic plan.
create function reply_in(day timestamptz, sid text) returns replies
language plpgsql
stable strict
set search_path from current
as $$
declare
    reply replies;
begin
    execute 'select * from replies r where r.message_received_at = $1 and r.message_sid = $2'
        into reply using day, sid;
    return reply;
end
$$;
comment on function reply_in(timestamptz, text) is
    'the reply recorded to inbound message `sid`, received on `day` (its message_keys.received_at; NULL: none)';
