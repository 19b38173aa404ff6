//! Time to evaluate 100 rules against one message (the target: a median under 20 µs).
//!
//!     cargo bench --bench rules
//!
//! The message matches only the last rule, so every condition of the 99 before it runs:
//! keywords, regexes, business hours in several zones, media types, consent.

use chrono::{TimeZone, Utc};
use std::{fmt::Write, time::Instant};
use twilio_receiver::{
    rules::{ConsentState, Facts, Rules},
    twilio::{InboundMessage, Params},
};

fn main() {
    let mut toml = String::from("timezone = \"Europe/Madrid\"\n");
    for i in 0..99 {
        let when = match i % 5 {
            0 => format!("{{ keywords = [\"MENU{i}\", \"HELP{i}\"] }}"),
            1 => format!("{{ body_matches = \"order\\\\s*#?{i}\\\\d{{4}}\" }}"),
            2 => format!(
                "{{ within_hours = [{{ tz = \"America/New_York\", days = \"sat\", from = \"09:00\", to = \"10:00\" }}], keywords = \"X{i}\" }}"
            ),
            3 => "{ has_media = true, media_type = \"video/*\" }".to_owned(),
            _ => format!("{{ body_equals = \"exactly {i}\", consent = \"opted_in\" }}"),
        };
        writeln!(toml, "[[rules]]\nname = \"rule-{i}\"\nwhen = {when}\nreply = {{ body = \"Hi {{{{ profile_name }}}}, rule {i}\" }}").unwrap();
    }
    toml.push_str("[[rules]]\nname = \"last\"\nwhen = { keywords = \"hello\" }\nreply = { body = \"Hi {{ profile_name }}, it is {{ now }}\" }\n");
    let rules = Rules::parse(&toml, "bench").expect("bench rules compile");
    assert_eq!(rules.len(), 100);

    let params: Params = [
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", "whatsapp:+15551234567"),
        ("To", "whatsapp:+14155238886"),
        ("Body", "hello there, is anyone around today?"),
        ("ProfileName", "Ana"),
        ("WaId", "15551234567"),
        ("MessageType", "text"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let msg = InboundMessage::parse(&params).unwrap();
    let facts = Facts {
        first_contact: false,
        new_session: true,
        inbound_count: 7,
        window_expires_at: None,
        consent: ConsentState::Unknown,
        recent_replies: Vec::new(),
        now: Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap(),
    };
    assert_eq!(rules.evaluate(&msg, &facts).matched, ["last"]);

    // Warm up, then time single evaluations.
    for _ in 0..2_000 {
        std::hint::black_box(rules.evaluate(&msg, &facts));
    }
    let mut samples: Vec<f64> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(rules.evaluate(std::hint::black_box(&msg), &facts));
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "rules: 100 rules, 1 match at the end: median {:.2} µs, p90 {:.2} µs, p99 {:.2} µs ({} samples)",
        at(0.5),
        at(0.9),
        at(0.99),
        samples.len()
    );
}
