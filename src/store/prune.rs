//! Retention by whole days. Every table that grows with traffic is split into daily
//! partitions (migration 13), so a day wholly older than the cutoff goes as a whole: its
//! archived media files first, then each table's partition is detached (`DETACH PARTITION
//! … CONCURRENTLY`, which never queues writers behind a long report the way a plain `DROP`
//! of a partition does) and dropped. Only then do the directory's keys of those days go
//! (a key must never go before its rows: a late callback would store its message again),
//! in bounded batches, and the conversations with nothing left.
//!
//! Rows up to a day younger than the cutoff stay until the next run; a status event is
//! kept as long as its message; a day of sessions stays while one of its windows is still
//! open at the cutoff (a contact who writes every day keeps the window it opened). Consent
//! rows stay: an opt-out must be honoured however old it is.

use super::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::{
    future::Future,
    time::{Duration, Instant},
};

/// How hard a prune may work beside live traffic: `batch` rows per statement, and after each
/// statement and each step of dropping a partition a rest of `rest` times as long as it
/// took, so that it takes at most 1 / (1 + rest) of a core from the writers (on a small
/// machine a prune going flat out costs them a second of throughput however few locks it
/// holds).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub batch: i64,
    pub rest: u32,
}

impl Pace {
    async fn rest_after(&self, started: Instant) {
        self.rest_for(started.elapsed()).await;
    }

    /// Rests `rest` times `took`.
    async fn rest_for(&self, took: Duration) {
        if self.rest > 0 {
            tokio::time::sleep(took * self.rest).await;
        }
    }
}

/// What a detach's own work takes at most: beyond that it is waiting for transactions that
/// began before it, which is no reason to rest (a 4-second report made a rest of 36 s).
const DETACH_WORK: Duration = Duration::from_millis(100);

/// What one prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Partitions dropped (one per table per day).
    pub partitions: i64,
    pub messages: i64,
    pub status_events: i64,
    pub failures: i64,
    pub sessions: i64,
    pub conversations: i64,
    /// Directory keys of the dropped days.
    pub keys: i64,
    /// Archived files deleted from media storage.
    pub files: usize,
}

/// Why a prune stopped. What it dropped before stays dropped; a second run goes on.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The day's files could not all be deleted, so its rows (the only record of them) stay.
    #[error("{failed} archived files of {day} could not be deleted; that day is kept")]
    Files { day: String, failed: usize },
}

/// One partition, from `day_partitions` (migration 13).
struct Partition {
    parent: String,
    name: String,
    upper: DateTime<Utc>,
    detach_pending: bool,
}

/// Drops every day wholly older than `cutoff`, oldest first, then the directory keys of
/// those days and the conversations with nothing left, at `pace`.
/// `delete_files` deletes a day's archived files from media storage and returns how many it
/// could not; it runs before that day's rows go.
pub async fn older_than<F, Fut>(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    pace: Pace,
    mut delete_files: F,
) -> Result<Pruned, PruneError>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: Future<Output = usize>,
{
    let mut pruned = Pruned::default();
    let old = sqlx::query_as!(
        Partition,
        r#"
        select parent as "parent!", partition as "name!", upper as "upper!", detach_pending as "detach_pending!"
        from day_partitions
        where upper <= $1
        order by upper, parent
        "#,
        cutoff,
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    let mut kept = None;
    'days: for day in old.chunk_by(|a, b| a.upper == b.upper) {
        // The files first: once the rows are gone, nothing says which files were the day's.
        let media: Vec<&Partition> = day.iter().filter(|p| p.parent == "message_media").collect();
        for p in media {
            let keys = storage_keys(pool, &p.name).await?;
            let count = keys.len();
            let failed = delete_files(keys).await;
            pruned.files += count.saturating_sub(failed);
            if failed > 0 {
                // This day and the later ones stay; what went before is cleaned up below.
                kept = Some(PruneError::Files {
                    day: p.name.clone(),
                    failed,
                });
                break 'days;
            }
        }
        for p in day {
            if p.parent == "sessions" && still_open(pool, &p.name, cutoff).await? {
                // A contact who wrote every day since keeps the window that day opened:
                // its day of sessions waits until every window in it has closed.
                continue;
            }
            let rows = drop_partition(pool, p, pace).await?;
            pruned.partitions += 1;
            match p.parent.as_str() {
                "messages" => pruned.messages += rows,
                "message_status_events" => pruned.status_events += rows,
                "webhook_failures" => pruned.failures += rows,
                "sessions" => pruned.sessions += rows,
                _ => {}
            }
        }
    }
    pruned.keys = keys_without_rows(pool, pace).await?;
    pruned.conversations = conversations_without_messages(pool, cutoff, pace).await?;
    // Lookups queued for messages now gone: reconciliation must not bring them back.
    sqlx::query!(
        "with jobs as (
            delete from enrichment_jobs j
            where not exists (select 1 from message_keys k where k.message_sid = j.message_sid))
        delete from stale_checks s
        where not exists (select 1 from message_keys k where k.message_sid = s.message_sid)"
    )
    .execute(pool)
    .await
    .map_err(StoreError::from)?;
    kept.map_or(Ok(pruned), Err)
}

/// The archived files of one day of `message_media`.
async fn storage_keys(pool: &PgPool, partition: &str) -> Result<Vec<String>, StoreError> {
    let sql = format!(
        "select storage_key from {} where storage_key is not null",
        quote(partition)
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?)
}

/// Whether a day of sessions holds a window that closes at or after the cutoff.
async fn still_open(
    pool: &PgPool,
    partition: &str,
    cutoff: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let sql = format!(
        "select exists (select 1 from {} where expires_at >= $1)",
        quote(partition)
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(cutoff)
        .fetch_one(pool)
        .await?)
}

/// Counts a partition's rows, detaches it without blocking writers, and drops it, resting
/// at `pace` after each. A detach that an earlier run started and could not finish is
/// finished.
async fn drop_partition(pool: &PgPool, p: &Partition, pace: Pace) -> Result<i64, StoreError> {
    let (parent, name) = (quote(&p.parent), quote(&p.name));
    let started = Instant::now();
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {name}")))
        .fetch_one(pool)
        .await?;
    pace.rest_after(started).await;
    // Neither may run inside a transaction block: each is sent alone.
    let detach = if p.detach_pending {
        format!("alter table {parent} detach partition {name} finalize")
    } else {
        format!("alter table {parent} detach partition {name} concurrently")
    };
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(detach))
        .execute(pool)
        .await?;
    // Resting after it too spreads out what each detach costs the writers (every
    // connection plans its statements again).
    pace.rest_for(started.elapsed().min(DETACH_WORK)).await;
    // No longer a partition: dropping it locks nothing anyone else reads.
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop table {name}")))
        .execute(pool)
        .await?;
    pace.rest_after(started).await;
    tracing::info!(partition = %p.name, rows, "dropped a day");
    Ok(rows)
}

/// Runs `step` (which deletes at most `pace.batch` rows and returns how many) until a batch
/// comes back short, resting between batches; returns the total.
async fn in_batches<F, Fut>(pace: Pace, mut step: F) -> Result<i64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<i64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let started = Instant::now();
        let n = step().await?;
        total += n;
        if n < pace.batch {
            return Ok(total);
        }
        pace.rest_after(started).await;
    }
}

/// Deletes the directory keys older than every message day still kept, a batch at a time.
async fn keys_without_rows(pool: &PgPool, pace: Pace) -> Result<i64, StoreError> {
    in_batches(pace, || {
        // By the rows' addresses, found in time order (the order they were written in, so
        // a batch's rows share pages): deleting by SID probed the directory's random-key
        // index once per key. `= any(array(…))`: as `in (subquery)` it was planned as a
        // hash join reading the whole directory for every batch (SCALE.md 3.4).
        sqlx::query_scalar!(
            r#"
            with gone as (
                delete from message_keys
                where ctid = any (array(
                    select ctid from message_keys
                    where received_at < (select coalesce(min(lower), '-infinity')
                                         from day_partitions where parent = 'messages')
                    order by received_at
                    limit $1))
                returning 1)
            select count(*) as "n!" from gone
            "#,
            pace.batch,
        )
        .fetch_one(pool)
    })
    .await
}

/// Deletes conversations with no message left and no activity since the cutoff (their
/// remaining sessions, all expired, follow by cascade), a batch at a time.
async fn conversations_without_messages(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    pace: Pace,
) -> Result<i64, StoreError> {
    in_batches(pace, || {
        sqlx::query_scalar!(
            r#"
            with gone as (
                delete from conversations c
                where (c.business, c.contact) in (
                    select business, contact from conversations k
                    where greatest(k.last_inbound_at, k.last_outbound_at, k.updated_at) < $1
                      and not exists (select 1 from messages m
                                      where m.business = k.business and m.contact = k.contact)
                    limit $2)
                returning 1)
            select count(*) as "n!" from gone
            "#,
            cutoff,
            pace.batch,
        )
        .fetch_one(pool)
    })
    .await
}

/// A catalog name as an SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Parses an age such as `90d`, `12h`, `30m` or `45s`.
pub fn parse_age(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 90d"))?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{text:?}: the unit must be d, h, m or s")),
    };
    n.checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .filter(|d| *d > chrono::Duration::zero())
        .ok_or_else(|| format!("{text:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::parse_age;

    #[test]
    fn ages_take_a_number_and_a_unit() {
        assert_eq!(parse_age("90d"), Ok(chrono::Duration::days(90)));
        assert_eq!(parse_age("12h"), Ok(chrono::Duration::hours(12)));
        assert_eq!(parse_age(" 30m "), Ok(chrono::Duration::minutes(30)));
        assert_eq!(parse_age("45s"), Ok(chrono::Duration::seconds(45)));
        for bad in [
            "",
            "d",
            "90",
            "90w",
            "-1d",
            "0d",
            "99999999999999999d",
            "1.5d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
