-- Data an operator can query in one statement, and WhatsApp as it works in 2026.

-- One contact's history in time order, without knowing the business.
create index messages_contact_idx on messages (contact, received_at);

-- A WhatsApp user's business-scoped ID can have a parent (ParentExternalUserId).
alter table messages add column parent_external_user_id text;

-- Sessions: their channel (as their conversation's), and the ad or page a session's first
-- message came from (Click-to-WhatsApp: the 72-hour free entry point window, attribution).
alter table sessions
    add column channel text,
    add column referral_source_type text,
    add column referral_source_id text,
    add column referral_ctwa_clid text;
update sessions s set channel = c.channel
from conversations c
where c.business = s.business and c.contact = s.contact;

-- Every consent change, kept beside the current state in `consent`.
create table consent_events (
    id           bigint generated always as identity primary key,
    business     text not null,
    contact      text not null,
    state        text not null check (state in ('opted_in', 'opted_out')),
    message_sid  text,
    cause        text not null
        check (cause in ('rule', 'opt_out_type', 'delivery_error', 'migrated')),
    rule         text,
    at           timestamptz not null
);
create index consent_events_contact_idx on consent_events (contact, at);
create index consent_events_at_idx on consent_events (at);
insert into consent_events (business, contact, state, message_sid, cause, rule, at)
select k.business, k.contact, k.state, k.message_sid, 'migrated', null, k.changed_at
from consent k;

-- The views gain what people filter on. (Columns are added at the end: create or replace
-- keeps existing ones in place.)
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

-- One row per reply message Twilio reported for an inbound message (a multi-part reply is
-- one row per part), with its delivery: a `read` can come without, or before, `delivered`.
create view reply_deliveries as
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
join messages i on i.message_sid = m.in_reply_to
left join replies r on r.message_sid = m.in_reply_to
cross join lateral (
    select min(e.received_at) filter (where e.status = 'sent') as sent_at,
           min(e.received_at) filter (where e.status = 'delivered') as delivered_at,
           min(e.received_at) filter (where e.status = 'read') as read_at
    from message_status_events e
    where e.message_sid = m.message_sid) as d
where m.in_reply_to is not null;

-- The data dictionary: \d+ in psql and BI tools show these.
comment on table messages is
    'one row per message SID, inbound and outbound, with its current status';
comment on column messages.message_sid is 'Twilio''s message SID (SM… or MM…)';
comment on column messages.account_sid is 'the Twilio account (or subaccount) of the message';
comment on column messages.messaging_service_sid is 'the Messaging Service (MG…), when one sent or received it';
comment on column messages.direction is 'inbound (the contact wrote) or outbound (the business sent)';
comment on column messages.channel is 'whatsapp, sms, rcs, messenger, …: the address prefix (none: sms)';
comment on column messages.business is 'our address: To of an inbound message, From of an outbound one';
comment on column messages.contact is 'the user''s address (whatsapp:+1…, a business-scoped ID, rcs:…): not always a phone number';
comment on column messages.body is 'the text (outbound: from our reply, or from Twilio''s API; NULL until known)';
comment on column messages.num_media is 'how many media items the message has';
comment on column messages.num_segments is 'SMS segments (WhatsApp: 1)';
comment on column messages.profile_name is 'the WhatsApp profile name the user shows';
comment on column messages.wa_id is 'the WhatsApp ID (the phone number without +, when WhatsApp shares it)';
comment on column messages.external_user_id is 'ExternalUserId: WhatsApp''s business-scoped user ID (2026), when sent';
comment on column messages.parent_external_user_id is 'ParentExternalUserId, when sent';
comment on column messages.message_type is 'WhatsApp''s MessageType: text, image, location, button, interactive, …';
comment on column messages.status is 'the current status, by precedence (it never goes backwards)';
comment on column messages.status_rank is 'the precedence of status (higher wins; NULL for a status Twilio has not documented)';
comment on column messages.error_code is 'Twilio''s error code of a failed or undelivered message';
comment on column messages.error_message is 'Twilio''s error message, when it sent one';
comment on column messages.in_reply_to is 'for our TwiML replies: the inbound message SID it answers';
comment on column messages.rule is 'for our TwiML replies: the rule(s) that chose it, comma-separated as in the action URL';
comment on column messages.reply_part is 'for our TwiML replies: which <Message> of the reply it was (0, 1, …)';
comment on column messages.received_at is 'when this server first saw the message (or Twilio''s date_created for messages found through its API); an outbound message first seen in a status callback: that callback''s arrival';
comment on column messages.updated_at is 'when the row last changed';
comment on column messages.params is 'every parameter of the first webhook as received (or the API resource''s JSON)';

comment on table message_media is 'one row per media item of a message, and its archive state';
comment on table message_status_events is 'every status callback (and status read from the API), as history';
comment on column message_status_events.received_at is 'when the callback arrived (or Twilio''s date_updated for a status read from its API)';
comment on table webhook_failures is 'every call to the fallback URL: why Twilio could not use the primary URL';
comment on column webhook_failures.error_code is 'Twilio''s ErrorCode (11200 and friends)';
comment on column webhook_failures.error_url is 'the primary URL that failed';
comment on table conversations is 'one row per (business, contact): counters and the current 24-hour window';
comment on column conversations.window_expires_at is 'when the current customer-service window closes (24 hours after the last inbound message)';
comment on table sessions is 'one row per 24-hour customer-service window of a (business, contact)';
comment on column sessions.started_at is 'the inbound message that opened the window';
comment on column sessions.expires_at is 'when the window closes (24 hours after its last inbound message)';
comment on column sessions.channel is 'the channel of the conversation';
comment on column sessions.referral_source_type is 'the ad or post the window''s first message came from (Click-to-WhatsApp): ReferralSourceType';
comment on column sessions.referral_source_id is 'ReferralSourceId of the window''s first message';
comment on column sessions.referral_ctwa_clid is 'ReferralCtwaClid of the window''s first message (a 72-hour free entry point)';
comment on table replies is 'the TwiML each inbound message was answered with';
comment on column replies.rule is 'the rules that answered, in order (NULL: reply.body or no rule)';
comment on column replies.bodies is 'the body of each <Message>, in order';
comment on table consent is 'the current opt-in / opt-out state of each (business, contact)';
comment on table consent_events is 'every consent change, in order';
comment on column consent_events.cause is 'rule (a reply rule), opt_out_type (Twilio''s opt-out handling), delivery_error (error 21610), migrated (the state before this table existed)';
comment on column consent_events.rule is 'the rule, when a rule caused it';
comment on column consent_events.message_sid is 'the message that caused it';
comment on view conversation_messages is 'every message, both directions, as a conversation reads';
comment on view open_sessions is 'the customer-service windows open now, and how long each has left';
comment on view message_deliveries is 'each outbound message with the time of each delivery step';
comment on view reply_deliveries is 'each reply message we sent for an inbound message, with its delivery and the delay from the inbound message to delivered or read';
comment on column reply_deliveries.delivered_or_read_at is 'the earlier of delivered_at and read_at (a read can come without or before delivered)';
comment on column reply_deliveries.delay is 'from the inbound message to delivered_or_read_at';

-- The remaining columns, in one list.
do $$
declare r record;
begin
    for r in select * from (values
        ('messages', 'latitude', 'a shared location''s latitude (WhatsApp)'),
        ('messages', 'longitude', 'a shared location''s longitude (WhatsApp)'),
        ('messages', 'location_address', 'a shared location''s address, when sent'),
        ('messages', 'location_label', 'a shared location''s label, when sent'),
        ('messages', 'button_text', 'the text of the quick-reply button the user pressed'),
        ('messages', 'button_payload', 'the payload of the quick-reply button the user pressed'),
        ('messages', 'replied_to_sid', 'the message the user replied to (OriginalRepliedMessageSid)'),
        ('messages', 'replied_to_sender', 'the sender of the message the user replied to'),
        ('messages', 'forwarded', 'WhatsApp says the message was forwarded'),
        ('messages', 'frequently_forwarded', 'WhatsApp says the message was forwarded many times'),
        ('messages', 'referral_source_type', 'the ad or post the message came from (ReferralSourceType)'),
        ('messages', 'referral_source_id', 'ReferralSourceId'),
        ('messages', 'referral_source_url', 'ReferralSourceUrl'),
        ('messages', 'referral_headline', 'ReferralHeadline'),
        ('messages', 'referral_body', 'ReferralBody'),
        ('messages', 'referral_ctwa_clid', 'ReferralCtwaClid: the Click-to-WhatsApp click ID'),
        ('messages', 'from_country', 'FromCountry (SMS)'),
        ('messages', 'to_country', 'ToCountry (SMS)'),
        ('messages', 'channel_metadata', 'ChannelMetadata as JSON (WhatsApp context)'),
        ('message_media', 'message_sid', 'the message'),
        ('message_media', 'index', 'N of MediaUrlN (0, 1, …)'),
        ('message_media', 'url', 'where Twilio serves the media (needs the account''s credentials)'),
        ('message_media', 'content_type', 'the media''s MIME type'),
        ('message_media', 'archive_state', 'NULL (archive off), pending, stored, failed (gave up) or refused (a host not allowed)'),
        ('message_media', 'archive_attempts', 'download attempts so far'),
        ('message_media', 'archive_next_at', 'when a pending download is next tried'),
        ('message_media', 'archive_lease_until', 'a worker holds the download until then'),
        ('message_media', 'stored_at', 'when the archive stored the file'),
        ('message_media', 'storage_key', 'the file''s key in media storage'),
        ('message_media', 'bytes', 'the stored file''s size'),
        ('message_media', 'sha256', 'lower-case hex SHA-256 of the stored bytes'),
        ('message_media', 'archive_error', 'why the last attempt failed, or why the item was refused'),
        ('message_status_events', 'id', 'insertion order'),
        ('message_status_events', 'message_sid', 'the message'),
        ('message_status_events', 'status', 'MessageStatus as sent (queued, sent, delivered, read, failed, undelivered, …)'),
        ('message_status_events', 'error_code', 'ErrorCode when it is a number'),
        ('message_status_events', 'error_code_raw', 'ErrorCode as sent'),
        ('message_status_events', 'error_message', 'ErrorMessage, when sent'),
        ('message_status_events', 'raw_dlr_done_date', 'RawDlrDoneDate: the carrier''s delivery time (SMS), as sent'),
        ('message_status_events', 'params', 'every parameter of the callback (or the API resource''s JSON)'),
        ('webhook_failures', 'id', 'insertion order'),
        ('webhook_failures', 'message_sid', 'the message the fallback call carried'),
        ('webhook_failures', 'received_at', 'when the fallback call arrived'),
        ('webhook_failures', 'params', 'every parameter of the fallback call'),
        ('webhook_failures', 'spool_record', 'the spool record it was kept as, when the database was away'),
        ('conversations', 'business', 'our address'),
        ('conversations', 'contact', 'the user''s address'),
        ('conversations', 'channel', 'whatsapp, sms, rcs, …'),
        ('conversations', 'first_inbound_at', 'the contact''s first message'),
        ('conversations', 'last_inbound_at', 'the contact''s last message'),
        ('conversations', 'session_started_at', 'when the current window opened'),
        ('conversations', 'inbound_count', 'inbound messages so far'),
        ('conversations', 'last_outbound_at', 'our last message to the contact'),
        ('conversations', 'outbound_count', 'outbound messages so far'),
        ('conversations', 'created_at', 'when the conversation began'),
        ('conversations', 'updated_at', 'when the row last changed'),
        ('sessions', 'id', 'a row number'),
        ('sessions', 'business', 'our address'),
        ('sessions', 'contact', 'the user''s address'),
        ('sessions', 'last_inbound_at', 'the window''s last inbound message'),
        ('sessions', 'inbound_count', 'inbound messages in the window'),
        ('replies', 'message_sid', 'the inbound message answered'),
        ('replies', 'twiml', 'the TwiML answered (replayed to Twilio''s retries)'),
        ('replies', 'created_at', 'when it was answered'),
        ('consent', 'business', 'our address'),
        ('consent', 'contact', 'the user''s address'),
        ('consent', 'state', 'opted_in or opted_out'),
        ('consent', 'message_sid', 'the message that set it'),
        ('consent', 'changed_at', 'the time of that message'),
        ('consent_events', 'id', 'insertion order'),
        ('consent_events', 'business', 'our address'),
        ('consent_events', 'contact', 'the user''s address'),
        ('consent_events', 'state', 'opted_in or opted_out'),
        ('consent_events', 'at', 'the time of the message that caused it'),
        ('reconcile_checkpoints', 'account_sid', 'the account'),
        ('reconcile_checkpoints', 'checkpoint', 'the end of what the last complete gap-fill pass listed'),
        ('reconcile_checkpoints', 'updated_at', 'when the checkpoint last moved'),
        ('enrichment_jobs', 'message_sid', 'the outbound message to read'),
        ('enrichment_jobs', 'account_sid', 'its account'),
        ('enrichment_jobs', 'attempts', 'reads tried'),
        ('enrichment_jobs', 'next_at', 'when it is next tried (infinity: never, see last_error)'),
        ('enrichment_jobs', 'last_error', 'why the last read failed'),
        ('stale_checks', 'message_sid', 'the outbound message'),
        ('stale_checks', 'checks', 'how often its status was looked up (at most 3)'),
        ('stale_checks', 'checked_at', 'the last lookup'),
        ('erased_contacts', 'contact_sha256', 'hex SHA-256 of the erased address'),
        ('erased_contacts', 'erased_at', 'when it was erased'),
        ('backfill_chunks', 'key', 'account, hour and senders'),
        ('backfill_chunks', 'done_at', 'when that hour was read and stored whole'),
        ('conversation_messages', 'at', 'messages.received_at'),
        ('open_sessions', 'time_left', 'until the window closes'),
        ('message_deliveries', 'first_seen_at', 'messages.received_at'),
        ('message_deliveries', 'queued_at', 'the first queued callback'),
        ('message_deliveries', 'sent_at', 'the first sent callback'),
        ('message_deliveries', 'delivered_at', 'the first delivered callback'),
        ('message_deliveries', 'read_at', 'the first read callback'),
        ('message_deliveries', 'failed_at', 'the first failed or undelivered callback'),
        ('reply_deliveries', 'in_reply_to', 'the inbound message answered'),
        ('reply_deliveries', 'inbound_at', 'when the inbound message arrived'),
        ('reply_deliveries', 'rule', 'the rules that answered (text[]: unnest(rule) for one row per rule)'),
        ('reply_deliveries', 'message_sid', 'the reply message'),
        ('reply_deliveries', 'sent_at', 'the first sent callback'),
        ('reply_deliveries', 'delivered_at', 'the first delivered callback'),
        ('reply_deliveries', 'read_at', 'the first read callback')
    ) as t (tbl, col, txt) loop
        execute format('comment on column %I.%I is %L', r.tbl, r.col, r.txt);
    end loop;
    -- A view's other columns mean what the same column of its table means.
    for r in select v.relname as view, a.attname as col, col_description(b.oid, ba.attnum) as txt
             from (values ('conversation_messages', 'messages'), ('open_sessions', 'sessions'),
                          ('message_deliveries', 'messages'), ('reply_deliveries', 'messages'))
                  as m (view, base)
             join pg_class v on v.relname = m.view
             join pg_class b on b.relname = m.base
             join pg_attribute a on a.attrelid = v.oid and a.attnum > 0
             join pg_attribute ba on ba.attrelid = b.oid and ba.attname = a.attname
             where col_description(v.oid, a.attnum) is null
               and col_description(b.oid, ba.attnum) is not null loop
        execute format('comment on column %I.%I is %L', r.view, r.col, r.txt);
    end loop;
end $$;
