//! Group commit, the moving parts: requests queue their webhook here and wait; a few writer
//! tasks each take everything queued for them (up to `database.group_size`), store it in one
//! transaction (`store::group`), and answer every request after that commit.
//!
//! There is no timer: a writer takes what is queued the moment it is free. Under light load
//! a webhook finds its writer idle and is stored at once, alone; under heavy load webhooks
//! queue while the writer is busy, and its next batch takes them all. Batches grow with the
//! load, and no webhook waits longer than the transaction before its own. (A timer that
//! waited about a millisecond for stragglers was measured: batches grew, throughput did not,
//! and p99 got worse.)
//!
//! Each writer owns a share of the conversations, by business and contact: an inbound
//! message by its `To` and `From`, a status callback by its `From` and `To` (so every callback
//! of a SID goes to the same writer). Two batches in flight never want the same row, so they
//! never wait for each other's commit. (Sharing rows, they would: a batch holds its
//! conversation locks until it commits, and most batches share some contact.) A batch holds
//! both kinds and stores them in one statement, so a mixed load pays one round trip and one
//! commit per batch, not one per kind.
//!
//! Waiting for a writer to take a webhook is bounded like waiting for a pooled connection
//! (`database.acquire_timeout_ms`): a writer stuck on a stalled or restarting database must
//! not hold the requests queued behind it longer than the pool would have. They answer 503
//! (and are spooled) as they would have without group commit.
//!
//! A batch that fails for any reason other than the database being unavailable is retried
//! one webhook at a time on the ordinary path, so one bad webhook (a value too large to
//! store) or a deadlock with another replica fails only itself.

use crate::{
    metrics::Metrics,
    reply::Replier,
    routes::inbound::live_reply,
    rules::Rules,
    store::{
        self, StoreError,
        group::{Callback, Live, Memory},
        inbound::{Delivery, Received},
        status::Recorded,
    },
};
use sqlx::{PgPool, Postgres, pool::PoolConnection};
use std::{
    hash::{Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// The queues of the writer tasks. Cloning shares them; the tasks end when every clone is
/// dropped, after storing what was queued.
#[derive(Clone, Debug)]
pub struct Writer {
    /// One queue per writer task.
    queues: Arc<[mpsc::Sender<Queued>]>,
    metrics: Arc<Metrics>,
    /// The longest a webhook waits for a writer to take it.
    acquire_timeout: Duration,
}

/// An inbound message waiting for its batch, with what deciding its reply needs.
struct InboundJob {
    live: Live,
    /// The public base URL the request was signed for (reply `action` URLs start with it).
    base: String,
    /// The rules in force when the request arrived.
    rules: Arc<Rules>,
    done: oneshot::Sender<Result<Received, StoreError>>,
    /// Set when a writer takes the job into a batch.
    taken: Arc<AtomicBool>,
}

struct StatusJob {
    callback: Callback,
    done: oneshot::Sender<Result<Recorded, StoreError>>,
    taken: Arc<AtomicBool>,
}

/// What a writer's queue holds. (By value: boxing the larger variant would cost an
/// allocation per webhook to save queue slots that are few and short-lived.)
#[allow(clippy::large_enum_variant)]
enum Queued {
    Inbound(InboundJob),
    Status(StatusJob),
}

/// What a writer needs besides its queue.
#[derive(Clone)]
pub struct Context {
    pub db: PgPool,
    pub replier: Arc<Replier>,
    pub metrics: Arc<Metrics>,
    pub archive_media: bool,
}

/// How writers form batches.
#[derive(Clone, Copy, Debug)]
pub struct Grouping {
    /// Writer tasks, each with its share of the conversations.
    pub writers: usize,
    /// Most webhooks in one batch.
    pub size: usize,
}

impl Writer {
    /// Starts `writers` tasks on the current runtime.
    pub fn spawn(cx: Context, grouping: Grouping) -> Self {
        let Grouping { writers, size } = grouping;
        let metrics = cx.metrics.clone();
        let queues = (0..writers)
            .map(|_| {
                // Room for a few batches; beyond it senders wait.
                let (queue, jobs) = mpsc::channel(size * 4);
                tokio::spawn(run(jobs, size, cx.clone()));
                queue
            })
            .collect();
        Writer {
            queues,
            metrics,
            acquire_timeout: cx.db.options().get_acquire_timeout(),
        }
    }

    /// Stores a live inbound message with its batch; the reply is decided by `rules`.
    pub async fn receive(
        &self,
        live: Live,
        base: String,
        rules: Arc<Rules>,
    ) -> Result<Received, StoreError> {
        let _waiting = Waiting::new(&self.metrics);
        let (done, result) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let job = InboundJob {
            live,
            base,
            rules,
            done,
            taken: taken.clone(),
        };
        let writer = self.share(job.live.msg.to.expose(), job.live.msg.from.expose());
        self.queues[writer]
            .send(Queued::Inbound(job))
            .await
            .map_err(|_| gone())?;
        self.wait(result, &taken).await
    }

    /// Records a status callback with its batch.
    pub async fn record(&self, callback: Callback) -> Result<Recorded, StoreError> {
        let _waiting = Waiting::new(&self.metrics);
        let (done, result) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        // Outbound: `From` is the business, `To` the contact.
        let writer = self.share(callback.cb.from.expose(), callback.cb.to.expose());
        self.queues[writer]
            .send(Queued::Status(StatusJob {
                callback,
                done,
                taken: taken.clone(),
            }))
            .await
            .map_err(|_| gone())?;
        self.wait(result, &taken).await
    }

    /// The job's result. Not taken by a writer within the pool's acquire timeout, it gives
    /// up (the writer then skips it) with the error a request waiting for a pooled
    /// connection would get.
    async fn wait<R>(
        &self,
        mut result: oneshot::Receiver<Result<R, StoreError>>,
        taken: &AtomicBool,
    ) -> Result<R, StoreError> {
        match tokio::time::timeout(self.acquire_timeout, &mut result).await {
            Ok(r) => r.map_err(|_| gone())?,
            Err(_) if !taken.load(Ordering::Acquire) => {
                Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut))
            }
            Err(_) => result.await.map_err(|_| gone())?,
        }
    }
}

/// Counts a webhook in `group_commit_waiting` until dropped, however its request ends.
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.group_waiting.inc();
        Waiting(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.group_waiting.dec();
    }
}

/// The writers stopped (the runtime is shutting down): as retryable as a closed pool.
fn gone() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

impl Writer {
    /// Which writer owns the conversation of `business` and `contact`: the same one for as
    /// long as the process runs.
    fn share(&self, business: &str, contact: &str) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (business, contact).hash(&mut hasher);
        (hasher.finish() % self.queues.len() as u64) as usize
    }
}

/// How long a writer keeps its connection once its queue is empty: far longer than the
/// gaps between batches under load, far shorter than anything a person would notice.
const HOLD: Duration = Duration::from_millis(50);

/// One writer: once something is queued, takes a pooled connection, then whatever is
/// queued by then, up to `size`, and stores it. The connection comes first so that a
/// webhook's wait for it counts in its bounded wait to be taken ([`Writer::wait`]), as it
/// would without group commit, instead of following it.
///
/// A writer keeps its connection for the next batch while webhooks keep coming, and gives
/// it back once its queue has stayed empty for [`HOLD`], or at once when the pool has no
/// other connection to give (so a small pool is never held by idle writers). Taking a
/// connection again costs a ping round trip (sqlx tests each connection it hands out) and
/// usually lands on another backend with cold caches; under load a writer's queue is empty
/// for a few hundred microseconds after most batches (its webhooks are answered and their
/// next ones are on their way), so giving it back whenever the queue was empty paid that on
/// most batches (BENCHMARKS.md, 2026-12-04 second session).
///
/// Besides its connection, a writer carries from one batch to the next what it remembers of
/// its contacts; a batch that panics leaves that fresh.
async fn run(mut queue: mpsc::Receiver<Queued>, size: usize, cx: Context) {
    let mut held = None;
    let mut memory = Memory::default();
    loop {
        let mut jobs = Vec::with_capacity(size);
        let received = match held {
            Some(_) => match tokio::time::timeout(HOLD, queue.recv_many(&mut jobs, 1)).await {
                Ok(received) => received,
                Err(_) => {
                    held = None;
                    queue.recv_many(&mut jobs, 1).await
                }
            },
            None => queue.recv_many(&mut jobs, 1).await,
        };
        if received == 0 {
            return;
        }
        let conn = match held.take() {
            Some(conn) => Ok(conn),
            None => cx.db.acquire().await,
        };
        // Without a connection only the first job fails: those queued behind it keep their
        // own wait, and the next attempt.
        while conn.is_ok() && jobs.len() < size {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A task of its own, so that a bug that panics fails this batch (its requests get
        // 503 and are spooled) rather than ending the writer and every batch after it.
        // Boxed once here: the batch's future is large, and tokio moves it several times.
        let batch = Box::pin(store_batch(
            cx.clone(),
            conn,
            jobs,
            std::mem::take(&mut memory),
        ));
        match tokio::spawn(batch).await {
            Ok((conn, kept)) => {
                // Kept while webhooks are queued, as ever; kept idle only while the pool
                // has room, so that a pool no larger than the writers never waits on one.
                held = conn.filter(|_| !queue.is_empty() || pool_has_room(&cx.db));
                memory = kept;
            }
            Err(e) => tracing::error!(error = %e, "a group-commit batch panicked"),
        }
    }
}

/// Whether someone else could take a connection now without waiting for one of ours.
fn pool_has_room(db: &PgPool) -> bool {
    db.num_idle() > 0 || db.size() < db.options().get_max_connections()
}

/// Whether a connection is still worth keeping after `e`: yes when Postgres itself answered
/// with an error (the connection is in a clean state between autocommit statements), no
/// when the connection failed.
fn connection_survives(e: &StoreError) -> bool {
    matches!(e.sqlx(), sqlx::Error::Database(_))
}

impl Queued {
    /// Its request gave up (its deadline passed, so it was spooled): it needs no write.
    fn abandoned(&self) -> bool {
        match self {
            Queued::Inbound(job) => job.done.is_closed(),
            Queued::Status(job) => job.done.is_closed(),
        }
    }

    /// Marks it taken into a batch that has its connection.
    fn take(&self) {
        let taken = match self {
            Queued::Inbound(job) => &job.taken,
            Queued::Status(job) => &job.taken,
        };
        taken.store(true, Ordering::Release);
    }

    fn fail(self, e: StoreError) {
        // A request that gave up meanwhile is not waiting for the error.
        match self {
            Queued::Inbound(job) => drop(job.done.send(Err(e))),
            Queued::Status(job) => drop(job.done.send(Err(e))),
        }
    }
}

/// Starts a batch: drops abandoned jobs, fails the rest if there is no connection, else
/// marks them taken and returns the connection. `None`: nothing to store (with no job left,
/// the connection goes back to the pool).
fn start(
    conn: Result<PoolConnection<Postgres>, sqlx::Error>,
    jobs: &mut Vec<Queued>,
    metrics: &Metrics,
) -> Option<PoolConnection<Postgres>> {
    jobs.retain(|job| !job.abandoned());
    if jobs.is_empty() {
        return None;
    }
    match conn {
        Ok(conn) => {
            jobs.iter().for_each(Queued::take);
            metrics.group_size.observe(jobs.len() as f64);
            Some(conn)
        }
        Err(e) => {
            let e = StoreError::from(e);
            jobs.drain(..).for_each(|job| job.fail(shared(&e)));
            None
        }
    }
}

async fn store_batch(
    cx: Context,
    conn: Result<PoolConnection<Postgres>, sqlx::Error>,
    mut jobs: Vec<Queued>,
    mut memory: Memory,
) -> (Option<PoolConnection<Postgres>>, Memory) {
    let Some(mut conn) = start(conn, &mut jobs, &cx.metrics) else {
        return (None, memory);
    };
    let (mut lives, mut pending) = (Vec::new(), Vec::new());
    let (mut callbacks, mut recording) = (Vec::new(), Vec::new());
    for job in jobs {
        match job {
            Queued::Inbound(job) => {
                lives.push(job.live);
                pending.push((job.base, job.rules, job.done));
            }
            Queued::Status(job) => {
                callbacks.push(job.callback);
                recording.push(job.done);
            }
        }
    }
    let lookback = pending
        .iter()
        .map(|(_, rules, _)| rules.lookback())
        .max()
        .unwrap_or_default();
    let result = store::group::store_many(
        &mut conn,
        &lives,
        &callbacks,
        lookback,
        cx.archive_media,
        &mut memory,
        |i, facts| {
            let (base, rules, _) = &pending[i];
            live_reply(
                &cx.replier,
                &cx.metrics,
                rules,
                &lives[i].msg,
                facts,
                base,
                false,
            )
        },
    )
    .await;
    let keep = result.as_ref().err().is_none_or(connection_survives);
    let batch = lives.len() + callbacks.len();
    match result {
        Ok((received, recorded)) => {
            for ((_, _, done), received) in pending.into_iter().zip(received) {
                let _ = done.send(Ok(received));
            }
            for (done, recorded) in recording.into_iter().zip(recorded) {
                let _ = done.send(Ok(recorded));
            }
        }
        Err(e) if !retry_alone(&e) => {
            tracing::warn!(error = %e, batch, "group commit failed");
            for (_, _, done) in pending {
                let _ = done.send(Err(shared(&e)));
            }
            for done in recording {
                let _ = done.send(Err(shared(&e)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batch, "group commit failed; storing its webhooks one at a time");
            receive_alone(&cx, &lives, pending).await;
            record_alone(&cx, callbacks, recording).await;
        }
    }
    (keep.then_some(conn), memory)
}

type Pending = (
    String,
    Arc<Rules>,
    oneshot::Sender<Result<Received, StoreError>>,
);

/// The inbound messages of a failed batch, each in its own transaction.
async fn receive_alone(cx: &Context, lives: &[Live], pending: Vec<Pending>) {
    for (live, (base, rules, done)) in lives.iter().zip(pending) {
        if done.is_closed() {
            continue;
        }
        let delivery = Delivery {
            msg: &live.msg,
            params: live.params.clone(),
            at: live.at,
            failure: None,
            lookback: rules.lookback(),
            archive_media: cx.archive_media,
            spool_record: None,
        };
        let stored = store::inbound::receive(&cx.db, delivery, |facts| {
            live_reply(
                &cx.replier,
                &cx.metrics,
                &rules,
                &live.msg,
                facts,
                &base,
                false,
            )
        })
        .await;
        let _ = done.send(stored.map(|s| s.received));
    }
}

/// The status callbacks of a failed batch, each in its own transaction.
async fn record_alone(
    cx: &Context,
    callbacks: Vec<Callback>,
    recording: Vec<oneshot::Sender<Result<Recorded, StoreError>>>,
) {
    for (c, done) in callbacks.into_iter().zip(recording) {
        if done.is_closed() {
            continue;
        }
        let recorded = store::status::record(&cx.db, &c.cb, c.link.as_ref(), c.params, c.at).await;
        let _ = done.send(recorded);
    }
}

/// Whether each webhook of a failed batch is worth trying on its own: yes unless the
/// database itself is away (then each would fail the same way, only later). A deadlock or
/// serialization failure is retryable alone.
fn retry_alone(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        StoreError::Unavailable(_) => false,
        StoreError::TooLarge(_) | StoreError::Other(_) => true,
    }
}

/// The batch's error, for each of its requests (a `sqlx::Error` cannot be cloned): same
/// class, so each request spools or answers 503 as it would have alone.
fn shared(e: &StoreError) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Protocol(format!(
        "group commit failed: {}",
        e.sqlx()
    )))
}
