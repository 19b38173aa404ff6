//! The fallback URL: every call recorded, the message it carries stored exactly once, and a
//! TwiML answer even when the database is down.

use crate::helpers::*;
use sqlx::PgPool;

pub fn fallback_call(n: u32) -> Vec<(String, String)> {
    let mut p = whatsapp_text(&sid(n), "whatsapp:+15551234567", "lost?");
    p.extend(pairs(&[
        ("ErrorCode", "11200"),
        ("ErrorUrl", "https://hooks.example.test/twilio/messages"),
    ]));
    p
}

#[sqlx::test]
async fn a_message_the_primary_lost_is_saved_from_the_fallback_call(pool: PgPool) {
    let app = TestApp::with_env(pool, &[("TWILIO_RECEIVER__REPLY__BODY", "primary reply")]);

    let response = app.post_signed("/twilio/fallback", &fallback_call(1)).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "text/xml; charset=utf-8");
    assert!(
        response.body.contains("<Body>primary reply</Body>"),
        "{}",
        response.body
    );
    assert_eq!(
        app.count("select count(*) from messages where direction = 'inbound'")
            .await,
        1
    );
    assert_eq!(
        app.count("select inbound_count from conversations").await,
        1
    );
    assert_eq!(app.count("select count(*) from sessions").await, 1);
    let f = sqlx::query!("select message_sid, error_code, error_url, params from webhook_failures")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(f.message_sid.as_deref(), Some(sid(1).as_str()));
    assert_eq!(f.error_code, Some(11200));
    assert_eq!(
        f.error_url.as_deref(),
        Some("https://hooks.example.test/twilio/messages")
    );
    assert_eq!(f.params["ErrorCode"], "11200");
    // The primary, retried later, finds the message and replays the same answer.
    let retry = app
        .post_signed(
            "/twilio/messages",
            &whatsapp_text(&sid(1), "whatsapp:+15551234567", "lost?"),
        )
        .await;
    assert_eq!(retry.body, response.body);
    assert_eq!(app.count("select count(*) from messages").await, 1);
}

#[sqlx::test]
async fn a_message_the_primary_stored_is_not_duplicated_and_gets_the_same_reply(pool: PgPool) {
    let app = TestApp::with_env(pool, &[("TWILIO_RECEIVER__REPLY__BODY", "primary reply")]);
    let primary = app
        .post_signed(
            "/twilio/messages",
            &whatsapp_text(&sid(1), "whatsapp:+15551234567", "lost?"),
        )
        .await;

    let fallback = app.post_signed("/twilio/fallback", &fallback_call(1)).await;

    assert_eq!(fallback.status, 200);
    assert_eq!(fallback.body, primary.body);
    assert_eq!(app.count("select count(*) from messages").await, 1);
    assert_eq!(
        app.count("select inbound_count from conversations").await,
        1
    );
    assert_eq!(app.count("select count(*) from webhook_failures").await, 1);
    // Each fallback call is a row of its own.
    app.post_signed("/twilio/fallback", &fallback_call(1)).await;
    assert_eq!(app.count("select count(*) from webhook_failures").await, 2);
}

#[sqlx::test]
async fn an_empty_primary_reply_becomes_the_configured_fallback_reply_tracked_and_stored(
    pool: PgPool,
) {
    let app = TestApp::with_env(
        pool,
        &[(
            "TWILIO_RECEIVER__REPLY__FALLBACK_BODY",
            "We got it & will answer soon",
        )],
    );
    let response = app.post_signed("/twilio/fallback", &fallback_call(1)).await;
    assert_eq!(
        response.body,
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Message action="{BASE}/twilio/status?reply_to={}&amp;part=0" method="POST"><Body>We got it &amp; will answer soon</Body></Message></Response>"#,
            sid(1)
        )
    );
    assert_eq!(app.count("select count(*) from messages").await, 1);
    assert_eq!(
        app.count(
            "select count(*) from replies where bodies = array['We got it & will answer soon']"
        )
        .await,
        1
    );
    // The primary, retried, replays the answer given.
    let retry = app
        .post_signed(
            "/twilio/messages",
            &whatsapp_text(&sid(1), "whatsapp:+15551234567", "lost?"),
        )
        .await;
    assert_eq!(retry.body, response.body);
}

#[sqlx::test]
async fn fallback_calls_are_verified_against_the_fallback_url(pool: PgPool) {
    let app = TestApp::new(pool);
    let signed_for_primary = signed_post(
        &format!("{BASE}/twilio/messages"),
        "/twilio/fallback",
        &fallback_call(1),
        TOKEN,
    );
    assert_eq!(app.send(signed_for_primary).await.status, 403);
    assert_eq!(app.count("select count(*) from webhook_failures").await, 0);
    assert_eq!(app.count("select count(*) from messages").await, 0);
}

/// With the database configured by `env` out of reach, the fallback route answers its TwiML
/// once the call is spooled, while the primary route answers 503 (so Twilio moves on to the
/// fallback).
async fn fallback_answers_without_the_database(env: &[(&str, &str)], spool: &str) {
    let mut env = env.to_vec();
    env.push((
        "TWILIO_RECEIVER__REPLY__FALLBACK_BODY",
        "Thanks, we will get back to you",
    ));
    let spool_dir = scratch_dir(spool);
    env.push(("TWILIO_RECEIVER__SPOOL__DIR", spool_dir.to_str().unwrap()));
    let settings = settings(&env);
    let pool = twilio_receiver::store::pool(&settings.database).unwrap();
    let app = TestApp::with_settings(pool, settings);

    let response = app.post_signed("/twilio/fallback", &fallback_call(1)).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "text/xml; charset=utf-8");
    assert!(
        response
            .body
            .contains("<Body>Thanks, we will get back to you</Body>")
    );
    assert_eq!(app.post_text(2).await.status, 503);
    let spool = app.state.ingest.spool().unwrap();
    assert_eq!(spool.pending().unwrap().len(), 2, "both calls kept on disk");
    std::fs::remove_dir_all(spool_dir).unwrap();
}

const DEAD_DATABASE: [(&str, &str); 2] = [
    // Port 1 on loopback: nothing listens, connections are refused at once.
    (
        "TWILIO_RECEIVER__DATABASE__URL",
        "postgres://postgres@127.0.0.1:1/none",
    ),
    ("TWILIO_RECEIVER__DATABASE__ACQUIRE_TIMEOUT_MS", "300"),
];

#[tokio::test]
async fn with_the_database_down_the_fallback_still_answers_its_twiml() {
    fallback_answers_without_the_database(&DEAD_DATABASE, "fallback-down").await;
}

/// Without a spool, nothing could keep the message: the fallback answers 503 rather than a
/// 2xx for a message that is not stored anywhere.
#[tokio::test]
async fn with_the_database_down_and_no_spool_the_fallback_does_not_acknowledge() {
    let app = TestApp::with_settings(
        twilio_receiver::store::pool(&settings(&DEAD_DATABASE).database).unwrap(),
        settings(&DEAD_DATABASE),
    );
    assert_eq!(
        app.post_signed("/twilio/fallback", &fallback_call(1))
            .await
            .status,
        503
    );
}

/// A database that accepts connections and then never answers (a network partition, a hung
/// server): the fallback still answers its TwiML before the request deadline's 503.
#[tokio::test]
async fn a_database_that_stops_answering_still_gets_the_fallback_twiml_out() {
    // The kernel completes the TCP handshake from the backlog; nothing ever answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "postgres://postgres@{}/none",
        black_hole.local_addr().unwrap()
    );
    fallback_answers_without_the_database(
        &[
            ("TWILIO_RECEIVER__DATABASE__URL", &url),
            // Longer than the request deadline, so only the fallback's own deadline can save it.
            ("TWILIO_RECEIVER__DATABASE__ACQUIRE_TIMEOUT_MS", "5000"),
            ("TWILIO_RECEIVER__SERVER__REQUEST_TIMEOUT_MS", "1000"),
        ],
        "fallback-hung",
    )
    .await;
    drop(black_hole);
}
