//! Who decides the reply stored for a new inbound message, and what it is.

use crate::{
    metrics::Metrics,
    reply::{Rendered, Replier},
    rules::{ConsentState, Facts, Rules},
    store::write::Reply,
    twilio::InboundMessage,
    twiml,
};
use std::sync::Arc;

/// What one inbound delivery needs for its reply to be decided, whenever its batch is
/// written (and again if the batch is read again).
pub(super) struct Decider {
    /// The rules in force when it arrived (a SIGHUP reload does not change them midway).
    pub rules: Arc<Rules>,
    /// The base URL it was verified against (reply `action` URLs start with it).
    pub base: String,
    pub answer: Answer,
}

/// Who decides the stored reply.
pub(super) enum Answer {
    /// The rules: the reply is answered now (a live call to the primary URL).
    Rules,
    /// The rules, or `reply.fallback_body` when no rule answered and the contact may be
    /// answered at all (a live call to the fallback URL).
    Fallback,
    /// The request was answered already, while the database was away: with this TwiML, or
    /// (`None`) with a 503. The rules still run for their effects (an opt-out sent during an
    /// outage still opts out), but the reply on record is what was really answered.
    Given(Option<Rendered>),
}

impl Decider {
    pub(super) fn decide(
        &self,
        replier: &Replier,
        metrics: &Metrics,
        msg: &InboundMessage,
        facts: &Facts,
    ) -> Reply {
        let mut decision = replier.decide(&self.rules, msg, facts);
        let fallback = match &self.answer {
            Answer::Given(answered) => {
                return Reply {
                    store: answered.is_some(),
                    rule: Vec::new(),
                    twiml: answered
                        .as_ref()
                        .map_or_else(|| twiml::EMPTY.to_owned(), |a| a.twiml.clone()),
                    bodies: answered
                        .as_ref()
                        .map(|a| a.bodies.clone())
                        .unwrap_or_default(),
                    consent: decision.consent.map(|(c, cause)| (c.state(), cause)),
                };
            }
            Answer::Rules => false,
            Answer::Fallback => true,
        };
        for rule in &decision.rule {
            metrics.rule_matched(rule);
        }
        if fallback
            && msg.opt_out_type.is_none()
            && decision.rule.is_empty()
            && decision.messages.is_empty()
            && facts.consent != ConsentState::OptedOut
        {
            decision = replier.fallback_decision();
        }
        let rendered = replier.render(&decision, &self.base, &msg.sid);
        Reply {
            store: true,
            rule: decision.rule,
            twiml: rendered.twiml,
            bodies: rendered.bodies,
            consent: decision.consent.map(|(c, cause)| (c.state(), cause)),
        }
    }
}
