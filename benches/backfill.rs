//! Backfill throughput from the fake Twilio API (the tests' `fake_twilio`, in this process),
//! in pages of 1,000, into a fresh database, through ingest as `twilio-receiver backfill`
//! does; then the same range again (everything already stored).
//!
//!     cargo bench --bench backfill -- [--messages 50000] [--pgurl postgres://postgres@127.0.0.1:5432]
//!
//! With `--serve-fake PORT` it only serves a fake API holding `--messages` messages sent in
//! the last hour (for `bench/run.sh` with `RECONCILE=1`: a server reconciling every second
//! while the load runs), until killed.

#[path = "../tests/api/fake_twilio.rs"]
#[allow(dead_code)]
mod fake_twilio;

use chrono::{TimeDelta, Utc};
use clap::Parser;
use fake_twilio::{FakeMessage, FakeTwilio};
use std::{collections::HashMap, path::PathBuf, time::Instant};
use twilio_receiver::{
    config::{Settings, Sources},
    reconcile::backfill::Range,
    startup, store,
};

const ACCOUNT: &str = "AC00000000000000000000000000000000";
const TOKEN: &str = "bench-token";
const BUSINESS: &str = "whatsapp:+14155238886";

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 50_000)]
    messages: u32,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pgurl: String,
    /// Only serve a fake API on this port.
    #[arg(long)]
    serve_fake: Option<u16>,
    #[arg(long, hide = true)]
    bench: bool,
}

/// `n` messages sent over the last `span`: seven in ten inbound from 2,000 contacts, the rest
/// outbound through the API, one in twenty with a photo.
fn fill(fake: &FakeTwilio, n: u32, span: TimeDelta) {
    let now = Utc::now();
    for i in 0..n {
        let sid = format!("SM{i:032x}");
        let contact = format!("whatsapp:+1555{:07}", i % 2000);
        let at = now - span + span * i as i32 / n as i32;
        let m = if i % 10 < 7 {
            FakeMessage::inbound(ACCOUNT, &sid, &contact, BUSINESS, "hello there", at)
        } else {
            FakeMessage::outbound_api(ACCOUNT, &sid, BUSINESS, &contact, "Your order shipped", at)
        };
        fake.add(if i % 20 == 0 {
            m.with_media("image/jpeg", b"jpeg")
        } else {
            m
        });
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(port) = args.serve_fake {
        let fake = FakeTwilio::start_on(port).await;
        fake.accept(ACCOUNT, ACCOUNT, TOKEN);
        fill(&fake, args.messages, TimeDelta::hours(1));
        eprintln!(
            "fake Twilio API on {} with {} messages",
            fake.base_url(),
            args.messages
        );
        std::future::pending::<()>().await;
    }
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, TOKEN);
    // Two hours: the backfill reads it an hour at a time, in full pages of 1,000.
    fill(&fake, args.messages, TimeDelta::hours(2));

    let db = "twr_bench_backfill";
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", args.pgurl))
        .await
        .expect("Postgres at --pgurl");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {db} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let env: HashMap<String, String> = [
        ("DATABASE_URL", format!("{}/{db}", args.pgurl)),
        ("TWILIO_ACCOUNT_SID", ACCOUNT.into()),
        ("TWILIO_AUTH_TOKEN", TOKEN.into()),
        ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", fake.base_url()),
        ("TWILIO_RECEIVER__SPOOL__DIR", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::load(&Sources {
        config_dir: PathBuf::from("config"),
        config_file: None,
        env,
    })
    .expect("settings");
    store::migrate(&settings.database)
        .await
        .expect("migrations");
    let pool = store::pool(&settings.database).unwrap();
    let reconciler = startup::standalone_reconciler(&settings, pool.clone()).unwrap();
    let range = Range {
        since: Utc::now() - TimeDelta::hours(3),
        until: Some(Utc::now()),
        senders: Vec::new(),
    };
    for run in ["first run (nothing stored)", "second run (all stored)"] {
        let started = Instant::now();
        let cpu = cpu_seconds();
        let outcome = reconciler.backfill(&range, |_| {}).await;
        let took = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu;
        assert!(outcome.complete(), "{:?}", outcome.errors);
        println!(
            "backfill {run}: {} messages in {took:.2} s = {:.0} messages/s; {}; process CPU {cpu:.2} s",
            args.messages,
            f64::from(args.messages) / took,
            outcome.tally
        );
    }
    let stored: i64 = sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        i64::from(args.messages),
        "every message stored once"
    );
}

/// CPU seconds of this process so far (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
