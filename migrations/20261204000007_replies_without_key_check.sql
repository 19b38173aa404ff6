-- Every inbound message stores its reply, and the foreign key from replies to messages had
-- Postgres look the message up again and lock it for each of those inserts: about a tenth
-- of Postgres's CPU per inbound message under load (BENCHMARKS.md). This server writes a
-- reply only in the transaction that stores its message, or (a reply recorded late) after
-- locking the message row itself, so the check could never fail. What the key also did,
-- delete a message's reply with it, a trigger now does, once per statement: `delete from
-- messages ...` still takes the replies with it, however the messages go.
alter table replies drop constraint replies_message_sid_fkey;

create function delete_replies_of_deleted_messages() returns trigger
language plpgsql as $$
begin
    delete from replies r using deleted_messages d where r.message_sid = d.message_sid;
    return null;
end
$$;

create trigger messages_delete_replies
after delete on messages
referencing old table as deleted_messages
for each statement execute function delete_replies_of_deleted_messages();
