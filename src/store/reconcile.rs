//! The state of reconciliation with Twilio's REST API: checkpoints, the one-pass-at-a-time
//! lock, which found messages are stored already, the enrichment queue, stale statuses,
//! erased contacts and backfill progress. The messages themselves are written by
//! [`super::write`], like webhooks.

use super::StoreError;
use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Postgres, pool::PoolConnection};

/// The advisory lock a gap-fill pass holds: one replica at a time ("TWRR" in ASCII).
const PASS_LOCK: i64 = 0x5457_5252;

/// The pass lock, held by one pooled connection. Dropped without [`PassLock::release`] (a
/// pass cancelled mid-way), the connection is closed rather than returned to the pool, so
/// the lock never outlives the pass.
pub struct PassLock(Option<PoolConnection<Postgres>>);

impl PassLock {
    /// The lock, unless another session holds it.
    pub async fn try_take(pool: &PgPool) -> Result<Option<PassLock>, StoreError> {
        let mut conn = pool.acquire().await?;
        let locked =
            sqlx::query_scalar!(r#"select pg_try_advisory_lock($1) as "locked!""#, PASS_LOCK)
                .fetch_one(&mut *conn)
                .await?;
        Ok(locked.then_some(PassLock(Some(conn))))
    }

    /// Unlocks and returns the connection to the pool.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.0.take() {
            let unlocked =
                sqlx::query_scalar!(r#"select pg_advisory_unlock($1) as "unlocked!""#, PASS_LOCK)
                    .fetch_one(&mut *conn)
                    .await;
            if unlocked.is_err() {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for PassLock {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

/// Where the last pass over `account` started, if one finished.
pub async fn checkpoint(pool: &PgPool, account: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar!(
        "select checkpoint from reconcile_checkpoints where account_sid = $1",
        account
    )
    .fetch_optional(pool)
    .await?)
}

/// Moves `account`'s checkpoint forward (never back).
pub async fn set_checkpoint(
    pool: &PgPool,
    account: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"
        insert into reconcile_checkpoints (account_sid, checkpoint) values ($1, $2)
        on conflict (account_sid) do update
            set checkpoint = greatest(reconcile_checkpoints.checkpoint, excluded.checkpoint),
                updated_at = now()
        "#,
        account,
        at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The oldest checkpoint of all accounts (what an alert on a stopped reconciler watches).
pub async fn oldest_checkpoint(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar!("select min(checkpoint) from reconcile_checkpoints")
            .fetch_one(pool)
            .await?,
    )
}

/// What reconciliation should do with a message found in Twilio's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triage {
    /// Not stored, or an outbound row the resource has not completed yet (no body, or no
    /// price: Twilio prices a message after sending it): import it.
    Import,
    /// Stored, with what the resource adds (an inbound message stored from its webhook is
    /// left as it is).
    Stored,
    /// Its contact was erased: never brought back.
    Erased,
}

/// For each (SID, contact) found, what to do with it, in the order given.
pub async fn triage(
    db: impl sqlx::PgExecutor<'_>,
    sids: &[&str],
    contacts: &[&str],
) -> Result<Vec<Triage>, StoreError> {
    let rows = sqlx::query!(
        r#"
        select (select m.direction = 'inbound'
                       or (m.twilio_created_at is not null and m.price is not null)
                from messages m
                where m.received_at = (select k.received_at from message_keys k
                                       where k.message_sid = d.sid)
                  and m.message_sid = d.sid) as stored,
               exists (select 1 from erased_contacts e
                       where e.contact_sha256 = encode(sha256(convert_to(d.contact, 'UTF8')), 'hex'))
                   as "erased!"
        from unnest($1::text[], $2::text[]) with ordinality as d (sid, contact, n)
        order by d.n
        "#,
        sids as &[&str],
        contacts as &[&str],
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| match (r.erased, r.stored) {
            (true, _) => Triage::Erased,
            (false, Some(true)) => Triage::Stored,
            (false, _) => Triage::Import,
        })
        .collect())
}

/// An outbound message to read from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub message_sid: String,
    pub account_sid: String,
}

/// How long a claimed enrichment is held before another worker may take it over.
const LEASE: Duration = Duration::minutes(5);

/// Claims up to `limit` due enrichment jobs (any number of replicas: `SKIP LOCKED`, then a
/// lease).
pub async fn claim_enrichments(pool: &PgPool, limit: i64) -> Result<Vec<Lookup>, StoreError> {
    Ok(sqlx::query_as!(
        Lookup,
        r#"
        update enrichment_jobs j
        set attempts = j.attempts + 1, next_at = now() + make_interval(secs => $2)
        from (select message_sid from enrichment_jobs
              where next_at <= now() order by next_at limit $1
              for update skip locked) as due
        where j.message_sid = due.message_sid
        returning j.message_sid, j.account_sid
        "#,
        limit,
        LEASE.num_seconds() as f64,
    )
    .fetch_all(pool)
    .await?)
}

/// The enrichment is done: the job goes.
pub async fn enriched(pool: &PgPool, message_sid: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "delete from enrichment_jobs where message_sid = $1",
        message_sid
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The enrichment failed: tried again after `retry` (a backoff growing with its attempts), or
/// never (`None`: the API refused for good), with the reason kept on the job.
pub async fn enrichment_failed(
    pool: &PgPool,
    message_sid: &str,
    error: &str,
    retry: Option<Duration>,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"
        update enrichment_jobs
        set last_error = $2,
            next_at = case when $3::float8 is null then 'infinity'
                           else now() + make_interval(secs => $3::float8 * attempts) end
        where message_sid = $1
        "#,
        message_sid,
        error,
        retry.map(|r| r.num_milliseconds() as f64 / 1000.0),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Statuses that may still change: a message left in one of them for long lost its callback.
pub const UNFINISHED: [&str; 5] = ["accepted", "scheduled", "queued", "sending", "sent"];

/// How many times a stale message is looked up at most.
pub const STALE_CHECKS: i16 = 3;

/// Outbound messages whose status has not moved for `stale_after` (and was not looked up in
/// that time, nor [`STALE_CHECKS`] times already), oldest first. Only messages received in
/// the last `horizon` are considered (the scan follows the time index).
pub async fn stale(
    pool: &PgPool,
    now: DateTime<Utc>,
    stale_after: Duration,
    horizon: Duration,
    limit: i64,
) -> Result<Vec<Lookup>, StoreError> {
    Ok(sqlx::query_as!(
        Lookup,
        r#"
        select m.message_sid, m.account_sid from messages m
        left join stale_checks s using (message_sid)
        where m.received_at > $1 and m.direction = 'outbound' and m.status = any($2)
          and m.updated_at < $3 and coalesce(s.checks, 0) < $4
          and (s.checked_at is null or s.checked_at < $3)
        order by m.updated_at
        limit $5
        "#,
        now - horizon,
        &UNFINISHED as &[&str],
        now - stale_after,
        i32::from(STALE_CHECKS),
        limit,
    )
    .fetch_all(pool)
    .await?)
}

/// Counts one lookup of a stale message.
pub async fn stale_checked(
    pool: &PgPool,
    message_sid: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"
        insert into stale_checks (message_sid, checks, checked_at) values ($1, 1, $2)
        on conflict (message_sid) do update
            set checks = stale_checks.checks + 1, checked_at = excluded.checked_at
        "#,
        message_sid,
        now,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Which of these backfill chunks are done.
pub async fn chunks_done(pool: &PgPool, keys: &[String]) -> Result<Vec<bool>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"
        select exists (select 1 from backfill_chunks c where c.key = k.key) as "done!"
        from unnest($1::text[]) with ordinality as k (key, n)
        order by k.n
        "#,
        keys,
    )
    .fetch_all(pool)
    .await?)
}

/// Records a backfill chunk as read and stored whole.
pub async fn chunk_done(pool: &PgPool, key: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "insert into backfill_chunks (key) values ($1) on conflict do nothing",
        key
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets these chunks (a finished backfill run again reads its whole range).
pub async fn forget_chunks(pool: &PgPool, keys: &[String]) -> Result<(), StoreError> {
    sqlx::query!("delete from backfill_chunks where key = any($1)", keys)
        .execute(pool)
        .await?;
    Ok(())
}
