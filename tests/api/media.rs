//! The media archive against a local server that plays Twilio's media host.
//!
//! Workers are driven one job at a time (`run_once`), and retries are made due by moving
//! `archive_next_at`, so nothing here waits on a timer.

use crate::helpers::*;
use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use sqlx::PgPool;
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};
use twilio_receiver::media::Archiver;

const ACCOUNT: &str = "AC00000000000000000000000000000000";
const SUB_ACCOUNT: &str = "ACSUB000000000000000000000000000";

/// Every request the fake host saw: path and Authorization header.
#[derive(Default)]
struct Fake {
    port: Mutex<u16>,
    hits: Mutex<Vec<(String, Option<String>)>>,
}

impl Fake {
    fn hits(&self, path: &str) -> Vec<Option<String>> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, a)| a.clone())
            .collect()
    }
}

fn expected_auth() -> String {
    let raw = format!("{ACCOUNT}:{TOKEN}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn sub_auth() -> String {
    let raw = format!("{SUB_ACCOUNT}:sub-token");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn media_host(State(fake): State<Arc<Fake>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_owned();
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let seen = {
        let mut hits = fake.hits.lock().unwrap();
        hits.push((path.clone(), auth.clone()));
        hits.iter().filter(|(p, _)| *p == path).count()
    };
    let port = *fake.port.lock().unwrap();
    let image = |body: &'static str| ([(header::CONTENT_TYPE, "image/jpeg")], body).into_response();
    match path.as_str() {
        "/ok" if auth.as_deref() == Some(expected_auth().as_str()) => image("a tiny jpeg"),
        "/ok" => StatusCode::UNAUTHORIZED.into_response(),
        "/late" if seen == 1 => StatusCode::NOT_FOUND.into_response(),
        "/late" => image("arrived late"),
        "/busy" if seen == 1 => StatusCode::TOO_MANY_REQUESTS.into_response(),
        "/busy" => image("not busy now"),
        "/sub" if auth.as_deref() == Some(sub_auth().as_str()) => image("sub-account media"),
        "/sub" => StatusCode::UNAUTHORIZED.into_response(),
        "/broken" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "/locked" => StatusCode::UNAUTHORIZED.into_response(),
        "/big" => image("far more than ten bytes"),
        // No Content-Length: the cap must hold while streaming.
        "/big-stream" => {
            let chunks = futures::stream::iter(
                ["eight by", "tes more", "and more"].map(|c| Ok::<_, std::io::Error>(bytes_of(c))),
            );
            (
                [(header::CONTENT_TYPE, "video/mp4")],
                Body::from_stream(chunks),
            )
                .into_response()
        }
        "/to-relative" => redirect("/cdn"),
        "/slow" => {
            let chunks = futures::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok::<_, std::io::Error>(bytes_of("first chunk")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Some((Ok(bytes_of("too late")), 2))
                    }
                    _ => None,
                }
            });
            (
                [(header::CONTENT_TYPE, "audio/ogg")],
                Body::from_stream(chunks),
            )
                .into_response()
        }
        "/to-cdn" => redirect(&format!("http://127.0.0.1:{port}/cdn")),
        "/cdn" => image("from the cdn"),
        "/to-elsewhere" => redirect(&format!("http://localhost:{port}/cdn")),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn bytes_of(s: &'static str) -> axum::body::Bytes {
    axum::body::Bytes::from_static(s.as_bytes())
}

fn redirect(location: &str) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response()
}

struct Setup {
    app: TestApp,
    archiver: Archiver,
    fake: Arc<Fake>,
    port: u16,
    dir: PathBuf,
}

async fn setup(pool: PgPool, extra: &[(&str, &str)]) -> Setup {
    let fake = Arc::new(Fake::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    *fake.port.lock().unwrap() = port;
    let router = Router::new().fallback(media_host).with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = std::env::temp_dir().join(format!("twr-media-{}-{port}", std::process::id()));
    let storage = format!("file://{}", dir.display());
    let mut env = vec![
        ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
        ("TWILIO_RECEIVER__MEDIA__STORAGE", storage.as_str()),
        ("TWILIO_RECEIVER__MEDIA__ALLOW_INSECURE_LOOPBACK", "true"),
        ("TWILIO_RECEIVER__MEDIA__CREDENTIAL_HOSTS", "127.0.0.1"),
        ("TWILIO_RECEIVER__MEDIA__REDIRECT_HOSTS", "127.0.0.1"),
        ("TWILIO_RECEIVER__MEDIA__MAX_ATTEMPTS", "3"),
        ("TWILIO_RECEIVER__MEDIA__MAX_BYTES", "16"),
        ("TWILIO_RECEIVER__MEDIA__TIMEOUT_MS", "500"),
    ];
    env.extend_from_slice(extra);
    let settings = settings(&env);
    let archiver =
        Archiver::new(pool.clone(), settings.media.clone(), settings.verifier()).unwrap();
    Setup {
        app: TestApp::with_settings(pool, settings),
        archiver,
        fake,
        port,
        dir,
    }
}

impl Setup {
    /// Posts message `n` with one media item at `url`.
    async fn receive(&self, n: u32, url: &str) {
        let mut params = whatsapp_text(&sid(n), "whatsapp:+15551234567", "");
        params.retain(|(k, _)| k != "NumMedia");
        params.extend(pairs(&[
            ("NumMedia", "1"),
            ("MediaUrl0", url),
            ("MediaContentType0", "image/jpeg"),
        ]));
        assert_eq!(
            self.app
                .post_signed("/twilio/messages", &params)
                .await
                .status,
            200
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Makes every pending retry due now, then runs one job.
    async fn attempt(&self) -> bool {
        sqlx::query(
            "update message_media set archive_next_at = now() where archive_state = 'pending'",
        )
        .execute(&self.app.pool)
        .await
        .unwrap();
        self.archiver.run_once().await
    }

    async fn item(&self, n: u32) -> Item {
        let r = sqlx::query!(
            "select archive_state, archive_attempts, storage_key, bytes, sha256, archive_error, content_type
             from message_media where message_sid = $1 and index = 0",
            sid(n)
        )
        .fetch_one(&self.app.pool)
        .await
        .unwrap();
        Item {
            state: r.archive_state,
            attempts: r.archive_attempts,
            key: r.storage_key,
            bytes: r.bytes,
            sha256: r.sha256,
            error: r.archive_error.unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
struct Item {
    state: Option<String>,
    attempts: i32,
    key: Option<String>,
    bytes: Option<i64>,
    sha256: Option<String>,
    error: String,
}

#[sqlx::test]
async fn media_is_downloaded_with_basic_auth_and_stored_once(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/ok")).await;

    assert!(s.archiver.run_once().await);
    assert!(!s.archiver.run_once().await, "nothing left to do");

    let item = s.item(1).await;
    assert_eq!(item.state.as_deref(), Some("stored"));
    assert_eq!(item.bytes, Some(11));
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(b"a tiny jpeg")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(item.sha256.as_deref(), Some(expected.as_str()));
    let key = item.key.unwrap();
    assert_eq!(key, format!("{}/0", sid(1)));
    assert_eq!(
        std::fs::read_to_string(s.dir.join(&key)).unwrap(),
        "a tiny jpeg"
    );
    assert_eq!(s.fake.hits("/ok"), [Some(expected_auth())]);
    std::fs::remove_dir_all(&s.dir).unwrap();
}

#[sqlx::test]
async fn archiving_is_off_unless_configured(pool: PgPool) {
    let s = setup(pool, &[("TWILIO_RECEIVER__MEDIA__ARCHIVE", "false")]).await;
    s.receive(1, &s.url("/ok")).await;
    assert!(!s.archiver.run_once().await);
    assert_eq!(s.item(1).await.state, None);
    assert!(s.fake.hits("/ok").is_empty());
}

#[sqlx::test]
async fn a_404_right_after_receipt_is_retried_until_it_succeeds(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/late")).await;

    s.attempt().await;
    let first = s.item(1).await;
    assert_eq!(
        (first.state.as_deref(), first.attempts),
        (Some("pending"), 1)
    );
    assert!(first.error.contains("404"), "{first:?}");
    s.attempt().await;
    let second = s.item(1).await;
    assert_eq!(
        (second.state.as_deref(), second.attempts),
        (Some("stored"), 2)
    );
    assert_eq!(second.error, "");
}

#[sqlx::test]
async fn a_429_and_a_refused_connection_are_retried(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/busy")).await;
    // Nothing listens on port 1 of loopback.
    s.receive(2, "http://127.0.0.1:1/gone").await;
    s.attempt().await;
    s.attempt().await;
    let busy = s.item(1).await;
    assert_eq!(
        (busy.state.as_deref(), busy.attempts),
        (Some("pending"), 1),
        "{busy:?}"
    );
    assert!(busy.error.contains("429"), "{busy:?}");
    let refused = s.item(2).await;
    assert_eq!(
        (refused.state.as_deref(), refused.attempts),
        (Some("pending"), 1),
        "{refused:?}"
    );
    assert!(refused.error.contains("connection failed"), "{refused:?}");
    s.attempt().await;
    assert_eq!(s.item(1).await.state.as_deref(), Some("stored"));
}

#[sqlx::test]
async fn a_sub_account_media_item_is_fetched_with_that_accounts_token(pool: PgPool) {
    let fake = setup(pool.clone(), &[]).await;
    let storage = format!("file://{}", fake.dir.display());
    let mut settings = settings(&[
        ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
        ("TWILIO_RECEIVER__MEDIA__STORAGE", &storage),
        ("TWILIO_RECEIVER__MEDIA__ALLOW_INSECURE_LOOPBACK", "true"),
        ("TWILIO_RECEIVER__MEDIA__CREDENTIAL_HOSTS", "127.0.0.1"),
    ]);
    settings.twilio.accounts.insert(
        SUB_ACCOUNT.to_lowercase(),
        vec![secrecy::SecretString::from("sub-token")],
    );
    let archiver =
        Archiver::new(pool.clone(), settings.media.clone(), settings.verifier()).unwrap();
    let app = TestApp::with_settings(pool, settings);
    let mut params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "");
    params.retain(|(k, _)| k != "NumMedia" && k != "AccountSid");
    let url = fake.url("/sub");
    params.extend(pairs(&[
        ("AccountSid", SUB_ACCOUNT),
        ("NumMedia", "1"),
        ("MediaUrl0", &url),
    ]));
    let signed = signed_post(
        &format!("{BASE}/twilio/messages"),
        "/twilio/messages",
        &params,
        "sub-token",
    );
    assert_eq!(app.send(signed).await.status, 200);

    assert!(archiver.run_once().await);
    assert_eq!(fake.item(1).await.state.as_deref(), Some("stored"));
    assert_eq!(fake.fake.hits("/sub"), [Some(sub_auth())]);
}

#[sqlx::test]
async fn server_errors_and_401s_are_retried_up_to_the_limit_then_recorded(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/broken")).await;
    s.receive(2, &s.url("/locked")).await;
    for _ in 0..6 {
        s.attempt().await;
    }
    assert!(!s.attempt().await, "given up: never claimed again");
    for (n, status) in [(1, "500"), (2, "401")] {
        let item = s.item(n).await;
        assert_eq!(
            (item.state.as_deref(), item.attempts),
            (Some("failed"), 3),
            "{item:?}"
        );
        assert!(
            item.error.contains("gave up after 3 attempts") && item.error.contains(status),
            "{item:?}"
        );
    }
    assert_eq!(s.fake.hits("/broken").len(), 3);
}

#[sqlx::test]
async fn oversize_media_fails_at_once(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/big")).await;
    s.attempt().await;
    let item = s.item(1).await;
    assert_eq!((item.state.as_deref(), item.attempts), (Some("failed"), 1));
    assert!(item.error.contains("media.max_bytes"), "{item:?}");
    assert!(!s.attempt().await);
}

#[sqlx::test]
async fn the_size_cap_holds_while_streaming_without_a_content_length(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/big-stream")).await;
    s.attempt().await;
    let item = s.item(1).await;
    assert_eq!(item.state.as_deref(), Some("failed"), "{item:?}");
    assert!(item.error.contains("media.max_bytes"), "{item:?}");
    assert!(
        !s.dir.join(format!("{}/0", sid(1))).exists(),
        "no partial file"
    );
}

#[sqlx::test]
async fn a_storage_outage_retries_without_using_up_attempts(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/ok")).await;
    // The storage directory turns into a file: nothing can be written under it.
    std::fs::remove_dir_all(&s.dir).unwrap();
    std::fs::write(&s.dir, "not a directory").unwrap();
    for _ in 0..5 {
        s.attempt().await;
    }
    let item = s.item(1).await;
    assert_eq!(
        (item.state.as_deref(), item.attempts),
        (Some("pending"), 0),
        "{item:?}"
    );
    assert!(item.error.contains("storage"), "{item:?}");
    // Storage is back: the item is stored.
    std::fs::remove_file(&s.dir).unwrap();
    std::fs::create_dir_all(&s.dir).unwrap();
    s.attempt().await;
    assert_eq!(s.item(1).await.state.as_deref(), Some("stored"));
}

#[sqlx::test]
async fn a_slow_body_times_out_and_is_retried(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/slow")).await;
    s.attempt().await;
    let item = s.item(1).await;
    assert_eq!(item.state.as_deref(), Some("pending"));
    assert!(
        item.error.contains("not finished within media.timeout_ms"),
        "{item:?}"
    );
    // Neither the file nor a staging file is left behind.
    let leftovers = std::fs::read_dir(s.dir.join(sid(1)))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "no partial file");
}

#[sqlx::test]
async fn other_hosts_never_get_a_request_or_credentials(pool: PgPool) {
    let s = setup(pool, &[]).await;
    // The same fake host under another name: not in media.credential_hosts.
    s.receive(1, &format!("http://localhost:{}/ok", s.port))
        .await;
    s.attempt().await;
    let item = s.item(1).await;
    assert_eq!(item.state.as_deref(), Some("refused"));
    assert!(item.error.contains("media.credential_hosts"), "{item:?}");
    assert!(s.fake.hits("/ok").is_empty(), "no request reached it");
}

#[sqlx::test]
async fn redirects_go_only_to_allowed_hosts_and_never_carry_credentials(pool: PgPool) {
    let s = setup(pool, &[]).await;
    s.receive(1, &s.url("/to-cdn")).await;
    s.receive(2, &s.url("/to-elsewhere")).await;
    s.attempt().await;
    s.attempt().await;

    assert_eq!(s.item(1).await.state.as_deref(), Some("stored"));
    assert_eq!(s.fake.hits("/to-cdn"), [Some(expected_auth())]);
    assert_eq!(
        s.fake.hits("/cdn"),
        [None],
        "credentials stay on the first hop"
    );
    let refused = s.item(2).await;
    assert_eq!(refused.state.as_deref(), Some("refused"));
    assert!(
        refused.error.contains("media.redirect_hosts"),
        "{refused:?}"
    );
    assert_eq!(
        s.fake.hits("/cdn").len(),
        1,
        "the disallowed redirect was not followed"
    );
}

#[sqlx::test]
async fn two_workers_racing_store_each_item_once(pool: PgPool) {
    let s = setup(pool.clone(), &[]).await;
    for n in 0..20 {
        s.receive(n, &s.url("/ok")).await;
    }
    let settings = settings(&[
        (
            "TWILIO_RECEIVER__MEDIA__STORAGE",
            &format!("file://{}", s.dir.display()),
        ),
        ("TWILIO_RECEIVER__MEDIA__ALLOW_INSECURE_LOOPBACK", "true"),
        ("TWILIO_RECEIVER__MEDIA__CREDENTIAL_HOSTS", "127.0.0.1"),
    ]);
    let second = Archiver::new(pool, settings.media.clone(), settings.verifier()).unwrap();

    async fn drain(a: &Archiver) {
        while a.run_once().await {}
    }
    tokio::join!(drain(&s.archiver), drain(&second));

    assert_eq!(
        s.app.count("select count(*) from message_media where archive_state = 'stored' and archive_attempts = 1").await,
        20
    );
    assert_eq!(s.fake.hits("/ok").len(), 20, "each item downloaded once");
}

#[sqlx::test]
async fn a_job_whose_worker_died_is_taken_over_after_its_lease(pool: PgPool) {
    let s = setup(pool.clone(), &[]).await;
    s.receive(1, &s.url("/ok")).await;
    s.receive(2, &s.url("/ok")).await;
    // A worker claims a job and dies before finishing it.
    let claimed = twilio_receiver::store::media::claim(&pool, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    // Its lease still holds: the other job is done, this one is left alone.
    assert!(s.archiver.run_once().await);
    assert!(!s.archiver.run_once().await);
    // The lease runs out (a restart later): the job is picked up and stored.
    sqlx::query("update message_media set archive_lease_until = now() - interval '1 second' where message_sid = $1")
        .bind(&claimed.message_sid)
        .execute(&pool)
        .await
        .unwrap();
    assert!(s.archiver.run_once().await);
    assert_eq!(
        s.app
            .count("select count(*) from message_media where archive_state = 'stored'")
            .await,
        2
    );
}

/// S3 storage against an S3-compatible server started here on a port of its own: s3s's
/// filesystem-backed implementation (a dev-dependency), which checks the archiver's SigV4
/// signature for the key pair `test` / `test`.
#[sqlx::test]
async fn media_is_stored_in_an_s3_compatible_bucket(pool: PgPool) {
    use object_store::ObjectStoreExt;
    let s = setup(pool.clone(), &[]).await;
    // Bound before it serves: the port is taken and connections queue until the loop runs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = std::env::temp_dir().join(format!("twr-s3-{}-{port}", std::process::id()));
    // s3s-fs keeps each bucket as a directory under its root.
    std::fs::create_dir_all(root.join("twr-media")).unwrap();
    let s3 = {
        let mut b = s3s::service::S3ServiceBuilder::new(s3s_fs::FileSystem::new(&root).unwrap());
        b.set_auth(s3s::auth::SimpleAuth::from_single("test", "test"));
        b.build()
    };
    let server = tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let s3 = s3.clone();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), s3),
            );
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");

    let settings = settings(&[
        ("TWILIO_RECEIVER__MEDIA__STORAGE", "s3://twr-media/whatsapp"),
        ("TWILIO_RECEIVER__MEDIA__ALLOW_INSECURE_LOOPBACK", "true"),
        ("TWILIO_RECEIVER__MEDIA__CREDENTIAL_HOSTS", "127.0.0.1"),
    ]);
    let aws = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let storage =
        twilio_receiver::storage::open_with_options(&settings.media.storage, aws).unwrap();
    let bucket = storage.0.clone();
    let archiver =
        Archiver::with_storage(pool, settings.media.clone(), settings.verifier(), storage).unwrap();

    s.receive(1, &s.url("/ok")).await;
    assert!(archiver.run_once().await);

    let item = s.item(1).await;
    assert_eq!(item.state.as_deref(), Some("stored"), "{item:?}");
    let key = format!("whatsapp/{}/0", sid(1));
    assert_eq!(item.key.as_deref(), Some(key.as_str()));
    // Read back through the server, signed like the archiver's own requests.
    let object = bucket
        .get(&object_store::path::Path::from(key.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&object[..], b"a tiny jpeg");
    // An unsigned request is refused: the server really checks signatures.
    let unsigned = reqwest::get(format!("{endpoint}/twr-media/{key}"))
        .await
        .unwrap();
    assert_eq!(unsigned.status(), reqwest::StatusCode::FORBIDDEN);
    server.abort();
    std::fs::remove_dir_all(&root).unwrap();
}

/// `serve` runs the workers itself, media from the fallback route is queued like any other,
/// and each archived item is announced with `NOTIFY twilio_receiver` (kind "media").
#[sqlx::test]
async fn serve_archives_fallback_media_in_the_background_and_notifies(pool: PgPool) {
    use tower::ServiceExt;
    let s = setup(pool.clone(), &[]).await;
    let storage = format!("file://{}", s.dir.display());
    let url = database_url(&pool);
    let settings = settings(&[
        ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
        ("TWILIO_RECEIVER__MEDIA__STORAGE", &storage),
        ("TWILIO_RECEIVER__MEDIA__ALLOW_INSECURE_LOOPBACK", "true"),
        ("TWILIO_RECEIVER__MEDIA__CREDENTIAL_HOSTS", "127.0.0.1"),
        ("TWILIO_RECEIVER__DATABASE__URL", &url),
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
    ]);
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("twilio_receiver").await.unwrap();
    let app = twilio_receiver::startup::Application::build(&settings)
        .await
        .unwrap();
    let router = app.router();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let mut params = whatsapp_text(&sid(1), "whatsapp:+15551234567", "");
    params.retain(|(k, _)| k != "NumMedia");
    let media_url = s.url("/ok");
    params.extend(pairs(&[
        ("NumMedia", "1"),
        ("MediaUrl0", &media_url),
        ("MediaContentType0", "image/jpeg"),
        ("ErrorCode", "11200"),
    ]));
    let request = signed_post(
        &format!("{BASE}/twilio/fallback"),
        "/twilio/fallback",
        &params,
        TOKEN,
    );
    assert_eq!(router.oneshot(request).await.unwrap().status(), 200);

    let archived = loop {
        let n = tokio::time::timeout(Duration::from_secs(30), listener.recv())
            .await
            .expect("the media item is archived within 30 s")
            .unwrap();
        let payload: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        if payload["kind"] == "media" {
            break payload;
        }
    };
    assert_eq!(archived["message_sid"], sid(1));
    assert_eq!(archived["state"], "stored");
    assert!(archived["received_at"].is_string(), "{archived}");
    assert_eq!(
        std::fs::read_to_string(s.dir.join(format!("{}/0", sid(1)))).unwrap(),
        "a tiny jpeg"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
