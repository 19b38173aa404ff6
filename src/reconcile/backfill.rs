//! Backfill: importing a range of an account's history (first deploy, after an outage), with
//! the same import as a gap-fill pass. The range is read an hour at a time, oldest first
//! (Twilio lists newest first; each hour is sorted before it is stored), so windows and
//! sessions come out as if the messages had arrived live. Each whole hour read and stored
//! whole is recorded: a rerun of an interrupted backfill reads only the hours left (and the
//! range's last, partial hour, which may have grown), and a message already stored is never
//! stored twice.

use super::{ReconcileError, Reconciler, Tally, filters};
use crate::{store, store::write::Origin};
use chrono::{DateTime, Duration, Utc};

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
    /// Of all the hours (of every account) to read, how many are read, 0 to 1.
    pub done: f64,
    /// Hours read this run (hours done by an earlier run are skipped).
    pub chunks: u64,
    pub tally: Tally,
}

/// How a backfill ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub tally: Tally,
    /// Why some hours could not be read (the next run reads them again).
    pub errors: Vec<ReconcileError>,
}

impl Outcome {
    /// Every message in the range is stored (or was), and every hour was read.
    pub fn complete(&self) -> bool {
        self.errors.is_empty() && self.tally.failed == 0
    }
}

/// How much of the range one list covers.
const CHUNK: Duration = Duration::hours(1);

impl Reconciler {
    /// Imports every message of `range` not stored yet, calling `progress` after each hour.
    pub async fn backfill(&self, range: &Range, mut progress: impl FnMut(&Progress)) -> Outcome {
        let mut outcome = Outcome::default();
        let until = range.until.unwrap_or_else(|| self.ingest.now());
        let accounts = self.client.account_sids();
        let hours: Vec<Hour<'_>> = accounts
            .iter()
            .flat_map(|account| {
                chunks(range.since, until)
                    .into_iter()
                    .map(move |(start, end)| Hour {
                        account,
                        start,
                        end,
                        key: chunk_key(account, range, start),
                    })
            })
            .collect();
        let keys: Vec<String> = hours.iter().map(|h| h.key.clone()).collect();
        let mut done = match store::reconcile::chunks_done(&self.db, &keys).await {
            Ok(done) => done,
            Err(e) => {
                outcome.errors.push(e.into());
                return outcome;
            }
        };
        // A finished backfill (every whole hour done), run again, reads its whole range
        // again.
        if hours.iter().any(Hour::whole) && hours.iter().zip(&done).all(|(h, d)| *d || !h.whole()) {
            if let Err(e) = store::reconcile::forget_chunks(&self.db, &keys).await {
                outcome.errors.push(e.into());
                return outcome;
            }
            done.fill(false);
        }
        let mut state = Progress {
            done: done.iter().filter(|d| **d).count() as f64 / keys.len().max(1) as f64,
            ..Progress::default()
        };
        for (hour, done) in hours.iter().zip(&done) {
            if *done {
                continue;
            }
            if self.stopped() {
                outcome.errors.push(ReconcileError::Stopped);
                break;
            }
            let filters = filters(hour.start, Some(hour.end), &range.senders, self.page_size);
            let (found, error) = self.list(hour.account, &filters).await;
            let tally = self.import(found, Origin::Backfill).await;
            outcome.tally += tally;
            state.tally += tally;
            state.chunks += 1;
            state.done += 1.0 / keys.len() as f64;
            match error {
                Some(e) => outcome.errors.push(e),
                // An hour with a message that may still be stored is read again next run, as
                // is a partial hour (later messages may still come into it).
                None if tally.retryable == 0 && hour.whole() => {
                    if let Err(e) = store::reconcile::chunk_done(&self.db, &hour.key).await {
                        outcome.errors.push(e.into());
                    }
                }
                None => {}
            }
            progress(&state);
        }
        outcome
    }
}

/// One hour of one account's history.
struct Hour<'a> {
    account: &'a str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    key: String,
}

impl Hour<'_> {
    /// A whole hour (not the range's partial last one), which later messages cannot join.
    fn whole(&self) -> bool {
        self.end - self.start == CHUNK - Duration::seconds(1)
    }
}

/// The range as hours from `since`, oldest first: inclusive bounds in whole seconds (as
/// Twilio filters), so that the hours do not overlap.
fn chunks(since: DateTime<Utc>, until: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut hours = Vec::new();
    let mut start = since;
    while start <= until {
        let end = (start + CHUNK - Duration::seconds(1)).min(until);
        hours.push((start, end));
        start += CHUNK;
    }
    hours
}

/// What identifies an hour of a backfill: the same account, senders and hour.
fn chunk_key(account: &str, range: &Range, start: DateTime<Utc>) -> String {
    format!(
        "{account}|{}|{}",
        start.to_rfc3339(),
        range.senders.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn hours_cover_the_range_once_oldest_first() {
        let since = Utc.with_ymd_and_hms(2026, 3, 1, 9, 30, 0).unwrap();
        let h = chunks(since, since + Duration::minutes(150));
        assert_eq!(h.len(), 3);
        assert_eq!(h[0], (since, since + Duration::seconds(3599)));
        assert_eq!(h[1].0, since + Duration::hours(1));
        assert_eq!(
            h[2],
            (since + Duration::hours(2), since + Duration::minutes(150))
        );
        assert_eq!(chunks(since, since), [(since, since)]);
        assert!(chunks(since, since - Duration::seconds(1)).is_empty());
    }
}
