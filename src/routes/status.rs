//! `POST|GET /twilio/status`: delivery status callbacks (TWILIO.md §4), including those of
//! our own TwiML replies, whose `action` URL carries `reply_to`, `rule` and `part`.

use super::{AppState, Signed};
use crate::{
    error::AppError,
    store,
    twilio::{ReplyLink, StatusCallback},
};
use axum::{extract::State, http::StatusCode};
use tracing::Span;

/// Verify (the extractor), store the event and advance the status, answer 204.
pub async fn status(State(state): State<AppState>, signed: Signed) -> Result<StatusCode, AppError> {
    let callback = StatusCallback::parse(&signed.params)?;
    Span::current().record("message_sid", callback.sid.as_str());
    state.ensure_schema()?;
    let link = ReplyLink::from_query(&signed.query);
    let started = std::time::Instant::now();
    let recorded = store::status::record(
        &state.db,
        &callback,
        link.as_ref(),
        signed.params.to_json(),
        state.clock.now(),
    )
    .await;
    state.metrics.database_time(started.elapsed());
    let recorded = recorded?;
    if !recorded.advanced {
        state.metrics.status_not_advanced.inc();
    }
    tracing::info!(
        status = %callback.status,
        new_event = recorded.new_event,
        new_message = recorded.created_message,
        reply = link.is_some(),
        "stored status callback"
    );
    Ok(StatusCode::NO_CONTENT)
}
