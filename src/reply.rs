//! What to answer an inbound message with. Pure: the caller passes in the message and the
//! facts the store read back while saving it.
//!
//! This is where the rules engine plugs in: it replaces [`Replier::decide`]'s body and keeps
//! its signature, so routes and storage do not change.

use crate::{
    twilio::{InboundMessage, ReplyLink},
    twiml,
};

/// What the store knows about the conversation once the message is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// This is the contact's first inbound message to this business.
    pub first_contact: bool,
    /// This message opened a new 24-hour customer-service window.
    pub new_session: bool,
}

/// The answer chosen for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The rule that answered; `None` for the configured default reply or no reply.
    pub rule: Option<String>,
    pub messages: Vec<twiml::Message>,
}

/// Chooses replies and renders them. Today: the configured `reply.body`, or nothing.
#[derive(Debug, Clone, Default)]
pub struct Replier {
    default_body: Option<String>,
    fallback_body: Option<String>,
    track_delivery: bool,
}

/// A decision rendered for Twilio and for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub twiml: String,
    /// The body of each `<Message>`, in order.
    pub bodies: Vec<String>,
}

impl Replier {
    pub fn new(
        default_body: Option<String>,
        fallback_body: Option<String>,
        track_delivery: bool,
    ) -> Self {
        Replier {
            default_body,
            fallback_body,
            track_delivery,
        }
    }

    pub fn decide(&self, _message: &InboundMessage, _facts: &Facts) -> Decision {
        Decision {
            rule: None,
            messages: self
                .default_body
                .iter()
                .map(|body| twiml::Message::text(body.clone()))
                .collect(),
        }
    }

    /// The TwiML for `decision` answering `inbound_sid`. With delivery tracking on, each
    /// `<Message>` carries an `action` URL under `base` (the base URL the request was verified
    /// against) naming the inbound SID, the rule and its position.
    pub fn render(&self, decision: &Decision, base: &str, inbound_sid: &str) -> Rendered {
        let mut messages = decision.messages.clone();
        if self.track_delivery {
            for (part, m) in messages.iter_mut().enumerate() {
                m.action = Some(ReplyLink::action_url(
                    base,
                    inbound_sid,
                    decision.rule.as_deref(),
                    part,
                ));
            }
        }
        Rendered {
            twiml: twiml::render(&messages),
            bodies: messages.into_iter().map(|m| m.body).collect(),
        }
    }

    /// What the fallback route answers when the primary reply is empty or the database is
    /// unreachable: `reply.fallback_body`, or nothing.
    pub fn fallback_decision(&self) -> Decision {
        Decision {
            rule: None,
            messages: self
                .fallback_body
                .iter()
                .map(|body| twiml::Message::text(body.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_replies_carry_an_action_per_message() {
        let replier = Replier::new(None, None, true);
        let decision = Decision {
            rule: Some("greet".into()),
            messages: vec![
                twiml::Message::text("one"),
                twiml::Message::text("two & more"),
            ],
        };
        let rendered = replier.render(&decision, "https://h.example", "SM1");
        assert_eq!(rendered.bodies, ["one", "two & more"]);
        assert!(rendered.twiml.contains(
            r#"<Message action="https://h.example/twilio/status?reply_to=SM1&amp;part=1&amp;rule=greet" method="POST"><Body>two &amp; more</Body>"#
        ), "{}", rendered.twiml);
        let untracked =
            Replier::new(None, None, false).render(&decision, "https://h.example", "SM1");
        assert!(!untracked.twiml.contains("action="));
    }

    #[test]
    fn the_fallback_reply_is_the_configured_body_or_nothing() {
        assert!(
            Replier::new(None, None, true)
                .fallback_decision()
                .messages
                .is_empty()
        );
        let with_body = Replier::new(None, Some("Sorry!".into()), true).fallback_decision();
        assert_eq!(with_body.messages, [twiml::Message::text("Sorry!")]);
    }
}
