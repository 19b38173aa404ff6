//! The write statement: every row a batch adds or changes, in every table, in one
//! statement (one round trip, one commit). Each table is written by one CTE, from column
//! arrays ([`super::rows`]) unnested into rows.

use super::{
    Output,
    rows::{ContactUpdates, FailureRows, MessageRows, ReplyRows, StatusRows},
};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::{PgConnection, types::Json};

/// Everything one write stores.
pub(super) struct Rows<'a> {
    pub messages: &'a MessageRows<'a>,
    pub updates: &'a ContactUpdates<'a>,
    pub replies: &'a ReplyRows,
    pub outbound: &'a StatusRows<'a>,
    pub failures: &'a FailureRows<'a>,
    pub archive_media: bool,
    pub enrich: bool,
}

/// Runs the write. Its length is the statement's: the SQL text and one bind per column
/// array; there is no logic here to split off.
pub(super) async fn execute(
    conn: &mut PgConnection,
    rows: &Rows<'_>,
) -> Result<Output, StoreError> {
    let (m, u, r, f) = (rows.messages, rows.updates, rows.replies, rows.failures);
    let (e, w) = (&rows.outbound.events, &rows.outbound.winners);
    let row = sqlx::query_as!(
        Output,
        r#"
        with known as materialized (
            -- The messages the callbacks name that are stored already, with their day.
            select k.message_sid, k.received_at from message_keys k
            where k.message_sid = any($76::text[])
        ), claimed as (
            -- The SID directory first (migration 12): the one place a bare SID is unique.
            -- A concurrent copy of a SID waits here, and finds it taken once that commits.
            -- What is claimed here is new, and its time is the day of all its rows. (A
            -- callback's SID found above is not claimed again: one probe of the directory
            -- each, not two.)
            insert into message_keys (message_sid, received_at)
            select * from (select * from unnest($1::text[], $34::timestamptz[])
                           union all
                           select * from unnest($76::text[], $89::timestamptz[]) as u (sid, at)
                           where u.sid not in (select message_sid from known)) as k
            order by 1
            on conflict (message_sid) do nothing
            returning message_sid, received_at
        ), outbound_keys as (
            -- The day of each message the callbacks name: new, or stored before. (A SID
            -- claimed by another transaction after this statement's snapshot is in
            -- neither: the check below fails and the batch is read again.)
            select message_sid, received_at from claimed
            where message_sid = any($76::text[])
            union all
            select message_sid, received_at from known
        ), upserted as (
            -- Every message row the batch adds or changes, in one insert: new inbound
            -- messages, and the outbound messages its status callbacks name. Each goes to
            -- its day's partition, found by the key (received_at, message_sid).
            insert into messages as m (
                message_sid, account_sid, messaging_service_sid, direction, channel,
                business, contact, body, num_media, num_segments, profile_name, wa_id,
                external_user_id, message_type, latitude, longitude, location_address,
                location_label, button_text, button_payload, replied_to_sid,
                replied_to_sender, forwarded, frequently_forwarded, referral_source_type,
                referral_source_id, referral_source_url, referral_headline, referral_body,
                referral_ctwa_clid, from_country, to_country, channel_metadata, status,
                status_rank, error_code, error_message, in_reply_to, rule, reply_part,
                received_at, updated_at, params, source, twilio_created_at, twilio_sent_at,
                price, price_unit, parent_external_user_id)
            select t.message_sid, t.account_sid, t.messaging_service_sid, 'inbound',
                   t.channel, t.business, t.contact, t.body, t.num_media, t.num_segments,
                   t.profile_name, t.wa_id, t.external_user_id, t.message_type,
                   t.latitude, t.longitude, t.location_address, t.location_label,
                   t.button_text, t.button_payload, t.replied_to_sid, t.replied_to_sender,
                   t.forwarded, t.frequently_forwarded, t.referral_source_type,
                   t.referral_source_id, t.referral_source_url, t.referral_headline,
                   t.referral_body, t.referral_ctwa_clid, t.from_country, t.to_country,
                   t.channel_metadata, t.status, t.status_rank, null::int4, null::text,
                   null::text, null::text, null::int4, t.received_at, t.received_at,
                   t.params, t.source, t.twilio_created_at, t.twilio_sent_at,
                   t.price::numeric, t.price_unit, t.parent_external_user_id
            from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::text[], $8::int4[], $9::int4[], $10::text[],
                        $11::text[], $12::text[], $13::text[], $14::float8[],
                        $15::float8[], $16::text[], $17::text[], $18::text[], $19::text[],
                        $20::text[], $21::text[], $22::bool[], $23::bool[], $24::text[],
                        $25::text[], $26::text[], $27::text[], $28::text[], $29::text[],
                        $30::text[], $31::text[], $32::jsonb[], $33::text[],
                        $34::timestamptz[], $35::jsonb[], $36::int2[], $102::text[],
                        $103::timestamptz[], $104::timestamptz[], $105::text[],
                        $106::text[], $121::text[])
                as t (message_sid, account_sid, messaging_service_sid, channel, business,
                      contact, body, num_media, num_segments, profile_name, wa_id,
                      external_user_id, message_type, latitude, longitude,
                      location_address, location_label, button_text, button_payload,
                      replied_to_sid, replied_to_sender, forwarded, frequently_forwarded,
                      referral_source_type, referral_source_id, referral_source_url,
                      referral_headline, referral_body, referral_ctwa_clid, from_country,
                      to_country, channel_metadata, status, received_at, params,
                      status_rank, source, twilio_created_at, twilio_sent_at, price,
                      price_unit, parent_external_user_id)
            join claimed using (message_sid)
            union all
            select u.message_sid, u.account_sid, u.messaging_service_sid, 'outbound',
                   u.channel, u.business, u.contact,
                   -- A function (migration 14): inline, this lookup would make every
                   -- write plan and open every day of replies.
                   coalesce(u.body, (reply_of(u.in_reply_to)).bodies[u.reply_part + 1]),
                   u.num_media, u.num_segments,
                   null, null, null, null, null, null, null, null, null, null, null, null,
                   null, null, null, null, null, null, null, null, null, null, null,
                   u.status, u.status_rank, u.error_code, u.error_message,
                   u.in_reply_to, u.rule, u.reply_part, k.received_at, u.updated_at,
                   u.params, u.source, u.twilio_created_at, u.twilio_sent_at,
                   u.price::numeric, u.price_unit, null
            from unnest($76::text[], $77::text[], $78::text[], $79::text[], $80::text[],
                        $81::text[], $82::text[], $83::int2[], $84::int4[], $85::text[],
                        $86::text[], $87::text[], $88::int4[], $89::timestamptz[],
                        $90::timestamptz[], $91::jsonb[], $107::text[], $108::int4[],
                        $109::int4[], $110::timestamptz[], $111::timestamptz[],
                        $112::text[], $113::text[], $114::text[])
                as u (message_sid, account_sid, messaging_service_sid, channel, business,
                      contact, status, status_rank, error_code, error_message,
                      in_reply_to, rule, reply_part, received_at, updated_at, params, body,
                      num_media, num_segments, twilio_created_at, twilio_sent_at, price,
                      price_unit, source)
            join outbound_keys k using (message_sid)
            on conflict (received_at, message_sid) do update set
                -- A higher rank wins; an unknown status (NULL rank) never replaces a
                -- known one.
                status = case when excluded.status_rank > coalesce(m.status_rank, -1)
                              then excluded.status else m.status end,
                error_code = case when excluded.status_rank > coalesce(m.status_rank, -1)
                                  then excluded.error_code else m.error_code end,
                error_message =
                    case when excluded.status_rank > coalesce(m.status_rank, -1)
                         then excluded.error_message else m.error_message end,
                status_rank = greatest(m.status_rank, excluded.status_rank),
                messaging_service_sid =
                    coalesce(m.messaging_service_sid, excluded.messaging_service_sid),
                in_reply_to = coalesce(m.in_reply_to, excluded.in_reply_to),
                rule = coalesce(m.rule, excluded.rule),
                reply_part = coalesce(m.reply_part, excluded.reply_part),
                body = coalesce(m.body, excluded.body),
                num_media = coalesce(m.num_media, excluded.num_media),
                num_segments = coalesce(m.num_segments, excluded.num_segments),
                -- Twilio's own record is the newer truth for these: a price appears late.
                twilio_created_at = coalesce(excluded.twilio_created_at, m.twilio_created_at),
                twilio_sent_at = coalesce(excluded.twilio_sent_at, m.twilio_sent_at),
                price = coalesce(excluded.price, m.price),
                price_unit = coalesce(excluded.price_unit, m.price_unit),
                updated_at = greatest(m.updated_at, excluded.updated_at)
            -- An inbound message stored before is a duplicate: left as it is (and not
            -- returned, so the check sees it was not new).
            where excluded.direction = 'outbound'
            returning m.message_sid, m.direction, m.status, m.business, m.contact,
                      m.channel, m.received_at, m.account_sid, (m.body is null) as no_body
        ), msg as (
            -- The inbound messages new to the table.
            select u.message_sid, u.received_at
            from upserted u join claimed c using (message_sid)
            where u.direction = 'inbound'
        ), sent as (
            -- The messages the batch's status callbacks created or changed (an inbound
            -- message's row too, should a callback name one). Created: its SID was claimed
            -- here (Postgres refuses xmax on a partitioned table).
            select u.*, (c.message_sid is not null) as created
            from upserted u left join claimed c using (message_sid)
            where not (c.message_sid is not null and u.direction = 'inbound')
        ), media as (
            -- New inbound messages' media, and an outbound message's read from the API
            -- (kept when it is stored already).
            insert into message_media (
                message_received_at, message_sid, index, url, content_type, archive_state,
                archive_next_at)
            select upserted.received_at, m.message_sid, m.index, m.url, m.content_type,
                   case when $41 then 'pending' end, case when $41 then now() end
            from (select * from unnest($37::text[], $38::int4[], $39::text[], $40::text[])
                  union all
                  select * from unnest($115::text[], $116::int4[], $117::text[],
                                       $118::text[]))
                as m (message_sid, index, url, content_type)
            join upserted using (message_sid)
            on conflict (message_received_at, message_sid, index) do nothing
        ), enrich as (
            -- Outbound messages first seen in a status callback, body unknown: one read of
            -- their resource each, queued with the row (reconcile.enabled), unless their
            -- contact was erased.
            insert into enrichment_jobs (message_sid, account_sid)
            select message_sid, account_sid from sent
            where $120 and created and direction = 'outbound' and no_body
              and not exists (
                  select 1 from erased_contacts e
                  where e.contact_sha256 = encode(sha256(convert_to(sent.contact, 'UTF8')), 'hex'))
            on conflict do nothing
        ), ev as (
            -- In their message's day.
            insert into message_status_events (
                message_received_at, message_sid, status, error_code, error_message,
                raw_dlr_done_date, received_at, params, error_code_raw, source)
            select k.received_at, e.message_sid, e.status, e.error_code, e.error_message,
                   e.raw_dlr_done_date, e.received_at, e.params, e.error_code_raw, e.source
            from unnest($68::text[], $69::text[], $70::int4[], $71::text[], $72::text[],
                        $73::timestamptz[], $74::jsonb[], $75::text[], $119::text[])
                with ordinality
                as e (message_sid, status, error_code, error_message, raw_dlr_done_date,
                      received_at, params, error_code_raw, source, n)
            join outbound_keys k using (message_sid)
            order by e.n
            on conflict (message_received_at, message_sid, status, error_code_raw,
                         raw_dlr_done_date) do nothing
            returning id, message_sid, status, error_code, error_code_raw, raw_dlr_done_date
        ), conv as (
            -- One row per contact, whichever kinds of webhook the batch has for it (a
            -- statement may touch a row only once). Inbound: inbound_count grows by
            -- what the batch adds, so the row as written shows whether anything else
            -- added to it since the read; the inbound columns are the batch's (never
            -- NULL for a contact it has new messages of). Outbound: only a message
            -- new to the table counts, and it never opens or extends a window.
            insert into conversations as c (
                business, contact, channel, first_inbound_at, last_inbound_at,
                window_expires_at, session_started_at, inbound_count, last_outbound_at,
                outbound_count, created_at, updated_at)
            select coalesce(u.business, o.business), coalesce(u.contact, o.contact),
                   coalesce(u.channel, o.channel), u.first_inbound_at, u.last_inbound_at,
                   u.window_expires_at, u.session_started_at, coalesce(u.added, 0),
                   o.last_outbound_at, coalesce(o.added, 0),
                   least(u.first_inbound_at, o.first_outbound_at),
                   greatest(u.last_inbound_at, o.last_outbound_at)
            from unnest($42::text[], $43::text[], $44::text[], $45::timestamptz[],
                        $46::timestamptz[], $47::timestamptz[], $48::timestamptz[],
                        $49::int8[])
                as u (business, contact, channel, first_inbound_at, last_inbound_at,
                      window_expires_at, session_started_at, added)
            full join (select business, contact, min(channel) as channel,
                              min(received_at) as first_outbound_at,
                              max(received_at) as last_outbound_at, count(*) as added
                       from sent where sent.created
                       group by business, contact) as o
                on o.business = u.business and o.contact = u.contact
            order by 1, 2
            on conflict (business, contact) do update set
                first_inbound_at = coalesce(excluded.first_inbound_at, c.first_inbound_at),
                last_inbound_at = coalesce(excluded.last_inbound_at, c.last_inbound_at),
                window_expires_at =
                    coalesce(excluded.window_expires_at, c.window_expires_at),
                session_started_at =
                    coalesce(excluded.session_started_at, c.session_started_at),
                inbound_count = c.inbound_count + excluded.inbound_count,
                last_outbound_at = greatest(c.last_outbound_at, excluded.last_outbound_at),
                outbound_count = c.outbound_count + excluded.outbound_count,
                updated_at = greatest(c.updated_at, excluded.updated_at)
            returning c.business, c.contact, c.inbound_count, c.created_at
        ), sess as (
            insert into sessions as s (
                business, contact, started_at, last_inbound_at, expires_at, inbound_count,
                channel, referral_source_type, referral_source_id, referral_ctwa_clid)
            select * from unnest($51::text[], $52::text[], $53::timestamptz[],
                                 $54::timestamptz[], $55::timestamptz[], $56::int4[],
                                 $122::text[], $123::text[], $124::text[], $125::text[])
            order by 1, 2, 3
            on conflict (business, contact, started_at) do update set
                last_inbound_at = excluded.last_inbound_at,
                expires_at = excluded.expires_at,
                inbound_count = s.inbound_count + excluded.inbound_count
        ), refused as (
            -- Recipients Twilio refused to send to (a new event with error 21610: they
            -- unsubscribed), opted out as of the message's first sighting, so that an
            -- opt-in recorded after it was sent still wins.
            select distinct on (s.business, s.contact)
                   s.business, s.contact, s.message_sid, s.received_at
            from ev join sent s using (message_sid)
            where ev.error_code = 21610
            order by s.business, s.contact, s.received_at desc
        ), opt as (
            insert into consent as k (business, contact, state, message_sid, changed_at)
            select distinct on (c.business, c.contact) c.*
            from (select * from unnest($57::text[], $58::text[], $59::text[], $60::text[],
                                       $61::timestamptz[])
                  union all
                  select business, contact, 'opted_out', message_sid, received_at
                  from refused) as c (business, contact, state, message_sid, changed_at)
            order by c.business, c.contact, c.changed_at desc
            on conflict (business, contact) do update set
                state = excluded.state,
                message_sid = excluded.message_sid,
                changed_at = excluded.changed_at
            -- The latest message decides, also when an older one is stored late (the
            -- spool).
            where k.changed_at <= excluded.changed_at
        ), consent_history as (
            -- Every change, also one older than the current state (found late).
            insert into consent_events (business, contact, state, message_sid, cause, rule, at)
            select * from unnest($126::text[], $127::text[], $128::text[], $129::text[],
                                 $130::text[], $131::text[], $132::timestamptz[])
            union all
            select business, contact, 'opted_out', message_sid, 'delivery_error', null,
                   received_at
            from refused
        ), answer as (
            -- Only for messages this statement inserted: a reply already on record (another
            -- transaction stored the message meanwhile) is left alone and the check fails.
            -- Rules and bodies are slices of one flat array each (see ReplyRows).
            insert into replies (message_received_at, message_sid, rule, twiml, bodies,
                                 created_at)
            select msg.received_at, r.message_sid,
                   nullif(($63::text[])[r.rule_from:r.rule_to], '{}'),
                   r.twiml, ($65::text[])[r.body_from:r.body_to], r.created_at
            from unnest($62::text[], $64::text[], $66::timestamptz[], $98::int4[],
                        $99::int4[], $100::int4[], $101::int4[])
                as r (message_sid, twiml, created_at, rule_from, rule_to, body_from,
                      body_to)
            join msg using (message_sid)
        ), failed as (
            -- Fallback calls, whether or not their message is new; a replayed spool record's
            -- call is stored once however often the record is replayed.
            insert into webhook_failures (
                message_sid, error_code, error_url, received_at, params, spool_record)
            select * from unnest($92::text[], $93::int4[], $94::text[], $95::timestamptz[],
                                 $96::jsonb[], $97::text[])
            on conflict (received_at, spool_record) do nothing
            returning spool_record
        )
        select array(select message_sid from ev order by id) as "event_sid!",
               array(select status from ev order by id) as "event_status!",
               array(select error_code_raw from ev order by id)
                   as "event_error_code!: Vec<Option<String>>",
               array(select raw_dlr_done_date from ev order by id)
                   as "event_dlr_done!: Vec<Option<String>>",
               array(select message_sid from sent) as "message_sid!",
               array(select received_at from sent) as "message_received_at!",
               array(select created from sent) as "created!: Vec<bool>",
               array(select status from sent) as "status!: Vec<Option<String>>",
               array(select spool_record from failed where spool_record is not null)
                   as "failure_records!"
        -- The check: every message new, the day of every message a callback names found,
        -- every conversation the row that was read (the
        -- same created_at: not erased and created again) and every count as expected. When
        -- it fails, write_check raises SQLSTATE TR409, which aborts the whole statement:
        -- none of the writes above is kept.
        where write_check((select count(*) from msg) = cardinality($1::text[])
                           and (select count(*) from outbound_keys) = cardinality($76::text[])
                           and (select count(*)
                                from conv join unnest($42::text[], $43::text[], $50::int8[],
                                                      $67::timestamptz[])
                                    as e (business, contact, inbound_count, created_at)
                                    using (business, contact, inbound_count)
                                where e.created_at is null or conv.created_at = e.created_at)
                               = cardinality($42::text[]))
        "#,
        &m.sid as &[&str],
        &m.account_sid as &[&str],
        &m.messaging_service_sid as &[Option<&str>],
        &m.channel,
        &m.business as &[&str],
        &m.contact as &[&str],
        &m.body as &[&str],
        &m.num_media as &[Option<i32>],
        &m.num_segments as &[Option<i32>],
        &m.profile_name as &[Option<&str>],
        &m.wa_id as &[Option<&str>],
        &m.external_user_id as &[Option<&str>],
        &m.message_type as &[Option<&str>],
        &m.latitude as &[Option<f64>],
        &m.longitude as &[Option<f64>],
        &m.location_address as &[Option<&str>],
        &m.location_label as &[Option<&str>],
        &m.button_text as &[Option<&str>],
        &m.button_payload as &[Option<&str>],
        &m.replied_to_sid as &[Option<&str>],
        &m.replied_to_sender as &[Option<&str>],
        &m.forwarded as &[Option<bool>],
        &m.frequently_forwarded as &[Option<bool>],
        &m.referral_source_type as &[Option<&str>],
        &m.referral_source_id as &[Option<&str>],
        &m.referral_source_url as &[Option<&str>],
        &m.referral_headline as &[Option<&str>],
        &m.referral_body as &[Option<&str>],
        &m.referral_ctwa_clid as &[Option<&str>],
        &m.from_country as &[Option<&str>],
        &m.to_country as &[Option<&str>],
        &m.channel_metadata as &[Option<&serde_json::Value>],
        &m.status as &[Option<&str>],
        &m.received_at,
        &m.params as &[Json<&RawValue>],
        &m.status_rank as &[Option<i16>],
        &m.media.sid as &[&str],
        &m.media.index,
        &m.media.url as &[&str],
        &m.media.content_type as &[Option<&str>],
        rows.archive_media,
        &u.business as &[&str],
        &u.contact as &[&str],
        &u.channel,
        &u.first as &[Option<DateTime<Utc>>],
        &u.last as &[Option<DateTime<Utc>>],
        &u.expires as &[Option<DateTime<Utc>>],
        &u.started as &[Option<DateTime<Utc>>],
        &u.added,
        &u.count,
        &u.session_business as &[&str],
        &u.session_contact as &[&str],
        &u.session_started,
        &u.session_last,
        &u.session_expires,
        &u.session_count,
        &u.consent_business as &[&str],
        &u.consent_contact as &[&str],
        &u.consent_state as &[&str],
        &u.consent_sid as &[&str],
        &u.consent_at,
        &r.sid,
        &r.rules,
        &r.twiml,
        &r.bodies,
        &r.at,
        &u.created as &[Option<DateTime<Utc>>],
        &e.sid as &[&str],
        &e.status as &[&str],
        &e.error_code as &[Option<i32>],
        &e.error_message as &[Option<&str>],
        &e.raw_dlr_done_date as &[Option<&str>],
        &e.at,
        &e.params as &[Json<&RawValue>],
        &e.error_code_raw as &[Option<&str>],
        &w.sid as &[&str],
        &w.account_sid as &[&str],
        &w.messaging_service_sid as &[Option<&str>],
        &w.channel,
        &w.business as &[&str],
        &w.contact as &[&str],
        &w.status as &[&str],
        &w.status_rank as &[Option<i16>],
        &w.error_code as &[Option<i32>],
        &w.error_message as &[Option<&str>],
        &w.in_reply_to as &[Option<&str>],
        &w.rule as &[Option<&str>],
        &w.reply_part as &[Option<i32>],
        &w.received_at,
        &w.updated_at,
        &w.params as &[Json<&RawValue>],
        &f.sid as &[&str],
        &f.error_code as &[Option<i32>],
        &f.error_url as &[Option<&str>],
        &f.at,
        &f.params as &[Json<&RawValue>],
        &f.spool_record as &[Option<&str>],
        &r.rule_from,
        &r.rule_to,
        &r.body_from,
        &r.body_to,
        &m.origin as &[&str],
        &m.twilio.created_at as &[Option<DateTime<Utc>>],
        &m.twilio.sent_at as &[Option<DateTime<Utc>>],
        &m.twilio.price as &[Option<&str>],
        &m.twilio.price_unit as &[Option<&str>],
        &w.body as &[Option<&str>],
        &w.num_media as &[Option<i32>],
        &w.num_segments as &[Option<i32>],
        &w.twilio.created_at as &[Option<DateTime<Utc>>],
        &w.twilio.sent_at as &[Option<DateTime<Utc>>],
        &w.twilio.price as &[Option<&str>],
        &w.twilio.price_unit as &[Option<&str>],
        &w.origin as &[&str],
        &w.media.sid as &[&str],
        &w.media.index,
        &w.media.url as &[&str],
        &w.media.content_type as &[Option<&str>],
        &e.source as &[&str],
        rows.enrich,
        &m.parent_external_user_id as &[Option<&str>],
        &u.session_channel,
        &u.session_referral_type as &[Option<&str>],
        &u.session_referral_id as &[Option<&str>],
        &u.session_ctwa_clid as &[Option<&str>],
        &u.event_business as &[&str],
        &u.event_contact as &[&str],
        &u.event_state as &[&str],
        &u.event_sid as &[&str],
        &u.event_cause as &[&str],
        &u.event_rule as &[Option<String>],
        &u.event_at,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(row)
}
