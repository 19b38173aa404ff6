//! Slow fault tests: a private Postgres cluster (made with `initdb`, run as the `postgres`
//! user when the tests run as root) is stopped and restarted, or stalled, under load. They
//! never touch the shared server the rest of the suite uses, and print what they measured.
//!
//! Run: `cargo test --release --test faults -- --ignored --nocapture --test-threads 1`
//! (needs PostgreSQL's server binaries; PG_BIN points at them if they are not in
//! /usr/lib/postgresql/<version>/bin).

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use twilio_receiver::{
    config::{Settings, Sources},
    startup::Application,
    twilio::signature,
};

const TOKEN: &str = "fault-token";
const BASE: &str = "https://hooks.example.test";
const FORM: &str = "application/x-www-form-urlencoded";

/// A Postgres cluster of the test's own, removed when dropped.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    fn new(name: &str) -> Self {
        let bin = std::env::var_os("PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .expect("PostgreSQL server binaries (set PG_BIN)")
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|p| p.join("initdb").exists())
                    .collect();
                versions.sort();
                versions.pop().expect("an initdb under /usr/lib/postgresql")
            });
        let uid = Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = std::env::temp_dir().join(format!("twr-fault-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            bin,
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            // initdb refuses to run as root.
            assert!(
                Command::new("chown")
                    .args(["postgres:postgres", cluster.dir.to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let data = cluster.data();
        cluster.run(&[
            "initdb",
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let program = self.bin.join(args[0]);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(&args[1..]);
        command
    }

    fn run(&self, args: &[&str]) {
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").to_str().unwrap().to_owned();
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    /// As a crash or a kill would: no clean shutdown, connections cut.
    fn stop_immediately(&self) {
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/twilio_receiver",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command(&["pg_ctl", "-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn settings(env: &[(&str, &str)]) -> Settings {
    let mut vars: std::collections::HashMap<String, String> = [
        ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", BASE),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:0"),
        ("TWILIO_RECEIVER__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
        (
            "TWILIO_RECEIVER__REPLY__FALLBACK_BODY",
            "Thanks, we will get back to you",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::load(&Sources {
        config_dir: PathBuf::from("/nonexistent"),
        config_file: None,
        env: vars,
    })
    .unwrap()
}

fn sid(n: u32) -> String {
    format!("SM{n:032x}")
}

/// A WhatsApp text; with `media`, a photo at that base URL (one message in ten).
fn inbound_with_media(n: u32, media: Option<&str>) -> Vec<(String, String)> {
    let mut params = inbound(n);
    if let Some(base) = media.filter(|_| n.is_multiple_of(10)) {
        params.retain(|(k, _)| k != "NumMedia");
        params.push(("NumMedia".into(), "1".into()));
        params.push(("MediaUrl0".into(), format!("{base}/media/{n}")));
        params.push(("MediaContentType0".into(), "image/jpeg".into()));
    }
    params
}

/// Serves a small JPEG-ish body for any path, as Twilio's media URLs do.
async fn media_host() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "image/jpeg")],
            vec![0xffu8; 2048],
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn inbound(n: u32) -> Vec<(String, String)> {
    let s = sid(n);
    let contact = format!("whatsapp:+1555{:07}", n % 1000);
    [
        ("MessageSid", s.as_str()),
        ("SmsMessageSid", s.as_str()),
        ("SmsSid", s.as_str()),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", contact.as_str()),
        ("To", "whatsapp:+14155238886"),
        ("Body", "hello"),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("MessageType", "text"),
        ("ProfileName", "Ana"),
        ("WaId", &contact[10..]),
        ("SmsStatus", "received"),
        ("ApiVersion", "2010-04-01"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn status(n: u32) -> Vec<(String, String)> {
    let s = format!("SM{:032x}", u64::from(n) + (1 << 40));
    [
        ("MessageSid", s.as_str()),
        ("SmsSid", s.as_str()),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", "whatsapp:+14155238886"),
        ("To", "whatsapp:+15550000001"),
        ("MessageStatus", "delivered"),
        ("SmsStatus", "delivered"),
        ("ChannelPrefix", "whatsapp"),
        ("ApiVersion", "2010-04-01"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

async fn post(
    client: &reqwest::Client,
    port: u16,
    path: &str,
    params: &[(String, String)],
) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let response = client
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", FORM)
        .header(
            "x-twilio-signature",
            signature::compute(TOKEN.as_bytes(), &format!("{BASE}{path}"), params),
        )
        .body(serde_urlencoded::to_string(params).unwrap())
        .send()
        .await
        .ok()?;
    let code = response.status().as_u16();
    let _ = response.bytes().await;
    Some((code, started.elapsed()))
}

/// What one simulated Twilio request got.
#[derive(Debug, Clone)]
struct Outcome {
    n: u32,
    primary: Option<(u16, Duration)>,
    fallback: Option<(u16, Duration)>,
    status: Option<(u16, Duration)>,
    during_outage: bool,
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: cargo test --release --test faults -- --ignored --nocapture"]
async fn postgres_stopped_and_restarted_under_load_loses_nothing() {
    let cluster = Cluster::new("restart");
    cluster.start();
    let spool = std::env::temp_dir().join(format!("twr-fault-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let archive = std::env::temp_dir().join(format!("twr-fault-media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&archive);
    let media = media_host().await;
    let url = cluster.url();
    let storage = format!("file://{}", archive.display());
    // The media archive runs too: its workers must ride out the outage as well.
    let settings = settings(&[
        ("TWILIO_RECEIVER__DATABASE__URL", &url),
        ("TWILIO_RECEIVER__SPOOL__DIR", spool.to_str().unwrap()),
        ("TWILIO_RECEIVER__MEDIA__ARCHIVE", "true"),
        ("TWILIO_RECEIVER__MEDIA__STORAGE", &storage),
        ("TWILIO_RECEIVER__MEDIA__CREDENTIAL_HOSTS", "127.0.0.1"),
        ("TWILIO_RECEIVER__MEDIA__ALLOW_INSECURE_LOOPBACK", "true"),
        ("TWILIO_RECEIVER__MEDIA__RETRY_BASE_MS", "200"),
    ]);
    let app = Application::build(&settings).await.unwrap();
    let port = app.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let outage = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let client = reqwest::Client::new();
    let workers: Vec<_> = (0..16u32)
        .map(|w| {
            let (client, outage, running, outcomes, media) = (
                client.clone(),
                outage.clone(),
                running.clone(),
                outcomes.clone(),
                media.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while running.load(Ordering::Relaxed) {
                    let n = w * 1_000_000 + i;
                    i += 1;
                    let during_outage = outage.load(Ordering::Relaxed);
                    let message = inbound_with_media(n, Some(&media));
                    let primary = post(&client, port, "/twilio/messages", &message).await;
                    // As Twilio does: a failed primary call is followed by the fallback call.
                    let fallback = if primary.is_some_and(|(code, _)| code == 200) {
                        None
                    } else {
                        let mut call = message.clone();
                        call.push(("ErrorCode".into(), "11200".into()));
                        call.push(("ErrorUrl".into(), format!("{BASE}/twilio/messages")));
                        post(&client, port, "/twilio/fallback", &call).await
                    };
                    let status = post(&client, port, "/twilio/status", &status(n)).await;
                    outcomes.lock().unwrap().push(Outcome {
                        n,
                        primary,
                        fallback,
                        status,
                        during_outage,
                    });
                }
            })
        })
        .collect();

    // Fault timeline: 2 s of traffic, Postgres down for 4 s, then 3 s more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    outage.store(true, Ordering::Relaxed);
    cluster.stop_immediately();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.start();
    outage.store(false, Ordering::Relaxed);
    let outage_took = down_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let spooled_at_end = count_files(&spool);
    let drain_started = Instant::now();
    while count_files(&spool) > 0 {
        assert!(
            drain_started.elapsed() < Duration::from_secs(120),
            "the spool did not drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_in = drain_started.elapsed();
    // Every photo of a stored message ends up archived, outage or not.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let archived_in = loop {
        let pending: i64 = sqlx::query_scalar(
            "select count(*) from message_media where archive_state = 'pending'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if pending == 0 {
            break drain_started.elapsed();
        }
        // Well inside a job's 90 s lease: a worker whose outcome could not be written during
        // the outage writes it once Postgres is back, instead of leaving the job leased.
        assert!(
            drain_started.elapsed() < Duration::from_secs(30),
            "media still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (media_rows, media_stored): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where archive_state = 'stored') from message_media",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // Every 2xx has its rows.
    let outcomes = outcomes.lock().unwrap().clone();
    let mut lost = 0;
    let ok = |r: &Option<(u16, Duration)>, code: u16| r.is_some_and(|(c, _)| c == code);
    for o in &outcomes {
        let message: i64 = sqlx::query_scalar(
            "select count(*) from messages m join replies r using (message_sid) where m.message_sid = $1",
        )
        .bind(sid(o.n))
        .fetch_one(&db)
        .await
        .unwrap();
        if (ok(&o.primary, 200) || ok(&o.fallback, 200)) && message != 1 {
            lost += 1;
        }
        if ok(&o.fallback, 200) {
            let failures: i64 =
                sqlx::query_scalar("select count(*) from webhook_failures where message_sid = $1")
                    .bind(sid(o.n))
                    .fetch_one(&db)
                    .await
                    .unwrap();
            if failures == 0 {
                lost += 1;
            }
        }
        if ok(&o.status, 204) {
            let events: i64 = sqlx::query_scalar(
                "select count(*) from message_status_events where message_sid = $1",
            )
            .bind(status(o.n)[0].1.clone())
            .fetch_one(&db)
            .await
            .unwrap();
            if events != 1 {
                lost += 1;
            }
        }
    }
    let outage_503: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.during_outage)
        .filter_map(|o| o.primary.filter(|(c, _)| *c == 503).map(|(_, t)| t))
        .collect();
    let other_codes: Vec<(u32, Option<(u16, Duration)>)> = outcomes
        .iter()
        .filter(|o| !o.primary.is_some_and(|(c, _)| c == 200 || c == 503))
        .map(|o| (o.n, o.primary))
        .collect();
    let acknowledged = outcomes
        .iter()
        .filter(|o| ok(&o.primary, 200) || ok(&o.fallback, 200))
        .count();
    println!(
        "postgres restart under load: {} webhooks ({} messages acknowledged, {} during the outage), \
         outage {:.1} s, primary 503 latency during the outage p50 {:?} p99 {:?} max {:?}, \
         spooled at end of load {}, drained in {:?}, media archived {media_stored}/{media_rows} \
         (done {archived_in:?} after the load), rows lost: {lost}",
        outcomes.len() * 2,
        acknowledged,
        outcomes.iter().filter(|o| o.during_outage).count(),
        outage_took.as_secs_f64(),
        percentile(outage_503.clone(), 0.5),
        percentile(outage_503.clone(), 0.99),
        percentile(outage_503.clone(), 1.0),
        spooled_at_end,
        drained_in,
    );
    assert_eq!(lost, 0);
    assert!(media_rows > 0);
    assert_eq!(media_stored, media_rows, "every photo archived");
    assert!(!outage_503.is_empty(), "the outage was not observed");
    assert!(
        percentile(outage_503, 1.0) < Duration::from_secs(3),
        "a 503 took longer than 3 s"
    );
    assert!(
        other_codes.is_empty(),
        "unexpected answers: {other_codes:?}"
    );
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_dir_all(&archive);
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// A stall with the default settings: a lock held on the tables the hot path writes. Answers
/// must come before Twilio's 15 s, and the server must recover when the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: cargo test --release --test faults -- --ignored --nocapture"]
async fn a_stalled_database_with_default_settings_answers_before_twilio_gives_up() {
    let cluster = Cluster::new("stall");
    cluster.start();
    let spool = std::env::temp_dir().join(format!("twr-fault-stall-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let url = cluster.url();
    let app = Application::build(&settings(&[
        ("TWILIO_RECEIVER__DATABASE__URL", &url),
        ("TWILIO_RECEIVER__SPOOL__DIR", spool.to_str().unwrap()),
    ]))
    .await
    .unwrap();
    let port = app.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, port, "/twilio/messages", &inbound(1))
            .await
            .unwrap()
            .0,
        200
    );

    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let mut lock = db.begin().await.unwrap();
    sqlx::query("lock table messages, conversations in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    // More concurrent requests than the pool has connections, so the pool is exhausted too.
    let stalled: Vec<_> = (2..42u32)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let primary = post(&client, port, "/twilio/messages", &inbound(n)).await;
                let status = post(&client, port, "/twilio/status", &status(n)).await;
                (primary, status)
            })
        })
        .collect();
    let mut primary_times = Vec::new();
    let mut status_times = Vec::new();
    for request in stalled {
        let (primary, status) = request.await.unwrap();
        let (code, took) = primary.expect("answered");
        assert_eq!(code, 503);
        primary_times.push(took);
        let (code, took) = status.expect("answered");
        assert_eq!(code, 204);
        status_times.push(took);
    }
    lock.commit().await.unwrap();
    let recovered_at = Instant::now();
    let after = post(&client, port, "/twilio/messages", &inbound(100))
        .await
        .unwrap();
    assert_eq!(after.0, 200);
    while count_files(&spool) > 0 {
        assert!(
            recovered_at.elapsed() < Duration::from_secs(60),
            "the spool did not drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: i64 =
        sqlx::query_scalar("select count(*) from messages where direction = 'inbound'")
            .fetch_one(&db)
            .await
            .unwrap();
    println!(
        "stalled database (40 concurrent, pool 16): primary 503 in p50 {:?} max {:?}; status 204 (spooled) in p50 {:?} max {:?}; first request after the stall 200 in {:?}; spool drained in {:?}; inbound rows {stored} of 42",
        percentile(primary_times.clone(), 0.5),
        percentile(primary_times.clone(), 1.0),
        percentile(status_times.clone(), 0.5),
        percentile(status_times.clone(), 1.0),
        after.1,
        recovered_at.elapsed(),
    );
    assert!(percentile(primary_times, 1.0) < Duration::from_secs(15));
    assert!(percentile(status_times, 1.0) < Duration::from_secs(15));
    assert_eq!(stored, 42);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&spool);
}
