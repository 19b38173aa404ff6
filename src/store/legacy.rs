//! Preparing an installation with history for daily partitions (migration 13), between
//! migrations 12 and 13, without rewriting `messages` and without a lock that stops
//! readers: the SID directory is filled from the stored messages, the children get their
//! message's day, the new keys are built `CONCURRENTLY`, and a validated `CHECK` proves each
//! table's upper bound, so that migration 13 attaches every table as its parent's legacy
//! partition without scanning it. Each step can be interrupted and run again.
//!
//! This is Rust, not a migration file: sqlx sends a migration as one multi-statement query,
//! which Postgres runs as one transaction, and `CREATE INDEX CONCURRENTLY` refuses to run
//! inside one. Writers of the previous version must be stopped while it runs (their rows
//! would lack the new column).

use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Messages read per statement while filling the directory.
const BATCH: i64 = 10_000;

/// The keys each table's parent will have, built on today's table beforehand (named so that
/// migration 13 finds them once it has renamed the tables).
const KEYS: [(&str, &str); 9] = [
    ("messages_by_day_key", "messages (received_at, message_sid)"),
    (
        "message_media_by_day_key",
        "message_media (message_received_at, message_sid, index)",
    ),
    (
        "replies_by_day_key",
        "replies (message_received_at, message_sid)",
    ),
    (
        "message_status_events_by_day_key",
        "message_status_events (message_received_at, id)",
    ),
    (
        "message_status_events_by_day_dedup_idx",
        "message_status_events (message_received_at, message_sid, status, error_code_raw, \
         raw_dlr_done_date) nulls not distinct",
    ),
    (
        "webhook_failures_by_day_key",
        "webhook_failures (received_at, id)",
    ),
    (
        "webhook_failures_by_day_spool_key",
        "webhook_failures (received_at, spool_record)",
    ),
    ("sessions_by_day_key", "sessions (started_at, id)"),
    (
        "sessions_by_day_unique",
        "sessions (started_at, business, contact)",
    ),
];

/// Each table and the column it is split by.
const TABLES: [(&str, &str); 6] = [
    ("messages", "received_at"),
    ("message_media", "message_received_at"),
    ("replies", "message_received_at"),
    ("message_status_events", "message_received_at"),
    ("webhook_failures", "received_at"),
    ("sessions", "started_at"),
];

/// Prepares today's tables when migration 12 is applied, 13 is not, and they hold rows.
pub(super) async fn prepare(pool: &PgPool) -> Result<(), sqlx::Error> {
    // The catalog first: once the tables are partitioned (every start after the upgrade),
    // nothing reads them, which would open every day's partition.
    let between: bool = sqlx::query_scalar(
        "select to_regclass('legacy_cutover') is not null
                and (select relkind from pg_class where oid = to_regclass('messages')) = 'r'",
    )
    .fetch_one(pool)
    .await?;
    if !between {
        return Ok(());
    }
    let rows: bool = sqlx::query_scalar(
        "select exists (select 1 from messages) or exists (select 1 from message_media)
                or exists (select 1 from replies) or exists (select 1 from message_status_events)
                or exists (select 1 from webhook_failures) or exists (select 1 from sessions)",
    )
    .fetch_one(pool)
    .await?;
    if !rows {
        return Ok(());
    }
    tracing::info!("preparing the stored history for daily partitions");
    // The legacy partitions end at the first midnight (UTC) after every stored row and
    // after now.
    let cutover: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "with c as (
             insert into legacy_cutover (cutover)
             select date_trunc('day', greatest(now(),
                        (select max(received_at) from messages),
                        (select max(received_at) from message_status_events),
                        (select max(received_at) from webhook_failures),
                        (select max(started_at) from sessions)) at time zone 'UTC')
                    at time zone 'UTC' + interval '1 day'
             where not exists (select 1 from legacy_cutover)
             returning cutover)
         select cutover from c union all select cutover from legacy_cutover",
    )
    .fetch_one(pool)
    .await?;
    for table in ["message_media", "replies", "message_status_events"] {
        run(
            pool,
            &format!(
                "alter table {table} add column if not exists message_received_at timestamptz"
            ),
        )
        .await?;
    }
    fill(pool).await?;
    for (name, definition) in KEYS {
        build_key(pool, name, definition).await?;
    }
    for (table, column) in TABLES {
        let name = format!("{table}_before_cutover");
        let exists: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_constraint where conname = $1 and conrelid = to_regclass($2))",
        )
        .bind(&name)
        .bind(table)
        .fetch_one(pool)
        .await?;
        if !exists {
            // NOT VALID first: adding it takes a brief lock; validating reads the table
            // under a lock that lets readers and writers on.
            run(
                pool,
                &format!(
                    "alter table {table} add constraint {name} check ({column} is not null \
                     and {column} < '{}') not valid",
                    cutover.to_rfc3339()
                ),
            )
            .await?;
        }
        run(
            pool,
            &format!("alter table {table} validate constraint {name}"),
        )
        .await?;
        tracing::info!(table, "bounded for its legacy partition");
    }
    Ok(())
}

/// The directory's keys and the children's day, from the messages in SID order, a batch at
/// a time; then the children no message is stored for keep their own time.
async fn fill(pool: &PgPool) -> Result<(), sqlx::Error> {
    let about: f32 = sqlx::query_scalar(
        "select greatest(reltuples, 0)::float4 from pg_class where oid = 'messages'::regclass",
    )
    .fetch_one(pool)
    .await?;
    let (mut after, mut done) = (String::new(), 0_i64);
    let mut said = Instant::now();
    loop {
        let (last, n): (Option<String>, i64) = sqlx::query_as(
            "with m as (
                 select message_sid, received_at from messages
                 where message_sid > $1 order by message_sid limit $2
             ), keys as (
                 insert into message_keys (message_sid, received_at)
                 select message_sid, received_at from m
                 on conflict (message_sid) do nothing
             ), media as (
                 update message_media c set message_received_at = m.received_at
                 from m where c.message_sid = m.message_sid
                   and c.message_received_at is distinct from m.received_at
             ), replies as (
                 update replies c set message_received_at = m.received_at
                 from m where c.message_sid = m.message_sid
                   and c.message_received_at is distinct from m.received_at
             ), events as (
                 update message_status_events c set message_received_at = m.received_at
                 from m where c.message_sid = m.message_sid
                   and c.message_received_at is distinct from m.received_at
             )
             select max(message_sid), count(*) from m",
        )
        .bind(&after)
        .bind(BATCH)
        .fetch_one(pool)
        .await?;
        done += n;
        if said.elapsed() > Duration::from_secs(10) {
            tracing::info!(
                done,
                about,
                "filling the SID directory from stored messages"
            );
            said = Instant::now();
        }
        match last {
            Some(last) if n == BATCH => after = last,
            _ => break,
        }
    }
    tracing::info!(
        messages = done,
        "the SID directory holds every stored message"
    );
    for table in ["message_media", "replies", "message_status_events"] {
        let own = if table == "replies" {
            "created_at"
        } else if table == "message_media" {
            "now()"
        } else {
            "received_at"
        };
        run(
            pool,
            &format!(
                "update {table} set message_received_at = {own} where message_received_at is null"
            ),
        )
        .await?;
    }
    Ok(())
}

/// Builds one unique key concurrently (again, when an interrupted build left it invalid).
async fn build_key(pool: &PgPool, name: &str, definition: &str) -> Result<(), sqlx::Error> {
    let valid: Option<bool> = sqlx::query_scalar(
        "select i.indisvalid from pg_index i where i.indexrelid = to_regclass($1)",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    match valid {
        Some(true) => return Ok(()),
        Some(false) => run(pool, &format!("drop index concurrently {name}")).await?,
        None => {}
    }
    let started = Instant::now();
    run(
        pool,
        &format!("create unique index concurrently {name} on {definition}"),
    )
    .await?;
    tracing::info!(key = name, seconds = started.elapsed().as_secs(), "built");
    Ok(())
}

/// One statement on its own, outside any transaction block.
async fn run(pool: &PgPool, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .map(|_| ())
}
