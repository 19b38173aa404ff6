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
        let out = run(
            &[
                "verify",
                "--url",
                f("url"),
                "--signature",
                f("signature"),
                "--token",
                f("token"),
                "--content-type",
                f("content_type"),
            ],
            &[],
            f("body"),
        );
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
