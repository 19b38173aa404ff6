//! Database failures answer 503 quickly (Twilio then calls the fallback URL) and the server
//! recovers by itself. The shared Postgres is never stopped: these tests use a closed port,
//! a pool held empty, or a lock.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use chrono::TimeZone as _;
use sqlx::PgPool;
use std::time::{Duration, Instant};

#[tokio::test]
async fn an_unreachable_database_is_503_fast_and_readiness_says_so() {
    let settings = settings(&[
        // Port 1 on loopback: nothing listens, connections are refused at once.
        (
            "TWILIO_RECEIVER__DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/none",
        ),
        ("TWILIO_RECEIVER__DATABASE__ACQUIRE_TIMEOUT_MS", "500"),
    ]);
    let pool = twilio_receiver::store::pool(&settings.database).unwrap();
    let app = TestApp::with_settings(pool, settings);

    let started = Instant::now();
    let response = app.post_text(1).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.body, "service unavailable\n");
    // acquire_timeout_ms + statement_timeout_ms is the promise; this is far inside it.
    assert!(
        started.elapsed() < Duration::from_millis(5500),
        "{:?}",
        started.elapsed()
    );

    let readyz = app
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(readyz.status, 503);
    let healthz = app
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(healthz.status, 200);
}

#[sqlx::test]
async fn an_exhausted_pool_is_503_and_recovers_when_connections_free_up(pool: PgPool) {
    let app = one_connection_app(&pool, "300");
    let held = app.app_db.acquire().await.unwrap();

    let response = app.post_text(1).await;
    assert_eq!(response.status, 503);

    drop(held);
    let response = app.post_text(1).await;
    assert_eq!(response.status, 200);
    assert_eq!(app.count("select count(*) from messages").await, 1);
}

/// The server's app with a pool of one connection.
fn one_connection_app(pool: &PgPool, acquire_timeout_ms: &str) -> TestApp {
    TestApp::with_own_pool(
        pool,
        &[
            ("TWILIO_RECEIVER__DATABASE__MAX_CONNECTIONS", "1"),
            (
                "TWILIO_RECEIVER__DATABASE__ACQUIRE_TIMEOUT_MS",
                acquire_timeout_ms,
            ),
        ],
    )
}

/// Posts text message `n` from `contact`, and returns the status it got.
async fn post_from(app: &TestApp, n: u32, contact: &str) -> u16 {
    let params = whatsapp_text(&sid(n), contact, "hi");
    app.post_signed("/twilio/messages", &params)
        .await
        .status
        .as_u16()
}

/// A group-commit writer keeps its connection only while webhooks keep coming for it: with a
/// single pooled connection, webhooks from contacts of both writers' shares, one after
/// another, are all stored (each writer waits a moment for the other to give it back), and
/// readiness still gets it.
#[sqlx::test]
async fn idle_writers_give_a_one_connection_pool_back(pool: PgPool) {
    let app = one_connection_app(&pool, "1000");
    for n in 1..=8 {
        let contact = format!("whatsapp:+1555000000{n}");
        assert_eq!(post_from(&app, n, &contact).await, 200, "webhook {n}");
    }
    let ready = app
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ready.status, 200);
    assert_eq!(app.count("select count(*) from messages").await, 8);
}

/// A steady stream of webhooks to one writer does not keep a one-connection pool from the
/// other: a writer keeps its connection idle only while the pool has another to give.
#[sqlx::test]
async fn a_busy_writer_does_not_keep_the_only_connection(pool: PgPool) {
    let app = one_connection_app(&pool, "300");
    let stream = async {
        for n in 100..600 {
            let status = post_from(&app, n, "whatsapp:+15550000001").await;
            assert_eq!(status, 200, "stream {n}");
        }
    };
    let others = async {
        for n in 2..=8 {
            let contact = format!("whatsapp:+1555000000{n}");
            assert_eq!(post_from(&app, n, &contact).await, 200, "contact {n}");
        }
    };
    tokio::join!(stream, others);
}

#[sqlx::test]
async fn a_statement_timeout_is_503_and_writes_nothing(pool: PgPool) {
    let app = TestApp::with_own_pool(
        &pool,
        &[("TWILIO_RECEIVER__DATABASE__STATEMENT_TIMEOUT_MS", "300")],
    );
    // Another session holds a lock the hot path needs, as a long migration or a stuck
    // report would.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("lock table conversations in access exclusive mode")
        .execute(&mut *locker)
        .await
        .unwrap();

    let started = Instant::now();
    let response = app.post_text(1).await;
    assert_eq!(response.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    locker.rollback().await.unwrap();
    assert_eq!(
        app.count("select count(*) from messages").await,
        0,
        "no partial rows"
    );
    let response = app.post_text(1).await;
    assert_eq!(response.status, 200);
}

/// The server's connections run without JIT (a growing table's generic plan would otherwise
/// be compiled on every execution, hundreds of milliseconds each), with generic plans (the
/// write statement is not planned again for every batch) and with the statement timeout
/// that keeps a stuck write inside Twilio's 15 s.
#[sqlx::test]
async fn the_servers_connections_have_jit_off_and_a_statement_timeout(pool: PgPool) {
    let app = TestApp::with_own_pool(
        &pool,
        &[("TWILIO_RECEIVER__DATABASE__STATEMENT_TIMEOUT_MS", "4321")],
    );
    let (jit, timeout, plans): (String, String, String) = sqlx::query_as(
        "select current_setting('jit'), current_setting('statement_timeout'),
                current_setting('plan_cache_mode')",
    )
    .fetch_one(&app.app_db)
    .await
    .unwrap();
    assert_eq!(jit, "off");
    assert_eq!(timeout, "4321ms");
    assert_eq!(plans, "force_generic_plan");
}

/// `serve` started while Postgres is unreachable: it answers 503 (healthz stays up), migrates
/// by itself once Postgres is reachable, and then stores webhooks, with no restart.
#[tokio::test]
async fn a_server_started_while_postgres_is_down_recovers_by_itself() {
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;
    use tower::ServiceExt;

    let real = PgConnectOptions::from_str(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    let upstream = format!("{}:{}", real.get_host(), real.get_port());
    // A port nothing listens on yet; later a forwarder to the real Postgres takes it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!("twr_late_{}", std::process::id());
    let url = format!("postgres://{}@127.0.0.1:{port}/{name}", real.get_username());
    let settings = settings(&[
        ("TWILIO_RECEIVER__DATABASE__URL", &url),
        ("TWILIO_RECEIVER__DATABASE__MIGRATE_ON_START", "true"),
        ("TWILIO_RECEIVER__DATABASE__ACQUIRE_TIMEOUT_MS", "500"),
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
    ]);

    let app = twilio_receiver::startup::Application::build(&settings)
        .await
        .expect("starts without Postgres");
    let send = |request| app.router().oneshot(request);
    let webhook = || {
        signed_post(
            &format!("{BASE}/twilio/messages"),
            "/twilio/messages",
            &whatsapp_text(&sid(1), "whatsapp:+15551234567", "hi"),
            TOKEN,
        )
    };
    assert_eq!(send(webhook()).await.unwrap().status(), 503);
    assert_eq!(
        send(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        send(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status(),
        200
    );

    // Postgres "comes back" on that port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let forwarder = tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let mut ready = app.schema_ready();
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .expect("migrated within 30 s of Postgres returning")
        .unwrap();

    assert_eq!(send(webhook()).await.unwrap().status(), 200);
    assert_eq!(
        send(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status(),
        200
    );

    forwarder.abort();
    let admin = sqlx::PgPool::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists \"{name}\" with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

/// The least-privilege role the README documents can run the server (every route, the
/// spool-free hot path) but not change the schema.
#[sqlx::test]
async fn the_documented_least_privilege_role_runs_the_server(pool: PgPool) {
    let role = format!("twr_app_{}", std::process::id());
    let db = pool.connect_options().get_database().unwrap().to_owned();
    // The README's statements, verbatim but for the names.
    for statement in [
        format!("create role {role} login password 'app-secret'"),
        format!("grant connect on database \"{db}\" to {role}"),
        format!("grant usage on schema public to {role}"),
        format!("grant select, insert, update, delete on all tables in schema public to {role}"),
        format!("grant usage on all sequences in schema public to {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .unwrap();
    }
    // Days are made by the owner (`migrate`, the owner's upkeep): the test clock's day.
    sqlx::query("select create_day_partitions('2026-03-01', '2026-03-01')")
        .execute(&pool)
        .await
        .unwrap();
    let url = database_url(&pool).replacen("://postgres@", &format!("://{role}:app-secret@"), 1);
    let settings = settings(&[("TWILIO_RECEIVER__DATABASE__URL", &url)]);
    let app_pool = twilio_receiver::store::pool(&settings.database).unwrap();
    let mut app = TestApp::with_settings(app_pool.clone(), settings);
    app.pool = pool.clone();

    assert_eq!(app.post_text(1).await.status, 200);
    let mut call = whatsapp_text(&sid(2), "whatsapp:+15551234567", "again");
    call.push(("ErrorCode".into(), "11200".into()));
    assert_eq!(app.post_signed("/twilio/fallback", &call).await.status, 200);
    assert_eq!(
        app.post_signed(
            "/twilio/status",
            &crate::status::callback(&sid(3), "sent", &[])
        )
        .await
        .status,
        204
    );
    assert_eq!(app.count("select count(*) from messages").await, 3);
    // It cannot change the schema: migrations need the owner, and so does making a day.
    assert!(
        sqlx::query("create table intruder (id int)")
            .execute(&app_pool)
            .await
            .is_err()
    );
    app.set_now(chrono::Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap());
    assert_eq!(
        app.post_text(4).await.status,
        503,
        "a day nobody made is an outage (spooled where there is a spool), not a 500"
    );
    app_pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("drop owned by {role}")))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("drop role {role}")))
        .execute(&pool)
        .await
        .unwrap();
}
