//! The local spool: what is answered while Postgres is away is kept on disk, and stored with
//! its original receive time, exactly once, when Postgres answers again.

use crate::{fallback::fallback_call, helpers::*, status::callback};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::path::Path;

const CONTACT: &str = "whatsapp:+15551234567";

fn env_with_spool<'a>(dir: &'a Path, rules: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TWILIO_RECEIVER__SPOOL__DIR", dir.to_str().unwrap()),
        ("TWILIO_RECEIVER__RULES__PATH", rules.to_str().unwrap()),
        (
            "TWILIO_RECEIVER__REPLY__FALLBACK_BODY",
            "Thanks, we will get back to you",
        ),
    ]
}

/// The app as it runs while the database refuses connections.
fn app_without_database(env: &[(&str, &str)]) -> TestApp {
    let mut env = env.to_vec();
    env.extend([
        (
            "TWILIO_RECEIVER__DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/none",
        ),
        ("TWILIO_RECEIVER__DATABASE__ACQUIRE_TIMEOUT_MS", "300"),
    ]);
    let settings = settings(&env);
    let pool = twilio_receiver::store::pool(&settings.database).unwrap();
    TestApp::with_settings(pool, settings)
}

fn opt_out_rules(name: &str) -> std::path::PathBuf {
    crate::rules::rules_file(
        name,
        "[[rules]]\nname = \"opt-out\"\nwhen = { keywords = \"STOP\" }\nconsent = \"opt_out\"\nreply = { body = \"Bye\" }\n",
    )
}

#[sqlx::test]
async fn webhooks_answered_during_an_outage_are_stored_once_when_postgres_returns(pool: PgPool) {
    let dir = scratch_dir("spool-outage");
    let rules = opt_out_rules("spool-outage");
    let env = env_with_spool(&dir, &rules);
    let down = app_without_database(&env);
    let outage_at = down.now();

    // Message 1: the primary call fails, then the fallback call answers (as Twilio does).
    let mut stop = whatsapp_text(&sid(1), CONTACT, "STOP");
    assert_eq!(
        down.post_signed("/twilio/messages", &stop).await.status,
        503
    );
    stop.extend(pairs(&[
        ("ErrorCode", "11200"),
        ("ErrorUrl", "https://hooks.example.test/twilio/messages"),
    ]));
    let fallback = down.post_signed("/twilio/fallback", &stop).await;
    assert_eq!(fallback.status, 200);
    assert!(fallback.body.contains("Thanks, we will get back to you"));
    // Message 2: only the primary call (no fallback URL configured in Twilio).
    let second = whatsapp_text(&sid(2), CONTACT, "hello?");
    assert_eq!(
        down.post_signed("/twilio/messages", &second).await.status,
        503
    );
    // A status callback is acknowledged once it is on disk.
    let delivered = callback(&sid(9), "delivered", &[]);
    assert_eq!(
        down.post_signed("/twilio/status", &delivered).await.status,
        204
    );

    let spool = down.state.ingest.spool().unwrap().clone();
    assert_eq!(spool.pending().unwrap().len(), 4);
    // Still ready: an orchestrator must keep sending traffic to a server that spools.
    let ready = down
        .send(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (200, "ready: database unavailable, webhooks are spooled\n")
    );
    let kept: Vec<(std::path::PathBuf, Vec<u8>)> = spool
        .pending()
        .unwrap()
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();

    // Postgres is back: the same spool, a live pool, an hour later.
    let up = TestApp::with_env(pool, &env);
    up.set_now(outage_at + chrono::Duration::hours(1));
    let stored = up.replay_spool().await;

    assert_eq!(stored, 4);
    assert!(
        spool.pending().unwrap().is_empty(),
        "replayed records are removed"
    );
    assert_eq!(
        up.count("select count(*) from messages where direction = 'inbound'")
            .await,
        2
    );
    let received: Vec<DateTime<Utc>> =
        sqlx::query_scalar("select received_at from messages where direction = 'inbound'")
            .fetch_all(&up.pool)
            .await
            .unwrap();
    assert!(
        received.iter().all(|t| *t == outage_at),
        "original receive time kept"
    );
    assert_eq!(
        up.count("select count(*) from webhook_failures where error_code = 11200")
            .await,
        1
    );
    assert_eq!(
        up.count("select count(*) from message_status_events where status = 'delivered'")
            .await,
        1
    );
    // The opt-out sent during the outage still opts out, though no rule answered it.
    assert!(
        !up.metrics()
            .await
            .contains("twilio_receiver_rule_matches_total{")
    );
    assert_eq!(
        up.count("select count(*) from consent where state = 'opted_out'")
            .await,
        1
    );
    // The reply rows say what was really answered: the fallback TwiML for message 1 (not the
    // rule's "Bye", never sent); none for message 2, whose only call was answered 503.
    let replies: Vec<(String, Option<Vec<String>>, String)> =
        sqlx::query_as("select message_sid, rule, twiml from replies order by message_sid")
            .fetch_all(&up.pool)
            .await
            .unwrap();
    assert_eq!(replies, vec![(sid(1), None, fallback.body.clone())]);

    // Replaying the same records again (a crash before their removal) changes nothing.
    for (path, bytes) in &kept {
        std::fs::write(path, bytes).unwrap();
    }
    let before = table_counts(&up).await;
    let again = up.replay_spool().await;
    assert_eq!(again, 4);
    assert_eq!(table_counts(&up).await, before);
    std::fs::remove_dir_all(dir).unwrap();
}

async fn table_counts(app: &TestApp) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "messages",
        "message_media",
        "message_status_events",
        "conversations",
        "sessions",
        "webhook_failures",
        "replies",
        "consent",
    ] {
        counts.push(app.count(&format!("select count(*) from {table}")).await);
    }
    counts
}

#[sqlx::test]
async fn a_record_that_cannot_be_read_is_set_aside_and_the_rest_stored(pool: PgPool) {
    let dir = scratch_dir("spool-corrupt");
    let rules = opt_out_rules("spool-corrupt");
    let env = env_with_spool(&dir, &rules);
    let down = app_without_database(&env);
    assert_eq!(
        down.post_signed("/twilio/fallback", &fallback_call(1))
            .await
            .status,
        200
    );
    // Sorted first, so it is met before the good record.
    std::fs::write(
        dir.join("00000000000000000000-x-0000000000.json"),
        b"{not json",
    )
    .unwrap();

    let up = TestApp::with_env(pool, &env);
    let spool = up.state.ingest.spool().unwrap().clone();
    assert_eq!(up.replay_spool().await, 1);

    assert_eq!(up.count("select count(*) from messages").await, 1);
    assert!(spool.pending().unwrap().is_empty());
    assert!(
        dir.join("failed/00000000000000000000-x-0000000000.json")
            .exists()
    );
    let metrics = up.metrics().await;
    assert!(
        metrics.contains("twilio_receiver_spool_replayed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("twilio_receiver_spool_set_aside_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("twilio_receiver_spool_pending 0"),
        "{metrics}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Without a spool a status callback cannot be kept, so it is not acknowledged.
#[tokio::test]
async fn without_a_spool_a_status_callback_during_an_outage_gets_503() {
    let down = app_without_database(&[]);
    assert_eq!(
        down.post_signed("/twilio/status", &callback(&sid(1), "sent", &[]))
            .await
            .status,
        503
    );
}

/// A spool directory that cannot be written stops the server at start, not during an outage.
#[tokio::test]
async fn an_unusable_spool_directory_is_a_configuration_error() {
    let settings = settings(&[("TWILIO_RECEIVER__SPOOL__DIR", "/proc/no-spool-here")]);
    let pool = sqlx::PgPool::connect_lazy("postgres://postgres@127.0.0.1:1/none").unwrap();
    let Err(error) = twilio_receiver::startup::app_state(&settings, pool, Default::default())
    else {
        panic!("started with an unusable spool");
    };
    assert!(error.to_string().contains("spool.dir"), "{error}");
}

/// A stalled database (a long lock on the tables the hot path writes): webhooks are answered
/// well inside Twilio's 15 s instead of hanging, kept in the spool, and stored when the
/// stall ends.
#[sqlx::test]
async fn a_stalled_database_answers_in_time_and_catches_up_when_the_stall_ends(pool: PgPool) {
    let dir = scratch_dir("spool-stall");
    let rules = opt_out_rules("spool-stall");
    let mut env = env_with_spool(&dir, &rules);
    env.push(("TWILIO_RECEIVER__DATABASE__STATEMENT_TIMEOUT_MS", "500"));
    let app = TestApp::with_own_pool(&pool, &env);
    let mut stall = pool.begin().await.unwrap();
    sqlx::query("lock table messages, conversations in access exclusive mode")
        .execute(&mut *stall)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let primary = app
        .post_signed("/twilio/messages", &whatsapp_text(&sid(1), CONTACT, "hi"))
        .await;
    let primary_took = started.elapsed();
    let started = std::time::Instant::now();
    let status = app
        .post_signed("/twilio/status", &callback(&sid(9), "read", &[]))
        .await;
    let status_took = started.elapsed();
    println!(
        "stalled database: primary {} in {primary_took:?}, status {} in {status_took:?}",
        primary.status, status.status
    );
    assert_eq!(primary.status, 503);
    assert_eq!(status.status, 204);
    assert!(
        primary_took < std::time::Duration::from_secs(5),
        "{primary_took:?}"
    );
    assert_eq!(
        app.state.ingest.spool().unwrap().pending().unwrap().len(),
        2
    );

    stall.commit().await.unwrap();
    let stored = app.replay_spool().await;
    assert_eq!(stored, 2);
    assert_eq!(app.count("select count(*) from messages").await, 2);
    assert_eq!(app.post_text(3).await.status, 200);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Review finding: the replay of a spooled primary call can store the message before
/// Twilio's fallback call for it arrives. That call must still answer (the fallback reply),
/// and its answer is the one on record.
#[sqlx::test]
async fn a_fallback_call_after_its_primary_was_replayed_still_answers_once(pool: PgPool) {
    let dir = scratch_dir("spool-race");
    let rules = opt_out_rules("spool-race");
    let env = env_with_spool(&dir, &rules);
    let down = app_without_database(&env);
    let message = whatsapp_text(&sid(1), CONTACT, "hello?");
    assert_eq!(
        down.post_signed("/twilio/messages", &message).await.status,
        503
    );

    let up = TestApp::with_env(pool, &env);
    assert_eq!(up.replay_spool().await, 1);
    assert_eq!(up.count("select count(*) from replies").await, 0);
    let mut call = message.clone();
    call.extend(pairs(&[("ErrorCode", "11200")]));
    let answered = up.post_signed("/twilio/fallback", &call).await;
    let again = up.post_signed("/twilio/fallback", &call).await;

    assert_eq!(answered.status, 200);
    assert!(
        answered.body.contains("Thanks, we will get back to you"),
        "{}",
        answered.body
    );
    assert_eq!(again.body, answered.body, "a retry gets the same answer");
    let twiml: String = sqlx::query_scalar("select twiml from replies where message_sid = $1")
        .bind(sid(1))
        .fetch_one(&up.pool)
        .await
        .unwrap();
    assert_eq!(twiml, answered.body);
    assert_eq!(up.count("select count(*) from messages").await, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A fallback call whose live write committed but was cut off by the deadline is spooled
/// too; its replay must not add a second failure row. The live row carries the id the spool
/// record gets, so the replay finds it.
#[sqlx::test]
async fn a_fallback_call_stored_live_and_replayed_is_one_failure_row(pool: PgPool) {
    let dir = scratch_dir("spool-twice");
    let rules = opt_out_rules("spool-twice");
    let app = TestApp::with_env(pool, &env_with_spool(&dir, &rules));
    let call = fallback_call(1);
    assert_eq!(app.post_signed("/twilio/fallback", &call).await.status, 200);
    let id: String = sqlx::query_scalar("select spool_record from webhook_failures")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    // What the handler writes when the deadline passes after the commit went out.
    app.state
        .ingest
        .spool()
        .unwrap()
        .append(twilio_receiver::spool::Record {
            id,
            kind: twilio_receiver::twilio::Kind::Fallback,
            received_at: app.now(),
            params: call,
            query: vec![],
            base: BASE.into(),
            answered: None,
        })
        .await
        .unwrap();
    assert_eq!(app.replay_spool().await, 1);

    assert_eq!(app.count("select count(*) from webhook_failures").await, 1);
    assert_eq!(app.count("select count(*) from messages").await, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A STOP answered 503 during an outage and replayed (it opts the contact out, and records
/// no reply): a fallback call for it afterwards answers nothing, not `reply.fallback_body`.
#[sqlx::test]
async fn a_late_fallback_call_for_a_replayed_opt_out_stays_silent(pool: PgPool) {
    let dir = scratch_dir("spool-late-opt-out");
    let rules = opt_out_rules("spool-late-opt-out");
    let env = env_with_spool(&dir, &rules);
    let down = app_without_database(&env);
    let stop = whatsapp_text(&sid(1), CONTACT, "STOP");
    assert_eq!(
        down.post_signed("/twilio/messages", &stop).await.status,
        503
    );

    let up = TestApp::with_env(pool, &env);
    assert_eq!(up.replay_spool().await, 1);
    assert_eq!(
        up.count("select count(*) from consent where state = 'opted_out'")
            .await,
        1
    );
    let mut call = stop.clone();
    call.extend(pairs(&[("ErrorCode", "11200")]));
    let late = up.post_signed("/twilio/fallback", &call).await;
    assert_eq!(
        (late.status.as_u16(), late.body.as_str()),
        (200, twilio_receiver::twiml::EMPTY)
    );
    // Recorded as the answer: a second call gets the same.
    let again = up.post_signed("/twilio/fallback", &call).await;
    assert_eq!(again.body, late.body);
    assert_eq!(up.count("select count(*) from replies").await, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `messages.source` says how each message first arrived, and status events say they came
/// from a callback: the primary URL, the fallback URL, the spool's replay, and an outbound
/// message first seen in a status callback.
#[sqlx::test]
async fn each_message_says_how_it_first_arrived(pool: PgPool) {
    let dir = scratch_dir("spool-source");
    let rules = opt_out_rules("spool-source");
    let env = env_with_spool(&dir, &rules);
    let down = app_without_database(&env);
    let spooled = whatsapp_text(&sid(3), CONTACT, "during the outage");
    assert_eq!(
        down.post_signed("/twilio/messages", &spooled).await.status,
        503
    );

    let up = TestApp::with_env(pool, &env);
    assert_eq!(up.replay_spool().await, 1);
    assert_eq!(up.post_text(1).await.status, 200);
    assert_eq!(
        up.post_signed("/twilio/fallback", &fallback_call(2))
            .await
            .status,
        200
    );
    // A retry on the primary URL after the fallback stored it: still the fallback's.
    let retry = whatsapp_text(&sid(2), "whatsapp:+15551234567", "lost?");
    assert_eq!(up.post_signed("/twilio/messages", &retry).await.status, 200);
    assert_eq!(
        up.post_signed("/twilio/status", &callback(&sid(9), "sent", &[]))
            .await
            .status,
        204
    );
    let sources: Vec<(String, String)> =
        sqlx::query_as("select message_sid, source from messages order by message_sid")
            .fetch_all(&up.pool)
            .await
            .unwrap();
    assert_eq!(
        sources,
        [
            (sid(1), "webhook".to_owned()),
            (sid(2), "fallback".to_owned()),
            (sid(3), "spool".to_owned()),
            (sid(9), "webhook".to_owned()),
        ]
    );
    assert_eq!(
        up.count("select count(*) from message_status_events where source = 'callback'")
            .await,
        1
    );
    std::fs::remove_dir_all(dir).unwrap();
}
