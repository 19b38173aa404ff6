//! Prometheus metrics, served on `server.admin_listen` (never the public port).
//!
//! The registry belongs to the app, not the process, so two servers (or two tests) in one
//! process never mix their numbers.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};
use sqlx::PgPool;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorCode {
    pub error_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rule {
    pub rule: String,
}

/// An answer of Twilio's REST API: its HTTP status code, or "error" when none came.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestStatus {
    pub status: String,
}

/// How something ended: `ok`, `failed`, `skipped`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ended {
    pub result: String,
}

/// `inbound` or `outbound`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: String,
}

/// Reconciliation with Twilio's REST API.
#[derive(Debug, Default)]
pub struct ReconcileMetrics {
    pub passes: Family<Ended, Counter>,
    pub found: Family<Direction, Counter>,
    pub enrichments: Family<Ended, Counter>,
    pub stale_advanced: Counter,
    /// The oldest account checkpoint, in Unix seconds (0: none yet).
    pub checkpoint: Gauge,
    pub checkpoint_age: Gauge,
}

impl ReconcileMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconcile_passes",
            "Gap-fill passes by result (skipped: another replica held the pass)",
            self.passes.clone(),
        );
        registry.register(
            "reconcile_found",
            "Messages found in Twilio's log that were not stored, by direction (reconcile and backfill)",
            self.found.clone(),
        );
        registry.register(
            "reconcile_enrichments",
            "Outbound messages completed from their resource (body, media, times), by result",
            self.enrichments.clone(),
        );
        registry.register(
            "reconcile_stale_advanced",
            "Stale outbound statuses advanced from the API",
            self.stale_advanced.clone(),
        );
        registry.register(
            "reconcile_checkpoint_age_seconds",
            "Seconds since the oldest reconcile checkpoint (0 until there is one): alert when it grows past a few reconcile intervals",
            self.checkpoint_age.clone(),
        );
    }

    pub fn pass(&self, result: &str) {
        self.passes
            .get_or_create(&Ended {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn found(&self, outbound: bool) {
        let direction = if outbound { "outbound" } else { "inbound" };
        self.found
            .get_or_create(&Direction {
                direction: direction.to_owned(),
            })
            .inc();
    }

    pub fn enrichment(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.enrichments
            .get_or_create(&Ended {
                result: result.to_owned(),
            })
            .inc();
    }
}

/// Everything the server counts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub signature_rejections: Family<Reason, Counter>,
    pub duplicates: Counter,
    pub status_not_advanced: Counter,
    pub fallback_calls: Family<ErrorCode, Counter>,
    pub rule_matches: Family<Rule, Counter>,
    pub db_seconds: Histogram,
    pub group_size: Histogram,
    pub group_waiting: Gauge,
    pub pool_in_use: Gauge,
    pub pool_idle: Gauge,
    pub requests_shed: Counter,
    pub unverified_requests: Counter,
    pub spool_appended: Counter,
    pub spool_replayed: Counter,
    pub spool_set_aside: Counter,
    pub spool_pending: Gauge,
    /// Whole days after today every partitioned table covers, once checked (see
    /// [`Metrics::partition_days`]).
    pub partition_days_ahead: Gauge,
    partitions_checked: std::sync::atomic::AtomicBool,
    pub rest_responses: Family<RestStatus, Counter>,
    pub reconcile: ReconcileMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("twilio_receiver");
        // Registers a metric (a default one unless given) and keeps a handle for the struct.
        fn registered<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, m: M) -> M {
            r.register(name, help, m.clone());
            m
        }
        macro_rules! metric {
            ($name:literal, $help:literal) => {
                metric!($name, $help, Default::default())
            };
            ($name:literal, $help:literal, $metric:expr) => {
                registered(&mut registry, $name, $help, $metric)
            };
        }
        Metrics {
            requests: metric!("requests", "HTTP requests by route and status"),
            signature_rejections: metric!(
                "signature_rejections",
                "Requests refused for a missing or wrong signature, by reason"
            ),
            duplicates: metric!(
                "duplicate_deliveries",
                "Inbound deliveries of a message already stored (retries, fallback after success)"
            ),
            status_not_advanced: metric!(
                "status_events_not_advancing",
                "Status callbacks that did not move a message's status forward"
            ),
            fallback_calls: metric!(
                "fallback_calls",
                "Calls to the fallback URL, by Twilio's ErrorCode"
            ),
            rule_matches: metric!("rule_matches", "Reply rules that answered, by rule"),
            // 0.5 ms to about 4 s.
            db_seconds: metric!(
                "database_seconds",
                "Time each webhook waited for Postgres to store it (its share of a group commit included)",
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0,
                ])
            ),
            // Webhooks per group-commit transaction: 1 to the largest `database.group_size`.
            group_size: metric!(
                "group_commit_size",
                "Webhooks stored per group-commit transaction",
                Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
            ),
            group_waiting: metric!(
                "group_commit_waiting",
                "Webhooks queued for, or being stored by, a group-commit writer"
            ),
            pool_in_use: metric!("pool_connections_in_use", "Database connections in use"),
            pool_idle: metric!("pool_connections_idle", "Idle database connections"),
            requests_shed: metric!(
                "requests_shed",
                "Requests refused with 503 because too many were in flight"
            ),
            unverified_requests: metric!(
                "unverified_requests",
                "Webhooks accepted without a signature check (twilio.verify_signatures = false)"
            ),
            spool_appended: metric!(
                "spool_appended",
                "Verified webhooks written to the local spool because Postgres was unavailable"
            ),
            spool_replayed: metric!(
                "spool_replayed",
                "Spooled webhooks stored in Postgres and removed from the spool"
            ),
            spool_set_aside: metric!(
                "spool_set_aside",
                "Spooled webhooks that could not be read or stored, moved to the spool's failed/ folder"
            ),
            spool_pending: metric!("spool_pending", "Webhooks waiting in the local spool"),
            partition_days_ahead: metric!(
                "partition_days_ahead",
                "Whole days after today (UTC) that every daily-partitioned table covers (-1: today is missing; alert below 2)"
            ),
            partitions_checked: std::sync::atomic::AtomicBool::new(false),
            rest_responses: metric!(
                "rest_responses",
                "Answers from Twilio's REST API by HTTP status (\"error\": none came, a connection or timeout failure)"
            ),
            reconcile: {
                let reconcile = ReconcileMetrics::default();
                reconcile.register(&mut registry);
                reconcile
            },
            registry,
        }
    }

    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// A call to the fallback URL, by its `ErrorCode` ("none" without one). Label values
    /// stay bounded: a number of at most 6 digits, else "other".
    pub fn fallback_call(&self, error_code: Option<&str>) {
        let code = error_code.unwrap_or("none").trim();
        let label = if code == "none" || code.len() <= 6 && code.bytes().all(|b| b.is_ascii_digit())
        {
            code
        } else {
            "other"
        };
        self.fallback_calls
            .get_or_create(&ErrorCode {
                error_code: label.to_owned(),
            })
            .inc();
    }

    /// A rule answered a message.
    pub fn rule_matched(&self, rule: &str) {
        self.rule_matches
            .get_or_create(&Rule {
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// One answer of Twilio's REST API (`None`: the request failed without one).
    pub fn rest_response(&self, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.rest_responses
            .get_or_create(&RestStatus { status })
            .inc();
    }

    /// What partition upkeep found: days after today covered by every partitioned table.
    pub fn partitions_checked(&self, days_ahead: i64) {
        self.partition_days_ahead.set(days_ahead);
        self.partitions_checked
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Days ahead the partitions go, once upkeep has looked.
    pub fn partition_days(&self) -> Option<i64> {
        self.partitions_checked
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| self.partition_days_ahead.get())
    }

    pub fn database_time(&self, took: Duration) {
        self.db_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition, with the pool gauges read now.
    pub fn render(&self, pool: &PgPool) -> String {
        let size = i64::from(pool.size());
        let idle = pool.num_idle() as i64;
        self.pool_idle.set(idle);
        self.pool_in_use.set((size - idle).max(0));
        let checkpoint = self.reconcile.checkpoint.get();
        if checkpoint > 0 {
            let age = chrono::Utc::now().timestamp() - checkpoint;
            self.reconcile.checkpoint_age.set(age.max(0));
        }
        self.encode()
    }

    /// The text exposition as counted so far (the pool gauges as last read).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
