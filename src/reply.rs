//! What to answer an inbound message with. Pure: the caller passes in the message and the
//! facts the store read back while saving it.
//!
//! This is where the rules engine plugs in: it replaces [`Replier::decide`]'s body and keeps
//! its signature, so routes and storage do not change.

use crate::{twilio::InboundMessage, twiml};

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

/// Chooses replies. Today: the configured `reply.body`, or nothing.
#[derive(Debug, Clone, Default)]
pub struct Replier {
    default_body: Option<String>,
}

impl Replier {
    pub fn new(default_body: Option<String>) -> Self {
        Replier { default_body }
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
}
