//! Reply rules through HTTP, with a rules file, real Postgres and a clock the test moves.

use crate::helpers::*;
use chrono::{Duration, TimeZone, Utc};
use sqlx::PgPool;
use std::path::PathBuf;
use twilio_receiver::twiml;

const ANA: &str = "whatsapp:+15551234567";

/// Writes `toml` to a file of its own and returns its path.
pub fn rules_file(name: &str, toml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("twr-rules-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    path
}

fn app_with_rules(pool: PgPool, name: &str, toml: &str, extra: &[(&str, &str)]) -> TestApp {
    let path = rules_file(name, toml);
    let mut env = vec![("TWILIO_RECEIVER__RULES__PATH", path.to_str().unwrap())];
    env.extend_from_slice(extra);
    TestApp::with_env(pool, &env)
}

/// The bodies of the `<Message>`s in a TwiML answer.
fn bodies(twiml: &str) -> Vec<String> {
    twiml
        .split("<Body>")
        .skip(1)
        .map(|s| s.split("</Body>").next().unwrap().to_owned())
        .collect()
}

async fn say(app: &TestApp, n: u32, body: &str) -> Vec<String> {
    let r = app
        .post_signed("/twilio/messages", &whatsapp_text(&sid(n), ANA, body))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    bodies(&r.body)
}

/// Posts message `n` and checks that nothing is answered: a 200 with exactly the empty TwiML
/// document (an error status or a malformed body is not silence; Twilio would retry or call
/// the fallback URL).
async fn assert_silent(app: &TestApp, n: u32, body: &str) {
    let r = app
        .post_signed("/twilio/messages", &whatsapp_text(&sid(n), ANA, body))
        .await;
    assert_silence(&r, body);
}

fn assert_silence(r: &TestResponse, context: &str) {
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, twiml::EMPTY),
        "{context}"
    );
}

#[sqlx::test]
async fn a_keyword_menu_and_a_regex_answer_and_the_rule_is_stored(pool: PgPool) {
    let app = app_with_rules(
        pool,
        "menu",
        r#"
        [[rules]]
        name = "menu"
        when = { keywords = "MENU" }
        reply = [{ body = "1) hours" }, { body = "2) orders for {{ profile_name }}" }]
        [[rules]]
        name = "order"
        when = { body_matches = "order\\s*#?(\\d{4,})" }
        reply = { body = "Checking: {{ body }}" }
        "#,
        &[("TWILIO_RECEIVER__REPLY__BODY", "default")],
    );
    assert_eq!(
        say(&app, 1, "menu please").await,
        ["1) hours", "2) orders for Ana"]
    );
    assert_eq!(
        say(&app, 2, "Where is ORDER #12345 <now>?").await,
        ["Checking: Where is ORDER #12345 &lt;now&gt;?"]
    );
    assert_eq!(say(&app, 3, "hello").await, ["default"]);
    let rules: Vec<Option<Vec<String>>> =
        sqlx::query_scalar!("select rule from replies order by created_at, message_sid")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rules,
        [
            Some(vec!["menu".to_owned()]),
            Some(vec!["order".to_owned()]),
            None
        ]
    );
    // Each tracked <Message> names the rule that produced it.
    let r = app
        .post_signed("/twilio/messages", &whatsapp_text(&sid(4), ANA, "MENU"))
        .await;
    assert!(r.body.contains("part=1&amp;rule=menu"), "{}", r.body);
}

#[sqlx::test]
async fn first_contact_and_new_session_greetings(pool: PgPool) {
    let app = app_with_rules(
        pool,
        "greet",
        r#"
        [[rules]]
        name = "welcome"
        when = { first_contact = true }
        reply = { body = "Welcome, {{ profile_name }}!" }
        [[rules]]
        name = "welcome-back"
        when = { new_session = true }
        reply = { body = "Welcome back ({{ inbound_count }})" }
        "#,
        &[],
    );
    assert_eq!(say(&app, 1, "hi").await, ["Welcome, Ana!"]);
    app.set_now(app.now() + Duration::hours(2));
    assert_silent(&app, 2, "still here").await;
    app.set_now(app.now() + Duration::hours(30));
    assert_eq!(say(&app, 3, "back").await, ["Welcome back (3)"]);
}

#[sqlx::test]
async fn business_hours_decide_by_the_clock(pool: PgPool) {
    let app = app_with_rules(
        pool,
        "hours",
        r#"
        [[rules]]
        name = "closed"
        when = { outside_hours = { tz = "America/New_York", days = "mon-fri", from = "09:00", to = "17:30" } }
        reply = { body = "We are closed" }
        "#,
        &[],
    );
    // Monday 2026-03-02 15:00 UTC is 10:00 in New York (EST): open.
    app.set_now(Utc.with_ymd_and_hms(2026, 3, 2, 15, 0, 0).unwrap());
    assert_silent(&app, 1, "hi").await;
    // 22:45 UTC is 17:45 in New York: closed.
    app.set_now(Utc.with_ymd_and_hms(2026, 3, 2, 22, 45, 0).unwrap());
    assert_eq!(say(&app, 2, "hi").await, ["We are closed"]);
    // After the switch to EDT (2026-03-08), 21:45 UTC is 17:45 local: closed; 13:00 UTC is 09:00: open.
    app.set_now(Utc.with_ymd_and_hms(2026, 3, 9, 21, 45, 0).unwrap());
    assert_eq!(say(&app, 3, "hi").await, ["We are closed"]);
    app.set_now(Utc.with_ymd_and_hms(2026, 3, 9, 13, 0, 0).unwrap());
    assert_silent(&app, 4, "hi").await;
}

#[sqlx::test]
async fn opt_out_then_silence_then_opt_in(pool: PgPool) {
    let app = app_with_rules(
        pool,
        "consent",
        &std::fs::read_to_string("config/rules.toml").unwrap(),
        &[("TWILIO_RECEIVER__REPLY__BODY", "Thanks for your message")],
    );
    assert_eq!(say(&app, 1, "hello").await, ["Thanks for your message"]);
    assert_eq!(
        say(&app, 2, "STOP").await,
        ["You will not receive more messages from us. Reply START to subscribe again."]
    );
    let consent = sqlx::query!(
        "select state, message_sid from consent where contact = $1",
        ANA
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (consent.state.as_str(), consent.message_sid),
        ("opted_out", sid(2))
    );
    // Opted out: nothing answers, not even the default reply; the message is still stored.
    assert_silent(&app, 3, "hello?").await;
    assert_silent(&app, 4, "stop").await;
    assert_eq!(app.count("select count(*) from messages").await, 4);
    assert_eq!(
        say(&app, 5, "start").await,
        ["You are subscribed again. Reply STOP to unsubscribe."]
    );
    assert_eq!(
        app.count("select count(*) from consent where state = 'opted_in'")
            .await,
        1
    );
    assert_eq!(say(&app, 6, "hello").await, ["Thanks for your message"]);
}

#[sqlx::test]
async fn loop_protection_limits_a_rule_per_contact(pool: PgPool) {
    let app = app_with_rules(
        pool,
        "limit",
        r#"
        [[rules]]
        name = "away"
        limit = { count = 1, per = "12h" }
        reply = { body = "We are away" }
        "#,
        &[],
    );
    assert_eq!(say(&app, 1, "hi").await, ["We are away"]);
    app.set_now(app.now() + Duration::hours(1));
    assert_silent(&app, 2, "hello?").await;
    assert_silent(&app, 3, "HELLO??").await;
    // Another contact has a limit of their own.
    let other = app
        .post_signed(
            "/twilio/messages",
            &whatsapp_text(&sid(4), "whatsapp:+15550000000", "hi"),
        )
        .await;
    assert_eq!(bodies(&other.body), ["We are away"]);
    app.set_now(app.now() + Duration::hours(12));
    assert_eq!(say(&app, 5, "hi again").await, ["We are away"]);
}

#[sqlx::test]
async fn a_missing_configured_rules_file_stops_the_start(pool: PgPool) {
    let settings = settings(&[("TWILIO_RECEIVER__RULES__PATH", "/nonexistent/rules.toml")]);
    let problems = settings.problems().join("\n");
    assert!(
        problems.contains("/nonexistent/rules.toml: cannot read the rules file"),
        "{problems}"
    );
    assert!(twilio_receiver::startup::app_state(&settings, pool, Default::default()).is_err());
}

#[sqlx::test]
async fn the_fallback_route_keeps_rule_silence_and_opt_outs_silent(pool: PgPool) {
    let app = app_with_rules(
        pool,
        "fallback-silence",
        &format!(
            "{}\n[[rules]]\nname = \"quiet\"\nwhen = {{ message_type = \"location\" }}\nreply = []\n",
            std::fs::read_to_string("config/rules.toml").unwrap()
        ),
        &[(
            "TWILIO_RECEIVER__REPLY__FALLBACK_BODY",
            "We will get back to you",
        )],
    );
    let fallback = |n: u32, body: &str, extra: &[(&str, &str)]| {
        let mut p = whatsapp_text(&sid(n), ANA, body);
        p.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        p.extend(pairs(extra));
        p.extend(pairs(&[("ErrorCode", "11200")]));
        p
    };
    // No rule answers: the fallback body.
    let r = app
        .post_signed("/twilio/fallback", &fallback(1, "hello", &[]))
        .await;
    assert_eq!(bodies(&r.body), ["We will get back to you"]);
    // A rule that answers nothing stays silent, and is recorded as the rule that answered.
    let r = app
        .post_signed(
            "/twilio/fallback",
            &fallback(2, "", &[("MessageType", "location")]),
        )
        .await;
    assert_silence(&r, "a rule that answers nothing");
    assert_eq!(
        app.count("select count(*) from replies where rule = array['quiet']")
            .await,
        1
    );
    // Opted out: silence, not the fallback body.
    let stop = app
        .post_signed("/twilio/messages", &whatsapp_text(&sid(3), ANA, "STOP"))
        .await;
    assert_eq!(stop.status, 200, "{}", stop.body);
    let r = app
        .post_signed("/twilio/fallback", &fallback(4, "anyone?", &[]))
        .await;
    assert_silence(&r, "opted out");
}

#[sqlx::test]
async fn the_shipped_rules_only_opt_out_on_the_keyword_alone(pool: PgPool) {
    let app = app_with_rules(
        pool,
        "shipped",
        &std::fs::read_to_string("config/rules.toml").unwrap(),
        &[],
    );
    for (n, body) in [
        (1, "Cancel my order please"),
        (2, "End of day works"),
        (3, "stop sending the catalogue?"),
    ] {
        assert_silent(&app, n, body).await;
    }
    assert_eq!(app.count("select count(*) from consent").await, 0);
    assert_eq!(say(&app, 4, "  Stop! ").await.len(), 1);
    assert_eq!(
        app.count("select count(*) from consent where state = 'opted_out'")
            .await,
        1
    );
}
