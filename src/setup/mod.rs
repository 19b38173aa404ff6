//! Proving a set-up before the first real message: `doctor`'s checks (configuration,
//! database, spool, the public URL end to end, what Twilio holds) and `connect`, which points
//! a Twilio resource at this server.

pub mod connect;
pub mod doctor;
pub mod twilio;

use crate::config::{FALLBACK_PATH, MESSAGES_PATH, STATUS_PATH};
use serde::Serialize;

/// One line of doctor's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `database` or `sender whatsapp:+14155238886 fallback URL`.
    pub name: String,
    pub verdict: Verdict,
    /// What was found, in one sentence.
    pub detail: String,
    /// On a warning or failure: what to change, naming the setting or the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// A resource in Twilio that calls this server, as named on the command line of `doctor`
/// and `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A WhatsApp sender, by its address (`whatsapp:+14155238886`).
    Sender(String),
    /// A Messaging Service, by its SID (`MG…`).
    MessagingService(String),
    /// A phone number of the account, in E.164 (`+14155238886`).
    PhoneNumber(String),
}

/// This server's three webhook URLs under a public base URL (`server.public_url`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routes {
    pub incoming: String,
    pub fallback: String,
    pub status: String,
}

impl Routes {
    /// The routes under `base` (a trailing slash is ignored).
    pub fn under(base: &str) -> Routes {
        let base = base.trim_end_matches('/');
        Routes {
            incoming: format!("{base}{MESSAGES_PATH}"),
            fallback: format!("{base}{FALLBACK_PATH}"),
            status: format!("{base}{STATUS_PATH}"),
        }
    }
}
