//! Postgres: the pool, migrations and the SQL of every write. Knows SQL and core types, never
//! HTTP; it returns [`StoreError`], and only `routes` turns that into a status code.

pub mod inbound;

use crate::config::DatabaseSettings;
use sqlx::{
    PgPool,
    migrate::{MigrateDatabase, Migrator},
    postgres::PgPoolOptions,
};
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A database failure, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres is unreachable, the pool is exhausted, or a statement timed out: retryable,
    /// answered with 503 so Twilio tries the fallback URL.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else is a bug (ours or the schema's).
    #[error("database error")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Other(e)
        }
    }
}

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
            // 40001/40P01: serialization failure and deadlock, safe to retry.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
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

/// Creates the database when it does not exist, then applies pending migrations.
pub async fn migrate(
    settings: &DatabaseSettings,
    pool: &PgPool,
) -> Result<(), sqlx::migrate::MigrateError> {
    use secrecy::ExposeSecret;
    let url = settings.url.expose_secret();
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
        tracing::info!("created the database");
    }
    MIGRATOR.run(pool).await
}

/// Whether Postgres answers a trivial query within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("select 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
