//! Spool replay: a background source of webhooks like any other. It reads the records the
//! spool kept while the database was away, oldest first, hands each to ingest with its
//! original receive time and what it was answered with, and removes it once stored.

use super::{Ingest, IngestError, Outcome, Source, Webhook};
use crate::spool::Record;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

/// Why a replay stopped before the end of the spool: the database cannot take webhooks now
/// ([`super::Away`]), a record could not be stored (a bug; it stays and is tried later), or
/// the spool directory failed.
pub type ReplayError = Box<dyn std::error::Error + Send + Sync>;

impl Ingest {
    /// Stores every waiting record, oldest first, until `stop` turns true, and returns how
    /// many. Stops at the first record the database did not take for a reason that may pass;
    /// a record that can never be stored (unreadable, a required parameter missing, too
    /// large) is set aside and the rest go on.
    pub async fn replay_pending(&self, stop: &watch::Receiver<bool>) -> Result<usize, ReplayError> {
        let Some(spool) = &self.parts.spool else {
            return Ok(0);
        };
        let mut stored = 0;
        for path in spool.waiting().await? {
            if *stop.borrow() {
                break;
            }
            let record = match spool.read(&path).await? {
                Some(Ok(record)) => record,
                Some(Err(unreadable)) => {
                    spool.set_aside(&path, &unreadable.to_string()).await;
                    continue;
                }
                None => continue,
            };
            match self.receive(replayed(record)).await {
                Ok(Outcome::Unavailable(away) | Outcome::Spooled(away)) => {
                    return Err(away.into());
                }
                Ok(Outcome::Reply(_) | Outcome::Nothing) => {
                    spool.remove(&path).await?;
                    stored += 1;
                }
                Err(e @ (IngestError::MissingParam(_) | IngestError::TooLarge(_))) => {
                    spool.set_aside(&path, &e.to_string()).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, file = %path.display(), "a spooled webhook could not be stored; retrying later");
                    return Err(e.into());
                }
            }
        }
        Ok(stored)
    }

    /// Replays in the background until `stop` turns true: at start, after each append, every
    /// few seconds, and with a growing pause while the database stays away.
    pub async fn replay_until_stopped(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        const IDLE: Duration = Duration::from_secs(5);
        let Some(spool) = self.parts.spool.clone() else {
            return;
        };
        let mut pause = Duration::ZERO;
        loop {
            if !pause.is_zero() {
                // Appends during an outage must not turn into one connection attempt each.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            match self.replay_pending(&stop).await {
                Ok(0) => pause = Duration::ZERO,
                Ok(stored) => {
                    pause = Duration::ZERO;
                    tracing::info!(
                        stored,
                        pending = self.parts.metrics.spool_pending.get(),
                        "stored spooled webhooks in Postgres"
                    );
                    continue;
                }
                Err(e) => {
                    pause = (pause * 2).clamp(Duration::from_millis(250), IDLE);
                    tracing::debug!(error = %e, ?pause, "spool replay waits for the database");
                    continue;
                }
            }
            tokio::select! {
                _ = spool.appended() => {}
                _ = tokio::time::sleep(IDLE) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// A record as a webhook from the spool, received when it first arrived.
fn replayed(record: Record) -> Webhook {
    Webhook {
        kind: record.kind,
        params: record.params.into_iter().collect(),
        query: record.query.into_iter().collect(),
        base: record.base,
        at: record.received_at,
        source: Source::Spool {
            record: record.id,
            answered: record.answered,
        },
    }
}
