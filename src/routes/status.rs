//! `POST|GET /twilio/status`: delivery status callbacks (TWILIO.md §4), including those of
//! our own TwiML replies, whose `action` URL carries `reply_to`, `rule` and `part`.

use super::{Shared, Signed, outage};
use crate::{
    error::AppError,
    spool::Route,
    store::{self, group::Callback},
    twilio::{ReplyLink, StatusCallback},
};
use axum::{extract::State, http::StatusCode};
use tracing::Span;

/// Verify (the extractor), store the event and advance the status, answer 204.
pub async fn status(State(state): State<Shared>, signed: Signed) -> Result<StatusCode, AppError> {
    let callback = StatusCallback::parse(&signed.params)?;
    Span::current().record("message_sid", callback.sid.as_str());
    let link = ReplyLink::from_query(&signed.query);
    let at = state.clock.now();
    // What is logged afterwards; the callback itself moves into the write.
    let (sid, status, reply) = (
        callback.sid.clone(),
        callback.status.clone(),
        link.is_some(),
    );
    let started = std::time::Instant::now();
    let recorded = outage::within_deadline(&state, signed.arrived, async {
        state.ensure_schema()?;
        let params = signed.params.to_json();
        Ok(match &state.writer {
            Some(writer) => {
                writer
                    .record(Callback {
                        cb: callback,
                        link,
                        params,
                        at,
                    })
                    .await?
            }
            // Boxed, as in the inbound route: off the hot path, and a large future.
            None => {
                Box::pin(store::status::record(
                    &state.db,
                    &callback,
                    link.as_ref(),
                    params,
                    at,
                ))
                .await?
            }
        })
    })
    .await;
    state.metrics.database_time(started.elapsed());
    let recorded = match recorded {
        Ok(recorded) => recorded,
        Err(e) if outage::database_away(&e) => {
            // Acknowledged only once it is on disk; stored when Postgres answers again.
            return if Box::pin(outage::spool(
                &state,
                &signed,
                Route::Status,
                at,
                None,
                None,
            ))
            .await
            {
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(e)
            };
        }
        Err(e) => return Err(e),
    };
    if recorded.new_event {
        state.notifier.send("status", &sid);
    }
    if !recorded.advanced {
        state.metrics.status_not_advanced.inc();
    }
    tracing::info!(
        %status,
        new_event = recorded.new_event,
        new_message = recorded.created_message,
        reply,
        "stored status callback"
    );
    Ok(StatusCode::NO_CONTENT)
}
