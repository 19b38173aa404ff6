//! `POST|GET /twilio/messages` ("A message comes in", TWILIO.md §3) and `POST|GET
//! /twilio/fallback` (the fallback URL, TWILIO.md §5): the same message, stored once.

use super::{AppState, Signed};
use crate::{
    error::AppError,
    reply::ConsentState,
    store::{
        self, StoreError,
        inbound::{Delivery, Failure, Received, Reply},
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
pub async fn inbound(State(state): State<AppState>, signed: Signed) -> Result<Response, AppError> {
    let msg = InboundMessage::parse(&signed.params)?;
    Span::current().record("message_sid", msg.sid.as_str());
    let twiml = receive(&state, &signed, &msg, None).await?;
    Ok(twiml_response(
        twiml.unwrap_or_else(|| twiml::EMPTY.to_owned()),
    ))
}

/// Twilio could not use the primary URL: record why, store the message it carries exactly as
/// the primary would (same SID, so never twice), and answer the reply the primary would give,
/// or `reply.fallback_body` when no rule answered (a rule's deliberate silence, and an
/// opted-out contact's, stay silent). With the database unreachable this still answers the
/// fallback reply (200): the message is then NOT stored, and the log says so.
pub async fn fallback(State(state): State<AppState>, signed: Signed) -> Result<Response, AppError> {
    let msg = InboundMessage::parse(&signed.params)?;
    Span::current().record("message_sid", msg.sid.as_str());
    let failure = Failure {
        error_code: signed
            .params
            .get("ErrorCode")
            .and_then(|v| v.trim().parse().ok()),
        error_url: signed.params.non_empty("ErrorUrl").map(str::to_owned),
    };
    tracing::info!(error_code = ?failure.error_code, "fallback call");
    let code = signed
        .params
        .non_empty("ErrorCode")
        .unwrap_or("none")
        .trim();
    state
        .metrics
        .fallback_calls
        .get_or_create(&crate::metrics::ErrorCode {
            // Bounded label values: a number of at most 6 digits, else "other".
            error_code: if code.len() <= 6 && code.bytes().all(|b| b.is_ascii_digit())
                || code == "none"
            {
                code.to_owned()
            } else {
                "other".to_owned()
            },
        })
        .inc();
    // Bounded below the request deadline: a database that stops answering mid-request must
    // still get the fallback TwiML out, never the timeout's 503.
    let stored = tokio::time::timeout(
        state.fallback_deadline,
        receive(&state, &signed, &msg, Some(&failure)),
    )
    .await;
    let twiml = match stored {
        Ok(Ok(Some(twiml))) => twiml,
        // A message stored before without a reply row (never happens when both commit together).
        Ok(Ok(None)) => fallback_twiml(&state, &signed, &msg),
        Ok(Err(AppError::Store(StoreError::Unavailable(e)))) => {
            tracing::error!(error = %e, "database unavailable: answering the fallback reply; this message is NOT stored");
            fallback_twiml(&state, &signed, &msg)
        }
        Ok(Err(AppError::NotReady)) => {
            tracing::error!(
                "database not migrated yet: answering the fallback reply; this message is NOT stored"
            );
            fallback_twiml(&state, &signed, &msg)
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            tracing::error!(
                "database too slow: answering the fallback reply; this message may NOT be stored"
            );
            fallback_twiml(&state, &signed, &msg)
        }
    };
    Ok(twiml_response(twiml))
}

fn fallback_twiml(state: &AppState, signed: &Signed, msg: &InboundMessage) -> String {
    state
        .replier
        .render(&state.replier.fallback_decision(), &signed.base, &msg.sid)
        .twiml
}

/// Stores the message (and the failure, for fallback calls) and returns the TwiML to answer;
/// `None` for a duplicate whose first delivery left no reply.
async fn receive(
    state: &AppState,
    signed: &Signed,
    msg: &InboundMessage,
    failure: Option<&Failure>,
) -> Result<Option<String>, AppError> {
    state.ensure_schema()?;
    // One rule set for this message, even if SIGHUP swaps it meanwhile.
    let rules = state.replier.rules();
    let delivery = Delivery {
        msg,
        params: signed.params.to_json(),
        at: state.clock.now(),
        failure,
        lookback: rules.lookback(),
        archive_media: state.archive_media,
    };
    let started = std::time::Instant::now();
    let received = store::inbound::receive(&state.db, delivery, |facts| {
        let mut decision = state.replier.decide(&rules, msg, facts);
        for rule in decision.rule.iter().flat_map(|r| r.split(',')) {
            state
                .metrics
                .rule_matches
                .get_or_create(&crate::metrics::Rule {
                    rule: rule.to_owned(),
                })
                .inc();
        }
        // The fallback body stands in only where no rule answered and the contact may
        // be answered at all.
        if failure.is_some()
            && decision.rule.is_none()
            && decision.messages.is_empty()
            && facts.consent != ConsentState::OptedOut
        {
            decision = state.replier.fallback_decision();
        }
        let rendered = state.replier.render(&decision, &signed.base, &msg.sid);
        Reply {
            rule: decision.rule,
            twiml: rendered.twiml,
            bodies: rendered.bodies,
            consent: decision.consent.map(|c| c.state()),
        }
    })
    .await;
    state.metrics.database_time(started.elapsed());
    let received = received?;
    Ok(match received {
        Received::New { twiml } => {
            tracing::info!(channel = %msg.to.channel(), media = msg.media.len(), "stored inbound message");
            Some(twiml)
        }
        Received::Duplicate { twiml } => {
            state.metrics.duplicates.inc();
            tracing::info!("duplicate delivery; replaying the first reply");
            twiml
        }
    })
}

fn twiml_response(twiml: String) -> Response {
    ([(CONTENT_TYPE, twiml::CONTENT_TYPE)], twiml).into_response()
}
