//! The three webhook routes: `POST|GET /twilio/messages` ("A message comes in", TWILIO.md §3),
//! `/twilio/fallback` (the fallback URL, TWILIO.md §5) and `/twilio/status` (delivery status
//! callbacks, TWILIO.md §4). Each verifies (the extractor), hands the webhook to ingest and
//! answers what ingest decided.

use super::{AppError, Shared, Signed};
use crate::{
    ingest::{Outcome, Source, Webhook},
    twilio::Kind,
    twiml,
};
use axum::{
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};

/// An inbound message: the TwiML chosen for its first delivery (replayed to every retry).
/// With the database away it is spooled and answered 503, so Twilio calls the fallback URL.
pub async fn inbound(State(state): State<Shared>, signed: Signed) -> Result<Response, AppError> {
    receive(&state, signed, Kind::Inbound).await
}

/// Twilio could not use the primary URL: the failure is recorded and the message it carries
/// stored as the primary would (same SID, so never twice), answered with the primary's reply
/// or `reply.fallback_body`. With the database away it is spooled and still answered (200);
/// 503 only when it could not be kept.
pub async fn fallback(State(state): State<Shared>, signed: Signed) -> Result<Response, AppError> {
    receive(&state, signed, Kind::Fallback).await
}

/// A delivery status callback: stored as history, 204.
pub async fn status(State(state): State<Shared>, signed: Signed) -> Result<Response, AppError> {
    receive(&state, signed, Kind::Status).await
}

async fn receive(state: &Shared, signed: Signed, kind: Kind) -> Result<Response, AppError> {
    let webhook = Webhook {
        kind,
        params: signed.params,
        query: signed.query,
        base: signed.base,
        at: state.ingest.now(),
        source: Source::Live {
            arrived: signed.arrived,
        },
    };
    // Not boxed here: ingest boxes each kind's (large) future itself.
    match state.ingest.receive(webhook).await? {
        Outcome::Reply(twiml) => Ok(([(CONTENT_TYPE, twiml::CONTENT_TYPE)], twiml).into_response()),
        Outcome::Nothing => Ok(StatusCode::NO_CONTENT.into_response()),
        Outcome::Spooled(away) | Outcome::Unavailable(away) => Err(AppError::Unavailable(away)),
    }
}
