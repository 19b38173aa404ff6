//! What operators query: consent history with its causes (rules, Twilio's own opt-out
//! handling, delivery error 21610), sessions with channel and ad referral, WhatsApp's 2026
//! identifiers, RCS, the reply_deliveries view, and migration 11's conversion of old data.

use crate::{helpers::*, status::callback};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgPool, migrate::Migrator};
use std::borrow::Cow;

const ANA: &str = "whatsapp:+15551234567";

fn shipped_rules(pool: PgPool) -> TestApp {
    TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__RULES__PATH", "config/rules.toml")],
    )
}

type Event = (String, String, Option<String>, String, Option<String>);

/// Every consent event: state, message, cause and rule, in order.
async fn events(app: &TestApp) -> Vec<Event> {
    sqlx::query_as(
        "select contact, state, message_sid, cause, rule from consent_events order by id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

fn event(state: &str, sid: &str, cause: &str, rule: Option<&str>) -> Event {
    (
        ANA.to_owned(),
        state.to_owned(),
        Some(sid.to_owned()),
        cause.to_owned(),
        rule.map(str::to_owned),
    )
}

async fn consent(app: &TestApp) -> (String, String) {
    sqlx::query_as("select state, message_sid from consent where contact = $1")
        .bind(ANA)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn every_consent_change_is_history_with_the_rule_that_made_it(pool: PgPool) {
    let app = shipped_rules(pool);
    for (n, body) in [(1, "STOP"), (2, "hello"), (3, "START")] {
        app.set_now(app.now() + TimeDelta::minutes(1));
        app.post_signed("/twilio/messages", &whatsapp_text(&sid(n), ANA, body))
            .await;
    }
    assert_eq!(
        events(&app).await,
        [
            event("opted_out", &sid(1), "rule", Some("opt-out")),
            event("opted_in", &sid(3), "rule", Some("opt-in")),
        ]
    );
    assert_eq!(consent(&app).await, ("opted_in".to_owned(), sid(3)));
}

#[sqlx::test]
async fn twilio_opt_out_handling_decides_consent_and_we_do_not_confirm_twice(pool: PgPool) {
    let app = shipped_rules(pool);
    let mut stop = whatsapp_text(&sid(1), ANA, "STOP");
    stop.push(("OptOutType".into(), "STOP".into()));
    let answer = app.post_signed("/twilio/messages", &stop).await;
    assert_eq!(answer.status, 200);
    assert!(!answer.body.contains("<Message"), "{}", answer.body);
    assert_eq!(consent(&app).await, ("opted_out".to_owned(), sid(1)));

    // Twilio recognises its synonyms too: what it says decides, not our keyword list.
    app.set_now(app.now() + TimeDelta::minutes(1));
    let mut start = whatsapp_text(&sid(2), ANA, "UNSTOP please");
    start.push(("OptOutType".into(), "START".into()));
    let answer = app.post_signed("/twilio/messages", &start).await;
    assert!(!answer.body.contains("<Message"), "{}", answer.body);
    // HELP is Twilio's to answer, and changes nothing.
    app.set_now(app.now() + TimeDelta::minutes(1));
    let mut help = whatsapp_text(&sid(3), ANA, "HELP");
    help.push(("OptOutType".into(), "HELP".into()));
    let answer = app.post_signed("/twilio/messages", &help).await;
    assert!(!answer.body.contains("<Message"), "{}", answer.body);

    assert_eq!(
        events(&app).await,
        [
            event("opted_out", &sid(1), "opt_out_type", None),
            event("opted_in", &sid(2), "opt_out_type", None),
        ]
    );
    assert_eq!(consent(&app).await, ("opted_in".to_owned(), sid(2)));
}

#[sqlx::test]
async fn a_delivery_refused_with_21610_opts_the_contact_out_unless_they_opted_in_later(
    pool: PgPool,
) {
    let app = shipped_rules(pool);
    // Message 7 goes out; Twilio refuses it: the recipient unsubscribed.
    app.post_signed("/twilio/status", &callback(&sid(7), "queued", &[]))
        .await;
    app.set_now(app.now() + TimeDelta::minutes(1));
    let refused = callback(&sid(7), "failed", &[("ErrorCode", "21610")]);
    assert_eq!(
        app.post_signed("/twilio/status", &refused).await.status,
        204
    );
    // A redelivered callback records nothing twice.
    app.post_signed("/twilio/status", &refused).await;
    assert_eq!(consent(&app).await, ("opted_out".to_owned(), sid(7)));
    assert_eq!(
        events(&app).await,
        [event("opted_out", &sid(7), "delivery_error", None)]
    );

    // She opts back in; then the refusal of a message sent before that arrives late.
    app.set_now(app.now() + TimeDelta::minutes(1));
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(8), ANA, "START"))
        .await;
    let sent_before: DateTime<Utc> = app.now() - TimeDelta::minutes(30);
    app.set_now(sent_before);
    app.post_signed("/twilio/status", &callback(&sid(9), "sent", &[]))
        .await;
    app.set_now(sent_before + TimeDelta::hours(1));
    app.post_signed(
        "/twilio/status",
        &callback(&sid(9), "undelivered", &[("ErrorCode", "21610")]),
    )
    .await;
    assert_eq!(consent(&app).await, ("opted_in".to_owned(), sid(8)));
    assert_eq!(
        events(&app).await.len(),
        3,
        "the refusal is history all the same"
    );
    // And the next message from her sees her opted in (no stale memory of the write).
    let answer = app
        .post_signed("/twilio/messages", &whatsapp_text(&sid(10), ANA, "START"))
        .await;
    assert!(
        !answer.body.contains("<Message"),
        "already opted in: the opt-in rule does not answer"
    );
}

#[sqlx::test]
async fn sessions_know_their_channel_and_the_ad_that_opened_them(pool: PgPool) {
    let app = TestApp::new(pool);
    let mut from_ad = whatsapp_text(&sid(1), ANA, "I saw your ad");
    for (k, v) in [
        ("ReferralSourceType", "ad"),
        ("ReferralSourceId", "120210000000000000"),
        ("ReferralCtwaClid", "ARAkLkA8rmlFeiCktEJQ"),
        ("ReferralSourceUrl", "https://fb.me/abc"),
    ] {
        from_ad.push((k.into(), v.into()));
    }
    app.post_signed("/twilio/messages", &from_ad).await;
    app.set_now(app.now() + TimeDelta::minutes(5));
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(2), ANA, "and?"))
        .await;
    app.set_now(app.now() + TimeDelta::hours(30));
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(3), ANA, "hi again"))
        .await;
    type Session = (String, Option<String>, Option<String>, Option<String>, i32);
    let sessions: Vec<Session> = sqlx::query_as(
        "select channel, referral_source_type, referral_source_id, referral_ctwa_clid,
                    inbound_count
             from sessions order by started_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        sessions,
        [
            (
                "whatsapp".to_owned(),
                Some("ad".to_owned()),
                Some("120210000000000000".to_owned()),
                Some("ARAkLkA8rmlFeiCktEJQ".to_owned()),
                2
            ),
            ("whatsapp".to_owned(), None, None, None, 1),
        ]
    );
    let open: Vec<(String, String)> = sqlx::query_as("select contact, channel from open_sessions")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    // The test clock is in the past: no window is open now, but the view has the column.
    assert!(open.is_empty());
}

#[sqlx::test]
async fn business_scoped_ids_usernames_and_rcs_are_stored_as_they_come(pool: PgPool) {
    let app = TestApp::new(pool);
    // A user who hides their number: a business-scoped address, no WaId.
    let hidden = "whatsapp:US.13491208655302741918";
    let mut params = whatsapp_text(&sid(1), hidden, "hello");
    params.retain(|(k, _)| k != "WaId");
    params.push(("ExternalUserId".into(), "US.13491208655302741918".into()));
    params.push(("ParentExternalUserId".into(), "US.1349120865".into()));
    assert_eq!(
        app.post_signed("/twilio/messages", &params).await.status,
        200
    );
    // An RCS message of a Messaging Service.
    let mut rcs = whatsapp_text(&sid(2), "rcs:+15557654321", "hi over RCS");
    for (k, v) in rcs.iter_mut() {
        if k == "To" {
            *v = "rcs:acme_agent".into();
        }
    }
    assert_eq!(app.post_signed("/twilio/messages", &rcs).await.status, 200);

    let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "select contact, channel, external_user_id, parent_external_user_id
         from messages order by message_sid",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                hidden.to_owned(),
                "whatsapp".to_owned(),
                Some("US.13491208655302741918".to_owned()),
                Some("US.1349120865".to_owned())
            ),
            ("rcs:+15557654321".to_owned(), "rcs".to_owned(), None, None),
        ]
    );
    // Windows are kept per address, whatever it looks like.
    assert_eq!(
        app.count(&format!(
            "select count(*) from conversations where contact = '{hidden}' and window_expires_at is not null"
        ))
        .await,
        1
    );
}

#[sqlx::test]
async fn reply_deliveries_take_the_earlier_of_delivered_and_read(pool: PgPool) {
    let app = TestApp::with_env(pool, &[("TWILIO_RECEIVER__REPLY__BODY", "Thanks!")]);
    let start = app.now();
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(1), ANA, "hi"))
        .await;
    let path = format!("/twilio/status?reply_to={}&part=0", sid(1));
    let url = format!("{BASE}{path}");
    // Read arrives before delivered.
    for (status, minutes) in [("sent", 1), ("read", 3), ("delivered", 5)] {
        app.set_now(start + TimeDelta::minutes(minutes));
        let params = pairs(&[
            ("MessageSid", "SM77777777777777777777777777777777"),
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("From", BUSINESS),
            ("To", ANA),
            ("MessageStatus", status),
        ]);
        let r = app.send(signed_post(&url, &path, &params, TOKEN)).await;
        assert_eq!(r.status, 204);
    }
    let (inbound, part, at, delay): (
        String,
        i32,
        DateTime<Utc>,
        sqlx::postgres::types::PgInterval,
    ) = sqlx::query_as(
        "select in_reply_to, reply_part, delivered_or_read_at, delay from reply_deliveries",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((inbound, part), (sid(1), 0));
    assert_eq!(at, start + TimeDelta::minutes(3));
    assert_eq!(delay.microseconds, 3 * 60 * 1_000_000);
    let m: (Option<String>, Option<i32>, String) = sqlx::query_as(
        "select in_reply_to, reply_part, source from conversation_messages where direction = 'outbound'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(m, (Some(sid(1)), Some(0), "webhook".to_owned()));
}

#[sqlx::test(migrations = false)]
async fn migration_11_keeps_todays_consent_as_history_and_gives_sessions_their_channel(
    pool: PgPool,
) {
    let all = sqlx::migrate!();
    let before = Migrator {
        migrations: Cow::Owned(
            all.iter()
                .filter(|m| m.version < 20261206000011)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate!()
    };
    before.run(&pool).await.unwrap();
    let at = DateTime::parse_from_rfc3339("2026-03-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    for sql in [
        "insert into consent (business, contact, state, message_sid, changed_at)
         values ('whatsapp:+14155238886', 'whatsapp:+15551234567', 'opted_out', 'SM1', $1)",
        "insert into conversations (business, contact, channel, created_at, updated_at)
         values ('whatsapp:+14155238886', 'whatsapp:+15551234567', 'whatsapp', $1, $1)",
        "insert into sessions (business, contact, started_at, last_inbound_at, expires_at, inbound_count)
         values ('whatsapp:+14155238886', 'whatsapp:+15551234567', $1, $1, $1, 1)",
    ] {
        sqlx::query(sql).bind(at).execute(&pool).await.unwrap();
    }
    twilio_receiver::store::migrate_pool(&pool).await.unwrap();
    let history: (String, String, String, DateTime<Utc>) =
        sqlx::query_as("select state, message_sid, cause, at from consent_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        history,
        ("opted_out".into(), "SM1".into(), "migrated".into(), at)
    );
    let channel: Option<String> = sqlx::query_scalar("select channel from sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(channel.as_deref(), Some("whatsapp"));
}

#[sqlx::test]
async fn every_table_view_and_column_carries_its_comment(pool: PgPool) {
    let missing: Vec<String> = sqlx::query_scalar(
        "select c.relname || coalesce('.' || a.attname, '')
         from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
         where n.nspname = 'public' and c.relkind in ('r', 'p', 'v') and not c.relispartition
           and c.relname <> '_sqlx_migrations'
           and (case when a.attname is null then obj_description(c.oid, 'pg_class')
                     else col_description(c.oid, a.attnum) end) is null
         union all
         select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p', 'v') and not c.relispartition
           and c.relname <> '_sqlx_migrations'
           and obj_description(c.oid, 'pg_class') is null
         order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(missing.is_empty(), "without a COMMENT: {missing:?}");
}
