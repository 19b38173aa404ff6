-- Fills a migrated database with a million messages (each with a reply), a quarter of a
-- million status events, 50,000 sessions and 1,000 conversations, all older than 90 days,
-- for timing retention (BENCHMARKS.md, "Retention"):
--
--   DATABASE_URL=postgres://postgres@127.0.0.1:5432/twr_prune target/release/twilio-receiver migrate
--   psql postgres://postgres@127.0.0.1:5432/twr_prune -f bench/prune.sql
--   time DATABASE_URL=postgres://postgres@127.0.0.1:5432/twr_prune \
--     target/release/twilio-receiver prune --older-than 90d
--
-- On the schema of daily partitions (issue 22: message_keys exists), the days of these rows
-- (200 to 100 days ago) are made first, every message gets its key in the SID directory,
-- and the replies and status events carry message_received_at (the status events, which
-- have no message, their own received_at). Retention then drops those 101 whole days of
-- each split table, the keys and the conversations, instead of deleting rows in batches.
select to_regclass('message_keys') is not null as keyed \gset
\if :keyed
select create_day_partitions(((now() - interval '200 days') at time zone 'UTC')::date,
                             ((now() - interval '100 days') at time zone 'UTC')::date);
\endif
insert into conversations (business, contact, channel, first_inbound_at, last_inbound_at,
                           window_expires_at, session_started_at, inbound_count, created_at,
                           updated_at)
select 'whatsapp:+14155238886', 'whatsapp:+1555' || lpad(c::text, 7, '0'), 'whatsapp',
       now() - interval '200 days', now() - interval '100 days', now() - interval '99 days',
       now() - interval '100 days', 1000, now() - interval '200 days', now() - interval '100 days'
from generate_series(0, 999) c;

insert into messages (message_sid, account_sid, direction, channel, business, contact, body,
                      status, status_rank, received_at, updated_at, params)
select 'SM' || lpad(to_hex(n), 32, '0'), 'AC0123456789abcdef0123456789abcdef', 'inbound',
       'whatsapp', 'whatsapp:+14155238886', 'whatsapp:+1555' || lpad((n % 1000)::text, 7, '0'),
       'Hola! ¿A qué hora abren mañana?', 'received', 2,
       now() - interval '200 days' + n * interval '8 seconds',
       now() - interval '200 days' + n * interval '8 seconds',
       '{"Body": "Hola! ¿A qué hora abren mañana?", "To": "whatsapp:+14155238886", "ApiVersion": "2010-04-01", "NumMedia": "0", "MessageType": "text", "ProfileName": "Ana María", "SmsStatus": "received"}'
from generate_series(1, 1000000) n;

\if :keyed
insert into message_keys (message_sid, received_at)
select message_sid, received_at from messages;

insert into replies (message_sid, message_received_at, rule, twiml, bodies, created_at)
select message_sid, received_at, null, '<?xml version="1.0" encoding="UTF-8"?><Response/>', '{}',
       received_at
from messages;

insert into message_status_events (message_sid, message_received_at, status, received_at, params)
select 'SMf' || lpad(to_hex(n / 4), 31, '0'),
       now() - interval '150 days' + n * interval '10 seconds',
       (array['queued', 'sent', 'delivered', 'read'])[n % 4 + 1],
       now() - interval '150 days' + n * interval '10 seconds', '{"MessageStatus": "sent"}'
from generate_series(1, 249846) n;
\else
insert into replies (message_sid, rule, twiml, bodies, created_at)
select message_sid, null, '<?xml version="1.0" encoding="UTF-8"?><Response/>', '{}', received_at
from messages;

insert into message_status_events (message_sid, status, received_at, params)
select 'SMf' || lpad(to_hex(n / 4), 31, '0'), (array['queued', 'sent', 'delivered', 'read'])[n % 4 + 1],
       now() - interval '150 days' + n * interval '10 seconds', '{"MessageStatus": "sent"}'
from generate_series(1, 249846) n;
\endif

insert into sessions (business, contact, started_at, last_inbound_at, expires_at, inbound_count)
select 'whatsapp:+14155238886', 'whatsapp:+1555' || lpad((n % 1000)::text, 7, '0'),
       now() - interval '200 days' + n * interval '1 minute',
       now() - interval '200 days' + n * interval '1 minute',
       now() - interval '199 days' + n * interval '1 minute', 1
from generate_series(1, 50000) n;

vacuum analyze;
