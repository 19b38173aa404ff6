//! `POST|GET /twilio/messages` ("A message comes in", TWILIO.md §3) and `POST|GET
//! /twilio/fallback` (the fallback URL, TWILIO.md §5): the same message, stored once.

use super::{
    AppState, Shared, Signed,
    outage::{database_away, spool, within_deadline},
};
use crate::{
    error::AppError,
    metrics::Metrics,
    reply::{ConsentState, Facts, Replier},
    rules::Rules,
    spool::{Answered, Route},
    store::{
        self,
        group::Live,
        inbound::{Delivery, Failure, Received, Reply},
    },
    twilio::{InboundMessage, Params},
    twiml,
};
use axum::{
    extract::State,
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use tracing::Span;

/// Verify (the extractor), parse, store once with the window, answer the TwiML chosen for the
/// first delivery (replayed to every retry). With the database unavailable the request is
/// spooled and answered 503, so Twilio calls the fallback URL.
pub async fn inbound(State(state): State<Shared>, signed: Signed) -> Result<Response, AppError> {
    let msg = InboundMessage::parse(&signed.params)?;
    Span::current().record("message_sid", msg.sid.as_str());
    let at = state.clock.now();
    // The paths off the hot one are boxed: their futures are many kilobytes, and inline they
    // would make every request's future that size, copied each time it moves.
    let stored = within_deadline(&state, signed.arrived, async {
        match &state.writer {
            Some(writer) => store_grouped(&state, writer, msg, &signed, at).await,
            None => Box::pin(store(&state, Arrival::live(&signed, at), &msg, None)).await,
        }
    })
    .await;
    match stored {
        Ok(twiml) => Ok(twiml_response(
            twiml.unwrap_or_else(|| twiml::EMPTY.to_owned()),
        )),
        Err(e) if database_away(&e) => {
            Box::pin(spool(&state, &signed, Route::Inbound, at, None, None)).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Twilio could not use the primary URL: record why, store the message it carries exactly as
/// the primary would (same SID, so never twice), and answer the reply the primary would give,
/// or `reply.fallback_body` when no rule answered (a rule's deliberate silence, and an
/// opted-out contact's, stay silent). With the database unavailable or too slow this still
/// answers the fallback reply (200) once the request is spooled; 503 without a spool.
pub async fn fallback(State(state): State<Shared>, signed: Signed) -> Result<Response, AppError> {
    let msg = InboundMessage::parse(&signed.params)?;
    Span::current().record("message_sid", msg.sid.as_str());
    let failure = failure(&signed.params);
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
    let at = state.clock.now();
    // The id this call's spool record would get, stored with the failure row on the live
    // attempt too: a live write cut off by the deadline after its commit went out, then
    // replayed from the spool, is still one failure row.
    let record_id = state.spool.as_ref().map(|spool| spool.new_id(at));
    let mut arrival = Arrival::live(&signed, at);
    arrival.spool_record = record_id.as_deref();
    let stored = within_deadline(
        &state,
        signed.arrived,
        store(&state, arrival, &msg, Some(&failure)),
    )
    .await;
    let away = match stored {
        Ok(Some(twiml)) => return Ok(twiml_response(twiml)),
        // Not reached (a fallback call always gets an answer on record); answer anyway.
        Ok(None) => {
            return Ok(twiml_response(
                fallback_reply(&state, &signed.base, &msg.sid).twiml,
            ));
        }
        Err(e) if database_away(&e) => e,
        Err(e) => return Err(e),
    };
    // A 2xx only for a message kept somewhere: without the spool this is the 503.
    let reply = fallback_reply(&state, &signed.base, &msg.sid);
    if spool(
        &state,
        &signed,
        Route::Fallback,
        at,
        Some(reply.clone()),
        record_id,
    )
    .await
    {
        Ok(twiml_response(reply.twiml))
    } else {
        Err(away)
    }
}

/// Why the primary URL failed, from a fallback call's parameters.
pub(crate) fn failure(params: &Params) -> Failure {
    Failure {
        error_code: params.get("ErrorCode").and_then(|v| v.trim().parse().ok()),
        error_url: params.non_empty("ErrorUrl").map(str::to_owned),
    }
}

fn fallback_reply(state: &AppState, base: &str, message_sid: &str) -> Answered {
    let rendered = state
        .replier
        .render(&state.replier.fallback_decision(), base, message_sid);
    Answered {
        twiml: rendered.twiml,
        bodies: rendered.bodies,
    }
}

/// One delivery of an inbound message: live from a route, or replayed from the spool.
pub(crate) struct Arrival<'a> {
    pub params: &'a Params,
    pub base: &'a str,
    pub at: DateTime<Utc>,
    pub answer: Answer<'a>,
    pub spool_record: Option<&'a str>,
}

impl<'a> Arrival<'a> {
    fn live(signed: &'a Signed, at: DateTime<Utc>) -> Self {
        Arrival {
            params: &signed.params,
            base: &signed.base,
            at,
            answer: Answer::Rules,
            spool_record: None,
        }
    }
}

/// Who decides the stored reply.
pub(crate) enum Answer<'a> {
    /// The rules: the reply is answered now (live requests).
    Rules,
    /// The request was answered already, while the database was away: with this TwiML, or
    /// (`None`) with a 503. The rules still run for their effects (an opt-out sent during an
    /// outage still opts out), but the reply row records what was really answered.
    Given(Option<&'a Answered>),
}

/// Stores a live primary delivery with whatever else is arriving (group commit) and returns
/// the TwiML to answer.
async fn store_grouped(
    state: &AppState,
    writer: &crate::writer::Writer,
    msg: InboundMessage,
    signed: &Signed,
    at: DateTime<Utc>,
) -> Result<Option<String>, AppError> {
    state.ensure_schema()?;
    let (sid, channel, media) = (msg.sid.clone(), msg.to.channel(), msg.media.len());
    let live = Live {
        msg,
        params: signed.params.to_json(),
        at,
    };
    let started = std::time::Instant::now();
    let received = writer
        .receive(live, signed.base.clone(), state.replier.rules())
        .await;
    state.metrics.database_time(started.elapsed());
    let received = received?;
    Ok(match received {
        Received::New { twiml } => {
            state.notifier.send("message", &sid);
            tracing::info!(%channel, media, "stored inbound message");
            Some(twiml)
        }
        Received::Duplicate { twiml } => {
            duplicate(state);
            twiml
        }
    })
}

fn duplicate(state: &AppState) {
    state.metrics.duplicates.inc();
    tracing::info!("duplicate delivery; replaying the first reply");
}

/// The reply the rules give a live delivery, counted in `rule_matches`. On the fallback
/// route (`fallback`), where no rule answered and the contact may be answered at all, the
/// fallback body stands in.
pub(crate) fn live_reply(
    replier: &Replier,
    metrics: &Metrics,
    rules: &Rules,
    msg: &InboundMessage,
    facts: &Facts,
    base: &str,
    fallback: bool,
) -> Reply {
    let mut decision = replier.decide(rules, msg, facts);
    for rule in decision.rule.iter().flat_map(|r| r.split(',')) {
        metrics
            .rule_matches
            .get_or_create(&crate::metrics::Rule {
                rule: rule.to_owned(),
            })
            .inc();
    }
    if fallback
        && decision.rule.is_none()
        && decision.messages.is_empty()
        && facts.consent != ConsentState::OptedOut
    {
        decision = replier.fallback_decision();
    }
    let rendered = replier.render(&decision, base, &msg.sid);
    Reply {
        store: true,
        rule: decision.rule,
        twiml: rendered.twiml,
        bodies: rendered.bodies,
        consent: decision.consent.map(|c| c.state()),
    }
}

/// Stores the message (and the failure, for fallback calls) and returns the TwiML to answer;
/// `None` for a duplicate whose first delivery left no reply.
pub(crate) async fn store(
    state: &AppState,
    arrival: Arrival<'_>,
    msg: &InboundMessage,
    failure: Option<&Failure>,
) -> Result<Option<String>, AppError> {
    state.ensure_schema()?;
    // One rule set for this message, even if SIGHUP swaps it meanwhile.
    let rules = state.replier.rules();
    let delivery = Delivery {
        msg,
        params: arrival.params.to_json(),
        at: arrival.at,
        failure,
        lookback: rules.lookback(),
        archive_media: state.archive_media,
        spool_record: arrival.spool_record,
    };
    let base = arrival.base;
    let started = std::time::Instant::now();
    let received = store::inbound::receive(&state.db, delivery, |facts| {
        let Answer::Given(answered) = arrival.answer else {
            return live_reply(
                &state.replier,
                &state.metrics,
                &rules,
                msg,
                facts,
                base,
                failure.is_some(),
            );
        };
        // Only the rules' effects count here: no rule answered (rule_matches unchanged).
        let decision = state.replier.decide(&rules, msg, facts);
        Reply {
            store: answered.is_some(),
            rule: None,
            twiml: answered.map_or_else(|| twiml::EMPTY.to_owned(), |a| a.twiml.clone()),
            bodies: answered.map(|a| a.bodies.clone()).unwrap_or_default(),
            consent: decision.consent.map(|c| c.state()),
        }
    })
    .await;
    state.metrics.database_time(started.elapsed());
    let store::inbound::Stored {
        received,
        failure_recorded,
    } = received?;
    // After the commit, in the order the rows were written.
    if failure_recorded {
        state.notifier.send("failure", &msg.sid);
    }
    if let Received::New { .. } = received {
        state.notifier.send("message", &msg.sid);
    }
    Ok(match received {
        Received::New { twiml } => {
            tracing::info!(channel = %msg.to.channel(), media = msg.media.len(), "stored inbound message");
            Some(twiml)
        }
        Received::Duplicate { twiml: None } if failure.is_some() => {
            // Stored without an answer (its primary call was answered 503 while the database
            // was away, then replayed from the spool): this fallback call answers it, once.
            let answered = match arrival.answer {
                Answer::Given(Some(answered)) => answered.clone(),
                Answer::Given(None) => return Ok(None),
                Answer::Rules => fallback_reply(state, base, &msg.sid),
            };
            Some(
                store::inbound::answer_once(
                    &state.db,
                    &msg.sid,
                    &answered.twiml,
                    &answered.bodies,
                    arrival.at,
                )
                .await?,
            )
        }
        Received::Duplicate { twiml } => {
            duplicate(state);
            twiml
        }
    })
}

fn twiml_response(twiml: String) -> Response {
    ([(CONTENT_TYPE, twiml::CONTENT_TYPE)], twiml).into_response()
}
