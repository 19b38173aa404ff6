//! What Twilio holds for a resource that should call this server: the URL (and method) it
//! will actually call for each role (incoming message, fallback, status callback), read
//! through the REST API ([`held`]), and how that compares with this server's routes
//! ([`judge`], pure). `doctor` reports the judgement and probes the URLs; `connect` starts
//! from the same reading.
//!
//! Where each resource keeps its URLs (twilio-oai):
//! - a WhatsApp sender (`/v2/Channels/Senders`): `webhook.callback_url`, `fallback_url` and
//!   `status_callback_url`, each with its method;
//! - a Messaging Service (`/v1/Services/{Sid}`): `inbound_request_url`, `fallback_url`,
//!   `status_callback`; but with `use_inbound_webhook_on_number = true`, a message to one of
//!   its phone numbers goes to that number's own `sms_url` (`sms_fallback_url`), so those are
//!   what is read and judged;
//! - a phone number (2010 `IncomingPhoneNumbers`): `sms_url` and `sms_fallback_url`, unless an
//!   `sms_application_sid` (a TwiML App) overrides them. Its `status_callback` is for voice
//!   calls and is left alone: a message's status callback comes with the message, or from its
//!   Messaging Service.
//!
//! A URL is this server's when, without its `user:password@`, query and fragment, it is the
//! route for that role under `server.public_url`, byte for byte: the signature is computed
//! over the URL as Twilio holds it, and the server rebuilds it from `server.public_url`
//! (TWILIO.md §1.2), so a host in another case or a trailing slash is a different URL.
//! Nothing here logs; the details name the business's own numbers, for the operator.

use super::{Check, Resource, Routes};
use crate::{
    config::{FALLBACK_PATH, MESSAGES_PATH, STATUS_PATH},
    rest::{IncomingPhoneNumber, RestClient, RestError, SenderResource, ServiceResource},
};
use serde::Serialize;
use std::fmt;

/// The WhatsApp Sandbox's shared sender: no sender of the account, and configured in the
/// Console only (the API cannot change it).
pub const SANDBOX_SENDER: &str = "whatsapp:+14155238886";

/// What Twilio calls a URL for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A message arrives (this server's `/twilio/messages`).
    Incoming,
    /// The incoming URL failed (`/twilio/fallback`).
    Fallback,
    /// A message's status changed (`/twilio/status`).
    Status,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Incoming, Role::Fallback, Role::Status];

    /// This server's route for the role, under `routes`' base.
    pub fn route(self, routes: &Routes) -> &str {
        match self {
            Role::Incoming => &routes.incoming,
            Role::Fallback => &routes.fallback,
            Role::Status => &routes.status,
        }
    }

    /// The route's path (`/twilio/messages`).
    pub fn path(self) -> &'static str {
        match self {
            Role::Incoming => MESSAGES_PATH,
            Role::Fallback => FALLBACK_PATH,
            Role::Status => STATUS_PATH,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Incoming => "incoming URL",
            Role::Fallback => "fallback URL",
            Role::Status => "status callback URL",
        })
    }
}

/// One URL Twilio holds for one role of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    /// Whose URL it is, for people: `sender whatsapp:+…`, `Messaging Service MG…`, `phone
    /// number +… in Messaging Service MG…`.
    pub resource: String,
    pub role: Role,
    /// The field it was read from (`webhook.callback_url`, `inbound_request_url`, `sms_url`).
    pub field: &'static str,
    /// The URL exactly as Twilio holds it; `None` when unset. It may carry `user:password@`
    /// (show it with [`redact`]).
    pub url: Option<String>,
    /// The method Twilio calls it with, as held; `None` when unset (Twilio then uses POST).
    pub method: Option<String>,
    /// Set when Twilio calls something else although `url` is set: why (a TwiML App on the
    /// number).
    pub overridden_by: Option<String>,
    /// Context for the report, e.g. that a Messaging Service defers to this number.
    pub note: Option<String>,
    /// What `connect` points at this server to fix this URL.
    #[serde(skip)]
    pub fix_with: Resource,
}

impl Held {
    /// The URL Twilio will call for this role: set, and not overridden.
    pub fn called_url(&self) -> Option<&str> {
        match (&self.url, &self.overridden_by) {
            (Some(url), None) => Some(url),
            _ => None,
        }
    }

    /// [`Held::called_url`] when its path ends in one of this server's route paths (whatever
    /// the host): where `doctor` can send a signed probe to see what answers.
    pub fn probe_url(&self) -> Option<&str> {
        let url = self.called_url()?;
        let path = url_path(url);
        Role::ALL
            .iter()
            .any(|role| path.ends_with(role.path()))
            .then_some(url)
    }
}

/// Why what Twilio holds could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Rest(#[from] RestError),
    /// No sender of the account has this id (the Sandbox's is not the account's).
    #[error("the account has no WhatsApp sender {sender}")]
    SenderNotFound { sender: String },
    #[error("account {account} has no phone number {number}")]
    NumberNotFound { number: String, account: String },
}

impl LookupError {
    /// Whether this is the WhatsApp Sandbox's sender, which the API cannot read or change.
    pub fn is_sandbox(&self) -> bool {
        matches!(self, LookupError::SenderNotFound { sender } if sender == SANDBOX_SENDER)
    }
}

impl Resource {
    /// For people: `sender whatsapp:+…`, `Messaging Service MG…`, `phone number +…`.
    pub fn label(&self) -> String {
        match self {
            Resource::Sender(id) => format!("sender {id}"),
            Resource::MessagingService(sid) => format!("Messaging Service {sid}"),
            Resource::PhoneNumber(number) => format!("phone number {number}"),
        }
    }

    /// The command that points it at this server.
    pub fn connect_command(&self) -> String {
        let (flag, value) = match self {
            Resource::Sender(id) => ("--sender", id),
            Resource::MessagingService(sid) => ("--messaging-service", sid),
            Resource::PhoneNumber(number) => ("--phone-number", number),
        };
        format!("twilio-receiver connect {flag} {value}")
    }
}

/// A sender id as `--sender` takes it: `whatsapp:` and an E.164 number; the channel is
/// written in lower case, as Twilio writes it.
pub fn parse_sender(s: &str) -> Result<String, String> {
    let s = s.trim();
    let number = s
        .split_once(':')
        .filter(|(channel, _)| channel.eq_ignore_ascii_case("whatsapp"))
        .map(|(_, number)| number)
        .ok_or_else(|| format!("a sender is whatsapp:+E164, e.g. {SANDBOX_SENDER}"))?;
    parse_phone_number(number).map(|number| format!("whatsapp:{number}"))
}

/// A Messaging Service SID as `--messaging-service` takes it: `MG` and 32 hexadecimal digits.
pub fn parse_service_sid(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = s.len() == 34
        && s[..2].eq_ignore_ascii_case("MG")
        && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| format!("MG{}", s[2..].to_ascii_lowercase()))
        .ok_or_else(|| "a Messaging Service SID is MG and 32 hexadecimal digits".to_owned())
}

/// A phone number as `--phone-number` takes it: E.164, `+` and up to 15 digits.
pub fn parse_phone_number(s: &str) -> Result<String, String> {
    let s = s.trim();
    let digits = s.strip_prefix('+').unwrap_or_default();
    let ok = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then(|| s.to_owned())
        .ok_or_else(|| "a phone number is E.164: + and the digits, e.g. +14155238886".to_owned())
}

/// Reads what Twilio holds for `resource` and works out the URLs it will call, per role.
/// A sender and a phone number are looked up by address (in the main account); a Messaging
/// Service that defers to its numbers has each number read.
pub async fn held(client: &RestClient, resource: &Resource) -> Result<Vec<Held>, LookupError> {
    match resource {
        Resource::Sender(id) => Ok(sender_held(id, &find_sender(client, id).await?)),
        Resource::MessagingService(sid) => {
            let service = client.fetch_service(sid).await?;
            let numbers = if service.use_inbound_webhook_on_number == Some(true) {
                service_numbers(client, &service).await?
            } else {
                Vec::new()
            };
            Ok(service_held(&service, &numbers))
        }
        Resource::PhoneNumber(number) => {
            let found = find_number(client, number).await?;
            Ok(number_held(
                &found,
                resource.label(),
                resource.clone(),
                None,
            ))
        }
    }
}

/// The account's sender `id`.
pub async fn find_sender(client: &RestClient, id: &str) -> Result<SenderResource, LookupError> {
    client
        .find_sender(id)
        .await?
        .ok_or_else(|| LookupError::SenderNotFound { sender: id.into() })
}

/// The main account's phone number `number` (E.164).
pub async fn find_number(
    client: &RestClient,
    number: &str,
) -> Result<IncomingPhoneNumber, LookupError> {
    let account = client.main_account()?.to_owned();
    client
        .find_incoming_phone_number(&account, number)
        .await?
        .ok_or_else(|| LookupError::NumberNotFound {
            number: number.into(),
            account,
        })
}

/// Every phone number of a Messaging Service, each as its account holds it.
async fn service_numbers(
    client: &RestClient,
    service: &ServiceResource,
) -> Result<Vec<IncomingPhoneNumber>, LookupError> {
    let listed = client.list_service_phone_numbers(&service.sid).await?;
    let main = client.main_account()?.to_owned();
    // The client caps the requests in flight per account; these can all be asked at once.
    let reads = listed.iter().map(|n| {
        let account = n
            .account_sid
            .as_deref()
            .or(service.account_sid.as_deref())
            .unwrap_or(&main);
        client.fetch_incoming_phone_number(account, &n.sid)
    });
    Ok(futures_util::future::try_join_all(reads).await?)
}

/// A sender's three URLs.
pub fn sender_held(id: &str, sender: &SenderResource) -> Vec<Held> {
    let w = &sender.webhook;
    let held = |role, field, url: &Option<String>, method: &Option<String>| Held {
        resource: format!("sender {id}"),
        role,
        field,
        url: url.clone(),
        method: method.clone(),
        overridden_by: None,
        note: None,
        fix_with: Resource::Sender(id.into()),
    };
    vec![
        held(
            Role::Incoming,
            "webhook.callback_url",
            &w.callback_url,
            &w.callback_method,
        ),
        held(
            Role::Fallback,
            "webhook.fallback_url",
            &w.fallback_url,
            &w.fallback_method,
        ),
        held(
            Role::Status,
            "webhook.status_callback_url",
            &w.status_callback_url,
            &w.status_callback_method,
        ),
    ]
}

/// A Messaging Service's URLs as Twilio uses them: its own three, or, when it defers to its
/// numbers and has some, each number's incoming and fallback URLs and its own status
/// callback. `numbers` are the service's numbers (read only when it defers).
pub fn service_held(service: &ServiceResource, numbers: &[IncomingPhoneNumber]) -> Vec<Held> {
    let label = format!("Messaging Service {}", service.sid);
    let fix_with = Resource::MessagingService(service.sid.clone());
    let own = |role, field, url: &Option<String>, method: Option<&String>| Held {
        resource: label.clone(),
        role,
        field,
        url: url.clone(),
        method: method.cloned(),
        overridden_by: None,
        note: None,
        fix_with: fix_with.clone(),
    };
    let status = own(
        Role::Status,
        "status_callback",
        &service.status_callback,
        None,
    );
    let defers = service.use_inbound_webhook_on_number == Some(true);
    if defers && !numbers.is_empty() {
        let note = format!(
            "{label} has use_inbound_webhook_on_number = true, so Twilio calls each number's own URLs"
        );
        let mut held: Vec<Held> = numbers
            .iter()
            .flat_map(|n| {
                let number = n.phone_number.as_deref().unwrap_or(&n.sid);
                number_held(
                    n,
                    format!("phone number {number} in {label}"),
                    fix_with.clone(),
                    Some(note.clone()),
                )
            })
            .collect();
        held.push(status);
        return held;
    }
    let note = defers
        .then(|| format!("{label} has use_inbound_webhook_on_number = true but no phone numbers"));
    let mut held = vec![
        own(
            Role::Incoming,
            "inbound_request_url",
            &service.inbound_request_url,
            service.inbound_method.as_ref(),
        ),
        own(
            Role::Fallback,
            "fallback_url",
            &service.fallback_url,
            service.fallback_method.as_ref(),
        ),
        status,
    ];
    for h in &mut held[..2] {
        h.note.clone_from(&note);
    }
    held
}

/// A phone number's incoming and fallback URLs (its `status_callback` is for voice calls).
pub fn number_held(
    number: &IncomingPhoneNumber,
    resource: String,
    fix_with: Resource,
    note: Option<String>,
) -> Vec<Held> {
    let overridden_by = number.sms_application_sid.as_ref().map(|app| {
        format!("sms_application_sid {app} is set: Twilio calls that TwiML App's SMS URLs instead")
    });
    let held = |role, field, url: &Option<String>, method: &Option<String>| Held {
        resource: resource.clone(),
        role,
        field,
        url: url.clone(),
        method: method.clone(),
        overridden_by: overridden_by.clone(),
        note: note.clone(),
        fix_with: fix_with.clone(),
    };
    vec![
        held(
            Role::Incoming,
            "sms_url",
            &number.sms_url,
            &number.sms_method,
        ),
        held(
            Role::Fallback,
            "sms_fallback_url",
            &number.sms_fallback_url,
            &number.sms_fallback_method,
        ),
    ]
}

/// One check per URL: pass when it is this server's route for its role (under `routes`,
/// from `server.public_url`), called with POST or GET. Without `routes` (`server.public_url`
/// unset) a URL whose path ends in the role's route is only a warning: its host cannot be
/// checked.
pub fn judge(held: &[Held], routes: Option<&Routes>) -> Vec<Check> {
    held.iter().map(|h| judge_one(h, routes)).collect()
}

fn judge_one(h: &Held, routes: Option<&Routes>) -> Check {
    let name = format!("{} {}", h.resource, h.role);
    let connect = h.fix_with.connect_command();
    let fix = match routes {
        Some(_) => connect.clone(),
        None => format!("set server.public_url, then run {connect}"),
    };
    let context = h
        .note
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    if let Some(why) = &h.overridden_by {
        return Check::fail(
            name,
            format!("{}: {why}{context}", h.field),
            format!("{connect} (it removes the TwiML App from the number)"),
        );
    }
    let Some(url) = h.url.as_deref() else {
        let consequence = match h.role {
            Role::Incoming => "Twilio calls nothing when a message arrives",
            Role::Fallback => "Twilio has nothing to call when the incoming URL fails",
            Role::Status => "Twilio sends no status callbacks unless a message names one",
        };
        return Check::fail(
            name,
            format!("{} is not set: {consequence}{context}", h.field),
            fix,
        );
    };
    let shown = redact(url);
    let method_problem = h.method.as_deref().and_then(|m| {
        (!m.eq_ignore_ascii_case("POST") && !m.eq_ignore_ascii_case("GET"))
            .then(|| format!("; its method is {m}, and this server answers POST and GET only"))
    });
    let method = h.method.as_deref().unwrap_or("POST");
    let Some(routes) = routes else {
        return if url_path(url).ends_with(h.role.path()) {
            let base = base_before(url, h.role.path());
            let detail = format!(
                "{} is {shown} ({method}){}{context}; server.public_url is not set, so whether that host is this server cannot be checked",
                h.field,
                method_problem.as_deref().unwrap_or_default()
            );
            if method_problem.is_some() {
                Check::fail(name, detail, fix)
            } else {
                Check::warn(
                    name,
                    detail,
                    format!("set server.public_url to {}", redact(base)),
                )
            }
        } else {
            Check::fail(
                name,
                format!(
                    "{} is {shown}, whose path is not this server's {}{}{context}",
                    h.field,
                    h.role.path(),
                    method_problem.as_deref().unwrap_or_default()
                ),
                fix,
            )
        };
    };
    let target = h.role.route(routes);
    if comparable(url) == target {
        return match method_problem {
            None => Check::pass(name, format!("{} is {shown} ({method}){context}", h.field)),
            Some(problem) => Check::fail(
                name,
                format!("{} is {shown}{problem}{context}", h.field),
                fix,
            ),
        };
    }
    let elsewhere = match Role::ALL
        .into_iter()
        .find(|other| *other != h.role && comparable(url) == other.route(routes))
    {
        Some(other) => format!("this server's {other}, not its {}", h.role),
        None => format!("not this server's {target}"),
    };
    Check::fail(
        name,
        format!(
            "{} is {shown}: {elsewhere}{}{context}",
            h.field,
            method_problem.as_deref().unwrap_or_default()
        ),
        fix,
    )
}

/// The check for a resource whose configuration could not be read, with what to do. For
/// the WhatsApp Sandbox (which the API cannot change): what to paste where in the Console.
pub fn lookup_failed(resource: &Resource, error: &LookupError, routes: Option<&Routes>) -> Check {
    let name = resource.label();
    if error.is_sandbox() {
        let (incoming, status) = match routes {
            Some(r) => (r.incoming.clone(), r.status.clone()),
            None => (
                format!("<server.public_url>{MESSAGES_PATH}"),
                format!("<server.public_url>{STATUS_PATH}"),
            ),
        };
        return Check::fail(
            name,
            format!(
                "{SANDBOX_SENDER} is the WhatsApp Sandbox: its URLs are set in the Console only, and the API cannot read them"
            ),
            format!(
                "in the Console, Messaging > Try it out > Send a WhatsApp message > Sandbox settings: set \"When a message comes in\" to {incoming} (POST) and \"Status callback URL\" to {status} (POST)"
            ),
        );
    }
    let fix = match error {
        LookupError::SenderNotFound { .. } => {
            "check the sender id (the account's WhatsApp senders are under Messaging > Senders in the Console)".to_owned()
        }
        LookupError::NumberNotFound { account, .. } => {
            format!("check the number: it must be one of account {account}'s phone numbers, in E.164")
        }
        LookupError::Rest(RestError::NoCredentials { .. } | RestError::NoMainAccount) => {
            "set twilio.account_sid (TWILIO_ACCOUNT_SID) and its auth token (TWILIO_AUTH_TOKEN) or an API key (TWILIO_API_KEY, TWILIO_API_SECRET)".to_owned()
        }
        LookupError::Rest(RestError::Unauthorized { .. } | RestError::Forbidden { .. }) => {
            "check the account's credentials (twilio.auth_tokens, twilio.api_key and twilio.api_secret)".to_owned()
        }
        LookupError::Rest(RestError::NotFound { .. }) => {
            "check the SID: the account's Messaging Services are under Messaging > Services in the Console".to_owned()
        }
        LookupError::Rest(_) => "try again; if it persists, check Twilio's status page".to_owned(),
    };
    Check::fail(name, format!("cannot read it from Twilio: {error}"), fix)
}

/// The URL without its `user:password@`, query and fragment: what must equal a route.
fn comparable(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let host_start = rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
            format!("{scheme}://{}", &rest[host_start..])
        }
        None => url.to_owned(),
    }
}

/// The URL's path, without query or fragment (`/twilio/messages`).
fn url_path(url: &str) -> &str {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => url,
    }
}

/// What comes before `path` at the end of the URL's path (`https://x.test` for
/// `https://x.test/twilio/messages?a=b`).
fn base_before<'a>(url: &'a str, path: &str) -> &'a str {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    url.strip_suffix(path).unwrap_or(url)
}

/// The URL with the password of its `user:password@`, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::Verdict;

    const BASE: &str = "https://recv.example.test";
    const ID: &str = "whatsapp:+15550001111";

    fn routes() -> Routes {
        Routes::under(BASE)
    }

    fn sender(incoming: Option<&str>, method: Option<&str>) -> Held {
        Held {
            resource: format!("sender {ID}"),
            role: Role::Incoming,
            field: "webhook.callback_url",
            url: incoming.map(str::to_owned),
            method: method.map(str::to_owned),
            overridden_by: None,
            note: None,
            fix_with: Resource::Sender(ID.into()),
        }
    }

    fn one(h: Held, routes: Option<&Routes>) -> Check {
        judge(&[h], routes).remove(0)
    }

    #[test]
    fn setup_this_servers_route_passes_with_post_or_get() {
        let url = format!("{BASE}/twilio/messages");
        for method in [Some("POST"), Some("GET"), Some("post"), None] {
            let check = one(sender(Some(&url), method), Some(&routes()));
            assert_eq!(check.verdict, Verdict::Pass, "{method:?}: {check:?}");
            assert_eq!(check.name, format!("sender {ID} incoming URL"));
        }
        // Basic-auth credentials, a query of the operator's and connection overrides in the
        // fragment are all still this server's route.
        for url in [
            "https://twilio:s3cret@recv.example.test/twilio/messages",
            "https://recv.example.test/twilio/messages?tenant=a",
            "https://recv.example.test/twilio/messages#rc=3",
        ] {
            let check = one(sender(Some(url), Some("POST")), Some(&routes()));
            assert_eq!(check.verdict, Verdict::Pass, "{url}: {check:?}");
            assert!(!check.detail.contains("s3cret"), "{check:?}");
        }
    }

    #[test]
    fn setup_another_url_fails_with_the_connect_command() {
        for url in [
            "https://old.example.test/twilio/messages",
            "https://Recv.example.test/twilio/messages",
            "https://recv.example.test/twilio/messages/",
            "http://recv.example.test/twilio/messages",
            "https://recv.example.test:8443/twilio/messages",
        ] {
            let check = one(sender(Some(url), Some("POST")), Some(&routes()));
            assert_eq!(check.verdict, Verdict::Fail, "{url}");
            assert!(
                check
                    .detail
                    .contains("not this server's https://recv.example.test/twilio/messages"),
                "{check:?}"
            );
            assert_eq!(
                check.fix.as_deref(),
                Some("twilio-receiver connect --sender whatsapp:+15550001111")
            );
        }
        let check = one(
            sender(Some("https://recv.example.test/twilio/status"), None),
            Some(&routes()),
        );
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(
            check
                .detail
                .contains("this server's status callback URL, not its incoming URL"),
            "{check:?}"
        );
    }

    #[test]
    fn setup_an_unset_url_fails() {
        let check = one(sender(None, None), Some(&routes()));
        assert_eq!(check.verdict, Verdict::Fail);
        assert_eq!(
            check.detail,
            "webhook.callback_url is not set: Twilio calls nothing when a message arrives"
        );
    }

    #[test]
    fn setup_a_method_other_than_post_or_get_fails() {
        let url = format!("{BASE}/twilio/messages");
        let check = one(sender(Some(&url), Some("PUT")), Some(&routes()));
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(
            check
                .detail
                .contains("its method is PUT, and this server answers POST and GET only"),
            "{check:?}"
        );
        // Without public_url too.
        let check = one(sender(Some(&url), Some("PUT")), None);
        assert_eq!(check.verdict, Verdict::Fail);
    }

    #[test]
    fn setup_without_public_url_a_route_path_only_warns() {
        let check = one(
            sender(
                Some("https://abc.ngrok.app/twilio/messages?x=1"),
                Some("POST"),
            ),
            None,
        );
        assert_eq!(check.verdict, Verdict::Warn, "{check:?}");
        assert!(check.detail.contains("server.public_url is not set"));
        assert_eq!(
            check.fix.as_deref(),
            Some("set server.public_url to https://abc.ngrok.app")
        );
        let check = one(sender(Some("https://old.example.test/sms"), None), None);
        assert_eq!(check.verdict, Verdict::Fail);
        assert_eq!(
            check.fix.as_deref(),
            Some(
                "set server.public_url, then run twilio-receiver connect --sender whatsapp:+15550001111"
            )
        );
    }

    fn number(sms_url: &str, app: Option<&str>) -> IncomingPhoneNumber {
        IncomingPhoneNumber {
            sid: "PN00000000000000000000000000000001".into(),
            account_sid: Some("AC00000000000000000000000000000000".into()),
            phone_number: Some("+15550002222".into()),
            sms_url: Some(sms_url.into()),
            sms_method: Some("POST".into()),
            sms_fallback_url: Some(format!("{BASE}/twilio/fallback")),
            sms_fallback_method: Some("POST".into()),
            sms_application_sid: app.map(str::to_owned),
        }
    }

    fn service(defers: bool) -> ServiceResource {
        ServiceResource {
            sid: "MG00000000000000000000000000000001".into(),
            account_sid: Some("AC00000000000000000000000000000000".into()),
            friendly_name: None,
            inbound_request_url: Some("https://elsewhere.example.test/in".into()),
            inbound_method: Some("POST".into()),
            fallback_url: None,
            fallback_method: Some("POST".into()),
            status_callback: Some(format!("{BASE}/twilio/status")),
            use_inbound_webhook_on_number: Some(defers),
        }
    }

    #[test]
    fn setup_a_twiml_app_on_a_number_fails_even_when_sms_url_is_right() {
        let n = number(&format!("{BASE}/twilio/messages"), Some("AP0123"));
        let resource = Resource::PhoneNumber("+15550002222".into());
        let held = number_held(&n, resource.label(), resource, None);
        assert_eq!(held.len(), 2, "no status callback for a number");
        assert_eq!(held[0].called_url(), None);
        let checks = judge(&held, Some(&routes()));
        assert!(checks.iter().all(|c| c.verdict == Verdict::Fail));
        assert!(
            checks[0]
                .detail
                .contains("sms_application_sid AP0123 is set")
        );
    }

    #[test]
    fn setup_a_service_that_defers_is_judged_by_its_numbers_urls() {
        // Its own inbound URL points elsewhere, but Twilio calls the numbers' URLs: here.
        let n = number(&format!("{BASE}/twilio/messages"), None);
        let held = service_held(&service(true), &[n]);
        let roles: Vec<_> = held.iter().map(|h| (h.role, h.field)).collect();
        assert_eq!(
            roles,
            [
                (Role::Incoming, "sms_url"),
                (Role::Fallback, "sms_fallback_url"),
                (Role::Status, "status_callback"),
            ]
        );
        assert!(
            judge(&held, Some(&routes()))
                .iter()
                .all(|c| c.verdict == Verdict::Pass),
            "{held:?}"
        );
        assert_eq!(
            held[0].resource,
            "phone number +15550002222 in Messaging Service MG00000000000000000000000000000001"
        );

        // A number pointing elsewhere is flagged, with the service's connect as the fix.
        let n = number("https://elsewhere.example.test/in", None);
        let checks = judge(&service_held(&service(true), &[n]), Some(&routes()));
        assert_eq!(checks[0].verdict, Verdict::Fail);
        assert!(
            checks[0]
                .detail
                .contains("use_inbound_webhook_on_number = true"),
            "{checks:?}"
        );
        assert_eq!(
            checks[0].fix.as_deref(),
            Some("twilio-receiver connect --messaging-service MG00000000000000000000000000000001")
        );

        // A service that does not defer is judged by its own URLs.
        let held = service_held(&service(false), &[]);
        assert_eq!(held[0].field, "inbound_request_url");
        let checks = judge(&held, Some(&routes()));
        let verdicts: Vec<_> = checks.iter().map(|c| c.verdict).collect();
        assert_eq!(verdicts, [Verdict::Fail, Verdict::Fail, Verdict::Pass]);
    }

    #[test]
    fn setup_probe_urls_are_the_called_ones_ending_in_a_route() {
        let mut h = sender(Some("https://x.test/prefix/twilio/fallback?a=1"), None);
        assert_eq!(
            h.probe_url(),
            Some("https://x.test/prefix/twilio/fallback?a=1")
        );
        h.url = Some("https://x.test/sms".into());
        assert_eq!(h.probe_url(), None);
        h.url = Some("https://x.test/twilio/messages".into());
        h.overridden_by = Some("a TwiML App".into());
        assert_eq!(h.probe_url(), None);
    }

    #[test]
    fn setup_arguments_are_checked_and_spelled_as_twilio_does() {
        assert_eq!(
            parse_sender("WhatsApp:+14155238886").as_deref(),
            Ok("whatsapp:+14155238886")
        );
        for bad in [
            "+14155238886",
            "sms:+14155238886",
            "whatsapp:14155238886",
            "whatsapp:+1",
        ] {
            assert!(parse_sender(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_service_sid("mg0123456789ABCDEF0123456789abcdef").as_deref(),
            Ok("MG0123456789abcdef0123456789abcdef")
        );
        assert!(parse_service_sid("MG123").is_err());
        assert!(parse_service_sid("PN0123456789abcdef0123456789abcdef").is_err());
        assert_eq!(
            parse_phone_number("+15551234567").as_deref(),
            Ok("+15551234567")
        );
        for bad in ["15551234567", "+1 555", "+0555", "+1234567890123456"] {
            assert!(parse_phone_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn setup_passwords_in_urls_are_redacted() {
        assert_eq!(
            redact("https://twilio:s3cret@x.test/twilio/messages"),
            "https://twilio:***@x.test/twilio/messages"
        );
        assert_eq!(redact("https://x.test/a@b"), "https://x.test/a@b");
        assert_eq!(redact("https://x.test/"), "https://x.test/");
    }

    #[test]
    fn setup_the_sandbox_gets_what_to_paste_where() {
        let resource = Resource::Sender(SANDBOX_SENDER.into());
        let error = LookupError::SenderNotFound {
            sender: SANDBOX_SENDER.into(),
        };
        let check = lookup_failed(&resource, &error, Some(&routes()));
        assert_eq!(check.verdict, Verdict::Fail);
        let fix = check.fix.unwrap();
        assert!(
            fix.contains(
                "\"When a message comes in\" to https://recv.example.test/twilio/messages (POST)"
            ),
            "{fix}"
        );
        assert!(
            fix.contains("\"Status callback URL\" to https://recv.example.test/twilio/status"),
            "{fix}"
        );
    }
}
