//! What the logs say: one span per request with path, request id and message SID; never a
//! token, a phone number, a body or a query string at info level.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use sqlx::PgPool;
use std::{
    io::Write,
    sync::{Arc, Mutex},
};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, layer::SubscriberExt};
use twilio_receiver::twilio::signature;

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// JSON logs at `filter`, as `log.format = "json"` produces them, for the current thread.
pub fn capture(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
    every_callsite_has_a_subscriber();
    let out = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(out.clone()),
        );
    (out.clone(), tracing::subscriber::set_default(subscriber))
}

#[sqlx::test]
async fn info_logs_name_the_request_but_never_the_person_or_the_secret(pool: PgPool) {
    let (logs, _guard) = capture("info");
    let app = TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__REPLY__BODY", "secret-reply-text")],
    );
    let contact = "whatsapp:+15557654321";

    // A POST, a GET (From and Body travel in its query string), and a forgery.
    app.post_signed(
        "/twilio/messages",
        &whatsapp_text(&sid(1), contact, "private words"),
    )
    .await;
    let query =
        serde_urlencoded::to_string(whatsapp_text(&sid(2), contact, "private words")).unwrap();
    let path = format!("/twilio/messages?{query}");
    let get = Request::get(&path)
        .header(
            "x-twilio-signature",
            signature::compute(TOKEN.as_bytes(), &format!("{BASE}{path}"), &[]),
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(get).await.status, 200);
    let forged = signed_post(
        &format!("{BASE}/twilio/messages"),
        "/twilio/messages",
        &whatsapp_text(&sid(3), contact, "x"),
        "wrong-token",
    );
    assert_eq!(app.send(forged).await.status, 403);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stored = lines
        .iter()
        .find(|l| l["fields"]["message"] == "stored inbound message")
        .expect("a line per stored message");
    assert_eq!(stored["span"]["path"], "/twilio/messages");
    assert_eq!(stored["span"]["message_sid"], sid(1));
    assert!(!stored["span"]["request_id"].as_str().unwrap().is_empty());
    let rejected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "rejected a request: signature not valid")
        .expect("a rejection is logged");
    assert_eq!(rejected["level"], "WARN");
    assert!(
        rejected["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("no candidate URL matched")
    );

    for needle in [
        "5557654321",
        "7654321",
        "private",
        "words",
        TOKEN,
        "wrong-token",
        "secret-reply-text",
        "MessageSid=",
    ] {
        assert!(
            !text.contains(needle),
            "{needle:?} leaked into the logs:\n{text}"
        );
    }
}

#[sqlx::test]
async fn unverified_requests_are_logged_as_such(pool: PgPool) {
    let (logs, _guard) = capture("warn");
    let env = [
        ("TWILIO_RECEIVER__TWILIO__VERIFY_SIGNATURES", "false"),
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
    ];
    // Starting says it loudly...
    let url = database_url(&pool);
    let mut with_db = env.to_vec();
    with_db.push(("TWILIO_RECEIVER__DATABASE__URL", &url));
    twilio_receiver::startup::Application::build(&settings(&with_db))
        .await
        .unwrap();
    // ...and so does every request.
    let app = TestApp::with_env(pool, &env);
    let body =
        serde_urlencoded::to_string(whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi")).unwrap();
    let request = Request::post("/twilio/messages")
        .header("content-type", FORM)
        .body(Body::from(body))
        .unwrap();

    assert_eq!(app.send(request).await.status, 200);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("requests are NOT verified"), "{text}");
    assert!(text.contains("accepted an unverified request"), "{text}");
    // ...and counts it.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("twilio_receiver_unverified_requests_total 1\n"),
        "{metrics}"
    );
}

/// A full scenario at trace level: no auth token, database password or Basic password appears
/// in any log line at any level.
#[sqlx::test]
async fn no_secret_reaches_the_logs_even_at_trace_level(pool: PgPool) {
    let (logs, _guard) = capture("trace");
    // Trust authentication ignores the password, so the server connects while carrying one.
    let url = database_url(&pool).replacen(
        "postgres://postgres@",
        "postgres://postgres:db-pa55word@",
        1,
    );
    assert!(url.contains("db-pa55word"), "{url}");
    let env = [
        ("TWILIO_RECEIVER__DATABASE__URL", url.as_str()),
        ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__USER", "twilio"),
        (
            "TWILIO_RECEIVER__SERVER__BASIC_AUTH__PASSWORD",
            "basic-pa55word",
        ),
        ("TWILIO_RECEIVER__REPLY__BODY", "hello"),
    ];
    let settings = settings(&env);
    let own = twilio_receiver::store::pool(&settings.database).unwrap();
    let app = TestApp::with_settings(own, settings);
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("twilio:basic-pa55word")
    );
    let url_messages = format!("{BASE}/twilio/messages");
    for (n, token, with_auth) in [
        (1, TOKEN, true),
        (2, "forged-token", true),
        (3, TOKEN, false),
    ] {
        let mut r = signed_post(
            &url_messages,
            "/twilio/messages",
            &whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi"),
            token,
        );
        if with_auth {
            r.headers_mut()
                .insert("authorization", auth.parse().unwrap());
        }
        app.send(r).await;
    }
    let status = pairs(&[
        ("MessageSid", "SM55555555555555555555555555555555"),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", BUSINESS),
        ("To", "whatsapp:+15551234567"),
        ("MessageStatus", "sent"),
    ]);
    let mut r = signed_post(
        &format!("{BASE}/twilio/status"),
        "/twilio/status",
        &status,
        TOKEN,
    );
    r.headers_mut()
        .insert("authorization", auth.parse().unwrap());
    assert_eq!(app.send(r).await.status, 204);
    assert_eq!(
        app.count("select count(*) from messages").await,
        2,
        "the scenario really ran"
    );

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("stored status callback") && text.contains("\"level\":\"DEBUG\""),
        "trace logging captured: {text}"
    );
    let basic_b64 = base64::engine::general_purpose::STANDARD.encode("twilio:basic-pa55word");
    for secret in [TOKEN, "db-pa55word", "basic-pa55word", basic_b64.as_str()] {
        assert!(!text.contains(secret), "{secret:?} leaked into the logs");
    }
    assert_no_secret(&logs, &["stored status callback"]);
}

// The same check along the other paths that handle a secret: start-up, a database outage
// (with and without a spool), the spool's replay, and the media archive. Each scenario runs
// on the test's own thread (`#[sqlx::test]` runs a current-thread runtime), so the
// thread-local capture sees every task the app spawns (what runs on the blocking pool, the
// spool's file operations, logs nothing), and each scenario checks that the lines it must
// have produced are there: an empty capture passes nothing.

const DB_PASSWORD: &str = "db-pa55word";
const BASIC_USER: &str = "twilio";
const BASIC_PASSWORD: &str = "basic-pa55word";
const API_KEY: &str = "SK00000000000000000000000000000000";
const API_SECRET: &str = "api-key-pa55word";
/// The AccountSid of `whatsapp_text`: media is fetched as `AccountSid:AuthToken`.
const ACCOUNT: &str = "AC00000000000000000000000000000000";
/// Nothing listens on port 1 of loopback: a database that refuses connections.
const DEAD_DATABASE: &str = "postgres://postgres:db-pa55word@127.0.0.1:1/none";

fn base64(raw: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Every secret a deployment holds, as it could appear in a log line.
fn secrets() -> Vec<String> {
    vec![
        TOKEN.to_owned(),
        DB_PASSWORD.to_owned(),
        BASIC_PASSWORD.to_owned(),
        base64(&format!("{BASIC_USER}:{BASIC_PASSWORD}")),
        API_SECRET.to_owned(),
        base64(&format!("{API_KEY}:{API_SECRET}")),
        // The media credentials (Basic AccountSid:AuthToken).
        base64(&format!("{ACCOUNT}:{TOKEN}")),
    ]
}

/// The test database's URL, carrying a password (trust authentication ignores it).
fn url_with_password(pool: &PgPool) -> String {
    let url = database_url(pool).replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    assert!(url.contains(DB_PASSWORD), "{url}");
    url
}

/// Settings holding every secret, for the database at `url`, plus `extra`.
fn secret_settings(url: &str, extra: &[(&str, &str)]) -> twilio_receiver::config::Settings {
    let mut env = vec![
        ("TWILIO_RECEIVER__DATABASE__URL", url),
        ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__USER", BASIC_USER),
        (
            "TWILIO_RECEIVER__SERVER__BASIC_AUTH__PASSWORD",
            BASIC_PASSWORD,
        ),
        ("TWILIO_RECEIVER__DATABASE__ACQUIRE_TIMEOUT_MS", "300"),
        ("TWILIO_API_KEY", API_KEY),
        ("TWILIO_API_SECRET", API_SECRET),
    ];
    env.extend_from_slice(extra);
    settings(&env)
}

/// `params` POSTed to `path`, signed, with the Basic credentials.
fn authorized_post(path: &str, params: &[(String, String)]) -> Request<Body> {
    let mut r = signed_post(&format!("{BASE}{path}"), path, params, TOKEN);
    r.headers_mut().insert(
        "authorization",
        format!(
            "Basic {}",
            base64(&format!("{BASIC_USER}:{BASIC_PASSWORD}"))
        )
        .parse()
        .unwrap(),
    );
    r
}

/// Checks that the capture holds JSON lines, among them one for each of `expected` (so the
/// scenario really logged), and no secret in any form.
fn assert_no_secret(logs: &Captured, expected: &[&str]) {
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "DEBUG" || l["level"] == "TRACE"),
        "nothing captured below info level: {text}"
    );
    for message in expected {
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"].as_str() == Some(*message)),
            "no line {message:?} captured: {text}"
        );
    }
    for secret in secrets() {
        assert!(
            !text.contains(&secret),
            "{secret:?} leaked into the logs:\n{text}"
        );
    }
}

#[sqlx::test]
async fn no_secret_reaches_the_logs_at_start_up(pool: PgPool) {
    let (logs, _guard) = capture("trace");
    let spool = scratch_dir("logs-start-up-spool");
    let media = scratch_dir("logs-start-up-media");
    let storage = format!("file://{}", media.display());
    let extra = [
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
        ("TWILIO_RECEIVER__DATABASE__MIGRATE_ON_START", "true"),
        ("TWILIO_RECEIVER__SPOOL__DIR", spool.to_str().unwrap()),
        ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
        ("TWILIO_RECEIVER__MEDIA__STORAGE", storage.as_str()),
    ];
    // Migrated, served and stopped (the stop is already due: it runs the whole shutdown).
    let app = twilio_receiver::startup::Application::build(&secret_settings(
        &url_with_password(&pool),
        &extra,
    ))
    .await
    .unwrap();
    assert!(*app.schema_ready().borrow(), "migrations ran at start");
    app.run_until_stopped(async {}).await.unwrap();
    // Postgres down at start: the server starts anyway and says why.
    twilio_receiver::startup::Application::build(&secret_settings(DEAD_DATABASE, &extra))
        .await
        .unwrap();

    assert_no_secret(
        &logs,
        &[
            "listening",
            "admin listening (/metrics)",
            "Postgres is unreachable: answering 503 and retrying migrations in the background",
        ],
    );
    std::fs::remove_dir_all(spool).unwrap();
    std::fs::remove_dir_all(media).unwrap();
}

/// Webhooks while the database refuses connections: without a spool, each is answered 503;
/// with one, kept on disk (and the inbound primary still answered 503), then stored once the
/// database answers again.
#[sqlx::test]
async fn no_secret_reaches_the_logs_during_a_database_outage_or_the_spool_replay(pool: PgPool) {
    let (logs, _guard) = capture("trace");
    let message = whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi");
    let mut fallback = message.clone();
    fallback.extend(pairs(&[("ErrorCode", "11200")]));
    let status = crate::status::callback(&sid(9), "delivered", &[]);
    let down = |extra: &[(&str, &str)]| {
        let settings = secret_settings(DEAD_DATABASE, extra);
        let db = twilio_receiver::store::pool(&settings.database).unwrap();
        TestApp::with_settings(db, settings)
    };

    let unspooled = down(&[]);
    for (path, params) in [
        ("/twilio/messages", &message),
        ("/twilio/fallback", &fallback),
        ("/twilio/status", &status),
    ] {
        let r = unspooled.send(authorized_post(path, params)).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
    }
    let ready = unspooled
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ready.status, 503);

    let dir = scratch_dir("logs-outage-spool");
    let with_spool = [("TWILIO_RECEIVER__SPOOL__DIR", dir.to_str().unwrap())];
    let spooled = down(&with_spool);
    for (path, params, code) in [
        ("/twilio/messages", &message, 503),
        ("/twilio/fallback", &fallback, 200),
        ("/twilio/status", &status, 204),
    ] {
        let r = spooled.send(authorized_post(path, params)).await;
        assert_eq!(r.status, code, "{path}: {}", r.body);
    }
    let spool = spooled.state.ingest.spool().unwrap().clone();
    assert_eq!(spool.pending().unwrap().len(), 3);
    // A replay while the database is still away fails; the replay loop logs why.
    let running = tokio::sync::watch::channel(false).1;
    let error = spooled
        .state
        .ingest
        .replay_pending(&running)
        .await
        .unwrap_err();
    tracing::debug!(error = %error, "spool replay waits for the database");

    // The database is back (the same spool directory, a live pool).
    let settings = secret_settings(&url_with_password(&pool), &with_spool);
    let db = twilio_receiver::store::pool(&settings.database).unwrap();
    let mut up = TestApp::with_settings(db, settings);
    up.pool = pool.clone();
    assert_eq!(up.replay_spool().await, 3);
    assert_eq!(up.count("select count(*) from messages").await, 2);

    assert_no_secret(
        &logs,
        &[
            "database unavailable; answering 503",
            "database unavailable and no spool (spool.dir): this webhook is NOT stored",
            "database unavailable: webhook spooled, stored once Postgres answers",
            "the spool holds webhooks from an earlier run; storing them once Postgres answers",
            "spool replay waits for the database",
            "stored inbound message",
        ],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A fake media host that serves `/photo` to the expected credentials only, and counts how
/// often it did.
async fn media_host() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::{extract::State, http::HeaderMap, response::IntoResponse};
    use std::sync::{Arc, atomic::AtomicUsize};
    let served = Arc::new(AtomicUsize::new(0));
    let expected = format!("Basic {}", base64(&format!("{ACCOUNT}:{TOKEN}")));
    let router = axum::Router::new()
        .route(
            "/photo",
            axum::routing::get(
                move |State(served): State<Arc<AtomicUsize>>, headers: HeaderMap| async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if auth == Some(expected.as_str()) {
                        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        ([("content-type", "image/jpeg")], "a tiny jpeg").into_response()
                    } else {
                        axum::http::StatusCode::UNAUTHORIZED.into_response()
                    }
                },
            ),
        )
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/photo", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, served)
}

#[sqlx::test]
async fn no_secret_reaches_the_logs_from_the_media_archive(pool: PgPool) {
    let (logs, _guard) = capture("trace");
    let (photo, served) = media_host().await;
    let dir = scratch_dir("logs-media");
    let storage = format!("file://{}", dir.display());
    let settings = secret_settings(
        &url_with_password(&pool),
        &[
            ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
            ("TWILIO_RECEIVER__MEDIA__STORAGE", storage.as_str()),
            ("TWILIO_RECEIVER__MEDIA__ALLOW_INSECURE_LOOPBACK", "true"),
            ("TWILIO_RECEIVER__MEDIA__CREDENTIAL_HOSTS", "127.0.0.1"),
        ],
    );
    let db = twilio_receiver::store::pool(&settings.database).unwrap();
    let archiver = twilio_receiver::media::Archiver::new(
        db.clone(),
        settings.media.clone(),
        settings.verifier(),
    )
    .unwrap();
    let mut app = TestApp::with_settings(db, settings);
    app.pool = pool.clone();

    let mut params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "");
    params.retain(|(k, _)| k != "NumMedia");
    params.extend(pairs(&[
        ("NumMedia", "1"),
        ("MediaUrl0", photo.as_str()),
        ("MediaContentType0", "image/jpeg"),
    ]));
    let r = app.send(authorized_post("/twilio/messages", &params)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(archiver.run_once().await, "a media job ran");
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "fetched with the credentials"
    );
    assert_eq!(
        app.count("select count(*) from message_media where archive_state = 'stored'")
            .await,
        1
    );

    assert_no_secret(&logs, &["stored inbound message", "archived media"]);
    std::fs::remove_dir_all(dir).unwrap();
}
