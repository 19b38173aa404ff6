//! Group commit: many concurrent webhooks stored in one transaction, one multi-row statement
//! per step, so a batch shares its round trips and its commit (the WAL flush) instead of
//! paying them per webhook.
//!
//! Every guarantee of the one-at-a-time path ([`super::inbound::receive`],
//! [`super::status::record`]) holds, and Postgres enforces it: the unique SID decides which
//! delivery is first, whichever batch or process it is in, and a batch's write commits only
//! if no other transaction changed its contacts since it read them (see [`receive_many`]).
//! Inside a batch, the messages of one contact are applied in arrival order in Rust: each
//! sees the window, consent and reply history the earlier ones left, as if they had been
//! stored one after another.
//!
//! `ON CONFLICT DO UPDATE` may touch a row only once per statement, so rows are first
//! aggregated per SID and per (business, contact); rows are written in key order so that two
//! batches lock the rows they share in the same order.

use super::{
    StoreError,
    inbound::{Received, Reply},
    status::Recorded,
};
use crate::{
    reply::{ConsentState, Facts},
    twilio::{InboundMessage, ReplyLink, StatusCallback, status},
};
use chrono::{DateTime, Duration, Utc};
use serde_json::value::RawValue;
use sqlx::{PgConnection, types::Json};
use std::collections::HashMap;

/// One live delivery of an inbound message to the primary URL.
pub struct Live {
    pub msg: InboundMessage,
    /// Every parameter as received (`Params::to_json`).
    pub params: Box<RawValue>,
    pub at: DateTime<Utc>,
}

/// How many times a batch is read and written again after another transaction changed one
/// of its contacts in between; after that its webhooks are stored one at a time.
const ATTEMPTS: usize = 3;

/// Stores every delivery of `batch` once, in one transaction, and returns what each got, in
/// the order given. `decide(i, facts)` chooses the reply to `batch[i]`; it is called once per
/// new message, in arrival order within each contact (again, if the batch is retried). A
/// second copy of a SID inside the batch is answered as a duplicate of the first, with the
/// first's reply.
///
/// At most two round trips, whatever the batch size, and no explicit transaction:
/// 1. one statement reads what the rules need (each contact's conversation, session,
///    consent and, with a reply limit, recent replies) and which SIDs are stored already;
/// 2. after the decisions, one statement writes everything, and commits.
///
/// Nothing is locked in between. The write checks instead, row by row under the locks it
/// takes, that each conversation is the row that was read (same `created_at`: not erased
/// and created again) and that its inbound count is what was read plus what the batch adds:
/// every inbound message of a contact, whatever stored it, bumps that count in the same
/// transaction as its consent change, session and reply. If another transaction changed a
/// contact (or stored one of the SIDs) in between, the check fails, the whole statement
/// rolls back, and the batch is read and decided again.
///
/// The read is skipped when `memory` holds every contact of the batch as this writer's
/// last write left it, and none of its SIDs is one the writer stored: the same check makes
/// the write roll back if anything changed since, and the batch is then read afresh.
pub async fn receive_many(
    conn: &mut PgConnection,
    batch: &[Live],
    lookback: Duration,
    archive_media: bool,
    memory: &mut Memory,
    decide: impl FnMut(usize, &Facts) -> Reply,
) -> Result<Vec<Received>, StoreError> {
    let (received, _) =
        store_many(conn, batch, &[], lookback, archive_media, memory, decide).await?;
    Ok(received)
}

/// Stores inbound messages (as [`receive_many`]) and status callbacks (as [`record_many`])
/// with the same single write, so a batch of both kinds pays one round trip and one commit
/// (one WAL flush), not one per kind. Either kind may be empty.
///
/// A callback for a SID that is also an inbound message of this batch (Twilio sends none)
/// would have the write touch one row twice; such a batch is stored in two writes instead.
pub async fn store_many(
    conn: &mut PgConnection,
    batch: &[Live],
    callbacks: &[Callback],
    lookback: Duration,
    archive_media: bool,
    memory: &mut Memory,
    mut decide: impl FnMut(usize, &Facts) -> Reply,
) -> Result<(Vec<Received>, Vec<Recorded>), StoreError> {
    memory.rules_look_back(lookback);
    if !batch.is_empty() && !callbacks.is_empty() {
        let inbound: std::collections::HashSet<&str> =
            batch.iter().map(|live| live.msg.sid.as_str()).collect();
        if callbacks
            .iter()
            .any(|c| inbound.contains(c.cb.sid.as_str()))
        {
            let (none, outbound) = (StatusRows::new(&[]), StatusRows::new(callbacks));
            let options = (lookback, archive_media);
            let (received, _) = attempts(conn, batch, &none, options, memory, &mut decide).await?;
            let (_, recorded) =
                attempts(conn, &[], &outbound, options, memory, &mut decide).await?;
            return Ok((received, recorded));
        }
    }
    let outbound = StatusRows::new(callbacks);
    attempts(
        conn,
        batch,
        &outbound,
        (lookback, archive_media),
        memory,
        &mut decide,
    )
    .await
}

/// One write, read and decided again after a conflict, up to [`ATTEMPTS`] times.
async fn attempts(
    conn: &mut PgConnection,
    batch: &[Live],
    outbound: &StatusRows<'_>,
    (lookback, archive_media): (Duration, bool),
    memory: &mut Memory,
    decide: &mut impl FnMut(usize, &Facts) -> Reply,
) -> Result<(Vec<Received>, Vec<Recorded>), StoreError> {
    let mut attempt = 1;
    loop {
        let trust_memory = attempt == 1;
        let result = store_once(
            conn,
            batch,
            outbound,
            lookback,
            archive_media,
            memory,
            trust_memory,
            decide,
        )
        .await;
        match result {
            Err(e) if attempt < ATTEMPTS && is_conflict(&e) => {
                tracing::debug!(
                    attempt,
                    "a batch's contact changed while it was decided; again"
                );
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The write's check failed (its division by zero), or a reply for one of the SIDs was
/// stored meanwhile.
fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Other(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("22012" | "23505")))
}

#[allow(clippy::too_many_arguments)]
async fn store_once(
    conn: &mut PgConnection,
    batch: &[Live],
    outbound: &StatusRows<'_>,
    lookback: Duration,
    archive_media: bool,
    memory: &mut Memory,
    trust_memory: bool,
    decide: &mut impl FnMut(usize, &Facts) -> Reply,
) -> Result<(Vec<Received>, Vec<Recorded>), StoreError> {
    // The first copy of each SID; later copies point at it.
    let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    let mut copy_of = vec![None; batch.len()];
    for (i, live) in batch.iter().enumerate() {
        match first_of.get(live.msg.sid.as_str()) {
            Some(&first) => copy_of[i] = Some(first),
            None => {
                first_of.insert(&live.msg.sid, i);
            }
        }
    }
    let mut firsts: Vec<usize> = first_of.values().copied().collect();
    // SID order: the order the write locks them in.
    firsts.sort_unstable_by(|&a, &b| batch[a].msg.sid.cmp(&batch[b].msg.sid));
    let reads = Reads::new(batch, &firsts, lookback);

    let keys = &reads.keys;
    let index: HashMap<(&str, &str), usize> =
        keys.iter().enumerate().map(|(k, &key)| (key, k)).collect();
    let remembered = if trust_memory {
        memory.recall(batch, &firsts, keys)
    } else {
        None
    };
    // Forgotten until this batch is stored: if the write fails, nobody knows what it left.
    memory.forget(keys);
    let (mut contacts, stored_rows) = match remembered {
        Some(contacts) => (contacts, Vec::new()),
        None => read(conn, &reads, lookback).await?,
    };
    let stored: HashMap<&str, Option<&str>> = stored_rows
        .iter()
        .map(|(sid, twiml)| (sid.as_str(), twiml.as_deref()))
        .collect();

    // New messages in arrival order: the order each contact's messages are applied in.
    let new: Vec<usize> = firsts
        .iter()
        .copied()
        .filter(|&i| !stored.contains_key(batch[i].msg.sid.as_str()))
        .collect();
    let mut arrivals = new.clone();
    arrivals.sort_by_key(|&i| (batch[i].at, i));
    let mut twiml: Vec<Option<String>> = vec![None; batch.len()];
    let mut replies = ReplyRows::default();
    for &i in &arrivals {
        let live = &batch[i];
        let c = &mut contacts[index[&(live.msg.to.expose(), live.msg.from.expose())]];
        let facts = c.receive(live.at, lookback);
        c.latest = i;
        let reply = decide(i, &facts);
        if let Some(state) = reply.consent {
            c.consent = state;
            c.consent_change = Some((state, i));
        }
        if reply.store {
            if let Some(rule) = &reply.rule {
                c.recent.push((rule.clone(), live.at));
            }
            replies.push(
                &live.msg.sid,
                reply.rule,
                &reply.twiml,
                &reply.bodies,
                live.at,
            );
        }
        twiml[i] = Some(reply.twiml);
    }

    // A row this batch creates takes the time of the contact's earliest message, outbound
    // ones included, as one at a time would. (No conversation row means no message of the
    // contact is stored, so each of its callbacks creates its message; if a row appeared
    // meanwhile after all, the write's check fails and the batch is read again.)
    for (key, c) in keys.iter().zip(contacts.iter_mut()) {
        if let (None, true, Some(&at)) = (c.created, c.changed, outbound.first_at.get(key)) {
            c.created = Some(c.created_at().min(at));
        }
    }
    let mut recorded = Vec::new();
    if !new.is_empty() || !outbound.batch.is_empty() {
        let rows = MessageRows::new(batch, &new);
        let updates = ContactUpdates::new(keys, &contacts, batch);
        let (events, winners) = (&outbound.events, &outbound.winners);
        let row = sqlx::query!(
            r#"
            with msg as (
                insert into messages (
                    message_sid, account_sid, messaging_service_sid, direction, channel,
                    business, contact, body, num_media, num_segments, profile_name, wa_id,
                    external_user_id, message_type, latitude, longitude, location_address,
                    location_label, button_text, button_payload, replied_to_sid,
                    replied_to_sender, forwarded, frequently_forwarded, referral_source_type,
                    referral_source_id, referral_source_url, referral_headline, referral_body,
                    referral_ctwa_clid, from_country, to_country, channel_metadata, status,
                    received_at, updated_at, params, status_rank)
                select t.message_sid, t.account_sid, t.messaging_service_sid, 'inbound',
                       t.channel, t.business, t.contact, t.body, t.num_media, t.num_segments,
                       t.profile_name, t.wa_id, t.external_user_id, t.message_type,
                       t.latitude, t.longitude, t.location_address, t.location_label,
                       t.button_text, t.button_payload, t.replied_to_sid, t.replied_to_sender,
                       t.forwarded, t.frequently_forwarded, t.referral_source_type,
                       t.referral_source_id, t.referral_source_url, t.referral_headline,
                       t.referral_body, t.referral_ctwa_clid, t.from_country, t.to_country,
                       t.channel_metadata, t.status, t.received_at, t.received_at, t.params,
                       t.status_rank
                from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                            $6::text[], $7::text[], $8::int4[], $9::int4[], $10::text[],
                            $11::text[], $12::text[], $13::text[], $14::float8[],
                            $15::float8[], $16::text[], $17::text[], $18::text[], $19::text[],
                            $20::text[], $21::text[], $22::bool[], $23::bool[], $24::text[],
                            $25::text[], $26::text[], $27::text[], $28::text[], $29::text[],
                            $30::text[], $31::text[], $32::jsonb[], $33::text[],
                            $34::timestamptz[], $35::jsonb[], $36::int2[])
                    as t (message_sid, account_sid, messaging_service_sid, channel, business,
                          contact, body, num_media, num_segments, profile_name, wa_id,
                          external_user_id, message_type, latitude, longitude,
                          location_address, location_label, button_text, button_payload,
                          replied_to_sid, replied_to_sender, forwarded, frequently_forwarded,
                          referral_source_type, referral_source_id, referral_source_url,
                          referral_headline, referral_body, referral_ctwa_clid, from_country,
                          to_country, channel_metadata, status, received_at, params,
                          status_rank)
                on conflict (message_sid) do nothing
                returning message_sid
            ), media as (
                insert into message_media (
                    message_sid, index, url, content_type, archive_state, archive_next_at)
                select m.message_sid, m.index, m.url, m.content_type,
                       case when $41 then 'pending' end, case when $41 then now() end
                from unnest($37::text[], $38::int4[], $39::text[], $40::text[])
                    as m (message_sid, index, url, content_type)
                join msg using (message_sid)
            ), ev as (
                insert into message_status_events (
                    message_sid, status, error_code, error_message, raw_dlr_done_date,
                    received_at, params, error_code_raw)
                select * from unnest($68::text[], $69::text[], $70::int4[], $71::text[],
                                     $72::text[], $73::timestamptz[], $74::jsonb[],
                                     $75::text[])
                on conflict (message_sid, status, error_code_raw, raw_dlr_done_date) do nothing
                returning id, message_sid, status, error_code_raw, raw_dlr_done_date
            ), sent as (
                insert into messages as m (
                    message_sid, account_sid, messaging_service_sid, direction, channel,
                    business, contact, body, status, status_rank, error_code, error_message,
                    in_reply_to, rule, reply_part, received_at, updated_at, params)
                select u.message_sid, u.account_sid, u.messaging_service_sid, 'outbound',
                       u.channel, u.business, u.contact,
                       (select r.bodies[u.reply_part + 1] from replies r
                        where r.message_sid = u.in_reply_to),
                       u.status, u.status_rank, u.error_code, u.error_message, u.in_reply_to,
                       u.rule, u.reply_part, u.received_at, u.updated_at, u.params
                from unnest($76::text[], $77::text[], $78::text[], $79::text[], $80::text[],
                            $81::text[], $82::text[], $83::int2[], $84::int4[], $85::text[],
                            $86::text[], $87::text[], $88::int4[], $89::timestamptz[],
                            $90::timestamptz[], $91::jsonb[])
                    as u (message_sid, account_sid, messaging_service_sid, channel, business,
                          contact, status, status_rank, error_code, error_message,
                          in_reply_to, rule, reply_part, received_at, updated_at, params)
                on conflict (message_sid) do update set
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
                    updated_at = greatest(m.updated_at, excluded.updated_at)
                -- xmax is 0 on a row this statement inserted rather than updated.
                returning m.message_sid, (m.xmax = 0) as created, m.status, m.business,
                          m.contact, m.channel, m.received_at
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
                    business, contact, started_at, last_inbound_at, expires_at, inbound_count)
                select * from unnest($51::text[], $52::text[], $53::timestamptz[],
                                     $54::timestamptz[], $55::timestamptz[], $56::int4[])
                order by 1, 2, 3
                on conflict (business, contact, started_at) do update set
                    last_inbound_at = excluded.last_inbound_at,
                    expires_at = excluded.expires_at,
                    inbound_count = s.inbound_count + excluded.inbound_count
            ), opt as (
                insert into consent as k (business, contact, state, message_sid, changed_at)
                select * from unnest($57::text[], $58::text[], $59::text[], $60::text[],
                                     $61::timestamptz[])
                order by 1, 2
                on conflict (business, contact) do update set
                    state = excluded.state,
                    message_sid = excluded.message_sid,
                    changed_at = excluded.changed_at
                -- The latest message decides, also when an older one is stored late (the
                -- spool).
                where k.changed_at <= excluded.changed_at
            ), answer as (
                insert into replies (message_sid, rule, twiml, bodies, created_at)
                select r.message_sid, r.rule, r.twiml,
                       array(select jsonb_array_elements_text(r.bodies)), r.created_at
                from unnest($62::text[], $63::text[], $64::text[], $65::jsonb[],
                            $66::timestamptz[])
                    as r (message_sid, rule, twiml, bodies, created_at)
            )
            -- The check: every message new, every conversation the row that was read (the
            -- same created_at: not erased and created again) and every count as expected,
            -- or a division by zero rolls the whole statement back. (Only values known
            -- after the writes can be divided by, so the planner never evaluates it early.)
            select 1 / ((select count(*) from msg) = cardinality($1::text[])
                        and (select count(*)
                             from conv join unnest($42::text[], $43::text[], $50::int8[],
                                                   $67::timestamptz[])
                                 as e (business, contact, inbound_count, created_at)
                                 using (business, contact, inbound_count, created_at))
                            = cardinality($42::text[]))::int as "stored!",
                   array(select message_sid from ev order by id) as "event_sid!",
                   array(select status from ev order by id) as "event_status!",
                   array(select error_code_raw from ev order by id)
                       as "event_error_code!: Vec<Option<String>>",
                   array(select raw_dlr_done_date from ev order by id)
                       as "event_dlr_done!: Vec<Option<String>>",
                   array(select message_sid from sent) as "message_sid!",
                   array(select created from sent) as "created!: Vec<bool>",
                   array(select status from sent) as "status!: Vec<Option<String>>"
            "#,
            &rows.sid as &[&str],
            &rows.account_sid as &[&str],
            &rows.messaging_service_sid as &[Option<&str>],
            &rows.channel,
            &rows.business as &[&str],
            &rows.contact as &[&str],
            &rows.body as &[&str],
            &rows.num_media as &[Option<i32>],
            &rows.num_segments as &[Option<i32>],
            &rows.profile_name as &[Option<&str>],
            &rows.wa_id as &[Option<&str>],
            &rows.external_user_id as &[Option<&str>],
            &rows.message_type as &[Option<&str>],
            &rows.latitude as &[Option<f64>],
            &rows.longitude as &[Option<f64>],
            &rows.location_address as &[Option<&str>],
            &rows.location_label as &[Option<&str>],
            &rows.button_text as &[Option<&str>],
            &rows.button_payload as &[Option<&str>],
            &rows.replied_to_sid as &[Option<&str>],
            &rows.replied_to_sender as &[Option<&str>],
            &rows.forwarded as &[Option<bool>],
            &rows.frequently_forwarded as &[Option<bool>],
            &rows.referral_source_type as &[Option<&str>],
            &rows.referral_source_id as &[Option<&str>],
            &rows.referral_source_url as &[Option<&str>],
            &rows.referral_headline as &[Option<&str>],
            &rows.referral_body as &[Option<&str>],
            &rows.referral_ctwa_clid as &[Option<&str>],
            &rows.from_country as &[Option<&str>],
            &rows.to_country as &[Option<&str>],
            &rows.channel_metadata as &[Option<&serde_json::Value>],
            &rows.status as &[Option<&str>],
            &rows.received_at,
            &rows.params as &[Json<&RawValue>],
            &rows.status_rank as &[Option<i16>],
            &rows.media_sid as &[&str],
            &rows.media_index,
            &rows.media_url as &[&str],
            &rows.media_type as &[Option<&str>],
            archive_media,
            &updates.business as &[&str],
            &updates.contact as &[&str],
            &updates.channel,
            &updates.first as &[Option<DateTime<Utc>>],
            &updates.last as &[Option<DateTime<Utc>>],
            &updates.expires as &[Option<DateTime<Utc>>],
            &updates.started as &[Option<DateTime<Utc>>],
            &updates.added,
            &updates.count,
            &updates.session_business as &[&str],
            &updates.session_contact as &[&str],
            &updates.session_started,
            &updates.session_last,
            &updates.session_expires,
            &updates.session_count,
            &updates.consent_business as &[&str],
            &updates.consent_contact as &[&str],
            &updates.consent_state as &[&str],
            &updates.consent_sid as &[&str],
            &updates.consent_at,
            &replies.sid,
            &replies.rule as &[Option<String>],
            &replies.twiml,
            &replies.bodies,
            &replies.at,
            &updates.created,
            &events.sid as &[&str],
            &events.status as &[&str],
            &events.error_code as &[Option<i32>],
            &events.error_message as &[Option<&str>],
            &events.raw_dlr_done_date as &[Option<&str>],
            &events.at,
            &events.params as &[Json<&RawValue>],
            &events.error_code_raw as &[Option<&str>],
            &winners.sid as &[&str],
            &winners.account_sid as &[&str],
            &winners.messaging_service_sid as &[Option<&str>],
            &winners.channel,
            &winners.business as &[&str],
            &winners.contact as &[&str],
            &winners.status as &[&str],
            &winners.status_rank as &[Option<i16>],
            &winners.error_code as &[Option<i32>],
            &winners.error_message as &[Option<&str>],
            &winners.in_reply_to as &[Option<&str>],
            &winners.rule as &[Option<&str>],
            &winners.reply_part as &[Option<i32>],
            &winners.received_at,
            &winners.updated_at,
            &winners.params as &[Json<&RawValue>],
        )
        .fetch_one(&mut *conn)
        .await?;
        recorded = outbound.recorded(Written {
            event_sid: &row.event_sid,
            event_status: &row.event_status,
            event_error_code: &row.event_error_code,
            event_dlr_done: &row.event_dlr_done,
            message_sid: &row.message_sid,
            created: &row.created,
            status: &row.status,
        });
    }
    memory.remember(keys, contacts, &firsts, batch, lookback);

    let received = batch
        .iter()
        .enumerate()
        .map(|(i, live)| {
            let first = copy_of[i].unwrap_or(i);
            match (&twiml[first], copy_of[i]) {
                (Some(twiml), None) => Received::New {
                    twiml: twiml.clone(),
                },
                (Some(twiml), Some(_)) => Received::Duplicate {
                    twiml: Some(twiml.clone()),
                },
                (None, _) => Received::Duplicate {
                    twiml: stored
                        .get(live.msg.sid.as_str())
                        .copied()
                        .flatten()
                        .map(str::to_owned),
                },
            }
        })
        .collect();
    Ok((received, recorded))
}

/// Reads what the rules need of each contact of the batch, and which of its SIDs are
/// stored already (with the reply on record).
async fn read(
    conn: &mut PgConnection,
    reads: &Reads<'_>,
    lookback: Duration,
) -> Result<(Vec<Contact>, Vec<(String, Option<String>)>), StoreError> {
    // Every lookup below probes a unique index once per key: a plan cached while a table was
    // small stays in use as it grows, so no statement here leaves the planner a join it could
    // turn into a scan of a whole table (seen: every batch reading every reply).
    let read = sqlx::query!(
        r#"
        with stored as (
            select d.sid, d.n
            from unnest($5::text[]) with ordinality as d (sid, n)
            where (select m.message_sid from messages m where m.message_sid = d.sid) is not null
        )
        select c.created_at as "created_at?", c.first_inbound_at, c.last_inbound_at,
               c.window_expires_at,
               c.session_started_at, c.inbound_count as "inbound_count?",
               (select o.state from consent o
                where o.business = k.business and o.contact = k.contact) as consent,
               (select s.inbound_count from sessions s
                where s.business = k.business and s.contact = k.contact
                  and s.started_at = c.session_started_at) as session_count,
               array(select x.rule || '|' || to_char(x.received_at at time zone 'UTC',
                                                     'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                     from (select m.received_at,
                                  (select r.rule from replies r
                                   where r.message_sid = m.message_sid) as rule
                           from messages m
                           where $4::bool and m.business = k.business
                             and m.contact = k.contact and m.received_at > k.since) as x
                     where x.rule is not null) as "recent!",
               -- Not correlated: computed once, the same in every row. (Scalar subqueries,
               -- not `exists`, which the planner may turn into a join.)
               array(select x.sid from stored x order by x.n) as "stored!",
               array(select (select r.twiml from replies r where r.message_sid = x.sid)
                     from stored x order by x.n) as "stored_twiml!: Vec<Option<String>>"
        from unnest($1::text[], $2::text[], $3::timestamptz[]) with ordinality
            as k (business, contact, since, n)
        -- `limit 1` keeps this a lookup per contact: the planner cannot make it a join.
        left join lateral (select * from conversations c
                           where c.business = k.business and c.contact = k.contact
                           limit 1) as c on true
        order by k.n
        "#,
        &reads.business as &[&str],
        &reads.contact as &[&str],
        &reads.since,
        lookback > Duration::zero(),
        &reads.sid as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?;

    let contacts: Vec<Contact> = read
        .iter()
        .map(|row| {
            let count = row.inbound_count.unwrap_or(0);
            Contact {
                created: row.created_at,
                first: row.first_inbound_at,
                last: row.last_inbound_at,
                expires: row.window_expires_at,
                started: row.session_started_at,
                count,
                read: count,
                session_count: row.session_count.unwrap_or(0).into(),
                consent: ConsentState::from_db(row.consent.as_deref()),
                recent: row
                    .recent
                    .iter()
                    .filter_map(|r| {
                        let (rules, at) = r.rsplit_once('|')?;
                        Some((rules.to_owned(), at.parse().ok()?))
                    })
                    .collect(),
                ..Contact::default()
            }
        })
        .collect();
    if contacts.len() != reads.keys.len() {
        // Not reached: the read returns one row per contact.
        return Err(StoreError::Other(sqlx::Error::RowNotFound));
    }
    // The same in every row (not correlated): taken from the first.
    let stored = read.into_iter().next().map_or_else(Vec::new, |row| {
        row.stored.into_iter().zip(row.stored_twiml).collect()
    });
    Ok((contacts, stored))
}

/// What one writer remembers of the conversations it stored last, so that a batch whose
/// contacts it holds needs no read, and of the SIDs it stored, so that a redelivery still
/// gets one (which finds it stored, and the reply on record). Bounded: two generations of
/// [`MEMORY_CONTACTS`] contacts and [`MEMORY_SIDS`] SIDs.
///
/// Remembering is never trusted blindly: the write's check (see [`receive_many`]) rolls it
/// back if another transaction or process touched a contact since, and the batch is then
/// read afresh. Entries are keyed by a 64-bit hash; a collision would be caught the same way.
#[derive(Default)]
pub struct Memory {
    /// The rules' lookback the remembered recent replies cover.
    lookback: Duration,
    contacts: Generations<Contact>,
    sids: Generations<()>,
}

/// Contacts remembered per generation, for each writer (a few hundred bytes each).
const MEMORY_CONTACTS: usize = 4096;
/// SIDs remembered per generation, for each writer (their hash only).
const MEMORY_SIDS: usize = 16_384;

impl Memory {
    /// Forgets everything if the rules changed how far back they look (a longer lookback
    /// needs replies that were not kept).
    fn rules_look_back(&mut self, lookback: Duration) {
        if lookback != self.lookback {
            *self = Memory {
                lookback,
                ..Memory::default()
            };
        }
    }

    /// Every contact of the batch, if all are remembered, none of its SIDs was stored by
    /// this writer, and no message is older than what is remembered of its contact (the
    /// clock went back: replies it should count may not have been kept).
    fn recall(
        &mut self,
        batch: &[Live],
        firsts: &[usize],
        keys: &[(&str, &str)],
    ) -> Option<Vec<Contact>> {
        if firsts
            .iter()
            .any(|&i| self.sids.contains(hash(batch[i].msg.sid.as_str())))
        {
            return None;
        }
        let contacts: Vec<Contact> = keys
            .iter()
            .map(|key| self.contacts.take(hash(key)))
            .collect::<Option<_>>()?;
        firsts
            .iter()
            .all(|&i| {
                let msg = &batch[i].msg;
                let k = keys
                    .binary_search(&(msg.to.expose(), msg.from.expose()))
                    .expect("every contact of the batch has a key");
                contacts[k].last.is_none_or(|last| last <= batch[i].at)
            })
            .then_some(contacts)
    }

    fn forget(&mut self, keys: &[(&str, &str)]) {
        for key in keys {
            self.contacts.take(hash(key));
        }
    }

    /// After a write: the contacts as it left them, and its SIDs.
    fn remember(
        &mut self,
        keys: &[(&str, &str)],
        contacts: Vec<Contact>,
        firsts: &[usize],
        batch: &[Live],
        lookback: Duration,
    ) {
        for (key, contact) in keys.iter().zip(contacts) {
            self.contacts
                .insert(hash(key), contact.settled(lookback), MEMORY_CONTACTS);
        }
        for &i in firsts {
            self.sids
                .insert(hash(batch[i].msg.sid.as_str()), (), MEMORY_SIDS);
        }
    }
}

fn hash(key: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    // One fixed seed per process: the same key hashes the same in every batch.
    static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(RandomState::new).hash_one(key)
}

/// A map that forgets its oldest half: when the young generation is full it becomes the old
/// one, and the old one is dropped. What is used again moves back to the young generation.
struct Generations<V> {
    young: HashMap<u64, V>,
    old: HashMap<u64, V>,
}

impl<V> Default for Generations<V> {
    fn default() -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }
}

impl<V> Generations<V> {
    fn take(&mut self, key: u64) -> Option<V> {
        self.young.remove(&key).or_else(|| self.old.remove(&key))
    }

    fn contains(&self, key: u64) -> bool {
        self.young.contains_key(&key) || self.old.contains_key(&key)
    }

    fn insert(&mut self, key: u64, value: V, capacity: usize) {
        if self.young.len() >= capacity {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }
}

/// The read's keys: the batch's contacts in key order, and its SIDs.
struct Reads<'a> {
    keys: Vec<(&'a str, &'a str)>,
    business: Vec<&'a str>,
    contact: Vec<&'a str>,
    /// Replies after this count towards limits: the contact's earliest arrival less the
    /// rules' longest lookback.
    since: Vec<DateTime<Utc>>,
    sid: Vec<&'a str>,
}

impl<'a> Reads<'a> {
    fn new(batch: &'a [Live], firsts: &[usize], lookback: Duration) -> Self {
        let mut since: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
        for &i in firsts {
            let msg = &batch[i].msg;
            let at = batch[i].at - lookback;
            since
                .entry((msg.to.expose(), msg.from.expose()))
                .and_modify(|s| *s = (*s).min(at))
                .or_insert(at);
        }
        let mut keys: Vec<(&str, &str)> = since.keys().copied().collect();
        keys.sort_unstable();
        Reads {
            business: keys.iter().map(|k| k.0).collect(),
            contact: keys.iter().map(|k| k.1).collect(),
            since: keys.iter().map(|k| since[k]).collect(),
            sid: firsts.iter().map(|&i| batch[i].msg.sid.as_str()).collect(),
            keys,
        }
    }
}

/// A session row as a batch leaves it, and how many of the batch's messages it gained.
struct Session {
    started_at: DateTime<Utc>,
    last_inbound_at: DateTime<Utc>,
    added: i32,
}

/// One conversation during a batch: its row as read (or remembered), then as each message
/// leaves it.
#[derive(Default)]
struct Contact {
    /// The row's `created_at`; `None` before the row exists.
    created: Option<DateTime<Utc>>,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    expires: Option<DateTime<Utc>>,
    started: Option<DateTime<Utc>>,
    count: i64,
    /// `count` as read.
    read: i64,
    /// Inbound messages in the session that starts at `started`.
    session_count: i64,
    /// The sessions this batch touched, oldest first.
    sessions: Vec<Session>,
    consent: ConsentState,
    /// The last consent change this batch made, and the message that made it.
    consent_change: Option<(ConsentState, usize)>,
    recent: Vec<(String, DateTime<Utc>)>,
    /// A message of this batch was applied: the row is written back.
    changed: bool,
    /// The batch index of the last message applied.
    latest: usize,
}

impl Contact {
    /// The row's `created_at` once this batch is written (a new row takes its first message's
    /// time).
    fn created_at(&self) -> DateTime<Utc> {
        self.created.or(self.first).unwrap_or_default()
    }

    /// The contact as the next batch starts from it: this one's changes are on record.
    fn settled(mut self, lookback: Duration) -> Self {
        // A row this batch did not create or read stays unknown (its next batch reads it).
        self.created = self.created.or(self.first);
        self.read = self.count;
        self.sessions.clear();
        self.consent_change = None;
        self.changed = false;
        // Replies this old count towards no limit of any later message (see `recall`).
        let horizon = self.last.map(|last| last - lookback);
        self.recent
            .retain(|(_, at)| lookback > Duration::zero() && horizon.is_none_or(|h| *at > h));
        self
    }

    /// Applies one inbound message received `at`, exactly as the one-at-a-time statement
    /// does: at or after the window's end it opens a new window, earlier it extends the
    /// current one. Returns what the rules see.
    fn receive(&mut self, at: DateTime<Utc>, lookback: Duration) -> Facts {
        self.first = Some(self.first.map_or(at, |f| f.min(at)));
        if self.expires.is_none_or(|expires| at >= expires) {
            self.started = Some(at);
            self.session_count = 0;
        }
        let last = self.last.map_or(at, |l| l.max(at));
        self.last = Some(last);
        self.expires = Some(last + Duration::hours(24));
        self.count += 1;
        self.session_count += 1;
        self.changed = true;
        let started = self.started.unwrap_or(at);
        match self.sessions.last_mut() {
            Some(s) if s.started_at == started => {
                s.last_inbound_at = last;
                s.added += 1;
            }
            _ => self.sessions.push(Session {
                started_at: started,
                last_inbound_at: last,
                added: 1,
            }),
        }
        let since = at - lookback;
        Facts {
            first_contact: self.count == 1,
            new_session: self.session_count == 1,
            inbound_count: self.count,
            window_expires_at: self.expires,
            consent: self.consent,
            recent_replies: self
                .recent
                .iter()
                .filter(|(_, when)| *when > since)
                .cloned()
                .collect(),
            now: at,
        }
    }
}

/// The column arrays of the messages insert: one element per new SID, in SID order.
#[derive(Default)]
struct MessageRows<'a> {
    sid: Vec<&'a str>,
    account_sid: Vec<&'a str>,
    messaging_service_sid: Vec<Option<&'a str>>,
    channel: Vec<String>,
    business: Vec<&'a str>,
    contact: Vec<&'a str>,
    body: Vec<&'a str>,
    num_media: Vec<Option<i32>>,
    num_segments: Vec<Option<i32>>,
    profile_name: Vec<Option<&'a str>>,
    wa_id: Vec<Option<&'a str>>,
    external_user_id: Vec<Option<&'a str>>,
    message_type: Vec<Option<&'a str>>,
    latitude: Vec<Option<f64>>,
    longitude: Vec<Option<f64>>,
    location_address: Vec<Option<&'a str>>,
    location_label: Vec<Option<&'a str>>,
    button_text: Vec<Option<&'a str>>,
    button_payload: Vec<Option<&'a str>>,
    replied_to_sid: Vec<Option<&'a str>>,
    replied_to_sender: Vec<Option<&'a str>>,
    forwarded: Vec<Option<bool>>,
    frequently_forwarded: Vec<Option<bool>>,
    referral_source_type: Vec<Option<&'a str>>,
    referral_source_id: Vec<Option<&'a str>>,
    referral_source_url: Vec<Option<&'a str>>,
    referral_headline: Vec<Option<&'a str>>,
    referral_body: Vec<Option<&'a str>>,
    referral_ctwa_clid: Vec<Option<&'a str>>,
    from_country: Vec<Option<&'a str>>,
    to_country: Vec<Option<&'a str>>,
    channel_metadata: Vec<Option<&'a serde_json::Value>>,
    status: Vec<Option<&'a str>>,
    received_at: Vec<DateTime<Utc>>,
    params: Vec<Json<&'a RawValue>>,
    status_rank: Vec<Option<i16>>,
    media_sid: Vec<&'a str>,
    media_index: Vec<i32>,
    media_url: Vec<&'a str>,
    media_type: Vec<Option<&'a str>>,
}

impl<'a> MessageRows<'a> {
    fn new(batch: &'a [Live], order: &[usize]) -> Self {
        let mut rows = MessageRows::default();
        for &i in order {
            let Live { msg, params, at } = &batch[i];
            rows.sid.push(msg.sid.as_str());
            rows.account_sid.push(msg.account_sid.as_str());
            rows.messaging_service_sid
                .push(msg.messaging_service_sid.as_deref());
            rows.channel.push(msg.to.channel());
            rows.business.push(msg.to.expose());
            rows.contact.push(msg.from.expose());
            rows.body.push(msg.body.as_str());
            rows.num_media.push(msg.num_media);
            rows.num_segments.push(msg.num_segments);
            rows.profile_name.push(msg.profile_name.as_deref());
            rows.wa_id.push(msg.wa_id.as_deref());
            rows.external_user_id.push(msg.external_user_id.as_deref());
            rows.message_type.push(msg.message_type.as_deref());
            rows.latitude.push(msg.latitude);
            rows.longitude.push(msg.longitude);
            rows.location_address.push(msg.location_address.as_deref());
            rows.location_label.push(msg.location_label.as_deref());
            rows.button_text.push(msg.button_text.as_deref());
            rows.button_payload.push(msg.button_payload.as_deref());
            rows.replied_to_sid.push(msg.replied_to_sid.as_deref());
            rows.replied_to_sender
                .push(msg.replied_to_sender.as_deref());
            rows.forwarded.push(msg.forwarded);
            rows.frequently_forwarded.push(msg.frequently_forwarded);
            rows.referral_source_type
                .push(msg.referral.source_type.as_deref());
            rows.referral_source_id
                .push(msg.referral.source_id.as_deref());
            rows.referral_source_url
                .push(msg.referral.source_url.as_deref());
            rows.referral_headline
                .push(msg.referral.headline.as_deref());
            rows.referral_body.push(msg.referral.body.as_deref());
            rows.referral_ctwa_clid
                .push(msg.referral.ctwa_clid.as_deref());
            rows.from_country.push(msg.from_geo.country.as_deref());
            rows.to_country.push(msg.to_geo.country.as_deref());
            rows.channel_metadata.push(msg.channel_metadata.as_ref());
            rows.status.push(msg.status.as_deref());
            rows.received_at.push(*at);
            rows.params.push(Json(params));
            rows.status_rank
                .push(msg.status.as_deref().and_then(status::rank));
            for m in &msg.media {
                rows.media_sid.push(msg.sid.as_str());
                rows.media_index.push(m.index);
                rows.media_url.push(m.url.as_str());
                rows.media_type.push(m.content_type.as_deref());
            }
        }
        rows
    }
}

/// What a batch leaves in each conversation, session and consent row it touched.
#[derive(Default)]
struct ContactUpdates<'a> {
    business: Vec<&'a str>,
    contact: Vec<&'a str>,
    channel: Vec<String>,
    first: Vec<Option<DateTime<Utc>>>,
    last: Vec<Option<DateTime<Utc>>>,
    expires: Vec<Option<DateTime<Utc>>>,
    started: Vec<Option<DateTime<Utc>>>,
    /// Inbound messages the batch adds, and the count expected after them.
    added: Vec<i64>,
    count: Vec<i64>,
    /// The row's `created_at` expected after the write: as read, or as this write inserts it.
    created: Vec<DateTime<Utc>>,
    session_business: Vec<&'a str>,
    session_contact: Vec<&'a str>,
    session_started: Vec<DateTime<Utc>>,
    session_last: Vec<DateTime<Utc>>,
    session_expires: Vec<DateTime<Utc>>,
    session_count: Vec<i32>,
    consent_business: Vec<&'a str>,
    consent_contact: Vec<&'a str>,
    consent_state: Vec<&'static str>,
    consent_sid: Vec<&'a str>,
    consent_at: Vec<DateTime<Utc>>,
}

impl<'a> ContactUpdates<'a> {
    fn new(keys: &[(&'a str, &'a str)], contacts: &[Contact], batch: &'a [Live]) -> Self {
        let mut u = ContactUpdates::default();
        for (&(business, contact), c) in keys.iter().zip(contacts).filter(|(_, c)| c.changed) {
            u.business.push(business);
            u.contact.push(contact);
            u.channel.push(batch[c.latest].msg.to.channel());
            u.first.push(c.first);
            u.last.push(c.last);
            u.expires.push(c.expires);
            u.started.push(c.started);
            u.added.push(c.count - c.read);
            u.count.push(c.count);
            u.created.push(c.created_at());
            for s in &c.sessions {
                u.session_business.push(business);
                u.session_contact.push(contact);
                u.session_started.push(s.started_at);
                u.session_last.push(s.last_inbound_at);
                u.session_expires
                    .push(s.last_inbound_at + Duration::hours(24));
                u.session_count.push(s.added);
            }
            if let Some((state, i)) = c.consent_change {
                u.consent_business.push(business);
                u.consent_contact.push(contact);
                u.consent_state.push(state.as_str());
                u.consent_sid.push(batch[i].msg.sid.as_str());
                u.consent_at.push(batch[i].at);
            }
        }
        u
    }
}

/// The replies insert: one element per new message that is answered.
#[derive(Default)]
struct ReplyRows {
    sid: Vec<String>,
    rule: Vec<Option<String>>,
    twiml: Vec<String>,
    /// Each reply's message bodies as a JSON array: Postgres has no array of arrays.
    bodies: Vec<serde_json::Value>,
    at: Vec<DateTime<Utc>>,
}

impl ReplyRows {
    fn push(
        &mut self,
        sid: &str,
        rule: Option<String>,
        twiml: &str,
        bodies: &[String],
        at: DateTime<Utc>,
    ) {
        self.sid.push(sid.to_owned());
        self.rule.push(rule);
        self.twiml.push(twiml.to_owned());
        self.bodies.push(serde_json::Value::from(bodies.to_vec()));
        self.at.push(at);
    }
}

/// One status callback to record.
pub struct Callback {
    pub cb: StatusCallback,
    pub link: Option<ReplyLink>,
    /// Every parameter as received (`Params::to_json`).
    pub params: Box<RawValue>,
    pub at: DateTime<Utc>,
}

/// Records every callback of `batch` in one statement (atomic, one round trip) and returns
/// what each changed, in the order given.
///
/// Per SID, the callback of highest rank (the first of them on a tie) is the one offered to
/// the message row, which is what applying them one by one would leave: only a higher rank
/// replaces the current status. Within a batch only that callback counts as having advanced
/// the status.
pub async fn record_many(
    conn: &mut PgConnection,
    batch: &[Callback],
) -> Result<Vec<Recorded>, StoreError> {
    // Called for inbound messages only, and there are none.
    let no_reply = |_: usize, _: &Facts| Reply {
        store: false,
        rule: None,
        twiml: String::new(),
        bodies: Vec::new(),
        consent: None,
    };
    let (_, recorded) = store_many(
        conn,
        &[],
        batch,
        Duration::zero(),
        false,
        &mut Memory::default(),
        no_reply,
    )
    .await?;
    Ok(recorded)
}

/// The rows a batch of status callbacks writes: every event, and per SID the callback the
/// message row is offered.
struct StatusRows<'a> {
    batch: &'a [Callback],
    events: EventRows<'a>,
    winners: MessageUpserts<'a>,
    /// Per SID, the callback offered to the message row.
    winner_of: HashMap<&'a str, usize>,
    /// Per (business, contact), the earliest callback.
    first_at: HashMap<(&'a str, &'a str), DateTime<Utc>>,
}

/// What the write returns of a batch's callbacks: the events it inserted (in insertion
/// order) and the message rows it upserted.
struct Written<'r> {
    event_sid: &'r [String],
    event_status: &'r [String],
    event_error_code: &'r [Option<String>],
    event_dlr_done: &'r [Option<String>],
    message_sid: &'r [String],
    created: &'r [bool],
    status: &'r [Option<String>],
}

impl<'a> StatusRows<'a> {
    fn new(batch: &'a [Callback]) -> Self {
        // Events in SID order; per SID, the callback the message row is offered.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| batch[a].cb.sid.cmp(&batch[b].cb.sid).then(a.cmp(&b)));
        let mut rows = StatusRows {
            batch,
            events: EventRows::default(),
            winners: MessageUpserts::default(),
            winner_of: HashMap::new(),
            first_at: HashMap::new(),
        };
        for c in batch {
            rows.first_at
                .entry((c.cb.from.expose(), c.cb.to.expose()))
                .and_modify(|at| *at = (*at).min(c.at))
                .or_insert(c.at);
        }
        for group in order.chunk_by(|&a, &b| batch[a].cb.sid == batch[b].cb.sid) {
            // Highest rank wins; an unknown status (no rank) only if nothing else is known.
            let winner = group
                .iter()
                .copied()
                .max_by(|&a, &b| {
                    status::rank(&batch[a].cb.status)
                        .cmp(&status::rank(&batch[b].cb.status))
                        // max_by keeps the last of equals: prefer the earlier callback.
                        .then(b.cmp(&a))
                })
                .unwrap_or(group[0]);
            rows.winners.push(batch, group, winner);
            rows.winner_of.insert(&batch[winner].cb.sid, winner);
            for &i in group {
                rows.events.push(&batch[i]);
            }
        }
        rows
    }

    /// What each callback changed, in the order given.
    fn recorded(&self, written: Written<'_>) -> Vec<Recorded> {
        // Which callbacks stored a new event: the first of each key that came back.
        type EventKey<'k> = (&'k str, &'k str, Option<&'k str>, Option<&'k str>);
        let mut inserted: HashMap<EventKey<'_>, bool> = (0..written.event_sid.len())
            .map(|k| {
                let key = (
                    written.event_sid[k].as_str(),
                    written.event_status[k].as_str(),
                    written.event_error_code[k].as_deref(),
                    written.event_dlr_done[k].as_deref(),
                );
                (key, true)
            })
            .collect();
        let messages: HashMap<&str, (bool, Option<&str>)> = written
            .message_sid
            .iter()
            .enumerate()
            .map(|(k, sid)| {
                let current = (written.created[k], written.status[k].as_deref());
                (sid.as_str(), current)
            })
            .collect();
        self.batch
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let key = (
                    c.cb.sid.as_str(),
                    c.cb.status.as_str(),
                    c.cb.error_code_raw.as_deref(),
                    c.cb.raw_dlr_done_date.as_deref(),
                );
                // Taken by the first callback with this key; a copy in the batch finds it
                // gone.
                let new_event = inserted.insert(key, false).unwrap_or(false);
                let winner = self.winner_of.get(c.cb.sid.as_str()) == Some(&i);
                let (created, current) = messages
                    .get(c.cb.sid.as_str())
                    .map_or((false, None), |&(created, status)| (created, status));
                Recorded {
                    new_event,
                    created_message: created && winner,
                    advanced: new_event && winner && current == Some(c.cb.status.as_str()),
                }
            })
            .collect()
    }
}

/// The events insert: one element per callback, in SID order.
#[derive(Default)]
struct EventRows<'a> {
    sid: Vec<&'a str>,
    status: Vec<&'a str>,
    error_code: Vec<Option<i32>>,
    error_message: Vec<Option<&'a str>>,
    raw_dlr_done_date: Vec<Option<&'a str>>,
    at: Vec<DateTime<Utc>>,
    params: Vec<Json<&'a RawValue>>,
    error_code_raw: Vec<Option<&'a str>>,
}

impl<'a> EventRows<'a> {
    fn push(&mut self, c: &'a Callback) {
        self.sid.push(&c.cb.sid);
        self.status.push(&c.cb.status);
        self.error_code.push(c.cb.error_code);
        self.error_message.push(c.cb.error_message.as_deref());
        self.raw_dlr_done_date
            .push(c.cb.raw_dlr_done_date.as_deref());
        self.at.push(c.at);
        self.params.push(Json(&c.params));
        self.error_code_raw.push(c.cb.error_code_raw.as_deref());
    }
}

/// The messages upsert: one element per SID.
#[derive(Default)]
struct MessageUpserts<'a> {
    sid: Vec<&'a str>,
    account_sid: Vec<&'a str>,
    messaging_service_sid: Vec<Option<&'a str>>,
    channel: Vec<String>,
    business: Vec<&'a str>,
    contact: Vec<&'a str>,
    status: Vec<&'a str>,
    status_rank: Vec<Option<i16>>,
    error_code: Vec<Option<i32>>,
    error_message: Vec<Option<&'a str>>,
    in_reply_to: Vec<Option<&'a str>>,
    rule: Vec<Option<&'a str>>,
    reply_part: Vec<Option<i32>>,
    received_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    params: Vec<Json<&'a RawValue>>,
}

impl<'a> MessageUpserts<'a> {
    /// `group`: the callbacks of one SID in arrival order; `winner`: the one whose status is
    /// offered. A new row takes the rest from the first callback, as one-by-one would; the
    /// reply link fields from the first that has them (they are only ever filled in).
    fn push(&mut self, batch: &'a [Callback], group: &[usize], winner: usize) {
        let first = &batch[group[0]];
        let best = &batch[winner];
        let link = group.iter().find_map(|&i| batch[i].link.as_ref());
        let failure = status::is_failure(&best.cb.status);
        self.sid.push(&first.cb.sid);
        self.account_sid.push(&first.cb.account_sid);
        self.messaging_service_sid.push(
            group
                .iter()
                .find_map(|&i| batch[i].cb.messaging_service_sid.as_deref()),
        );
        self.channel.push(first.cb.from.channel());
        self.business.push(first.cb.from.expose());
        self.contact.push(first.cb.to.expose());
        self.status.push(&best.cb.status);
        self.status_rank.push(status::rank(&best.cb.status));
        self.error_code
            .push(if failure { best.cb.error_code } else { None });
        self.error_message
            .push(best.cb.error_message.as_deref().filter(|_| failure));
        self.in_reply_to.push(link.map(|l| l.reply_to.as_str()));
        self.rule.push(link.and_then(|l| l.rule.as_deref()));
        self.reply_part.push(link.map(|l| l.part));
        self.received_at.push(first.at);
        self.updated_at
            .push(group.iter().map(|&i| batch[i].at).max().unwrap_or(first.at));
        self.params.push(Json(&first.params));
    }
}
