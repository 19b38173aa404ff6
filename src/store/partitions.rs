//! The daily partitions (migration 13): making the days that must exist, and telling how
//! far ahead they go. Days are UTC days; the work is done by the SQL functions of the
//! migration, which serialise every replica behind one advisory lock.

use super::{Cause, StoreError};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};
use std::{collections::BTreeSet, time::Duration};

/// Makes sure the days a write is about to store rows in exist, before its rules decide
/// anything: a writer asks about each day once (a statement that finds it made), and a
/// write from the past (a spool replay, backfill, reconciliation) makes its days. `seen`
/// holds the days this writer knows exist; a day dropped since (prune) is found by the
/// write failing, and made again then. Failing here is not fatal: the write finds out.
pub async fn ensure(
    conn: &mut PgConnection,
    seen: &mut BTreeSet<NaiveDate>,
    days: impl IntoIterator<Item = DateTime<Utc>>,
    lock_timeout: Duration,
) {
    let unseen: BTreeSet<NaiveDate> = days
        .into_iter()
        .map(|at| at.date_naive())
        .filter(|day| !seen.contains(day))
        .collect();
    for day in unseen {
        match create(conn, day, day, lock_timeout).await {
            Ok(made) => {
                if made > 0 {
                    tracing::debug!(%day, partitions = made, "made a day for a write");
                }
                seen.insert(day);
            }
            Err(e) => tracing::debug!(%day, error = %e, "cannot make a day for a write"),
        }
    }
}

/// Makes the days from `first` to `last` (inclusive) of every partitioned table that do not
/// exist yet; returns how many partitions it made. Gives up after waiting `lock_timeout`
/// for a lock (another DDL on a parent, a replica making the same days).
pub async fn create(
    conn: &mut PgConnection,
    first: NaiveDate,
    last: NaiveDate,
    lock_timeout: Duration,
) -> Result<i32, StoreError> {
    // One statement, one round trip: the timeout is set (for this transaction only) in
    // FROM, before the function takes any lock.
    Ok(sqlx::query_scalar!(
        r#"select create_day_partitions($1, $2) as "made!"
           from (select set_config('lock_timeout', $3, true)) as bounded"#,
        first,
        last,
        format!("{}ms", lock_timeout.as_millis()),
    )
    .fetch_one(conn)
    .await?)
}

/// Whole days after today (UTC) that every partitioned table covers: 0 when only today
/// exists, -1 when today itself is missing somewhere.
pub async fn days_ahead(pool: &PgPool) -> Result<i32, StoreError> {
    Ok(
        sqlx::query_scalar!(r#"select partition_days_ahead() as "days!""#)
            .fetch_one(pool)
            .await?,
    )
}

/// Today and the `ahead` days after it, made where missing; returns how many partitions it
/// made.
pub async fn make_ahead(pool: &PgPool, ahead: u32) -> Result<i32, StoreError> {
    let today = Utc::now().date_naive();
    let mut conn = pool.acquire().await?;
    create(
        &mut conn,
        today,
        today + chrono::Days::new(u64::from(ahead)),
        Duration::from_secs(10),
    )
    .await
}

impl Cause {
    /// The time of a row Postgres could not store because no partition holds its day
    /// ("no partition of relation … found for row": SQLSTATE 23514 without a constraint,
    /// the key's value in DETAIL).
    pub fn missing_partition(&self) -> Option<DateTime<Utc>> {
        let sqlx::Error::Database(db) = &*self.0 else {
            return None;
        };
        if db.code().as_deref() != Some("23514") || db.constraint().is_some() {
            return None;
        }
        let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
        partition_key_time(pg.detail()?)
    }
}

impl StoreError {
    /// See [`Cause::missing_partition`].
    pub fn missing_partition(&self) -> Option<DateTime<Utc>> {
        match self {
            StoreError::Unavailable(cause) => cause.missing_partition(),
            _ => None,
        }
    }
}

/// The time in "Partition key of the failing row contains (received_at) = (2026-12-08
/// 10:00:00+00)." (the session's time zone is UTC; any offset parses).
fn partition_key_time(detail: &str) -> Option<DateTime<Utc>> {
    let value = detail.rsplit_once("= (")?.1;
    let value = value.trim_end_matches('.').strip_suffix(')')?;
    DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::partition_key_time;

    #[test]
    fn the_rows_time_is_read_from_postgres_detail() {
        let at = |s: &str| {
            partition_key_time(s).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        };
        assert_eq!(
            at(
                "Partition key of the failing row contains (received_at) = (2026-12-08 10:00:00+00)."
            ),
            Some("2026-12-08T10:00:00.000000Z".into())
        );
        assert_eq!(
            at(
                "Partition key of the failing row contains (message_received_at) = (2025-01-01 23:59:59.123456-05:30)."
            ),
            Some("2025-01-02T05:29:59.123456Z".into())
        );
        assert_eq!(at("something else"), None);
        assert_eq!(at("… = (not a time)."), None);
    }
}
