//! The media archive's job queue: rows of `message_media` with an `archive_state`.
//!
//! Jobs are claimed with a lease (`FOR UPDATE SKIP LOCKED` picks one no other worker holds),
//! so any number of workers and replicas can run, and a job whose worker died is taken over
//! once its lease expires: nothing is lost across crashes and restarts.

use super::StoreError;
use sqlx::PgPool;
use std::time::Duration;

/// A media item to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The message's day (its partition).
    pub message_received_at: chrono::DateTime<chrono::Utc>,
    pub message_sid: String,
    pub index: i32,
    pub url: String,
    pub content_type: Option<String>,
    pub account_sid: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
}

/// Claims the next due job, if any, for `lease`.
pub async fn claim(
    db: impl sqlx::PgExecutor<'_>,
    lease: Duration,
) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query!(
        r#"
        update message_media mm
        set archive_attempts = mm.archive_attempts + 1,
            archive_lease_until = now() + $1::float8 * interval '1 second'
        from (
            select message_received_at, message_sid, index
            from message_media
            where archive_state = 'pending'
              and archive_next_at <= now()
              and (archive_lease_until is null or archive_lease_until < now())
            order by archive_next_at
            limit 1
            for update skip locked
        ) due
        where mm.message_received_at = due.message_received_at
          and mm.message_sid = due.message_sid and mm.index = due.index
        -- The account from the message, in its day: one partition probed.
        returning mm.message_received_at, mm.message_sid, mm.index, mm.url, mm.content_type,
                  (select m.account_sid from messages m
                   where m.received_at = mm.message_received_at
                     and m.message_sid = mm.message_sid) as "account_sid!",
                  mm.archive_attempts
        "#,
        lease.as_secs_f64(),
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Job {
        message_received_at: r.message_received_at,
        message_sid: r.message_sid,
        index: r.index,
        url: r.url,
        content_type: r.content_type,
        account_sid: r.account_sid,
        attempt: r.archive_attempts,
    }))
}

/// Where a job ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        key: String,
        bytes: i64,
        sha256: String,
        content_type: Option<String>,
    },
    /// Try again after `after`; `counts` is false when the attempt should not count (our own
    /// storage failed).
    Retry {
        error: String,
        after: Duration,
        counts: bool,
    },
    /// Shutting down mid-job: due again at once, the attempt not counted.
    Released,
    /// Given up for good.
    Failed { error: String },
    /// Never fetched: the URL or a redirect pointed at a host that is not allowed.
    Refused { error: String },
}

/// Records a job's outcome and releases its lease.
pub async fn finish(pool: &PgPool, job: &Job, outcome: &Outcome) -> Result<(), StoreError> {
    // (state, error, retry delay, whether to refund this attempt)
    let (state, error, retry_after, refund) = match outcome {
        Outcome::Stored { .. } => ("stored", None, None, false),
        Outcome::Retry {
            error,
            after,
            counts,
        } => (
            "pending",
            Some(error.as_str()),
            Some(after.as_secs_f64()),
            !counts,
        ),
        Outcome::Released => ("pending", None, Some(0.0), true),
        Outcome::Failed { error } => ("failed", Some(error.as_str()), None, false),
        Outcome::Refused { error } => ("refused", Some(error.as_str()), None, false),
    };
    let (key, bytes, sha256, content_type) = match outcome {
        Outcome::Stored {
            key,
            bytes,
            sha256,
            content_type,
        } => (
            Some(key.as_str()),
            Some(*bytes),
            Some(sha256.as_str()),
            content_type.as_deref(),
        ),
        _ => (None, None, None, None),
    };
    sqlx::query!(
        r#"
        with done as (
        update message_media set
            archive_state = $3,
            storage_key = coalesce($4, storage_key),
            bytes = coalesce($5, bytes),
            sha256 = coalesce($6, sha256),
            content_type = coalesce(content_type, $7),
            stored_at = case when $3 = 'stored' then now() else stored_at end,
            archive_error = $8,
            archive_next_at = case when $9::float8 is not null
                                   then now() + $9::float8 * interval '1 second'
                                   else archive_next_at end,
            archive_attempts = archive_attempts - case when $11 then 1 else 0 end,
            archive_lease_until = null
        -- Only the attempt that holds the job may record it: a worker whose lease ran out
        -- (and whose job was taken over) changes nothing.
        where message_received_at = $12 and message_sid = $1 and index = $2
          and archive_attempts = $10
          and archive_state = 'pending'
        returning archive_state
        )
        -- Listeners hear about each item that reached its final state.
        select count(*) as "notified!"
        from done, lateral (
            select pg_notify('twilio_receiver',
                             json_build_object('kind', 'media', 'message_sid', $1::text,
                                               'received_at', $12::timestamptz,
                                               'index', $2::int4, 'state', done.archive_state)::text)
            where done.archive_state <> 'pending'
        ) as n
        "#,
        job.message_sid,
        job.index,
        state,
        key,
        bytes,
        sha256,
        content_type,
        error,
        retry_after,
        job.attempt,
        refund,
        job.message_received_at,
    )
    .fetch_one(pool)
    .await?;
    Ok(())
}
