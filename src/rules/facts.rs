//! What the rules see of a conversation: the facts the store reads back while saving a
//! message, and a contact's consent.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// A contact's consent to hear from a business.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    #[default]
    Unknown,
    OptedIn,
    OptedOut,
}

impl ConsentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Unknown => "unknown",
            ConsentState::OptedIn => "opted_in",
            ConsentState::OptedOut => "opted_out",
        }
    }

    pub fn from_db(value: Option<&str>) -> Self {
        match value {
            Some("opted_in") => ConsentState::OptedIn,
            Some("opted_out") => ConsentState::OptedOut,
            _ => ConsentState::Unknown,
        }
    }
}

/// What changed a contact's consent (`consent_events.cause`, `rule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentCause {
    /// A reply rule with `consent = ...`: its name.
    Rule(String),
    /// Twilio's own opt-out handling (`OptOutType` on the inbound message).
    OptOutType,
}

impl ConsentCause {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsentCause::Rule(_) => "rule",
            ConsentCause::OptOutType => "opt_out_type",
        }
    }

    pub fn rule(&self) -> Option<&str> {
        match self {
            ConsentCause::Rule(rule) => Some(rule),
            ConsentCause::OptOutType => None,
        }
    }
}

/// What the store knows about the conversation once the message is saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// This is the contact's first inbound message to this business.
    pub first_contact: bool,
    /// This message opened a new 24-hour customer-service window.
    pub new_session: bool,
    /// Inbound messages from this contact so far, this one included.
    pub inbound_count: i64,
    pub window_expires_at: Option<DateTime<Utc>>,
    pub consent: ConsentState,
    /// Earlier replies to this contact within the rules' longest `limit.per`: each rule that
    /// answered, and when (a reply from two rules is two entries).
    pub recent_replies: Vec<(String, DateTime<Utc>)>,
    /// When the message was received.
    pub now: DateTime<Utc>,
}
