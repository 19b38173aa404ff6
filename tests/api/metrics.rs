//! `/metrics` on the admin listener: what a scenario leaves in the numbers.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use sqlx::PgPool;
use tower::ServiceExt;

/// The value of the sample whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[sqlx::test]
async fn a_scenario_is_counted(pool: PgPool) {
    let rules = crate::rules::rules_file(
        "metrics",
        "[[rules]]\nname = \"ping\"\nwhen = { keywords = \"PING\" }\nreply = { body = \"pong\" }\n",
    );
    let app = TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__RULES__PATH", rules.to_str().unwrap())],
    );

    let ping = whatsapp_text(&sid(1), "whatsapp:+15551234567", "PING");
    app.post_signed("/twilio/messages", &ping).await;
    app.post_signed("/twilio/messages", &ping).await; // a retry
    let forged = signed_post(
        &format!("{BASE}/twilio/messages"),
        "/twilio/messages",
        &ping,
        "wrong",
    );
    assert_eq!(app.send(forged).await.status, 403);
    let unsigned = Request::post("/twilio/messages")
        .header("content-type", FORM)
        .body(Body::from("MessageSid=SM1"))
        .unwrap();
    assert_eq!(app.send(unsigned).await.status, 403);
    let status = |s: &str| {
        pairs(&[
            ("MessageSid", "SM88888888888888888888888888888888"),
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("From", BUSINESS),
            ("To", "whatsapp:+15551234567"),
            ("MessageStatus", s),
        ])
    };
    app.post_signed("/twilio/status", &status("sent")).await;
    app.post_signed("/twilio/status", &status("queued")).await; // arrives late: no advance
    app.post_signed("/twilio/status", &status("sent")).await; // redelivery: no advance
    let mut fallback = whatsapp_text(&sid(2), "whatsapp:+15551234567", "hi");
    fallback.push(("ErrorCode".into(), "11200".into()));
    app.post_signed("/twilio/fallback", &fallback).await;

    let text = app.metrics().await;
    let v =
        |series: &str| value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(
        v(r#"twilio_receiver_requests_total{route="/twilio/messages",status="200"}"#),
        2.0
    );
    assert_eq!(
        v(r#"twilio_receiver_requests_total{route="/twilio/messages",status="403"}"#),
        2.0
    );
    assert_eq!(
        v(r#"twilio_receiver_requests_total{route="/twilio/status",status="204"}"#),
        3.0
    );
    assert_eq!(
        v(r#"twilio_receiver_requests_total{route="/twilio/fallback",status="200"}"#),
        1.0
    );
    assert_eq!(
        v(r#"twilio_receiver_signature_rejections_total{reason="mismatch"}"#),
        1.0
    );
    assert_eq!(
        v(r#"twilio_receiver_signature_rejections_total{reason="missing"}"#),
        1.0
    );
    assert_eq!(v("twilio_receiver_duplicate_deliveries_total"), 1.0);
    assert_eq!(v("twilio_receiver_status_events_not_advancing_total"), 2.0);
    assert_eq!(
        v(r#"twilio_receiver_fallback_calls_total{error_code="11200"}"#),
        1.0
    );
    assert_eq!(v(r#"twilio_receiver_rule_matches_total{rule="ping"}"#), 1.0);
    // Two inbound stores, a duplicate, three status callbacks, one fallback.
    assert_eq!(v("twilio_receiver_database_seconds_count"), 6.0);
    assert!(value(&text, "twilio_receiver_pool_connections_idle").is_some());
    assert!(value(&text, "twilio_receiver_pool_connections_in_use").is_some());
    assert_eq!(v("twilio_receiver_requests_shed_total"), 0.0);
}

#[sqlx::test]
async fn metrics_answer_on_the_admin_listener_only(pool: PgPool) {
    let url = database_url(&pool);
    let settings = settings(&[
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
        ("TWILIO_RECEIVER__DATABASE__URL", &url),
    ]);
    let app = twilio_receiver::startup::Application::build(&settings)
        .await
        .unwrap();
    let admin_port = app.admin_port();
    let public = app.router();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let scraped = scrape_metrics(admin_port).await;
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(
        scraped.contains("twilio_receiver_pool_connections_idle"),
        "{scraped}"
    );
    let on_public = public
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(on_public.status(), 404);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
