//! Malformed and hostile requests against the real router and Postgres. Each one gets a 4xx
//! and leaves no row in any table, or, when it is a validly signed webhook, is stored
//! faithfully (DESIGN.md §9: only a missing MessageSid, AccountSid, From or To is a 400;
//! what does not parse stays NULL in its typed column and raw in `params`; NUL becomes
//! U+FFFD). Never a 5xx, a panic or a partial row.
//!
//! Signed requests are signed the way Twilio signs: over the URL and the *decoded* form
//! parameters. The expected decoded parameters are spelled out by hand here, so a change in
//! how the server decodes a hostile body shows up as a 403 instead of passing silently.

use crate::helpers::*;
use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, Request},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use twilio_receiver::twilio::{signature, verify};

const MESSAGES: &str = "/twilio/messages";
const FALLBACK: &str = "/twilio/fallback";
const STATUS: &str = "/twilio/status";
const ROUTES: [&str; 3] = [MESSAGES, FALLBACK, STATUS];
const ACCOUNT: &str = "AC00000000000000000000000000000000";
const CONTACT: &str = "whatsapp:+15551234567";
const LIMIT: usize = 64 * 1024;

/// Form parameters, in order.
type Params = Vec<(String, String)>;

/// Every table a webhook writes to (message_media is also the media archive's job queue).
const TABLES: [&str; 8] = [
    "messages",
    "message_media",
    "message_status_events",
    "conversations",
    "sessions",
    "webhook_failures",
    "replies",
    "consent",
];

async fn assert_nothing_stored(app: &TestApp, case: &str) {
    for table in TABLES {
        let rows = app.count(&format!("select count(*) from {table}")).await;
        assert_eq!(rows, 0, "{case}: {table} has rows");
    }
}

/// The smallest webhook each route accepts, for message `sid`.
fn webhook(route: &str, sid: &str) -> Params {
    let mut p = pairs(&[
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT),
        ("From", CONTACT),
        ("To", BUSINESS),
    ]);
    match route {
        STATUS => p.extend(pairs(&[("MessageStatus", "sent")])),
        FALLBACK => p.extend(pairs(&[
            ("ErrorCode", "11200"),
            ("ErrorUrl", "https://primary.example/twilio/messages"),
        ])),
        _ => {}
    }
    p
}

/// What each route answers a stored webhook with.
fn accepted(route: &str) -> u16 {
    if route == STATUS { 204 } else { 200 }
}

/// The signature Twilio would send for `BASE` + `path_and_query` and the decoded `params`.
fn signature_for(path_and_query: &str, params: &[(String, String)]) -> String {
    signature::compute(TOKEN.as_bytes(), &format!("{BASE}{path_and_query}"), params)
}

/// A form POST of `body` exactly as given (any bytes), signed over `signed`: the parameters
/// as Twilio's signer would see them after decoding.
fn post_form(path: &str, body: impl Into<Bytes>, signed: &[(String, String)]) -> Request<Body> {
    Request::post(path)
        .header("content-type", FORM)
        .header("x-twilio-signature", signature_for(path, signed))
        .body(Body::from(body.into()))
        .unwrap()
}

/// A GET whose signature covers the URL alone (TWILIO.md §1.2).
fn get_signed(path_and_query: &str) -> Request<Body> {
    Request::get(path_and_query)
        .header("x-twilio-signature", signature_for(path_and_query, &[]))
        .body(Body::empty())
        .unwrap()
}

/// A JSON POST, signed as Twilio signs JSON: `bodySHA256` in the URL, the URL signed alone.
fn post_json(route: &str, body: &[u8]) -> Request<Body> {
    let json = Some("application/json");
    let Err(verify::SignError::NeedsBodyHash { url }) =
        verify::sign(TOKEN.as_bytes(), &format!("{BASE}{route}"), json, body)
    else {
        panic!("a JSON body is signed through its hash");
    };
    let sig = verify::sign(TOKEN.as_bytes(), &url, json, body).unwrap();
    Request::post(url.strip_prefix(BASE).unwrap())
        .header("content-type", "application/json")
        .header("x-twilio-signature", sig)
        .body(Body::from(body.to_vec()))
        .unwrap()
}

fn form(params: &[(String, String)]) -> String {
    serde_urlencoded::to_string(params).unwrap()
}

/// `params` as stored by `route` for message `sid`: the message's, the failure's or the
/// status event's.
async fn stored_params(app: &TestApp, route: &str, sid: &str) -> Value {
    let sql = match route {
        MESSAGES => "select params from messages where message_sid = $1",
        FALLBACK => "select params from webhook_failures where message_sid = $1",
        _ => "select params from message_status_events where message_sid = $1",
    };
    sqlx::query_scalar::<_, Value>(sql)
        .bind(sid)
        .fetch_one(&app.pool)
        .await
        .unwrap_or_else(|e| panic!("{route} {sid}: {e}"))
}

/// The typed columns of a stored message that hostile input lands in.
#[derive(Debug)]
struct Stored {
    contact: String,
    body: Option<String>,
    profile_name: Option<String>,
    num_media: Option<i32>,
    num_segments: Option<i32>,
}

async fn stored(app: &TestApp, sid: &str) -> Stored {
    let (contact, body, profile_name, num_media, num_segments) = sqlx::query_as::<
        _,
        (
            String,
            Option<String>,
            Option<String>,
            Option<i32>,
            Option<i32>,
        ),
    >(
        "select contact, body, profile_name, num_media, num_segments
         from messages where message_sid = $1",
    )
    .bind(sid)
    .fetch_one(&app.pool)
    .await
    .unwrap_or_else(|e| panic!("{sid}: {e}"));
    Stored {
        contact,
        body,
        profile_name,
        num_media,
        num_segments,
    }
}

async fn media(app: &TestApp, sid: &str) -> Vec<(i32, String, Option<String>)> {
    sqlx::query_as(
        "select index, url, content_type from message_media where message_sid = $1 order by index",
    )
    .bind(sid)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// `len` characters that no compressor shrinks (deterministic), so Postgres must store or
/// index every byte of them.
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

#[sqlx::test]
async fn invalid_utf8_is_decoded_lossily_and_stored_as_signed(pool: PgPool) {
    // Twilio only sends UTF-8. Invalid bytes (percent-encoded or raw) are decoded to U+FFFD
    // before the signature is checked, so the signature covers the decoded values and what is
    // stored is exactly what was verified.
    let app = TestApp::new(pool);
    for (n, route) in ROUTES.into_iter().enumerate() {
        let sid = sid(n as u32);
        let params = webhook(route, &sid);
        let mut body = form(&params).into_bytes();
        body.extend_from_slice(b"&Body=caf%E9+%FF%FE&ProfileName=\xC3\x28raw&Na%FFme=\xFF");
        let mut decoded = params.clone();
        decoded.extend(pairs(&[
            ("Body", "caf\u{FFFD} \u{FFFD}\u{FFFD}"),
            ("ProfileName", "\u{FFFD}(raw"),
            ("Na\u{FFFD}me", "\u{FFFD}"),
        ]));

        let response = app.send(post_form(route, body, &decoded)).await;

        assert_eq!(response.status, accepted(route), "{route}");
        let p = stored_params(&app, route, &sid).await;
        assert_eq!(p["Body"], "caf\u{FFFD} \u{FFFD}\u{FFFD}", "{route}");
        assert_eq!(p["ProfileName"], "\u{FFFD}(raw", "{route}");
        assert_eq!(p["Na\u{FFFD}me"], "\u{FFFD}", "{route}");
    }
    let m = stored(&app, &sid(0)).await;
    assert_eq!(m.body.as_deref(), Some("caf\u{FFFD} \u{FFFD}\u{FFFD}"));
    assert_eq!(m.profile_name.as_deref(), Some("\u{FFFD}(raw"));
}

#[sqlx::test]
async fn invalid_utf8_signed_over_the_raw_bytes_is_403(pool: PgPool) {
    // A signer that kept the raw bytes (as Latin-1, say) signed other values than the ones
    // the server verifies and would store: refused, nothing stored.
    let app = TestApp::new(pool);
    for route in ROUTES {
        let params = webhook(route, &sid(1));
        let mut body = form(&params).into_bytes();
        body.extend_from_slice(b"&Body=caf%E9");
        let mut latin1 = params.clone();
        latin1.extend(pairs(&[("Body", "café")]));
        let response = app.send(post_form(route, body, &latin1)).await;
        assert_eq!(response.status, 403, "{route}");
    }
    assert_nothing_stored(&app, "signed over raw bytes").await;
}

#[sqlx::test]
async fn bad_percent_escapes_and_odd_pairs_are_kept_literally(pool: PgPool) {
    // An escape that is not one (`%zz`, a lone `%`) is kept as written, the way every form
    // decoder and Twilio's libraries read it; a name without `=` has an empty value; empty
    // pairs (`&&`) are no parameters at all.
    let app = TestApp::new(pool);
    for (n, route) in ROUTES.into_iter().enumerate() {
        let sid = sid(n as u32);
        let params = webhook(route, &sid);
        let mut body = form(&params);
        body.push_str(
            "&Body=100%25+sure%&ProfileName=%zz%4%&%=%25&Odd%2=x&Flag&&=no-name&Plus=a+b%2Bc%20d&",
        );
        let mut decoded = params.clone();
        decoded.extend(pairs(&[
            ("Body", "100% sure%"),
            ("ProfileName", "%zz%4%"),
            ("%", "%"),
            ("Odd%2", "x"),
            ("Flag", ""),
            ("", "no-name"),
            ("Plus", "a b+c d"),
        ]));

        let response = app.send(post_form(route, body, &decoded)).await;

        assert_eq!(response.status, accepted(route), "{route}");
        let p = stored_params(&app, route, &sid).await;
        for (k, v) in &decoded {
            assert_eq!(p[k.as_str()], json!(v), "{route}: {k}");
        }
        assert_eq!(p.as_object().unwrap().len(), decoded.len(), "{route}");
    }
    let m = stored(&app, &sid(0)).await;
    assert_eq!(m.body.as_deref(), Some("100% sure%"));
    assert_eq!(m.profile_name.as_deref(), Some("%zz%4%"));
}

#[sqlx::test]
async fn repeated_keys_become_arrays_and_the_first_value_is_the_typed_one(pool: PgPool) {
    let app = TestApp::new(pool);
    let (first, second) = (sid(1), sid(2));
    let mut params = webhook(MESSAGES, &first);
    params.extend(pairs(&[
        ("MessageSid", &second),
        ("From", "whatsapp:+15550000000"),
        ("Body", "first"),
        ("Body", "second"),
        ("Body", "first"),
        ("NumMedia", "1"),
        ("NumMedia", "7"),
        ("MediaUrl0", "https://api.twilio.com/first"),
        ("MediaContentType0", "image/png"),
        ("MediaUrl0", "https://api.twilio.com/second"),
    ]));

    let response = app.post_signed(MESSAGES, &params).await;

    assert_eq!(response.status, 200);
    // One message, under the first SID; the second SID is only a value in params.
    assert_eq!(app.count("select count(*) from messages").await, 1);
    let m = stored(&app, &first).await;
    assert_eq!(m.contact, CONTACT);
    assert_eq!(m.body.as_deref(), Some("first"));
    assert_eq!(m.num_media, Some(1));
    assert_eq!(
        media(&app, &first).await,
        [(
            0,
            "https://api.twilio.com/first".to_owned(),
            Some("image/png".to_owned())
        )]
    );
    let p = stored_params(&app, MESSAGES, &first).await;
    assert_eq!(p["MessageSid"], json!([first, second]));
    assert_eq!(p["From"], json!([CONTACT, "whatsapp:+15550000000"]));
    assert_eq!(p["Body"], json!(["first", "second", "first"]));
    assert_eq!(p["NumMedia"], json!(["1", "7"]));
    assert_eq!(
        p["MediaUrl0"],
        json!([
            "https://api.twilio.com/first",
            "https://api.twilio.com/second"
        ])
    );

    // A status callback: the first status is the event's; both stay in params.
    let mut callback = webhook(STATUS, &sid(3));
    callback.retain(|(k, _)| k != "MessageStatus");
    callback.extend(pairs(&[
        ("MessageStatus", "delivered"),
        ("MessageStatus", "failed"),
        ("ErrorCode", "30003"),
        ("ErrorCode", "30005"),
    ]));
    assert_eq!(app.post_signed(STATUS, &callback).await.status, 204);
    let (status, code, raw): (String, Option<i32>, Option<String>) = sqlx::query_as(
        "select status, error_code, error_code_raw from message_status_events where message_sid = $1",
    )
    .bind(sid(3))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), code, raw.as_deref()),
        ("delivered", Some(30003), Some("30003"))
    );
    let p = stored_params(&app, STATUS, &sid(3)).await;
    assert_eq!(p["MessageStatus"], json!(["delivered", "failed"]));
    assert_eq!(p["ErrorCode"], json!(["30003", "30005"]));

    // A fallback call: the first ErrorCode is the failure's.
    let mut call = webhook(FALLBACK, &sid(4));
    call.push(("ErrorCode".into(), "11205".into()));
    assert_eq!(app.post_signed(FALLBACK, &call).await.status, 200);
    let code: Option<i32> =
        sqlx::query_scalar("select error_code from webhook_failures where message_sid = $1")
            .bind(sid(4))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(code, Some(11200));
    let p = stored_params(&app, FALLBACK, &sid(4)).await;
    assert_eq!(p["ErrorCode"], json!(["11200", "11205"]));
}

#[sqlx::test]
async fn ten_thousand_parameters_are_stored_within_the_limit_and_413_beyond(pool: PgPool) {
    let app = TestApp::new(pool);
    // 10,000 distinct three-character names (no Twilio name is lower-case), 6 bytes each.
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let names: Vec<String> = (0..10_000usize)
        .map(|i| {
            [i / 1296, i / 36 % 36, i % 36]
                .iter()
                .map(|&d| CHARS[d] as char)
                .collect()
        })
        .collect();
    for (n, route) in ROUTES.into_iter().enumerate() {
        let sid = sid(n as u32);
        let mut params = webhook(route, &sid);
        params.extend(names.iter().map(|k| (k.clone(), "1".to_owned())));
        assert!(form(&params).len() <= LIMIT);

        let response = app.post_signed(route, &params).await;

        assert_eq!(response.status, accepted(route), "{route}");
        let p = stored_params(&app, route, &sid).await;
        assert_eq!(p.as_object().unwrap().len(), params.len(), "{route}");
        assert_eq!(p[names[9_999].as_str()], "1", "{route}: the last name");
    }

    // One name 10,000 times: an array of 10,000 values.
    let mut params = webhook(MESSAGES, &sid(10));
    params.extend((0..10_000).map(|_| ("X".to_owned(), "1".to_owned())));
    assert_eq!(app.post_signed(MESSAGES, &params).await.status, 200);
    assert_eq!(
        stored_params(&app, MESSAGES, &sid(10)).await["X"]
            .as_array()
            .unwrap()
            .len(),
        10_000
    );
}

#[sqlx::test]
async fn bodies_over_the_limit_are_413_on_every_route(pool: PgPool) {
    let app = TestApp::new(pool);
    for route in ROUTES {
        // 10,000 parameters with longer names: about 120 KiB.
        let mut params = webhook(route, &sid(1));
        params.extend((0..10_000).map(|i| (format!("Param{i}"), "x".to_owned())));
        assert!(form(&params).len() > LIMIT);
        let response = app.post_signed(route, &params).await;
        assert_eq!(response.status, 413, "{route}: 10,000 parameters");
        assert_eq!(response.body, "request body too large\n");

        // One huge value, and no signature at all: the size is checked first.
        let body = format!("Body={}", "x".repeat(10 * LIMIT));
        let request = Request::post(route)
            .header("content-type", FORM)
            .body(Body::from(body))
            .unwrap();
        assert_eq!(app.send(request).await.status, 413, "{route}: one value");
    }
    assert_nothing_stored(&app, "over the limit").await;
}

#[sqlx::test]
async fn a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(pool: PgPool) {
    let app = TestApp::new(pool);
    for (n, route) in ROUTES.into_iter().enumerate() {
        for (extra, status) in [(0, accepted(route)), (1, 413)] {
            let sid = sid((n * 10 + extra) as u32);
            let mut params = webhook(route, &sid);
            let base = form(&params).len() + "&Pad=".len();
            params.push(("Pad".into(), "x".repeat(LIMIT + extra - base)));
            assert_eq!(form(&params).len(), LIMIT + extra);
            let response = app.post_signed(route, &params).await;
            assert_eq!(response.status, status, "{route}: limit + {extra}");
        }
    }
    assert_eq!(app.count("select count(*) from messages").await, 3);
    assert_eq!(
        app.count("select count(*) from messages where length(params->>'Pad') > 65000")
            .await,
        3
    );
}

#[sqlx::test]
async fn a_huge_body_text_is_stored_whole(pool: PgPool) {
    let app = TestApp::new(pool);
    let text = incompressible(LIMIT - 1_000);
    let mut params = webhook(MESSAGES, &sid(1));
    params.push(("Body".into(), text.clone()));
    assert_eq!(app.post_signed(MESSAGES, &params).await.status, 200);
    assert_eq!(stored(&app, &sid(1)).await.body.as_deref(), Some(&*text));
    assert_eq!(stored_params(&app, MESSAGES, &sid(1)).await["Body"], text);
}

#[sqlx::test]
async fn values_too_long_to_index_are_413_with_nothing_stored(pool: PgPool) {
    // Postgres cannot index a key longer than about 2.7 kB (after compression), so such a
    // MessageSid, address or status cannot be stored at all. Twilio never sends one (SIDs
    // are 34 characters); the request is refused as too large, never a 500, and the
    // transaction leaves nothing behind.
    let app = TestApp::new(pool);
    let long = incompressible(3_000);
    let mut cases: Vec<(&str, &str, Params)> = Vec::new();
    for route in ROUTES {
        cases.push(("MessageSid", route, webhook(route, &long)));
    }
    let mut from = webhook(MESSAGES, &sid(1));
    from.retain(|(k, _)| k != "From");
    from.push(("From".into(), format!("whatsapp:+{long}")));
    cases.push(("From", MESSAGES, from));
    let mut to = webhook(FALLBACK, &sid(2));
    to.retain(|(k, _)| k != "To");
    to.push(("To".into(), long.clone()));
    cases.push(("To", FALLBACK, to));
    let mut status = webhook(STATUS, &sid(3));
    status.retain(|(k, _)| k != "MessageStatus");
    status.push(("MessageStatus".into(), long.clone()));
    cases.push(("MessageStatus", STATUS, status));
    let mut code = webhook(STATUS, &sid(4));
    code.push(("ErrorCode".into(), long.clone()));
    cases.push(("ErrorCode", STATUS, code));

    for (name, route, params) in cases {
        let response = app.post_signed(route, &params).await;
        assert_eq!(response.status, 413, "{name} on {route}");
        assert_eq!(response.body, "a value is too large to store\n");
        assert_nothing_stored(&app, name).await;
    }
    // A reply link (the action URL's query) naming an inbound SID that long.
    let path = format!("{STATUS}?reply_to={long}&part=0");
    let response = app
        .send(signed_post(
            &format!("{BASE}{path}"),
            &path,
            &webhook(STATUS, &sid(5)),
            TOKEN,
        ))
        .await;
    assert_eq!(response.status, 413, "reply_to");
    assert_nothing_stored(&app, "reply_to").await;
}

#[sqlx::test]
async fn nul_becomes_the_replacement_character_and_control_characters_are_kept(pool: PgPool) {
    let app = TestApp::new(pool);
    let controls = "\u{1}\u{7}\u{8}\u{1b}[31m\r\n\t\u{7f}\u{85}\u{2028}\u{feff}\u{ffff}";
    let nul_sid = "SM\0nul";
    let mut params = webhook(MESSAGES, nul_sid);
    params.retain(|(k, _)| k != "From");
    params.extend(pairs(&[
        ("From", "whatsapp:+1555\u{0}1234567"),
        ("Body", &format!("a\0b{controls}")),
        ("ProfileName", "\0"),
        ("Ke\0y", "v"),
    ]));
    let mut body = form(&params).into_bytes();
    // Raw control bytes, not percent-encoded.
    body.extend_from_slice(b"&Raw=\x00\x01\x1f\x7f");
    let mut decoded = params.clone();
    decoded.push(("Raw".into(), "\0\u{1}\u{1f}\u{7f}".into()));

    let response = app.send(post_form(MESSAGES, body, &decoded)).await;

    assert_eq!(response.status, 200);
    let stored_sid = "SM\u{FFFD}nul";
    let m = stored(&app, stored_sid).await;
    assert_eq!(m.contact, "whatsapp:+1555\u{FFFD}1234567");
    assert_eq!(m.body, Some(format!("a\u{FFFD}b{controls}")));
    assert_eq!(m.profile_name.as_deref(), Some("\u{FFFD}"));
    let p = stored_params(&app, MESSAGES, stored_sid).await;
    assert_eq!(p["MessageSid"], stored_sid);
    assert_eq!(p["Body"], format!("a\u{FFFD}b{controls}"));
    assert_eq!(p["Ke\u{FFFD}y"], "v");
    assert_eq!(p["Raw"], "\u{FFFD}\u{1}\u{1f}\u{7f}");
    assert_eq!(app.count("select count(*) from replies").await, 1);
    assert_eq!(app.count("select count(*) from sessions").await, 1);

    // A status callback and a fallback call with NUL in their own fields.
    let mut callback = webhook(STATUS, &sid(1));
    callback.retain(|(k, _)| k != "MessageStatus");
    callback.extend(pairs(&[
        ("MessageStatus", "sent\0"),
        ("ErrorCode", "\0"),
        ("ErrorMessage", "bad\0\r\nthing"),
        ("RawDlrDoneDate", "\0"),
    ]));
    assert_eq!(app.post_signed(STATUS, &callback).await.status, 204);
    let event: (String, Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "select status, error_code_raw, error_message, raw_dlr_done_date
         from message_status_events where message_sid = $1",
    )
    .bind(sid(1))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        event,
        (
            "sent\u{FFFD}".to_owned(),
            Some("\u{FFFD}".to_owned()),
            Some("bad\u{FFFD}\r\nthing".to_owned()),
            Some("\u{FFFD}".to_owned())
        )
    );

    let mut call = webhook(FALLBACK, &sid(2));
    call.retain(|(k, _)| k != "ErrorUrl");
    call.push(("ErrorUrl".into(), "https://x.example/\0".into()));
    assert_eq!(app.post_signed(FALLBACK, &call).await.status, 200);
    let url: Option<String> =
        sqlx::query_scalar("select error_url from webhook_failures where message_sid = $1")
            .bind(sid(2))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(url.as_deref(), Some("https://x.example/\u{FFFD}"));
}

#[sqlx::test]
async fn num_media_that_disagrees_with_the_media_fields_is_stored_as_sent(pool: PgPool) {
    // NumMedia is Twilio's count and media items are what it sent: both are stored as they
    // are (every well-formed MediaUrl{N} becomes a media row, whatever NumMedia says), and a
    // count that is not a non-negative 32-bit integer is NULL with its raw value in params.
    let app = TestApp::new(pool);
    let url = |n: u32| format!("https://api.twilio.com/m{n}");
    let cases: Vec<(&str, Params, Option<i32>, Vec<i32>)> = vec![
        (
            "NumMedia=2 with five MediaUrlN",
            (0..5)
                .flat_map(|n| {
                    [
                        (format!("MediaUrl{n}"), url(n)),
                        (format!("MediaContentType{n}"), "image/jpeg".into()),
                    ]
                })
                .chain([("NumMedia".into(), "2".into())])
                .collect(),
            Some(2),
            vec![0, 1, 2, 3, 4],
        ),
        (
            "NumMedia=3 with no MediaUrlN",
            pairs(&[("NumMedia", "3")]),
            Some(3),
            vec![],
        ),
        (
            "MediaUrl3 alone",
            pairs(&[
                ("NumMedia", "1"),
                ("MediaUrl3", &url(3)),
                ("MediaContentType3", "audio/ogg"),
            ]),
            Some(1),
            vec![3],
        ),
        (
            "a content type without its URL, and an empty URL",
            pairs(&[
                ("NumMedia", "1"),
                ("MediaContentType0", "image/png"),
                ("MediaUrl1", ""),
            ]),
            Some(1),
            vec![],
        ),
        (
            "indexes that are not indexes",
            pairs(&[
                ("MediaUrl01", &url(1)),
                ("MediaUrl+1", &url(1)),
                ("MediaUrl-1", &url(1)),
                ("MediaUrl 1", &url(1)),
                ("MediaUrl1.0", &url(1)),
                ("MediaUrl101", &url(101)),
                ("MediaUrl99999999999999999999", &url(9)),
                ("mediaurl2", &url(2)),
                ("MediaUrl100", &url(100)),
            ]),
            None,
            vec![100],
        ),
        (
            "NumMedia=99999999999999999999",
            pairs(&[("NumMedia", "99999999999999999999")]),
            None,
            vec![],
        ),
        (
            "NumMedia=2147483648",
            pairs(&[("NumMedia", "2147483648")]),
            None,
            vec![],
        ),
        ("NumMedia=-1", pairs(&[("NumMedia", "-1")]), None, vec![]),
        ("NumMedia=abc", pairs(&[("NumMedia", "abc")]), None, vec![]),
        ("NumMedia=1.5", pairs(&[("NumMedia", "1.5")]), None, vec![]),
        (
            "NumMedia=0x10",
            pairs(&[("NumMedia", "0x10")]),
            None,
            vec![],
        ),
        ("NumMedia=1e3", pairs(&[("NumMedia", "1e3")]), None, vec![]),
        (
            "NumMedia=٣ (Arabic-Indic three)",
            pairs(&[("NumMedia", "٣")]),
            None,
            vec![],
        ),
        ("NumMedia empty", pairs(&[("NumMedia", "")]), None, vec![]),
        (
            "NumMedia padded",
            pairs(&[("NumMedia", " 2 ")]),
            Some(2),
            vec![],
        ),
    ];
    for (n, (name, extra, num_media, indexes)) in cases.into_iter().enumerate() {
        let sid = sid(n as u32);
        let mut params = webhook(MESSAGES, &sid);
        params.extend(extra.iter().cloned());

        let response = app.post_signed(MESSAGES, &params).await;

        assert_eq!(response.status, 200, "{name}");
        assert_eq!(stored(&app, &sid).await.num_media, num_media, "{name}");
        let got: Vec<i32> = media(&app, &sid).await.iter().map(|m| m.0).collect();
        assert_eq!(got, indexes, "{name}");
        // Every parameter, including the ones no column holds, is in params as sent.
        let p = stored_params(&app, MESSAGES, &sid).await;
        for (k, v) in &extra {
            assert_eq!(p[k.as_str()], json!(v), "{name}: {k}");
        }
    }
    // A media row carries its own content type, and nothing else pairs with it.
    assert_eq!(
        media(&app, &sid(2)).await,
        [(3, url(3), Some("audio/ogg".to_owned()))]
    );
}

#[sqlx::test]
async fn absurd_numbers_are_null_in_their_columns_and_raw_in_params(pool: PgPool) {
    let app = TestApp::new(pool);
    let mut params = webhook(MESSAGES, &sid(1));
    params.extend(pairs(&[
        ("NumSegments", "-1"),
        ("Latitude", "1e400"),
        ("Longitude", "-inf"),
        ("ReferralNumMedia", "99999999999999999999"),
        ("Forwarded", "yes"),
    ]));
    // JSON nested deeper than the parser goes: not parsed, never a stack overflow.
    let deep = "[".repeat(20_000);
    params.push(("ChannelMetadata".into(), deep.clone()));
    assert_eq!(app.post_signed(MESSAGES, &params).await.status, 200);
    let m = stored(&app, &sid(1)).await;
    assert_eq!(m.num_segments, None);
    let (lat, lon, fwd): (Option<f64>, Option<f64>, Option<bool>) = sqlx::query_as(
        "select latitude, longitude, forwarded from messages where message_sid = $1",
    )
    .bind(sid(1))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((lat, lon, fwd), (None, None, None));
    let metadata: Option<Value> =
        sqlx::query_scalar("select channel_metadata from messages where message_sid = $1")
            .bind(sid(1))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(metadata, None);
    let p = stored_params(&app, MESSAGES, &sid(1)).await;
    assert_eq!(p["ChannelMetadata"], deep);
    assert_eq!(p["Latitude"], "1e400");
    assert_eq!(p["ReferralNumMedia"], "99999999999999999999");

    // Error codes that are not 32-bit integers: NULL, the raw value kept.
    for (n, code) in ["99999999999999999999", "-", "1e5", "11200.0"]
        .into_iter()
        .enumerate()
    {
        let mut call = webhook(FALLBACK, &sid(10 + n as u32));
        call.retain(|(k, _)| k != "ErrorCode");
        call.push(("ErrorCode".into(), code.into()));
        assert_eq!(app.post_signed(FALLBACK, &call).await.status, 200, "{code}");
        let stored: Option<i32> =
            sqlx::query_scalar("select error_code from webhook_failures where message_sid = $1")
                .bind(sid(10 + n as u32))
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(stored, None, "{code}");

        let mut callback = webhook(STATUS, &sid(20 + n as u32));
        callback.push(("ErrorCode".into(), code.into()));
        assert_eq!(
            app.post_signed(STATUS, &callback).await.status,
            204,
            "{code}"
        );
        let (typed, raw): (Option<i32>, Option<String>) = sqlx::query_as(
            "select error_code, error_code_raw from message_status_events where message_sid = $1",
        )
        .bind(sid(20 + n as u32))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!((typed, raw.as_deref()), (None, Some(code)), "{code}");
    }
}

#[sqlx::test]
async fn absurd_reply_links_on_status_callbacks_are_204(pool: PgPool) {
    // The action URL of a TwiML reply carries reply_to, rule and part (ours, but signed
    // over by whoever holds the token): a part that is not a small position links to the
    // reply's first message, as an unparseable one always did.
    let app = TestApp::new(pool);
    let reply_to = sid(1000);
    let cases = [
        ("part=2147483647", Some(0)),
        ("part=-2147483648", Some(0)),
        ("part=-1", Some(0)),
        ("part=99999999999999999999", Some(0)),
        ("part=x", Some(0)),
        ("part=3", Some(3)),
        ("rule=%00&part=", Some(0)),
    ];
    for (n, (query, part)) in cases.into_iter().enumerate() {
        let sid = sid(n as u32);
        let path = format!("{STATUS}?reply_to={reply_to}&{query}");
        let params = webhook(STATUS, &sid);
        let response = app
            .send(signed_post(&format!("{BASE}{path}"), &path, &params, TOKEN))
            .await;
        assert_eq!(response.status, 204, "{query}");
        let (linked, stored_part): (Option<String>, Option<i32>) =
            sqlx::query_as("select in_reply_to, reply_part from messages where message_sid = $1")
                .bind(&sid)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(linked.as_deref(), Some(reply_to.as_str()), "{query}");
        assert_eq!(stored_part, part, "{query}");
    }
    let rule: Option<String> =
        sqlx::query_scalar("select rule from messages where message_sid = $1")
            .bind(sid(6))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(rule.as_deref(), Some("\u{FFFD}"));
}

#[sqlx::test]
async fn methods_other_than_get_and_post_are_405_even_when_signed(pool: PgPool) {
    // HEAD too: axum would answer it with the GET handler, and a webhook must not write to
    // the database for a HEAD.
    let app = TestApp::new(pool);
    for route in ROUTES {
        let params = webhook(route, &sid(1));
        for method in [
            "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "FOO",
        ] {
            let request = Request::builder()
                .method(method)
                .uri(route)
                .header("content-type", FORM)
                .header("x-twilio-signature", signature_for(route, &params))
                .body(Body::from(form(&params)))
                .unwrap();
            let response = app.send(request).await;
            assert_eq!(response.status, 405, "{method} {route}");
            let allow = response.headers["allow"].to_str().unwrap();
            assert!(
                allow.contains("GET") && allow.contains("POST"),
                "{method} {route}: {allow}"
            );
        }
        // A signed HEAD with the URL a GET would carry.
        let path = format!("{route}?{}", form(&params));
        let request = Request::head(&path)
            .header("x-twilio-signature", signature_for(&path, &[]))
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.send(request).await.status, 405, "HEAD {route}?...");
    }
    assert_nothing_stored(&app, "wrong methods").await;
}

#[sqlx::test]
async fn content_types_other_than_form_or_json_are_415_even_when_signed(pool: PgPool) {
    let app = TestApp::new(pool);
    for route in ROUTES {
        let params = webhook(route, &sid(1));
        let multipart =
            "--x\r\nContent-Disposition: form-data; name=\"MessageSid\"\r\n\r\nSM1\r\n--x--\r\n";
        let cases: [(&str, Option<&[u8]>, String); 9] = [
            ("none", None, form(&params)),
            ("empty", Some(b""), form(&params)),
            ("text/plain", Some(b"text/plain"), form(&params)),
            ("application/xml", Some(b"application/xml"), form(&params)),
            (
                "multipart",
                Some(b"multipart/form-data; boundary=x"),
                multipart.to_owned(),
            ),
            (
                "a longer name",
                Some(b"application/x-www-form-urlencodedx"),
                form(&params),
            ),
            (
                "form with a non-ASCII byte",
                Some(b"application/x-www-form-urlencoded\xff"),
                form(&params),
            ),
            ("form/*", Some(b"application/*"), form(&params)),
            ("any", Some(b"*/*"), form(&params)),
        ];
        for (name, content_type, body) in cases {
            let mut request =
                Request::post(route).header("x-twilio-signature", signature_for(route, &params));
            if let Some(ct) = content_type {
                request = request.header("content-type", HeaderValue::from_bytes(ct).unwrap());
            }
            let response = app.send(request.body(Body::from(body)).unwrap()).await;
            assert_eq!(response.status, 415, "{route}: {name}");
        }
        // JSON is signed through bodySHA256 in the URL, which a form signature lacks.
        let request = Request::post(route)
            .header("content-type", "application/json")
            .header("x-twilio-signature", signature_for(route, &params))
            .body(Body::from(form(&params)))
            .unwrap();
        assert_eq!(app.send(request).await.status, 403, "{route}: form as JSON");
        // A correctly signed JSON body that is not JSON (invalid UTF-8).
        let response = app
            .send(post_json(route, b"{\"MessageSid\": \"\xff\"}"))
            .await;
        assert_eq!(response.status, 400, "{route}: invalid UTF-8 JSON");
    }
    assert_nothing_stored(&app, "content types").await;
}

#[sqlx::test]
async fn content_type_spellings_of_a_form_are_accepted(pool: PgPool) {
    // The media type is compared case-insensitively and its parameters ignored. A declared
    // charset does not change decoding: Twilio sends UTF-8, so the bytes are read as UTF-8.
    let app = TestApp::new(pool);
    let spellings = [
        "APPLICATION/X-WWW-FORM-URLENCODED",
        "application/x-www-form-urlencoded ; charset=UTF-8",
        "application/x-www-form-urlencoded; charset=ISO-8859-1",
    ];
    for (n, content_type) in spellings.into_iter().enumerate() {
        let params = webhook(MESSAGES, &sid(n as u32));
        let request = Request::post(MESSAGES)
            .header("content-type", content_type)
            .header("x-twilio-signature", signature_for(MESSAGES, &params))
            .body(Body::from(form(&params)))
            .unwrap();
        assert_eq!(app.send(request).await.status, 200, "{content_type}");
    }
    assert_eq!(app.count("select count(*) from messages").await, 3);
}

#[sqlx::test]
async fn signed_json_with_nul_nesting_and_odd_values_is_stored(pool: PgPool) {
    let app = TestApp::new(pool);
    let body = json!({
        "MessageSid": sid(1), "AccountSid": ACCOUNT, "From": CONTACT, "To": BUSINESS,
        "Body": "a\u{0}b", "NumMedia": -1, "ProfileName": {"nested": [1, null]},
        "NumSegments": null, "K\u{0}": true,
    })
    .to_string();
    let response = app.send(post_json(MESSAGES, body.as_bytes())).await;
    assert_eq!(response.status, 200);
    let m = stored(&app, &sid(1)).await;
    assert_eq!(m.body.as_deref(), Some("a\u{FFFD}b"));
    assert_eq!(m.num_media, None);
    assert_eq!(m.num_segments, None);
    assert_eq!(m.profile_name.as_deref(), Some(r#"{"nested":[1,null]}"#));
    let p = stored_params(&app, MESSAGES, &sid(1)).await;
    assert_eq!(p["NumMedia"], "-1");
    assert_eq!(p["K\u{FFFD}"], "true");

    // Nested deeper than the parser goes: not JSON it can read, so a 400, never a stack
    // overflow.
    let deep = format!(
        r#"{{"MessageSid":"{}","AccountSid":"{ACCOUNT}","From":"{CONTACT}","To":"{BUSINESS}","Body":{}{}}}"#,
        sid(2),
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let response = app.send(post_json(MESSAGES, deep.as_bytes())).await;
    assert_eq!(response.status, 400);
    assert_eq!(app.count("select count(*) from messages").await, 1);
}

#[sqlx::test]
async fn get_webhooks_with_hostile_query_strings_are_stored_as_signed(pool: PgPool) {
    // GET signs the URL alone, byte for byte; the parameters are the decoded query.
    let app = TestApp::new(pool);
    let long = incompressible(60_000);
    let hostile = [
        (
            "NUL, invalid UTF-8, bad escapes, repeats and empty names",
            "&Body=%00nul%FFbad%zz+plus%2Bsign%&Body=again&Caf%C3%A9=%E2%9C%93&&=&Flag".to_owned(),
            vec![
                (
                    "Body",
                    json!(["\u{FFFD}nul\u{FFFD}bad%zz plus+sign%", "again"]),
                ),
                ("Café", json!("✓")),
                ("", json!("")),
                ("Flag", json!("")),
            ],
        ),
        (
            "raw (unescaped) UTF-8",
            "&Body=h\u{e9}llo\u{1F44B}".to_owned(),
            vec![("Body", json!("h\u{e9}llo\u{1F44B}"))],
        ),
        (
            "a 60,000-character value",
            format!("&Body={long}"),
            vec![("Body", json!(long))],
        ),
    ];
    let mut n = 0;
    for route in ROUTES {
        for (name, extra, expected) in &hostile {
            n += 1;
            let sid = sid(n);
            let path = format!("{route}?{}{extra}", form(&webhook(route, &sid)));
            let response = app.send(get_signed(&path)).await;
            assert_eq!(response.status, accepted(route), "{route}: {name}");
            let p = stored_params(&app, route, &sid).await;
            for (k, v) in expected {
                assert_eq!(&p[*k], v, "{route}: {name}: {k}");
            }
        }
    }
    assert_eq!(
        stored(&app, &sid(1)).await.body.as_deref(),
        Some("\u{FFFD}nul\u{FFFD}bad%zz plus+sign%")
    );
}

#[sqlx::test]
async fn empty_and_parameterless_requests_are_4xx_with_nothing_stored(pool: PgPool) {
    let app = TestApp::new(pool);
    for route in ROUTES {
        let missing = "missing required parameter MessageSid\n";
        let blank = pairs(&[
            ("MessageSid", " "),
            ("AccountSid", ACCOUNT),
            ("From", CONTACT),
            ("To", BUSINESS),
        ]);
        let cases: Vec<(&str, Request<Body>, u16, Option<&str>)> = vec![
            (
                "empty, signed",
                post_form(route, "", &[]),
                400,
                Some(missing),
            ),
            (
                "only separators, signed",
                post_form(route, "&&&", &[]),
                400,
                Some(missing),
            ),
            (
                "one empty pair, signed",
                post_form(route, "=", &pairs(&[("", "")])),
                400,
                Some(missing),
            ),
            (
                "a blank MessageSid, signed",
                post_form(route, form(&blank), &blank),
                400,
                Some(missing),
            ),
            (
                "empty, unsigned",
                Request::post(route)
                    .header("content-type", FORM)
                    .body(Body::empty())
                    .unwrap(),
                403,
                Some(""),
            ),
            (
                "empty, no content type",
                Request::post(route).body(Body::empty()).unwrap(),
                415,
                None,
            ),
            (
                "GET without a query, signed",
                get_signed(route),
                400,
                Some(missing),
            ),
            (
                "GET with an empty query, signed",
                get_signed(&format!("{route}?")),
                400,
                Some(missing),
            ),
            (
                "GET with a blank MessageSid, signed",
                get_signed(&format!("{route}?{}", form(&blank))),
                400,
                Some(missing),
            ),
            (
                "GET, unsigned",
                Request::get(format!("{route}?{}", form(&webhook(route, &sid(1)))))
                    .body(Body::empty())
                    .unwrap(),
                403,
                Some(""),
            ),
            (
                "JSON {}, signed",
                post_json(route, b"{}"),
                400,
                Some(missing),
            ),
            ("JSON null, signed", post_json(route, b"null"), 400, None),
            ("JSON empty body, signed", post_json(route, b""), 400, None),
        ];
        for (name, request, status, body) in cases {
            let response = app.send(request).await;
            assert_eq!(response.status, status, "{route}: {name}");
            if let Some(body) = body {
                assert_eq!(response.body, body, "{route}: {name}");
            }
        }
    }
    assert_nothing_stored(&app, "empty requests").await;
}

#[sqlx::test]
async fn hostile_signature_headers_are_403_with_nothing_stored(pool: PgPool) {
    let app = TestApp::new(pool);
    for route in ROUTES {
        let params = webhook(route, &sid(1));
        let right = signature_for(route, &params);
        let cases: Vec<(&str, Vec<HeaderValue>)> = vec![
            (
                "non-ASCII bytes",
                vec![HeaderValue::from_bytes(b"\xff\xfe\x80abc=").unwrap()],
            ),
            (
                "a tab inside",
                vec![
                    HeaderValue::from_str(&format!("{}\t{}", &right[..10], &right[10..])).unwrap(),
                ],
            ),
            (
                "the right one without padding",
                vec![HeaderValue::from_str(right.trim_end_matches('=')).unwrap()],
            ),
            (
                "the right one twice",
                vec![HeaderValue::from_str(&format!("{right},{right}")).unwrap()],
            ),
            (
                "the right one lower-cased",
                vec![HeaderValue::from_str(&right.to_lowercase()).unwrap()],
            ),
            ("only padding", vec![HeaderValue::from_static("====")]),
            (
                "10 KiB of base64",
                vec![HeaderValue::from_str(&"A".repeat(10 * 1024)).unwrap()],
            ),
            (
                "a wrong one first, the right one second",
                vec![
                    HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                    HeaderValue::from_str(&right).unwrap(),
                ],
            ),
        ];
        for (name, values) in cases {
            let mut request = Request::post(route).header("content-type", FORM);
            for value in values {
                request = request.header("x-twilio-signature", value);
            }
            let response = app
                .send(request.body(Body::from(form(&params))).unwrap())
                .await;
            assert_eq!(response.status, 403, "{route}: {name}");
            assert_eq!(response.body, "", "{route}: {name}");
        }
    }
    assert_nothing_stored(&app, "hostile signatures").await;
}

#[sqlx::test]
async fn unknown_and_look_alike_paths_are_404_even_when_signed(pool: PgPool) {
    let app = TestApp::new(pool);
    let long = format!("/twilio/{}", "a".repeat(65_000));
    let paths = [
        "/",
        "/twilio",
        "/twilio/",
        "/twilio/messages/",
        "/twilio/messages/x",
        "/twilio/Messages",
        "/TWILIO/MESSAGES",
        "/twilio//messages",
        "//twilio/messages",
        "/twilio/./messages",
        "/twilio/x/../messages",
        "/twilio/%6Dessages",
        "/twilio/messages%00",
        "/twilio/messages%2F",
        "/twilio/messages;x=1",
        "/twilio/messages.php",
        "/twilio/status/extra",
        "/healthz/../twilio/messages",
        &long,
    ];
    for path in paths {
        let params = webhook(MESSAGES, &sid(1));
        let response = app
            .send(signed_post(&format!("{BASE}{path}"), path, &params, TOKEN))
            .await;
        assert_eq!(response.status, 404, "POST {path:.40}");
        let response = app
            .send(get_signed(&format!("{path}?{}", form(&params))))
            .await;
        assert_eq!(response.status, 404, "GET {path:.40}");
    }
    assert_nothing_stored(&app, "unknown paths").await;
}

#[sqlx::test]
async fn a_very_long_signed_query_on_a_post_is_accepted(pool: PgPool) {
    // The query of a POST is ours (Twilio signs it as part of the URL); a long one is fine.
    let app = TestApp::new(pool);
    for (n, route) in ROUTES.into_iter().enumerate() {
        let sid = sid(n as u32);
        let path = format!("{route}?pad={}", incompressible(60_000));
        let response = app
            .send(signed_post(
                &format!("{BASE}{path}"),
                &path,
                &webhook(route, &sid),
                TOKEN,
            ))
            .await;
        assert_eq!(response.status, accepted(route), "{route}");
        stored_params(&app, route, &sid).await;
    }
}

#[sqlx::test]
async fn a_body_that_breaks_off_is_400_with_nothing_stored(pool: PgPool) {
    // The client went away mid-body: nothing to verify, nothing stored.
    let app = TestApp::new(pool);
    for route in ROUTES {
        let head = format!("{}&Body=", form(&webhook(route, &sid(1))));
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from(head)),
            Err(std::io::Error::other("connection reset")),
        ];
        let request = Request::post(route)
            .header("content-type", FORM)
            .header("x-twilio-signature", signature_for(route, &[]))
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap();
        let response = app.send(request).await;
        assert_eq!(response.status, 400, "{route}");
        assert_eq!(response.body, "request body could not be read\n");
    }
    assert_nothing_stored(&app, "broken body").await;
}

#[sqlx::test]
async fn hostile_forwarded_headers_only_change_the_url_that_is_checked(pool: PgPool) {
    // With proxy headers trusted, they choose the URL the signature is checked against.
    // Garbage in them never fails the request; each case is signed for the URL the server
    // builds, so a mistake in building it shows up as a 403.
    let app = TestApp::with_env(
        pool,
        &[
            ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
            ("TWILIO_RECEIVER__SERVER__TRUST_FORWARDED_HEADERS", "true"),
        ],
    );
    type Headers = &'static [(&'static str, &'static [u8])];
    let cases: [(&str, Headers, &str); 4] = [
        (
            "an unterminated IPv6 host",
            &[("forwarded", b"for=x;proto=https;host=\"[::1")],
            "https://[::1/twilio/messages",
        ),
        (
            "a non-UTF-8 X-Forwarded-Host falls back to Host",
            &[
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"\xffevil.example"),
            ],
            "https://internal:8080/twilio/messages",
        ),
        (
            "a prefix that is not a path is ignored",
            &[
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"public.example.test"),
                ("x-forwarded-prefix", b"evil.example"),
            ],
            "https://public.example.test/twilio/messages",
        ),
        (
            "a port too large for any number, signed without it",
            &[("x-forwarded-host", b"h.example:99999999999999999999")],
            "http://h.example/twilio/messages",
        ),
    ];
    for (n, (name, headers, signed_url)) in cases.into_iter().enumerate() {
        let params = webhook(MESSAGES, &sid(n as u32));
        let mut request = signed_post(signed_url, MESSAGES, &params, TOKEN);
        for (header, value) in headers {
            request
                .headers_mut()
                .insert(*header, HeaderValue::from_bytes(value).unwrap());
        }
        assert_eq!(app.send(request).await.status, 200, "{name}");
        // The same headers with a signature for the configured-looking URL: refused.
        let mut request = signed_post(&format!("{BASE}{MESSAGES}"), MESSAGES, &params, TOKEN);
        for (header, value) in headers {
            request
                .headers_mut()
                .insert(*header, HeaderValue::from_bytes(value).unwrap());
        }
        assert_eq!(app.send(request).await.status, 403, "{name}");
    }
    assert_eq!(app.count("select count(*) from messages").await, 4);
}
