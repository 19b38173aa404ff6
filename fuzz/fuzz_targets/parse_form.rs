//! Form parsing and everything typed that is read from the pairs: never a panic, and parsing
//! the pairs encoded again gives the same pairs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use twilio_receiver::twilio::{
    Address, InboundMessage, Params, RawRequest, ReplyLink, StatusCallback, Verifier,
};

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// Parses a form body exactly as the server does (verification off: only parsing runs).
fn parse(body: &[u8]) -> Option<Params> {
    let verifier = Verifier::new(Vec::new(), HashMap::new(), false);
    let req = RawRequest {
        is_get: false,
        url: "https://h.example/twilio/messages",
        content_type: FORM,
        body,
        signature: None,
        signature_settings: None,
    };
    verifier.verify(&req).ok()
}

fn touch(address: &Address) {
    let _ = (address.channel(), address.id(), address.e164());
    let _ = address.to_string();
}

fuzz_target!(|data: &[u8]| {
    let Some(params) = parse(data) else {
        return;
    };
    let _ = params.to_json();
    if let Ok(message) = InboundMessage::parse(&params) {
        touch(&message.from);
        touch(&message.to);
    }
    if let Ok(status) = StatusCallback::parse(&params) {
        touch(&status.from);
        touch(&status.to);
    }
    let _ = ReplyLink::from_query(&params);
    for (name, value) in params.pairs() {
        touch(&Address::parse(name));
        touch(&Address::parse(value));
    }

    let encoded = serde_urlencoded::to_string(params.pairs()).expect("string pairs encode");
    let again = parse(encoded.as_bytes()).expect("an encoded form parses");
    assert_eq!(again, params, "re-encoded as {encoded:?}");
});
