//! Twilio's webhook protocol, as plain Rust over plain data: no HTTP, database or runtime
//! types. See ../shared/TWILIO.md; Twilio's own page is
//! <https://www.twilio.com/docs/usage/webhooks/webhooks-security>.
//!
//! The URL checked is always the public URL Twilio called, never the one this server sees.

pub mod address;
mod form;
pub mod inbound;
pub mod params;
pub mod signature;
pub mod status;
pub mod verify;

pub use address::Address;
pub use inbound::{InboundMessage, MissingParam};
pub use params::Params;
pub use signature::SignatureError;
pub use status::{ReplyLink, StatusCallback};
pub use verify::{BodyKind, RawRequest, Rejection, Verifier};

/// The three webhooks of Programmable Messaging, each on its own URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// "A message comes in" (TWILIO.md §3).
    Inbound,
    /// The fallback URL, called when the primary failed (TWILIO.md §5).
    Fallback,
    /// A delivery status callback (TWILIO.md §4).
    Status,
}
