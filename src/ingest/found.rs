//! Messages read from Twilio's REST API (reconcile, backfill): stored by the same writer and
//! statements as webhooks. An inbound message found late is never answered (a reply hours
//! late is wrong), but its effects hold as a spooled message's do: a STOP opts out, unless
//! a later message opted back in.

use super::{Away, Failed, Ingest, IngestError, decide::Answer, decide::Decider};
use crate::{
    store::{
        notify::Kind as Notice,
        write::{Callback, Content, Inbound, Origin, Received, Resource},
    },
    twilio::{InboundMessage, Params, StatusCallback},
};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

/// A message from Twilio's message log, as plain data.
#[derive(Debug, Clone)]
pub struct Found {
    /// The resource as webhook parameters (`MessageSid`, `From`, `To`, `Body`, `MediaUrl0`,
    /// `MessageStatus`, ...), parsed by the webhooks' own parsers.
    pub params: Params,
    /// The resource's JSON as received: stored as the message's `params`.
    pub resource: Box<RawValue>,
    /// Sent by the business (`outbound-api`, `outbound-reply`, `outbound-call`).
    pub outbound: bool,
    pub origin: Origin,
    pub twilio: Resource,
    /// Twilio's `date_updated`: the time of the status it reports.
    pub updated_at: DateTime<Utc>,
}

/// What storing a found message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// It was not stored: now it is.
    Stored,
    /// An outbound row a status callback had created: its body, media and Twilio's times
    /// are filled in; `advanced`: the API's status is further on and is now current.
    Completed { advanced: bool },
    /// It was stored already; nothing changed.
    AlreadyStored,
}

/// Why a found message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Worth trying again later.
    #[error(transparent)]
    Away(Away),
    #[error(transparent)]
    Refused(IngestError),
}

impl Ingest {
    /// Stores a message found in Twilio's log once, through the writer (group commit).
    pub async fn import(&self, found: Found) -> Result<Imported, ImportError> {
        let fail = |e: Failed| match e {
            Failed::Away(away) => ImportError::Away(away),
            Failed::Refused(e) => ImportError::Refused(e),
        };
        let parsed = InboundMessage::parse(&found.params)
            .map_err(|e| ImportError::Refused(IngestError::MissingParam(e)))?;
        let sid = parsed.sid.clone();
        if !found.outbound {
            let item = Inbound {
                msg: parsed,
                params: found.resource,
                // Windows and sessions follow Twilio's time, not the time it was found.
                at: found.twilio.created_at.unwrap_or(found.updated_at),
                failure: None,
                spool_record: None,
                origin: found.origin,
                twilio: found.twilio,
            };
            let decider = Decider {
                rules: self.parts.replier.rules(),
                base: String::new(),
                answer: Answer::Given(None),
            };
            let stored = self
                .within_deadline(None, self.writer.receive(item, decider))
                .await
                .map_err(fail)?;
            return Ok(match stored.received {
                Received::New { .. } => {
                    let day = Some(stored.received_at);
                    self.parts.notifier.send(Notice::Message, &sid, day);
                    Imported::Stored
                }
                Received::Duplicate { .. } => Imported::AlreadyStored,
            });
        }
        let cb = StatusCallback::parse(&found.params)
            .map_err(|e| ImportError::Refused(IngestError::MissingParam(e)))?;
        let callback = Callback {
            cb,
            link: None,
            params: found.resource,
            at: found.updated_at,
            found: Some(Box::new(Content {
                origin: found.origin,
                msg: parsed,
                twilio: found.twilio,
            })),
        };
        let recorded = self
            .within_deadline(None, self.writer.record(callback))
            .await
            .map_err(fail)?;
        let day = recorded.message_received_at;
        if recorded.new_event {
            self.parts.notifier.send(Notice::Status, &sid, day);
        }
        Ok(if recorded.created_message {
            self.parts.notifier.send(Notice::Message, &sid, day);
            Imported::Stored
        } else {
            Imported::Completed {
                advanced: recorded.advanced,
            }
        })
    }
}
