//! `twilio-receiver doctor`: every check of a set-up, one line each, before the first real
//! message. Exit 0 when nothing failed (warnings allowed), 1 otherwise.

use crate::{
    config::{FALLBACK_PATH, MESSAGES_PATH, STATUS_PATH, Settings},
    metrics::Metrics,
    rest::{RestClient, RestSettings},
    setup::{Check, Resource, Routes, Verdict, doctor, twilio},
    startup::Application,
};
use std::{process::ExitCode, sync::Arc};

pub(super) struct Options {
    /// Webhook URLs exactly as Twilio has them (`--url`).
    pub urls: Vec<String>,
    /// Resources whose URLs are read from Twilio's API (`--sender`, ...).
    pub resources: Vec<Resource>,
    /// Start a server for the checks (`--serve`).
    pub serve: bool,
    /// Say what to paste into the WhatsApp Sandbox's settings, and probe those URLs
    /// (`--sandbox`).
    pub sandbox: bool,
    pub json: bool,
}

pub(super) async fn run(mut settings: Settings, options: Options) -> ExitCode {
    // What `--serve` would change (the schema, the spool) is checked before it starts.
    let mut checks = doctor::configuration(&settings);
    checks.push(doctor::database(&settings).await);
    checks.push(doctor::spool(&settings));
    // `--serve`: the server doctor probes, stopped once the checks are done. It answers
    // probes and touches nothing else: no migration, no spool replay, no reconciliation, no
    // media downloads. It logs nothing (no subscriber), so the report stays readable.
    let server = if options.serve {
        settings.database.migrate_on_start = false;
        settings.spool.dir = String::new();
        settings.reconcile.enabled = false;
        settings.media.archive = false;
        match Application::build(&settings).await {
            Ok(app) => {
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(app.run_until_stopped(async {
                    let _ = stopped.await;
                }));
                Some((stop, task))
            }
            Err(e) => {
                checks.push(Check::fail(
                    "serve",
                    format!("the server could not start: {}", super::error_chain(&e)),
                    "fix the problem above, or start the server yourself and run doctor without --serve",
                ));
                return report(&checks, options.json);
            }
        }
    } else {
        None
    };
    webhooks(&settings, &options, &mut checks).await;
    if let Some((stop, task)) = server {
        let _ = stop.send(());
        let _ = task.await;
    }
    report(&checks, options.json)
}

/// What Twilio holds for the named resources (none named: `reconcile.senders`), then a probe
/// of each webhook URL: the resources' URLs that point at one of this server's routes, and
/// the `--url`s; with neither, the routes under `server.public_url`.
async fn webhooks(settings: &Settings, options: &Options, checks: &mut Vec<Check>) {
    let mut urls = options.urls.clone();
    // Nothing named: the senders reconcile reads, when REST credentials are set.
    let configured: Vec<Resource>;
    let resources = if options.resources.is_empty()
        && options.urls.is_empty()
        && !options.sandbox
        && !settings.twilio.account_sid.trim().is_empty()
    {
        configured = settings
            .reconcile
            .senders
            .iter()
            .filter_map(|s| {
                if s.starts_with("whatsapp:") {
                    Some(Resource::Sender(s.clone()))
                } else if s.starts_with('+') {
                    Some(Resource::PhoneNumber(s.clone()))
                } else {
                    None
                }
            })
            .collect();
        &configured
    } else {
        &options.resources
    };
    for url in held_by_twilio(settings, resources, checks).await {
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if options.sandbox {
        urls.extend(sandbox(settings, checks));
    } else if urls.is_empty() && resources.is_empty() {
        match public_url(settings) {
            // Reachability and the proxy in front, for the URLs Twilio should hold.
            Some(base) => {
                urls = [MESSAGES_PATH, FALLBACK_PATH, STATUS_PATH]
                    .iter()
                    .map(|path| format!("{base}{path}"))
                    .collect();
            }
            None => checks.push(Check::fail(
                "webhook URL",
                "nothing to probe: no --url given and server.public_url is not set",
                "pass the webhook URL as it is in the Twilio Console with --url, or set server.public_url",
            )),
        }
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("the HTTP client builds");
    for url in urls {
        checks.extend(doctor::webhook_url(settings, &http, &url).await);
    }
}

/// Judges what Twilio holds for each resource; returns the URLs Twilio calls that end in
/// one of this server's routes, to probe.
async fn held_by_twilio(
    settings: &Settings,
    resources: &[Resource],
    checks: &mut Vec<Check>,
) -> Vec<String> {
    if resources.is_empty() {
        return Vec::new();
    }
    let client = match RestSettings::from_settings(settings)
        .and_then(|rest| RestClient::new(rest, Arc::new(Metrics::new())))
    {
        Ok(client) => client,
        Err(e) => {
            checks.push(Check::fail(
                "Twilio's configuration",
                format!("cannot read it: {e}"),
                "set twilio.account_sid (TWILIO_ACCOUNT_SID) and its auth token or an API key",
            ));
            return Vec::new();
        }
    };
    let routes = public_url(settings).map(|base| Routes::under(&base));
    let mut urls = Vec::new();
    for resource in resources {
        match twilio::held(&client, resource).await {
            Ok(held) => {
                checks.extend(twilio::judge(&held, routes.as_ref()));
                urls.extend(held.iter().filter_map(|h| h.probe_url().map(str::to_owned)));
            }
            Err(e) => checks.push(twilio::lookup_failed(resource, &e, routes.as_ref())),
        }
    }
    urls
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
