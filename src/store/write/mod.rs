//! The write engine: every webhook, live or replayed, alone or with others, is stored here,
//! by the same two statements. A batch of any size (one, when the server is idle or group
//! commit is off) shares its round trips and its commit (the WAL flush).
//!
//! The guarantees are Postgres's: the unique SID decides which delivery is first, whichever
//! batch or process it is in, and a batch's write commits only if no other transaction
//! changed its contacts since it read them (see [`write`]). Inside a batch, the messages of
//! one contact are applied in arrival order in Rust ([`contact`]): each sees the window,
//! consent and reply history the earlier ones left, as if they had been stored one after
//! another. That arithmetic exists only there; the SQL writes what it computed.
//!
//! `ON CONFLICT DO UPDATE` may touch a row only once per statement, so rows are first
//! aggregated per SID and per (business, contact); rows are written in key order so that two
//! batches lock the rows they share in the same order.

mod contact;
mod memory;
mod read;
mod rows;
mod statement;

pub use memory::Memory;
use memory::Recalled;

use super::StoreError;
use crate::{
    rules::{ConsentCause, ConsentState, Facts},
    twilio::{InboundMessage, Params, ReplyLink, StatusCallback},
};
use chrono::{DateTime, Duration, Utc};
use contact::{Contact, Reads};
use rows::{ContactUpdates, FailureRows, MessageRows, ReplyRows, StatusRows};
use serde_json::value::RawValue;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};

/// One delivery of an inbound message (to the primary or the fallback URL).
pub struct Inbound {
    pub msg: InboundMessage,
    /// Every parameter as received (`Params::to_json`).
    pub params: Box<RawValue>,
    pub at: DateTime<Utc>,
    /// For a call to the fallback URL: why the primary URL failed. Its row is stored whether
    /// or not the message is new.
    pub failure: Option<Failure>,
    /// The spool record this delivery is (or would be) kept as: its failure row is stored
    /// once however often the record is replayed.
    pub spool_record: Option<String>,
    /// How the message arrived, stored with it if it is new (`messages.source`).
    pub origin: Origin,
    /// What Twilio's Message resource adds (all `None` for a webhook).
    pub twilio: Resource,
}

/// What Twilio's Message resource says that no webhook carries.
#[derive(Debug, Clone, Default)]
pub struct Resource {
    pub created_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    /// A decimal as Twilio writes it (`"-0.00500"`); stored as `numeric`.
    pub price: Option<String>,
    pub price_unit: Option<String>,
}

/// An outbound message read from Twilio's API: what its status callbacks never carry.
pub struct Content {
    pub origin: Origin,
    /// Body, media and segments, parsed like an inbound message's.
    pub msg: InboundMessage,
    pub twilio: Resource,
}

/// How a message first arrived (`messages.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The primary URL (an outbound message first seen in a status callback is one too).
    Webhook,
    /// The fallback URL.
    Fallback,
    /// The spool's replay of a webhook kept while the database was away.
    Spool,
    /// Found in Twilio's message log by reconciliation (gap-fill, enrichment, stale).
    Reconcile,
    /// Imported by `backfill`.
    Backfill,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Webhook => "webhook",
            Origin::Fallback => "fallback",
            Origin::Spool => "spool",
            Origin::Reconcile => "reconcile",
            Origin::Backfill => "backfill",
        }
    }

    /// Read from Twilio's API rather than delivered as a webhook.
    pub fn is_api(self) -> bool {
        matches!(self, Origin::Reconcile | Origin::Backfill)
    }
}

/// A call to the fallback URL: why Twilio could not use the primary URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `ErrorCode` when it is an integer (11200, 11205, ...).
    pub error_code: Option<i32>,
    /// `ErrorUrl`: the primary URL that failed.
    pub error_url: Option<String>,
}

impl Failure {
    /// Why the primary URL failed, from a fallback call's parameters.
    pub fn from_params(params: &Params) -> Self {
        Failure {
            error_code: params.get("ErrorCode").and_then(|v| v.trim().parse().ok()),
            error_url: params.non_empty("ErrorUrl").map(str::to_owned),
        }
    }
}

/// One status callback to record.
pub struct Callback {
    pub cb: StatusCallback,
    pub link: Option<ReplyLink>,
    /// Every parameter as received (`Params::to_json`), or the resource's JSON.
    pub params: Box<RawValue>,
    /// When the event happened: the callback's arrival, or Twilio's `date_updated`.
    pub at: DateTime<Utc>,
    /// Read from Twilio's API rather than a status callback: the message's content.
    pub found: Option<Box<Content>>,
}

/// The reply chosen for a new message, from the facts the read revealed.
pub struct Reply {
    /// `false`: store no reply row (nothing was answered; a later call may still answer).
    pub store: bool,
    /// The rules that answered, in order; empty when none did.
    pub rule: Vec<String>,
    pub twiml: String,
    /// The body of each `<Message>`, in order.
    pub bodies: Vec<String>,
    /// A consent change, and what made it.
    pub consent: Option<(ConsentState, ConsentCause)>,
}

/// What happened to a delivery of an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// First delivery: stored, and answered with this TwiML.
    New { twiml: String },
    /// Twilio delivered this SID before: nothing new stored; the TwiML answered then, if any.
    Duplicate { twiml: Option<String> },
}

/// What storing one inbound delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub received: Received,
    /// The message's `received_at`: the day of its rows (that of its first delivery).
    pub received_at: DateTime<Utc>,
    /// A fallback call's failure row was stored (not a replay of one already stored).
    pub failure_recorded: bool,
}

/// What a status callback changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// `false` for a redelivery of an event already stored.
    pub new_event: bool,
    /// The callback named a SID we had not stored: an outbound row was created.
    pub created_message: bool,
    /// This event set the message's current status (a new event that won on precedence).
    pub advanced: bool,
    /// The message's `received_at` (the day of its rows), as the write found or made it.
    pub message_received_at: Option<DateTime<Utc>>,
}

/// What a write stored: one entry per item, in the order given.
#[derive(Debug, Default)]
pub struct Written {
    pub inbound: Vec<Stored>,
    pub callbacks: Vec<Recorded>,
}

/// What the write returns: the status events it inserted (in insertion order), the message
/// rows the callbacks upserted, and the spool records whose fallback call it stored.
struct Output {
    event_sid: Vec<String>,
    event_status: Vec<String>,
    event_error_code: Vec<Option<String>>,
    event_dlr_done: Vec<Option<String>>,
    message_sid: Vec<String>,
    message_received_at: Vec<DateTime<Utc>>,
    created: Vec<bool>,
    status: Vec<Option<String>>,
    failure_records: Vec<String>,
}

/// What a batch asks of the write besides its items.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How far back the rules look at a contact's earlier replies (their longest limit).
    pub lookback: Duration,
    /// Queue new messages' media for the archive.
    pub archive_media: bool,
    /// Queue outbound messages first seen without a body for a read of their resource
    /// (`reconcile.enabled`).
    pub enrich: bool,
}

/// Twilio's error when it refuses to send to a recipient who unsubscribed (opted out).
const UNSUBSCRIBED: i32 = 21610;

/// Attempts that read and write without locking anything (the first may trust the writer's
/// memory instead of reading).
const OPTIMISTIC: usize = 2;
/// Attempts after those, each in a transaction that first locks the batch's conversation
/// rows, so no other writer can change them between the read and the write (only a
/// conversation created meanwhile can still fail the check, once). After these the write
/// reports [`StoreError::Conflict`].
const LOCKED: usize = 4;
/// How long a locked attempt's write waits for another transaction's lock before it gives
/// up and tries again (see [`read::lock`]): well below Postgres's default `deadlock_timeout`
/// of 1 s, well above the few milliseconds a batch's statement holds its locks.
const LOCKED_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// Days a write may create on the way (a batch from the past: a spool replay, backfill,
/// reconciliation), one per failed try.
const MISSING_DAYS: usize = 8;
/// How long making a missing day may wait for a lock while a webhook waits for its answer.
const CREATE_DAY_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Stores every item once, in one transaction, and returns what each got, in the order
/// given. `decide(i, facts)` chooses the reply to `inbound[i]`: once per new message, in
/// arrival order within each contact (again if the batch is read again). A second copy of
/// a SID in the batch gets the first's reply.
///
/// Two round trips whatever the batch size, nothing locked in between: one statement reads
/// what the rules need and which SIDs are stored; after the decisions, one statement writes
/// everything and commits. That write checks, under the row locks it takes, that each
/// conversation is the row that was read (same `created_at`) with the inbound count read
/// plus what the batch adds (every inbound message bumps it with its consent change, session
/// and reply); otherwise the statement rolls back and the batch is read and decided again,
/// after [`OPTIMISTIC`] attempts with its conversations locked first, so that writers busy
/// with one contact (an album, one webhook per photo) take turns instead of failing.
///
/// `memory` stands in for the read of each contact it holds as this writer left them; the
/// read is skipped when it holds them all and none of the batch's SIDs. The same check
/// guards it.
///
/// A callback for a SID that is also an inbound message of this batch (Twilio sends none)
/// is stored by a second write: one statement may touch a row only once.
pub async fn write(
    conn: &mut PgConnection,
    inbound: &[Inbound],
    callbacks: &[Callback],
    options: Options,
    memory: &mut Memory,
    mut decide: impl FnMut(usize, &Facts) -> Reply,
) -> Result<Written, StoreError> {
    memory.rules_look_back(options.lookback);
    super::partitions::ensure(
        conn,
        &mut memory.days,
        inbound
            .iter()
            .map(|m| m.at)
            .chain(callbacks.iter().map(|c| c.at)),
        CREATE_DAY_LOCK_TIMEOUT,
    )
    .await;
    let shared_sid = !inbound.is_empty() && !callbacks.is_empty() && {
        let sids: HashSet<&str> = inbound.iter().map(|m| m.msg.sid.as_str()).collect();
        callbacks.iter().any(|c| sids.contains(c.cb.sid.as_str()))
    };
    if shared_sid {
        let (none, outbound) = (StatusRows::new(&[]), StatusRows::new(callbacks));
        let first = attempts(conn, inbound, &none, options, memory, &mut decide).await?;
        let second = attempts(conn, &[], &outbound, options, memory, &mut decide).await?;
        return Ok(Written {
            inbound: first.inbound,
            callbacks: second.callbacks,
        });
    }
    let outbound = StatusRows::new(callbacks);
    attempts(conn, inbound, &outbound, options, memory, &mut decide).await
}

/// One write, read and decided again after a conflict (see [`OPTIMISTIC`], [`LOCKED`]).
async fn attempts(
    conn: &mut PgConnection,
    inbound: &[Inbound],
    outbound: &StatusRows<'_>,
    options: Options,
    memory: &mut Memory,
    decide: &mut impl FnMut(usize, &Facts) -> Reply,
) -> Result<Written, StoreError> {
    let mut attempt = 1;
    let mut days_made = 0;
    loop {
        let batch = Batch {
            inbound,
            outbound,
            options,
            trust_memory: attempt == 1,
            lock: attempt > OPTIMISTIC,
        };
        let result = if batch.lock {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            match store_once(&mut tx, &batch, memory, decide).await {
                Ok(written) => tx
                    .commit()
                    .await
                    .map(|()| written)
                    .map_err(StoreError::from),
                // Dropped: rolled back.
                Err(e) => Err(e),
            }
        } else {
            store_once(conn, &batch, memory, decide).await
        };
        match result {
            Err(e) if is_conflict(&e) && attempt < OPTIMISTIC + LOCKED => {
                tracing::debug!(
                    attempt,
                    "a batch's contact changed while it was decided; again"
                );
                attempt += 1;
            }
            // A row for a day with no partition: make the day and store the batch now, if
            // that can be done at once; otherwise the batch is unavailable (spooled).
            Err(e) if days_made < MISSING_DAYS && e.missing_partition().is_some() => {
                let Some(day) = e.missing_partition().map(|at| at.date_naive()) else {
                    return Err(e);
                };
                let made = super::partitions::create(conn, day, day, CREATE_DAY_LOCK_TIMEOUT);
                if let Err(cannot) = made.await {
                    tracing::warn!(%day, error = %cannot, "cannot make a missing day");
                    return Err(e);
                }
                tracing::debug!(%day, "made a missing day for a write");
                days_made += 1;
            }
            result => return result,
        }
    }
}

/// Another transaction got in the way: the check failed, Postgres chose this one as a
/// deadlock's or a serialization failure's victim, or a locked attempt stopped waiting for
/// a lock (55P03, see [`LOCKED_WAIT`]). Worth trying again.
fn is_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Conflict => true,
        StoreError::Unavailable(cause) => {
            matches!(
                cause.sqlstate().as_deref(),
                Some("40001" | "40P01" | "55P03")
            )
        }
        _ => false,
    }
}

/// One attempt's input.
struct Batch<'a> {
    inbound: &'a [Inbound],
    outbound: &'a StatusRows<'a>,
    options: Options,
    /// Whether the writer's memory may stand in for the read (not after a conflict).
    trust_memory: bool,
    /// Lock the batch's conversations before reading them (inside a transaction).
    lock: bool,
}

/// Which deliveries carry a SID first seen in the batch, and which are later copies.
struct Copies {
    /// The first delivery of each SID, in SID order (the order the write locks them in).
    firsts: Vec<usize>,
    /// For each later copy, the delivery it copies.
    copy_of: Vec<Option<usize>>,
}

impl Copies {
    fn new(batch: &[Inbound]) -> Self {
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        let mut copy_of = vec![None; batch.len()];
        for (i, item) in batch.iter().enumerate() {
            match first_of.get(item.msg.sid.as_str()) {
                Some(&first) => copy_of[i] = Some(first),
                None => {
                    first_of.insert(&item.msg.sid, i);
                }
            }
        }
        let mut firsts: Vec<usize> = first_of.into_values().collect();
        firsts.sort_unstable_by(|&a, &b| batch[a].msg.sid.cmp(&batch[b].msg.sid));
        Copies { firsts, copy_of }
    }
}

/// The decisions for a batch's new messages, and what they add to each contact.
struct Decided {
    /// New messages, in SID order.
    new: Vec<usize>,
    /// The TwiML chosen for each new message.
    twiml: Vec<Option<String>>,
    /// Whether that TwiML is recorded as its answer (not for a replay answered 503).
    answered: Vec<bool>,
    replies: ReplyRows,
}

async fn store_once(
    conn: &mut PgConnection,
    batch: &Batch<'_>,
    memory: &mut Memory,
    decide: &mut impl FnMut(usize, &Facts) -> Reply,
) -> Result<Written, StoreError> {
    let inbound = batch.inbound;
    let copies = Copies::new(inbound);
    let reads = Reads::new(inbound, &copies.firsts, batch.options.lookback);
    let keys = &reads.keys;
    if batch.lock {
        read::lock(conn, &reads, LOCKED_WAIT).await?;
    }
    let recalled = if batch.trust_memory {
        memory.recall(inbound, &copies.firsts, keys)
    } else {
        Recalled::nothing(keys.len())
    };
    // Forgotten until this batch is stored: if the write fails, nobody knows what it left.
    memory.forget(keys);
    let (mut contacts, stored_rows): (Vec<Contact>, _) = if recalled.is_complete() {
        (
            recalled.contacts.into_iter().flatten().collect(),
            Vec::new(),
        )
    } else {
        // A redelivery among remembered contacts reads only the SIDs.
        let needed: Vec<bool> = recalled.contacts.iter().map(Option::is_none).collect();
        let (read, stored) = read::read(conn, &reads, &needed, batch.options.lookback).await?;
        let contacts = recalled
            .contacts
            .into_iter()
            .zip(read)
            .map(|(remembered, read)| remembered.unwrap_or(read))
            .collect();
        (contacts, stored)
    };
    let stored: HashMap<&str, &read::StoredSid> =
        stored_rows.iter().map(|s| (s.sid.as_str(), s)).collect();
    let decided = decide_new(batch, &copies, &stored, keys, &mut contacts, decide);

    let failures = FailureRows::new(inbound);
    let mut written = Written::default();
    let mut recorded_failures = HashSet::new();
    if !decided.new.is_empty() || !batch.outbound.batch.is_empty() || !failures.is_empty() {
        let rows = statement::Rows {
            messages: &MessageRows::new(inbound, &decided.new),
            updates: &ContactUpdates::new(keys, &contacts, inbound),
            replies: &decided.replies,
            outbound: batch.outbound,
            failures: &failures,
            archive_media: batch.options.archive_media,
            enrich: batch.options.enrich,
        };
        let result = statement::execute(conn, &rows).await?;
        written.callbacks = batch.outbound.recorded(&result);
        recorded_failures = result.failure_records.into_iter().collect();
    }
    settle_outbound_creation(keys, &mut contacts, batch.outbound);
    // A callback Twilio failed with 21610 (the recipient unsubscribed) opts its contact out
    // in SQL: the next batch reads that contact.
    let refused: Vec<(&str, &str)> = batch
        .outbound
        .batch
        .iter()
        .filter(|c| c.cb.error_code == Some(UNSUBSCRIBED))
        .map(|c| (c.cb.from.expose(), c.cb.to.expose()))
        .collect();
    memory.forget(&refused);
    // A message found late may be older than the contact's state (its consent change can
    // lose to a later one in SQL): the next batch reads the contact instead.
    if !inbound.iter().any(|item| item.origin.is_api()) {
        memory.remember(
            keys,
            contacts,
            &copies.firsts,
            inbound,
            batch.options.lookback,
        );
    }
    written.inbound = inbound
        .iter()
        .enumerate()
        .map(|(i, item)| Stored {
            received: received(i, &copies, &decided, &stored, item),
            // A stored SID's day is the directory's; a new one's is its first copy's arrival.
            received_at: stored
                .get(item.msg.sid.as_str())
                .map_or_else(|| inbound[copies.copy_of[i].unwrap_or(i)].at, |s| s.day),
            failure_recorded: item.failure.is_some()
                && item
                    .spool_record
                    .as_ref()
                    .is_none_or(|id| recorded_failures.contains(id)),
        })
        .collect();
    Ok(written)
}

/// Applies each new message to its contact in arrival order and asks for its reply.
fn decide_new(
    batch: &Batch<'_>,
    copies: &Copies,
    stored: &HashMap<&str, &read::StoredSid>,
    keys: &[(&str, &str)],
    contacts: &mut [Contact],
    decide: &mut impl FnMut(usize, &Facts) -> Reply,
) -> Decided {
    let inbound = batch.inbound;
    let index: HashMap<(&str, &str), usize> =
        keys.iter().enumerate().map(|(k, &key)| (key, k)).collect();
    let new: Vec<usize> = copies
        .firsts
        .iter()
        .copied()
        .filter(|&i| !stored.contains_key(inbound[i].msg.sid.as_str()))
        .collect();
    // Arrival order: the order each contact's messages are applied in.
    let mut arrivals = new.clone();
    arrivals.sort_by_key(|&i| (inbound[i].at, i));
    let mut twiml: Vec<Option<String>> = vec![None; inbound.len()];
    let mut answered = vec![false; inbound.len()];
    let mut replies = ReplyRows::default();
    for &i in &arrivals {
        let item = &inbound[i];
        let c = &mut contacts[index[&(item.msg.to.expose(), item.msg.from.expose())]];
        let facts = c.receive(item.at, batch.options.lookback);
        c.latest = i;
        if facts.new_session
            && let Some(session) = c.sessions.last_mut()
        {
            session.opened_by = Some(i);
        }
        let reply = decide(i, &facts);
        if let Some((state, cause)) = &reply.consent {
            c.consent = *state;
            c.consent_change = Some((*state, i));
            c.consent_events.push((*state, i, cause.clone()));
        }
        if reply.store {
            c.recent
                .extend(reply.rule.iter().map(|rule| (rule.clone(), item.at)));
            replies.push(&item.msg.sid, &reply, item.at);
        }
        answered[i] = reply.store;
        twiml[i] = Some(reply.twiml);
    }
    Decided {
        new,
        twiml,
        answered,
        replies,
    }
}

/// After the write, for the writer's memory: a conversation row this batch created took the
/// time of the contact's earliest message, outbound ones included. (A wrong guess costs the
/// next batch of that contact one attempt: the check compares it and the batch reads.)
fn settle_outbound_creation(
    keys: &[(&str, &str)],
    contacts: &mut [Contact],
    outbound: &StatusRows<'_>,
) {
    for (key, c) in keys.iter().zip(contacts.iter_mut()) {
        if let (None, true, Some(&at)) = (c.created, c.changed, outbound.first_at.get(key)) {
            c.created = Some(c.created_at().min(at));
        }
    }
}

/// What delivery `i` got: its own new reply, the reply of the copy it repeats (none when
/// that one's answer is not recorded: a replay of a request answered 503), or the reply on
/// record for a SID stored before.
fn received(
    i: usize,
    copies: &Copies,
    decided: &Decided,
    stored: &HashMap<&str, &read::StoredSid>,
    item: &Inbound,
) -> Received {
    let first = copies.copy_of[i].unwrap_or(i);
    match (&decided.twiml[first], copies.copy_of[i]) {
        (Some(twiml), None) => Received::New {
            twiml: twiml.clone(),
        },
        (Some(twiml), Some(_)) => Received::Duplicate {
            twiml: decided.answered[first].then(|| twiml.clone()),
        },
        (None, _) => Received::Duplicate {
            twiml: stored
                .get(item.msg.sid.as_str())
                .and_then(|s| s.twiml.clone()),
        },
    }
}
