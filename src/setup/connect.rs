//! `connect`: points one Twilio resource at this server's routes, method POST, through the
//! REST API. [`plan`] reads what Twilio holds and lists each field with its value now and the
//! value wanted; [`Plan::apply`] writes them in one update and returns what Twilio holds
//! afterwards. A plan with nothing to change writes nothing, so running `connect` twice
//! changes nothing the second time.
//!
//! What each kind gets:
//! - a WhatsApp sender: `webhook.callback_url`, `fallback_url`, `status_callback_url`, each
//!   with POST (sent together as the `webhook` object);
//! - a Messaging Service: `inbound_request_url`, `fallback_url`, `status_callback`, the
//!   methods POST, and `use_inbound_webhook_on_number = false`, so that the service's URLs
//!   are the ones Twilio calls for every number in it;
//! - a phone number: `sms_url` and `sms_fallback_url` with POST; a TwiML App set on it
//!   (`sms_application_sid`) is removed, since Twilio would call the App's URLs instead. Its
//!   `status_callback` is for voice calls and is left alone.

use super::{
    Resource, Routes,
    twilio::{LookupError, find_number, find_sender},
};
use crate::rest::{
    IncomingPhoneNumber, NumberUpdate, RestClient, RestError, SenderResource, SenderWebhook,
    ServiceResource, ServiceUpdate,
};

const POST: &str = "POST";

/// One field of the resource: its value before, and the value wanted (or, after
/// [`Plan::apply`], the value Twilio holds). `None` is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// As Twilio names it: `webhook.callback_url`, `inbound_method`, `sms_url`.
    pub name: &'static str,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl Field {
    /// Whether `after` differs from `before` (methods compared without case).
    pub fn changes(&self) -> bool {
        match (&self.before, &self.after) {
            (Some(a), Some(b)) if self.name.ends_with("method") => !a.eq_ignore_ascii_case(b),
            (a, b) => a != b,
        }
    }
}

/// What `connect` would change on one resource.
#[derive(Debug, Clone)]
pub struct Plan {
    pub resource: Resource,
    /// The resource's SID at Twilio (`XE…`, `MG…`, `PN…`).
    pub sid: String,
    /// Every field `connect` sets, changed or not, in the order Twilio shows them.
    pub fields: Vec<Field>,
    /// What the operator should know about how Twilio uses these URLs.
    pub notes: Vec<String>,
    write: Write,
}

#[derive(Debug, Clone)]
enum Write {
    Sender(SenderWebhook),
    Service(ServiceUpdate),
    Number {
        account: String,
        update: NumberUpdate,
    },
}

impl Plan {
    /// Whether Twilio already holds every wanted value.
    pub fn is_noop(&self) -> bool {
        !self.fields.iter().any(Field::changes)
    }

    /// Writes every wanted value in one update (an update Twilio may be sent twice: see
    /// [`RestClient`]'s retries). Returns the fields with `after` as Twilio answered.
    pub async fn apply(&self, client: &RestClient) -> Result<Vec<Field>, RestError> {
        let now = match &self.write {
            Write::Sender(webhook) => {
                sender_fields(&client.update_sender_webhook(&self.sid, webhook).await?)
            }
            Write::Service(update) => {
                service_fields(&client.update_service(&self.sid, update).await?)
            }
            Write::Number { account, update } => number_fields(
                &client
                    .update_incoming_phone_number(account, &self.sid, update)
                    .await?,
            ),
        };
        Ok(self
            .fields
            .iter()
            .map(|f| Field {
                name: f.name,
                before: f.before.clone(),
                after: now
                    .iter()
                    .find(|(name, _)| *name == f.name)
                    .and_then(|(_, value)| value.clone()),
            })
            .collect())
    }
}

/// Reads `resource` from Twilio and plans pointing it at `routes` (the URLs to write, which
/// carry `user:password@` when the server requires Basic auth).
pub async fn plan(
    client: &RestClient,
    resource: &Resource,
    routes: &Routes,
) -> Result<Plan, LookupError> {
    Ok(match resource {
        Resource::Sender(id) => sender_plan(resource, &find_sender(client, id).await?, routes),
        Resource::MessagingService(sid) => {
            service_plan(resource, &client.fetch_service(sid).await?, routes)
        }
        Resource::PhoneNumber(number) => {
            let found = find_number(client, number).await?;
            let account = match &found.account_sid {
                Some(account) => account.clone(),
                None => client.main_account()?.to_owned(),
            };
            number_plan(resource, &found, account, routes)
        }
    })
}

/// `(name, value now)` pairs in display order, joined with the wanted values.
fn fields(now: Vec<(&'static str, Option<String>)>, wanted: &[Option<String>]) -> Vec<Field> {
    now.into_iter()
        .zip(wanted)
        .map(|((name, before), after)| Field {
            name,
            before,
            after: after.clone(),
        })
        .collect()
}

fn sender_fields(sender: &SenderResource) -> Vec<(&'static str, Option<String>)> {
    let w = &sender.webhook;
    vec![
        ("webhook.callback_url", w.callback_url.clone()),
        ("webhook.callback_method", w.callback_method.clone()),
        ("webhook.fallback_url", w.fallback_url.clone()),
        ("webhook.fallback_method", w.fallback_method.clone()),
        ("webhook.status_callback_url", w.status_callback_url.clone()),
        (
            "webhook.status_callback_method",
            w.status_callback_method.clone(),
        ),
    ]
}

fn sender_plan(resource: &Resource, sender: &SenderResource, routes: &Routes) -> Plan {
    // The whole webhook object is sent: whether Twilio merges it or replaces it, the sender
    // ends up with exactly these six values.
    let webhook = SenderWebhook {
        callback_url: Some(routes.incoming.clone()),
        callback_method: Some(POST.into()),
        fallback_url: Some(routes.fallback.clone()),
        fallback_method: Some(POST.into()),
        status_callback_url: Some(routes.status.clone()),
        status_callback_method: Some(POST.into()),
    };
    let wanted = [
        webhook.callback_url.clone(),
        webhook.callback_method.clone(),
        webhook.fallback_url.clone(),
        webhook.fallback_method.clone(),
        webhook.status_callback_url.clone(),
        webhook.status_callback_method.clone(),
    ];
    Plan {
        resource: resource.clone(),
        sid: sender.sid.clone(),
        fields: fields(sender_fields(sender), &wanted),
        notes: Vec::new(),
        write: Write::Sender(webhook),
    }
}

fn service_fields(service: &ServiceResource) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("inbound_request_url", service.inbound_request_url.clone()),
        ("inbound_method", service.inbound_method.clone()),
        ("fallback_url", service.fallback_url.clone()),
        ("fallback_method", service.fallback_method.clone()),
        ("status_callback", service.status_callback.clone()),
        (
            "use_inbound_webhook_on_number",
            service
                .use_inbound_webhook_on_number
                .map(|on| on.to_string()),
        ),
    ]
}

fn service_plan(resource: &Resource, service: &ServiceResource, routes: &Routes) -> Plan {
    let update = ServiceUpdate {
        inbound_request_url: Some(routes.incoming.clone()),
        inbound_method: Some(POST.into()),
        fallback_url: Some(routes.fallback.clone()),
        fallback_method: Some(POST.into()),
        status_callback: Some(routes.status.clone()),
        use_inbound_webhook_on_number: Some(false),
    };
    let wanted = [
        update.inbound_request_url.clone(),
        update.inbound_method.clone(),
        update.fallback_url.clone(),
        update.fallback_method.clone(),
        update.status_callback.clone(),
        Some(false.to_string()),
    ];
    Plan {
        resource: resource.clone(),
        sid: service.sid.clone(),
        fields: fields(service_fields(service), &wanted),
        notes: vec![
            "use_inbound_webhook_on_number = false: Twilio calls the service's URLs for every \
             number in it, not each number's own sms_url"
                .into(),
        ],
        write: Write::Service(update),
    }
}

fn number_fields(number: &IncomingPhoneNumber) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("sms_url", number.sms_url.clone()),
        ("sms_method", number.sms_method.clone()),
        ("sms_fallback_url", number.sms_fallback_url.clone()),
        ("sms_fallback_method", number.sms_fallback_method.clone()),
        ("sms_application_sid", number.sms_application_sid.clone()),
    ]
}

fn number_plan(
    resource: &Resource,
    number: &IncomingPhoneNumber,
    account: String,
    routes: &Routes,
) -> Plan {
    let update = NumberUpdate {
        sms_url: Some(routes.incoming.clone()),
        sms_method: Some(POST.into()),
        sms_fallback_url: Some(routes.fallback.clone()),
        sms_fallback_method: Some(POST.into()),
        // An empty value removes the TwiML App; sent only when one is set.
        sms_application_sid: number.sms_application_sid.as_ref().map(|_| String::new()),
    };
    let wanted = [
        update.sms_url.clone(),
        update.sms_method.clone(),
        update.sms_fallback_url.clone(),
        update.sms_fallback_method.clone(),
        None,
    ];
    let mut notes = vec![
        "a phone number has no status callback URL for messages: statuses come to the URL a \
         message is sent with (StatusCallback), or to its Messaging Service's status_callback; \
         the number's own status_callback is for voice calls and is left alone"
            .to_owned(),
        "if the number is in a Messaging Service, Twilio calls the service's URLs unless the \
         service's use_inbound_webhook_on_number is true: connect the service instead \
         (--messaging-service)"
            .to_owned(),
    ];
    if number.sms_application_sid.is_some() {
        notes.insert(
            0,
            "the number's TwiML App (sms_application_sid) is removed: while it is set, Twilio \
             calls the App's URLs instead of sms_url"
                .to_owned(),
        );
    }
    Plan {
        resource: resource.clone(),
        sid: number.sid.clone(),
        fields: fields(number_fields(number), &wanted),
        notes,
        write: Write::Number { account, update },
    }
}

/// `routes` with `user:password@` before each host, for a server that requires HTTP Basic
/// auth (`server.basic_auth`): Twilio sends the credentials written in the URL. They are
/// percent-encoded; everything else is kept byte for byte (the signature covers it).
pub fn with_credentials(routes: &Routes, user: &str, password: &str) -> Routes {
    let userinfo = format!("{}:{}@", encode(user), encode(password));
    let add = |url: &str| match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{userinfo}{rest}"),
        None => url.to_owned(),
    };
    Routes {
        incoming: add(&routes.incoming),
        fallback: add(&routes.fallback),
        status: add(&routes.status),
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://recv.example.test";

    fn number(sms_url: Option<&str>, app: Option<&str>) -> IncomingPhoneNumber {
        IncomingPhoneNumber {
            sid: "PN00000000000000000000000000000001".into(),
            account_sid: Some("AC00000000000000000000000000000000".into()),
            phone_number: Some("+15550002222".into()),
            sms_url: sms_url.map(str::to_owned),
            sms_method: Some("POST".into()),
            sms_fallback_url: Some(format!("{BASE}/twilio/fallback")),
            sms_fallback_method: Some("post".into()),
            sms_application_sid: app.map(str::to_owned),
        }
    }

    #[test]
    fn setup_a_number_already_pointing_here_plans_nothing() {
        let resource = Resource::PhoneNumber("+15550002222".into());
        let routes = Routes::under(BASE);
        let n = number(Some(&routes.incoming), None);
        let plan = number_plan(&resource, &n, "AC0".into(), &routes);
        assert!(plan.is_noop(), "{plan:?}");

        let plan = number_plan(&resource, &number(None, None), "AC0".into(), &routes);
        let changed: Vec<_> = plan
            .fields
            .iter()
            .filter(|f| f.changes())
            .map(|f| f.name)
            .collect();
        assert_eq!(changed, ["sms_url"]);
    }

    #[test]
    fn setup_a_twiml_app_is_removed_and_said_so() {
        let resource = Resource::PhoneNumber("+15550002222".into());
        let routes = Routes::under(BASE);
        let n = number(Some(&routes.incoming), Some("AP0123"));
        let plan = number_plan(&resource, &n, "AC0".into(), &routes);
        assert!(!plan.is_noop());
        let app = plan.fields.last().unwrap();
        assert_eq!(
            (app.name, app.before.as_deref(), app.after.as_deref()),
            ("sms_application_sid", Some("AP0123"), None)
        );
        assert!(plan.notes[0].contains("TwiML App"));
        let Write::Number { update, .. } = &plan.write else {
            panic!("{plan:?}")
        };
        assert_eq!(update.sms_application_sid.as_deref(), Some(""));
    }

    #[test]
    fn setup_basic_auth_credentials_are_encoded_into_the_urls() {
        let routes = with_credentials(
            &Routes::under("https://Recv.example.test/base/"),
            "tw",
            "p@ss:w/rd",
        );
        assert_eq!(
            routes.incoming,
            "https://tw:p%40ss%3Aw%2Frd@Recv.example.test/base/twilio/messages"
        );
        assert_eq!(
            routes.status,
            "https://tw:p%40ss%3Aw%2Frd@Recv.example.test/base/twilio/status"
        );
    }
}
