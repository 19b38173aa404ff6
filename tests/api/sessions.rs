//! The 24-hour customer-service window of each (business, contact) pair.

use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

const ANA: &str = "whatsapp:+15551234567";

async fn sessions(app: &TestApp) -> Vec<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, i32)> {
    sqlx::query!(
        "select started_at, last_inbound_at, expires_at, inbound_count from sessions
         where contact = $1 order by started_at",
        ANA
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|s| {
        (
            s.started_at,
            s.last_inbound_at,
            s.expires_at,
            s.inbound_count,
        )
    })
    .collect()
}

#[sqlx::test]
async fn the_first_message_opens_a_window_and_a_conversation(pool: PgPool) {
    let app = TestApp::new(pool);
    let t0 = app.now();

    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
        .await;

    assert_eq!(
        sessions(&app).await,
        [(t0, t0, t0 + Duration::hours(24), 1)]
    );
    let c = sqlx::query!(
        "select channel, first_inbound_at, last_inbound_at, window_expires_at, inbound_count
         from conversations where business = $1 and contact = $2",
        BUSINESS,
        ANA
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(c.channel, "whatsapp");
    assert_eq!(c.first_inbound_at, Some(t0));
    assert_eq!(c.last_inbound_at, Some(t0));
    assert_eq!(c.window_expires_at, Some(t0 + Duration::hours(24)));
    assert_eq!(c.inbound_count, 1);
    assert_eq!(
        app.count("select count(*) from open_sessions").await,
        0,
        "the test clock is in the past"
    );
}

#[sqlx::test]
async fn a_message_inside_the_window_extends_it(pool: PgPool) {
    let app = TestApp::new(pool);
    let t0 = app.now();
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
        .await;
    let t1 = t0 + Duration::hours(23);
    app.set_now(t1);

    app.post_signed("/twilio/messages", &whatsapp_text(&sid(2), ANA, "again"))
        .await;

    assert_eq!(
        sessions(&app).await,
        [(t0, t1, t1 + Duration::hours(24), 2)]
    );
    assert_eq!(
        app.count("select count(*) from conversations where inbound_count = 2")
            .await,
        1
    );
}

#[sqlx::test]
async fn a_message_at_or_after_expiry_opens_a_new_window(pool: PgPool) {
    let app = TestApp::new(pool);
    let t0 = app.now();
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
        .await;
    // Exactly at expires_at: the old window is closed.
    let t1 = t0 + Duration::hours(24);
    app.set_now(t1);
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(2), ANA, "back"))
        .await;
    let t2 = t1 + Duration::days(3);
    app.set_now(t2);
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(3), ANA, "later"))
        .await;

    assert_eq!(
        sessions(&app).await,
        [
            (t0, t0, t0 + Duration::hours(24), 1),
            (t1, t1, t1 + Duration::hours(24), 1),
            (t2, t2, t2 + Duration::hours(24), 1),
        ]
    );
    let c = sqlx::query!(
        "select first_inbound_at, window_expires_at, inbound_count from conversations"
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(c.first_inbound_at, Some(t0));
    assert_eq!(c.window_expires_at, Some(t2 + Duration::hours(24)));
    assert_eq!(c.inbound_count, 3);
}

#[sqlx::test]
async fn windows_belong_to_a_business_and_contact_pair(pool: PgPool) {
    let app = TestApp::new(pool);
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
        .await;
    app.post_signed(
        "/twilio/messages",
        &whatsapp_text(&sid(2), "whatsapp:+15550000000", "hi"),
    )
    .await;
    let mut other_sender = whatsapp_text(&sid(3), ANA, "hi");
    for (k, v) in &mut other_sender {
        if k == "To" {
            *v = "whatsapp:+14150000000".into();
        }
    }
    app.post_signed("/twilio/messages", &other_sender).await;

    assert_eq!(app.count("select count(*) from conversations").await, 3);
    assert_eq!(app.count("select count(*) from sessions").await, 3);
}

#[sqlx::test]
async fn open_sessions_shows_windows_open_now(pool: PgPool) {
    let app = TestApp::new(pool);
    app.set_now(Utc::now() - Duration::hours(1));
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
        .await;

    let left = sqlx::query_scalar!(
        r#"select extract(epoch from time_left)::float8 as "s!" from open_sessions"#
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        (22.0 * 3600.0..23.0 * 3600.0 + 1.0).contains(&left),
        "{left}"
    );
}

#[sqlx::test]
async fn open_sessions_shows_only_the_current_window_of_each_contact(pool: PgPool) {
    let app = TestApp::new(pool);
    // Postgres keeps microseconds.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    // Ana: a window two days ago (closed), then one an hour ago (open).
    app.set_now(now - Duration::days(2));
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
        .await;
    app.set_now(now - Duration::hours(1));
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(2), ANA, "again"))
        .await;
    // Bob: only a closed window.
    app.set_now(now - Duration::days(3));
    app.post_signed(
        "/twilio/messages",
        &whatsapp_text(&sid(3), "whatsapp:+15550000000", "hi"),
    )
    .await;

    let open = sqlx::query!(
        r#"select contact as "contact!", started_at as "started_at!", inbound_count as "inbound_count!"
           from open_sessions"#
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].contact, ANA);
    assert_eq!(open[0].started_at, now - Duration::hours(1));
    assert_eq!(open[0].inbound_count, 1);
    assert_eq!(app.count("select count(*) from sessions").await, 3);
}

/// Every inbound message updates its conversation and session rows. An index on a column
/// such an update changes would turn it from an in-place (HOT) update into a new row version
/// with an entry in every index of the table: about a third of the index writes of each
/// message, measured on the benchmark. Indexes here cover only columns that never change.
#[sqlx::test]
async fn no_index_covers_a_column_that_every_message_updates(pool: PgPool) {
    let indexed: Vec<(String, String)> = sqlx::query_as(
        "select t.relname::text, a.attname::text
         from pg_index i
         join pg_class t on t.oid = i.indrelid
         join pg_attribute a on a.attrelid = t.oid and a.attnum = any(i.indkey)
         where t.relname in ('conversations', 'sessions')
         order by 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let updated = [
        "first_inbound_at",
        "last_inbound_at",
        "last_outbound_at",
        "window_expires_at",
        "session_started_at",
        "inbound_count",
        "outbound_count",
        "updated_at",
        "expires_at",
    ];
    let offending: Vec<_> = indexed
        .iter()
        .filter(|(_, column)| updated.contains(&column.as_str()))
        .collect();
    assert!(offending.is_empty(), "{offending:?}");
    // The keys the upserts and retention need are there.
    assert!(indexed.contains(&("sessions".to_owned(), "started_at".to_owned())));
    assert!(indexed.contains(&("conversations".to_owned(), "contact".to_owned())));
}
