//! The command line: `serve` (the default), `migrate`, `check-config`, `sign`, `verify`,
//! `healthcheck`, `erase`, `prune`, `backfill`, `doctor`, `connect`. Exit codes: 0 success, 1
//! a failed check, 2 a usage error.

mod backfill;
mod connect;
mod doctor;

use crate::{
    config::{Settings, Sources},
    startup::{self, Application},
    store, telemetry,
    twilio::{RawRequest, verify},
};
use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: &str = "application/x-www-form-urlencoded";

#[derive(Debug, Parser)]
#[command(
    name = "twilio-receiver",
    version,
    about = "Receives Twilio Messaging webhooks (WhatsApp, SMS), verifies them, stores them in Postgres and answers with TwiML."
)]
struct Cli {
    /// A TOML file layered above the config directory's files and below environment variables.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the webhook server (the default command).
    Serve,
    /// Create the database if it is missing and apply pending migrations, then exit.
    Migrate,
    /// Load the configuration, report every problem, print the effective settings (secrets
    /// redacted). Exits 1 when there is a problem.
    CheckConfig,
    /// Print the X-Twilio-Signature Twilio would send for a URL and a raw body read from stdin.
    Sign {
        /// The full URL Twilio calls, exactly as configured in Twilio (query string included).
        #[arg(long)]
        url: String,
        /// The auth token to sign with (default: the first configured token).
        #[arg(long)]
        token: Option<String>,
        /// The body's content type (form or JSON).
        #[arg(long, default_value = FORM)]
        content_type: String,
    },
    /// Check a signature exactly as the server does, for a URL and a raw body read from stdin.
    /// Prints `valid` (exit 0) or the reason it is not (exit 1).
    Verify {
        /// The full URL Twilio called, taken exactly as given.
        #[arg(long)]
        url: String,
        /// The X-Twilio-Signature header value. An empty value is a missing signature.
        #[arg(long, allow_hyphen_values = true)]
        signature: String,
        /// An auth token to accept (repeatable; default: the configured tokens).
        #[arg(long)]
        token: Vec<String>,
        /// The body's content type (form or JSON).
        #[arg(long, default_value = FORM)]
        content_type: String,
        /// The X-Twilio-Webhooks-Signature-Settings header, when Twilio signed with a shared
        /// key (`key=<id>,algorithm=HMAC_SHA256`); the key comes from twilio.shared_keys.
        #[arg(long)]
        signature_settings: Option<String>,
    },
    /// Exit 0 when the local server's /healthz answers (for container health checks).
    Healthcheck,
    /// Delete everything stored about one contact (messages both ways, media rows and
    /// archived files, status events, fallback calls, replies, sessions, consent) and print
    /// what was removed.
    Erase {
        /// The contact's address exactly as stored, e.g. whatsapp:+15551234567.
        #[arg(long)]
        contact: String,
    },
    /// Delete what is older than an age, by whole days: each day wholly older than the
    /// cutoff goes with its archived files, its messages with their media rows, replies and
    /// status events, its fallback calls and sessions; then conversations with nothing left.
    /// Days are detached without blocking writers. Consent is kept.
    Prune {
        /// How old is too old: a number and a unit (d, h, m, s), e.g. 90d.
        #[arg(long)]
        older_than: String,
        /// Rows per statement for what is deleted row by row (the SID directory's keys of
        /// the dropped days, conversations).
        #[arg(long, default_value_t = 5000)]
        batch: i64,
        /// After each statement and each dropped partition, rest N times as long as it
        /// took, so the prune takes at most 1/(N+1) of a core from the writers (0: no rest).
        // A tenth of a core: on two cores a quarter (3) cost busy writers 11 % of their
        // throughput for as long as the prune ran (BENCHMARKS.md, sixth session).
        #[arg(long, default_value_t = 9)]
        rest: u32,
    },
    /// Import the account's messages sent in a time range that are not stored yet, from
    /// Twilio's REST API (first deploy, after an outage). Resumable: run it again to
    /// continue. Ends with `inbound N, outbound N, already stored N, failed N`; exits 1 when
    /// anything could not be stored.
    Backfill {
        /// Messages sent at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long, value_parser = backfill::rfc3339)]
        since: chrono::DateTime<chrono::Utc>,
        /// ... and at or before this time (RFC 3339; default: now).
        #[arg(long, value_parser = backfill::rfc3339)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Only this business address's messages, both ways (repeatable; default:
        /// reconcile.senders, or the whole account).
        #[arg(long = "sender")]
        senders: Vec<String>,
    },
    /// Check a set-up end to end before the first real message: the configuration, the
    /// database, the spool, what Twilio holds for the named senders, Messaging Services and
    /// numbers (none named: reconcile.senders), and each webhook URL, with a signed probe
    /// through whatever sits in front of the server (proxy, tunnel, load balancer). One line
    /// per check; exits 0 when none failed, 1 otherwise.
    Doctor {
        /// A webhook URL exactly as Twilio has it (repeatable; default: the URLs Twilio
        /// holds that point at this server's routes, else server.public_url with each of
        /// the three routes).
        #[arg(long = "url", value_name = "URL")]
        urls: Vec<String>,
        /// Start the server for the checks (otherwise it must be running already).
        #[arg(long)]
        serve: bool,
        /// For the WhatsApp Sandbox, whose settings Twilio's API cannot read: print what to
        /// paste where, and probe those URLs.
        #[arg(long, conflicts_with = "urls")]
        sandbox: bool,
        /// Read this WhatsApp sender's URLs from Twilio, judge them and probe those that are
        /// this server's (repeatable).
        #[arg(long = "sender", value_name = "whatsapp:+E164", value_parser = crate::setup::twilio::parse_sender)]
        senders: Vec<String>,
        /// ... this Messaging Service's (repeatable).
        #[arg(long = "messaging-service", value_name = "MG…", value_parser = crate::setup::twilio::parse_service_sid)]
        messaging_services: Vec<String>,
        /// ... this phone number's (repeatable).
        #[arg(long = "phone-number", value_name = "+E164", value_parser = crate::setup::twilio::parse_phone_number)]
        phone_numbers: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Point a WhatsApp sender, a Messaging Service or a phone number at this server: set
    /// its incoming, fallback and status callback URLs (a phone number: incoming and
    /// fallback) to the routes under server.public_url, method POST, through Twilio's REST
    /// API, printing each value before and after. A second run changes nothing.
    Connect {
        #[command(flatten)]
        target: Target,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
        /// Write a server.public_url that is http, not https (a local tunnel, a test).
        #[arg(long)]
        allow_http: bool,
    },
}

/// The one resource `connect` points at this server.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// A WhatsApp sender of the account: whatsapp:+E164.
    #[arg(long, value_name = "whatsapp:+E164", value_parser = crate::setup::twilio::parse_sender)]
    sender: Option<String>,
    /// A Messaging Service: its SID, MG….
    #[arg(long, value_name = "MG…", value_parser = crate::setup::twilio::parse_service_sid)]
    messaging_service: Option<String>,
    /// A phone number of the account, in E.164.
    #[arg(long, value_name = "+E164", value_parser = crate::setup::twilio::parse_phone_number)]
    phone_number: Option<String>,
}

impl Target {
    fn resource(self) -> crate::setup::Resource {
        use crate::setup::Resource;
        match (self.sender, self.messaging_service, self.phone_number) {
            (Some(sender), _, _) => Resource::Sender(sender),
            (_, Some(sid), _) => Resource::MessagingService(sid),
            (_, _, Some(number)) => Resource::PhoneNumber(number),
            // clap's group requires exactly one.
            (None, None, None) => unreachable!("connect without a resource"),
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources::from_process(cli.config);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => with_settings(&sources, |s| runtime().block_on(serve(s))),
        Command::Migrate => with_settings(&sources, |s| runtime().block_on(migrate(s))),
        Command::CheckConfig => with_settings(&sources, check_config),
        Command::Sign {
            url,
            token,
            content_type,
        } => sign(&sources, &url, token, &content_type),
        Command::Verify {
            url,
            signature,
            token,
            content_type,
            signature_settings,
        } => verify_command(
            &sources,
            &url,
            &signature,
            token,
            &content_type,
            signature_settings,
        ),
        Command::Healthcheck => with_settings(&sources, |s| runtime().block_on(healthcheck(s))),
        Command::Erase { contact } => {
            with_settings(&sources, |s| runtime().block_on(erase(s, &contact)))
        }
        Command::Prune {
            older_than,
            batch,
            rest,
        } => with_settings(&sources, |s| {
            let pace = store::prune::Pace {
                batch: batch.max(1),
                rest,
            };
            runtime().block_on(prune(s, &older_than, pace))
        }),
        Command::Backfill {
            since,
            until,
            senders,
        } => with_settings(&sources, |s| {
            runtime().block_on(backfill::run(s, since, until, senders))
        }),
        Command::Doctor {
            urls,
            serve,
            sandbox,
            senders,
            messaging_services,
            phone_numbers,
            json,
        } => with_settings(&sources, |s| {
            use crate::setup::Resource;
            let resources = (senders.into_iter().map(Resource::Sender))
                .chain(
                    messaging_services
                        .into_iter()
                        .map(Resource::MessagingService),
                )
                .chain(phone_numbers.into_iter().map(Resource::PhoneNumber))
                .collect();
            let options = doctor::Options {
                urls,
                resources,
                serve,
                sandbox,
                json,
            };
            runtime().block_on(doctor::run(s, options))
        }),
        Command::Connect {
            target,
            dry_run,
            allow_http,
        } => with_settings(&sources, |s| {
            runtime().block_on(connect::run(s, target.resource(), dry_run, allow_http))
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn with_settings(sources: &Sources, f: impl FnOnce(Settings) -> ExitCode) -> ExitCode {
    match Settings::load(sources) {
        Ok(settings) => f(settings),
        Err(e) => {
            eprintln!("error: cannot load the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    telemetry::init(&settings.log);
    let app = match Application::build(&settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(startup::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(settings: Settings) -> ExitCode {
    telemetry::init(&settings.log);
    match store::migrate(&settings.database).await {
        Ok(()) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: migrations failed: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn check_config(settings: Settings) -> ExitCode {
    print!("{}", settings.redacted_toml());
    let problems = settings.problems();
    if problems.is_empty() {
        eprintln!("configuration OK");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        ExitCode::FAILURE
    }
}

fn read_stdin() -> Result<Vec<u8>, ExitCode> {
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).map_err(|e| {
        eprintln!("error: cannot read the body from stdin: {e}");
        ExitCode::FAILURE
    })?;
    Ok(body)
}

fn sign(sources: &Sources, url: &str, token: Option<String>, content_type: &str) -> ExitCode {
    let token = match token {
        Some(t) => SecretString::from(t),
        None => match Settings::load(sources).map(|s| s.twilio.auth_tokens.into_iter().next()) {
            Ok(Some(t)) => t,
            Ok(None) => {
                eprintln!("error: no token: pass --token or set TWILIO_AUTH_TOKEN");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: cannot load the configuration: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let body = match read_stdin() {
        Ok(b) => b,
        Err(code) => return code,
    };
    match verify::sign(
        token.expose_secret().as_bytes(),
        url,
        Some(content_type),
        &body,
    ) {
        Ok(signature) => {
            println!("{signature}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify_command(
    sources: &Sources,
    url: &str,
    signature: &str,
    tokens: Vec<String>,
    content_type: &str,
    signature_settings: Option<String>,
) -> ExitCode {
    let verifier = if tokens.is_empty() {
        match Settings::load(sources) {
            Ok(s) => {
                let mut v = s.verifier();
                v.enforce();
                v
            }
            Err(e) => {
                eprintln!("error: cannot load the configuration: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        {
            // With --signature-settings, the given token is the shared key's secret.
            let key_id = signature_settings.as_deref().and_then(|h| {
                h.split(',')
                    .find_map(|p| p.trim().strip_prefix("key=").map(str::to_owned))
            });
            let shared = key_id
                .zip(tokens.first())
                .map(|(id, t)| (id, SecretString::from(t.clone())))
                .into_iter()
                .collect();
            crate::twilio::Verifier::new(
                tokens.into_iter().map(SecretString::from).collect(),
                Default::default(),
                true,
            )
            .with_shared_keys(shared)
        }
    };
    let body = match read_stdin() {
        Ok(b) => b,
        Err(code) => return code,
    };
    let request = RawRequest {
        is_get: false,
        url,
        content_type: Some(content_type),
        body: &body,
        signature: Some(signature),
        signature_settings: signature_settings.as_deref(),
    };
    match verifier.verify(&request) {
        Ok(_) => {
            println!("valid");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("invalid: {reason}");
            ExitCode::FAILURE
        }
    }
}

async fn erase(settings: Settings, contact: &str) -> ExitCode {
    // The spool first: a running server replaying it must not bring the contact back.
    if let Some(dir) = settings.spool.dir() {
        match crate::spool::erase_contact(&dir, contact) {
            Ok(n) => println!("erased {n} spooled webhooks"),
            Err(e) => {
                eprintln!("error: nothing erased: spool.dir {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let erased = match store::pool(&settings.database) {
        Ok(pool) => store::erase::contact(&pool, contact)
            .await
            .map_err(|e| error_chain(&e)),
        Err(e) => Err(e),
    };
    let erased = match erased {
        Ok(erased) => erased,
        Err(e) => {
            eprintln!("error: nothing erased: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "erased {contact}: {} messages, {} media rows, {} status events, {} fallback calls, {} replies, {} sessions, {} conversations, {} consent rows",
        erased.messages,
        erased.media,
        erased.status_events,
        erased.failures,
        erased.replies,
        erased.sessions,
        erased.conversations,
        erased.consent
    );
    delete_archived(&settings, &erased.storage_keys).await
}

/// Deletes archived media files after their rows are committed; reports any it cannot.
async fn delete_archived(settings: &Settings, keys: &[String]) -> ExitCode {
    let failed = delete_files(settings, keys).await;
    println!("deleted {} archived files", keys.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Deletes archived media files; returns how many it could not (each reported).
async fn delete_files(settings: &Settings, keys: &[String]) -> usize {
    if keys.is_empty() {
        return 0;
    }
    let store = match crate::storage::open(&settings.media.storage) {
        Ok((store, _)) => store,
        Err(e) => {
            eprintln!(
                "error: {} archived files not deleted: media.storage: {e}",
                keys.len()
            );
            return keys.len();
        }
    };
    let mut failed = 0;
    for key in keys {
        use object_store::ObjectStoreExt;
        if let Err(e) = store
            .delete(&object_store::path::Path::from(key.as_str()))
            .await
        {
            failed += 1;
            eprintln!("error: cannot delete archived file {key}: {e}");
        }
    }
    failed
}

async fn prune(settings: Settings, older_than: &str, pace: store::prune::Pace) -> ExitCode {
    let age = match store::prune::parse_age(older_than) {
        Ok(age) => age,
        Err(e) => {
            eprintln!("error: --older-than {e}");
            return ExitCode::from(2);
        }
    };
    let cutoff = chrono::Utc::now() - age;
    let settings = &settings;
    let pruned = match store::pool(&settings.database) {
        Ok(pool) => store::prune::older_than(&pool, cutoff, pace, |keys| async move {
            delete_files(settings, &keys).await
        })
        .await
        .map_err(|e| error_chain(&e)),
        Err(e) => Err(e),
    };
    let pruned = match pruned {
        Ok(pruned) => pruned,
        // Days already dropped stay dropped; running it again finishes the job.
        Err(e) => {
            eprintln!("error: prune stopped: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "pruned the days before {} (UTC): {} messages, {} status events, {} fallback calls, {} sessions, {} conversations ({} partitions, {} directory keys)",
        cutoff.date_naive(),
        pruned.messages,
        pruned.status_events,
        pruned.failures,
        pruned.sessions,
        pruned.conversations,
        pruned.partitions,
        pruned.keys,
    );
    println!("deleted {} archived files", pruned.files);
    ExitCode::SUCCESS
}

async fn healthcheck(settings: Settings) -> ExitCode {
    let Ok(mut addr) = settings.server.listen_addr() else {
        eprintln!("unhealthy: server.listen is not an address");
        return ExitCode::FAILURE;
    };
    // A server listening on every interface is reached through loopback.
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        addr = SocketAddr::new(ip, addr.port());
    }
    match tokio::time::timeout(Duration::from_secs(3), probe(addr)).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("unhealthy: no answer from {addr} within 3 s");
            ExitCode::FAILURE
        }
    }
}

/// A plain HTTP/1.1 GET of /healthz: the image needs no curl.
async fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let status_line = String::from_utf8_lossy(&response);
    let status_line = status_line.lines().next().unwrap_or_default();
    if status_line.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("/healthz answered {status_line:?}"))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
