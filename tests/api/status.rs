//! Status callbacks: history kept, current status by precedence, unknown SIDs become
//! outbound messages, redeliveries stored once.

use crate::helpers::*;
use futures::future::join_all;
use sqlx::PgPool;

const SENT_SID: &str = "SM99999999999999999999999999999999";

pub fn callback(sid: &str, status: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p = pairs(&[
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", BUSINESS),
        ("To", "whatsapp:+15551234567"),
        ("MessageStatus", status),
        ("SmsStatus", status),
        ("ChannelPrefix", "whatsapp"),
        ("ApiVersion", "2010-04-01"),
    ]);
    p.extend(pairs(extra));
    p
}

async fn current(app: &TestApp, sid: &str) -> (String, Option<i32>, Option<String>) {
    let m = sqlx::query!(
        "select status, error_code, error_message from messages where message_sid = $1",
        sid
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    (m.status.unwrap_or_default(), m.error_code, m.error_message)
}

/// POSTs one status callback; every callback, stored or not advancing, is acknowledged with
/// an empty 204.
async fn post_status(app: &TestApp, params: &[(String, String)]) {
    let r = app.post_signed("/twilio/status", params).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (204, ""),
        "{params:?}"
    );
}

async fn post_statuses(app: &TestApp, sid: &str, statuses: &[&str]) {
    for s in statuses {
        post_status(app, &callback(sid, s, &[])).await;
    }
}

#[sqlx::test]
async fn an_unknown_sid_becomes_an_outbound_message_with_history(pool: PgPool) {
    let app = TestApp::new(pool);
    post_statuses(&app, SENT_SID, &["queued", "sent", "delivered", "read"]).await;

    let m = sqlx::query!(
        "select direction, channel, business, contact, account_sid, status from messages where message_sid = $1",
        SENT_SID
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(m.direction, "outbound");
    assert_eq!(m.channel, "whatsapp");
    assert_eq!(
        (m.business.as_str(), m.contact.as_str()),
        (BUSINESS, "whatsapp:+15551234567")
    );
    assert_eq!(m.account_sid, "AC00000000000000000000000000000000");
    assert_eq!(m.status.as_deref(), Some("read"));
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        4
    );
    let c = sqlx::query!("select last_outbound_at, outbound_count, last_inbound_at, window_expires_at from conversations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((c.last_outbound_at, c.outbound_count), (Some(app.now()), 1));
    // Status callbacks never open a 24-hour window.
    assert_eq!((c.last_inbound_at, c.window_expires_at), (None, None));
    assert_eq!(app.count("select count(*) from sessions").await, 0);
}

#[sqlx::test]
async fn every_order_of_queued_sent_delivered_read_ends_read(pool: PgPool) {
    let app = TestApp::new(pool);
    let orders = permutations(&["queued", "sent", "delivered", "read"]);
    for (n, order) in orders.iter().enumerate() {
        let sid = sid(1000 + n as u32);
        post_statuses(&app, &sid, order).await;
        assert_eq!(current(&app, &sid).await.0, "read", "{order:?}");
    }
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        24 * 4
    );
}

#[sqlx::test]
async fn failures_are_terminal_and_carry_their_error(pool: PgPool) {
    let app = TestApp::new(pool);
    for (n, order) in permutations(&["queued", "sent", "failed"])
        .iter()
        .enumerate()
    {
        let sid = sid(2000 + n as u32);
        for s in order {
            let extra: &[(&str, &str)] = if *s == "failed" {
                &[("ErrorCode", "63016"), ("ErrorMessage", "Outside window")]
            } else {
                &[]
            };
            post_status(&app, &callback(&sid, s, extra)).await;
        }
        assert_eq!(
            current(&app, &sid).await,
            ("failed".into(), Some(63016), Some("Outside window".into())),
            "{order:?}"
        );
    }
    // read after failed changes nothing: failed means the message never left Twilio.
    let sid = sid(2100);
    post_status(&app, &callback(&sid, "failed", &[("ErrorCode", "30008")])).await;
    post_status(&app, &callback(&sid, "read", &[])).await;
    assert_eq!(current(&app, &sid).await.0, "failed");
}

#[sqlx::test]
async fn a_later_delivery_receipt_overrides_undelivered(pool: PgPool) {
    let app = TestApp::new(pool);
    for (n, order) in permutations(&["sent", "undelivered", "delivered"])
        .iter()
        .enumerate()
    {
        let sid = sid(3000 + n as u32);
        for s in order {
            let extra: &[(&str, &str)] = if *s == "undelivered" {
                &[("ErrorCode", "30003")]
            } else {
                &[]
            };
            post_status(&app, &callback(&sid, s, extra)).await;
        }
        // delivered wins, and the message no longer carries the failure's error.
        assert_eq!(
            current(&app, &sid).await,
            ("delivered".into(), None, None),
            "{order:?}"
        );
    }
    let sid = sid(3100);
    post_statuses(&app, &sid, &["sent"]).await;
    post_status(
        &app,
        &callback(&sid, "undelivered", &[("ErrorCode", "30003")]),
    )
    .await;
    assert_eq!(
        current(&app, &sid).await,
        ("undelivered".into(), Some(30003), None)
    );
}

#[sqlx::test]
async fn redelivered_callbacks_are_stored_once(pool: PgPool) {
    let app = TestApp::new(pool);
    let delivered = callback(SENT_SID, "delivered", &[("RawDlrDoneDate", "2603010900")]);
    for _ in 0..3 {
        assert_eq!(
            app.post_signed("/twilio/status", &delivered).await.status,
            204
        );
    }
    let undelivered = callback(SENT_SID, "undelivered", &[("ErrorCode", "30003")]);
    post_status(&app, &undelivered).await;
    post_status(&app, &undelivered).await;
    // Same status with another error code is another event.
    post_status(
        &app,
        &callback(SENT_SID, "undelivered", &[("ErrorCode", "30005")]),
    )
    .await;
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        3
    );
    assert_eq!(app.count("select count(*) from messages").await, 1);
    assert_eq!(
        app.count("select outbound_count from conversations").await,
        1
    );
}

#[sqlx::test]
async fn unknown_statuses_and_odd_error_codes_are_kept_as_history(pool: PgPool) {
    let app = TestApp::new(pool);
    post_statuses(&app, SENT_SID, &["sent", "teleported"]).await;
    post_status(
        &app,
        &callback(SENT_SID, "undelivered", &[("ErrorCode", "E-42")]),
    )
    .await;
    assert_eq!(current(&app, SENT_SID).await.0, "undelivered");
    let e = sqlx::query!(
        "select error_code, params from message_status_events where status = 'undelivered'"
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(e.error_code, None);
    assert_eq!(e.params["ErrorCode"], "E-42");
    assert_eq!(
        app.count("select count(*) from message_status_events where status = 'teleported'")
            .await,
        1
    );

    // A message first seen through an unknown status still takes known ones.
    let sid = sid(4000);
    post_statuses(&app, &sid, &["teleported", "sent"]).await;
    assert_eq!(current(&app, &sid).await.0, "sent");
}

#[sqlx::test]
async fn fifty_concurrent_callbacks_for_one_sid_never_lose_the_highest_status(pool: PgPool) {
    let app = TestApp::new(pool);
    let lower = ["queued", "sending", "sent", "delivered"];
    for round in 0..4u32 {
        let sid = sid(6000 + round);
        // Exactly one `read` among 49 lower statuses, at a different place each round.
        let callbacks: Vec<_> = (0..50usize)
            .map(|i| {
                let status = if i == (round as usize * 13) % 50 {
                    "read"
                } else {
                    lower[i % lower.len()]
                };
                callback(&sid, status, &[])
            })
            .collect();

        let responses = join_all(
            callbacks
                .iter()
                .map(|c| app.post_signed("/twilio/status", c)),
        )
        .await;

        assert!(
            responses.iter().all(|r| r.status == 204),
            "every callback acknowledged"
        );
        assert_eq!(current(&app, &sid).await.0, "read", "round {round}");
    }
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        4 * 5
    );
    assert_eq!(app.count("select count(*) from messages").await, 4);
    assert_eq!(
        app.count("select outbound_count from conversations").await,
        4
    );
}

#[sqlx::test]
async fn final_and_overriding_statuses_hold_through_the_route(pool: PgPool) {
    let app = TestApp::new(pool);
    for (n, (order, end)) in [
        (&["read", "failed"][..], "failed"),
        (&["delivered", "failed"][..], "failed"),
        (&["read", "undelivered"][..], "read"),
        (&["undelivered", "read"][..], "read"),
        (&["scheduled", "canceled", "sent"][..], "canceled"),
        (&["accepted", "scheduled"][..], "accepted"),
    ]
    .into_iter()
    .enumerate()
    {
        let sid = sid(7000 + n as u32);
        post_statuses(&app, &sid, order).await;
        assert_eq!(current(&app, &sid).await.0, end, "{order:?}");
    }
}

#[sqlx::test]
async fn status_callbacks_are_verified_like_webhooks(pool: PgPool) {
    let app = TestApp::new(pool);
    let forged = signed_post(
        &format!("{BASE}/twilio/status"),
        "/twilio/status",
        &callback(SENT_SID, "read", &[]),
        "wrong",
    );
    assert_eq!(app.send(forged).await.status, 403);
    let mut missing = callback(SENT_SID, "read", &[]);
    missing.retain(|(k, _)| k != "MessageStatus" && k != "SmsStatus");
    assert_eq!(
        app.post_signed("/twilio/status", &missing).await.status,
        400
    );
    assert_eq!(app.count("select count(*) from messages").await, 0);
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        0
    );
}

fn permutations(items: &[&'static str]) -> Vec<Vec<&'static str>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

#[sqlx::test]
async fn every_status_twilio_documents_is_accepted_and_stored(pool: PgPool) {
    let app = TestApp::new(pool);
    let all = [
        "queued",
        "sending",
        "sent",
        "failed",
        "delivered",
        "undelivered",
        "receiving",
        "received",
        "accepted",
        "scheduled",
        "read",
        "partially_delivered",
        "canceled",
    ];
    for (n, status) in all.iter().enumerate() {
        let sid = sid(5000 + n as u32);
        post_statuses(&app, &sid, &[status]).await;
        assert_eq!(current(&app, &sid).await.0, *status);
    }
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        all.len() as i64
    );
}
