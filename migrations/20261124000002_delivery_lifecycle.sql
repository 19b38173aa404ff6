-- The delivery lifecycle: every status callback kept as history, the current status of each
-- message by precedence (never by arrival), every fallback call Twilio made, and our replies
-- linked to the inbound message and rule that produced them.

-- Precedence of messages.status, computed by the application (src/twilio/status.rs); NULL for
-- statuses it does not know, which never replace a known one.
alter table messages add column status_rank smallint;
update messages set status_rank = 2 where status = 'received';

-- For outbound replies we answered with TwiML: the inbound message, the rule, and the
-- position of the <Message> within that reply.
alter table messages add column in_reply_to text;
alter table messages add column rule text;
alter table messages add column reply_part integer;
create index messages_in_reply_to_idx on messages (in_reply_to) where in_reply_to is not null;

-- The bodies of the <Message> verbs of each reply, in order, so a delivered reply's text can
-- be shown next to its status.
alter table replies add column bodies text[] not null default '{}';

-- Every status callback, append-only. A redelivery of the same event is stored once.
create table message_status_events (
    id                 bigint generated always as identity primary key,
    message_sid        text not null,
    status             text not null,
    -- ErrorCode when it parses as an integer; the raw value is always in params
    error_code         integer,
    -- ErrorCode exactly as sent (what redeliveries are compared on)
    error_code_raw     text,
    error_message      text,
    -- carrier DLR "done date" (YYMMDDhhmm, no time zone), SMS only
    raw_dlr_done_date  text,
    received_at        timestamptz not null,
    params             jsonb not null
);

create unique index message_status_events_dedup_idx
    on message_status_events (message_sid, status, error_code_raw, raw_dlr_done_date) nulls not distinct;
create index message_status_events_received_at_idx on message_status_events (received_at);

-- Every call Twilio made to the fallback URL because the primary URL failed.
create table webhook_failures (
    id           bigint generated always as identity primary key,
    message_sid  text,
    -- ErrorCode (11200, 11205, ...) when it parses as an integer
    error_code   integer,
    -- ErrorUrl: the primary URL that failed
    error_url    text,
    received_at  timestamptz not null,
    params       jsonb not null
);

create index webhook_failures_received_at_idx on webhook_failures (received_at);
create index webhook_failures_message_sid_idx on webhook_failures (message_sid);

-- Each outbound message with its status timeline.
create view message_deliveries as
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
left join message_status_events e on e.message_sid = m.message_sid
where m.direction = 'outbound'
group by m.message_sid;
