//! The reply on record for an inbound message, and recording one late.

use super::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

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
        insert into replies (message_received_at, message_sid, rule, twiml, bodies, created_at)
        select m.received_at, m.message_sid, null, $2, $3, $4
        from messages m
        where m.received_at = (select k.received_at from message_keys k where k.message_sid = $1)
          and m.message_sid = $1
        for key share
        on conflict (message_received_at, message_sid) do nothing
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
pub async fn reply_on_record(
    db: impl sqlx::PgExecutor<'_>,
    message_sid: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        // NULL: no reply recorded (or no such message).
        r#"select (reply_of($1)).twiml as "twiml?""#,
        message_sid
    )
    .fetch_one(db)
    .await?)
}

/// Whether the contact of stored message `message_sid` has opted out of its business.
pub async fn contact_opted_out(pool: &PgPool, message_sid: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"
        select exists (select 1 from messages m
                       join consent k on k.business = m.business and k.contact = m.contact
                       where m.received_at = (select d.received_at from message_keys d
                                              where d.message_sid = $1)
                         and m.message_sid = $1 and k.state = 'opted_out') as "opted_out!"
        "#,
        message_sid
    )
    .fetch_one(pool)
    .await?)
}
