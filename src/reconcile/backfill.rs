//! Backfill: importing a range of an account's history (first deploy, after an outage), with
//! the same import as a gap-fill pass. Resumable: each list's next page is recorded after
//! every page stored whole, so an interrupted run continues there; a message already stored
//! is never stored twice.

use super::{ReconcileError, Reconciler, Tally, filters};
use crate::{rest::ListFilter, store, store::write::Origin};
use chrono::{DateTime, Utc};

/// What to import.
#[derive(Debug, Clone)]
pub struct Range {
    /// Messages sent at or after this time.
    pub since: DateTime<Utc>,
    /// ... and at or before this one (`None`: up to now).
    pub until: Option<DateTime<Utc>>,
    /// Business addresses; empty: the whole account.
    pub senders: Vec<String>,
}

/// How far a backfill is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Of all the lists (accounts times senders), how much of the time range is read, 0 to 1
    /// (lists are newest first: the oldest `date_sent` read so far says how far).
    pub done: f64,
    pub pages: u64,
    pub tally: Tally,
}

/// How a backfill ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub tally: Tally,
    /// Why some list could not be read to its end (the next run continues there).
    pub errors: Vec<ReconcileError>,
}

impl Outcome {
    /// Every message in the range is stored (or was), and every list was read to its end.
    pub fn complete(&self) -> bool {
        self.errors.is_empty() && self.tally.failed == 0
    }
}

impl Reconciler {
    /// Imports every message of `range` not stored yet, calling `progress` after each page.
    pub async fn backfill(&self, range: &Range, mut progress: impl FnMut(&Progress)) -> Outcome {
        let mut outcome = Outcome::default();
        let mut state = Progress::default();
        let until = range.until.unwrap_or_else(|| self.ingest.now());
        let span = (until - range.since).num_seconds().max(1) as f64;
        let lists: Vec<(String, ListFilter)> = self
            .client
            .account_sids()
            .into_iter()
            .flat_map(|account| {
                filters(range.since, range.until, &range.senders, self.page_size)
                    .into_iter()
                    .map(move |filter| (account.clone(), filter))
            })
            .collect();
        let share = 1.0 / lists.len().max(1) as f64;
        for (n, (account, filter)) in lists.iter().enumerate() {
            let key = run_key(account, range, filter);
            let resume = match store::reconcile::backfill_position(&self.db, &key).await {
                Ok(resume) => resume,
                Err(e) => {
                    outcome.errors.push(e.into());
                    continue;
                }
            };
            let mut pages = match &resume {
                Some(path) => self.client.resume_messages(account, path),
                None => self.client.list_messages(account, filter),
            };
            let mut complete = true;
            while let Some(page) = pages.next_page().await {
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        outcome.errors.push(e.into());
                        complete = false;
                        break;
                    }
                };
                let tally = self.import(&page.items, Origin::Backfill).await;
                state.tally += tally;
                outcome.tally += tally;
                state.pages += 1;
                if let Some(oldest) = page.items.iter().filter_map(|m| m.date_sent).min() {
                    let read = (until - oldest).num_seconds().clamp(0, span as i64) as f64;
                    state.done = share * (n as f64 + read / span);
                }
                progress(&state);
                // A page with a failure is read again by the next run.
                if tally.failed > 0 {
                    complete = false;
                    break;
                }
                if let Some(next) = pages.next_path()
                    && let Err(e) =
                        store::reconcile::backfill_progress(&self.db, &key, Some(next)).await
                {
                    outcome.errors.push(e.into());
                    complete = false;
                    break;
                }
            }
            if complete {
                if let Err(e) = store::reconcile::backfill_progress(&self.db, &key, None).await {
                    outcome.errors.push(e.into());
                }
                state.done = share * (n + 1) as f64;
                progress(&state);
            }
        }
        outcome
    }
}

/// What identifies a run: the same account, range and list continue each other.
fn run_key(account: &str, range: &Range, filter: &ListFilter) -> String {
    let time = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
    format!(
        "{account}|{}|{}|to={}|from={}",
        range.since.to_rfc3339(),
        time(range.until),
        filter.to.as_deref().unwrap_or(""),
        filter.from.as_deref().unwrap_or("")
    )
}
