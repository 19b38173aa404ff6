//! What to answer an inbound message with. Pure: the caller passes in the message and the
//! facts the store read back while saving it; the rules (reloadable) decide.

use crate::{
    rules::{ConsentCause, ConsentChange, ConsentState, Facts, Rules},
    twilio::{InboundMessage, ReplyLink},
    twiml,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// The answer chosen for a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The rules that answered, in order; empty for the default reply or no reply.
    pub rule: Vec<String>,
    /// Each message with the rule that produced it.
    pub messages: Vec<(Option<String>, twiml::Message)>,
    /// A consent change to record, and what made it.
    pub consent: Option<(ConsentChange, ConsentCause)>,
}

/// Chooses replies and renders them.
#[derive(Debug)]
pub struct Replier {
    rules: RwLock<Arc<Rules>>,
    default_body: Option<String>,
    fallback_body: Option<String>,
    track_delivery: bool,
}

/// A decision rendered for Twilio and for storage (and, for a request answered while the
/// database was away, kept with its spool record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub twiml: String,
    /// The body of each `<Message>`, in order.
    pub bodies: Vec<String>,
}

impl Replier {
    pub fn new(
        rules: Rules,
        default_body: Option<String>,
        fallback_body: Option<String>,
        track_delivery: bool,
    ) -> Self {
        Replier {
            rules: RwLock::new(Arc::new(rules)),
            default_body,
            fallback_body,
            track_delivery,
        }
    }

    /// The rules in force (a cheap handle: reloads swap the whole set at once).
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the rules atomically (SIGHUP).
    pub fn replace_rules(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    /// Decides with `rules` (taken once per message with [`Replier::rules`]).
    pub fn decide(&self, rules: &Rules, message: &InboundMessage, facts: &Facts) -> Decision {
        // Twilio's own opt-out handling recognised a keyword and answered it already: consent
        // follows it, and nothing answers a second time.
        if let Some(kind) = &message.opt_out_type {
            let change = match kind.trim().to_ascii_uppercase().as_str() {
                "STOP" => Some(ConsentChange::OptOut),
                "START" => Some(ConsentChange::OptIn),
                _ => None,
            };
            return Decision {
                consent: change.map(|c| (c, ConsentCause::OptOutType)),
                ..Decision::default()
            };
        }
        let evaluation = rules.evaluate(message, facts);
        if !evaluation.matched.is_empty() {
            return Decision {
                rule: evaluation.matched,
                messages: evaluation
                    .messages
                    .into_iter()
                    .map(|(rule, m)| (Some(rule), m))
                    .collect(),
                consent: evaluation
                    .consent
                    .map(|(change, rule)| (change, ConsentCause::Rule(rule))),
            };
        }
        // No rule answered: the default reply, never to a contact who opted out.
        Decision {
            messages: self
                .default_body
                .iter()
                .filter(|_| facts.consent != ConsentState::OptedOut)
                .flat_map(|body| twiml::split_body(body))
                .map(|body| (None, twiml::Message::text(body)))
                .collect(),
            ..Decision::default()
        }
    }

    /// The TwiML for `decision` answering `inbound_sid`. With delivery tracking on, each
    /// `<Message>` carries an `action` URL under `base` (the base URL the request was verified
    /// against) naming the inbound SID, the rule and its position. A document past Twilio's
    /// 64 kB limit loses its last messages, with a warning.
    pub fn render(&self, decision: &Decision, base: &str, inbound_sid: &str) -> Rendered {
        let mut messages: Vec<twiml::Message> = decision
            .messages
            .iter()
            .enumerate()
            .map(|(part, (rule, m))| {
                let mut m = m.clone();
                if self.track_delivery {
                    m.action = Some(ReplyLink::action_url(
                        base,
                        inbound_sid,
                        rule.as_deref(),
                        part,
                    ));
                }
                m
            })
            .collect();
        let mut twiml = twiml::render(&messages);
        if twiml.len() > twiml::MAX_DOCUMENT_BYTES {
            // The longest run of messages that fits, found by halving: a document only grows
            // with each message, and rendering again per dropped message was quadratic (a
            // template printing megabytes took minutes).
            let (mut fits, mut too_many) = (0, messages.len());
            while too_many - fits > 1 {
                let mid = fits + (too_many - fits) / 2;
                if twiml::render(&messages[..mid]).len() <= twiml::MAX_DOCUMENT_BYTES {
                    fits = mid;
                } else {
                    too_many = mid;
                }
            }
            messages.truncate(fits);
            twiml = twiml::render(&messages);
        }
        if messages.len() < decision.messages.len() {
            tracing::warn!(
                kept = messages.len(),
                dropped = decision.messages.len() - messages.len(),
                "reply longer than Twilio's 64 kB TwiML limit: last messages dropped"
            );
        }
        Rendered {
            twiml,
            bodies: messages.into_iter().map(|m| m.body).collect(),
        }
    }

    /// What the fallback route answers when the primary reply is empty or the database is
    /// unreachable: `reply.fallback_body`, or nothing.
    pub fn fallback_decision(&self) -> Decision {
        Decision {
            messages: self
                .fallback_body
                .iter()
                .map(|body| (None, twiml::Message::text(body.clone())))
                .collect(),
            ..Decision::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replier(track: bool) -> Replier {
        Replier::new(Rules::empty(), None, Some("Sorry!".into()), track)
    }

    #[test]
    fn tracked_replies_carry_an_action_per_message_with_its_rule() {
        let decision = Decision {
            rule: vec!["greet".into(), "menu".into()],
            messages: vec![
                (Some("greet".into()), twiml::Message::text("one")),
                (Some("menu".into()), twiml::Message::text("two & more")),
            ],
            consent: None,
        };
        let rendered = replier(true).render(&decision, "https://h.example", "SM1");
        assert_eq!(rendered.bodies, ["one", "two & more"]);
        assert!(rendered.twiml.contains(
            r#"<Message action="https://h.example/twilio/status?reply_to=SM1&amp;part=1&amp;rule=menu" method="POST"><Body>two &amp; more</Body>"#
        ), "{}", rendered.twiml);
        let untracked = replier(false).render(&decision, "https://h.example", "SM1");
        assert!(!untracked.twiml.contains("action="));
    }

    #[test]
    fn documents_over_64_kb_drop_their_last_messages() {
        let big = "x".repeat(1500);
        let decision = Decision {
            rule: vec!["huge".into()],
            messages: (0..60)
                .map(|_| (Some("huge".into()), twiml::Message::text(big.clone())))
                .collect(),
            consent: None,
        };
        let rendered = replier(true).render(&decision, "https://h.example", "SM1");
        assert!(rendered.twiml.len() <= twiml::MAX_DOCUMENT_BYTES);
        assert!(rendered.bodies.len() < 60 && rendered.bodies.len() > 30);
        assert!(rendered.twiml.ends_with("</Response>"));
        assert_keeps_the_most_that_fit(&decision, &rendered);
    }

    /// `rendered` kept as many messages as fit: given one more, one is still dropped.
    fn assert_keeps_the_most_that_fit(decision: &Decision, rendered: &Rendered) {
        let kept = rendered.bodies.len();
        let one_more = Decision {
            messages: decision.messages[..=kept].to_vec(),
            ..decision.clone()
        };
        let again = replier(true).render(&one_more, "https://h.example", "SM1");
        assert_eq!(again.bodies.len(), kept);
    }

    #[test]
    fn a_reply_of_megabytes_is_cut_quickly() {
        // Regression (fuzz target rule_templates): dropping one message at a time rendered the
        // document again each time, so thousands of messages took minutes.
        let decision = Decision {
            rule: vec!["huge".into()],
            messages: (0..5000)
                .map(|_| (Some("huge".into()), twiml::Message::text("y".repeat(1600))))
                .collect(),
            consent: None,
        };
        let rendered = replier(true).render(&decision, "https://h.example", "SM1");
        assert!(rendered.twiml.len() <= twiml::MAX_DOCUMENT_BYTES);
        assert_keeps_the_most_that_fit(&decision, &rendered);
    }

    #[test]
    fn the_fallback_reply_is_the_configured_body_or_nothing() {
        assert!(
            Replier::new(Rules::empty(), None, None, true)
                .fallback_decision()
                .messages
                .is_empty()
        );
        assert_eq!(
            replier(true).fallback_decision().messages,
            [(None, twiml::Message::text("Sorry!"))]
        );
    }
}
