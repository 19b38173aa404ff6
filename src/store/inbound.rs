//! Storing an inbound message: the message, its media, its conversation and 24-hour window,
//! and the reply, in one transaction.

use super::StoreError;
use crate::{
    reply::{ConsentState, Facts},
    twilio::{InboundMessage, status},
};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What happened to a delivery of an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// First delivery: stored, and answered with this TwiML.
    New { twiml: String },
    /// Twilio delivered this SID before: nothing new stored; the TwiML answered then, if any.
    Duplicate { twiml: Option<String> },
}

/// What storing a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub received: Received,
    /// A fallback call's failure row was stored (not a replay of one already stored).
    pub failure_recorded: bool,
}

/// A reply chosen for a stored message: the rule that answered, the rendered TwiML, the
/// body of each of its messages, and the consent state it sets, if any.
pub struct Reply {
    /// `false`: store no reply row (nothing was answered; a later call may still answer).
    pub store: bool,
    pub rule: Option<String>,
    pub twiml: String,
    pub bodies: Vec<String>,
    pub consent: Option<ConsentState>,
}

/// One delivery of an inbound message, with what storing it needs to know.
pub struct Delivery<'a> {
    pub msg: &'a InboundMessage,
    /// Every parameter as received (`Params::to_json`).
    pub params: Box<serde_json::value::RawValue>,
    pub at: DateTime<Utc>,
    /// For a call to the fallback URL: why the primary URL failed.
    pub failure: Option<&'a Failure>,
    /// How far back the rules look at this contact's earlier replies (their longest limit).
    pub lookback: chrono::Duration,
    /// Queue the message's media for the archive.
    pub archive_media: bool,
    /// The spool record this delivery is replayed from, if it is: its failure row is then
    /// stored once however often the record is replayed.
    pub spool_record: Option<&'a str>,
}

/// A call to the fallback URL: why Twilio could not use the primary URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `ErrorCode` when it is an integer (11200, 11205, ...).
    pub error_code: Option<i32>,
    /// `ErrorUrl`: the primary URL that failed.
    pub error_url: Option<String>,
}

/// Stores `msg` once and its reply, chosen by `decide` from what the write revealed; for a
/// fallback call, also the `failure` row, whether or not the message was new.
///
/// Round trips for a new message: BEGIN, one statement for message + media + conversation +
/// window, one reading consent and recent replies, one for the reply, COMMIT. A concurrent
/// copy of the same SID blocks on the unique index until the first commits, then finds its
/// reply.
pub async fn receive(
    pool: &PgPool,
    delivery: Delivery<'_>,
    decide: impl FnOnce(&Facts) -> Reply,
) -> Result<Stored, StoreError> {
    let Delivery {
        msg,
        params,
        at,
        failure,
        lookback,
        archive_media,
        spool_record,
    } = delivery;
    let mut tx = pool.begin().await?;
    let mut failure_recorded = false;
    if let Some(failure) = failure {
        // Same transaction: a failure row never exists without its message, nor the reverse.
        failure_recorded = sqlx::query_scalar!(
            r#"
            insert into webhook_failures (
                message_sid, error_code, error_url, received_at, params, spool_record)
            values ($1, $2, $3, $4, $5, $6)
            on conflict (spool_record) do nothing
            returning id
            "#,
            msg.sid,
            failure.error_code,
            failure.error_url,
            at,
            &params as &serde_json::value::RawValue,
            spool_record,
        )
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    }
    let media_index: Vec<i32> = msg.media.iter().map(|m| m.index).collect();
    let media_url: Vec<String> = msg.media.iter().map(|m| m.url.clone()).collect();
    let media_type: Vec<Option<String>> =
        msg.media.iter().map(|m| m.content_type.clone()).collect();
    let channel = msg.to.channel();

    // The conversation upsert locks the (business, contact) row, so messages of one contact
    // are serialised and the window arithmetic sees the latest committed row. A message at or
    // after window_expires_at opens a new window; an earlier one extends the current one.
    let stored = sqlx::query!(
        r#"
        with msg as (
            insert into messages (
                message_sid, account_sid, messaging_service_sid, direction, channel, business,
                contact, body, num_media, num_segments, profile_name, wa_id, external_user_id,
                message_type, latitude, longitude, location_address, location_label,
                button_text, button_payload, replied_to_sid, replied_to_sender, forwarded,
                frequently_forwarded, referral_source_type, referral_source_id,
                referral_source_url, referral_headline, referral_body, referral_ctwa_clid,
                from_country, to_country, channel_metadata, status, received_at, updated_at,
                params, status_rank)
            values ($1, $2, $3, 'inbound', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                    $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29,
                    $30, $31, $32, $33, $34, $34, $35, $39)
            on conflict (message_sid) do nothing
            returning message_sid
        ), media as (
            -- With the media archive on, each item is queued here, in the message's own
            -- transaction, so no crash can lose the job.
            insert into message_media (
                message_sid, index, url, content_type, archive_state, archive_next_at)
            select msg.message_sid, m.index, m.url, m.content_type,
                   case when $40 then 'pending' end, case when $40 then now() end
            from msg
            cross join unnest($36::int4[], $37::text[], $38::text[]) as m (index, url, content_type)
        ), conv as (
            insert into conversations as c (
                business, contact, channel, first_inbound_at, last_inbound_at,
                window_expires_at, session_started_at, inbound_count, created_at, updated_at)
            select $5, $6, $4, $34, $34, $34 + interval '24 hours', $34, 1, $34, $34
            from msg
            on conflict (business, contact) do update set
                first_inbound_at = least(c.first_inbound_at, excluded.first_inbound_at),
                session_started_at = case
                    when c.window_expires_at is null
                      or excluded.last_inbound_at >= c.window_expires_at
                    then excluded.last_inbound_at
                    else c.session_started_at
                end,
                last_inbound_at = greatest(c.last_inbound_at, excluded.last_inbound_at),
                window_expires_at =
                    greatest(c.last_inbound_at, excluded.last_inbound_at) + interval '24 hours',
                inbound_count = c.inbound_count + 1,
                updated_at = greatest(c.updated_at, excluded.updated_at)
            returning c.inbound_count, c.session_started_at, c.last_inbound_at,
                      c.window_expires_at
        ), sess as (
            insert into sessions as s (
                business, contact, started_at, last_inbound_at, expires_at, inbound_count)
            select $5, $6, conv.session_started_at, conv.last_inbound_at,
                   conv.window_expires_at, 1
            from conv
            on conflict (business, contact, started_at) do update set
                last_inbound_at = excluded.last_inbound_at,
                expires_at = excluded.expires_at,
                inbound_count = s.inbound_count + 1
            returning s.inbound_count
        )
        select conv.inbound_count as "contact_inbound_count!",
               sess.inbound_count as "session_inbound_count!",
               conv.window_expires_at as "window_expires_at!"
        from conv
        cross join sess
        "#,
        msg.sid,
        msg.account_sid,
        msg.messaging_service_sid,
        channel,
        msg.to.expose(),
        msg.from.expose(),
        msg.body,
        msg.num_media,
        msg.num_segments,
        msg.profile_name,
        msg.wa_id,
        msg.external_user_id,
        msg.message_type,
        msg.latitude,
        msg.longitude,
        msg.location_address,
        msg.location_label,
        msg.button_text,
        msg.button_payload,
        msg.replied_to_sid,
        msg.replied_to_sender,
        msg.forwarded,
        msg.frequently_forwarded,
        msg.referral.source_type,
        msg.referral.source_id,
        msg.referral.source_url,
        msg.referral.headline,
        msg.referral.body,
        msg.referral.ctwa_clid,
        msg.from_geo.country,
        msg.to_geo.country,
        msg.channel_metadata,
        msg.status,
        at,
        &params as &serde_json::value::RawValue,
        &media_index,
        &media_url,
        &media_type as &[Option<String>],
        msg.status.as_deref().and_then(status::rank),
        archive_media,
    )
    .fetch_optional(&mut *tx)
    .await?;

    let Some(stored) = stored else {
        // A duplicate: the first delivery committed its reply together with the message.
        // Commit rather than roll back: a fallback call's failure row is new either way.
        tx.commit().await?;
        let twiml = reply_on_record(pool, &msg.sid).await?;
        return Ok(Stored {
            received: Received::Duplicate { twiml },
            failure_recorded,
        });
    };

    // Read after the upsert, in a statement of its own: the conversation row is locked by
    // now, and a new statement sees what an earlier message of this contact committed (an
    // opt-out, a reply that counts towards a limit) while this one waited for the lock.
    let history = sqlx::query!(
        r#"
        select (select k.state from consent k where k.business = $1 and k.contact = $2) as consent,
               array(select r.rule || '|' || to_char(m.received_at at time zone 'UTC',
                                                     'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                     from messages m join replies r on r.message_sid = m.message_sid
                     where $4::float8 > 0 and m.business = $1 and m.contact = $2
                       and m.received_at > $3::timestamptz - $4::float8 * interval '1 second'
                       and r.rule is not null) as "recent_replies!"
        "#,
        msg.to.expose(),
        msg.from.expose(),
        at,
        lookback.num_milliseconds() as f64 / 1000.0,
    )
    .fetch_one(&mut *tx)
    .await?;
    let facts = Facts {
        first_contact: stored.contact_inbound_count == 1,
        new_session: stored.session_inbound_count == 1,
        inbound_count: stored.contact_inbound_count,
        window_expires_at: Some(stored.window_expires_at),
        consent: ConsentState::from_db(history.consent.as_deref()),
        recent_replies: history
            .recent_replies
            .iter()
            .filter_map(|r| {
                let (rules, at) = r.rsplit_once('|')?;
                Some((rules.to_owned(), at.parse().ok()?))
            })
            .collect(),
        now: at,
    };
    let reply = decide(&facts);
    if let Some(state) = reply.consent {
        sqlx::query!(
            r#"
            insert into consent (business, contact, state, message_sid, changed_at)
            values ($1, $2, $3, $4, $5)
            on conflict (business, contact) do update set
                state = excluded.state,
                message_sid = excluded.message_sid,
                changed_at = excluded.changed_at
            -- The latest message decides, also when an older one is stored late (the spool).
            where consent.changed_at <= excluded.changed_at
            "#,
            msg.to.expose(),
            msg.from.expose(),
            state.as_str(),
            msg.sid,
            at,
        )
        .execute(&mut *tx)
        .await?;
    }
    if reply.store {
        sqlx::query!(
            "insert into replies (message_sid, rule, twiml, bodies, created_at) values ($1, $2, $3, $4, $5)",
            msg.sid,
            reply.rule,
            reply.twiml,
            &reply.bodies,
            at,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Stored {
        received: Received::New { twiml: reply.twiml },
        failure_recorded,
    })
}

/// Records `twiml` as the answer to a stored message that has none yet (its first delivery
/// was answered 503 while the database was away), and returns the answer on record: this one,
/// or the one a concurrent call recorded first. (A message erased meanwhile gets no reply row:
/// `twiml` is returned and nothing is recorded.)
pub async fn answer_once(
    pool: &PgPool,
    message_sid: &str,
    twiml: &str,
    bodies: &[String],
    at: DateTime<Utc>,
) -> Result<String, StoreError> {
    // Only while the message is there, and kept there until this commits (replies have no
    // foreign key: see migration 7).
    let inserted = sqlx::query_scalar!(
        r#"
        insert into replies (message_sid, rule, twiml, bodies, created_at)
        select m.message_sid, null, $2, $3, $4
        from messages m where m.message_sid = $1
        for key share
        on conflict (message_sid) do nothing
        returning twiml
        "#,
        message_sid,
        twiml,
        bodies,
        at,
    )
    .fetch_optional(pool)
    .await?;
    if let Some(recorded) = inserted {
        return Ok(recorded);
    }
    // Recorded already, also by a concurrent call that committed while this one waited on it
    // (a new statement sees it), or the message is gone.
    Ok(reply_on_record(pool, message_sid)
        .await?
        .unwrap_or_else(|| twiml.to_owned()))
}

/// The TwiML answered to `message_sid`, if one is recorded.
async fn reply_on_record(pool: &PgPool, message_sid: &str) -> Result<Option<String>, StoreError> {
    let twiml = sqlx::query_scalar!(
        "select twiml from replies where message_sid = $1",
        message_sid
    )
    .fetch_optional(pool)
    .await?;
    Ok(twiml)
}
