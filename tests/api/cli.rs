//! The binary's subcommands, run as a user runs them.

use crate::helpers::*;
use sqlx::PgPool;
use std::{
    io::Write,
    process::{Command, Output, Stdio},
};
use twilio_receiver::startup::Application;

/// Runs the binary with only `env` set (plus PATH), from the crate root, feeding `stdin`.
fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twilio-receiver"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const URL: &str = "https://hooks.example.test/twilio/messages";
const BODY: &str = "MessageSid=SM1&AccountSid=AC1&From=whatsapp%3A%2B15551234567&To=whatsapp%3A%2B14155238886&Body=hi";

#[test]
fn sign_then_verify_round_trips_and_tampering_is_explained() {
    let signed = run(&["sign", "--url", URL, "--token", "tok"], &[], BODY);
    assert_eq!(signed.status.code(), Some(0), "{signed:?}");
    let sig = stdout(&signed).trim().to_owned();
    assert_eq!(sig.len(), 28);

    let ok = run(
        &[
            "verify",
            "--url",
            URL,
            "--signature",
            &sig,
            "--token",
            "x",
            "--token",
            "tok",
        ],
        &[],
        BODY,
    );
    assert_eq!(
        (ok.status.code(), stdout(&ok).as_str()),
        (Some(0), "valid\n")
    );

    let cases = [
        (
            URL,
            sig.as_str(),
            "Body=changed",
            "no candidate URL matched",
        ),
        (
            "https://other.test/twilio/messages",
            sig.as_str(),
            BODY,
            "no candidate URL matched",
        ),
        (URL, "", BODY, "no X-Twilio-Signature header"),
        (URL, "***", BODY, "not valid base64"),
    ];
    for (url, sig, body, reason) in cases {
        let out = run(
            &["verify", "--url", url, "--signature", sig, "--token", "tok"],
            &[],
            body,
        );
        assert_eq!(out.status.code(), Some(1), "{reason}");
        assert!(stdout(&out).contains(reason), "{reason}: {}", stdout(&out));
    }
}

#[test]
fn verify_uses_configured_tokens_and_checks_json_body_hashes() {
    let body = r#"{"MessageSid":"SM1"}"#;
    let needs_hash = run(
        &[
            "sign",
            "--url",
            URL,
            "--token",
            "tok",
            "--content-type",
            "application/json",
        ],
        &[],
        body,
    );
    assert_eq!(needs_hash.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&needs_hash.stderr).into_owned();
    let url = stderr
        .split("use this URL: ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert!(url.contains("bodySHA256="), "{stderr}");

    let sig = stdout(&run(
        &["sign", "--url", &url, "--content-type", "application/json"],
        &[("TWILIO_AUTH_TOKEN", "tok")],
        body,
    ));
    let sig = sig.trim();
    let env = [("TWILIO_AUTH_TOKEN", "tok")];
    let ok = run(
        &[
            "verify",
            "--url",
            &url,
            "--signature",
            sig,
            "--content-type",
            "application/json",
        ],
        &env,
        body,
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let forged = run(
        &[
            "verify",
            "--url",
            &url,
            "--signature",
            sig,
            "--content-type",
            "application/json",
        ],
        &env,
        r#"{"MessageSid":"SM2"}"#,
    );
    assert_eq!(forged.status.code(), Some(1));
    assert!(
        stdout(&forged).contains("bodySHA256"),
        "{}",
        stdout(&forged)
    );
}

#[test]
fn fixtures_signed_by_twilio_python_verify_through_the_command() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/twilio_python_signatures.json")).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let f = |k: &str| case[k].as_str().unwrap();
        let mut args = vec![
            "verify",
            "--url",
            f("url"),
            "--signature",
            f("signature"),
            "--token",
            f("token"),
            "--content-type",
            f("content_type"),
        ];
        if let Some(settings) = case["signature_settings"].as_str() {
            args.extend(["--signature-settings", settings]);
        }
        let out = run(&args, &[], f("body"));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            f("name"),
            stdout(&out)
        );
    }
}

#[test]
fn usage_errors_exit_2_and_every_command_has_help() {
    assert_eq!(run(&["no-such-command"], &[], "").status.code(), Some(2));
    assert_eq!(
        run(&["verify", "--url", URL], &[], "").status.code(),
        Some(2)
    );
    assert_eq!(
        run(&["sign", "--url", URL], &[], "").status.code(),
        Some(2),
        "no token anywhere"
    );
    for command in [
        "serve",
        "migrate",
        "check-config",
        "sign",
        "verify",
        "healthcheck",
    ] {
        let help = run(&[command, "--help"], &[], "");
        assert_eq!(help.status.code(), Some(0), "{command}");
        assert!(stdout(&help).contains("--config"), "{command}");
    }
}

#[test]
fn check_config_reports_problems_and_never_prints_secrets() {
    let good = run(
        &["check-config"],
        &[
            ("TWILIO_AUTH_TOKEN", "sekrit"),
            ("DATABASE_URL", "postgres://app:pa55@db/x"),
        ],
        "",
    );
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let printed = stdout(&good);
    assert!(printed.contains("[redacted]"));
    assert!(
        !printed.contains("sekrit") && !printed.contains("pa55"),
        "{printed}"
    );

    let bad = run(
        &["check-config"],
        &[("TWILIO_RECEIVER__SERVER__LISTEN", "nowhere")],
        "",
    );
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("twilio.auth_tokens"),
        "{stderr}"
    );
}

#[sqlx::test]
async fn migrate_creates_a_missing_database_and_healthcheck_follows_the_server(pool: PgPool) {
    // migrate: a database that does not exist yet is created and migrated.
    // Postgres truncates names to 63 bytes, so the fresh name is short rather than derived.
    let test_url = database_url(&pool);
    let fresh_name = format!("twr_fresh_{}", std::process::id());
    let url = format!("{}/{fresh_name}", &test_url[..test_url.rfind('/').unwrap()]);
    let out = run(&["migrate"], &[("DATABASE_URL", &url)], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh: PgPool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_name = 'messages'",
    )
    .fetch_one(&fresh)
    .await
    .unwrap();
    assert_eq!(tables, 1);
    fresh.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database \"{fresh_name}\""
    )))
    .execute(&pool)
    .await
    .unwrap();

    // healthcheck: 0 while a real server answers on the configured port, 1 once it stopped.
    let settings = settings(&[
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
        ("TWILIO_RECEIVER__DATABASE__URL", &database_url(&pool)),
    ]);
    let app = Application::build(&settings).await.unwrap();
    let listen = format!("127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let healthcheck = |listen: String| {
        tokio::task::spawn_blocking(move || {
            run(
                &["healthcheck"],
                &[("TWILIO_RECEIVER__SERVER__LISTEN", &listen)],
                "",
            )
        })
    };
    let healthy = healthcheck(listen.clone()).await.unwrap();
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let down = healthcheck(listen).await.unwrap();
    assert_eq!(down.status.code(), Some(1));
}

#[test]
fn check_config_names_the_file_rule_and_reason_of_each_rules_problem() {
    let path = crate::rules::rules_file(
        "bad-cli",
        r#"
        timezone = "Nowhere/City"
        [[rules]]
        name = "dup"
        reply = { body = "a" }
        [[rules]]
        name = "dup"
        when = { body_matches = "(" }
        reply = []
        [[rules]]
        name = "tpl"
        reply = { body = "Hi {{ first_name }}" }
        [[rules]]
        name = "syntax"
        reply = { body = "{% if %}" }
        [[rules]]
        name = "hours"
        when = { outside_hours = { tz = "UTC", days = "mon", from = "18:00", to = "09:00" } }
        reply = []
        [[rules]]
        name = "time"
        when = { within_hours = { tz = "UTC", days = "mon", from = "25:00", to = "26:00" } }
        reply = []
        [[rules]]
        name = "limit"
        limit = { count = 1, per = "forever" }
        reply = []
        [[rules]]
        name = "media"
        reply = { body = "x", media = ["https://a.example/1.png", "https://a.example/2.png"] }
        [[rules]]
        name = "keys"
        when = { sender = "x" }
        reply = []
        [[rules]]
        name = "item-keys"
        reply = { body = "x", attachment = "y" }
        "#,
    );
    let file = path.to_str().unwrap();
    let out = run(
        &["check-config"],
        &[
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_RECEIVER__RULES__PATH", file),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{file}: unknown time zone"),
        format!("{file}: rule `dup`: duplicate rule name"),
        format!("{file}: rule `dup`: bad regex"),
        format!("{file}: rule `tpl`: reply #1: body uses unknown variable(s) first_name"),
        format!("{file}: rule `hours`: outside_hours: impossible hour range"),
        format!("{file}: rule `media`: reply #1: 2 media items"),
        format!("{file}: rule `keys`: unknown field `sender`"),
        format!("{file}: rule `syntax`: reply #1: bad template in body"),
        format!("{file}: rule `time`: within_hours: impossible time"),
        format!("{file}: rule `limit`: limit.per: not a duration"),
        format!("{file}: rule `item-keys`: unknown field `attachment`"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let good = run(
        &["check-config"],
        &[
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_RECEIVER__RULES__PATH", "config/rules.example.toml"),
        ],
        "",
    );
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}

/// One HTTP/1.1 POST over a plain socket; returns the response body.
fn post(addr: &str, path: &str, params: &[(String, String)]) -> String {
    use std::io::Read;
    let body = serde_urlencoded::to_string(params).unwrap();
    let signature = twilio_receiver::twilio::signature::compute(
        TOKEN.as_bytes(),
        &format!("{BASE}{path}"),
        params,
    );
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM}\r\nX-Twilio-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// SIGHUP reloads the rules file of a running server; a bad file keeps the old rules. The
/// server runs as a child process, so the signal reaches it alone.
#[sqlx::test]
async fn sighup_reloads_the_rules_and_a_bad_file_keeps_the_old_ones(pool: PgPool) {
    let url = database_url(&pool);
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let rules = |reply: &str| format!("[[rules]]\nname = \"ping\"\nwhen = {{ keywords = \"PING\" }}\nreply = {{ body = \"{reply}\" }}\n");
        let path = crate::rules::rules_file("sighup", &rules("pong-1"));
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
                ("TWILIO_RECEIVER__RULES__PATH", path.to_str().unwrap()),
                ("TWILIO_RECEIVER__LOG__FORMAT", "json"),
                ("TWILIO_RECEIVER__SPOOL__DIR", ""),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Reads log lines until one with `message`, returning it.
        let mut wait_for = |message: &str| -> serde_json::Value {
            for line in lines.by_ref() {
                let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                if line["fields"]["message"] == message {
                    return line;
                }
            }
            panic!("the server exited before logging {message:?}");
        };
        let addr = wait_for("listening")["fields"]["addr"].as_str().unwrap().to_owned();
        let hup = || {
            let ok = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
            assert!(ok.success());
        };
        let ping = |n| post(&addr, "/twilio/messages", &whatsapp_text(&sid(n), "whatsapp:+15551234567", "PING"));

        assert!(ping(1).contains("<Body>pong-1</Body>"));
        std::fs::write(&path, rules("pong-2")).unwrap();
        hup();
        wait_for("rules reloaded");
        assert!(ping(2).contains("<Body>pong-2</Body>"));
        std::fs::write(&path, "[[rules]]\nname = \"broken\"\nwhen = { body_matches = \"(\" }\nreply = []\n").unwrap();
        hup();
        let refused = wait_for("rules file has problems; keeping the previous rules");
        assert!(refused["fields"]["problems"].as_str().unwrap().contains("bad regex"));
        assert!(ping(3).contains("<Body>pong-2</Body>"));

        child.kill().unwrap();
        child.wait().unwrap();
    })
    .await
    .unwrap();
}

const ANA: &str = "whatsapp:+15551234567";
const BOB: &str = "whatsapp:+15557654321";

/// Ana: a photo (message 1), STOP, a fallback call, a delivered outbound message. Bob: "hi".
async fn two_contacts_history(app: &TestApp) {
    let mut photo = whatsapp_text(&sid(1), ANA, "");
    photo.extend(pairs(&[
        ("MediaUrl0", "https://api.twilio.com/m/ME1"),
        ("MediaContentType0", "image/jpeg"),
    ]));
    app.post_signed("/twilio/messages", &photo).await;
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(2), ANA, "STOP"))
        .await;
    let mut fallback = whatsapp_text(&sid(3), ANA, "again");
    fallback.push(("ErrorCode".into(), "11200".into()));
    app.post_signed("/twilio/fallback", &fallback).await;
    let delivered = crate::status::callback("SM99999999999999999999999999999999", "delivered", &[]);
    app.post_signed("/twilio/status", &delivered).await;
    app.post_signed("/twilio/messages", &whatsapp_text(&sid(4), BOB, "hi"))
        .await;
}

/// Message 1's photo, archived as a file under `dir` (file storage).
async fn archive_first_photo(pool: &PgPool, dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join(sid(1))).unwrap();
    std::fs::write(dir.join(sid(1)).join("0"), "jpeg").unwrap();
    sqlx::query("update message_media set archive_state = 'stored', storage_key = $1 where message_sid = $2")
        .bind(format!("{}/0", sid(1)))
        .bind(sid(1))
        .execute(pool)
        .await
        .unwrap();
}

/// `erase --contact` removes everything about one contact, archived files included, and
/// leaves everyone else alone.
#[sqlx::test]
async fn erase_removes_one_contact_everywhere_and_nothing_else(pool: PgPool) {
    let rules = std::fs::canonicalize("config/rules.toml").unwrap();
    let app = TestApp::with_env(
        pool.clone(),
        &[("TWILIO_RECEIVER__RULES__PATH", rules.to_str().unwrap())],
    );
    let (ana, bob) = (ANA, BOB);
    two_contacts_history(&app).await;
    let dir = scratch_dir("erase-media");
    archive_first_photo(&pool, &dir).await;

    // And the spool holds a webhook from each of them, waiting for a replay.
    let spool_dir = scratch_dir("erase-spool");
    let spool = twilio_receiver::spool::Spool::open(
        &spool_dir,
        std::sync::Arc::new(twilio_receiver::metrics::Metrics::new()),
    )
    .unwrap();
    for (n, who) in [(7, ana), (8, bob)] {
        spool
            .append(twilio_receiver::spool::Record {
                id: String::new(),
                kind: twilio_receiver::twilio::Kind::Inbound,
                received_at: app.now(),
                params: whatsapp_text(&sid(n), who, "spooled"),
                query: vec![],
                base: BASE.into(),
                answered: None,
            })
            .await
            .unwrap();
    }

    let url = database_url(&pool);
    let storage = format!("file://{}", dir.display());
    let spool_setting = spool_dir.to_str().unwrap().to_owned();
    let history = format!("select count(*) from consent_events where contact = '{ana}'");
    assert_eq!(app.count(&history).await, 1, "her opt-out is history");
    let out = tokio::task::spawn_blocking(move || {
        run(
            &["erase", "--contact", ana],
            &[
                ("TWILIO_RECEIVER__DATABASE__URL", &url),
                ("TWILIO_RECEIVER__MEDIA__STORAGE", &storage),
                ("TWILIO_RECEIVER__SPOOL__DIR", &spool_setting),
            ],
            "",
        )
    })
    .await
    .unwrap();

    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = stdout(&out);
    assert!(
        printed.contains("4 messages, 1 media rows, 1 status events, 1 fallback calls, 3 replies, 1 sessions, 1 conversations, 1 consent rows"),
        "{printed}"
    );
    assert!(printed.contains("deleted 1 archived files"), "{printed}");
    assert!(printed.contains("erased 1 spooled webhooks"), "{printed}");
    assert_eq!(
        spool.pending().unwrap().len(),
        1,
        "Bob's spooled webhook stays"
    );
    assert!(!dir.join(sid(1)).join("0").exists());
    for table in [
        "messages",
        "sessions",
        "conversations",
        "consent",
        "consent_events",
    ] {
        let left = app
            .count(&format!(
                "select count(*) from {table} where contact = '{ana}'"
            ))
            .await;
        assert_eq!(left, 0, "{table}");
    }
    assert_eq!(
        app.count("select count(*) from message_status_events")
            .await,
        0
    );
    assert_eq!(app.count("select count(*) from webhook_failures").await, 0);
    assert_eq!(
        app.count(&format!(
            "select count(*) from messages where contact = '{bob}'"
        ))
        .await,
        1
    );
    assert_eq!(
        app.count("select count(*) from replies").await,
        1,
        "Bob's reply stays"
    );
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(spool_dir).unwrap();
}

/// `prune --older-than` deletes old history in small batches, archived files included, keeps
/// consent, and keeps whatever a recent message still needs.
#[sqlx::test]
async fn prune_deletes_old_history_in_batches_and_keeps_what_is_recent(pool: PgPool) {
    let rules = std::fs::canonicalize("config/rules.toml").unwrap();
    let app = TestApp::with_env(
        pool.clone(),
        &[("TWILIO_RECEIVER__RULES__PATH", rules.to_str().unwrap())],
    );
    let bob = BOB;
    // Long ago (the test clock starts in March 2026): Ana's whole history, Bob's first message.
    two_contacts_history(&app).await;
    // Yesterday: Bob again.
    app.set_now(chrono::Utc::now() - chrono::Duration::days(1));
    app.post_signed(
        "/twilio/messages",
        &whatsapp_text(&sid(5), bob, "still there?"),
    )
    .await;
    let dir = scratch_dir("prune-media");
    archive_first_photo(&pool, &dir).await;

    let url = database_url(&pool);
    let storage = format!("file://{}", dir.display());
    let out = tokio::task::spawn_blocking(move || {
        run(
            &["prune", "--older-than", "90d", "--batch", "2"],
            &[
                ("TWILIO_RECEIVER__DATABASE__URL", &url),
                ("TWILIO_RECEIVER__MEDIA__STORAGE", &storage),
            ],
            "",
        )
    })
    .await
    .unwrap();

    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = stdout(&out);
    assert!(
        printed.contains(
            ": 5 messages, 1 status events, 1 fallback calls, 2 sessions, 1 conversations"
        ),
        "{printed}"
    );
    assert!(printed.contains("deleted 1 archived files"), "{printed}");
    assert!(!dir.join(sid(1)).join("0").exists());
    let left: Vec<String> = sqlx::query_scalar("select message_sid from messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, vec![sid(5)]);
    for (sql, expected) in [
        ("select count(*) from message_media", 0),
        ("select count(*) from replies", 1),
        ("select count(*) from message_status_events", 0),
        ("select count(*) from webhook_failures", 0),
        // Bob's conversation and his current window stay; Ana's conversation goes.
        ("select count(*) from conversations", 1),
        ("select count(*) from sessions", 1),
        // An opt-out is honoured however old it is.
        ("select count(*) from consent where state = 'opted_out'", 1),
        // So does its history, however old.
        ("select count(*) from consent_events", 1),
    ] {
        assert_eq!(app.count(sql).await, expected, "{sql}");
    }
    std::fs::remove_dir_all(dir).unwrap();

    let usage = run(&["prune", "--older-than", "90"], &[], "");
    assert_eq!(usage.status.code(), Some(2));
}
