//! `twilio-receiver connect`: points a sender, a Messaging Service or a phone number at this
//! server's routes under `server.public_url`, printing each field before and after.
//! Exit codes: 0 done or nothing to change, 1 failed (configuration, Twilio), 2 usage (an
//! http public URL without `--allow-http`).

use crate::{
    config::{PublicBase, Settings},
    metrics::Metrics,
    rest::{RestClient, RestSettings},
    setup::{
        Resource, Routes,
        connect::{self, Field},
        twilio::{LookupError, lookup_failed, redact},
    },
    telemetry,
};
use std::{process::ExitCode, sync::Arc};

pub(super) async fn run(
    settings: Settings,
    resource: Resource,
    dry_run: bool,
    allow_http: bool,
) -> ExitCode {
    telemetry::init(&settings.log);
    let base = match settings.server.public_base() {
        Ok(PublicBase::Configured(base)) => base,
        Ok(_) => {
            eprintln!(
                "error: server.public_url is not set: connect points Twilio at the routes under \
                 it; set it to the https URL Twilio reaches this server at \
                 (TWILIO_RECEIVER__SERVER__PUBLIC_URL)"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !base.starts_with("https://") && !allow_http {
        eprintln!(
            "error: server.public_url is {base}, not https: over http, every message and its \
             signature travel unencrypted; pass --allow-http to write it anyway (a local \
             tunnel, a test)"
        );
        return ExitCode::from(2);
    }
    let client = match RestSettings::from_settings(&settings)
        .and_then(|rest| RestClient::new(rest, Arc::new(Metrics::new())))
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = client.main_account() {
        eprintln!(
            "error: no REST API credentials ({e}): set twilio.account_sid (TWILIO_ACCOUNT_SID) \
             and its auth token (TWILIO_AUTH_TOKEN) or an API key (TWILIO_API_KEY, \
             TWILIO_API_SECRET)"
        );
        return ExitCode::FAILURE;
    }
    let public = Routes::under(&base);
    let basic = &settings.server.basic_auth;
    let routes = match basic.header() {
        Some(_) => {
            use secrecy::ExposeSecret;
            connect::with_credentials(&public, &basic.user, basic.password.expose_secret())
        }
        None => public.clone(),
    };

    let plan = match connect::plan(&client, &resource, &routes).await {
        Ok(plan) => plan,
        Err(e) => return lookup_error(&resource, &e, &public),
    };
    let label = resource.label();
    if label.contains(&plan.sid) {
        println!("{label}");
    } else {
        println!("{label} ({})", plan.sid);
    }
    for field in &plan.fields {
        if field.changes() {
            println!(
                "  {}: {} -> {}",
                field.name,
                shown(&field.before),
                shown(&field.after)
            );
        } else {
            println!("  {}: {} (unchanged)", field.name, shown(&field.before));
        }
    }
    for note in &plan.notes {
        println!("note: {note}");
    }
    if plan.is_noop() {
        println!("nothing to change: Twilio already holds these values");
        return ExitCode::SUCCESS;
    }
    if dry_run {
        println!("dry run: nothing was written");
        return ExitCode::SUCCESS;
    }
    let applied = match plan.apply(&client).await {
        Ok(applied) => applied,
        Err(e) => {
            eprintln!("error: Twilio refused the update: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("after (as Twilio now holds it):");
    let mut differ = 0;
    for (planned, now) in plan.fields.iter().zip(&applied) {
        println!("  {}: {}", now.name, shown(&now.after));
        let kept = Field {
            name: now.name,
            before: planned.after.clone(),
            after: now.after.clone(),
        };
        if kept.changes() {
            differ += 1;
            eprintln!(
                "error: {} is {}, not {} as sent",
                now.name,
                shown(&now.after),
                shown(&planned.after)
            );
        }
    }
    if differ > 0 {
        return ExitCode::FAILURE;
    }
    let changed = plan.fields.iter().filter(|f| f.changes()).count();
    println!("updated {changed} of {} fields", plan.fields.len());
    ExitCode::SUCCESS
}

/// A value for the terminal: `(unset)`, or the value with a URL's password hidden.
fn shown(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(|| "(unset)".to_owned(), redact)
}

fn lookup_error(resource: &Resource, error: &LookupError, routes: &Routes) -> ExitCode {
    let check = lookup_failed(resource, error, Some(routes));
    eprintln!("error: {}: {}", check.name, check.detail);
    if let Some(fix) = check.fix {
        eprintln!("fix: {fix}");
    }
    ExitCode::FAILURE
}
