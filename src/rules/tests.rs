use super::*;
use crate::twilio::Params;
use chrono::{DateTime, TimeZone, Utc};

fn message(extra: &[(&str, &str)]) -> InboundMessage {
    let mut pairs = vec![
        ("MessageSid", "SM1"),
        ("AccountSid", "AC1"),
        ("From", "whatsapp:+15551234567"),
        ("To", "whatsapp:+14155238886"),
        ("ProfileName", "Ana"),
        ("WaId", "15551234567"),
        ("MessageType", "text"),
    ];
    pairs.extend_from_slice(extra);
    // Later pairs win for the typed fields: drop earlier duplicates.
    let mut seen = std::collections::HashSet::new();
    let pairs: Vec<_> = pairs
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(*k))
        .collect();
    InboundMessage::parse(&Params::of(&pairs)).unwrap()
}

fn text(body: &str) -> InboundMessage {
    message(&[("Body", body)])
}

/// Monday 2026-01-05 10:00 UTC (11:00 in Madrid).
fn monday_10() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap()
}

fn facts() -> Facts {
    Facts {
        first_contact: false,
        new_session: false,
        inbound_count: 3,
        window_expires_at: None,
        consent: ConsentState::Unknown,
        recent_replies: Vec::new(),
        now: monday_10(),
    }
}

fn rules(toml: &str) -> Rules {
    Rules::parse(toml, "rules.toml").unwrap_or_else(|e| panic!("{e:#?}"))
}

fn answer(rules: &Rules, msg: &InboundMessage, facts: &Facts) -> Vec<String> {
    rules
        .evaluate(msg, facts)
        .messages
        .into_iter()
        .map(|(_, m)| m.body)
        .collect()
}

fn matched(rules: &Rules, msg: &InboundMessage, facts: &Facts) -> Vec<String> {
    rules.evaluate(msg, facts).matched
}

#[test]
fn the_example_file_and_the_default_file_load() {
    for path in ["config/rules.example.toml", "config/rules.toml"] {
        let loaded = Rules::load(Path::new(path));
        assert!(loaded.is_ok(), "{path}: {:#?}", loaded.err());
    }
}

#[test]
fn each_text_condition() {
    let r = rules(
        r#"
        [[rules]]
        name = "equals"
        when = { body_equals = "hours" }
        reply = { body = "equals" }
        [[rules]]
        name = "keywords"
        when = { keywords = ["STOP", "unsubscribe"] }
        reply = { body = "keywords" }
        [[rules]]
        name = "regex"
        when = { body_matches = "order\\s*#?\\d{4}" }
        reply = { body = "regex" }
        [[rules]]
        name = "exact-case"
        when = { body_equals = "VIP", case_sensitive = true }
        reply = { body = "exact-case" }
        "#,
    );
    let cases = [
        ("  HOURS ", "equals"),
        ("hours please", ""),
        ("stop", "keywords"),
        ("Stop.", "keywords"),
        ("STOP sending me things", "keywords"),
        ("please stop", ""),
        ("stopping", ""),
        ("Unsubscribe", "keywords"),
        ("where is ORDER #1234?", "regex"),
        ("order 12", ""),
        ("VIP", "exact-case"),
        ("vip", ""),
    ];
    for (body, want) in cases {
        let got = matched(&r, &text(body), &facts()).join(",");
        assert_eq!(got, want, "{body:?}");
    }
}

#[test]
fn media_type_button_channel_and_addresses() {
    let r = rules(
        r#"
        [[rules]]
        name = "photo"
        when = { has_media = true, media_type = "image/*" }
        reply = { body = "photo" }
        [[rules]]
        name = "any-media"
        when = { has_media = true }
        reply = { body = "media" }
        [[rules]]
        name = "location"
        when = { message_type = "location" }
        reply = { body = "location" }
        [[rules]]
        name = "yes-button"
        when = { button_payload = "confirm-yes" }
        reply = { body = "button" }
        [[rules]]
        name = "vip"
        when = { from = ["whatsapp:+15550000001"], to = "whatsapp:+14155238886", channel = "whatsapp" }
        reply = { body = "vip" }
        [[rules]]
        name = "sms-only"
        when = { channel = "sms" }
        reply = { body = "sms" }
        "#,
    );
    assert!(
        media_type_matches("*/*", "audio/ogg") && media_type_matches("IMAGE/*", "image/png; x=1")
    );
    let image = message(&[
        ("NumMedia", "1"),
        ("MediaUrl0", "https://api.twilio.com/m"),
        ("MediaContentType0", "image/jpeg"),
    ]);
    let pdf = message(&[
        ("NumMedia", "1"),
        ("MediaUrl0", "https://api.twilio.com/m"),
        ("MediaContentType0", "application/pdf"),
    ]);
    let location = message(&[
        ("MessageType", "location"),
        ("Latitude", "1"),
        ("Longitude", "2"),
    ]);
    let button = message(&[("MessageType", "button"), ("ButtonPayload", "confirm-yes")]);
    let vip = message(&[("From", "whatsapp:+15550000001"), ("Body", "hi")]);
    let sms = message(&[
        ("From", "+15550000001"),
        ("To", "+18005551212"),
        ("Body", "hi"),
    ]);
    for (msg, want) in [
        (&image, "photo"),
        (&pdf, "any-media"),
        (&location, "location"),
        (&button, "yes-button"),
        (&vip, "vip"),
        (&sms, "sms-only"),
        (&text("hi"), ""),
    ] {
        assert_eq!(matched(&r, msg, &facts()).join(","), want);
    }
}

#[test]
fn first_contact_new_session_and_consent_conditions() {
    let r = rules(
        r#"
        [[rules]]
        name = "welcome"
        when = { first_contact = true }
        reply = { body = "welcome" }
        [[rules]]
        name = "welcome-back"
        when = { new_session = true }
        reply = { body = "back" }
        [[rules]]
        name = "opted-in"
        when = { consent = "opted_in" }
        reply = { body = "subscriber" }
        "#,
    );
    let first = Facts {
        first_contact: true,
        new_session: true,
        ..facts()
    };
    let new_session = Facts {
        new_session: true,
        ..facts()
    };
    let opted_in = Facts {
        consent: ConsentState::OptedIn,
        ..facts()
    };
    assert_eq!(matched(&r, &text("hi"), &first), ["welcome"]);
    assert_eq!(matched(&r, &text("hi"), &new_session), ["welcome-back"]);
    assert_eq!(matched(&r, &text("hi"), &opted_in), ["opted-in"]);
    assert!(matched(&r, &text("hi"), &facts()).is_empty());
}

#[test]
fn business_hours_follow_the_zone_and_its_daylight_saving() {
    let r = rules(
        r#"
        [[rules]]
        name = "closed"
        when = { outside_hours = [{ tz = "Europe/Madrid", days = "mon-fri", from = "09:00", to = "18:00" },
                                  { tz = "Europe/Madrid", days = "sat", from = "10:00", to = "14:00" }] }
        reply = { body = "closed" }
        [[rules]]
        name = "open"
        when = { within_hours = { tz = "Europe/Madrid", days = "mon-fri", from = "09:00", to = "18:00" } }
        reply = { body = "open" }
        "#,
    );
    let at = |y, mo, d, h, mi| Facts {
        now: Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap(),
        ..facts()
    };
    let cases = [
        (at(2026, 1, 5, 8, 0), "open"),     // Mon 09:00 CET
        (at(2026, 1, 5, 7, 59), "closed"),  // Mon 08:59 CET
        (at(2026, 7, 6, 7, 0), "open"),     // Mon 09:00 CEST
        (at(2026, 7, 6, 16, 0), "closed"),  // Mon 18:00 CEST
        (at(2026, 1, 10, 9, 30), ""),       // Sat 10:30 CET: inside Saturday's hours
        (at(2026, 1, 10, 13, 0), "closed"), // Sat 14:00 CET: closed again
        (at(2026, 3, 29, 10, 0), "closed"), // the Sunday clocks change
    ];
    for (f, want) in cases {
        assert_eq!(matched(&r, &text("hi"), &f).join(","), want, "{}", f.now);
    }
}

#[test]
fn first_match_wins_and_continue_adds() {
    let r = rules(
        r#"
        [[rules]]
        name = "notice"
        when = {}
        reply = { body = "notice" }
        continue = true
        [[rules]]
        name = "menu"
        when = { keywords = "menu" }
        reply = [{ body = "1) hours" }, { body = "2) prices" }]
        [[rules]]
        name = "never"
        when = { keywords = "menu" }
        reply = { body = "never" }
        "#,
    );
    let e = r.evaluate(&text("menu"), &facts());
    assert_eq!(e.matched, ["notice", "menu"]);
    assert_eq!(
        answer(&r, &text("menu"), &facts()),
        ["notice", "1) hours", "2) prices"]
    );
    assert_eq!(e.messages[1].0, "menu");
    // A rule with zero messages still answers (and stops evaluation).
    let silent = rules(
        "[[rules]]\nname = \"silent\"\nreply = []\n[[rules]]\nname = \"x\"\nreply = { body = \"x\" }\n",
    );
    let e = silent.evaluate(&text("hi"), &facts());
    assert_eq!(
        (e.matched.as_slice(), e.messages.len()),
        (&["silent".to_owned()][..], 0)
    );
}

#[test]
fn opted_out_contacts_hear_only_from_rules_written_for_them() {
    let r = rules(
        r#"
        [[rules]]
        name = "opt-in"
        when = { keywords = "START", consent = "opted_out" }
        consent = "opt_in"
        reply = { body = "welcome back" }
        [[rules]]
        name = "opt-out"
        when = { keywords = "STOP" }
        consent = "opt_out"
        reply = { body = "bye" }
        [[rules]]
        name = "anything"
        reply = { body = "hello" }
        "#,
    );
    let out = Facts {
        consent: ConsentState::OptedOut,
        ..facts()
    };
    assert!(matched(&r, &text("hello?"), &out).is_empty());
    assert!(matched(&r, &text("STOP"), &out).is_empty());
    let e = r.evaluate(&text("start"), &out);
    assert_eq!(
        (e.matched.join(","), e.consent),
        (
            "opt-in".into(),
            Some((ConsentChange::OptIn, "opt-in".to_owned()))
        )
    );
    let e = r.evaluate(&text("stop"), &facts());
    assert_eq!(
        e.consent,
        Some((ConsentChange::OptOut, "opt-out".to_owned()))
    );
    assert_eq!(matched(&r, &text("hi"), &facts()), ["anything"]);
}

#[test]
fn limits_count_this_rules_recent_answers_to_this_contact() {
    let r = rules(
        r#"
        [[rules]]
        name = "away"
        limit = { count = 2, per = "12h" }
        reply = { body = "away" }
        continue = true
        [[rules]]
        name = "fallthrough"
        reply = { body = "next" }
        "#,
    );
    let now = monday_10();
    let with = |times: &[(&str, i64)]| Facts {
        recent_replies: times
            .iter()
            .map(|(r, h)| ((*r).to_owned(), now - Duration::hours(*h)))
            .collect(),
        ..facts()
    };
    assert_eq!(
        matched(&r, &text("hi"), &with(&[])),
        ["away", "fallthrough"]
    );
    assert_eq!(
        matched(&r, &text("hi"), &with(&[("away", 1), ("fallthrough", 1)])),
        ["away", "fallthrough"]
    );
    assert_eq!(
        matched(
            &r,
            &text("hi"),
            &with(&[("away", 1), ("fallthrough", 1), ("away", 11)])
        ),
        ["fallthrough"]
    );
    // Older than 12 h, or by another rule: not counted.
    assert_eq!(
        matched(
            &r,
            &text("hi"),
            &with(&[("away", 13), ("away", 14), ("other", 1)])
        ),
        ["away", "fallthrough"]
    );
    assert_eq!(r.lookback(), Duration::hours(12));
}

#[test]
fn templates_see_the_message_and_facts_and_never_run_user_text() {
    let r = rules(
        r#"
        timezone = "Europe/Madrid"
        [[rules]]
        name = "t"
        reply = { body = "Hi {{ profile_name }} ({{ channel }}), you said: {{ body }} | {{ button_text }}| first={{ first_contact }} n={{ inbound_count }} at {{ now }} {{ media|length }}", media = "https://x.example/{{ wa_id }}.png" }
        "#,
    );
    let msg = text("{{ 7 * 7 }} <b>&amp;</b>");
    let e = r.evaluate(&msg, &facts());
    let (_, m) = &e.messages[0];
    assert_eq!(
        m.body,
        "Hi Ana (whatsapp), you said: {{ 7 * 7 }} <b>&amp;</b> | | first=False n=3 at 2026-01-05 11:00 0"
    );
    assert_eq!(m.media, ["https://x.example/15551234567.png"]);
}

#[test]
fn over_long_rendered_bodies_are_split() {
    let r = rules(
        "[[rules]]\nname = \"echo\"\nreply = { body = \"{{ body }} {{ body }}\", media = \"https://x.example/a.png\" }\n",
    );
    let long = "word ".repeat(300);
    let e = r.evaluate(&text(&long), &facts());
    assert_eq!(e.messages.len(), 2);
    assert!(
        e.messages
            .iter()
            .all(|(_, m)| m.body.chars().count() <= twiml::MAX_BODY_CHARS)
    );
    assert_eq!(e.messages[0].1.media.len(), 1);
    assert!(e.messages[1].1.media.is_empty());
}

#[test]
fn a_template_that_loops_too_long_runs_out_of_fuel_instead_of_hanging() {
    let r = rules(
        "[[rules]]\nname = \"spin\"\nreply = { body = \"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\" }\n",
    );
    let e = r.evaluate(&text("hi"), &facts());
    // The rule still answered; its empty message is not sent (Twilio rejects empty bodies).
    assert_eq!(e.matched, ["spin"]);
    assert!(e.messages.is_empty());
}

#[test]
fn a_template_that_prints_gigabytes_is_cut_at_one_answer() {
    // Regression: fuel bounds steps, not what they print, so a few steps printing 20 MB each
    // exhausted memory; now the output stops at what one answer can hold.
    let r = rules(
        "[[rules]]\nname = \"flood\"\nreply = { body = \"{% for i in range(1000) %}{{ 'é' * 10000000 }}{% endfor %}\" }\n",
    );
    let e = r.evaluate(&text("hi"), &facts());
    assert_eq!(e.matched, ["flood"]);
    let printed: String = e.messages.iter().map(|(_, m)| m.body.as_str()).collect();
    assert_eq!(printed.len(), MAX_TEMPLATE_OUTPUT);
    assert!(printed.chars().all(|c| c == 'é'));
    // A cut inside a character keeps the characters before it.
    let mut out = Capped::default();
    let piece = "x".repeat(MAX_TEMPLATE_OUTPUT - 1) + "é";
    assert!(std::io::Write::write(&mut out, piece.as_bytes()).is_err());
    assert_eq!(out.bytes.len(), MAX_TEMPLATE_OUTPUT - 1);
}

#[test]
fn every_kind_of_error_is_reported_with_file_rule_and_reason() {
    let bad = r#"
        timezone = "Nowhere/City"
        colour = "blue"
        [[rules]]
        name = "dup"
        reply = { body = "a" }
        [[rules]]
        name = "dup"
        reply = { body = "b" }
        [[rules]]
        name = "bad regex"
        when = { body_matches = "(" }
        reply = []
        [[rules]]
        name = "unknown-key"
        when = { body_contains = "x" }
        reply = []
        [[rules]]
        name = "reply-key"
        reply = { body = "x", medai = "https://a.example/1.png" }
        [[rules]]
        name = "hours-key"
        when = { within_hours = [{ tz = "UTC", days = "mon", from = "09:00", to = "10:00", until = "x" }] }
        reply = []
        [[rules]]
        name = "no-reply"
        [[rules]]
        name = "empty-reply"
        reply = { body = " " }
        [[rules]]
        name = "huge-limit"
        limit = { count = 1, per = "999999999999w" }
        reply = []
        [[rules]]
        name = "empty-keyword"
        when = { keywords = ["STOP", " "] }
        reply = []
        [[rules]]
        name = "template"
        reply = { body = "{{ nope }} {% if %}" }
        [[rules]]
        name = "unknown-var"
        reply = { body = "Hi {{ first_name }}" }
        [[rules]]
        name = "hours"
        when = { within_hours = { tz = "Mars/Base", days = "mon", from = "18:00", to = "09:00" } }
        reply = []
        [[rules]]
        name = "range"
        when = { outside_hours = { tz = "UTC", days = "mon", from = "18:00", to = "09:00" } }
        reply = []
        [[rules]]
        name = "media"
        reply = { body = "x", media = ["https://a.example/1.png", "https://a.example/2.png"] }
        [[rules]]
        name = "sms-media"
        when = { channel = "sms" }
        reply = { body = "x", media = ["https://a.example/1.png", "https://a.example/2.png"] }
        [[rules]]
        name = "limit"
        limit = { count = 1, per = "soon" }
        reply = []
    "#;
    let problems = Rules::parse(bad, "rules.toml").unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "rules.toml: unknown time zone \"Nowhere/City\"",
        "rules.toml: unknown key `colour`",
        "rules.toml: rule `dup`: duplicate rule name",
        "rules.toml: rule `bad regex`: the name may only hold",
        "rules.toml: rule `bad regex`: bad regex in body_matches",
        "rules.toml: rule `unknown-key`: unknown field `body_contains`",
        "rules.toml: rule `template`: reply #1: bad template in body",
        "rules.toml: rule `unknown-var`: reply #1: body uses unknown variable(s) first_name",
        "rules.toml: rule `hours`: within_hours: unknown time zone \"Mars/Base\"",
        "rules.toml: rule `range`: outside_hours: impossible hour range 18:00-09:00",
        "rules.toml: rule `media`: reply #1: 2 media items",
        "rules.toml: rule `limit`: limit.per: not a duration",
        "rules.toml: rule `reply-key`: unknown field `medai`",
        "rules.toml: rule `hours-key`: unknown field `until`",
        "rules.toml: rule `no-reply`: missing field `reply`",
        "rules.toml: rule `empty-reply`: reply #1: neither a body nor media",
        "rules.toml: rule `huge-limit`: limit.per: not a duration",
        "rules.toml: rule `empty-keyword`: keywords: empty",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(
        !all.contains("sms-media"),
        "up to 10 media items are fine for sms rules:\n{all}"
    );
    assert!(Rules::parse("not toml [", "f").unwrap_err()[0].starts_with("f: not valid TOML"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("12h").unwrap(), Duration::hours(12));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::minutes(90));
    assert_eq!(parse_duration("7d").unwrap(), Duration::days(7));
    assert!(parse_duration("366d").is_ok());
    for bad in [
        "",
        "12",
        "h",
        "0h",
        "3y",
        "367d",
        "999999999999w",
        "99999999999999999999s",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn hours_on_the_day_the_clocks_change() {
    // Madrid springs forward on Sunday 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST).
    let r = rules(
        "[[rules]]\nname = \"sunday\"\nwhen = { within_hours = { tz = \"Europe/Madrid\", days = \"sun\", from = \"09:00\", to = \"10:00\" } }\nreply = []\n",
    );
    let at = |h, m| Facts {
        now: Utc.with_ymd_and_hms(2026, 3, 29, h, m, 0).unwrap(),
        ..facts()
    };
    assert_eq!(
        matched(&r, &text("hi"), &at(7, 0)),
        ["sunday"],
        "07:00 UTC is 09:00 CEST"
    );
    assert!(
        matched(&r, &text("hi"), &at(8, 0)).is_empty(),
        "08:00 UTC is 10:00 CEST"
    );
    assert!(matched(&r, &text("hi"), &at(6, 59)).is_empty());
    // And back: Sunday 2026-10-25 01:00 UTC (03:00 CEST -> 02:00 CET).
    let at = |h, m| Facts {
        now: Utc.with_ymd_and_hms(2026, 10, 25, h, m, 0).unwrap(),
        ..facts()
    };
    assert_eq!(
        matched(&r, &text("hi"), &at(8, 0)),
        ["sunday"],
        "08:00 UTC is 09:00 CET"
    );
    assert!(matched(&r, &text("hi"), &at(7, 59)).is_empty());
}
