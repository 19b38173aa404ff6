//! Partition upkeep: every replica makes sure, at start and then hourly, that today and
//! `database.partition_days_ahead` following days exist in every partitioned table, and
//! checks every minute how far ahead they go (`twilio_receiver_partition_days_ahead`, and
//! `/readyz`'s warning). The SQL serialises replicas behind an advisory lock, so running it
//! everywhere is safe and needs no leader.

use crate::{metrics::Metrics, store};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

/// How often partitions are made.
const MAKE_EVERY: Duration = Duration::from_secs(3600);
/// How often coverage is measured (and partitions made early when it fell short).
const CHECK_EVERY: Duration = Duration::from_secs(60);

pub struct Upkeep {
    pub db: PgPool,
    pub metrics: Arc<Metrics>,
    /// `database.partition_days_ahead`.
    pub ahead: u32,
}

impl Upkeep {
    /// Runs until `stop` turns true, once the schema is ready.
    pub async fn run_until_stopped(
        self,
        mut schema_ready: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        tokio::select! {
            _ = schema_ready.wait_for(|ready| *ready) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut made_at: Option<tokio::time::Instant> = None;
        loop {
            let due = made_at.is_none_or(|at| at.elapsed() >= MAKE_EVERY);
            let short = self
                .metrics
                .partition_days()
                .is_some_and(|days| days < i64::from(self.ahead));
            if due || short {
                match store::partitions::make_ahead(&self.db, self.ahead).await {
                    Ok(made) => {
                        if made > 0 {
                            tracing::info!(partitions = made, "made the coming days");
                        }
                        made_at = Some(tokio::time::Instant::now());
                    }
                    // Loud only once the days run short: a role that may not make days
                    // relies on `migrate`, run by the owner.
                    Err(e) => match self.metrics.partition_days() {
                        Some(days) if days >= 2 => {
                            tracing::debug!(error = %e, days, "partition upkeep failed")
                        }
                        _ => {
                            tracing::warn!(error = %e, "partition upkeep failed; trying again in a minute")
                        }
                    },
                }
            }
            match store::partitions::days_ahead(&self.db).await {
                Ok(days) => self.metrics.partitions_checked(days.into()),
                Err(e) => tracing::debug!(error = %e, "cannot measure the partitions"),
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
