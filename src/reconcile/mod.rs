//! Reconciliation: completing the stored history from Twilio's REST API, through ingest like
//! any webhook (no write of its own).
//!
//! - **Gap-fill**: every `reconcile.interval_ms`, list each account's messages sent since its
//!   checkpoint (less `reconcile.overlap_ms`) and store those not stored yet. One replica at
//!   a time (an advisory lock); the checkpoint lives in Postgres.
//! - **Enrichment**: outbound messages first seen in a status callback (no body) are read once
//!   from the API (a queue the write fills in the same transaction).
//! - **Stale statuses**: outbound messages stuck short of a final status are looked up.
//! - **Backfill** ([`backfill`]): the same import over a range of history, resumable.
//!
//! What a list returns is stored oldest first, each contact's messages one after another,
//! so windows, sessions and consent come out as if the messages had arrived live.

pub mod backfill;
pub mod convert;

use crate::{
    config::ReconcileSettings,
    ingest::{ImportError, Imported, Ingest},
    metrics::Metrics,
    rest::{ListFilter, MAX_PAGE_SIZE, MessageResource, RestClient, RestError},
    store::{
        self, StoreError,
        reconcile::{Lookup, PassLock, STALE_CHECKS, Triage},
        write::Origin,
    },
};
use chrono::{DateTime, Duration, Utc};
use convert::{FoundMedia, Unusable};
use futures_util::{StreamExt, stream::FuturesUnordered};
use sqlx::PgPool;
use std::{
    collections::HashMap,
    fmt,
    ops::AddAssign,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};
use tokio::sync::watch;

/// Why a message or a list could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Twilio's API: {0}")]
    Rest(#[from] RestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing: {0}")]
    Import(#[from] ImportError),
    #[error(transparent)]
    Unusable(#[from] Unusable),
    #[error("stopped: the process is shutting down")]
    Stopped,
}

impl ReconcileError {
    /// When to try again: `None` for an answer that will not change by itself (a message
    /// Twilio does not know, credentials it refuses, a resource that cannot be stored).
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::Rest(
                RestError::NotFound { .. }
                | RestError::Forbidden { .. }
                | RestError::Unauthorized { .. }
                | RestError::NoCredentials { .. }
                | RestError::InvalidSid { .. }
                | RestError::Rejected { .. },
            )
            | ReconcileError::Unusable(_)
            | ReconcileError::Import(ImportError::Refused(_)) => None,
            _ => Some(Duration::seconds(30)),
        }
    }
}

/// What an import did with the messages it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Inbound messages stored.
    pub inbound: u64,
    /// Outbound messages stored, or completed (body, media, Twilio's times and price).
    pub outbound: u64,
    pub already_stored: u64,
    /// Messages of erased contacts, skipped.
    pub erased: u64,
    pub failed: u64,
    /// Of `failed`, those worth trying again (Twilio or the database unavailable); the
    /// others never will be (a resource without an address, a value too large).
    pub retryable: u64,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.inbound += o.inbound;
        self.outbound += o.outbound;
        self.already_stored += o.already_stored;
        self.erased += o.erased;
        self.failed += o.failed;
        self.retryable += o.retryable;
    }
}

impl fmt::Display for Tally {
    /// The summary line `backfill` ends with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inbound {}, outbound {}, already stored {}, failed {}",
            self.inbound, self.outbound, self.already_stored, self.failed
        )
    }
}

/// Contacts imported at once, each a message at a time: every message a write through the
/// group-commit writer, and a media list request when it has media (the REST client bounds
/// requests per account).
const CONCURRENCY: usize = 256;

/// Enrichment jobs and stale messages taken per round.
const BATCH: i64 = 100;

/// How long one stale sweep may run (rounds of [`BATCH`] until nothing is due).
const SWEEP_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

/// Gap-fill lists messages sent up to this long before the pass: a message younger than
/// that may still be on its way as a webhook (Twilio waits up to 15 s for the primary URL,
/// then calls the fallback), and must be answered by it, not stored unanswered. The next
/// pass's overlap reads it.
const SETTLE: Duration = Duration::minutes(2);

/// Reads Twilio's API and stores what it finds through ingest.
pub struct Reconciler {
    ingest: Arc<Ingest>,
    client: RestClient,
    db: PgPool,
    metrics: Arc<Metrics>,
    settings: ReconcileSettings,
    page_size: u32,
    /// When the last pass looked for stale statuses.
    last_sweep: Mutex<Option<Instant>>,
    /// Set when the process stops: lists and rounds end between pages and messages.
    stopping: AtomicBool,
}

impl Reconciler {
    pub fn new(
        ingest: Arc<Ingest>,
        client: RestClient,
        db: PgPool,
        metrics: Arc<Metrics>,
        settings: ReconcileSettings,
    ) -> Self {
        Reconciler {
            ingest,
            client,
            db,
            metrics,
            settings,
            page_size: MAX_PAGE_SIZE,
            last_sweep: Mutex::new(None),
            stopping: AtomicBool::new(false),
        }
    }

    /// Messages per page listed (Twilio's maximum, 1000, unless changed: tests page through
    /// a few messages).
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// The accounts it reads (those with credentials).
    pub fn accounts(&self) -> Vec<String> {
        self.client.account_sids()
    }

    /// The ingest it stores through.
    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// One gap-fill pass over every account, then (when due) the stale statuses. `None` when
    /// another replica is running one.
    pub async fn pass(&self) -> Result<Option<Tally>, ReconcileError> {
        let Some(lock) = PassLock::try_take(&self.db).await? else {
            self.metrics.reconcile.pass("skipped");
            return Ok(None);
        };
        let result = self.pass_locked().await;
        lock.release().await;
        self.metrics
            .reconcile
            .pass(if result.is_ok() { "ok" } else { "failed" });
        result.map(Some)
    }

    async fn pass_locked(&self) -> Result<Tally, ReconcileError> {
        let overlap = Duration::milliseconds(self.settings.overlap_ms as i64);
        let mut tally = Tally::default();
        let mut first_error = None;
        for account in self.client.account_sids() {
            let until = self.ingest.now() - SETTLE;
            let since = store::reconcile::checkpoint(&self.db, &account)
                .await?
                .unwrap_or(until)
                - overlap;
            let filters = filters(since, Some(until), &self.settings.senders, self.page_size);
            let (found, error) = self.list(&account, &filters).await;
            let account_tally = self.import(found, Origin::Reconcile).await;
            // Whatever may still be stored is listed again by the next pass (the
            // checkpoint stays); a message that never can be does not hold it back.
            match error {
                Some(e) => {
                    tracing::warn!(account = %account, error = %e, "reconcile: listing messages failed");
                    first_error.get_or_insert(e);
                }
                None if account_tally.retryable == 0 => {
                    store::reconcile::set_checkpoint(&self.db, &account, until).await?;
                }
                None => {}
            }
            tally += account_tally;
        }
        if self.sweep_due() {
            self.advance_stale().await?;
        }
        self.gauge_checkpoint().await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(tally),
        }
    }

    /// Every page of each list, and why the lists stopped early, if they did.
    async fn list(
        &self,
        account: &str,
        filters: &[ListFilter],
    ) -> (Vec<MessageResource>, Option<ReconcileError>) {
        let mut found = Vec::new();
        for filter in filters {
            let mut pages = self.client.list_messages(account, filter);
            while let Some(page) = pages.next_page().await {
                match page {
                    Ok(page) => found.extend(page.items),
                    Err(e) => return (found, Some(e.into())),
                }
                if self.stopped() {
                    return (found, Some(ReconcileError::Stopped));
                }
            }
        }
        (found, None)
    }

    /// Stores the messages not stored yet (skipping erased contacts): oldest first, each
    /// contact's one after another, contacts side by side.
    pub async fn import(&self, mut items: Vec<MessageResource>, origin: Origin) -> Tally {
        let mut tally = Tally::default();
        items.sort_by(|a, b| (a.date_created, &a.sid).cmp(&(b.date_created, &b.sid)));
        items.dedup_by(|a, b| a.sid == b.sid);
        let sids: Vec<&str> = items.iter().map(|m| m.sid.as_str()).collect();
        let contacts: Vec<&str> = items
            .iter()
            .map(|m| convert::contact(m).unwrap_or(""))
            .collect();
        let triage = match store::reconcile::triage(&self.db, &sids, &contacts).await {
            Ok(triage) => triage,
            Err(e) => {
                tracing::warn!(error = %e, "reconcile: cannot tell which messages are stored");
                tally.failed = items.len() as u64;
                tally.retryable = tally.failed;
                return tally;
            }
        };
        // Per contact, in time order.
        let mut queues: Vec<Vec<&MessageResource>> = Vec::new();
        let mut queue_of: HashMap<&str, usize> = HashMap::new();
        for ((m, t), contact) in items.iter().zip(&triage).zip(&contacts) {
            match t {
                Triage::Stored => tally.already_stored += 1,
                Triage::Erased => tally.erased += 1,
                Triage::Import => {
                    let q = *queue_of.entry(contact).or_insert_with(|| {
                        queues.push(Vec::new());
                        queues.len() - 1
                    });
                    queues[q].push(m);
                }
            }
        }
        let mut queues = queues.into_iter();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < CONCURRENCY
                && let Some(queue) = queues.next()
            {
                running.push(self.import_in_order(queue, origin));
            }
            match running.next().await {
                Some(t) => tally += t,
                None => break,
            }
        }
        tally
    }

    /// One contact's messages, one after another.
    async fn import_in_order(&self, queue: Vec<&MessageResource>, origin: Origin) -> Tally {
        let mut tally = Tally::default();
        for m in queue {
            let outbound = convert::is_outbound(m);
            let result = if self.stopped() {
                Err(ReconcileError::Stopped)
            } else {
                self.import_one(m, origin).await
            };
            match result {
                Ok(Imported::AlreadyStored) => tally.already_stored += 1,
                Ok(imported) => {
                    if imported == Imported::Stored {
                        self.metrics.reconcile.found(outbound);
                    }
                    if outbound {
                        tally.outbound += 1;
                    } else {
                        tally.inbound += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(message_sid = %m.sid, error = %e, "reconcile: message not stored");
                    tally.failed += 1;
                    if e.retry_after().is_some() {
                        tally.retryable += 1;
                    }
                }
            }
        }
        tally
    }

    /// Reads a message's media list (when it has media) and stores it through ingest.
    async fn import_one(
        &self,
        m: &MessageResource,
        origin: Origin,
    ) -> Result<Imported, ReconcileError> {
        let media = if m.num_media.unwrap_or(0) > 0 {
            let mut items = self.client.list_media(&m.account_sid, &m.sid).await?;
            // Twilio lists media newest first; a message's items go in the order sent.
            items.sort_by(|a, b| a.date_created.cmp(&b.date_created).then(a.sid.cmp(&b.sid)));
            items
                .iter()
                .filter_map(|item| {
                    Some(FoundMedia {
                        url: self.client.media_url(item)?,
                        content_type: item.content_type.clone(),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let found = convert::found(m, &media, origin, self.ingest.now())?;
        Ok(self.ingest.import(found).await?)
    }

    /// Reads one message from the API and stores what it says.
    async fn look_up(&self, job: &Lookup) -> Result<Imported, ReconcileError> {
        let m = self
            .client
            .fetch_message(&job.account_sid, &job.message_sid)
            .await?;
        self.import_one(&m, Origin::Reconcile).await
    }

    /// Completes the outbound messages queued for enrichment that are due; returns how many
    /// were taken.
    pub async fn enrich_due(&self) -> Result<usize, ReconcileError> {
        let jobs = store::reconcile::claim_enrichments(&self.db, BATCH).await?;
        let taken = jobs.len();
        let mut running: FuturesUnordered<_> = jobs
            .iter()
            .map(|job| async move { (job, self.look_up(job).await) })
            .collect();
        while let Some((job, result)) = running.next().await {
            self.metrics.reconcile.enrichment(result.is_ok());
            match result {
                Ok(_) => store::reconcile::enriched(&self.db, &job.message_sid).await?,
                Err(e) => {
                    tracing::warn!(message_sid = %job.message_sid, error = %e, "enrichment failed");
                    let retry = e.retry_after();
                    store::reconcile::enrichment_failed(
                        &self.db,
                        &job.message_sid,
                        &e.to_string(),
                        retry,
                    )
                    .await?;
                }
            }
        }
        Ok(taken)
    }

    /// Looks up outbound messages whose status has not moved for `reconcile.stale_after_ms`
    /// (each at most [`STALE_CHECKS`] times), in rounds until none is due or
    /// [`SWEEP_BUDGET`] is spent; returns how many advanced.
    pub async fn advance_stale(&self) -> Result<usize, ReconcileError> {
        let stale_after = Duration::milliseconds(self.settings.stale_after_ms as i64);
        // Far enough back for every check of a message: its checks are stale_after apart.
        let horizon = stale_after * (i32::from(STALE_CHECKS) + 1) + Duration::days(1);
        let started = Instant::now();
        let mut advanced = 0;
        loop {
            let now = self.ingest.now();
            let due = store::reconcile::stale(&self.db, now, stale_after, horizon, BATCH).await?;
            for job in &due {
                store::reconcile::stale_checked(&self.db, &job.message_sid, now).await?;
                match self.look_up(job).await {
                    Ok(Imported::Completed { advanced: true }) => {
                        self.metrics.reconcile.stale_advanced.inc();
                        advanced += 1;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(message_sid = %job.message_sid, error = %e, "reconcile: stale status not looked up");
                    }
                }
            }
            if due.len() < BATCH as usize || started.elapsed() > SWEEP_BUDGET || self.stopped() {
                return Ok(advanced);
            }
        }
    }

    /// Whether this pass looks for stale statuses: at most every eighth of
    /// `reconcile.stale_after_ms` (a message only becomes stale on that scale, and the
    /// sweep reads every recent outbound row), and at least every pass when passes are
    /// further apart.
    fn sweep_due(&self) -> bool {
        let every = std::time::Duration::from_millis(self.settings.stale_after_ms / 8);
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= every);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Publishes the oldest checkpoint (every replica, whichever ran the pass).
    async fn gauge_checkpoint(&self) {
        if let Ok(Some(at)) = store::reconcile::oldest_checkpoint(&self.db).await {
            self.metrics.reconcile.checkpoint.set(at.timestamp());
        }
    }

    /// Passes every `reconcile.interval_ms`, and enrichment every few seconds, until `stop`.
    pub async fn run_until_stopped(self: Arc<Self>, stop: watch::Receiver<bool>) {
        const ENRICH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
        // Until a first checkpoint, its age counts from the start: a reconciler that never
        // completes a pass still trips the alert.
        self.metrics
            .reconcile
            .checkpoint
            .set(self.ingest.now().timestamp());
        self.gauge_checkpoint().await;
        let interval = std::time::Duration::from_millis(self.settings.interval_ms.max(1));
        let passes = async {
            loop {
                match self.pass().await {
                    Ok(Some(tally)) => tracing::info!(
                        inbound = tally.inbound,
                        outbound = tally.outbound,
                        already_stored = tally.already_stored,
                        failed = tally.failed,
                        "reconcile pass done"
                    ),
                    Ok(None) => self.gauge_checkpoint().await,
                    Err(e) => tracing::warn!(error = %e, "reconcile pass incomplete"),
                }
                if !pause(&stop, interval).await {
                    return;
                }
            }
        };
        let enrichment = async {
            loop {
                // Rounds until nothing is due, then a pause: its own loop, so a backlog
                // never holds up the passes.
                while let Ok(taken) = self.enrich_due().await {
                    if taken == 0 || self.stopped() {
                        break;
                    }
                }
                if !pause(&stop, ENRICH_EVERY).await {
                    return;
                }
            }
        };
        let stopped = async {
            signalled(stop.clone()).await;
            self.stopping.store(true, Ordering::Relaxed);
        };
        tokio::join!(passes, enrichment, stopped);
    }
}

/// Waits `pause`, or less if the process stops; `false` when it stops.
async fn pause(stop: &watch::Receiver<bool>, pause: std::time::Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        () = signalled(stop.clone()) => false,
    }
}

/// Completes once `stop` turns true (or its sender is gone).
async fn signalled(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The lists to read: the whole account, or per sender its inbound (`To`) and outbound
/// (`From`) messages.
fn filters(
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    senders: &[String],
    page_size: u32,
) -> Vec<ListFilter> {
    let base = ListFilter {
        date_sent_after: Some(since),
        date_sent_before: until,
        page_size: Some(page_size),
        ..ListFilter::default()
    };
    if senders.is_empty() {
        return vec![base];
    }
    senders
        .iter()
        .flat_map(|s| {
            [
                ListFilter {
                    to: Some(s.clone()),
                    ..base.clone()
                },
                ListFilter {
                    from: Some(s.clone()),
                    ..base.clone()
                },
            ]
        })
        .collect()
}
