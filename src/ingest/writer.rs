//! Group commit: requests queue their webhook here; a few writer tasks each take everything
//! queued for them (up to `database.group_size`), store it with one write
//! ([`store::write`]), and answer every request after that commit. No timer: batches grow
//! with the load. Each writer owns a share of the conversations (business and contact), so
//! two batches in flight never wait on each other's rows. Waiting to be taken is bounded
//! like waiting for a pooled connection. A batch that fails for any reason but an
//! unavailable database is written again one webhook at a time, so one bad webhook fails
//! only itself. With group commit off, each webhook is a batch of one in its own task.

use super::decide::Decider;
use crate::{
    metrics::Metrics,
    reply::Replier,
    store::{
        StoreError,
        write::{self, Callback, Inbound, Memory, Options, Recorded, Stored},
    },
};
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use std::{
    hash::{Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// Why a webhook handed to the writer was not written.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The write failed.
    Store(StoreError),
    /// No writer took it within the pool's acquire timeout (a stalled database).
    NotTaken,
    /// The writer dropped it unstored: the runtime is shutting down, or its batch panicked.
    Gone,
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e)
    }
}

/// How writers form batches.
#[derive(Clone, Copy, Debug)]
pub struct Grouping {
    /// Writer tasks, each with its share of the conversations.
    pub writers: usize,
    /// Most webhooks in one batch.
    pub size: usize,
}

/// What writing needs besides the webhooks.
#[derive(Clone)]
pub(super) struct Context {
    pub db: PgPool,
    pub replier: Arc<Replier>,
    pub metrics: Arc<Metrics>,
    pub archive_media: bool,
    pub enrich: bool,
}

/// The writer tasks' queues (none with group commit off). Cloning shares them; the tasks
/// end when every clone is dropped, after storing what was queued.
#[derive(Clone)]
pub(super) struct Writer {
    queues: Arc<[mpsc::Sender<Job>]>,
    cx: Context,
    /// The longest a webhook waits for a writer to take it.
    acquire_timeout: Duration,
    /// With group commit off: the days (partitions) known to exist, shared by the requests
    /// (each writer task keeps its own in its memory).
    days: Arc<std::sync::Mutex<std::collections::BTreeSet<chrono::NaiveDate>>>,
}

/// A webhook waiting for its batch, and the request waiting for its result. (By value:
/// boxing the larger variant would cost an allocation per webhook to save queue slots that
/// are few and short-lived.)
#[allow(clippy::large_enum_variant)]
enum Job {
    Inbound(Waiter<(Inbound, Decider), Stored>),
    Status(Waiter<Callback, Recorded>),
}

struct Waiter<T, R> {
    item: T,
    done: oneshot::Sender<Result<R, StoreError>>,
    /// Set when a writer takes the job into a batch.
    taken: Arc<AtomicBool>,
}

impl Writer {
    /// Starts `grouping.writers` tasks on the current runtime; none without grouping.
    pub(super) fn start(cx: Context, grouping: Option<Grouping>) -> Self {
        let queues = grouping.map_or_else(Vec::new, |Grouping { writers, size }| {
            (0..writers)
                .map(|_| {
                    // Room for a few batches; beyond it senders wait.
                    let (queue, jobs) = mpsc::channel(size * 4);
                    tokio::spawn(run(jobs, size, cx.clone()));
                    queue
                })
                .collect()
        });
        Writer {
            queues: queues.into(),
            acquire_timeout: cx.db.options().get_acquire_timeout(),
            cx,
            days: Arc::default(),
        }
    }

    /// Stores an inbound delivery with its batch; its reply is decided by `decider`.
    pub(super) async fn receive(
        &self,
        item: Inbound,
        decider: Decider,
    ) -> Result<Stored, WriteError> {
        if self.queues.is_empty() {
            let written = Box::pin(self.alone(&[item], &[decider], &[])).await?;
            return written.inbound.into_iter().next().ok_or(WriteError::Gone);
        }
        let share = self.share(item.msg.to.expose(), item.msg.from.expose());
        self.submit(share, Job::Inbound, (item, decider)).await
    }

    /// Records a status callback with its batch.
    pub(super) async fn record(&self, callback: Callback) -> Result<Recorded, WriteError> {
        if self.queues.is_empty() {
            let written = Box::pin(self.alone(&[], &[], &[callback])).await?;
            return written.callbacks.into_iter().next().ok_or(WriteError::Gone);
        }
        // Outbound: `From` is the business, `To` the contact.
        let share = self.share(callback.cb.from.expose(), callback.cb.to.expose());
        self.submit(share, Job::Status, callback).await
    }

    /// A batch of one on a pooled connection, in the caller's task (group commit off).
    async fn alone(
        &self,
        inbound: &[Inbound],
        deciders: &[Decider],
        callbacks: &[Callback],
    ) -> Result<write::Written, WriteError> {
        let mut conn = self.cx.db.acquire().await.map_err(StoreError::from)?;
        let days = || {
            self.days
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let mut memory = Memory::with_days(days().clone());
        let cx = &self.cx;
        let written = write_with(&mut conn, cx, inbound, deciders, callbacks, &mut memory).await;
        days().extend(memory.days());
        Ok(written?)
    }

    /// Queues `item` for writer `share` and waits for its result. Not taken by a writer
    /// within the pool's acquire timeout, it gives up (the writer then skips it).
    async fn submit<T, R>(
        &self,
        share: usize,
        job: impl FnOnce(Waiter<T, R>) -> Job,
        item: T,
    ) -> Result<R, WriteError> {
        let _waiting = Waiting::new(&self.cx.metrics);
        let (done, mut result) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let waiter = Waiter {
            item,
            done,
            taken: taken.clone(),
        };
        self.queues[share]
            .send(job(waiter))
            .await
            .map_err(|_| WriteError::Gone)?;
        let result = match tokio::time::timeout(self.acquire_timeout, &mut result).await {
            Ok(result) => result,
            Err(_) if !taken.load(Ordering::Acquire) => return Err(WriteError::NotTaken),
            Err(_) => result.await,
        };
        Ok(result.map_err(|_| WriteError::Gone)??)
    }

    /// Which writer owns the conversation of `business` and `contact`: the same one for as
    /// long as the process runs.
    fn share(&self, business: &str, contact: &str) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (business, contact).hash(&mut hasher);
        (hasher.finish() % self.queues.len() as u64) as usize
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

/// How long a writer keeps its connection once its queue is empty: far longer than the
/// gaps between batches under load, far shorter than anything a person would notice.
const HOLD: Duration = Duration::from_millis(50);

/// One writer: once something is queued, takes a pooled connection, then whatever is
/// queued by then, up to `size`, and stores it. The connection comes first so that a
/// webhook's wait for it counts in its bounded wait to be taken ([`Writer::submit`]).
///
/// A writer keeps its connection for the next batch while webhooks keep coming, and gives
/// it back once its queue has stayed empty for [`HOLD`], or at once when the pool has no
/// other connection to give (so a small pool is never held by idle writers): taking one
/// again costs sqlx's ping round trip and usually lands on another backend with cold caches.
///
/// Besides its connection, a writer carries from one batch to the next what it remembers of
/// its contacts; a batch that panics leaves that fresh.
async fn run(mut queue: mpsc::Receiver<Job>, size: usize, cx: Context) {
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
            None => cx.db.acquire().await.map_err(StoreError::from),
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
                // Kept while webhooks are queued; kept idle only while the pool has room,
                // so that a pool no larger than the writers never waits on one.
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

impl Job {
    /// Its request gave up (its deadline passed, so it was spooled): it needs no write.
    fn abandoned(&self) -> bool {
        match self {
            Job::Inbound(w) => w.done.is_closed(),
            Job::Status(w) => w.done.is_closed(),
        }
    }

    /// Marks it taken into a batch that has its connection.
    fn take(&self) {
        let taken = match self {
            Job::Inbound(w) => &w.taken,
            Job::Status(w) => &w.taken,
        };
        taken.store(true, Ordering::Release);
    }

    fn fail(self, e: StoreError) {
        // A request that gave up meanwhile is not waiting for the error.
        match self {
            Job::Inbound(w) => drop(w.done.send(Err(e))),
            Job::Status(w) => drop(w.done.send(Err(e))),
        }
    }
}

/// A batch split by kind: the items to write, and who waits for each result.
#[derive(Default)]
struct Split {
    inbound: Vec<Inbound>,
    deciders: Vec<Decider>,
    inbound_done: Vec<oneshot::Sender<Result<Stored, StoreError>>>,
    callbacks: Vec<Callback>,
    callbacks_done: Vec<oneshot::Sender<Result<Recorded, StoreError>>>,
}

/// Starts a batch: drops abandoned jobs, fails the rest if there is no connection, else
/// marks them taken and returns the connection with the jobs by kind. `None`: nothing to
/// store (with no job left, the connection goes back to the pool).
fn start(
    conn: Result<PoolConnection<Postgres>, StoreError>,
    mut jobs: Vec<Job>,
    metrics: &Metrics,
) -> Option<(PoolConnection<Postgres>, Split)> {
    jobs.retain(|job| !job.abandoned());
    if jobs.is_empty() {
        return None;
    }
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            jobs.into_iter().for_each(|job| job.fail(e.clone()));
            return None;
        }
    };
    metrics.group_size.observe(jobs.len() as f64);
    let mut split = Split::default();
    for job in jobs {
        job.take();
        match job {
            Job::Inbound(w) => {
                let (item, decider) = w.item;
                split.inbound.push(item);
                split.deciders.push(decider);
                split.inbound_done.push(w.done);
            }
            Job::Status(w) => {
                split.callbacks.push(w.item);
                split.callbacks_done.push(w.done);
            }
        }
    }
    Some((conn, split))
}

async fn store_batch(
    cx: Context,
    conn: Result<PoolConnection<Postgres>, StoreError>,
    jobs: Vec<Job>,
    mut memory: Memory,
) -> (Option<PoolConnection<Postgres>>, Memory) {
    let Some((mut conn, split)) = start(conn, jobs, &cx.metrics) else {
        return (None, memory);
    };
    let (inbound, deciders, callbacks) = (&split.inbound, &split.deciders, &split.callbacks);
    let result = write_with(&mut conn, &cx, inbound, deciders, callbacks, &mut memory).await;
    let batch = split.inbound.len() + split.callbacks.len();
    let e = match result {
        Ok(written) => {
            answer(split.inbound_done, written.inbound.into_iter().map(Ok));
            answer(split.callbacks_done, written.callbacks.into_iter().map(Ok));
            return (Some(conn), memory);
        }
        Err(e) => e,
    };
    if let StoreError::Unavailable(_) = e {
        // Each would fail the same way alone, only later.
        tracing::warn!(error = %e, batch, "group commit failed");
        let kept = survives(&e).then_some(conn);
        answer(split.inbound_done, std::iter::repeat(Err(e.clone())));
        answer(split.callbacks_done, std::iter::repeat(Err(e)));
        return (kept, memory);
    }
    tracing::warn!(error = %e, batch, "group commit failed; storing its webhooks one at a time");
    // On this connection when Postgres answered the error (it is clean), else on a new one.
    let conn = if survives(&e) {
        Ok(conn)
    } else {
        drop(conn);
        cx.db.acquire().await.map_err(StoreError::from)
    };
    match conn {
        Ok(mut conn) => {
            let clean = one_at_a_time(&mut conn, &cx, split).await;
            (clean.then_some(conn), memory)
        }
        Err(e) => {
            answer(split.inbound_done, std::iter::repeat(Err(e.clone())));
            answer(split.callbacks_done, std::iter::repeat(Err(e)));
            (None, memory)
        }
    }
}

/// Whether a connection is still usable after `e`: yes when Postgres itself answered with
/// an error (the connection is in a clean state between statements), no when it failed.
fn survives(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(cause) | StoreError::Bug(cause) | StoreError::TooLarge(cause) => {
            cause.database_answered()
        }
        StoreError::Conflict => true,
    }
}

/// Sends each waiting request its result (one that gave up is not waiting).
fn answer<R>(
    done: Vec<oneshot::Sender<Result<R, StoreError>>>,
    results: impl Iterator<Item = Result<R, StoreError>>,
) {
    for (done, result) in done.into_iter().zip(results) {
        let _ = done.send(result);
    }
}

/// The webhooks of a failed batch, each written alone, so one that cannot be stored fails
/// only its own request. Returns whether the connection is still usable.
async fn one_at_a_time(conn: &mut PgConnection, cx: &Context, split: Split) -> bool {
    let mut memory = Memory::default();
    let mut clean = true;
    let inbound = split.inbound.into_iter().zip(split.deciders);
    for ((item, decider), done) in inbound.zip(split.inbound_done) {
        if done.is_closed() {
            continue;
        }
        let written = write_with(conn, cx, &[item], &[decider], &[], &mut memory).await;
        clean = written.as_ref().err().is_none_or(survives);
        let _ = done.send(written.map(|w| w.inbound[0].clone()));
        if !clean {
            break;
        }
    }
    for (callback, done) in split.callbacks.into_iter().zip(split.callbacks_done) {
        if done.is_closed() || !clean {
            // A request not written here (the connection failed) gets 503 and is spooled.
            continue;
        }
        let written = write_with(conn, cx, &[], &[], &[callback], &mut memory).await;
        clean = written.as_ref().err().is_none_or(survives);
        let _ = done.send(written.map(|w| w.callbacks[0]));
    }
    clean
}

/// One write of `inbound` (each decided by its decider) and `callbacks`.
async fn write_with(
    conn: &mut PgConnection,
    cx: &Context,
    inbound: &[Inbound],
    deciders: &[Decider],
    callbacks: &[Callback],
    memory: &mut Memory,
) -> Result<write::Written, StoreError> {
    // The longest lookback of the rules in force for any of them.
    let lookback = deciders
        .iter()
        .map(|d| d.rules.lookback())
        .max()
        .unwrap_or_default();
    let options = Options {
        lookback,
        archive_media: cx.archive_media,
        enrich: cx.enrich,
    };
    write::write(conn, inbound, callbacks, options, memory, |i, facts| {
        deciders[i].decide(&cx.replier, &cx.metrics, &inbound[i].msg, facts)
    })
    .await
}
