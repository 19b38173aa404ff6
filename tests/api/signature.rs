//! Signature checks through HTTP: forged or mis-addressed requests get 403 and store nothing.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use sqlx::PgPool;
use twilio_receiver::twilio::signature;

async fn nothing_stored(app: &TestApp) {
    assert_eq!(app.count("select count(*) from messages").await, 0);
    assert_eq!(app.count("select count(*) from conversations").await, 0);
}

#[sqlx::test]
async fn missing_wrong_and_misaddressed_signatures_are_403_and_store_nothing(pool: PgPool) {
    let app = TestApp::new(pool);
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    let url = format!("{BASE}/twilio/messages");
    let body = serde_urlencoded::to_string(&params).unwrap();
    let cases = [
        ("no header", None),
        ("empty header", Some(String::new())),
        ("not base64", Some("%%%".to_owned())),
        (
            "other token",
            Some(signature::compute(b"other-token", &url, &params)),
        ),
        (
            "other URL",
            Some(signature::compute(
                TOKEN.as_bytes(),
                "https://elsewhere.test/twilio/messages",
                &params,
            )),
        ),
        (
            "other path",
            Some(signature::compute(
                TOKEN.as_bytes(),
                &format!("{BASE}/twilio/fallback"),
                &params,
            )),
        ),
        (
            "other params",
            Some(signature::compute(TOKEN.as_bytes(), &url, &params[1..])),
        ),
    ];
    for (name, sig) in cases {
        let mut request = Request::post("/twilio/messages").header("content-type", FORM);
        if let Some(sig) = sig {
            request = request.header("x-twilio-signature", sig);
        }
        let response = app
            .send(request.body(Body::from(body.clone())).unwrap())
            .await;
        assert_eq!(response.status, 403, "{name}");
        assert_eq!(response.body, "", "{name}: a 403 says nothing");
    }
    nothing_stored(&app).await;
}

#[sqlx::test]
async fn any_of_two_configured_tokens_is_accepted_during_rotation(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[(
            "TWILIO_RECEIVER__TWILIO__AUTH_TOKENS",
            "old-token,new-token",
        )],
    );
    let url = format!("{BASE}/twilio/messages");
    for (n, token) in [(1, "old-token"), (2, "new-token"), (3, TOKEN)] {
        let params = whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi");
        let response = app
            .send(signed_post(&url, "/twilio/messages", &params, token))
            .await;
        assert_eq!(response.status, 200, "{token}");
    }
    let params = whatsapp_text(&sid(4), "whatsapp:+15551234567", "hi");
    assert_eq!(
        app.send(signed_post(&url, "/twilio/messages", &params, "retired"))
            .await
            .status,
        403
    );
    assert_eq!(app.count("select count(*) from messages").await, 3);
}

#[sqlx::test]
async fn the_port_twilio_drops_or_adds_does_not_matter(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[(
            "TWILIO_RECEIVER__SERVER__PUBLIC_URL",
            "https://hooks.example.test:443",
        )],
    );
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    let response = app
        .send(signed_post(
            "https://hooks.example.test/twilio/messages",
            "/twilio/messages",
            &params,
            TOKEN,
        ))
        .await;
    assert_eq!(response.status, 200);
}

#[sqlx::test]
async fn the_query_string_is_part_of_the_signed_url(pool: PgPool) {
    let app = TestApp::new(pool);
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    let path = "/twilio/messages?tenant=acme&name=O'Brien%27";
    let ok = app
        .send(signed_post(&format!("{BASE}{path}"), path, &params, TOKEN))
        .await;
    assert_eq!(ok.status, 200);
    let params = whatsapp_text(&sid(2), "whatsapp:+15551234567", "hi");
    let other = app
        .send(signed_post(
            &format!("{BASE}/twilio/messages?tenant=acme"),
            path,
            &params,
            TOKEN,
        ))
        .await;
    assert_eq!(other.status, 403);
}

#[sqlx::test]
async fn forwarded_headers_are_trusted_only_when_configured(pool: PgPool) {
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    let public = "https://public.example.test/receiver/twilio/messages";
    let request = || {
        let mut r = signed_post(public, "/twilio/messages", &params, TOKEN);
        let h = r.headers_mut();
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "public.example.test".parse().unwrap());
        h.insert("x-forwarded-prefix", "/receiver".parse().unwrap());
        r
    };

    let untrusting =
        TestApp::with_env(pool.clone(), &[("TWILIO_RECEIVER__SERVER__PUBLIC_URL", "")]);
    assert_eq!(untrusting.send(request()).await.status, 403);

    let trusting = TestApp::with_env(
        pool.clone(),
        &[
            ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
            ("TWILIO_RECEIVER__SERVER__TRUST_FORWARDED_HEADERS", "true"),
        ],
    );
    assert_eq!(trusting.send(request()).await.status, 200);

    let mut forwarded = signed_post(
        "https://public.example.test/twilio/messages",
        "/twilio/messages",
        &whatsapp_text(&sid(2), "whatsapp:+15551234567", "hi"),
        TOKEN,
    );
    forwarded.headers_mut().insert(
        "forwarded",
        "for=203.0.113.7;proto=https;host=public.example.test"
            .parse()
            .unwrap(),
    );
    assert_eq!(trusting.send(forwarded).await.status, 200);
}

#[sqlx::test]
async fn without_public_url_the_host_header_over_http_is_checked(pool: PgPool) {
    let app = TestApp::with_env(pool, &[("TWILIO_RECEIVER__SERVER__PUBLIC_URL", "")]);
    let params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    // signed_post sends Host: internal:8080.
    let ok = app
        .send(signed_post(
            "http://internal:8080/twilio/messages",
            "/twilio/messages",
            &params,
            TOKEN,
        ))
        .await;
    assert_eq!(ok.status, 200);
}

#[sqlx::test]
async fn subaccounts_are_checked_with_their_own_tokens(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("twr-accounts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("accounts.toml");
    std::fs::write(
        &file,
        "[twilio.accounts]\nACSUB00000000000000000000000000000 = [\"sub-token\"]\n",
    )
    .unwrap();
    let mut settings = settings(&[]);
    let loaded = twilio_receiver::config::Settings::load(&twilio_receiver::config::Sources {
        config_dir: dir.clone(),
        config_file: Some(file),
        env: Default::default(),
    })
    .unwrap();
    settings.twilio.accounts = loaded.twilio.accounts;
    let app = TestApp::with_settings(pool, settings);
    let url = format!("{BASE}/twilio/messages");
    let mut params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    for (k, v) in &mut params {
        if k == "AccountSid" {
            *v = "ACSUB00000000000000000000000000000".into();
        }
    }
    assert_eq!(
        app.send(signed_post(&url, "/twilio/messages", &params, TOKEN))
            .await
            .status,
        403
    );
    assert_eq!(
        app.send(signed_post(&url, "/twilio/messages", &params, "sub-token"))
            .await
            .status,
        200
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test]
async fn webhook_rules_signing_with_a_shared_key_are_verified_with_that_key(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("twr-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.toml");
    std::fs::write(
        &file,
        "[twilio.shared_keys]\nwebhooks_sharedkey_0123 = \"shared-secret\"\n",
    )
    .unwrap();
    let mut settings = settings(&[]);
    settings.twilio.shared_keys =
        twilio_receiver::config::Settings::load(&twilio_receiver::config::Sources {
            config_dir: dir.clone(),
            config_file: Some(file),
            env: Default::default(),
        })
        .unwrap()
        .twilio
        .shared_keys;
    let app = TestApp::with_settings(pool, settings);
    let url = format!("{BASE}/twilio/messages");
    let request = |n: u32, header: &str, key: &[u8]| {
        let params = whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi");
        let sig = signature::compute_with(signature::Algorithm::Sha256, key, &url, &params);
        let mut r = signed_post(&url, "/twilio/messages", &params, TOKEN);
        r.headers_mut()
            .insert("x-twilio-signature", sig.parse().unwrap());
        r.headers_mut().insert(
            "x-twilio-webhooks-signature-settings",
            header.parse().unwrap(),
        );
        r
    };

    let ok = app
        .send(request(
            1,
            "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256",
            b"shared-secret",
        ))
        .await;
    assert_eq!(ok.status, 200);
    let unknown = app
        .send(request(
            2,
            "key=webhooks_sharedkey_9999,algorithm=HMAC_SHA256",
            b"shared-secret",
        ))
        .await;
    assert_eq!(unknown.status, 403);
    let algorithm = app
        .send(request(
            3,
            "key=webhooks_sharedkey_0123,algorithm=HMAC_MD5",
            b"shared-secret",
        ))
        .await;
    assert_eq!(algorithm.status, 403);
    let wrong_secret = app
        .send(request(
            4,
            "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256",
            TOKEN.as_bytes(),
        ))
        .await;
    assert_eq!(wrong_secret.status, 403);
    assert_eq!(app.count("select count(*) from messages").await, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Webhook URLs with credentials: Twilio first calls without them and expects a 401 with
/// WWW-Authenticate, then retries with them; the signature must hold as well.
#[sqlx::test]
async fn basic_auth_asks_first_then_checks_credentials_and_signature(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[
            ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__USER", "twilio"),
            (
                "TWILIO_RECEIVER__SERVER__BASIC_AUTH__PASSWORD",
                "s3cret:pass",
            ),
        ],
    );
    let url = format!("{BASE}/twilio/messages");
    let with_auth = |n: u32, auth: Option<&str>, token: &str| {
        let params = whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi");
        let mut r = signed_post(&url, "/twilio/messages", &params, token);
        if let Some(auth) = auth {
            r.headers_mut()
                .insert("authorization", auth.parse().unwrap());
        }
        r
    };
    use base64::Engine;
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("twilio:s3cret:pass")
    );
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("twilio:guess")
    );

    let first = app.send(with_auth(1, None, TOKEN)).await;
    assert_eq!(first.status, 401);
    assert_eq!(
        first.headers["www-authenticate"],
        r#"Basic realm="twilio-receiver""#
    );
    assert_eq!(app.send(with_auth(1, Some(&bad), TOKEN)).await.status, 401);
    assert_eq!(
        app.send(with_auth(1, Some(&good), "wrong-token"))
            .await
            .status,
        403
    );
    assert_eq!(app.send(with_auth(1, Some(&good), TOKEN)).await.status, 200);
    assert_eq!(app.count("select count(*) from messages").await, 1);
}
