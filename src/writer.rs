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
//! Each writer owns a share of the conversations (inbound messages, by business and contact)
//! or of the SIDs (status callbacks): two batches in flight never want the same row, so they
//! never wait for each other's commit. (Sharing rows, they would: a batch holds its
//! conversation locks until it commits, and most batches share some contact.)
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
        group::{Callback, Live},
        inbound::{Delivery, Received},
        status::Recorded,
    },
};
use sqlx::PgPool;
use std::{
    future::Future,
    hash::{Hash, Hasher},
    sync::Arc,
};
use tokio::sync::{mpsc, oneshot};

/// The queues of the writer tasks. Cloning shares them; the tasks end when every clone is
/// dropped, after storing what was queued.
#[derive(Clone, Debug)]
pub struct Writer {
    /// One queue per writer task.
    inbound: Arc<[mpsc::Sender<InboundJob>]>,
    status: Arc<[mpsc::Sender<StatusJob>]>,
    metrics: Arc<Metrics>,
}

/// An inbound message waiting for its batch, with what deciding its reply needs.
struct InboundJob {
    live: Live,
    /// The public base URL the request was signed for (reply `action` URLs start with it).
    base: String,
    /// The rules in force when the request arrived.
    rules: Arc<Rules>,
    done: oneshot::Sender<Result<Received, StoreError>>,
}

struct StatusJob {
    callback: Callback,
    done: oneshot::Sender<Result<Recorded, StoreError>>,
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
    /// Writer tasks for each kind of webhook.
    pub writers: usize,
    /// Most webhooks in one batch.
    pub size: usize,
}

impl Writer {
    /// Starts `writers` tasks for each kind of webhook on the current runtime.
    pub fn spawn(cx: Context, grouping: Grouping) -> Self {
        let Grouping { writers, size, .. } = grouping;
        let metrics = cx.metrics.clone();
        let mut inbound = Vec::with_capacity(writers);
        let mut status = Vec::with_capacity(writers);
        for _ in 0..writers {
            // Room for a few batches; beyond it senders wait.
            let (queue, jobs) = mpsc::channel(size * 4);
            let inbound_cx = cx.clone();
            tokio::spawn(run(jobs, size, move |jobs| {
                store_inbound(inbound_cx.clone(), jobs)
            }));
            inbound.push(queue);
            let (queue, jobs) = mpsc::channel(size * 4);
            let status_cx = cx.clone();
            tokio::spawn(run(jobs, size, move |jobs| {
                store_status(status_cx.clone(), jobs)
            }));
            status.push(queue);
        }
        Writer {
            inbound: inbound.into(),
            status: status.into(),
            metrics,
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
        let job = InboundJob {
            live,
            base,
            rules,
            done,
        };
        let writer = share(
            (job.live.msg.to.expose(), job.live.msg.from.expose()),
            self.inbound.len(),
        );
        self.inbound[writer].send(job).await.map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    /// Records a status callback with its batch.
    pub async fn record(&self, callback: Callback) -> Result<Recorded, StoreError> {
        let _waiting = Waiting::new(&self.metrics);
        let (done, result) = oneshot::channel();
        let writer = share(&callback.cb.sid, self.status.len());
        self.status[writer]
            .send(StatusJob { callback, done })
            .await
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
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

/// Which of `writers` owns `key`: the same one for as long as the process runs.
fn share(key: impl Hash, writers: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % writers as u64) as usize
}

/// One writer: takes whatever is queued, up to `size`, and stores it.
async fn run<J, F, Fut>(mut queue: mpsc::Receiver<J>, size: usize, mut store: F)
where
    F: FnMut(Vec<J>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let mut jobs = Vec::with_capacity(size);
        if queue.recv_many(&mut jobs, size).await == 0 {
            return;
        }
        // A task of its own, so that a bug that panics fails this batch (its requests get
        // 503 and are spooled) rather than ending the writer and every batch after it.
        if let Err(e) = tokio::spawn(store(jobs)).await {
            tracing::error!(error = %e, "a group-commit batch panicked");
        }
    }
}

async fn store_inbound(cx: Context, mut jobs: Vec<InboundJob>) {
    // Requests that gave up (their deadline passed, so they were spooled) need no write.
    jobs.retain(|job| !job.done.is_closed());
    if jobs.is_empty() {
        return;
    }
    cx.metrics.group_size.observe(jobs.len() as f64);
    let lookback = jobs
        .iter()
        .map(|job| job.rules.lookback())
        .max()
        .unwrap_or_default();
    let (lives, rest): (Vec<Live>, Vec<_>) = jobs
        .into_iter()
        .map(|job| (job.live, (job.base, job.rules, job.done)))
        .unzip();
    let result =
        store::group::receive_many(&cx.db, &lives, lookback, cx.archive_media, |i, facts| {
            let (base, rules, _) = &rest[i];
            live_reply(
                &cx.replier,
                &cx.metrics,
                rules,
                &lives[i].msg,
                facts,
                base,
                false,
            )
        })
        .await;
    match result {
        Ok(received) => {
            for ((_, _, done), received) in rest.into_iter().zip(received) {
                let _ = done.send(Ok(received));
            }
        }
        Err(e) if !retry_alone(&e) => {
            tracing::warn!(error = %e, batch = lives.len(), "group commit failed");
            for (_, _, done) in rest {
                let _ = done.send(Err(shared(&e)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batch = lives.len(), "group commit failed; storing its webhooks one at a time");
            for (live, (base, rules, done)) in lives.iter().zip(rest) {
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
    }
}

async fn store_status(cx: Context, mut jobs: Vec<StatusJob>) {
    jobs.retain(|job| !job.done.is_closed());
    if jobs.is_empty() {
        return;
    }
    cx.metrics.group_size.observe(jobs.len() as f64);
    let (callbacks, dones): (Vec<Callback>, Vec<_>) =
        jobs.into_iter().map(|job| (job.callback, job.done)).unzip();
    let result = store::group::record_many(&cx.db, &callbacks).await;
    match result {
        Ok(recorded) => {
            for (done, recorded) in dones.into_iter().zip(recorded) {
                let _ = done.send(Ok(recorded));
            }
        }
        Err(e) if !retry_alone(&e) => {
            tracing::warn!(error = %e, batch = callbacks.len(), "group commit failed");
            for done in dones {
                let _ = done.send(Err(shared(&e)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batch = callbacks.len(), "group commit failed; storing its webhooks one at a time");
            for (c, done) in callbacks.into_iter().zip(dones) {
                if done.is_closed() {
                    continue;
                }
                let recorded =
                    store::status::record(&cx.db, &c.cb, c.link.as_ref(), c.params, c.at).await;
                let _ = done.send(recorded);
            }
        }
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
    let detail = match e {
        StoreError::Unavailable(inner) | StoreError::TooLarge(inner) | StoreError::Other(inner) => {
            inner.to_string()
        }
    };
    StoreError::Unavailable(sqlx::Error::Protocol(format!(
        "group commit failed: {detail}"
    )))
}
