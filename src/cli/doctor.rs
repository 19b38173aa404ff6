//! `twilio-receiver doctor`: every check of a set-up, one line each, before the first real
//! message. Exit 0 when nothing failed (warnings allowed), 1 otherwise.

use crate::{
    config::{FALLBACK_PATH, MESSAGES_PATH, STATUS_PATH, Settings},
    setup::{Check, Verdict, doctor},
    startup::Application,
};
use std::process::ExitCode;

pub(super) struct Options {
    /// Webhook URLs exactly as Twilio has them (`--url`).
    pub urls: Vec<String>,
    /// Start a server for the checks (`--serve`).
    pub serve: bool,
    /// Say what to paste into the WhatsApp Sandbox's settings, and probe those URLs
    /// (`--sandbox`).
    pub sandbox: bool,
    pub json: bool,
}

pub(super) async fn run(settings: Settings, options: Options) -> ExitCode {
    // `--serve`: the server doctor probes, stopped once the checks are done. It logs nothing
    // (no subscriber), so the report stays readable.
    let server = if options.serve {
        match Application::build(&settings).await {
            Ok(app) => {
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(app.run_until_stopped(async {
                    let _ = stopped.await;
                }));
                Some((stop, task))
            }
            Err(e) => {
                let check = Check::fail(
                    "serve",
                    format!("the server could not start: {}", super::error_chain(&e)),
                    "fix the problem above, or start the server yourself and run doctor without --serve",
                );
                return report(&[check], options.json);
            }
        }
    } else {
        None
    };
    let checks = checks(&settings, &options).await;
    if let Some((stop, task)) = server {
        let _ = stop.send(());
        let _ = task.await;
    }
    report(&checks, options.json)
}

async fn checks(settings: &Settings, options: &Options) -> Vec<Check> {
    let mut checks = doctor::configuration(settings);
    checks.push(doctor::database(settings).await);
    checks.push(doctor::spool(settings));
    let urls = if options.sandbox {
        sandbox(settings, &mut checks)
    } else if !options.urls.is_empty() {
        options.urls.clone()
    } else if let Some(base) = public_url(settings) {
        // Reachability and the proxy in front, for the URLs Twilio should hold.
        [MESSAGES_PATH, FALLBACK_PATH, STATUS_PATH]
            .iter()
            .map(|path| format!("{base}{path}"))
            .collect()
    } else {
        checks.push(Check::fail(
            "webhook URL",
            "nothing to probe: no --url given and server.public_url is not set",
            "pass the webhook URL as it is in the Twilio Console with --url, or set server.public_url",
        ));
        Vec::new()
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("the HTTP client builds");
    for url in urls {
        checks.push(doctor::webhook_url(settings, &http, &url).await);
    }
    checks
}

/// The Sandbox's settings cannot be read or written through Twilio's API: doctor says what to
/// paste where, and probes those URLs.
fn sandbox(settings: &Settings, checks: &mut Vec<Check>) -> Vec<String> {
    let Some(base) = public_url(settings) else {
        checks.push(Check::fail(
            "WhatsApp Sandbox",
            "server.public_url is not set, so there is no URL to paste",
            "set server.public_url to the public base URL of this server",
        ));
        return Vec::new();
    };
    let (incoming, status) = (
        format!("{base}{MESSAGES_PATH}"),
        format!("{base}{STATUS_PATH}"),
    );
    checks.push(Check::warn(
        "WhatsApp Sandbox",
        "Twilio's API cannot read or change the Sandbox's settings, so they are checked by hand (the Sandbox has no fallback URL)",
        format!(
            "in the Console, Messaging > Try it out > Send a WhatsApp message > Sandbox settings: paste {incoming} into \"When a message comes in\" and {status} into \"Status callback URL\", both with method POST"
        ),
    ));
    vec![incoming, status]
}

fn public_url(settings: &Settings) -> Option<String> {
    let url = settings.server.public_url.trim().trim_end_matches('/');
    (!url.is_empty()).then(|| url.to_owned())
}

fn report(checks: &[Check], json: bool) -> ExitCode {
    let ok = checks.iter().all(|c| c.verdict != Verdict::Fail);
    if json {
        let out = serde_json::json!({ "ok": ok, "checks": checks });
        println!("{out}");
    } else {
        for check in checks {
            let verdict = match check.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            println!("{verdict}  {}: {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                println!("      fix: {fix}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
