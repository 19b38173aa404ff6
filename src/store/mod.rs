//! Postgres: the pool, migrations and the SQL of every write. Knows SQL and core types, never
//! HTTP or ingest; it returns [`StoreError`], classified by what the caller must do.

pub mod erase;
mod legacy;
pub mod media;
pub mod notify;
pub mod partitions;
pub mod prune;
pub mod reconcile;
pub mod replies;
pub mod setup;
pub mod write;

use crate::config::DatabaseSettings;
use sqlx::{
    PgPool,
    migrate::{MigrateDatabase, MigrateError, Migrator},
    postgres::PgPoolOptions,
};
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A database failure, classified by what the caller must do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Postgres is unreachable, the pool is exhausted, a statement timed out, or no
    /// partition holds a row's day (partition upkeep stopped): retryable later (the webhook
    /// is spooled and answered 503, so Twilio tries the fallback URL).
    #[error("database unavailable")]
    Unavailable(#[source] Cause),
    /// A value Postgres cannot store as given: a key longer than an index entry may be
    /// (about 2.7 kB). The request's fault, never worth retrying.
    #[error("a value is too large to store")]
    TooLarge(#[source] Cause),
    /// Another transaction changed the conversations a batch read before its write could
    /// commit, every time it was tried: worth storing again, later.
    #[error("a concurrent write kept changing the batch's conversations")]
    Conflict,
    /// Anything else is a bug (ours or the schema's).
    #[error("database error")]
    Bug(#[source] Cause),
}

/// The database error behind a [`StoreError`]. Shared (one failed batch answers all of its
/// requests with it), and printed without its `Debug`, whose DETAIL can quote a row.
#[derive(Clone, thiserror::Error)]
#[error(transparent)]
pub struct Cause(std::sync::Arc<sqlx::Error>);

impl Cause {
    /// The SQLSTATE, when Postgres answered with an error.
    pub fn sqlstate(&self) -> Option<String> {
        match &*self.0 {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// Postgres itself answered (the connection is still in a clean state), as opposed to
    /// the connection or the pool failing.
    pub fn database_answered(&self) -> bool {
        matches!(&*self.0, sqlx::Error::Database(_))
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cause({})", self.0)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        let cause = Cause(std::sync::Arc::new(e));
        match code.as_deref() {
            // The write statement's own check (migration 8's write_check).
            Some("TR409") => StoreError::Conflict,
            // 54000 program_limit_exceeded: "index row size exceeds maximum".
            Some("54000") => StoreError::TooLarge(cause),
            _ if is_unavailable(&cause.0) => StoreError::Unavailable(cause),
            _ => StoreError::Bug(cause),
        }
    }
}

/// Postgres cannot be reached or cannot serve now: the same request may work later.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exceptions; 53: insufficient resources (too many connections);
            // 57: operator intervention (statement timeout 57014, admin shutdown 57P01);
            // 40001/40P01: serialization failure and deadlock, safe to retry; 55P03: a lock
            // not had within lock_timeout; 23514 without a constraint: no partition for the
            // row's day (an outage of upkeep, not a bug).
            (code == "23514" && db.constraint().is_none())
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
                || code == "55P03"
        }),
        _ => false,
    }
}

/// A pool that connects lazily, so the server starts (and answers 503) while Postgres is
/// down, and recovers by itself when it returns.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, String> {
    let options = settings.connect_options()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout())
        .connect_lazy_with(options))
}

/// Creates the database when it does not exist, then applies pending migrations, on a
/// connection of its own without `statement_timeout` (a long migration must not be cut off at
/// the request deadline). Replicas starting together are serialised by sqlx's advisory lock.
pub async fn migrate(settings: &DatabaseSettings) -> Result<(), MigrateError> {
    use secrecy::ExposeSecret;
    let options = settings
        .connect_options_without_timeout()
        .map_err(|e| sqlx::Error::Configuration(e.into()))?;
    // A one-connection pool rather than a bare connection: its futures are Send for any
    // lifetime, so this can run in a spawned task. Connecting straight to the database (and
    // creating it only when that fails for want of it) saves a connection at every start:
    // each costs tens of milliseconds with TLS.
    let connect = || {
        PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
    };
    let conn = match connect().await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            sqlx::Postgres::create_database(settings.url.expose_secret()).await?;
            tracing::info!("created the database");
            connect().await?
        }
        connected => connected?,
    };
    let mut result = migrate_pool(&conn).await;
    if result.is_ok() {
        // The coming days, as upkeep would make them (it runs only in the server).
        result = partitions::make_ahead(&conn, settings.partition_days_ahead)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                StoreError::Unavailable(c) | StoreError::TooLarge(c) | StoreError::Bug(c) => {
                    MigrateError::Execute(sqlx::Error::Protocol(format!("making partitions: {c}")))
                }
                StoreError::Conflict => unreachable!("no write check here"),
            });
    }
    conn.close().await;
    result
}

/// The migration that creates the SID directory: an installation with history is prepared
/// for daily partitions after it, before the next one (see [`legacy`]).
const DIRECTORY_MIGRATION: i64 = 20261206000012;

/// Applies pending migrations on `pool`, preparing stored history for daily partitions on
/// the way.
pub async fn migrate_pool(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run_to(DIRECTORY_MIGRATION, pool).await?;
    legacy::prepare(pool).await?;
    MIGRATOR.run(pool).await
}

/// Whether a migration failed only because Postgres could not be reached (worth retrying).
pub fn migration_unavailable(e: &MigrateError) -> bool {
    matches!(e, MigrateError::Execute(inner) if is_unavailable(inner))
}

/// Whether Postgres answers a trivial query within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("select 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
