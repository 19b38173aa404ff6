//! Reply rules with arbitrary templates and conditions, evaluated against arbitrary messages:
//! loading and rendering never panic, fuel stops any template that would run on, and the
//! TwiML answered stays within Twilio's limits.
//!
//! An input is a rules file (or, when it is not one, a single reply template) and the
//! message's form body, separated by a line `%%`:
//!
//! ```text
//! [[rules]]
//! name = "greet"
//! reply = [{ body = "Hi {{ profile_name }}" }]
//! %%
//! MessageSid=SM...&From=whatsapp%3A%2B15551234567&Body=Hello
//! ```

#![no_main]

use chrono::{DateTime, Duration};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use toml::{Table, Value};
use twilio_receiver::{
    reply::Replier,
    rules::{ConsentState, Facts, Rules},
    twilio::{InboundMessage, RawRequest, Verifier},
    twiml,
};

/// The rules file for one catch-all rule answering with `template`, as a user would write it.
fn one_rule(template: &str) -> String {
    let reply = Table::from_iter([("body".to_owned(), Value::from(template))]);
    let rule = Table::from_iter([
        ("name".to_owned(), Value::from("fuzz")),
        ("reply".to_owned(), Value::Array(vec![reply.into()])),
    ]);
    let file = Table::from_iter([("rules".to_owned(), Value::Array(vec![rule.into()]))]);
    toml::to_string(&file).expect("a table serialises")
}

/// The message in `form`, parsed as the server does, with the required fields defaulted.
fn message(form: &[u8]) -> Option<InboundMessage> {
    let verifier = Verifier::new(Vec::new(), HashMap::new(), false);
    let req = RawRequest {
        is_get: false,
        url: "https://h.example/twilio/messages",
        content_type: Some("application/x-www-form-urlencoded"),
        body: form,
        signature: None,
        signature_settings: None,
    };
    let mut pairs = verifier.verify(&req).ok()?.pairs().to_vec();
    for (name, value) in [
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", "whatsapp:+15551234567"),
        ("To", "whatsapp:+14155238886"),
    ] {
        pairs.push((name.to_owned(), value.to_owned()));
    }
    InboundMessage::parse(&pairs.into_iter().collect()).ok()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (rules_text, form) = text.split_once("\n%%\n").unwrap_or((&text, ""));
    let rules = match Rules::parse(rules_text, "fuzz.toml") {
        Ok(rules) => rules,
        Err(_) => match Rules::parse(&one_rule(rules_text), "fuzz.toml") {
            Ok(rules) => rules,
            Err(_) => return,
        },
    };
    let Some(msg) = message(form.as_bytes()) else {
        return;
    };
    // The facts vary with the input so that conditions on them are reached too.
    let n = data.len() as i64;
    let now = DateTime::from_timestamp(1_780_000_000 + n * 3_607, 0).expect("a valid time");
    let facts = Facts {
        first_contact: n % 2 == 0,
        new_session: n % 3 == 0,
        inbound_count: n,
        window_expires_at: Some(now + Duration::hours(24)),
        consent: [
            ConsentState::Unknown,
            ConsentState::OptedIn,
            ConsentState::OptedOut,
        ][(n % 3) as usize],
        recent_replies: vec![("fuzz".to_owned(), now - Duration::minutes(n % 600))],
        now,
    };
    let replier = Replier::new(rules, Some("Thanks!".into()), None, true);
    let rules = replier.rules();
    let decision = replier.decide(&rules, &msg, &facts);
    let rendered = replier.render(&decision, "https://h.example", "SM1");
    assert!(rendered.twiml.len() <= twiml::MAX_DOCUMENT_BYTES);
    for body in &rendered.bodies {
        assert!(body.chars().count() <= twiml::MAX_BODY_CHARS);
    }
});
