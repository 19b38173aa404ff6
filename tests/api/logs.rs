//! What the logs say: one span per request with path, request id and message SID; never a
//! token, a phone number, a body or a query string at info level.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use sqlx::PgPool;
use std::{
    io::Write,
    sync::{Arc, Mutex},
};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, layer::SubscriberExt};
use twilio_receiver::twilio::signature;

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// JSON logs at `filter`, as `log.format = "json"` produces them, for the current thread.
fn capture(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
    every_callsite_has_a_subscriber();
    let out = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(out.clone()),
        );
    (out.clone(), tracing::subscriber::set_default(subscriber))
}

#[sqlx::test]
async fn info_logs_name_the_request_but_never_the_person_or_the_secret(pool: PgPool) {
    let (logs, _guard) = capture("info");
    let app = TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__REPLY__BODY", "secret-reply-text")],
    );
    let contact = "whatsapp:+15557654321";

    // A POST, a GET (From and Body travel in its query string), and a forgery.
    app.post_signed(
        "/twilio/messages",
        &whatsapp_text(&sid(1), contact, "private words"),
    )
    .await;
    let query =
        serde_urlencoded::to_string(whatsapp_text(&sid(2), contact, "private words")).unwrap();
    let path = format!("/twilio/messages?{query}");
    let get = Request::get(&path)
        .header(
            "x-twilio-signature",
            signature::compute(TOKEN.as_bytes(), &format!("{BASE}{path}"), &[]),
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(get).await.status, 200);
    let forged = signed_post(
        &format!("{BASE}/twilio/messages"),
        "/twilio/messages",
        &whatsapp_text(&sid(3), contact, "x"),
        "wrong-token",
    );
    assert_eq!(app.send(forged).await.status, 403);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stored = lines
        .iter()
        .find(|l| l["fields"]["message"] == "stored inbound message")
        .expect("a line per stored message");
    assert_eq!(stored["span"]["path"], "/twilio/messages");
    assert_eq!(stored["span"]["message_sid"], sid(1));
    assert!(!stored["span"]["request_id"].as_str().unwrap().is_empty());
    let rejected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "rejected a request: signature not valid")
        .expect("a rejection is logged");
    assert_eq!(rejected["level"], "WARN");
    assert!(
        rejected["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("no candidate URL matched")
    );

    for needle in [
        "5557654321",
        "7654321",
        "private",
        "words",
        TOKEN,
        "wrong-token",
        "secret-reply-text",
        "MessageSid=",
    ] {
        assert!(
            !text.contains(needle),
            "{needle:?} leaked into the logs:\n{text}"
        );
    }
}

#[sqlx::test]
async fn unverified_requests_are_logged_as_such(pool: PgPool) {
    let (logs, _guard) = capture("warn");
    let env = [
        ("TWILIO_RECEIVER__TWILIO__VERIFY_SIGNATURES", "false"),
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
    ];
    // Starting says it loudly...
    let url = database_url(&pool);
    let mut with_db = env.to_vec();
    with_db.push(("TWILIO_RECEIVER__DATABASE__URL", &url));
    twilio_receiver::startup::Application::build(&settings(&with_db))
        .await
        .unwrap();
    // ...and so does every request.
    let app = TestApp::with_env(pool, &env);
    let body =
        serde_urlencoded::to_string(whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi")).unwrap();
    let request = Request::post("/twilio/messages")
        .header("content-type", FORM)
        .body(Body::from(body))
        .unwrap();

    assert_eq!(app.send(request).await.status, 200);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("requests are NOT verified"), "{text}");
    assert!(text.contains("accepted an unverified request"), "{text}");
    // ...and counts it.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("twilio_receiver_unverified_requests_total 1\n"),
        "{metrics}"
    );
}

/// A full scenario at trace level: no auth token, database password or Basic password appears
/// in any log line at any level.
#[sqlx::test]
async fn no_secret_reaches_the_logs_even_at_trace_level(pool: PgPool) {
    let (logs, _guard) = capture("trace");
    // Trust authentication ignores the password, so the server connects while carrying one.
    let url = database_url(&pool).replacen(
        "postgres://postgres@",
        "postgres://postgres:db-pa55word@",
        1,
    );
    assert!(url.contains("db-pa55word"), "{url}");
    let env = [
        ("TWILIO_RECEIVER__DATABASE__URL", url.as_str()),
        ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__USER", "twilio"),
        (
            "TWILIO_RECEIVER__SERVER__BASIC_AUTH__PASSWORD",
            "basic-pa55word",
        ),
        ("TWILIO_RECEIVER__REPLY__BODY", "hello"),
    ];
    let settings = settings(&env);
    let own = twilio_receiver::store::pool(&settings.database).unwrap();
    let app = TestApp::with_settings(own, settings);
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("twilio:basic-pa55word")
    );
    let url_messages = format!("{BASE}/twilio/messages");
    for (n, token, with_auth) in [
        (1, TOKEN, true),
        (2, "forged-token", true),
        (3, TOKEN, false),
    ] {
        let mut r = signed_post(
            &url_messages,
            "/twilio/messages",
            &whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi"),
            token,
        );
        if with_auth {
            r.headers_mut()
                .insert("authorization", auth.parse().unwrap());
        }
        app.send(r).await;
    }
    let status = pairs(&[
        ("MessageSid", "SM55555555555555555555555555555555"),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", BUSINESS),
        ("To", "whatsapp:+15551234567"),
        ("MessageStatus", "sent"),
    ]);
    let mut r = signed_post(
        &format!("{BASE}/twilio/status"),
        "/twilio/status",
        &status,
        TOKEN,
    );
    r.headers_mut()
        .insert("authorization", auth.parse().unwrap());
    assert_eq!(app.send(r).await.status, 204);
    assert_eq!(
        app.count("select count(*) from messages").await,
        2,
        "the scenario really ran"
    );

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("stored status callback") && text.contains("\"level\":\"DEBUG\""),
        "trace logging captured: {text}"
    );
    let basic_b64 = base64::engine::general_purpose::STANDARD.encode("twilio:basic-pa55word");
    for secret in [TOKEN, "db-pa55word", "basic-pa55word", basic_b64.as_str()] {
        assert!(!text.contains(secret), "{secret:?} leaked into the logs");
    }
}
