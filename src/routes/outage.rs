//! What a webhook route does when Postgres cannot take a request: a deadline for the write,
//! the classification of "away", and the durable spool that keeps the request meanwhile.

use super::{AppState, Signed};
use crate::{
    error::AppError,
    spool::{Answered, Record, Route},
    store::StoreError,
};
use chrono::{DateTime, Utc};

/// Unreachable, too slow, or not migrated yet: worth keeping the request for later.
pub(crate) fn database_away(e: &AppError) -> bool {
    matches!(
        e,
        AppError::Store(StoreError::Unavailable(_))
            | AppError::NotReady
            | AppError::DatabaseTooSlow
    )
}

/// Bounds a database write below the request deadline, so a database that stops answering
/// mid-request still leaves time to spool the request and answer, never the timeout's 503.
/// A write cut off here rolls back (its transaction is dropped) unless its commit already
/// went out; replaying the spooled copy is idempotent either way.
pub(crate) async fn within_deadline<T>(
    state: &AppState,
    arrived: std::time::Instant,
    write: impl std::future::Future<Output = Result<T, AppError>>,
) -> Result<T, AppError> {
    // Counted from the request's arrival: a slow body must not eat the time left to spool.
    let deadline = tokio::time::Instant::from_std(arrived + state.database_deadline);
    tokio::time::timeout_at(deadline, write)
        .await
        .unwrap_or(Err(AppError::DatabaseTooSlow))
}

/// Keeps a verified webhook the database could not take. Without a usable spool it is lost
/// to this server (a 2xx is still only sent where the route's contract says so), and the log
/// says so.
pub(crate) async fn spool(
    state: &AppState,
    signed: &Signed,
    route: Route,
    at: DateTime<Utc>,
    answered: Option<Answered>,
    id: Option<String>,
) -> bool {
    let Some(spool) = &state.spool else {
        tracing::error!(
            "database unavailable and no spool (spool.dir): this webhook is NOT stored"
        );
        return false;
    };
    let record = Record {
        id: id.unwrap_or_default(),
        route,
        received_at: at,
        params: signed.params.pairs().to_vec(),
        query: signed.query.pairs().to_vec(),
        base: signed.base.clone(),
        answered,
    };
    match spool.append(record).await {
        Ok(()) => {
            tracing::warn!("database unavailable: webhook spooled, stored once Postgres answers");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "database unavailable and the spool failed: this webhook is NOT stored");
            false
        }
    }
}
