//! What `doctor` asks Postgres: whether the schema is migrated and whether this role may
//! write to it. Reads only.

use super::MIGRATOR;
use sqlx::PgPool;

/// The embedded migrations this database has not applied successfully, oldest first.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let migrated =
        sqlx::query_scalar!(r#"select to_regclass('_sqlx_migrations') is not null as "migrated!""#)
            .fetch_one(pool)
            .await?;
    let applied = if migrated {
        sqlx::query_scalar!("select version from _sqlx_migrations where success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect())
}

/// Why this role cannot write: the server is a read-only standby or the session is read-only
/// (`Some(reason)`), else the tables of the schema it cannot read and write.
pub async fn unwritable(pool: &PgPool) -> Result<(Option<&'static str>, Vec<String>), sqlx::Error> {
    let read_only = sqlx::query!(
        r#"select pg_is_in_recovery() as "standby!",
                  current_setting('transaction_read_only') = 'on' as "read_only!""#
    )
    .fetch_one(pool)
    .await?;
    if read_only.standby {
        return Ok((Some("the server is a read-only standby"), Vec::new()));
    }
    if read_only.read_only {
        return Ok((
            Some("the session is read-only (default_transaction_read_only)"),
            Vec::new(),
        ));
    }
    // Each privilege on its own: a list in one call asks whether any of them is held.
    // Identity columns need no right on their sequences, and the schema has no others.
    // Partitions are left out: rows reach them through their parent, whose rights count
    // (the owner makes new days, which carry no grants of their own).
    let missing = sqlx::query_scalar!(
        r#"select c.relname::text as "name!"
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = current_schema() and c.relkind in ('r', 'p')
              and not c.relispartition
              and not (has_table_privilege(c.oid, 'SELECT')
                       and has_table_privilege(c.oid, 'INSERT')
                       and has_table_privilege(c.oid, 'UPDATE')
                       and has_table_privilege(c.oid, 'DELETE'))
            order by 1"#
    )
    .fetch_all(pool)
    .await?;
    Ok((None, missing))
}

/// Whole days after today that every daily-partitioned table covers (-1: today is missing).
pub async fn partition_days_ahead(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(r#"select partition_days_ahead() as "days!""#)
        .fetch_one(pool)
        .await
}
