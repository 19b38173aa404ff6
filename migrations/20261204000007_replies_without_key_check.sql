-- Every inbound message stores its reply, and the foreign key from replies to messages had
-- Postgres look the message up again and lock it for each of those inserts: 6 % of
-- Postgres's profile under the inbound benchmark, 8 to 20 µs of its CPU per webhook
-- (BENCHMARKS.md). This server writes a reply only in the transaction that stores its
-- message, or (a reply recorded late) after locking the message row itself, so the check
-- could never fail. What the key also did, take a message's reply with it when the message
-- is deleted or truncated, triggers now do, once per statement.
alter table replies drop constraint replies_message_sid_fkey;

create function delete_replies_of_deleted_messages() returns trigger
language plpgsql
set search_path from current
as $$
begin
    -- A lookup of each SID in the primary key, whatever the number of rows: written as a
    -- join, a retention batch of 5,000 was planned as a hash join reading every reply.
    delete from replies where message_sid = any (array(select message_sid from deleted_messages));
    return null;
end
$$;

create trigger messages_delete_replies
after delete on messages
referencing old table as deleted_messages
for each statement execute function delete_replies_of_deleted_messages();

create function truncate_replies_with_messages() returns trigger
language plpgsql
set search_path from current
as $$
begin
    truncate replies;
    return null;
end
$$;

create trigger messages_truncate_replies
after truncate on messages
for each statement execute function truncate_replies_with_messages();
