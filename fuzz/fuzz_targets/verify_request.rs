//! Request verification on arbitrary URLs, headers and bodies: it never panics, and whatever
//! the signer signs the verifier accepts.
//!
//! An input is written like an HTTP request, so seeds are readable and realistic:
//!
//! ```text
//! POST https://h.example/twilio/messages
//! Content-Type: application/x-www-form-urlencoded
//! X-Twilio-Signature: ...
//! X-Twilio-Webhooks-Signature-Settings: key=KS1,algorithm=HMAC_SHA256
//!
//! MessageSid=SM...&Body=Hi
//! ```
//!
//! A request with no `X-Twilio-Signature` (and no settings header) is also signed here with the
//! token and must then be accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use std::{collections::HashMap, sync::LazyLock};
use twilio_receiver::twilio::{
    RawRequest, Rejection, Verifier,
    verify::{SignError, sign},
};

const TOKEN: &str = "12345";

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::new(vec![SecretString::from(TOKEN)], HashMap::new(), true).with_shared_keys(
        HashMap::from([("KS1".to_owned(), SecretString::from("shared-secret"))]),
    )
});

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = split.map_or((data, &[][..]), |i| (&data[..i], &data[i + 2..]));
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let (method, url) = lines
        .next()
        .unwrap_or_default()
        .split_once(' ')
        .unwrap_or(("POST", ""));
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_insert_with(|| value.trim());
        }
    }
    let header = |name: &str| headers.get(name).copied();
    let req = RawRequest {
        is_get: method.eq_ignore_ascii_case("GET"),
        url,
        content_type: header("content-type"),
        body,
        signature: header("x-twilio-signature"),
        signature_settings: header("x-twilio-webhooks-signature-settings"),
    };
    let _ = VERIFIER.verify(&req);

    if req.is_get || req.signature.is_some() || req.signature_settings.is_some() {
        return;
    }
    // A JSON body is signed through its hash in the URL: take the URL the signer asks for.
    let url = match sign(TOKEN.as_bytes(), url, req.content_type, body) {
        Err(SignError::NeedsBodyHash { url }) => url,
        _ => url.to_owned(),
    };
    let Ok(signature) = sign(TOKEN.as_bytes(), &url, req.content_type, body) else {
        return;
    };
    let signed = RawRequest {
        url: &url,
        signature: Some(&signature),
        ..req
    };
    match VERIFIER.verify(&signed) {
        Ok(_) | Err(Rejection::BadJson) => {}
        Err(e) => panic!("a request the signer signed was rejected: {e:?}"),
    }
});
