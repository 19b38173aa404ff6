//! `twilio-receiver backfill`: imports a range of the account's history from Twilio's API.

use super::error_chain;
use crate::{
    config::Settings,
    reconcile::backfill::{Progress, Range},
    startup, store, telemetry,
};
use chrono::{DateTime, Utc};
use std::{io::IsTerminal, process::ExitCode};

/// An RFC 3339 time (`2026-11-01T00:00:00Z`, `2026-11-01T01:00:00+01:00`).
pub(super) fn rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-11-01T00:00:00Z"))
}

pub(super) async fn run(
    settings: Settings,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    senders: Vec<String>,
) -> ExitCode {
    telemetry::init(&settings.log);
    if until.is_some_and(|until| until < since) {
        eprintln!("error: --until is before --since");
        return ExitCode::FAILURE;
    }
    let db = match store::pool(&settings.database) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if settings.database.migrate_on_start
        && let Err(e) = store::migrate(&settings.database).await
    {
        eprintln!("error: migrations failed: {}", error_chain(&e));
        return ExitCode::FAILURE;
    }
    let reconciler = match startup::standalone_reconciler(&settings, db) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if reconciler.accounts().is_empty() {
        eprintln!(
            "error: no account to read: set twilio.account_sid (TWILIO_ACCOUNT_SID) and \
             twilio.api_key/api_secret (TWILIO_API_KEY/TWILIO_API_SECRET) or an auth token"
        );
        return ExitCode::FAILURE;
    }
    let range = Range {
        since,
        until,
        senders: if senders.is_empty() {
            settings.reconcile.senders.clone()
        } else {
            senders
        },
    };
    let mut report = Report::new();
    let outcome = reconciler.backfill(&range, |p| report.progress(p)).await;
    report.finish();
    reconciler
        .ingest()
        .notifier()
        .flush(startup::NOTIFY_FLUSH_LIMIT)
        .await;
    for e in &outcome.errors {
        eprintln!(
            "error: {}; run the same backfill again to continue",
            error_chain(e)
        );
    }
    if outcome.tally.erased > 0 {
        eprintln!(
            "skipped {} messages of erased contacts",
            outcome.tally.erased
        );
    }
    println!("{}", outcome.tally);
    if outcome.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Progress on stderr: a bar on a terminal, otherwise one plain line per page (logs, CI).
enum Report {
    Bar(indicatif::ProgressBar),
    Lines,
}

impl Report {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Report::Lines;
        }
        let bar = indicatif::ProgressBar::new(1000);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed} {msg}")
        {
            bar.set_style(style);
        }
        Report::Bar(bar)
    }

    fn progress(&mut self, p: &Progress) {
        match self {
            Report::Bar(bar) => {
                bar.set_position((p.done * 1000.0) as u64);
                bar.set_message(p.tally.to_string());
            }
            Report::Lines => eprintln!(
                "backfill: {:.0}% of the range read ({} hours this run); {}",
                p.done * 100.0,
                p.chunks,
                p.tally
            ),
        }
    }

    fn finish(self) {
        if let Report::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
