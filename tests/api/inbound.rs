//! Inbound messages: stored once with every parameter, answered with TwiML, retries replayed.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use futures::future::join_all;
use serde_json::json;
use sqlx::PgPool;
use twilio_receiver::twilio::signature;

#[sqlx::test]
async fn a_whatsapp_text_is_stored_with_every_parameter_and_answered_with_empty_twiml(
    pool: PgPool,
) {
    let app = TestApp::new(pool);
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "Hola 👋");

    let response = app.post_signed("/twilio/messages", &params).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "text/xml; charset=utf-8");
    assert_eq!(
        response.body,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
    );
    let row = sqlx::query!(
        r#"select direction, channel, business, contact, body, num_media, profile_name, wa_id,
                  message_type, status, channel_metadata, received_at, params
           from messages where message_sid = $1"#,
        sid(1)
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row.direction, "inbound");
    assert_eq!(row.channel, "whatsapp");
    assert_eq!(row.business, BUSINESS);
    assert_eq!(row.contact, "whatsapp:+15551234567");
    assert_eq!(row.body.as_deref(), Some("Hola 👋"));
    assert_eq!(row.num_media, Some(0));
    assert_eq!(row.profile_name.as_deref(), Some("Ana"));
    assert_eq!(row.wa_id.as_deref(), Some("15551234567"));
    assert_eq!(row.message_type.as_deref(), Some("text"));
    assert_eq!(row.status.as_deref(), Some("received"));
    assert_eq!(row.channel_metadata.unwrap()["type"], "whatsapp");
    assert_eq!(row.received_at, app.now());
    // Every parameter, exactly as received.
    let stored = row.params.as_object().unwrap();
    assert_eq!(stored.len(), params.len());
    for (k, v) in &params {
        assert_eq!(stored[k], json!(v), "{k}");
    }
    let reply = sqlx::query!(
        "select rule, twiml from replies where message_sid = $1",
        sid(1)
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reply.rule, None);
    assert_eq!(reply.twiml, response.body);
}

#[sqlx::test]
async fn the_configured_reply_is_valid_escaped_twiml(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[(
            "TWILIO_RECEIVER__REPLY__BODY",
            r#"Thanks! <b>Tom & "Jerry"</b> it's 🎉"#,
        )],
    );
    let response = app
        .post_signed(
            "/twilio/messages",
            &whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi"),
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
            r#"<Message action="https://hooks.example.test/twilio/status?reply_to=SM00000000000000000000000000000001&amp;part=0" method="POST"><Body>"#,
            "Thanks! &lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt; it&apos;s 🎉",
            "</Body></Message></Response>"
        )
    );
}

#[sqlx::test]
async fn a_retry_is_stored_once_and_gets_the_identical_reply(pool: PgPool) {
    let app = TestApp::with_env(
        pool.clone(),
        &[("TWILIO_RECEIVER__REPLY__BODY", "first reply")],
    );
    let params = whatsapp_text(&sid(7), "whatsapp:+15551234567", "hi");
    let first = app.post_signed("/twilio/messages", &params).await;

    // The same server, now configured differently, must still replay what it answered.
    let app = TestApp::with_env(pool, &[("TWILIO_RECEIVER__REPLY__BODY", "changed reply")]);
    let second = app.post_signed("/twilio/messages", &params).await;

    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));
    assert!(first.body.contains("first reply"));
    assert_eq!(second.body, first.body);
    assert_eq!(app.count("select count(*) from messages").await, 1);
    assert_eq!(app.count("select count(*) from replies").await, 1);
    assert_eq!(
        app.count("select inbound_count from conversations").await,
        1
    );
    assert_eq!(
        app.count("select sum(inbound_count)::int8 from sessions")
            .await,
        1
    );
}

#[sqlx::test]
async fn twenty_concurrent_deliveries_store_one_message_and_all_get_the_same_reply(pool: PgPool) {
    let app = TestApp::with_env(pool, &[("TWILIO_RECEIVER__REPLY__BODY", "only once")]);
    let params = whatsapp_text(&sid(9), "whatsapp:+15551234567", "hi");

    let responses = join_all((0..20).map(|_| app.post_signed("/twilio/messages", &params))).await;

    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, responses[0].body);
    }
    assert!(responses[0].body.contains("only once"));
    assert_eq!(app.count("select count(*) from messages").await, 1);
    assert_eq!(app.count("select count(*) from replies").await, 1);
    assert_eq!(
        app.count("select inbound_count from conversations").await,
        1
    );
    assert_eq!(app.count("select count(*) from sessions").await, 1);
    assert_eq!(
        app.count("select sum(inbound_count)::int8 from sessions")
            .await,
        1
    );
}

#[sqlx::test]
async fn concurrent_messages_from_one_contact_all_count_in_one_window(pool: PgPool) {
    let app = TestApp::new(pool);
    let messages: Vec<_> = (0..20)
        .map(|n| whatsapp_text(&sid(100 + n), "whatsapp:+15551234567", "burst"))
        .collect();

    let responses = join_all(
        messages
            .iter()
            .map(|m| app.post_signed("/twilio/messages", m)),
    )
    .await;

    assert!(responses.iter().all(|r| r.status == 200));
    assert_eq!(app.count("select count(*) from messages").await, 20);
    assert_eq!(
        app.count("select inbound_count from conversations").await,
        20
    );
    assert_eq!(app.count("select count(*) from sessions").await, 1);
    assert_eq!(
        app.count("select inbound_count::int8 from sessions").await,
        20
    );
}

#[sqlx::test]
async fn media_location_and_button_fields_land_in_typed_columns(pool: PgPool) {
    let app = TestApp::new(pool);
    let mut params = whatsapp_text(&sid(2), "whatsapp:+15551234567", "");
    params.retain(|(k, _)| k != "NumMedia" && k != "MessageType");
    params.extend(pairs(&[
        ("NumMedia", "2"),
        (
            "MediaUrl0",
            "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME0",
        ),
        ("MediaContentType0", "image/jpeg"),
        (
            "MediaUrl1",
            "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME1",
        ),
        ("MediaContentType1", "application/pdf"),
        ("MessageType", "location"),
        ("Latitude", "40.4168"),
        ("Longitude", "-3.7038"),
        ("Address", "Puerta del Sol"),
        ("Label", "Meet here"),
        ("ButtonText", "Yes"),
        ("ButtonPayload", "confirm"),
        (
            "OriginalRepliedMessageSid",
            "MM00000000000000000000000000000001",
        ),
        ("Forwarded", "true"),
        ("ReferralSourceUrl", "https://fb.me/ad"),
        ("ExternalUserId", "whatsapp:ID.4566546130240823"),
    ]));

    assert_eq!(
        app.post_signed("/twilio/messages", &params).await.status,
        200
    );

    let media = sqlx::query!(
        "select index, url, content_type from message_media where message_sid = $1 order by index",
        sid(2)
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(media.len(), 2);
    assert_eq!(media[1].index, 1);
    assert_eq!(media[1].content_type.as_deref(), Some("application/pdf"));
    assert!(media[0].url.ends_with("/Media/ME0"));
    let m = sqlx::query!(
        r#"select num_media, message_type, latitude, longitude, location_address, location_label,
                  button_text, button_payload, replied_to_sid, forwarded, referral_source_url,
                  external_user_id
           from messages where message_sid = $1"#,
        sid(2)
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(m.num_media, Some(2));
    assert_eq!(m.message_type.as_deref(), Some("location"));
    assert_eq!((m.latitude, m.longitude), (Some(40.4168), Some(-3.7038)));
    assert_eq!(m.location_address.as_deref(), Some("Puerta del Sol"));
    assert_eq!(m.location_label.as_deref(), Some("Meet here"));
    assert_eq!(m.button_text.as_deref(), Some("Yes"));
    assert_eq!(m.button_payload.as_deref(), Some("confirm"));
    assert_eq!(
        m.replied_to_sid.as_deref(),
        Some("MM00000000000000000000000000000001")
    );
    assert_eq!(m.forwarded, Some(true));
    assert_eq!(m.referral_source_url.as_deref(), Some("https://fb.me/ad"));
    assert_eq!(
        m.external_user_id.as_deref(),
        Some("whatsapp:ID.4566546130240823")
    );
}

#[sqlx::test]
async fn values_that_do_not_parse_are_stored_raw_and_never_rejected(pool: PgPool) {
    let app = TestApp::new(pool);
    let mut params = whatsapp_text(&sid(3), "whatsapp:+15551234567", "nul\0inside");
    params.retain(|(k, _)| k != "NumMedia");
    params.extend(pairs(&[
        ("NumMedia", "lots"),
        ("Latitude", "north"),
        ("ChannelMetadata", "{broken"),
        ("Repeated", "a"),
        ("Repeated", "b"),
    ]));

    let response = app.post_signed("/twilio/messages", &params).await;

    assert_eq!(response.status, 200);
    let m = sqlx::query!(
        "select body, num_media, latitude, params from messages where message_sid = $1",
        sid(3)
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(m.body.as_deref(), Some("nul\u{FFFD}inside"));
    assert_eq!(m.num_media, None);
    assert_eq!(m.latitude, None);
    assert_eq!(m.params["NumMedia"], "lots");
    assert_eq!(m.params["Latitude"], "north");
    assert_eq!(m.params["Repeated"], json!(["a", "b"]));
    assert_eq!(m.params["Body"], "nul\u{FFFD}inside");
}

#[sqlx::test]
async fn an_escaped_nul_inside_channel_metadata_is_stored_not_a_500(pool: PgPool) {
    let app = TestApp::new(pool);
    let mut params = whatsapp_text(&sid(6), "whatsapp:+15551234567", "x");
    params.retain(|(k, _)| k != "ChannelMetadata");
    params.push((
        "ChannelMetadata".into(),
        r#"{"type":"whatsapp","x":"a\u0000b"}"#.into(),
    ));

    assert_eq!(
        app.post_signed("/twilio/messages", &params).await.status,
        200
    );
    let metadata = sqlx::query_scalar!(
        "select channel_metadata from messages where message_sid = $1",
        sid(6)
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(metadata.unwrap()["x"], "a\u{FFFD}b");
}

#[sqlx::test]
async fn sms_addresses_keep_their_form_and_channel(pool: PgPool) {
    let app = TestApp::new(pool);
    for (n, from, to, channel) in [
        (1, "+14158675309", "+18005551212", "sms"),
        (2, "+14158675309", "12345", "sms"),
        (
            3,
            "whatsapp:ID.4566546130240823",
            "whatsapp:+14155238886",
            "whatsapp",
        ),
        (4, "messenger:1234567890", "messenger:99", "messenger"),
    ] {
        let params = pairs(&[
            ("MessageSid", &sid(n)),
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("From", from),
            ("To", to),
            ("Body", "x"),
        ]);
        assert_eq!(
            app.post_signed("/twilio/messages", &params).await.status,
            200
        );
        let row = sqlx::query!(
            "select channel, contact, business from messages where message_sid = $1",
            sid(n)
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            (
                row.channel.as_str(),
                row.contact.as_str(),
                row.business.as_str()
            ),
            (channel, from, to)
        );
    }
}

#[sqlx::test]
async fn get_webhooks_are_verified_over_the_url_and_stored(pool: PgPool) {
    let app = TestApp::new(pool);
    let query =
        serde_urlencoded::to_string(whatsapp_text(&sid(4), "whatsapp:+15551234567", "by GET"))
            .unwrap();
    let path = format!("/twilio/messages?{query}");
    let request = Request::get(&path)
        .header(
            "x-twilio-signature",
            signature::compute(TOKEN.as_bytes(), &format!("{BASE}{path}"), &[]),
        )
        .body(Body::empty())
        .unwrap();

    let response = app.send(request).await;

    assert_eq!(response.status, 200);
    assert_eq!(
        app.count("select count(*) from messages where body = 'by GET'")
            .await,
        1
    );
}

#[sqlx::test]
async fn json_bodies_are_verified_with_their_hash_and_stored(pool: PgPool) {
    let app = TestApp::new(pool);
    let body = serde_json::to_string(&json!({
        "MessageSid": sid(5), "AccountSid": "AC00000000000000000000000000000000",
        "From": "whatsapp:+15551234567", "To": BUSINESS, "Body": "json", "NumMedia": 0
    }))
    .unwrap();
    let Err(twilio_receiver::twilio::verify::SignError::NeedsBodyHash { url }) =
        twilio_receiver::twilio::verify::sign(
            TOKEN.as_bytes(),
            &format!("{BASE}/twilio/messages"),
            Some("application/json"),
            body.as_bytes(),
        )
    else {
        panic!("JSON needs a body hash");
    };
    let path = url.strip_prefix(BASE).unwrap().to_owned();
    let sig = twilio_receiver::twilio::verify::sign(
        TOKEN.as_bytes(),
        &url,
        Some("application/json"),
        body.as_bytes(),
    )
    .unwrap();
    let request = |body: String| {
        Request::post(&path)
            .header("content-type", "application/json")
            .header("x-twilio-signature", &sig)
            .body(Body::from(body))
            .unwrap()
    };

    assert_eq!(app.send(request(body.clone())).await.status, 200);
    assert_eq!(
        app.count("select count(*) from messages where num_media = 0")
            .await,
        1
    );
    // The same URL and signature with another body is a forgery.
    let forged = body.replace("json", "forged");
    assert_eq!(app.send(request(forged)).await.status, 403);

    // A correctly signed JSON body that is not an object cannot be a webhook.
    let array = "[1,2]".to_owned();
    let Err(twilio_receiver::twilio::verify::SignError::NeedsBodyHash { url }) =
        twilio_receiver::twilio::verify::sign(
            TOKEN.as_bytes(),
            &format!("{BASE}/twilio/messages"),
            Some("application/json"),
            array.as_bytes(),
        )
    else {
        panic!("JSON needs a body hash");
    };
    let sig = twilio_receiver::twilio::verify::sign(
        TOKEN.as_bytes(),
        &url,
        Some("application/json"),
        array.as_bytes(),
    )
    .unwrap();
    let response = app
        .send(
            Request::post(url.strip_prefix(BASE).unwrap())
                .header("content-type", "application/json")
                .header("x-twilio-signature", sig)
                .body(Body::from(array))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status, 400);
}

#[sqlx::test]
async fn text_full_of_quotes_backslashes_and_sql_is_stored_unchanged(pool: PgPool) {
    let app = TestApp::new(pool);
    let nasty = r#"Robert'); DROP TABLE messages;-- \' \\ " $1 %s {{ x }} ' OR '1'='1"#;
    let mut params = whatsapp_text(&sid(1), "whatsapp:+15551234567", nasty);
    params.push(("ProfileName".into(), "O'Brien \\ \"quoted\"".into()));
    assert_eq!(
        app.post_signed("/twilio/messages", &params).await.status,
        200
    );
    let row = sqlx::query!(
        "select body, params from messages where message_sid = $1",
        sid(1)
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row.body.as_deref(), Some(nasty));
    assert_eq!(row.params["Body"], nasty);
    assert_eq!(row.params["ProfileName"][1], "O'Brien \\ \"quoted\"");
    assert_eq!(app.count("select count(*) from messages").await, 1);
}

#[sqlx::test]
async fn deleting_or_truncating_messages_in_sql_removes_their_replies(pool: PgPool) {
    let app = TestApp::new(pool);
    for n in 1..=3 {
        let params = whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi");
        assert_eq!(
            app.post_signed("/twilio/messages", &params).await.status,
            200
        );
    }
    assert_eq!(app.count("select count(*) from replies").await, 3);

    // What an operator might run: the replies go with their messages, as by a cascade.
    sqlx::query!(
        "delete from messages where message_sid = any($1)",
        &[sid(1), sid(2)]
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let left = sqlx::query_scalar!("select message_sid from replies")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, [sid(3)]);

    sqlx::query("truncate messages cascade")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.count("select count(*) from replies").await, 0);
}

#[sqlx::test]
async fn a_late_reply_for_a_message_that_is_gone_records_nothing(pool: PgPool) {
    let at = chrono::Utc::now();
    let twiml =
        twilio_receiver::store::replies::answer_once(&pool, &sid(9), "<Response/>", &[], at)
            .await
            .unwrap();
    // Answered as it would have been, but no reply row without its message.
    assert_eq!(twiml, "<Response/>");
    let replies = sqlx::query_scalar!("select count(*) from replies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(replies, Some(0));
}
