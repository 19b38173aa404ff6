//! Malformed or misdirected requests: a clear 4xx, never a 5xx, nothing stored.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use sqlx::PgPool;
use twilio_receiver::twilio::signature;

#[sqlx::test]
async fn a_signed_webhook_missing_a_required_parameter_is_400_and_stores_nothing(pool: PgPool) {
    let app = TestApp::new(pool);
    for (n, missing) in ["MessageSid", "AccountSid", "From", "To"]
        .into_iter()
        .enumerate()
    {
        let mut params = whatsapp_text(&sid(n as u32), "whatsapp:+15551234567", "hi");
        params.retain(|(k, _)| k != missing);
        let response = app.post_signed("/twilio/messages", &params).await;
        assert_eq!(response.status, 400, "{missing}");
        assert_eq!(
            response.body,
            format!("missing required parameter {missing}\n")
        );
    }
    assert_eq!(app.count("select count(*) from messages").await, 0);
    assert_eq!(app.count("select count(*) from conversations").await, 0);
}

#[sqlx::test]
async fn a_body_over_the_limit_is_413(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__SERVER__BODY_LIMIT_BYTES", "1024")],
    );
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", &"x".repeat(2000));
    assert_eq!(
        app.post_signed("/twilio/messages", &params).await.status,
        413
    );
    // The same message under the limit is fine.
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "short");
    assert_eq!(
        app.post_signed("/twilio/messages", &params).await.status,
        200
    );
}

#[sqlx::test]
async fn a_post_that_is_neither_form_nor_json_is_415(pool: PgPool) {
    let app = TestApp::new(pool);
    for content_type in [
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = Request::post("/twilio/messages").header(
            "x-twilio-signature",
            signature::compute(TOKEN.as_bytes(), &format!("{BASE}/twilio/messages"), &[]),
        );
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = app
            .send(request.body(Body::from("MessageSid=SM1")).unwrap())
            .await;
        assert_eq!(response.status, 415, "{content_type:?}");
    }
}

#[sqlx::test]
async fn unknown_paths_are_404_and_other_methods_405(pool: PgPool) {
    let app = TestApp::new(pool);
    let response = app
        .send(Request::post("/twilio/nope").body(Body::empty()).unwrap())
        .await;
    assert_eq!(response.status, 404);
    for method in ["PUT", "DELETE", "PATCH"] {
        let request = Request::builder()
            .method(method)
            .uri("/twilio/messages")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.send(request).await.status, 405, "{method}");
    }
}

#[sqlx::test]
async fn health_and_readiness_answer_when_the_database_does(pool: PgPool) {
    let app = TestApp::new(pool);
    let healthz = app
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (healthz.status.as_u16(), healthz.body.as_str()),
        (200, "ok\n")
    );
    let readyz = app
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (readyz.status.as_u16(), readyz.body.as_str()),
        (200, "ready\n")
    );
}

#[sqlx::test]
async fn every_response_carries_a_request_id(pool: PgPool) {
    let app = TestApp::new(pool);
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    let response = app.post_signed("/twilio/messages", &params).await;
    assert!(!response.headers["x-request-id"].is_empty());
}
