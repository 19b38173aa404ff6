//! `POST|GET /twilio/messages`: Twilio's "A message comes in" webhook (TWILIO.md §3).

use super::{AppState, Signed};
use crate::{
    error::AppError,
    store::{
        self,
        inbound::{Received, Reply},
    },
    twilio::InboundMessage,
    twiml,
};
use axum::{
    extract::State,
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
};
use tracing::Span;

/// Verify (the extractor), parse, store once with the window, answer the TwiML chosen for the
/// first delivery (replayed to every retry).
pub async fn inbound(
    State(state): State<AppState>,
    Signed(params): Signed,
) -> Result<Response, AppError> {
    let msg = InboundMessage::parse(&params)?;
    Span::current().record("message_sid", msg.sid.as_str());
    if !*state.schema_ready.borrow() {
        return Err(AppError::NotReady);
    }
    let received = store::inbound::receive(
        &state.db,
        &msg,
        params.to_json(),
        state.clock.now(),
        |facts| {
            let decision = state.replier.decide(&msg, facts);
            Reply {
                rule: decision.rule,
                twiml: twiml::render(&decision.messages),
            }
        },
    )
    .await?;
    let twiml = match received {
        Received::New { twiml } => {
            tracing::info!(channel = %msg.to.channel(), media = msg.media.len(), "stored inbound message");
            twiml
        }
        Received::Duplicate { twiml } => {
            tracing::info!("duplicate delivery; replaying the first reply");
            twiml.unwrap_or_else(|| twiml::EMPTY.to_owned())
        }
    };
    Ok(([(CONTENT_TYPE, twiml::CONTENT_TYPE)], twiml).into_response())
}
