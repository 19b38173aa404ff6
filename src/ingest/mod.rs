//! Ingest: one verified webhook of any kind (inbound, fallback, status), from any source (a
//! live route, the spool's replay), in; an outcome the caller only has to translate, out.
//!
//! It parses the parameters, decides the reply (the rules over the facts the store reveals),
//! stores through the writer (group commit) and, when the database is away, keeps the
//! webhook in the spool itself. It owns the outage policy: a write is bounded by a deadline
//! counted from the request's arrival, and "away" (unreachable, too slow, not migrated,
//! contended) means keep it and answer 503. It never sees an HTTP type.

mod decide;
mod found;
mod replay;
mod writer;

pub use crate::store::Cause;
pub use found::{Found, ImportError, Imported};
pub use replay::ReplayError;
pub use writer::Grouping;

use crate::{
    metrics::Metrics,
    reply::{Rendered, Replier},
    spool::{Record, Spool},
    store::{
        self, StoreError,
        notify::{Kind as Notice, Notifier},
        write::{Callback, Failure, Inbound, Origin, Received, Recorded, Resource},
    },
    twilio::{InboundMessage, Kind, MissingParam, Params, ReplyLink, StatusCallback},
    twiml,
};
use chrono::{DateTime, Utc};
use decide::{Answer, Decider};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;
use tracing::Span;
use writer::{WriteError, Writer};

/// A verified webhook, as plain data.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub kind: Kind,
    /// Twilio's parameters, in order, repeats kept.
    pub params: Params,
    /// Our own query parameters (a reply's `reply_to`, `rule`, `part`).
    pub query: Params,
    /// The base URL it was verified against: reply `action` URLs start with it.
    pub base: String,
    /// When it arrived: the receive time stored for it.
    pub at: DateTime<Utc>,
    pub source: Source,
}

/// Where a webhook comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A live request, which arrived at this instant (its deadline counts from there).
    Live { arrived: std::time::Instant },
    /// The spool's replay of a record kept while the database was away. `answered` is what
    /// the request was answered with then (`None`: 503, or 204 for a status callback): the
    /// rules still run for their effects, but the reply on record is what was answered.
    Spool {
        record: String,
        answered: Option<Rendered>,
    },
}

impl Source {
    /// A live request's arrival: its deadline counts from there.
    fn arrived(&self) -> Option<std::time::Instant> {
        match self {
            Source::Live { arrived } => Some(*arrived),
            Source::Spool { .. } => None,
        }
    }
}

/// What to answer, once ingest is done with a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answer this TwiML (stored, or kept in the spool and answered anyway: a fallback call).
    Reply(String),
    /// Answer nothing (a status callback, stored or kept).
    Nothing,
    /// Kept in the spool, stored once Postgres answers; answer 503 so Twilio calls the
    /// fallback URL meanwhile.
    Spooled(Away),
    /// Neither stored nor kept (no spool, or it failed; or a replay that must wait): 503.
    Unavailable(Away),
}

/// Why the database could not take a webhook now. Each is worth trying again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Away {
    #[error("database unavailable: {0}")]
    Database(String),
    #[error("the database schema is not ready yet")]
    NotReady,
    #[error("the database did not answer in time")]
    TooSlow,
    #[error("concurrent writes kept changing the conversation")]
    Contended,
    /// The writer stopped before storing it: the server is shutting down, or its batch
    /// failed unexpectedly (logged where it happened).
    #[error("the writer stopped before storing it")]
    WriterGone,
}

/// A webhook that can never be stored as it is, or a bug.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Signed by Twilio, but without a parameter every message has (400).
    #[error(transparent)]
    MissingParam(#[from] MissingParam),
    /// A value Postgres cannot store (413).
    #[error("a value is too large to store")]
    TooLarge(#[source] Cause),
    /// Anything else (500).
    #[error("database error")]
    Bug(#[source] Cause),
}

/// Whether the server can take webhooks now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The database is away, but webhooks are kept in the spool.
    Spooling,
    Unavailable,
}

/// The time a message is received at. Tests substitute their own to cross a 24-hour window
/// without waiting for it.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(Utc::now))
    }

    pub fn from_fn(f: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

/// What ingest is built from (see `startup`).
pub struct Parts {
    pub db: PgPool,
    pub replier: Arc<Replier>,
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
    pub spool: Option<Arc<Spool>>,
    pub clock: Clock,
    /// `false` until migrations are applied; webhooks are kept or refused meanwhile.
    pub schema_ready: watch::Receiver<bool>,
    /// How long a write may take, from the request's arrival, before the webhook is spooled.
    pub deadline: Duration,
    /// Queue inbound media for the archive (`media.archive`).
    pub archive_media: bool,
    /// Queue outbound messages first seen without a body for a read of their resource
    /// (`reconcile.enabled`).
    pub enrich: bool,
    /// `None`: group commit off (`database.group_commit = false`), batches of one.
    pub grouping: Option<Grouping>,
}

/// The ingest layer: see the module documentation.
pub struct Ingest {
    parts: Parts,
    writer: Writer,
}

/// How long readiness waits for Postgres before saying no.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

impl Ingest {
    /// Starts the writer tasks (group commit) on the current runtime.
    pub fn start(parts: Parts) -> Self {
        let cx = writer::Context {
            db: parts.db.clone(),
            replier: parts.replier.clone(),
            metrics: parts.metrics.clone(),
            archive_media: parts.archive_media,
            enrich: parts.enrich,
        };
        let writer = Writer::start(cx, parts.grouping);
        Ingest { parts, writer }
    }

    /// The time a webhook arriving now is received at.
    pub fn now(&self) -> DateTime<Utc> {
        self.parts.clock.now()
    }

    /// The reply rules and templates (a SIGHUP reload replaces the rules inside).
    pub fn replier(&self) -> &Arc<Replier> {
        &self.parts.replier
    }

    /// The spool, when there is one.
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.parts.spool.as_ref()
    }

    /// The notifier, flushed at shutdown.
    pub fn notifier(&self) -> &Notifier {
        &self.parts.notifier
    }

    /// Migrations applied and Postgres answering within a second; or, without them, whether
    /// webhooks are still kept (the spool).
    pub async fn readiness(&self) -> Readiness {
        if *self.parts.schema_ready.borrow() && store::ping(&self.parts.db, READY_TIMEOUT).await {
            Readiness::Ready
        } else if self.parts.spool.is_some() {
            Readiness::Spooling
        } else {
            Readiness::Unavailable
        }
    }

    /// Stores `webhook` once, or keeps it in the spool, and says what to answer.
    pub async fn receive(&self, webhook: Webhook) -> Result<Outcome, IngestError> {
        // Each kind's future boxed on its own: one future for both would be as large as the
        // larger (inbound), and every status callback would allocate and copy that size.
        match webhook.kind {
            Kind::Inbound | Kind::Fallback => Box::pin(self.inbound(webhook)).await,
            Kind::Status => Box::pin(self.status(webhook)).await,
        }
    }

    /// An inbound message, to the primary or the fallback URL: stored once with its window,
    /// answered with the TwiML chosen for its first delivery (replayed to every retry).
    async fn inbound(&self, webhook: Webhook) -> Result<Outcome, IngestError> {
        let msg = InboundMessage::parse(&webhook.params)?;
        Span::current().record("message_sid", msg.sid.as_str());
        let fallback = webhook.kind == Kind::Fallback;
        let failure = fallback.then(|| Failure::from_params(&webhook.params));
        if let (Some(failure), Source::Live { .. }) = (&failure, &webhook.source) {
            tracing::info!(error_code = ?failure.error_code, "fallback call");
            self.parts
                .metrics
                .fallback_call(webhook.params.non_empty("ErrorCode"));
        }
        let spool_record = match &webhook.source {
            Source::Spool { record, .. } => Some(record.clone()),
            // The id this call's spool record would get, stored with the failure row: a live
            // write cut off by the deadline after its commit went out, then replayed from the
            // spool, is still one failure row.
            Source::Live { .. } => failure
                .as_ref()
                .and(self.parts.spool.as_ref())
                .map(|spool| spool.new_id(webhook.at)),
        };
        let (sid, channel, media) = (msg.sid.clone(), msg.to.channel(), msg.media.len());
        let item = Inbound {
            msg,
            params: webhook.params.to_json(),
            at: webhook.at,
            failure,
            spool_record: spool_record.clone(),
            origin: match webhook.source {
                Source::Spool { .. } => Origin::Spool,
                Source::Live { .. } if fallback => Origin::Fallback,
                Source::Live { .. } => Origin::Webhook,
            },
            twilio: Resource::default(),
        };
        let decider = Decider {
            rules: self.parts.replier.rules(),
            base: webhook.base.clone(),
            answer: match &webhook.source {
                Source::Spool { answered, .. } => Answer::Given(answered.clone()),
                Source::Live { .. } if fallback => Answer::Fallback,
                Source::Live { .. } => Answer::Rules,
            },
        };
        let stored = self
            .within_deadline(webhook.source.arrived(), self.writer.receive(item, decider))
            .await;
        let stored = match stored {
            Ok(stored) => stored,
            Err(Failed::Away(away)) => {
                return Ok(self.keep(&webhook, &sid, spool_record, away).await);
            }
            Err(Failed::Refused(e)) => return Err(e),
        };
        let day = Some(stored.received_at);
        if stored.failure_recorded {
            self.parts.notifier.send(Notice::Failure, &sid, day);
        }
        let twiml = match stored.received {
            Received::New { twiml } => {
                self.parts.notifier.send(Notice::Message, &sid, day);
                tracing::info!(%channel, media, "stored inbound message");
                twiml
            }
            Received::Duplicate { twiml: Some(twiml) } => self.duplicate(twiml),
            Received::Duplicate { twiml: None } if fallback => {
                return self.answer_late(&webhook, &sid, spool_record).await;
            }
            Received::Duplicate { twiml: None } => self.duplicate(twiml::EMPTY.to_owned()),
        };
        Ok(Outcome::Reply(twiml))
    }

    fn duplicate(&self, twiml: String) -> String {
        self.parts.metrics.duplicates.inc();
        tracing::info!("duplicate delivery; replaying the first reply");
        twiml
    }

    /// A fallback call for a message stored without an answer (its primary call was answered
    /// 503 while the database was away, then replayed from the spool): this call answers it,
    /// once (the fallback reply, or nothing to a contact who opted out meanwhile), and every
    /// later call gets the same. Bounded and kept like any write: with the database away a
    /// live call is spooled (and answered), a replayed one stays in the spool.
    async fn answer_late(
        &self,
        webhook: &Webhook,
        sid: &str,
        spool_record: Option<String>,
    ) -> Result<Outcome, IngestError> {
        let given = match &webhook.source {
            Source::Spool { answered: None, .. } => {
                return Ok(Outcome::Reply(twiml::EMPTY.to_owned()));
            }
            Source::Spool {
                answered: Some(answered),
                ..
            } => Some(answered.clone()),
            Source::Live { .. } => None,
        };
        let recorded = self
            .within_deadline(webhook.source.arrived(), async {
                let answer = match given {
                    Some(answered) => answered,
                    None if store::replies::contact_opted_out(&self.parts.db, sid).await? => {
                        Rendered {
                            twiml: twiml::EMPTY.to_owned(),
                            bodies: Vec::new(),
                        }
                    }
                    None => self.fallback_reply(&webhook.base, sid),
                };
                let at = webhook.at;
                let twiml = store::replies::answer_once(
                    &self.parts.db,
                    sid,
                    &answer.twiml,
                    &answer.bodies,
                    at,
                )
                .await?;
                Ok::<_, WriteError>(twiml)
            })
            .await;
        match recorded {
            Ok(twiml) => Ok(Outcome::Reply(twiml)),
            Err(Failed::Away(away)) => Ok(self.keep(webhook, sid, spool_record, away).await),
            Err(Failed::Refused(e)) => Err(e),
        }
    }

    /// `reply.fallback_body` as TwiML for `sid` (or an empty answer).
    fn fallback_reply(&self, base: &str, sid: &str) -> Rendered {
        self.parts
            .replier
            .render(&self.parts.replier.fallback_decision(), base, sid)
    }

    /// A status callback: the event stored as history, the message's status advanced by
    /// precedence.
    async fn status(&self, webhook: Webhook) -> Result<Outcome, IngestError> {
        let cb = StatusCallback::parse(&webhook.params)?;
        Span::current().record("message_sid", cb.sid.as_str());
        let link = ReplyLink::from_query(&webhook.query);
        // What is logged afterwards; the callback itself moves into the write.
        let (sid, status, reply) = (cb.sid.clone(), cb.status.clone(), link.is_some());
        let callback = Callback {
            cb,
            link,
            params: webhook.params.to_json(),
            at: webhook.at,
            found: None,
        };
        let recorded: Recorded = match self
            .within_deadline(webhook.source.arrived(), self.writer.record(callback))
            .await
        {
            Ok(recorded) => recorded,
            Err(Failed::Away(away)) => return Ok(self.keep(&webhook, &sid, None, away).await),
            Err(Failed::Refused(e)) => return Err(e),
        };
        if recorded.new_event {
            let day = recorded.message_received_at;
            self.parts.notifier.send(Notice::Status, &sid, day);
        }
        if !recorded.advanced {
            self.parts.metrics.status_not_advanced.inc();
        }
        tracing::info!(
            %status,
            new_event = recorded.new_event,
            new_message = recorded.created_message,
            reply,
            "stored status callback"
        );
        Ok(Outcome::Nothing)
    }

    /// Bounds a write below the request deadline (counted from a live request's arrival, so
    /// a slow body cannot eat the time left to spool), so a database that stops answering
    /// mid-request still leaves time to spool the request and answer. A write cut off here
    /// rolls back unless its commit already went out; replaying the spooled copy is
    /// idempotent either way.
    async fn within_deadline<T>(
        &self,
        arrived: Option<std::time::Instant>,
        write: impl Future<Output = Result<T, WriteError>>,
    ) -> Result<T, Failed> {
        if !*self.parts.schema_ready.borrow() {
            return Err(Failed::Away(Away::NotReady));
        }
        let started = tokio::time::Instant::now();
        let deadline = match arrived {
            Some(arrived) => tokio::time::Instant::from_std(arrived + self.parts.deadline),
            None => started + self.parts.deadline,
        };
        let written = tokio::time::timeout_at(deadline, write).await;
        self.parts.metrics.database_time(started.elapsed());
        match written {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(Failed::Away(Away::TooSlow)),
        }
    }

    /// Keeps a webhook the database could not take, and says what to answer. Only a live
    /// request is spooled (a replayed one is in the spool already); without a usable spool
    /// it is lost to this server, and the log says so.
    async fn keep(
        &self,
        webhook: &Webhook,
        sid: &str,
        record: Option<String>,
        away: Away,
    ) -> Outcome {
        let Source::Live { .. } = webhook.source else {
            return Outcome::Unavailable(away);
        };
        // A fallback call is answered with the fallback reply even now: its record says so.
        let answered =
            (webhook.kind == Kind::Fallback).then(|| self.fallback_reply(&webhook.base, sid));
        let Some(spool) = &self.parts.spool else {
            tracing::error!(
                "database unavailable and no spool (spool.dir): this webhook is NOT stored"
            );
            return Outcome::Unavailable(away);
        };
        let kept = spool
            .append(Record {
                id: record.unwrap_or_default(),
                kind: webhook.kind,
                received_at: webhook.at,
                params: webhook.params.pairs().to_vec(),
                query: webhook.query.pairs().to_vec(),
                base: webhook.base.clone(),
                answered: answered.clone(),
            })
            .await;
        if let Err(e) = kept {
            tracing::error!(error = %e, "database unavailable and the spool failed: this webhook is NOT stored");
            return Outcome::Unavailable(away);
        }
        tracing::warn!(reason = %away, "database unavailable: webhook spooled, stored once Postgres answers");
        match (webhook.kind, answered) {
            (Kind::Status, _) => Outcome::Nothing,
            (Kind::Fallback, Some(answered)) => Outcome::Reply(answered.twiml),
            _ => Outcome::Spooled(away),
        }
    }
}

/// Why a write did not store a webhook: worth keeping for later, or never storable as is.
enum Failed {
    Away(Away),
    Refused(IngestError),
}

fn classify(e: WriteError) -> Failed {
    match e {
        WriteError::NotTaken => Failed::Away(Away::TooSlow),
        WriteError::Gone => Failed::Away(Away::WriterGone),
        WriteError::Store(StoreError::Unavailable(cause)) => {
            Failed::Away(Away::Database(cause.to_string()))
        }
        WriteError::Store(StoreError::Conflict) => Failed::Away(Away::Contended),
        WriteError::Store(StoreError::TooLarge(cause)) => {
            Failed::Refused(IngestError::TooLarge(cause))
        }
        WriteError::Store(StoreError::Bug(cause)) => Failed::Refused(IngestError::Bug(cause)),
    }
}
