//! Liveness and readiness, split so an orchestrator restarts the process only when the
//! process itself is stuck, not when Postgres is.

use super::Shared;
use crate::ingest::Readiness;
use axum::{extract::State, http::StatusCode};

/// `GET /healthz`: the process is up. Touches nothing else.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: migrations are applied and Postgres answers within a second; 503
/// otherwise. With a spool the server takes webhooks without Postgres, so it stays ready
/// (and says why): taking every replica out of a load balancer during an outage would turn
/// the spool's 503 + fallback into refused connections, and Twilio does not retry those.
pub async fn readyz(State(state): State<Shared>) -> (StatusCode, &'static str) {
    match state.ingest.readiness().await {
        Readiness::Ready => (StatusCode::OK, "ready\n"),
        Readiness::Spooling => (
            StatusCode::OK,
            "ready: database unavailable, webhooks are spooled\n",
        ),
        Readiness::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}
