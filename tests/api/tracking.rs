//! Our own replies tracked to delivery, and NOTIFY for programs that react.

use crate::helpers::*;
use sqlx::{PgPool, postgres::PgListener};
use std::time::Duration;

#[sqlx::test]
async fn a_reply_is_linked_to_its_inbound_message_and_tracked_to_read(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__REPLY__BODY", "Thanks for writing!")],
    );
    let inbound = sid(1);
    let answer = app
        .post_signed(
            "/twilio/messages",
            &whatsapp_text(&inbound, "whatsapp:+15551234567", "hi"),
        )
        .await;

    // The TwiML names where Twilio reports the reply's delivery.
    let action = answer
        .body
        .split(r#"action=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the reply carries an action URL")
        .replace("&amp;", "&");
    assert_eq!(
        action,
        format!("{BASE}/twilio/status?reply_to={inbound}&part=0")
    );

    // Twilio creates the reply message and posts its statuses to that URL.
    let path = action.strip_prefix(BASE).unwrap().to_owned();
    let reply_sid = "SM77777777777777777777777777777777";
    for status in ["queued", "sent", "delivered", "read"] {
        let params = pairs(&[
            ("MessageSid", reply_sid),
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("From", BUSINESS),
            ("To", "whatsapp:+15551234567"),
            ("MessageStatus", status),
        ]);
        let response = app.send(signed_post(&action, &path, &params, TOKEN)).await;
        assert_eq!(response.status, 204, "{status}");
    }

    let reply = sqlx::query!(
        "select direction, in_reply_to, rule, reply_part, body, status from messages where message_sid = $1",
        reply_sid
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reply.direction, "outbound");
    assert_eq!(reply.in_reply_to.as_deref(), Some(inbound.as_str()));
    assert_eq!(reply.rule, None, "the default reply has no rule");
    assert_eq!(reply.reply_part, Some(0));
    assert_eq!(reply.body.as_deref(), Some("Thanks for writing!"));
    assert_eq!(reply.status.as_deref(), Some("read"));

    let d = sqlx::query!(
        "select in_reply_to, queued_at, sent_at, delivered_at, read_at, failed_at from message_deliveries where message_sid = $1",
        reply_sid
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(d.in_reply_to.as_deref(), Some(inbound.as_str()));
    assert!(
        d.queued_at.is_some()
            && d.sent_at.is_some()
            && d.delivered_at.is_some()
            && d.read_at.is_some()
    );
    assert_eq!(d.failed_at, None);
    assert_eq!(
        app.count(
            "select count(*) from conversation_messages where contact = 'whatsapp:+15551234567'"
        )
        .await,
        2,
        "the conversation shows both halves"
    );
}

#[sqlx::test]
async fn a_later_part_of_a_reply_links_its_own_body_and_rule(pool: PgPool) {
    let app = TestApp::new(pool);
    let inbound = sid(1);
    app.post_text(1).await;
    // A two-message reply answered by rule "menu" (the rules engine writes such rows).
    sqlx::query!(
        "update replies set rule = array['menu'], bodies = array['Pick one:', '1) hours 2) prices'] where message_sid = $1",
        inbound
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let action = twilio_receiver::twilio::ReplyLink::action_url(BASE, &inbound, Some("menu"), 1);
    let path = action.strip_prefix(BASE).unwrap().to_owned();
    let params = pairs(&[
        ("MessageSid", "SM66666666666666666666666666666666"),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", BUSINESS),
        ("To", "whatsapp:+15551234567"),
        ("MessageStatus", "delivered"),
    ]);
    assert_eq!(
        app.send(signed_post(&action, &path, &params, TOKEN))
            .await
            .status,
        204
    );

    let reply = sqlx::query!(
        "select in_reply_to, rule, reply_part, body from messages where message_sid = 'SM66666666666666666666666666666666'"
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reply.in_reply_to.as_deref(), Some(inbound.as_str()));
    assert_eq!(reply.rule.as_deref(), Some("menu"));
    assert_eq!(reply.reply_part, Some(1));
    assert_eq!(reply.body.as_deref(), Some("1) hours 2) prices"));
}

#[sqlx::test]
async fn replies_carry_no_action_when_tracking_is_off(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[
            ("TWILIO_RECEIVER__REPLY__BODY", "hi"),
            ("TWILIO_RECEIVER__REPLY__TRACK_DELIVERY", "false"),
        ],
    );
    let answer = app.post_text(1).await;
    assert!(
        answer.body.contains("<Message><Body>hi</Body></Message>"),
        "{}",
        answer.body
    );
}

#[sqlx::test]
async fn the_action_url_follows_the_verified_base(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[
            ("TWILIO_RECEIVER__REPLY__BODY", "hi"),
            ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
            ("TWILIO_RECEIVER__SERVER__TRUST_FORWARDED_HEADERS", "true"),
        ],
    );
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    let mut request = signed_post(
        "https://edge.example.test/rx/twilio/messages",
        "/twilio/messages",
        &params,
        TOKEN,
    );
    let h = request.headers_mut();
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    h.insert("x-forwarded-host", "edge.example.test".parse().unwrap());
    h.insert("x-forwarded-prefix", "/rx".parse().unwrap());
    let answer = app.send(request).await;
    assert!(
        answer
            .body
            .contains(r#"action="https://edge.example.test/rx/twilio/status?reply_to="#),
        "{}",
        answer.body
    );
}

#[sqlx::test]
async fn listeners_are_notified_after_each_commit(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("twilio_receiver").await.unwrap();
    let app = TestApp::new(pool);
    let first = app.now();
    let outbound = "SM55555555555555555555555555555555";
    let status = |status: &str| {
        pairs(&[
            ("MessageSid", outbound),
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("From", BUSINESS),
            ("To", "whatsapp:+15551234567"),
            ("MessageStatus", status),
        ])
    };
    let fallback = |n: u32| {
        let mut params = whatsapp_text(&sid(n), "whatsapp:+15551234567", "x");
        params.push(("ErrorCode".into(), "11205".into()));
        params
    };

    // Every call is answered 2xx (a 503 would be spooled, and notified only on replay).
    let answered = |response: TestResponse| {
        assert!(
            response.status.is_success(),
            "{} {}",
            response.status,
            response.body
        );
    };
    answered(app.post_text(1).await);
    answered(app.post_text(1).await); // a duplicate: nothing new, no notification
    app.set_now(first + chrono::Duration::minutes(1));
    answered(app.post_signed("/twilio/status", &status("sent")).await);
    // A redelivery: no notification.
    answered(app.post_signed("/twilio/status", &status("sent")).await);
    app.set_now(first + chrono::Duration::minutes(2));
    answered(app.post_signed("/twilio/fallback", &fallback(2)).await);
    let mut got = next_notifications(&mut listener, 4).await;
    // An hour later: a new event of the outbound message, and a fallback call carrying a
    // message stored before. Each names its message's time, not the time of the call.
    // (After the first four have arrived: the new event's notification equals the first
    // one's, and Postgres folds equal notifications sent in one statement.)
    app.set_now(first + chrono::Duration::hours(1));
    answered(
        app.post_signed("/twilio/status", &status("delivered"))
            .await,
    );
    answered(app.post_signed("/twilio/fallback", &fallback(1)).await);
    got.extend(next_notifications(&mut listener, 2).await);

    let at = |minutes| first + chrono::Duration::minutes(minutes);
    assert_eq!(
        got,
        [
            ("message".to_owned(), sid(1), at(0)),
            ("status".to_owned(), outbound.to_owned(), at(1)),
            ("failure".to_owned(), sid(2), at(2)),
            ("message".to_owned(), sid(2), at(2)),
            ("status".to_owned(), outbound.to_owned(), at(1)),
            ("failure".to_owned(), sid(1), at(0)),
        ]
    );
}

/// The next `n` notifications: their kind, message SID and `received_at`.
async fn next_notifications(
    listener: &mut PgListener,
    n: usize,
) -> Vec<(String, String, chrono::DateTime<chrono::Utc>)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let n = tokio::time::timeout(Duration::from_secs(30), listener.recv())
            .await
            .expect("a notification")
            .unwrap();
        let payload: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        // The message's day, for a lookup that reads one partition.
        let day: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(payload["received_at"].clone())
                .unwrap_or_else(|e| panic!("{e}: {payload}"));
        got.push((
            payload["kind"].as_str().unwrap().to_owned(),
            payload["message_sid"].as_str().unwrap().to_owned(),
            day,
        ));
    }
    got
}

/// A graceful shutdown sends the notifications still waiting to be gathered before `serve`
/// returns, so they do not end with the runtime.
#[sqlx::test]
async fn the_last_notifications_go_out_before_shutdown_returns(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("twilio_receiver").await.unwrap();
    let url = database_url(&pool);
    let settings = settings(&[
        ("TWILIO_RECEIVER__DATABASE__URL", url.as_str()),
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
    ]);
    // A runtime of its own, dropped with its tasks as soon as the server returns, as the
    // binary's is.
    let served = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let app = twilio_receiver::startup::Application::build(&settings)
                .await
                .unwrap();
            let addr = format!("127.0.0.1:{}", app.port());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(app.run_until_stopped(async {
                let _ = stopped.await;
            }));
            let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
            let client = reqwest::Client::new();
            let response = post_over_http(&client, &addr, "/twilio/messages", &params)
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            drop(client);
            stop.send(()).unwrap();
            server.await.unwrap().unwrap();
        });
    });
    tokio::task::spawn_blocking(move || served.join().unwrap())
        .await
        .unwrap();

    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert!(n.payload().contains(&sid(1)), "{}", n.payload());
}
