-- How each message first arrived, and where each status event came from, so history that
-- Twilio's REST API fills in later (reconciliation, backfill) can be told apart from what
-- webhooks brought. Existing rows all came from webhooks. A constant default adds the
-- columns without rewriting either table.
alter table messages add column source text not null default 'webhook';
comment on column messages.source is
    'how the message first arrived: webhook (the primary URL, or an outbound message first '
    'seen in a status callback), fallback (the fallback URL), spool (stored by the spool''s '
    'replay, whatever its route), reconcile or backfill (found through Twilio''s REST API)';

alter table message_status_events add column source text not null default 'callback';
comment on column message_status_events.source is
    'where the event came from: callback (a status callback) or reconcile (Twilio''s REST API)';
