//! Liveness and readiness, split so an orchestrator restarts the process only when the
//! process itself is stuck, not when Postgres is.

use axum::{extract::State, http::StatusCode};
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;

/// How long readiness waits for Postgres before saying no.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`: the process is up. Touches nothing else.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: migrations are applied and Postgres answers within a second; 503 otherwise.
pub async fn readyz(
    State(db): State<PgPool>,
    State(schema_ready): State<watch::Receiver<bool>>,
) -> (StatusCode, &'static str) {
    if !*schema_ready.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "database not migrated yet\n",
        );
    }
    if crate::store::ping(&db, READY_TIMEOUT).await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
    }
}
