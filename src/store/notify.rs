//! `NOTIFY twilio_receiver`, sent after each commit by a background task, in batches, outside
//! the transactions that store webhooks.
//!
//! Why not inside them: Postgres takes a global lock at the commit of any transaction that
//! has called NOTIFY and holds it through the WAL flush, so a NOTIFY in every webhook's
//! transaction serialises all commits (measured on the benchmark machine with pgbench, 32
//! clients: 7,780 insert-and-upsert commits/s without it, 742 with it). Sent afterwards, many
//! at a time and with `synchronous_commit` off (notifications are not durable anyway), one
//! lock covers a whole batch and no fsync happens under it.
//!
//! A notification follows its commit by a few milliseconds (5 ms gathering others, then
//! its statement); one can be lost if the process dies in between, or if listeners fall so
//! far behind that the queue fills. Listeners use it as a wake-up and catch up by query, as
//! with any NOTIFY.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How many notifications may wait; beyond it new ones are dropped (and logged).
const QUEUE: usize = 65_536;
/// Notifications per statement.
const BATCH: usize = 1_024;
/// How long the first notification of a statement waits for others to join it.
const GATHER: Duration = Duration::from_millis(5);

/// A handle for announcing commits.
#[derive(Clone, Debug)]
pub struct Notifier {
    queue: mpsc::Sender<Queued>,
}

/// What a notification announces (its `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message was stored (inbound; outbound ones arrive as `Status`).
    Message,
    /// A status callback's event was stored.
    Status,
    /// A fallback call was stored.
    Failure,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Status => "status",
            Kind::Failure => "failure",
        }
    }
}

#[derive(Debug)]
enum Queued {
    Notice(Kind, String, Option<DateTime<Utc>>),
    /// Send everything queued before it now, then answer.
    Flush(oneshot::Sender<()>),
}

impl Notifier {
    /// Starts the sending task on the current tokio runtime; it ends when every handle is
    /// dropped, after sending what is queued, or with the runtime (see [`Notifier::flush`]).
    pub fn spawn(pool: PgPool) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(pool, pending));
        Notifier { queue }
    }

    /// Announces `{"kind": kind, "message_sid": sid, "received_at": day}`; call it after
    /// the commit. `received_at` is the message's, as the write knew it (without it, the
    /// notification looks it up).
    pub fn send(&self, kind: Kind, message_sid: &str, received_at: Option<DateTime<Utc>>) {
        if self
            .queue
            .try_send(Queued::Notice(kind, message_sid.to_owned(), received_at))
            .is_err()
        {
            tracing::warn!(
                kind = kind.as_str(),
                "notification queue full; a NOTIFY was dropped"
            );
        }
    }

    /// Sends what is queued so far without waiting for more, and returns once it is sent or
    /// `limit` has passed: at shutdown, before the runtime (and the task) goes.
    pub async fn flush(&self, limit: Duration) {
        let (done, sent) = oneshot::channel();
        let _ = tokio::time::timeout(limit, async {
            if self.queue.send(Queued::Flush(done)).await.is_ok() {
                let _ = sent.await;
            }
        })
        .await;
    }
}

async fn send_batches(pool: PgPool, mut pending: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut batch, BATCH).await > 0 {
        let is_flush = |q: &Queued| matches!(q, Queued::Flush(_));
        if !batch.iter().any(is_flush) {
            // Under load every commit brings notifications: gathering them for a moment
            // sends one statement for several commits instead of one for each.
            tokio::time::sleep(GATHER).await;
            while batch.len() < BATCH {
                let Ok(queued) = pending.try_recv() else {
                    break;
                };
                let flush = is_flush(&queued);
                batch.push(queued);
                if flush {
                    break;
                }
            }
        }
        let (mut kinds, mut sids, mut days) = (Vec::new(), Vec::new(), Vec::new());
        let mut flushed = Vec::new();
        for queued in batch.drain(..) {
            match queued {
                Queued::Notice(kind, sid, day) => {
                    kinds.push(kind.as_str());
                    sids.push(sid);
                    days.push(day);
                }
                Queued::Flush(done) => flushed.push(done),
            }
        }
        if !sids.is_empty() {
            send(&pool, &kinds, &sids, &days).await;
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

async fn send(pool: &PgPool, kinds: &[&str], sids: &[String], days: &[Option<DateTime<Utc>>]) {
    let sent = sqlx::query_scalar!(
        r#"
            -- With the message's day (its partitions), so a listener reads one day. The
            -- writer knows it: looked up here (2 µs a notification) only when it did not.
            select count(pg_notify('twilio_receiver',
                                   json_build_object('kind', n.kind, 'message_sid', n.sid,
                                                     'received_at',
                                                     coalesce(n.day,
                                                              (select k.received_at
                                                               from message_keys k
                                                               where k.message_sid = n.sid))
                                                    )::text))
                   as "sent!"
            from (select set_config('synchronous_commit', 'off', true)) as async_commit,
                 unnest($1::text[], $2::text[], $3::timestamptz[]) with ordinality
                     as n (kind, sid, day, position)
            "#,
        kinds as &[&str],
        sids,
        days as &[Option<DateTime<Utc>>],
    )
    .fetch_one(pool)
    .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, dropped = sids.len(), "could not send notifications");
    }
}
