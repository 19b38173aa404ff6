//! Test helpers: an app built from real settings around the test's database, signed
//! requests, and a clock the test moves.

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode},
};
use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};
use tower::ServiceExt;
use twilio_receiver::{
    config::{Settings, Sources},
    ingest::Clock,
    routes, startup,
    twilio::signature,
};

pub const TOKEN: &str = "test-auth-token";
pub const BASE: &str = "https://hooks.example.test";
pub const FORM: &str = "application/x-www-form-urlencoded";
pub const BUSINESS: &str = "whatsapp:+14155238886";

/// Settings as a deployment would load them, from these environment variables only.
pub fn settings(env: &[(&str, &str)]) -> Settings {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL".into(), BASE.into()),
        ("TWILIO_AUTH_TOKEN".into(), TOKEN.into()),
        (
            "TWILIO_RECEIVER__DATABASE__MIGRATE_ON_START".into(),
            "false".into(),
        ),
        // Tests run side by side: never the fixed admin port, never a shared spool (a test
        // that needs one passes its own directory).
        (
            "TWILIO_RECEIVER__SERVER__ADMIN_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
        ("TWILIO_RECEIVER__SPOOL__DIR".into(), String::new()),
    ]);
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::load(&Sources {
        config_dir: PathBuf::from("/nonexistent"),
        config_file: None,
        env: vars,
    })
    .expect("test settings load")
}

pub struct TestApp {
    pub router: Router,
    /// The admin listener's routes (`/metrics`).
    pub admin: Router,
    /// The pool assertions read through.
    pub pool: PgPool,
    /// The pool the server itself uses.
    pub app_db: PgPool,
    /// The state behind the router (its spool, its metrics).
    pub state: routes::AppState,
    now: Arc<Mutex<DateTime<Utc>>>,
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Installs, once, a global subscriber that takes every event and keeps none. tracing
/// caches each log statement's interest for the whole process; a statement first reached by
/// a test with no subscriber at all, while another test installs its log capture, can stay
/// cached as disabled, for the capture too (a race in tracing-core's registration, seen as a
/// capture missing a line when tests ran in parallel). With this, no statement is ever
/// disabled, and each event goes to its thread's capture if it has one.
pub fn every_callsite_has_a_subscriber() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}

impl TestApp {
    pub fn new(pool: PgPool) -> Self {
        Self::with_settings(pool, settings(&[]))
    }

    pub fn with_env(pool: PgPool, env: &[(&str, &str)]) -> Self {
        Self::with_settings(pool, settings(env))
    }

    pub fn with_settings(pool: PgPool, settings: Settings) -> Self {
        every_callsite_has_a_subscriber();
        let now = Arc::new(Mutex::new(
            Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap(),
        ));
        let clock = now.clone();
        let wiring = startup::Wiring {
            clock: Clock::from_fn(move || *clock.lock().unwrap()),
            ..startup::Wiring::default()
        };
        let state =
            startup::app_state(&settings, pool.clone(), wiring).expect("valid test settings");
        TestApp {
            admin: routes::admin_router(state.metrics.clone(), pool.clone()),
            router: routes::router(state.clone(), settings.server.request_timeout()),
            state,
            app_db: pool.clone(),
            pool,
            now,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap()
    }

    pub fn set_now(&self, t: DateTime<Utc>) {
        *self.now.lock().unwrap() = t;
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        TestResponse {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
        }
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self
            .admin
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Stores what the app's spool holds, as the background replay does.
    pub async fn replay_spool(&self) -> usize {
        assert!(self.state.ingest.spool().is_some(), "the app has a spool");
        let running = tokio::sync::watch::channel(false).1;
        self.state.ingest.replay_pending(&running).await.unwrap()
    }

    /// POSTs `params` to `path`, signed for `BASE` + `path` with the test token.
    pub async fn post_signed(&self, path: &str, params: &[(String, String)]) -> TestResponse {
        self.send(signed_post(&format!("{BASE}{path}"), path, params, TOKEN))
            .await
    }

    /// Posts WhatsApp text message number `n` from one fixed contact.
    pub async fn post_text(&self, n: u32) -> TestResponse {
        self.post_signed(
            "/twilio/messages",
            &whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi"),
        )
        .await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }
}

/// A POST to `path` whose signature was computed for `signed_url`.
pub fn signed_post(
    signed_url: &str,
    path: &str,
    params: &[(String, String)],
    token: &str,
) -> Request<Body> {
    let body = serde_urlencoded::to_string(params).unwrap();
    Request::post(path)
        .header("content-type", FORM)
        .header("host", "internal:8080")
        .header(
            "x-twilio-signature",
            signature::compute(token.as_bytes(), signed_url, params),
        )
        .body(Body::from(body))
        .unwrap()
}

pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A WhatsApp text message as Twilio sends it (TWILIO.md §3.2), from `contact`.
pub fn whatsapp_text(sid: &str, contact: &str, body: &str) -> Vec<(String, String)> {
    let wa_id = contact.trim_start_matches("whatsapp:+");
    pairs(&[
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("ProfileName", "Ana"),
        ("MessageType", "text"),
        ("SmsSid", sid),
        ("WaId", wa_id),
        ("SmsStatus", "received"),
        ("Body", body),
        ("To", BUSINESS),
        ("NumSegments", "1"),
        ("ReferralNumMedia", "0"),
        ("MessageSid", sid),
        ("AccountSid", "AC00000000000000000000000000000000"),
        (
            "ChannelMetadata",
            r#"{"type":"whatsapp","data":{"context":{"ProfileName":"Ana"}}}"#,
        ),
        ("From", contact),
        ("ApiVersion", "2010-04-01"),
    ])
}

/// A message SID for test number `n`.
pub fn sid(n: u32) -> String {
    format!("SM{n:032x}")
}

/// The URL of the test's own database (DATABASE_URL with the database name replaced), so a
/// test can build the server's pool exactly as `serve` does, with its timeouts.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
    let base = base.split('?').next().unwrap();
    let server = &base[..base.rfind('/').unwrap()];
    format!(
        "{server}/{}",
        pool.connect_options().get_database().unwrap()
    )
}

/// The whole HTTP response of a running server's admin listener to `GET /metrics`.
pub async fn scrape_metrics(admin_port: u16) -> String {
    use std::io::{Read, Write};
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap()
}

impl TestApp {
    /// An app whose pool is built from settings (as `serve` builds it) for the test database.
    pub fn with_own_pool(pool: &PgPool, env: &[(&str, &str)]) -> Self {
        let url = database_url(pool);
        let mut env = env.to_vec();
        env.push(("TWILIO_RECEIVER__DATABASE__URL", &url));
        let settings = settings(&env);
        let own = twilio_receiver::store::pool(&settings.database).unwrap();
        let mut app = Self::with_settings(own, settings);
        // Counting goes through the test's pool, which the app cannot exhaust.
        app.pool = pool.clone();
        app
    }
}

/// An empty directory of the test's own under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twr-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// POSTs `params` to a server on a real socket at `addr`, signed for `BASE` + `path`.
pub async fn post_over_http(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    params: &[(String, String)],
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .post(format!("http://{addr}{path}"))
        .header("content-type", FORM)
        .header(
            "x-twilio-signature",
            signature::compute(TOKEN.as_bytes(), &format!("{BASE}{path}"), params),
        )
        .body(serde_urlencoded::to_string(params).unwrap())
        .send()
        .await
}
