//! The server under abuse, on a real socket: slow clients, oversized heads, too many requests
//! at once.

use crate::helpers::*;
use axum::{body::Body, http::Request};
use sqlx::PgPool;
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};
use tower::ServiceExt;
use twilio_receiver::startup::Application;

/// A server on a real port for the test's database; stopped when the returned sender is used
/// or dropped.
async fn serve(pool: &PgPool, env: &[(&str, &str)]) -> (u16, oneshot::Sender<()>) {
    let url = database_url(pool);
    let mut env = env.to_vec();
    env.extend([
        ("TWILIO_RECEIVER__DATABASE__URL", url.as_str()),
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
    ]);
    let app = Application::build(&settings(&env)).await.unwrap();
    let port = app.port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (port, stop)
}

/// Reads until the server closes the connection (or `limit` passes) and returns what came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {limit:?}"
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[sqlx::test]
async fn a_client_trickling_its_headers_is_disconnected(pool: PgPool) {
    let (port, _stop) = serve(
        &pool,
        &[("TWILIO_RECEIVER__SERVER__HEADER_READ_TIMEOUT_MS", "300")],
    )
    .await;
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    slow.write_all(b"POST /twilio/messages HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();

    // Closed well before the 10 s a test would otherwise wait; nothing was answered.
    let answer = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(!answer.contains("200"), "{answer}");

    // Other clients are served meanwhile and after.
    let mut ok = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut ok, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[sqlx::test]
async fn oversized_headers_get_431(pool: PgPool) {
    let (port, _stop) = serve(
        &pool,
        &[("TWILIO_RECEIVER__SERVER__MAX_HEADER_BYTES", "16384")],
    )
    .await;
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "POST /twilio/messages HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    // The server may answer and close before it has read everything: ignore write errors.
    let _ = client.write_all(request.as_bytes()).await;
    let answer = read_until_closed(&mut client, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
}

#[sqlx::test]
async fn a_body_that_stops_arriving_gets_408_and_stores_nothing(pool: PgPool) {
    let (port, _stop) = serve(
        &pool,
        &[("TWILIO_RECEIVER__SERVER__BODY_READ_TIMEOUT_MS", "300")],
    )
    .await;
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    client
        .write_all(
            b"POST /twilio/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: x\r\nContent-Length: 500\r\n\r\nMessageSid=SM1&Body=",
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut head))
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 408");
    let stored: i64 = sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// A request whose body never arrives: it holds its concurrency slot while it waits.
fn stuck_request() -> Request<Body> {
    let (_tx, body) =
        futures::channel::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    // The sender is dropped only when the stream is, so leak it into the body's lifetime.
    std::mem::forget(_tx);
    Request::post("/twilio/messages")
        .header("content-type", FORM)
        .header("x-twilio-signature", "x")
        .body(Body::from_stream(body))
        .unwrap()
}

#[sqlx::test]
async fn requests_beyond_the_concurrency_cap_are_shed_with_503_and_counted(pool: PgPool) {
    let app = TestApp::with_env(
        pool,
        &[("TWILIO_RECEIVER__SERVER__MAX_CONCURRENT_REQUESTS", "2")],
    );
    let mut first = Box::pin(app.router.clone().oneshot(stuck_request()));
    let mut second = Box::pin(app.router.clone().oneshot(stuck_request()));
    // One poll each takes them past the cap check to their body read, where they wait.
    assert!(futures::poll!(&mut first).is_pending());
    assert!(futures::poll!(&mut second).is_pending());

    let shed = app.post_text(1).await;
    assert_eq!(shed.status, 503);
    assert_eq!(app.count("select count(*) from messages").await, 0);

    // A slot frees up: requests are served again.
    drop(first);
    assert_eq!(app.post_text(2).await.status, 200);
    drop(second);

    let metrics = app
        .admin
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(metrics.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("twilio_receiver_requests_shed_total 1\n"),
        "{text}"
    );
    // The shed request is counted once, under the route it was sent to (the middleware runs
    // inside the router, where the matched path is known), and so is the one served after it.
    let lines: Vec<&str> = text.lines().collect();
    for line in [
        r#"twilio_receiver_requests_total{route="/twilio/messages",status="503"} 1"#,
        r#"twilio_receiver_requests_total{route="/twilio/messages",status="200"} 1"#,
    ] {
        assert!(lines.contains(&line), "no line {line:?} in:\n{text}");
    }
    assert!(!text.contains(r#"route="unmatched""#), "{text}");
}

#[sqlx::test]
async fn connections_beyond_the_cap_wait_until_one_closes(pool: PgPool) {
    let (port, _stop) = serve(&pool, &[("TWILIO_RECEIVER__SERVER__MAX_CONNECTIONS", "1")]).await;
    // The one connection allowed: open, idle.
    let mut first = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    first.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // A second client gets through the kernel's backlog but is not served...
    let mut second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond max_connections");

    // ...until the first one goes.
    drop(first);
    let answer = read_until_closed(&mut second, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
