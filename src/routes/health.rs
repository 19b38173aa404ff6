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
///
/// When fewer than two days of partitions remain ahead, the body says so, still 200: the
/// server stores what it can (and makes a missing day when it can), so this is an alert for
/// people, not a reason to take it out of the load balancer.
pub async fn readyz(State(state): State<Shared>) -> (StatusCode, String) {
    let (status, body) = match state.ingest.readiness().await {
        Readiness::Ready => (StatusCode::OK, "ready\n"),
        Readiness::Spooling => (
            StatusCode::OK,
            "ready: database unavailable, webhooks are spooled\n",
        ),
        Readiness::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    };
    let mut body = body.to_owned();
    match state.metrics.partition_days() {
        Some(days) if days < 0 => body.push_str(
            "warning: today has no partition: webhooks are spooled until it exists \
             (see partition_days_ahead)\n",
        ),
        Some(days) if days < 2 => body.push_str(&format!(
            "warning: partitions exist for only {days} days after today: check that \
             partition upkeep runs (database.partition_days_ahead)\n"
        )),
        _ => {}
    }
    (status, body)
}
