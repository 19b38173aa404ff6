-- A history of about :rows messages over the 90 whole days (UTC) before today, written the
-- way the server writes them, into a migrated database. Run by bench/fixture.sh, which sets
-- :rows, :contacts and :events (see BENCHMARKS.md, "How to run them").
--
-- The history is made of exchanges, rows / 3 of them (per_day = rows / 270 a day). Exchange
-- e happens on day e / per_day, evenly spaced from 00:01 to 23:59, with contact
-- e % contacts of one WhatsApp business:
--
--   t        inbound A: the question (every 20th a photo, with its message_media row),
--            answered with a tracked TwiML <Message> (rule "hours"): a replies row
--   t + 1 s  outbound: that reply, first seen in its "sent" callback; "delivered" at
--            t + 2 s, "read" at t + 20 s: three message_status_events rows, status read
--            (none with :events = 0: a third less disk, and the inbound load never reads
--            them)
--   t + 30 s inbound B: "thanks", answered with an empty <Response/>: a replies row
--
-- plus one session per exchange (contacts exceed per_day, so a contact's exchanges are
-- over 24 hours apart) and one conversation per contact whose counters and times agree
-- with its messages, so every figure of bench/checks.sql is 0. A day's rows all lie within
-- the day, so a prune with a cutoff at the second day's midnight removes exactly the oldest
-- day of messages.
--
-- fixture_day() holds one insert per table. On the schema of daily partitions (issue 22:
-- the SID directory message_keys exists) it first makes the day's partitions with
-- create_day_partitions(), fills message_keys for every message of the day, and sets
-- message_received_at (the message's received_at) on its media, replies and status events;
-- on the unpartitioned schema it writes what it always wrote. The two variants of those
-- inserts are branches of an if: plpgsql plans a statement only when it runs, so the
-- branch naming columns the schema lacks is never checked there.
\set ON_ERROR_STOP on
set timezone = 'UTC';
-- As the server's connections: no JIT for short statements.
set jit = off;

select round(:rows / 270.0)::int as per_day,
       date_trunc('day', now()) - interval '90 days' as t0,
       clock_timestamp() as started,
       to_regclass('message_keys') is not null as keyed \gset
\if :{?contacts}
\else
\set contacts 1000
\endif
\if :{?events}
\else
\set events 1
\endif

-- When exchange e happens.
create function pg_temp.fixture_at(e bigint, t0 timestamptz, per_day int) returns timestamptz
language sql immutable as $$
    select t0 + (e / per_day) * interval '1 day' + interval '60 s'
           + (e % per_day) * (interval '86280 s' / per_day)
$$;

-- The exchanges of day d, with every value their rows share.
create function pg_temp.fixture_exchanges(d int, t0 timestamptz, per_day int, contacts int)
returns table (e bigint, sid_a text, sid_out text, sid_b text, photo boolean, media_url text,
               business text, contact text, wa_id text, t timestamptz)
language sql stable as $$
    select e,
           case when e % 20 = 0 then 'MM' else 'SM' end || md5('fixture-a-' || e),
           'SM' || md5('fixture-out-' || e),
           'SM' || md5('fixture-b-' || e),
           e % 20 = 0,
           case when e % 20 = 0 then
               'https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/MM'
               || md5('fixture-a-' || e) || '/Media/ME' || md5('fixture-media-' || e) end,
           'whatsapp:+14155238886',
           'whatsapp:+1555' || lpad((e % contacts)::text, 7, '0'),
           '1555' || lpad((e % contacts)::text, 7, '0'),
           pg_temp.fixture_at(e, t0, per_day)
    from generate_series(d::bigint * per_day, (d + 1)::bigint * per_day - 1) as e
$$;

-- Every parameter of an inbound WhatsApp webhook as observed (TWILIO.md 3.2; as jsonb, 660
-- bytes for the question, 600 for the thanks, 807 for a photo), with MediaUrl0 and
-- MediaContentType0 for a photo.
create function pg_temp.fixture_inbound_params(sid text, contact text, wa_id text, body text,
                                               media_url text) returns jsonb
language sql immutable as $$
    select jsonb_build_object(
        'SmsMessageSid', sid, 'NumMedia', case when media_url is null then '0' else '1' end,
        'ProfileName', 'Ana María',
        'MessageType', case when media_url is null then 'text' else 'image' end,
        'SmsSid', sid, 'WaId', wa_id, 'SmsStatus', 'received', 'Body', body,
        'To', 'whatsapp:+14155238886', 'NumSegments', '1', 'ReferralNumMedia', '0',
        'MessageSid', sid, 'AccountSid', 'AC0123456789abcdef0123456789abcdef',
        'ChannelMetadata', '{"type":"whatsapp","data":{"context":{"ProfileName":"Ana María","WaId":"'
                           || wa_id || '"}}}',
        'From', contact, 'ApiVersion', '2010-04-01')
    || case when media_url is null then '{}'::jsonb
            else jsonb_build_object('MediaUrl0', media_url, 'MediaContentType0', 'image/jpeg') end
$$;

-- A status callback as benches/load.rs sends it.
create function pg_temp.fixture_status_params(sid text, contact text, status text) returns jsonb
language sql immutable as $$
    select jsonb_build_object(
        'MessageSid', sid, 'SmsSid', sid, 'AccountSid', 'AC0123456789abcdef0123456789abcdef',
        'MessagingServiceSid', 'MG0123456789abcdef0123456789abcdef',
        'From', 'whatsapp:+14155238886', 'To', contact, 'MessageStatus', status,
        'SmsStatus', status, 'ChannelPrefix', 'whatsapp',
        'ChannelInstallSid', 'XE0123456789abcdef0123456789abcdef',
        'StructuredMessage', 'false', 'ApiVersion', '2010-04-01')
$$;

-- Day d's rows in every table; returns a progress line.
create function pg_temp.fixture_day(d int, t0 timestamptz, per_day int, contacts int,
                                    events boolean, started timestamptz, keyed boolean)
returns text
language plpgsql as $$
declare
    question constant text := 'Hola! ¿A qué hora abren mañana? Quiero pedir 2 cafés & 1 tostada';
    answer constant text := 'Abrimos a las 9:00. ¡Te esperamos!';
    thanks constant text := 'Gracias!';
    day_lo constant timestamptz := t0 + d * interval '1 day';
begin
    if keyed then
        -- The day's partitions of every split table (t0 is a UTC midnight).
        perform create_day_partitions((day_lo at time zone 'UTC')::date,
                                      (day_lo at time zone 'UTC')::date);
    end if;

    insert into messages (
        message_sid, account_sid, messaging_service_sid, direction, channel, business, contact,
        body, num_media, num_segments, profile_name, wa_id, message_type, channel_metadata,
        status, status_rank, in_reply_to, rule, reply_part, received_at, updated_at, params,
        source)
    select * from (
        select x.sid_a, 'AC0123456789abcdef0123456789abcdef', null, 'inbound', 'whatsapp',
               x.business, x.contact, case when x.photo then '' else question end,
               case when x.photo then 1 else 0 end, 1, 'Ana María', x.wa_id,
               case when x.photo then 'image' else 'text' end,
               jsonb_build_object('type', 'whatsapp', 'data', jsonb_build_object('context',
                   jsonb_build_object('ProfileName', 'Ana María', 'WaId', x.wa_id))),
               'received', 2::smallint, null, null, null::int, x.t, x.t,
               pg_temp.fixture_inbound_params(x.sid_a, x.contact, x.wa_id,
                   case when x.photo then '' else question end, x.media_url),
               'webhook'
        from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        union all
        select x.sid_out, 'AC0123456789abcdef0123456789abcdef',
               'MG0123456789abcdef0123456789abcdef', 'outbound', 'whatsapp', x.business,
               x.contact, answer, null, null, null, null, null, null, 'read', 80::smallint,
               x.sid_a, 'hours', 0, x.t + interval '1 s', x.t + interval '20 s',
               pg_temp.fixture_status_params(x.sid_out, x.contact, 'sent'), 'webhook'
        from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        union all
        select x.sid_b, 'AC0123456789abcdef0123456789abcdef', null, 'inbound', 'whatsapp',
               x.business, x.contact, thanks, 0, 1, 'Ana María', x.wa_id, 'text',
               jsonb_build_object('type', 'whatsapp', 'data', jsonb_build_object('context',
                   jsonb_build_object('ProfileName', 'Ana María', 'WaId', x.wa_id))),
               'received', 2::smallint, null, null, null::int, x.t + interval '30 s',
               x.t + interval '30 s',
               pg_temp.fixture_inbound_params(x.sid_b, x.contact, x.wa_id, thanks, null),
               'webhook'
        from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
    ) as m
    order by 20;

    if keyed then
        -- The directory: one key per message, with its day, in the order the server claims
        -- them (arrival).
        insert into message_keys (message_sid, received_at)
        select message_sid, received_at from messages
        where received_at >= day_lo and received_at < day_lo + interval '1 day'
        order by received_at;
    end if;

    if keyed then
        insert into message_media (message_sid, message_received_at, index, url, content_type)
        select x.sid_a, x.t, 0, x.media_url, 'image/jpeg'
        from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        where x.photo;
    else
        insert into message_media (message_sid, index, url, content_type)
        select x.sid_a, 0, x.media_url, 'image/jpeg'
        from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        where x.photo;
    end if;

    if keyed then
        insert into replies (message_sid, rule, twiml, bodies, created_at, message_received_at)
        select * from (
            select x.sid_a, array['hours'],
                   '<?xml version="1.0" encoding="UTF-8"?><Response><Message action="'
                   || 'https://hooks.example.com/twilio/status?reply_to=' || x.sid_a
                   || '&amp;part=0&amp;rule=hours" method="POST"><Body>' || answer
                   || '</Body></Message></Response>',
                   array[answer], x.t, x.t
            from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
            union all
            select x.sid_b, null, '<?xml version="1.0" encoding="UTF-8"?><Response/>', '{}',
                   x.t + interval '30 s', x.t + interval '30 s'
            from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        ) as r
        order by 5;
    else
        insert into replies (message_sid, rule, twiml, bodies, created_at)
        select * from (
            select x.sid_a, array['hours'],
                   '<?xml version="1.0" encoding="UTF-8"?><Response><Message action="'
                   || 'https://hooks.example.com/twilio/status?reply_to=' || x.sid_a
                   || '&amp;part=0&amp;rule=hours" method="POST"><Body>' || answer
                   || '</Body></Message></Response>',
                   array[answer], x.t
            from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
            union all
            select x.sid_b, null, '<?xml version="1.0" encoding="UTF-8"?><Response/>', '{}',
                   x.t + interval '30 s'
            from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        ) as r
        order by 5;
    end if;

    if keyed then
        insert into message_status_events (message_sid, message_received_at, status,
                                           received_at, params, source)
        select x.sid_out, x.t + interval '1 s', s.status, x.t + s.after,
               pg_temp.fixture_status_params(x.sid_out, x.contact, s.status), 'callback'
        from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        cross join (values ('sent', interval '1 s'), ('delivered', interval '2 s'),
                           ('read', interval '20 s')) as s (status, after)
        where events
        order by 4;
    else
        insert into message_status_events (message_sid, status, received_at, params, source)
        select x.sid_out, s.status, x.t + s.after,
               pg_temp.fixture_status_params(x.sid_out, x.contact, s.status), 'callback'
        from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x
        cross join (values ('sent', interval '1 s'), ('delivered', interval '2 s'),
                           ('read', interval '20 s')) as s (status, after)
        where events
        order by 3;
    end if;

    insert into sessions (business, contact, started_at, last_inbound_at, expires_at,
                          inbound_count, channel)
    select x.business, x.contact, x.t, x.t + interval '30 s',
           x.t + interval '30 s' + interval '24 hours', 2, 'whatsapp'
    from pg_temp.fixture_exchanges(d, t0, per_day, contacts) x;

    return format('day %s/90: %s messages so far, %s s', d + 1, 3 * (d + 1)::bigint * per_day,
                  round(extract(epoch from clock_timestamp() - started)));
end
$$;

-- Sessions reference their conversation: the conversations come first, each with the
-- counters and times its messages will have.
insert into conversations (business, contact, channel, first_inbound_at, last_inbound_at,
                           window_expires_at, session_started_at, inbound_count,
                           last_outbound_at, outbound_count, created_at, updated_at)
select 'whatsapp:+14155238886', 'whatsapp:+1555' || lpad(c::text, 7, '0'), 'whatsapp',
       pg_temp.fixture_at(c, :'t0', :per_day),
       pg_temp.fixture_at(l, :'t0', :per_day) + interval '30 s',
       pg_temp.fixture_at(l, :'t0', :per_day) + interval '30 s' + interval '24 hours',
       pg_temp.fixture_at(l, :'t0', :per_day), 2 * n,
       pg_temp.fixture_at(l, :'t0', :per_day) + interval '1 s', n,
       pg_temp.fixture_at(c, :'t0', :per_day),
       pg_temp.fixture_at(l, :'t0', :per_day) + interval '30 s'
from generate_series(0, least(:contacts, 90 * :per_day) - 1) as c,
     lateral (select (90 * :per_day - 1 - c) / :contacts + 1) as k (n),
     lateral (select c + :contacts * (n - 1)) as z (l);

select format('select pg_temp.fixture_day(%s, %L, %s, %s, %L, %L, %L)', d, :'t0', :per_day,
              :contacts, :events::int::boolean, :'started', :'keyed'::boolean)
from generate_series(0, 89) as d \gexec
