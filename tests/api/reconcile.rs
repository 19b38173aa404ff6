//! Reconciliation against the fake Twilio API: gap-fill, enrichment, stale statuses, erased
//! contacts, two replicas, and `backfill` (resumable). Everything found is stored through
//! ingest, as webhooks are.

use crate::{
    fake_twilio::{Failure, FakeMessage, FakeTwilio},
    helpers::{BUSINESS, TOKEN, TestApp, settings, sid, whatsapp_text},
    status::callback,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use sqlx::PgPool;
use twilio_receiver::{
    reconcile::{
        ReconcileError, Reconciler, Tally,
        backfill::{Progress, Range},
    },
    rest::{RestClient, RestError, RestSettings},
};

/// The account of `helpers::whatsapp_text` and `status::callback`.
const ACCOUNT: &str = "AC00000000000000000000000000000000";
const ANA: &str = "whatsapp:+15551234567";
const BEA: &str = "whatsapp:+15557654321";

/// The test clock's start (TestApp's).
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
}

/// `minutes` before the test clock's start.
fn ago(minutes: i64) -> DateTime<Utc> {
    t0() - TimeDelta::minutes(minutes)
}

/// How the list filters write a time.
fn seconds(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A fake that accepts the test token for ACCOUNT.
async fn fake() -> FakeTwilio {
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, TOKEN);
    fake
}

/// The app, with reconcile on against `fake` and the real opt-out rules.
fn app(pool: PgPool, fake: &FakeTwilio) -> TestApp {
    TestApp::with_settings(pool, deployment(fake))
}

fn deployment(fake: &FakeTwilio) -> twilio_receiver::config::Settings {
    let base = fake.base_url();
    settings(&[
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", base.as_str()),
        ("TWILIO_RECEIVER__RECONCILE__ENABLED", "true"),
        ("TWILIO_RECEIVER__RECONCILE__STALE_AFTER_MS", "3600000"),
        ("TWILIO_RECEIVER__RULES__PATH", "config/rules.toml"),
    ])
}

/// The app's reconciler, with waits between API attempts shortened to milliseconds.
fn reconciler(app: &TestApp, fake: &FakeTwilio, page_size: u32) -> Reconciler {
    let settings = deployment(fake);
    let mut rest = RestSettings::from_settings(&settings).unwrap();
    rest.backoff_base = std::time::Duration::from_millis(1);
    rest.backoff_max = std::time::Duration::from_millis(5);
    let client = RestClient::new(rest, app.state.metrics.clone()).unwrap();
    Reconciler::new(
        app.state.ingest.clone(),
        client,
        app.app_db.clone(),
        app.state.metrics.clone(),
        settings.reconcile.clone(),
    )
    .with_page_size(page_size)
}

/// `n` inbound texts from ANA, a minute apart, ending at `end`.
fn inbound_texts(fake: &FakeTwilio, first: u32, n: u32, end: DateTime<Utc>) {
    for i in 0..n {
        let at = end - TimeDelta::minutes(i64::from(n - 1 - i));
        fake.add(inbound(first + i, ANA, &format!("hello {i}"), at));
    }
}

/// Message `n`, from `contact` to the business.
fn inbound(n: u32, contact: &str, body: &str, at: DateTime<Utc>) -> FakeMessage {
    FakeMessage::inbound(ACCOUNT, &sid(n), contact, BUSINESS, body, at)
}

/// Message `n`, from the business to `contact`, sent through the API.
fn outbound(n: u32, contact: &str, body: &str, at: DateTime<Utc>) -> FakeMessage {
    FakeMessage::outbound_api(ACCOUNT, &sid(n), BUSINESS, contact, body, at)
}

fn list_requests(fake: &FakeTwilio) -> Vec<crate::fake_twilio::Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/Messages.json"))
        .collect()
}

#[sqlx::test]
async fn gap_fill_stores_what_is_missing_once_and_a_second_pass_nothing(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    // One message arrived as a webhook; two never did.
    fake.add(inbound(1, ANA, "hi", ago(10)));
    assert_eq!(
        app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
            .await
            .status,
        200
    );
    fake.add(
        inbound(2, BEA, "photo", t0() - TimeDelta::minutes(5)).with_media("image/jpeg", b"jpeg"),
    );
    fake.add(outbound(
        3,
        BEA,
        "Your order shipped",
        t0() - TimeDelta::minutes(4),
    ));

    let first = r.pass().await.unwrap().unwrap();
    assert_eq!(
        (
            first.inbound,
            first.outbound,
            first.already_stored,
            first.failed
        ),
        (1, 1, 1, 0)
    );
    let found = sqlx::query!(
        r#"select message_sid, direction, source, body, business, contact, received_at, status,
                  twilio_created_at, twilio_sent_at, price::text as price, price_unit,
                  num_segments, num_media,
                  (select count(*) from message_media mm where mm.message_sid = m.message_sid) as "media!"
           from messages m where source = 'reconcile' order by message_sid"#
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(found.len(), 2);
    let (photo, shipped) = (&found[0], &found[1]);
    assert_eq!(
        (
            photo.direction.as_str(),
            photo.body.as_deref(),
            photo.contact.as_str(),
            photo.media,
            photo.num_media
        ),
        ("inbound", Some("photo"), BEA, 1, Some(1))
    );
    // Twilio's date_created is the receive time: the fake's is a second before date_sent.
    assert_eq!(
        photo.received_at,
        t0() - TimeDelta::minutes(5) - TimeDelta::seconds(1)
    );
    assert_eq!(photo.twilio_created_at, Some(photo.received_at));
    assert_eq!(photo.twilio_sent_at, Some(t0() - TimeDelta::minutes(5)));
    assert_eq!(photo.status.as_deref(), Some("received"));
    assert_eq!(
        (
            shipped.direction.as_str(),
            shipped.body.as_deref(),
            shipped.business.as_str(),
            shipped.contact.as_str()
        ),
        ("outbound", Some("Your order shipped"), BUSINESS, BEA)
    );
    assert_eq!(
        (shipped.price.as_deref(), shipped.price_unit.as_deref()),
        (Some("-0.00500"), Some("USD"))
    );
    assert_eq!(shipped.num_segments, Some(1));
    assert_eq!(shipped.status.as_deref(), Some("delivered"));
    assert_eq!(shipped.twilio_sent_at, Some(ago(4)));
    let media_url: String = sqlx::query_scalar("select url from message_media")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(media_url.starts_with(&fake.base_url()), "{media_url}");
    // The resource's JSON is what is kept as params.
    let params: serde_json::Value =
        sqlx::query_scalar("select params from messages where message_sid = $1")
            .bind(sid(3))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(params["direction"], "outbound-api");
    assert_eq!(params["num_segments"], "1");
    // The event it brought is the API's.
    assert_eq!(
        app.count("select count(*) from message_status_events where source = 'reconcile' and status = 'delivered'").await,
        1
    );
    // Nothing from the API was answered.
    assert_eq!(app.count("select count(*) from replies").await, 1);

    // The first pass, with no checkpoint, listed the overlap before the pass, up to two
    // minutes before it (what is younger may still arrive as a webhook).
    let first_list = &list_requests(&fake)[0];
    assert_eq!(
        first_list.param("DateSent>"),
        Some(seconds(ago(62)).as_str())
    );
    assert_eq!(
        first_list.param("DateSent<"),
        Some(seconds(ago(2)).as_str())
    );
    assert_eq!(first_list.param("PageSize"), Some("1000"));
    let checkpoint: DateTime<Utc> =
        sqlx::query_scalar("select checkpoint from reconcile_checkpoints")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(checkpoint, ago(2));

    // Half an hour later, the next pass lists from the checkpoint less the overlap.
    app.set_now(t0() + TimeDelta::minutes(30));
    let second = r.pass().await.unwrap().unwrap();
    assert_eq!(
        second,
        Tally {
            already_stored: 3,
            ..Tally::default()
        }
    );
    assert_eq!(app.count("select count(*) from messages").await, 3);
    assert_eq!(app.count("select count(*) from message_media").await, 1);
    let second_list = &list_requests(&fake)[1];
    assert_eq!(
        second_list.param("DateSent>"),
        Some(seconds(ago(62)).as_str())
    );
    assert_eq!(
        second_list.param("DateSent<"),
        Some(seconds(t0() + TimeDelta::minutes(28)).as_str())
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"twilio_receiver_reconcile_found_total{direction="inbound"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"twilio_receiver_reconcile_found_total{direction="outbound"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"twilio_receiver_reconcile_passes_total{result="ok"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("twilio_receiver_reconcile_checkpoint_age_seconds"),
        "{metrics}"
    );
}

#[sqlx::test]
async fn an_inbound_found_late_is_not_answered_but_opts_out_in_its_own_window(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    let sent = t0() - TimeDelta::minutes(30);
    fake.add(inbound(1, ANA, "STOP", sent));

    let tally = r.pass().await.unwrap().unwrap();
    assert_eq!(tally.inbound, 1);
    let consent = sqlx::query!(
        "select state, message_sid from consent where contact = $1",
        ANA
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (consent.state.as_str(), consent.message_sid),
        ("opted_out", sid(1))
    );
    assert_eq!(app.count("select count(*) from replies").await, 0);
    let created = sent - TimeDelta::seconds(1);
    let window = sqlx::query!(
        "select window_expires_at, session_started_at from conversations where contact = $1",
        ANA
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        window.window_expires_at,
        Some(created + TimeDelta::hours(24))
    );
    assert_eq!(window.session_started_at, Some(created));
}

#[sqlx::test]
async fn a_stop_found_late_does_not_undo_a_later_opt_in(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    // Live: STOP, then START (now). Found late: a STOP sent between the two.
    app.set_now(t0() - TimeDelta::hours(2));
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "STOP"))
        .await;
    app.set_now(t0());
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(2), ANA, "START"))
        .await;
    fake.add(inbound(3, ANA, "stop", t0() - TimeDelta::hours(1)));

    assert_eq!(r.pass().await.unwrap().unwrap().inbound, 1);
    let consent = sqlx::query!(
        "select state, message_sid from consent where contact = $1",
        ANA
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (consent.state.as_str(), consent.message_sid),
        ("opted_in", sid(2))
    );
}

#[sqlx::test]
async fn enrichment_fills_body_parties_media_and_times_of_a_callback_only_message(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    fake.add(
        outbound(7, ANA, "Your code is 1234", t0() - TimeDelta::minutes(1))
            .with_media("application/pdf", b"%PDF"),
    );
    // Sent by another system: only its status callback reaches us.
    let r1 = app
        .post_signed("/twilio/status", &callback(&sid(7), "sent", &[]))
        .await;
    assert_eq!(r1.status, 204);
    assert_eq!(app.count("select count(*) from enrichment_jobs").await, 1);
    assert_eq!(
        app.count("select count(*) from messages where body is null")
            .await,
        1
    );

    assert_eq!(r.enrich_due().await.unwrap(), 1);
    let m = sqlx::query!(
        r#"select body, status, source, twilio_created_at, price::text as price, num_media,
                  (select count(*) from message_media mm where mm.message_sid = m.message_sid) as "media!"
           from messages m"#
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(m.body.as_deref(), Some("Your code is 1234"));
    // The API said delivered: ahead of the callback's sent, so it is current.
    assert_eq!(m.status.as_deref(), Some("delivered"));
    // First seen through the callback: its source stays.
    assert_eq!(m.source, "webhook");
    assert_eq!(
        m.twilio_created_at,
        Some(t0() - TimeDelta::minutes(1) - TimeDelta::seconds(1))
    );
    assert_eq!(
        (m.price.as_deref(), m.num_media, m.media),
        (Some("-0.00500"), Some(1), 1)
    );
    assert_eq!(app.count("select count(*) from enrichment_jobs").await, 0);
    // Nothing left: a second round asks the API nothing.
    let before = fake.requests().len();
    assert_eq!(r.enrich_due().await.unwrap(), 0);
    assert_eq!(fake.requests().len(), before);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"twilio_receiver_reconcile_enrichments_total{result="ok"} 1"#),
        "{metrics}"
    );
}

#[sqlx::test]
async fn enrichment_of_a_message_twilio_does_not_know_is_recorded_and_not_retried(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    app.post_signed("/twilio/status", &callback(&sid(8), "sent", &[]))
        .await;
    assert_eq!(r.enrich_due().await.unwrap(), 1);
    let job =
        sqlx::query!("select last_error, next_at = 'infinity' as \"never!\" from enrichment_jobs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(job.last_error.unwrap().contains("not found (404)"));
    assert!(job.never);
    assert_eq!(r.enrich_due().await.unwrap(), 0);
}

#[sqlx::test]
async fn a_stale_sent_is_advanced_to_delivered_at_most_three_times(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    let at = t0() - TimeDelta::minutes(2);
    fake.add(outbound(1, ANA, "a", at));
    let mut stuck = outbound(2, ANA, "b", at);
    stuck.status = "sent".into();
    fake.add(stuck);
    for n in [1, 2] {
        app.post_signed("/twilio/status", &callback(&sid(n), "sent", &[]))
            .await;
    }
    // Not stale yet.
    assert_eq!(r.advance_stale().await.unwrap(), 0);
    let fetches = |fake: &FakeTwilio, n: u32| {
        fake.requests()
            .iter()
            .filter(|q| q.path.ends_with(&format!("/Messages/{}.json", sid(n))))
            .count()
    };
    assert_eq!(fetches(&fake, 1), 0);

    for round in 1..=4 {
        app.set_now(t0() + TimeDelta::hours(2 * round));
        let advanced = r.advance_stale().await.unwrap();
        assert_eq!(advanced, usize::from(round == 1), "round {round}");
    }
    let (status, updated) = sqlx::query_as::<_, (String, DateTime<Utc>)>(
        "select status, updated_at from messages where message_sid = $1",
    )
    .bind(sid(1))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(status, "delivered");
    // The event carries Twilio's date_updated.
    let event_at: DateTime<Utc> = sqlx::query_scalar(
        "select received_at from message_status_events where source = 'reconcile' and message_sid = $1",
    )
    .bind(sid(1))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(event_at, at + TimeDelta::seconds(2));
    assert!(updated >= event_at);
    // The one Twilio still reports as sent: looked up three times, then left alone.
    assert_eq!(fetches(&fake, 2), 3);
    assert_eq!(fetches(&fake, 1), 1);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("twilio_receiver_reconcile_stale_advanced_total 1"),
        "{metrics}"
    );
}

#[sqlx::test]
async fn three_pages_are_read_to_the_end(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    inbound_texts(&fake, 1, 7, ago(10));
    let tally = reconciler(&app, &fake, 3).pass().await.unwrap().unwrap();
    assert_eq!(tally.inbound, 7);
    let pages: Vec<Option<String>> = list_requests(&fake)
        .iter()
        .map(|r| r.param("Page").map(str::to_owned))
        .collect();
    assert_eq!(pages, [None, Some("1".into()), Some("2".into())]);
    assert_eq!(
        app.count("select count(*) from messages where source = 'reconcile'")
            .await,
        7
    );
}

#[sqlx::test]
async fn rate_limits_and_server_errors_are_waited_out(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    inbound_texts(&fake, 1, 2, ago(10));
    fake.fail_next(1, Failure::RateLimited(Some(1)));
    fake.fail_next(1, Failure::ServerError);
    let started = std::time::Instant::now();
    let tally = reconciler(&app, &fake, 1000).pass().await.unwrap().unwrap();
    assert_eq!(tally.inbound, 2);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After was honoured"
    );
    let statuses: Vec<u16> = list_requests(&fake).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 500, 200]);
}

#[sqlx::test]
async fn refused_credentials_are_recorded_and_the_checkpoint_stays(pool: PgPool) {
    let fake = FakeTwilio::start().await;
    // The fake accepts no credential of ours.
    fake.accept(ACCOUNT, ACCOUNT, "another-token");
    let app = app(pool, &fake);
    inbound_texts(&fake, 1, 1, ago(10));
    let e = reconciler(&app, &fake, 1000).pass().await.unwrap_err();
    assert!(
        matches!(e, ReconcileError::Rest(RestError::Unauthorized { .. })),
        "{e:?}"
    );
    assert!(!e.to_string().contains(TOKEN));
    assert_eq!(
        app.count("select count(*) from reconcile_checkpoints")
            .await,
        0
    );
    assert_eq!(app.count("select count(*) from messages").await, 0);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"twilio_receiver_reconcile_passes_total{result="failed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"twilio_receiver_rest_responses_total{status="401"} 1"#),
        "{metrics}"
    );
}

#[sqlx::test]
async fn erased_contacts_are_not_brought_back(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    fake.add(inbound(1, ANA, "hi", ago(10)));
    fake.add(outbound(2, ANA, "hello", ago(10)));
    fake.add(inbound(3, BEA, "hi", ago(10)));
    assert_eq!(r.pass().await.unwrap().unwrap().inbound, 2);
    twilio_receiver::store::erase::contact(&app.pool, ANA)
        .await
        .unwrap();
    let tombstone: String = sqlx::query_scalar("select contact_sha256 from erased_contacts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!tombstone.contains("555"), "only a hash is kept");

    let again = r.pass().await.unwrap().unwrap();
    assert_eq!(
        again,
        Tally {
            already_stored: 1,
            erased: 2,
            ..Tally::default()
        }
    );
    assert_eq!(
        app.count(&format!(
            "select count(*) from messages where contact = '{ANA}'"
        ))
        .await,
        0
    );
    let range = Range {
        since: t0() - TimeDelta::days(1),
        until: None,
        senders: Vec::new(),
    };
    let backfilled = r.backfill(&range, |_| {}).await;
    assert_eq!(backfilled.tally.erased, 2);
    assert_eq!(app.count("select count(*) from messages").await, 1);
    // A late status callback of hers stores its event (new data), but queues no lookup that
    // would bring the message's body back.
    let late = app
        .post_signed("/twilio/status", &callback(&sid(2), "read", &[]))
        .await;
    assert_eq!(late.status, 204);
    assert_eq!(app.count("select count(*) from enrichment_jobs").await, 0);
}

#[sqlx::test]
async fn two_replicas_reconciling_at_once_store_each_message_once(pool: PgPool) {
    let fake = fake().await;
    inbound_texts(&fake, 1, 20, ago(10));
    for n in 21..=30 {
        fake.add(outbound(n, BEA, "x", ago(10)));
    }
    fake.set_delay(std::time::Duration::from_millis(20));
    // Two servers on one database.
    let (one, two) = (app(pool.clone(), &fake), app(pool, &fake));
    let (r1, r2) = (reconciler(&one, &fake, 7), reconciler(&two, &fake, 7));
    // Passes take turns (one is skipped while the other holds the lock) ...
    let (p1, p2) = tokio::join!(r1.pass(), r2.pass());
    let (p1, p2) = (p1.unwrap(), p2.unwrap());
    assert!(
        p1.is_none() != p2.is_none(),
        "exactly one pass ran: {p1:?} {p2:?}"
    );
    // ... and two backfills at once race message by message: each is stored once.
    let range = Range {
        since: t0() - TimeDelta::days(1),
        until: None,
        senders: Vec::new(),
    };
    sqlx::query("delete from messages")
        .execute(&one.pool)
        .await
        .unwrap();
    sqlx::query("delete from message_keys")
        .execute(&one.pool)
        .await
        .unwrap();
    sqlx::query("delete from conversations")
        .execute(&one.pool)
        .await
        .unwrap();
    let (b1, b2) = tokio::join!(r1.backfill(&range, |_| {}), r2.backfill(&range, |_| {}));
    assert!(b1.complete() && b2.complete());
    // An inbound message is new to exactly one of them. An outbound one both may count:
    // the second to write it completes the row the first created (the same values).
    let (t1, t2) = (b1.tally, b2.tally);
    assert_eq!(t1.inbound + t2.inbound, 20, "{t1:?} {t2:?}");
    assert!(
        (10..=20).contains(&(t1.outbound + t2.outbound)),
        "{t1:?} {t2:?}"
    );
    assert_eq!(one.count("select count(*) from messages").await, 30);
    assert_eq!(
        one.count(
            "select inbound_count from conversations where contact = 'whatsapp:+15551234567'"
        )
        .await,
        20
    );
    assert_eq!(
        one.count("select count(*) from message_status_events")
            .await,
        10
    );
}

#[sqlx::test]
async fn an_interrupted_backfill_reads_only_the_hours_left(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 3);
    // Seven messages over three hours, two days ago.
    let day = t0() - TimeDelta::days(2);
    for (n, minutes) in [
        (1, 10),
        (2, 20),
        (3, 70),
        (4, 80),
        (5, 130),
        (6, 140),
        (7, 150),
    ] {
        fake.add(inbound(n, ANA, "hi", day + TimeDelta::minutes(minutes)));
    }
    let range = Range {
        since: day,
        until: Some(day + TimeDelta::hours(3) - TimeDelta::seconds(1)),
        senders: Vec::new(),
    };
    // The second hour's list is refused (for good) once the first hour is stored.
    let mut seen: Vec<Progress> = Vec::new();
    let first = r
        .backfill(&range, |p| {
            if seen.is_empty() {
                fake.fail_next(1, Failure::Unauthorized);
            }
            seen.push(*p);
        })
        .await;
    assert!(!first.complete());
    assert!(matches!(
        first.errors[..],
        [ReconcileError::Rest(RestError::Unauthorized { .. })]
    ));
    // The first and the third hour were stored.
    assert_eq!(first.tally.inbound, 5);
    assert_eq!(seen.len(), 3);
    assert!((seen[0].done - 1.0 / 3.0).abs() < 1e-9, "{:?}", seen[0]);

    let requests_before = list_requests(&fake).len();
    let second = r.backfill(&range, |_| {}).await;
    assert!(second.complete(), "{:?}", second.errors);
    assert_eq!(
        second.tally,
        Tally {
            inbound: 2,
            ..Tally::default()
        }
    );
    // Only the hour that failed was read again.
    let lists = &list_requests(&fake)[requests_before..];
    assert_eq!(lists.len(), 1);
    assert_eq!(
        lists[0].param("DateSent>"),
        Some(seconds(day + TimeDelta::hours(1)).as_str())
    );
    assert_eq!(
        app.count("select count(*) from messages where source = 'backfill'")
            .await,
        7
    );

    // A finished backfill, run again, reads everything again and finds it stored.
    let third = r.backfill(&range, |_| {}).await;
    assert_eq!(
        third.tally,
        Tally {
            already_stored: 7,
            ..Tally::default()
        }
    );
    assert_eq!(app.count("select count(*) from messages").await, 7);
}

#[sqlx::test]
async fn backfilled_history_gets_the_sessions_it_had_live(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 2);
    // A window opened at d0 and extended at d0+1h (so open until d0+25h); d0+30h opens the
    // next. Twilio lists them newest first.
    let d0 = t0() - TimeDelta::days(3);
    for (n, hours) in [(1, 0), (2, 1), (3, 30)] {
        fake.add(inbound(n, ANA, "hello", d0 + TimeDelta::hours(hours)));
    }
    let range = Range {
        since: d0 - TimeDelta::hours(1),
        until: Some(t0() - TimeDelta::days(1)),
        senders: Vec::new(),
    };
    assert!(r.backfill(&range, |_| {}).await.complete());
    // date_created is a second before date_sent in the fake.
    let created = |hours| d0 + TimeDelta::hours(hours) - TimeDelta::seconds(1);
    let sessions = sqlx::query_as::<_, (DateTime<Utc>, i32)>(
        "select started_at, inbound_count from sessions order by started_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(sessions, [(created(0), 2), (created(30), 1)]);
    let window: Option<DateTime<Utc>> =
        sqlx::query_scalar("select window_expires_at from conversations")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(window, Some(created(30) + TimeDelta::hours(24)));
}

#[sqlx::test]
async fn a_message_that_cannot_be_stored_is_counted_as_failed(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    let r = reconciler(&app, &fake, 1000);
    let mut broken = inbound(1, ANA, "x", ago(10));
    broken.from = String::new();
    fake.add(broken);
    inbound_texts(&fake, 2, 1, ago(10));
    let range = Range {
        since: t0() - TimeDelta::days(1),
        until: None,
        senders: Vec::new(),
    };
    let outcome = r.backfill(&range, |_| {}).await;
    assert_eq!((outcome.tally.inbound, outcome.tally.failed), (1, 1));
    assert!(!outcome.complete());
    // It never can be: a pass counts it, and its checkpoint still moves on.
    let pass = r.pass().await.unwrap().unwrap();
    assert_eq!(
        (pass.already_stored, pass.failed, pass.retryable),
        (1, 1, 0)
    );
    assert_eq!(
        app.count("select count(*) from reconcile_checkpoints")
            .await,
        1
    );
}

/// Runs `twilio-receiver backfill` against the test's database and `fake`.
async fn backfill_command(pool: &PgPool, fake: &FakeTwilio, args: &[&str]) -> std::process::Output {
    let env = [
        (
            "TWILIO_RECEIVER__DATABASE__URL".to_owned(),
            crate::helpers::database_url(pool),
        ),
        (
            "TWILIO_RECEIVER__DATABASE__MIGRATE_ON_START".into(),
            "false".into(),
        ),
        (
            "TWILIO_RECEIVER__TWILIO__API_BASE_URL".into(),
            fake.base_url(),
        ),
        ("TWILIO_RECEIVER__SPOOL__DIR".into(), String::new()),
        ("TWILIO_ACCOUNT_SID".into(), ACCOUNT.into()),
        ("TWILIO_AUTH_TOKEN".into(), TOKEN.into()),
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
    ];
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_twilio-receiver"));
    command.arg("backfill").args(args).env_clear().envs(env);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[sqlx::test]
async fn the_backfill_command_prints_progress_and_one_summary_line(pool: PgPool) {
    let fake = fake().await;
    inbound_texts(&fake, 1, 3, t0());
    fake.add(outbound(9, ANA, "ok", t0()));
    let range = [
        "--since",
        "2026-02-28T00:00:00Z",
        "--until",
        "2026-03-02T00:00:00Z",
    ];
    let text = |o: &std::process::Output| {
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    let first = backfill_command(&pool, &fake, &range).await;
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        out, "inbound 3, outbound 1, already stored 0, failed 0\n",
        "{err}"
    );
    assert!(
        err.contains("backfill: 100% of the range read (49 hours this run)"),
        "{err}"
    );
    assert!(!format!("{out}{err}").contains(TOKEN));

    let again = backfill_command(&pool, &fake, &range).await;
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        text(&again).0,
        "inbound 0, outbound 0, already stored 4, failed 0\n"
    );
    let stored: i64 = sqlx::query_scalar("select count(*) from messages where source = 'backfill'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 4);

    // Refused by Twilio: exit 1, and the error says how to go on.
    fake.fail_next(1, Failure::Forbidden);
    let refused = backfill_command(&pool, &fake, &range).await;
    let (out, err) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("forbidden (403)") && err.contains("run the same backfill again"),
        "{err}"
    );
    assert_eq!(out, "inbound 0, outbound 0, already stored 4, failed 0\n");

    let bad = backfill_command(&pool, &fake, &["--since", "yesterday"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).1.contains("RFC 3339"));
}

#[sqlx::test]
async fn the_background_loop_stops_between_pages_and_leaves_the_lock_free(pool: PgPool) {
    let fake = fake().await;
    let app = app(pool, &fake);
    inbound_texts(&fake, 1, 20, ago(10));
    // Twenty pages of one message, each answered after 100 ms: a pass of two seconds.
    fake.set_delay(std::time::Duration::from_millis(100));
    let r = std::sync::Arc::new(reconciler(&app, &fake, 1));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(r.clone().run_until_stopped(stopped));
    stop.send_replace(true);
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("the loop ends")
        .unwrap();
    // It stopped between pages, long before the twentieth.
    assert!(
        list_requests(&fake).len() < 5,
        "{}",
        list_requests(&fake).len()
    );
    // No checkpoint for a pass cut short; the lock is free for the next.
    assert_eq!(
        app.count("select count(*) from reconcile_checkpoints")
            .await,
        0
    );
    fake.set_delay(std::time::Duration::ZERO);
    let fresh = reconciler(&app, &fake, 1000);
    assert!(fresh.pass().await.unwrap().is_some());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("twilio_receiver_reconcile_checkpoint_age_seconds"),
        "{metrics}"
    );
}

#[sqlx::test]
async fn media_found_through_the_api_is_queued_for_the_archive(pool: PgPool) {
    let fake = fake().await;
    let base = fake.base_url();
    let settings = settings(&[
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", base.as_str()),
        ("TWILIO_RECEIVER__RECONCILE__ENABLED", "true"),
        ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
        (
            "TWILIO_RECEIVER__MEDIA__STORAGE",
            "file:///nonexistent-twr-media",
        ),
    ]);
    let app = TestApp::with_settings(pool, settings);
    fake.add(inbound(1, ANA, "photo", ago(10)).with_media("image/jpeg", b"jpeg"));
    fake.add(outbound(2, ANA, "a receipt", ago(9)).with_media("application/pdf", b"%PDF"));
    assert_eq!(
        reconciler(&app, &fake, 1000)
            .pass()
            .await
            .unwrap()
            .unwrap()
            .failed,
        0
    );
    let queued: Vec<(String, Option<String>)> =
        sqlx::query_as("select message_sid, archive_state from message_media order by message_sid")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        queued,
        [
            (sid(1), Some("pending".to_owned())),
            (sid(2), Some("pending".to_owned()))
        ]
    );
}
