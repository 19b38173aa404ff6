//! Storing a status callback: the event as history, the message's current status advanced
//! by precedence, and the outbound message created when the SID is new to us.

use super::StoreError;
use crate::twilio::{ReplyLink, StatusCallback, status};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What a status callback changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// `false` for a redelivery of an event already stored.
    pub new_event: bool,
    /// The callback named a SID we had not stored: an outbound row was created.
    pub created_message: bool,
    /// This event set the message's current status (a new event that won on precedence).
    pub advanced: bool,
}

/// One statement, so it commits atomically and takes one round trip. Concurrent callbacks
/// for one SID serialise on the message row; the status only ever moves up in rank.
pub async fn record(
    pool: &PgPool,
    cb: &StatusCallback,
    link: Option<&ReplyLink>,
    params: Box<serde_json::value::RawValue>,
    at: DateTime<Utc>,
) -> Result<Recorded, StoreError> {
    let rank = status::rank(&cb.status);
    let failure = status::is_failure(&cb.status);
    let row = sqlx::query!(
        r#"
        with ev as (
            insert into message_status_events (
                message_sid, status, error_code, error_message, raw_dlr_done_date, received_at,
                params, error_code_raw)
            values ($1, $2, $3, $4, $5, $6, $7, $18)
            on conflict (message_sid, status, error_code_raw, raw_dlr_done_date) do nothing
            returning id
        ), msg as (
            insert into messages as m (
                message_sid, account_sid, messaging_service_sid, direction, channel, business,
                contact, body, status, status_rank, error_code, error_message, in_reply_to,
                rule, reply_part, received_at, updated_at, params)
            values ($1, $8, $9, 'outbound', $10, $11, $12,
                    (select r.bodies[$15 + 1] from replies r where r.message_sid = $13),
                    $2, $14,
                    case when $16 then $3 end, case when $16 then $4 end,
                    $13, $17, $15, $6, $6, $7)
            on conflict (message_sid) do update set
                -- A higher rank wins; an unknown status (NULL rank) never replaces a known one.
                status = case when excluded.status_rank > coalesce(m.status_rank, -1)
                              then excluded.status else m.status end,
                error_code = case when excluded.status_rank > coalesce(m.status_rank, -1)
                                  then excluded.error_code else m.error_code end,
                error_message = case when excluded.status_rank > coalesce(m.status_rank, -1)
                                     then excluded.error_message else m.error_message end,
                status_rank = greatest(m.status_rank, excluded.status_rank),
                messaging_service_sid = coalesce(m.messaging_service_sid, excluded.messaging_service_sid),
                in_reply_to = coalesce(m.in_reply_to, excluded.in_reply_to),
                rule = coalesce(m.rule, excluded.rule),
                reply_part = coalesce(m.reply_part, excluded.reply_part),
                body = coalesce(m.body, excluded.body),
                updated_at = greatest(m.updated_at, excluded.updated_at)
            -- xmax is 0 on a row this statement inserted rather than updated.
            returning (m.xmax = 0) as created, m.status = $2 as current
        ), conv as (
            -- Outbound messages never open or extend a 24-hour window.
            insert into conversations as c (
                business, contact, channel, last_outbound_at, outbound_count, created_at,
                updated_at)
            select $11, $12, $10, $6, 1, $6, $6 from msg where msg.created
            on conflict (business, contact) do update set
                last_outbound_at = greatest(c.last_outbound_at, excluded.last_outbound_at),
                outbound_count = c.outbound_count + 1,
                updated_at = greatest(c.updated_at, excluded.updated_at)
        )
        select exists (select 1 from ev) as "new_event!",
               coalesce((select created from msg), false) as "created!",
               coalesce((select current from msg), false) as "current!"
        "#,
        cb.sid,
        cb.status,
        cb.error_code,
        cb.error_message,
        cb.raw_dlr_done_date,
        at,
        &params as &serde_json::value::RawValue,
        cb.account_sid,
        cb.messaging_service_sid,
        cb.from.channel(),
        cb.from.expose(),
        cb.to.expose(),
        link.map(|l| l.reply_to.as_str()),
        rank,
        link.map(|l| l.part),
        failure,
        link.and_then(|l| l.rule.as_deref()),
        cb.error_code_raw,
    )
    .fetch_one(pool)
    .await?;
    Ok(Recorded {
        new_event: row.new_event,
        created_message: row.created,
        advanced: row.new_event && row.current,
    })
}
