//! SIGTERM under load, against the real binary: stop accepting, finish what is in flight,
//! exit 0, and every 2xx has its rows.

use crate::helpers::*;
use sqlx::PgPool;
use std::{
    io::BufRead,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running `serve` process.
pub struct Server {
    pub child: std::process::Child,
    /// The public listener's address.
    pub addr: String,
    /// The admin listener's address (`/metrics`).
    pub admin: String,
    /// Its log lines (JSON, one per line) as they come.
    pub logs: mpsc::Receiver<serde_json::Value>,
}

/// Starts `serve` for the test's database.
pub fn spawn_server(pool: &PgPool, env: &[(&str, &str)]) -> Server {
    let url = database_url(pool);
    let mut child = Command::new(env!("CARGO_BIN_EXE_twilio-receiver"))
        .arg("serve")
        .env_clear()
        .envs([
            ("TWILIO_AUTH_TOKEN", TOKEN),
            ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", BASE),
            ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
            ("TWILIO_RECEIVER__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
            ("TWILIO_RECEIVER__DATABASE__URL", url.as_str()),
            ("TWILIO_RECEIVER__DATABASE__MIGRATE_ON_START", "false"),
            ("TWILIO_RECEIVER__LOG__FORMAT", "json"),
            ("TWILIO_RECEIVER__SPOOL__DIR", ""),
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // log.format = "json": every line is one JSON object.
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            let _ = tx.send(value);
        }
    });
    let addr_of = |message| {
        wait_for_log(&rx, message)["fields"]["addr"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let admin = addr_of("admin listening (/metrics)");
    let addr = addr_of("listening");
    Server {
        child,
        addr,
        admin,
        logs: rx,
    }
}

/// The warnings and errors a server has logged so far (to show when a test fails).
pub fn warnings(rx: &mpsc::Receiver<serde_json::Value>) -> Vec<String> {
    rx.try_iter()
        .filter(|line| matches!(line["level"].as_str(), Some("WARN" | "ERROR")))
        .map(|line| line.to_string())
        .collect()
}

pub fn wait_for_log(rx: &mpsc::Receiver<serde_json::Value>, message: &str) -> serde_json::Value {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no log line {message:?} within 30 s"));
        if line["fields"]["message"] == message {
            return line;
        }
    }
}

async fn post(
    client: &reqwest::Client,
    addr: &str,
    params: &[(String, String)],
) -> Result<(u16, String), reqwest::Error> {
    let response = post_over_http(client, addr, "/twilio/messages", params).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

#[sqlx::test]
async fn sigterm_under_load_finishes_in_flight_requests_and_exits_0(pool: PgPool) {
    let Server {
        mut child,
        addr,
        admin,
        logs,
    } = spawn_server(
        &pool,
        &[
            ("TWILIO_RECEIVER__SERVER__SHUTDOWN_GRACE_MS", "20000"),
            ("TWILIO_RECEIVER__SERVER__REQUEST_TIMEOUT_MS", "14000"),
            ("TWILIO_RECEIVER__DATABASE__STATEMENT_TIMEOUT_MS", "20000"),
        ],
    );
    let client = reqwest::Client::new();

    // Background load for the whole test: each request is answered 200 or not at all.
    let load: Vec<_> = (0..4u32)
        .map(|worker| {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for i in 0..u32::MAX {
                    let n = 1_000 + worker * 100_000 + i;
                    let contact = format!("whatsapp:+1555{n:07}");
                    match post(&client, &addr, &whatsapp_text(&sid(n), &contact, "hi")).await {
                        Ok((status, _)) => answered.push((n, status)),
                        Err(_) => break,
                    }
                }
                answered
            })
        })
        .collect();

    // Hold the table every inbound message writes, so the next requests wait in flight.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("lock table conversations in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let in_flight: Vec<_> = (1..=8u32)
        .map(|n| {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                post(
                    &client,
                    &addr,
                    &whatsapp_text(&sid(n), "whatsapp:+15551234567", "hi"),
                )
                .await
            })
        })
        .collect();
    // Every request (8 + up to 4 of the load) is waiting for the lock: queued for a
    // group-commit writer, or inside the writer's transaction.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = client
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let waiting: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("twilio_receiver_group_commit_waiting "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if waiting >= 12.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests never reached the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for_log(&logs, "shutting down");
    // New connections are refused from now on (after the loop notices the signal)...
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections");
        tokio::task::yield_now().await;
    }
    // ...while the requests in flight are still being served.
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with requests in flight"
    );
    lock.commit().await.unwrap();

    for request in in_flight {
        let (status, body) = request.await.unwrap().expect("in-flight request answered");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<Response"), "{body}");
    }
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    // The request lines carry the request span's fields.
    // (The reader ends at the exited child's EOF, so this sees every line.)
    let stored: Vec<serde_json::Value> = logs
        .iter()
        .filter(|l| l["fields"]["message"] == "stored inbound message")
        .collect();
    assert!(stored.len() >= 8);
    for line in &stored {
        assert_eq!(line["span"]["path"], "/twilio/messages", "{line}");
        assert!(
            line["span"]["message_sid"]
                .as_str()
                .unwrap()
                .starts_with("SM"),
            "{line}"
        );
        assert!(
            !line["span"]["request_id"].as_str().unwrap().is_empty(),
            "{line}"
        );
    }

    let mut acknowledged = 8;
    for worker in load {
        for (n, status) in worker.await.unwrap() {
            assert_eq!(status, 200, "load request {n}");
            let rows: i64 = sqlx::query_scalar(
                "select count(*) from messages m join replies r using (message_sid) where m.message_sid = $1",
            )
            .bind(sid(n))
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(
                rows, 1,
                "message {n} was answered 200 but is not stored whole"
            );
            acknowledged += 1;
        }
    }
    let stored: i64 = sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Nothing unacknowledged half-written either: one message row per 200, a reply per row.
    assert_eq!(stored, acknowledged);
    let replies: i64 = sqlx::query_scalar("select count(*) from replies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(replies, stored);
}
