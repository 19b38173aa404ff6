//! `doctor`: its probe through reverse proxies that rewrite what nginx and tunnels rewrite,
//! the server's answer to forged and replayed probes, and the local checks.

use crate::helpers::*;
use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use sqlx::PgPool;
use std::{
    net::SocketAddr,
    process::{Command, Output},
    sync::{Arc, Mutex},
};
use twilio_receiver::{probe, startup::Application};

/// A server on a socket of its own, stopped when dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start(env: &[(&str, &str)]) -> Server {
        let mut env = env.to_vec();
        env.push(("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"));
        let settings = settings(&env);
        let app = Application::build(&settings).await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], app.port()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a proxy in front of the server changes, the way nginx, load balancers and tunnels do.
#[derive(Clone, Default)]
struct Rewrite {
    /// Removed from the front of the path before forwarding (`location /hooks/ { proxy_pass
    /// http://app/; }`).
    strip_prefix: Option<&'static str>,
    /// Send the upstream's address as `Host` (nginx's default `$proxy_host`) instead of the
    /// client's.
    upstream_host: bool,
    /// Forward without the query string.
    drop_query: bool,
    /// Added headers (`X-Forwarded-Proto`, `X-Forwarded-Host`, ...).
    headers: Vec<(&'static str, String)>,
}

struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: Mutex<SocketAddr>,
    rewrite: Rewrite,
    client: reqwest::Client,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr, rewrite: Rewrite) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: Mutex::new(upstream),
            rewrite,
            client: reqwest::Client::new(),
        });
        let app = Router::new().fallback(forward).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Proxy { addr, state, task }
    }

    /// Points the proxy at another server (after a restart with new settings).
    fn set_upstream(&self, upstream: SocketAddr) {
        *self.state.upstream.lock().unwrap() = upstream;
    }
}

async fn forward(State(proxy): State<Arc<ProxyState>>, request: Request) -> Response {
    let rewrite = &proxy.rewrite;
    let (parts, body) = request.into_parts();
    let mut path = parts.uri.path().to_owned();
    if let Some(prefix) = rewrite.strip_prefix {
        match path.strip_prefix(prefix) {
            Some(rest) => path = rest.to_owned(),
            None => return StatusCode::NOT_FOUND.into_response(),
        }
    }
    if let (Some(query), false) = (parts.uri.query(), rewrite.drop_query) {
        path = format!("{path}?{query}");
    }
    let upstream = *proxy.upstream.lock().unwrap();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut outgoing = proxy
        .client
        .request(parts.method, format!("http://{upstream}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let client_host = parts.headers[header::HOST].to_str().unwrap().to_owned();
    let host = if rewrite.upstream_host {
        upstream.to_string()
    } else {
        client_host.clone()
    };
    outgoing = outgoing.header(header::HOST, host);
    for (name, value) in &rewrite.headers {
        let value = if value == FORWARDED_HOST {
            &client_host
        } else {
            value
        };
        outgoing = outgoing.header(*name, value);
    }
    let answer = outgoing.send().await.unwrap();
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response
        .body(Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}

/// Runs `twilio-receiver doctor` with only these variables (plus PATH and the token).
async fn doctor(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_twilio-receiver"))
            .arg("doctor")
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("TWILIO_RECEIVER__SPOOL__DIR", "")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The report's line for the webhook check of `url` and the fix line under it.
fn webhook_lines(o: &Output, url: &str) -> String {
    let out = String::from_utf8_lossy(&o.stdout);
    let mut lines = out
        .lines()
        .skip_while(|l| !l.contains(&format!("webhook {url}:")));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no line for {url} in:\n{out}"));
    match lines.next().filter(|l| l.trim_start().starts_with("fix:")) {
        Some(fix) => format!("{first}\n{fix}"),
        None => first.to_owned(),
    }
}

async fn stored(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "select (select count(*) from messages) + (select count(*) from webhook_failures)
              + (select count(*) from message_status_events)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn doctor_passes_a_direct_set_up_and_never_stores_its_probe(pool: PgPool) {
    let db = database_url(&pool);
    let server = Server::start(&[
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
        ("TWILIO_RECEIVER__DATABASE__URL", &db),
    ])
    .await;
    let urls: Vec<String> = ["/twilio/messages", "/twilio/fallback", "/twilio/status"]
        .iter()
        .map(|path| format!("http://{}{path}", server.addr))
        .collect();
    let mut args = vec![];
    for url in &urls {
        args.extend(["--url", url.as_str()]);
    }
    let out = doctor(&args, &[("DATABASE_URL", &db)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for url in &urls {
        let line = webhook_lines(&out, url);
        assert!(
            line.starts_with("ok    webhook") && line.contains("reconstructs Twilio's URL exactly"),
            "{line}"
        );
    }
    assert!(text(&out).contains("ok    database: reachable, migrated, and this role can write"));
    assert_eq!(stored(&pool).await, 0, "a probe was stored");

    // --json for machines: the same verdicts.
    args.push("--json");
    let out = doctor(&args, &[("DATABASE_URL", &db)]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let webhooks: Vec<_> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("webhook "))
        .collect();
    assert_eq!(webhooks.len(), 3);
    assert!(webhooks.iter().all(|c| c["verdict"] == "pass"), "{report}");
}

/// One proxy scenario: doctor names the mismatch, and with the fix it names applied to the
/// server, the next run passes.
async fn mismatch_then_fix(
    db: &str,
    twilio_url: impl Fn(SocketAddr) -> String,
    server_env: &[(&str, &str)],
    rewrite: Rewrite,
    expected: &[&str],
    fixed_env: impl Fn(SocketAddr) -> Vec<(&'static str, String)>,
) {
    let mut env = vec![("TWILIO_RECEIVER__DATABASE__URL", db)];
    env.extend_from_slice(server_env);
    let server = Server::start(&env).await;
    let proxy = Proxy::start(server.addr, rewrite).await;
    let url = twilio_url(proxy.addr);
    let out = doctor(&["--url", &url], &[("DATABASE_URL", db)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = webhook_lines(&out, &url);
    assert!(lines.starts_with("FAIL  webhook"), "{lines}");
    for part in expected {
        assert!(lines.contains(part), "{part:?} not in\n{lines}");
    }

    // The fix doctor named, applied: the next run passes.
    let fixed = fixed_env(proxy.addr);
    let mut env = vec![("TWILIO_RECEIVER__DATABASE__URL", db)];
    env.extend(fixed.iter().map(|(k, v)| (*k, v.as_str())));
    let server = Server::start(&env).await;
    proxy.set_upstream(server.addr);
    let out = doctor(&["--url", &url], &[("DATABASE_URL", db)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(webhook_lines(&out, &url).starts_with("ok    webhook"));
}

#[sqlx::test]
async fn doctor_names_a_proxy_that_sends_its_upstream_as_host_and_the_fix_works(pool: PgPool) {
    let db = database_url(&pool);
    mismatch_then_fix(
        &db,
        |proxy| format!("http://{proxy}/twilio/messages"),
        &[("TWILIO_RECEIVER__SERVER__PUBLIC_URL", "")],
        Rewrite {
            upstream_host: true,
            ..Rewrite::default()
        },
        &[
            "port: Twilio signs ",
            "set server.public_url = \"http://127.0.0.1:",
        ],
        |proxy| {
            vec![(
                "TWILIO_RECEIVER__SERVER__PUBLIC_URL",
                format!("http://{proxy}"),
            )]
        },
    )
    .await;
}

#[sqlx::test]
async fn doctor_names_a_stripped_path_prefix_and_the_fix_works(pool: PgPool) {
    let db = database_url(&pool);
    mismatch_then_fix(
        &db,
        |proxy| format!("http://{proxy}/hooks/twilio/messages"),
        &[("TWILIO_RECEIVER__SERVER__PUBLIC_URL", "")],
        Rewrite {
            strip_prefix: Some("/hooks"),
            ..Rewrite::default()
        },
        &[
            "path prefix: Twilio calls /hooks/twilio/messages, the server saw /twilio/messages (the prefix /hooks is stripped on the way)",
            "/hooks\"",
        ],
        |proxy| {
            vec![(
                "TWILIO_RECEIVER__SERVER__PUBLIC_URL",
                format!("http://{proxy}/hooks"),
            )]
        },
    )
    .await;
}

#[sqlx::test]
async fn doctor_suggests_trusting_a_tunnels_forwarded_headers_and_that_works(pool: PgPool) {
    // A tunnel: the public name arrives in X-Forwarded-Host, the upstream in Host.
    let db = database_url(&pool);
    mismatch_then_fix(
        &db,
        |proxy| format!("http://localhost:{}/twilio/messages", proxy.port()),
        &[("TWILIO_RECEIVER__SERVER__PUBLIC_URL", "")],
        Rewrite {
            upstream_host: true,
            headers: vec![("x-forwarded-proto", "http".into())],
            ..Rewrite::default()
        }
        .with_forwarded_host(),
        &[
            "host: Twilio signs localhost, the server saw 127.0.0.1",
            "or server.trust_forwarded_headers = true",
        ],
        |_| {
            vec![
                ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", String::new()),
                (
                    "TWILIO_RECEIVER__SERVER__TRUST_FORWARDED_HEADERS",
                    "true".into(),
                ),
            ]
        },
    )
    .await;
}

impl Rewrite {
    /// Sends the client's `Host` as `X-Forwarded-Host` (filled in per request).
    fn with_forwarded_host(mut self) -> Self {
        self.headers
            .push(("x-forwarded-host", FORWARDED_HOST.into()));
        self
    }
}

/// Stands for "the Host the client sent" in [`Rewrite::headers`].
const FORWARDED_HOST: &str = "$host";

#[sqlx::test]
async fn doctor_names_a_wrong_forwarded_scheme_and_public_url_overrides_it(pool: PgPool) {
    let db = database_url(&pool);
    mismatch_then_fix(
        &db,
        |proxy| format!("http://{proxy}/twilio/messages"),
        &[
            ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
            ("TWILIO_RECEIVER__SERVER__TRUST_FORWARDED_HEADERS", "true"),
        ],
        Rewrite {
            headers: vec![("x-forwarded-proto", "https".into())],
            ..Rewrite::default()
        },
        &[
            "scheme: Twilio signs http, the server saw https",
            "it wins over the proxy's X-Forwarded-* headers",
        ],
        |proxy| {
            vec![(
                "TWILIO_RECEIVER__SERVER__PUBLIC_URL",
                format!("http://{proxy}"),
            )]
        },
    )
    .await;
}

#[sqlx::test]
async fn doctor_names_a_path_prefix_the_proxy_adds_and_public_url_overrides_it(pool: PgPool) {
    // A proxy that announces a prefix the public URL does not have.
    let db = database_url(&pool);
    mismatch_then_fix(
        &db,
        |proxy| format!("http://{proxy}/twilio/messages"),
        &[
            ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
            ("TWILIO_RECEIVER__SERVER__TRUST_FORWARDED_HEADERS", "true"),
        ],
        Rewrite {
            headers: vec![("x-forwarded-prefix", "/api".into())],
            ..Rewrite::default()
        },
        &[
            "path prefix: the server added /api to the path Twilio calls",
            "fix: set server.public_url = \"http://127.0.0.1:",
        ],
        |proxy| {
            vec![(
                "TWILIO_RECEIVER__SERVER__PUBLIC_URL",
                format!("http://{proxy}"),
            )]
        },
    )
    .await;
}

#[sqlx::test]
async fn doctor_names_a_dropped_query_string(pool: PgPool) {
    let db = database_url(&pool);
    let server = Server::start(&[
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
        ("TWILIO_RECEIVER__DATABASE__URL", &db),
    ])
    .await;
    let proxy = Proxy::start(
        server.addr,
        Rewrite {
            drop_query: true,
            ..Rewrite::default()
        },
    )
    .await;
    let url = format!("http://{}/twilio/messages?tenant=a", proxy.addr);
    let out = doctor(&["--url", &url], &[("DATABASE_URL", &db)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = webhook_lines(&out, &url);
    assert!(
        lines.contains("query: the query string the server saw is not the one Twilio signs"),
        "{lines}"
    );
    assert!(
        lines.contains("fix: make the proxy pass the request target unchanged"),
        "{lines}"
    );
}

/// A webhook request whose signature is valid (or not), with a probe header (or none), as
/// a POST form or a GET query.
async fn webhook(
    url: &str,
    get: bool,
    params: &[(String, String)],
    probe_header: Option<String>,
    valid: bool,
) -> reqwest::Response {
    let client = reqwest::Client::new();
    let query = serde_urlencoded::to_string(params).unwrap();
    let (url, signed_params) = if get {
        (format!("{url}?{query}"), &[][..])
    } else {
        (url.to_owned(), params)
    };
    let token = if valid { TOKEN } else { "not-the-token" };
    let signature =
        twilio_receiver::twilio::signature::compute(token.as_bytes(), &url, signed_params);
    let mut request = if get {
        client.get(&url)
    } else {
        client.post(&url).header("content-type", FORM).body(query)
    };
    request = request.header("x-twilio-signature", signature);
    if let Some(value) = probe_header {
        request = request.header(probe::HEADER, value);
    }
    request.send().await.unwrap()
}

/// Every header but the ones that differ per response.
fn stable_headers(r: &reqwest::Response) -> Vec<(String, String)> {
    let mut headers: Vec<_> = r
        .headers()
        .iter()
        .filter(|(name, _)| !["date", "x-request-id"].contains(&name.as_str()))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    headers
}

#[sqlx::test]
async fn probes_are_answered_on_every_route_and_method_and_never_stored(pool: PgPool) {
    let db = database_url(&pool);
    let server = Server::start(&[
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
        ("TWILIO_RECEIVER__DATABASE__URL", &db),
    ])
    .await;
    let token = secrecy::SecretString::from(TOKEN.to_owned());
    let contact = "whatsapp:+15551234567";
    let inbound = whatsapp_text(&sid(1), contact, "hello");
    let mut fallback = inbound.clone();
    fallback.extend(pairs(&[
        ("ErrorCode", "11200"),
        ("ErrorUrl", "https://x.example/"),
    ]));
    let status = pairs(&[
        ("MessageSid", &sid(2)),
        ("MessageStatus", "delivered"),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", BUSINESS),
        ("To", contact),
    ]);
    let mut n = 0u32;
    for (path, params) in [
        ("/twilio/messages", &inbound),
        ("/twilio/fallback", &fallback),
        ("/twilio/status", &status),
    ] {
        let url = format!("http://{}{path}", server.addr);
        for get in [false, true] {
            // A genuine probe, with a complete, validly signed webhook: the diagnosis,
            // authenticated, and nothing handed on.
            n += 1;
            let nonce = format!("{n:032}");
            let header = probe::header(&token, chrono::Utc::now().timestamp(), &nonce);
            let answer = webhook(&url, get, params, Some(header.clone()), true).await;
            assert_eq!(answer.status(), 200, "{path} get={get}");
            let mac = answer.headers()[probe::ANSWER_MAC_HEADER]
                .to_str()
                .unwrap()
                .to_owned();
            let bytes = answer.bytes().await.unwrap();
            assert!(probe::answer_is_authentic(&token, &nonce, &bytes, &mac));
            let diagnosis: probe::Answer = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(diagnosis.signature, "valid", "{path} get={get}");
            assert!(diagnosis.url.starts_with(&url), "{}", diagnosis.url);

            // The same header again (replayed), a stale one, one made with another key, and
            // a malformed one: exactly the answer to a bad signature without any probe.
            let bare = webhook(&url, get, params, None, false).await;
            assert_eq!(bare.status(), StatusCode::FORBIDDEN);
            let expected = stable_headers(&bare);
            let guess = secrecy::SecretString::from("guess".to_owned());
            let now = chrono::Utc::now().timestamp();
            for refused in [
                header,
                probe::header(&token, now - 3600, "fedcba9876543210fedcba9876543210"),
                probe::header(&guess, now, "00112233445566778899aabbccddeeff"),
                "v1 nonsense".to_owned(),
            ] {
                let answer = webhook(&url, get, params, Some(refused.clone()), true).await;
                assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{refused}");
                assert_eq!(stable_headers(&answer), expected, "{refused}");
                assert_eq!(answer.bytes().await.unwrap().len(), 0, "{refused}");
            }
        }
    }
    for table in [
        "messages",
        "webhook_failures",
        "message_status_events",
        "conversations",
        "sessions",
        "consent",
        "consent_events",
        "replies",
    ] {
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rows, 0, "a probe left a row in {table}");
    }
}

#[sqlx::test]
async fn doctor_fails_an_unreachable_database_and_an_unwritable_spool(pool: PgPool) {
    let spool_parent = scratch_dir("doctor-spool");
    let file = spool_parent.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let spool = file.join("spool");
    // Port 9: nothing listens there, and no test's server can take it (they bind port 0,
    // which is never below 1024). A port freed by another test could be bound again by a
    // server that accepts and never answers.
    let closed = "127.0.0.1:9";
    let out = doctor(
        &["--url", "http://127.0.0.1:9/twilio/messages"],
        &[
            (
                "DATABASE_URL",
                &format!("postgres://postgres@{closed}/nowhere"),
            ),
            ("TWILIO_RECEIVER__SPOOL__DIR", spool.to_str().unwrap()),
        ],
    )
    .await;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  database: cannot connect"),
        "{report}"
    );
    assert!(
        report.contains(&format!("FAIL  spool: {} is not writable", spool.display())),
        "{report}"
    );
    assert!(
        report.contains("FAIL  webhook http://127.0.0.1:9/twilio/messages: cannot reach it"),
        "{report}"
    );
    // Secrets never appear: the token is not printed anywhere.
    assert!(!report.contains(TOKEN));
    drop(pool);
}

#[sqlx::test(migrations = false)]
async fn doctor_fails_a_database_that_is_not_migrated(pool: PgPool) {
    let db = database_url(&pool);
    let out = doctor(
        &["--url", "http://127.0.0.1:9/twilio/messages"],
        &[("DATABASE_URL", &db)],
    )
    .await;
    let report = text(&out);
    let all = twilio_receiver::store::MIGRATOR.iter().count();
    assert!(
        report.contains(&format!(
            "FAIL  database: {all} migration(s) not applied (first: 20"
        )),
        "{report}"
    );
    assert!(report.contains("run `twilio-receiver migrate`"), "{report}");
}

#[sqlx::test]
async fn doctor_fails_a_role_that_cannot_write(pool: PgPool) {
    // A role that may read the messages but not write them (roles are cluster-wide: one of
    // this test process's own).
    let role = format!("doctor_read_only_{}", std::process::id());
    let report = doctor_as(
        &pool,
        &role,
        [format!(
            "grant select on all tables in schema public to {role}"
        )],
    )
    .await;
    let line = report
        .lines()
        .find(|l| l.starts_with("FAIL  database: this role cannot write to "))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains(" messages,"), "{line}");
}

#[sqlx::test]
async fn doctor_serve_starts_a_server_for_the_check(pool: PgPool) {
    let db = database_url(&pool);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}/twilio/messages");
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("TWILIO_RECEIVER__SERVER__LISTEN", &listen),
        ("TWILIO_RECEIVER__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    let out = doctor(&["--url", &url], &env).await;
    assert!(
        webhook_lines(&out, &url).contains("cannot reach it"),
        "{}",
        text(&out)
    );
    let out = doctor(&["--serve", "--url", &url], &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(webhook_lines(&out, &url).starts_with("ok    webhook"));

    // A path the server does not serve.
    let wrong = format!("http://{listen}/twilio/message");
    let out = doctor(&["--serve", "--url", &wrong], &env).await;
    assert!(
        webhook_lines(&out, &wrong).contains("answered 404"),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&pool).await, 0);
}

#[sqlx::test]
async fn doctor_sandbox_says_what_to_paste_where_and_probes_it(pool: PgPool) {
    let db = database_url(&pool);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let public = format!("http://{listen}/");
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("TWILIO_RECEIVER__SERVER__LISTEN", &listen),
        ("TWILIO_RECEIVER__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", &public),
    ];
    let out = doctor(&["--serve", "--sandbox"], &env).await;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains(&format!(
            "paste http://{listen}/twilio/messages into \"When a message comes in\" and http://{listen}/twilio/status into \"Status callback URL\""
        )),
        "{report}"
    );
    for path in ["/twilio/messages", "/twilio/status"] {
        let url = format!("http://{listen}{path}");
        assert!(
            webhook_lines(&out, &url).starts_with("ok    webhook"),
            "{report}"
        );
    }
}

#[sqlx::test]
async fn doctor_sends_the_urls_basic_credentials_as_twilio_does(pool: PgPool) {
    let db = database_url(&pool);
    let server = Server::start(&[
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
        ("TWILIO_RECEIVER__DATABASE__URL", &db),
        ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__USER", "twilio"),
        (
            "TWILIO_RECEIVER__SERVER__BASIC_AUTH__PASSWORD",
            "s3cret p@ss",
        ),
    ])
    .await;
    let with = format!(
        "http://twilio:s3cret%20p%40ss@{}/twilio/messages",
        server.addr
    );
    let without = format!("http://{}/twilio/messages", server.addr);
    let out = doctor(
        &["--url", &with, "--url", &without],
        &[("DATABASE_URL", &db)],
    )
    .await;
    let report = text(&out);
    // Twilio signs the URL without its credentials; doctor names it with them masked.
    let masked = format!("http://***@{}/twilio/messages", server.addr);
    assert!(
        webhook_lines(&out, &masked).starts_with("ok    webhook"),
        "{report}"
    );
    assert!(
        webhook_lines(&out, &without).contains("answered 401"),
        "{report}"
    );
    assert!(
        !report.contains("s3cret"),
        "a password was printed: {report}"
    );
}

#[sqlx::test]
async fn doctor_reads_a_senders_urls_from_twilio_flags_the_wrong_one_and_connect_fixes_it(
    pool: PgPool,
) {
    use crate::fake_twilio::{FakeSender, FakeTwilio};
    const ACCOUNT: &str = "AC00000000000000000000000000000000";
    let db = database_url(&pool);
    let server = Server::start(&[
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", ""),
        ("TWILIO_RECEIVER__DATABASE__URL", &db),
    ])
    .await;
    let here = format!("http://{}", server.addr);
    let fake = FakeTwilio::start().await;
    fake.accept(ACCOUNT, ACCOUNT, TOKEN);
    fake.add_sender(
        FakeSender::new(ACCOUNT, 1, "whatsapp:+15550001111").pointing_at(
            &format!("{here}/twilio/messages"),
            "https://old.example.test/fallback",
            &format!("{here}/twilio/status"),
        ),
    );
    let api = fake.base_url();
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", &api),
        ("TWILIO_RECEIVER__TWILIO__MESSAGING_BASE_URL", &api),
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", &here),
    ];
    let out = doctor(&["--sender", "whatsapp:+15550001111"], &env).await;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let fallback = report
        .lines()
        .skip_while(|l| !(l.starts_with("FAIL") && l.contains("fallback")))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        fallback.contains("https://old.example.test/fallback"),
        "{report}"
    );
    assert!(
        fallback.contains("connect --sender whatsapp:+15550001111"),
        "{report}"
    );
    // The two URLs that are this server's are probed through the network, as Twilio calls
    // them; the other one is not (it is someone else's).
    for path in ["/twilio/messages", "/twilio/status"] {
        let url = format!("{here}{path}");
        assert!(
            webhook_lines(&out, &url).starts_with("ok    webhook"),
            "{report}"
        );
    }
    assert!(
        !report.contains("webhook https://old.example.test"),
        "{report}"
    );

    // The fix doctor named, then doctor again: every line passes.
    let connect = tokio::task::spawn_blocking({
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move || {
            Command::new(env!("CARGO_BIN_EXE_twilio-receiver"))
                .args([
                    "connect",
                    "--sender",
                    "whatsapp:+15550001111",
                    "--allow-http",
                ])
                .env_clear()
                .env("TWILIO_AUTH_TOKEN", TOKEN)
                .envs(env)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(connect.status.code(), Some(0), "{}", text(&connect));
    let out = doctor(&["--sender", "whatsapp:+15550001111", "--json"], &env).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    let probed = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("webhook "))
        .count();
    assert_eq!(probed, 3, "{report:#}");
}

/// Days made after the grants of a least-privilege role carry none of their own: rows reach
/// them through their parent, so doctor does not count them against the role. And it warns
/// when the coming days run short.
#[sqlx::test]
async fn doctor_counts_partitions_for_their_parent_and_warns_when_days_run_short(pool: PgPool) {
    let role = format!("doctor_app_{}", std::process::id());
    let report = doctor_as(
        &pool,
        &role,
        [
            format!(
                "grant select, insert, update, delete on all tables in schema public to {role}"
            ),
            // A day the owner makes later: no grant reaches it.
            "select create_day_partitions('2026-03-01', '2026-03-01')".to_owned(),
            format!(
                "alter table replies detach partition {}",
                (chrono::Utc::now() + chrono::Duration::days(1)).format("replies_p%Y%m%d")
            ),
        ],
    )
    .await;
    assert!(
        report.contains("database: partitions exist for only 0 day(s) after today"),
        "{report}"
    );
    assert!(!report.contains("cannot write"), "{report}");
}

/// doctor's report with the database as `role` (created, prepared by `setup` as the owner,
/// and dropped again: roles are cluster-wide), against a webhook URL nothing answers.
async fn doctor_as<const N: usize>(pool: &PgPool, role: &str, setup: [String; N]) -> String {
    let run = |sql: String| async move {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    };
    run(format!("create role {role} login")).await;
    for sql in setup {
        run(sql).await;
    }
    let url = database_url(pool).replacen("postgres@", &format!("{role}@"), 1);
    let out = doctor(
        &["--url", "http://127.0.0.1:9/twilio/messages"],
        &[("DATABASE_URL", &url)],
    )
    .await;
    run(format!("drop owned by {role}")).await;
    run(format!("drop role {role}")).await;
    text(&out)
}
