//! A fake of Twilio's REST API (TWILIO.md §11) on 127.0.0.1, in memory, in the shapes of
//! Twilio's OpenAPI description (twilio-oai; excerpts in `shared/twilio-api/`):
//!
//! - the 2010 API: each account's messages and their media (RFC 2822 dates; `num_segments`,
//!   `num_media` and `price` as strings; the paging envelope with relative URIs and
//!   `next_page_uri` null on the last page), and its phone numbers (`IncomingPhoneNumbers`,
//!   unset URLs written `""`), read and updated;
//! - the Messaging API, served from the same address (so one fake is both
//!   `twilio.api_base_url` and `twilio.messaging_base_url`): Messaging Services (v1) with
//!   their phone numbers, and WhatsApp senders (v2), read and updated, with ISO 8601 dates and
//!   the `meta` envelope whose `next_page_url` is absolute. Its paths name no account: the
//!   credentials choose it, as on Twilio.
//!
//! It checks HTTP Basic auth, lets a test script failures (the next N requests answer 429,
//! 500, 401 or 403) and a delay, and records every request (method, path, query, body, user)
//! for the test to assert; an update changes the fake's state, so a test can assert both what
//! Twilio holds afterwards and that no write happened.
//!
//! Paging works like Twilio's: `PageSize` (1 to 1000, 50 by default) and `Page`, and past the
//! first page a `PageToken` (`PA` + the SID of the previous page's last item) that only the
//! `next_page_uri` it served carries, so a client that builds its own page URLs is refused.
//! Lists are newest first by `date_sent` (a message not sent yet by `date_created`).
//! `DateSent>` and `DateSent<` are inclusive, and take `YYYY-MM-DD` or an RFC 3339 time.

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::task::JoinHandle;

const ACCOUNTS: &str = "/2010-04-01/Accounts/";

/// A media item of a fake message.
#[derive(Clone, Debug)]
pub struct FakeMedia {
    pub sid: String,
    pub content_type: String,
    /// What `GET …/Media/{Sid}` (the URI without `.json`) answers with.
    pub content: Vec<u8>,
    pub date_created: DateTime<Utc>,
}

/// A message as the fake keeps it; [`FakeMessage::json`] writes it as the API does. Fields
/// are public so a test can set what the constructors do not (nulls, errors, prices).
#[derive(Clone, Debug)]
pub struct FakeMessage {
    pub sid: String,
    pub account_sid: String,
    pub messaging_service_sid: Option<String>,
    pub from: String,
    pub to: String,
    pub body: Option<String>,
    /// `inbound`, `outbound-api`, `outbound-reply`, `outbound-call`.
    pub direction: String,
    pub status: String,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub num_segments: u32,
    pub price: Option<String>,
    pub price_unit: Option<String>,
    pub date_created: DateTime<Utc>,
    pub date_sent: Option<DateTime<Utc>>,
    pub date_updated: DateTime<Utc>,
    pub media: Vec<FakeMedia>,
}

impl FakeMessage {
    /// A message `contact` sent to `business`, received at `at`.
    pub fn inbound(
        account: &str,
        sid: &str,
        contact: &str,
        business: &str,
        body: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new("inbound", account, sid, contact, business, body, at)
    }

    /// A message `business` sent to `contact` through the REST API, at `at`.
    pub fn outbound_api(
        account: &str,
        sid: &str,
        business: &str,
        contact: &str,
        body: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new("outbound-api", account, sid, business, contact, body, at)
    }

    /// A reply `business` sent to `contact` in TwiML, at `at`.
    pub fn outbound_reply(
        account: &str,
        sid: &str,
        business: &str,
        contact: &str,
        body: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new("outbound-reply", account, sid, business, contact, body, at)
    }

    fn new(
        direction: &str,
        account: &str,
        sid: &str,
        from: &str,
        to: &str,
        body: &str,
        at: DateTime<Utc>,
    ) -> Self {
        FakeMessage {
            sid: sid.into(),
            account_sid: account.into(),
            messaging_service_sid: Some(format!("MG{:032x}", 0xabcu32)),
            from: from.into(),
            to: to.into(),
            body: Some(body.into()),
            direction: direction.into(),
            status: if direction == "inbound" {
                "received"
            } else {
                "delivered"
            }
            .into(),
            error_code: None,
            error_message: None,
            num_segments: 1,
            price: Some("-0.00500".into()),
            price_unit: Some("USD".into()),
            date_created: at - TimeDelta::seconds(1),
            date_sent: Some(at),
            date_updated: at + TimeDelta::seconds(2),
            media: Vec::new(),
        }
    }

    /// Adds a media item (its SID made from the message's and its index).
    pub fn with_media(mut self, content_type: &str, content: &[u8]) -> Self {
        let index = self.media.len();
        let sid = format!("ME{}{index:02}", &self.sid[2..self.sid.len() - 2]);
        self.media.push(FakeMedia {
            sid,
            content_type: content_type.into(),
            content: content.to_vec(),
            date_created: self.date_created,
        });
        self
    }

    /// The resource's path on the API.
    pub fn uri(&self) -> String {
        format!("{ACCOUNTS}{}/Messages/{}.json", self.account_sid, self.sid)
    }

    /// The media item's resource path (its content is the same without `.json`).
    pub fn media_uri(&self, media: &FakeMedia) -> String {
        format!(
            "{ACCOUNTS}{}/Messages/{}/Media/{}.json",
            self.account_sid, self.sid, media.sid
        )
    }

    /// The Message resource as the API writes it.
    pub fn json(&self) -> Value {
        let base = self.uri();
        let base = base.trim_end_matches(".json");
        json!({
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": self.date_sent.map(rfc2822),
            "date_updated": rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": self.media.len().to_string(),
            "num_segments": self.num_segments.to_string(),
            "price": self.price,
            "price_unit": self.price_unit,
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {
                "media": format!("{base}/Media.json"),
                "feedback": format!("{base}/Feedback.json"),
            },
            "to": self.to,
            "uri": self.uri(),
        })
    }

    /// A media item as the API writes it.
    pub fn media_json(&self, media: &FakeMedia) -> Value {
        json!({
            "account_sid": self.account_sid,
            "content_type": media.content_type,
            "date_created": rfc2822(media.date_created),
            "date_updated": rfc2822(media.date_created + TimeDelta::seconds(1)),
            "parent_sid": self.sid,
            "sid": media.sid,
            "uri": self.media_uri(media),
        })
    }

    /// Newest first: by `date_sent`, a message not sent yet by `date_created`.
    fn order(&self) -> (DateTime<Utc>, &str) {
        (self.date_sent.unwrap_or(self.date_created), &self.sid)
    }
}

/// `Thu, 24 Aug 2023 05:01:45 +0000`, as Twilio writes dates.
pub fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// `2015-07-30T20:12:31Z`, as the Messaging API writes dates.
pub fn iso8601(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A 34-character SID: `prefix` and `n` in hexadecimal.
pub fn fake_sid(prefix: &str, n: u32) -> String {
    format!("{prefix}{n:032x}")
}

/// The time the fake's resources were created.
fn created() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-07-30T20:12:31Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A phone number of an account (`IncomingPhoneNumbers`). Unset URLs are `""`, as Twilio
/// writes them for this resource.
#[derive(Clone, Debug)]
pub struct FakeNumber {
    pub sid: String,
    pub account_sid: String,
    pub phone_number: String,
    pub sms_url: String,
    pub sms_method: String,
    pub sms_fallback_url: String,
    pub sms_fallback_method: String,
    pub sms_application_sid: String,
    /// For voice calls' status; never touched by what is tested.
    pub status_callback: String,
    pub status_callback_method: String,
    pub voice_url: Option<String>,
    pub date_created: DateTime<Utc>,
    pub date_updated: DateTime<Utc>,
}

impl FakeNumber {
    /// Number `n` (its SID `PN…n`) of `account`, with no SMS URLs set.
    pub fn new(account: &str, n: u32, phone_number: &str) -> Self {
        FakeNumber {
            sid: fake_sid("PN", n),
            account_sid: account.into(),
            phone_number: phone_number.into(),
            sms_url: String::new(),
            sms_method: "POST".into(),
            sms_fallback_url: String::new(),
            sms_fallback_method: "POST".into(),
            sms_application_sid: String::new(),
            status_callback: "https://voice.example.test/status".into(),
            status_callback_method: "POST".into(),
            voice_url: None,
            date_created: created(),
            date_updated: created(),
        }
    }

    /// With `sms_url` (POST).
    pub fn sms_url(mut self, url: &str) -> Self {
        self.sms_url = url.into();
        self
    }

    pub fn uri(&self) -> String {
        format!(
            "{ACCOUNTS}{}/IncomingPhoneNumbers/{}.json",
            self.account_sid, self.sid
        )
    }

    /// The IncomingPhoneNumber as the 2010 API writes it.
    pub fn json(&self) -> Value {
        json!({
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": null,
            "api_version": "2010-04-01",
            "beta": false,
            "capabilities": {"voice": true, "sms": true, "mms": true, "fax": false},
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated),
            "emergency_status": "Inactive",
            "emergency_address_sid": null,
            "emergency_address_status": "unregistered",
            "friendly_name": self.phone_number,
            "identity_sid": null,
            "origin": "twilio",
            "phone_number": self.phone_number,
            "sid": self.sid,
            "sms_application_sid": self.sms_application_sid,
            "sms_fallback_method": self.sms_fallback_method,
            "sms_fallback_url": self.sms_fallback_url,
            "sms_method": self.sms_method,
            "sms_url": self.sms_url,
            "status_callback": self.status_callback,
            "status_callback_method": self.status_callback_method,
            "trunk_sid": null,
            "uri": self.uri(),
            "voice_application_sid": "",
            "voice_caller_id_lookup": false,
            "voice_fallback_method": "POST",
            "voice_fallback_url": null,
            "voice_method": "POST",
            "voice_url": self.voice_url,
            "voice_receive_mode": "voice",
            "status": "in-use",
            "bundle_sid": null,
            "type": "local",
        })
    }
}

/// A Messaging Service (`/v1/Services/{Sid}`).
#[derive(Clone, Debug)]
pub struct FakeService {
    pub sid: String,
    pub account_sid: String,
    pub friendly_name: String,
    pub inbound_request_url: Option<String>,
    pub inbound_method: String,
    pub fallback_url: Option<String>,
    pub fallback_method: String,
    pub status_callback: Option<String>,
    pub use_inbound_webhook_on_number: bool,
    /// The SIDs (`PN…`) of the account's numbers in the service.
    pub phone_numbers: Vec<String>,
    pub date_created: DateTime<Utc>,
    pub date_updated: DateTime<Utc>,
}

impl FakeService {
    /// Service `n` (its SID `MG…n`) of `account`, with no URLs set.
    pub fn new(account: &str, n: u32) -> Self {
        FakeService {
            sid: fake_sid("MG", n),
            account_sid: account.into(),
            friendly_name: format!("Service {n}"),
            inbound_request_url: None,
            inbound_method: "POST".into(),
            fallback_url: None,
            fallback_method: "POST".into(),
            status_callback: None,
            use_inbound_webhook_on_number: false,
            phone_numbers: Vec::new(),
            date_created: created(),
            date_updated: created(),
        }
    }

    /// The Service as the Messaging API writes it.
    pub fn json(&self, base: &str) -> Value {
        let url = format!("{base}/v1/Services/{}", self.sid);
        let link = |name: &str| format!("{url}/{name}");
        json!({
            "account_sid": self.account_sid,
            "sid": self.sid,
            "date_created": iso8601(self.date_created),
            "date_updated": iso8601(self.date_updated),
            "friendly_name": self.friendly_name,
            "inbound_request_url": self.inbound_request_url,
            "inbound_method": self.inbound_method,
            "fallback_url": self.fallback_url,
            "fallback_method": self.fallback_method,
            "status_callback": self.status_callback,
            "sticky_sender": true,
            "mms_converter": true,
            "smart_encoding": false,
            "fallback_to_long_code": false,
            "area_code_geomatch": true,
            "validity_period": 36000,
            "scan_message_content": "inherit",
            "synchronous_validation": true,
            "usecase": "undeclared",
            "us_app_to_person_registered": false,
            "use_inbound_webhook_on_number": self.use_inbound_webhook_on_number,
            "links": {
                "phone_numbers": link("PhoneNumbers"),
                "short_codes": link("ShortCodes"),
                "alpha_senders": link("AlphaSenders"),
                "messages": link("Messages"),
                "us_app_to_person": link("Compliance/Usa2p"),
                "us_app_to_person_usecases": link("Compliance/Usa2p/Usecases"),
                "channel_senders": link("ChannelSenders"),
                "destination_alpha_senders": link("DestinationAlphaSenders"),
            },
            "url": url,
        })
    }

    /// A number of the service as `/v1/Services/{Sid}/PhoneNumbers` writes it.
    fn number_json(&self, number: &FakeNumber, base: &str) -> Value {
        json!({
            "sid": number.sid,
            "account_sid": number.account_sid,
            "service_sid": self.sid,
            "date_created": iso8601(number.date_created),
            "date_updated": iso8601(number.date_updated),
            "phone_number": number.phone_number,
            "country_code": "US",
            "capabilities": ["MMS", "SMS", "Voice"],
            "url": format!("{base}/v1/Services/{}/PhoneNumbers/{}", self.sid, number.sid),
        })
    }
}

/// A WhatsApp sender (`/v2/Channels/Senders/{Sid}`).
#[derive(Clone, Debug)]
pub struct FakeSender {
    pub sid: String,
    pub account_sid: String,
    /// `whatsapp:+14155238886`.
    pub sender_id: String,
    pub status: String,
    pub callback_url: Option<String>,
    pub callback_method: Option<String>,
    pub fallback_url: Option<String>,
    pub fallback_method: Option<String>,
    pub status_callback_url: Option<String>,
    pub status_callback_method: Option<String>,
}

impl FakeSender {
    /// Sender `n` (its SID `XE…n`) of `account`, online, with no URLs set.
    pub fn new(account: &str, n: u32, sender_id: &str) -> Self {
        FakeSender {
            sid: fake_sid("XE", n),
            account_sid: account.into(),
            sender_id: sender_id.into(),
            status: "ONLINE".into(),
            callback_url: None,
            callback_method: None,
            fallback_url: None,
            fallback_method: None,
            status_callback_url: None,
            status_callback_method: None,
        }
    }

    /// With its incoming, fallback and status callback URLs set, each with POST.
    pub fn pointing_at(mut self, incoming: &str, fallback: &str, status: &str) -> Self {
        self.callback_url = Some(incoming.into());
        self.callback_method = Some("POST".into());
        self.fallback_url = Some(fallback.into());
        self.fallback_method = Some("POST".into());
        self.status_callback_url = Some(status.into());
        self.status_callback_method = Some("POST".into());
        self
    }

    /// The sender as the Messaging API writes it.
    pub fn json(&self, base: &str) -> Value {
        json!({
            "sid": self.sid,
            "status": self.status,
            "sender_id": self.sender_id,
            "configuration": {
                "waba_id": "1234567890",
                "verification_method": "sms",
                "verification_code": null,
                "voice_application_sid": null,
                "account_type": null,
            },
            "webhook": {
                "callback_url": self.callback_url,
                "callback_method": self.callback_method,
                "fallback_url": self.fallback_url,
                "fallback_method": self.fallback_method,
                "status_callback_url": self.status_callback_url,
                "status_callback_method": self.status_callback_method,
            },
            "profile": {
                "name": "Example Business",
                "about": null,
                "address": null,
                "description": null,
                "emails": null,
                "logo_url": null,
                "banner_url": null,
                "privacy_url": null,
                "terms_of_service_url": null,
                "accent_color": null,
                "vertical": null,
                "websites": null,
                "phone_numbers": null,
            },
            "properties": {"quality_rating": "HIGH", "messaging_limit": "1K Customers/24hr"},
            "offline_reasons": null,
            "compliance": null,
            "url": format!("{base}/v2/Channels/Senders/{}", self.sid),
        })
    }
}

/// A failure the next requests answer with, whatever they ask.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// 429 (Twilio error 20429), with `Retry-After: n` (seconds) when given.
    RateLimited(Option<u64>),
    /// 500 (error 20500).
    ServerError,
    /// 401 (error 20003), whatever the credentials.
    Unauthorized,
    /// 403 (error 20403).
    Forbidden,
}

impl Failure {
    fn response(self, path: &str) -> Response {
        match self {
            Failure::RateLimited(retry_after) => {
                let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
                if let Some(seconds) = retry_after {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, seconds.to_string().parse().unwrap());
                }
                r
            }
            Failure::ServerError => twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error",
            ),
            Failure::Unauthorized => unauthorized(),
            Failure::Forbidden => {
                twilio_error(StatusCode::FORBIDDEN, 20403, &format!("Forbidden: {path}"))
            }
        }
    }
}

/// One request the fake answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET`, `POST`.
    pub method: String,
    pub path: String,
    /// The query's pairs, decoded, in order.
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// The body as sent (form or JSON).
    pub body: String,
    /// The HTTP Basic user, when the request had one.
    pub user: Option<String>,
    /// Whether its credentials were ones the account accepts.
    pub authenticated: bool,
    pub status: u16,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.query, name)
    }

    /// The body's pairs, decoded, when it is a form.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }

    /// The body as JSON, when it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

#[derive(Default)]
struct Data {
    /// `http://127.0.0.1:port`: the Messaging API's URLs are absolute.
    base: String,
    messages: Vec<FakeMessage>,
    numbers: Vec<FakeNumber>,
    services: Vec<FakeService>,
    senders: Vec<FakeSender>,
    /// By lower-cased AccountSid: the (user, secret) pairs accepted.
    credentials: HashMap<String, Vec<(String, String)>>,
    script: VecDeque<Failure>,
    delay: Duration,
    requests: Vec<Recorded>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
}

#[derive(Default)]
struct Shared(Mutex<Data>);

impl Shared {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.0.lock().unwrap()
    }
}

/// The running fake; dropping it stops the server.
pub struct FakeTwilio {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeTwilio {
    pub async fn start() -> FakeTwilio {
        Self::start_on(0).await
    }

    /// On a given port of 127.0.0.1 (0: any free one).
    pub async fn start_on(port: u16) -> FakeTwilio {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        shared.data().base = format!("http://{addr}");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeTwilio {
            shared,
            addr,
            server,
        }
    }

    /// What `twilio.api_base_url` and `twilio.messaging_base_url` point at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets `user:secret` (an AccountSid and auth token, or an API key SID and secret) read
    /// `account`'s resources.
    pub fn accept(&self, account: &str, user: &str, secret: &str) {
        self.shared
            .data()
            .credentials
            .entry(account.to_ascii_lowercase())
            .or_default()
            .push((user.into(), secret.into()));
    }

    pub fn add(&self, message: FakeMessage) {
        self.shared.data().messages.push(message);
    }

    pub fn add_number(&self, number: FakeNumber) {
        self.shared.data().numbers.push(number);
    }

    pub fn add_service(&self, service: FakeService) {
        self.shared.data().services.push(service);
    }

    pub fn add_sender(&self, sender: FakeSender) {
        self.shared.data().senders.push(sender);
    }

    /// The phone number `phone_number` as the fake holds it now.
    pub fn number(&self, phone_number: &str) -> FakeNumber {
        let data = self.shared.data();
        let found = data.numbers.iter().find(|n| n.phone_number == phone_number);
        found.expect("the fake has the number").clone()
    }

    /// The service `sid` as the fake holds it now.
    pub fn service(&self, sid: &str) -> FakeService {
        let data = self.shared.data();
        let found = data.services.iter().find(|s| s.sid == sid);
        found.expect("the fake has the service").clone()
    }

    /// The sender `sender_id` as the fake holds it now.
    pub fn sender(&self, sender_id: &str) -> FakeSender {
        let data = self.shared.data();
        let found = data.senders.iter().find(|s| s.sender_id == sender_id);
        found.expect("the fake has the sender").clone()
    }

    /// The requests that could change something (every method but GET), in order.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    /// The next `n` requests answer `failure`, before their credentials are looked at.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.shared
            .data()
            .script
            .extend(std::iter::repeat_n(failure, n));
    }

    /// Every request takes this long before it is answered.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.data().delay = delay;
    }

    /// The requests answered so far, in the order they finished.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.data().requests.clone()
    }

    /// The most requests for `account` that were in the fake at once.
    pub fn max_in_flight(&self, account: &str) -> usize {
        let data = self.shared.data();
        data.max_in_flight
            .get(&account.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

/// Counts a request in flight for its account until dropped (also when the client gives up
/// and the request is cancelled).
struct InFlight {
    shared: Arc<Shared>,
    account: String,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>, account: &str) -> InFlight {
        let mut data = shared.data();
        let now = {
            let n = data.in_flight.entry(account.into()).or_default();
            *n += 1;
            *n
        };
        let max = data.max_in_flight.entry(account.into()).or_default();
        *max = (*max).max(now);
        InFlight {
            shared: shared.clone(),
            account: account.into(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.shared.data().in_flight.get_mut(&self.account) {
            *n -= 1;
        }
    }
}

/// A request as the routes see it.
struct Request {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: String,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Request {
        method,
        path: uri.path().to_owned(),
        query: url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let credentials = basic_auth(&headers);
    // The 2010 API names the account in the path; the Messaging API's paths name none, and
    // the credentials choose it, as on Twilio.
    let account = match request.path.strip_prefix(ACCOUNTS) {
        Some(rest) => rest
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase(),
        None => credentials
            .as_ref()
            .and_then(|c| {
                let data = shared.data();
                data.credentials
                    .iter()
                    .find(|(_, accepted)| accepted.contains(c))
                    .map(|(account, _)| account.clone())
            })
            .unwrap_or_default(),
    };
    let delay = shared.data().delay;
    let in_flight = InFlight::enter(&shared, &account);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut data = shared.data();
    let authenticated = credentials.as_ref().is_some_and(|c| {
        data.credentials
            .get(&account)
            .is_some_and(|accepted| accepted.contains(c))
    });
    let response = match data.script.pop_front() {
        Some(failure) => failure.response(&request.path),
        None if !authenticated => unauthorized(),
        None => route(&mut data, &account, &request),
    };
    let Request {
        method,
        path,
        query,
        content_type,
        body,
    } = request;
    data.requests.push(Recorded {
        method: method.to_string(),
        path,
        query,
        content_type,
        body,
        user: credentials.map(|(user, _)| user),
        authenticated,
        status: response.status().as_u16(),
    });
    drop(data);
    drop(in_flight);
    response
}

fn route(data: &mut Data, account: &str, r: &Request) -> Response {
    let path = r.path.as_str();
    let read = r.method == Method::GET;
    if !read && r.method != Method::POST {
        return method_not_allowed(path);
    }
    if let Some(rest) = path.strip_prefix("/v1/Services/") {
        return services(data, account, r, rest);
    }
    if let Some(rest) = path.strip_prefix("/v2/Channels/Senders") {
        return senders(data, account, r, rest);
    }
    let Some(rest) = path.strip_prefix(ACCOUNTS) else {
        return not_found(path);
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match (segments.as_slice(), read) {
        (["IncomingPhoneNumbers.json"], true) => list_numbers(data, account, r),
        (["IncomingPhoneNumbers", file], _) => {
            let sid = file.strip_suffix(".json").unwrap_or_default();
            let sid = sid.to_owned();
            let Some(number) = data
                .numbers
                .iter_mut()
                .find(|n| n.account_sid.eq_ignore_ascii_case(account) && n.sid == sid)
            else {
                return not_found(path);
            };
            if !read && let Err(refusal) = update_number(number, r) {
                return refusal.response();
            }
            json_response(&number.json())
        }
        (_, false) => method_not_allowed(path),
        (_, true) => messages(data, account, path, &r.query),
    }
}

fn messages(data: &Data, account: &str, path: &str, query: &[(String, String)]) -> Response {
    let Some(rest) = path.strip_prefix(ACCOUNTS) else {
        return not_found(path);
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let message = |sid: &str| {
        data.messages
            .iter()
            .find(|m| m.account_sid.eq_ignore_ascii_case(account) && m.sid == sid)
    };
    match *segments.as_slice() {
        ["Messages.json"] => list_messages(data, account, path, query),
        ["Messages", file] => match file.strip_suffix(".json").and_then(message) {
            Some(m) => json_response(&m.json()),
            None => not_found(path),
        },
        ["Messages", sid, "Media.json"] => match message(sid) {
            Some(m) => {
                let items = m.media.iter().map(|me| (me.sid.clone(), me)).collect();
                paginate(
                    Envelope::V2010,
                    path,
                    "media_list",
                    Vec::new(),
                    query,
                    items,
                    |me| m.media_json(me),
                )
            }
            None => not_found(path),
        },
        ["Messages", sid, "Media", file] => {
            let found = message(sid).and_then(|m| {
                let sid = file.strip_suffix(".json").unwrap_or(file);
                m.media.iter().find(|me| me.sid == sid).map(|me| (m, me))
            });
            match found {
                Some((m, me)) if file.ends_with(".json") => json_response(&m.media_json(me)),
                // Twilio redirects to its CDN here; the fake serves the bytes itself.
                Some((_, me)) => (
                    [(header::CONTENT_TYPE, me.content_type.clone())],
                    me.content.clone(),
                )
                    .into_response(),
                None => not_found(path),
            }
        }
        _ => not_found(path),
    }
}

fn list_messages(data: &Data, account: &str, path: &str, query: &[(String, String)]) -> Response {
    // A filter that does not parse is a 400 naming it.
    let bound = |name: &'static str, end_of_day: bool| match param(query, name) {
        None => Ok(None),
        Some(v) => parse_time(v, end_of_day).map(Some).ok_or(name),
    };
    let (after, before) = match (bound("DateSent>", false), bound("DateSent<", true)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(name), _) | (_, Err(name)) => {
            return bad_request(20001, &format!("Invalid {name}"));
        }
    };
    let (to, from) = (param(query, "To"), param(query, "From"));
    let mut matching: Vec<&FakeMessage> = data
        .messages
        .iter()
        .filter(|m| m.account_sid.eq_ignore_ascii_case(account))
        .filter(|m| to.is_none_or(|to| m.to == to) && from.is_none_or(|from| m.from == from))
        .filter(|m| {
            // With a date filter, a message not sent yet matches nothing.
            (after.is_none() && before.is_none())
                || m.date_sent.is_some_and(|sent| {
                    after.is_none_or(|a| sent >= a) && before.is_none_or(|b| sent <= b)
                })
        })
        .collect();
    matching.sort_by(|a, b| b.order().cmp(&a.order()));
    // The filters as Twilio writes them back into its page URIs.
    let filters: Vec<(String, String)> = ["To", "From", "DateSent>", "DateSent<"]
        .into_iter()
        .filter_map(|name| param(query, name).map(|v| (name.to_owned(), v.to_owned())))
        .collect();
    let items = matching.into_iter().map(|m| (m.sid.clone(), m)).collect();
    paginate(
        Envelope::V2010,
        path,
        "messages",
        filters,
        query,
        items,
        |m| m.json(),
    )
}

/// Which API's paging envelope a list answers in.
#[derive(Clone, Copy)]
enum Envelope<'a> {
    /// The 2010 API's: relative URIs at the top level (`next_page_uri`, …).
    V2010,
    /// The Messaging API's: absolute URLs under `meta` (`next_page_url`, …), on this base.
    Meta(&'a str),
}

/// One page of `items` (SID and item) under `key`, with the envelope of its API; only the
/// page's items are turned into JSON (a benchmark lists tens of thousands).
fn paginate<T>(
    envelope: Envelope<'_>,
    path: &str,
    key: &str,
    filters: Vec<(String, String)>,
    query: &[(String, String)],
    items: Vec<(String, T)>,
    json: impl Fn(&T) -> Value,
) -> Response {
    let number = |name: &str, default: usize| match param(query, name) {
        None => Some(default),
        Some(v) => v.parse::<usize>().ok(),
    };
    let Some(size) = number("PageSize", 50).filter(|n| (1..=1000).contains(n)) else {
        return bad_request(20001, "Invalid PageSize");
    };
    let Some(page) = number("Page", 0) else {
        return bad_request(20001, "Invalid Page");
    };
    let start = page * size;
    let token = |index: usize| items.get(index).map(|(sid, _)| format!("PA{sid}"));
    if page > 0 && (start > items.len() || param(query, "PageToken") != token(start - 1).as_deref())
    {
        return bad_request(20001, "Invalid PageToken");
    }
    let shown: Vec<Value> = items
        .iter()
        .skip(start)
        .take(size)
        .map(|(_, item)| json(item))
        .collect();
    let uri = |page: usize, token: Option<String>| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        // The 2010 API writes its filters first, the Messaging API last.
        if let Envelope::V2010 = envelope {
            q.extend_pairs(&filters);
        }
        q.append_pair("PageSize", &size.to_string());
        q.append_pair("Page", &page.to_string());
        if let Some(token) = token {
            q.append_pair("PageToken", &token);
        }
        match envelope {
            Envelope::V2010 => format!("{path}?{}", q.finish()),
            Envelope::Meta(base) => {
                q.extend_pairs(&filters);
                format!("{base}{path}?{}", q.finish())
            }
        }
    };
    let end = start + shown.len();
    let next = (end < items.len()).then(|| uri(page + 1, token(end - 1)));
    let previous =
        (page > 0).then(|| uri(page - 1, token(start).map(|t| t.replacen("PA", "PB", 1))));
    let current = uri(page, param(query, "PageToken").map(str::to_owned));
    let mut answer = match envelope {
        Envelope::V2010 => json!({
            "end": end.saturating_sub(1).max(start),
            "first_page_uri": uri(0, None),
            "next_page_uri": next,
            "page": page,
            "page_size": size,
            "previous_page_uri": previous,
            "start": start,
            "uri": current,
        }),
        Envelope::Meta(_) => json!({
            "meta": {
                "page": page,
                "page_size": size,
                "first_page_url": uri(0, None),
                "previous_page_url": previous,
                "url": current,
                "next_page_url": next,
                "key": key,
            },
        }),
    };
    answer[key] = Value::Array(shown);
    json_response(&answer)
}

/// `GET …/IncomingPhoneNumbers.json`, with Twilio's `PhoneNumber` filter: a partial number
/// matches, and `*` stands for any digit.
fn list_numbers(data: &Data, account: &str, r: &Request) -> Response {
    let filter = param(&r.query, "PhoneNumber");
    let matches = |number: &str| {
        let Some(filter) = filter else { return true };
        let (f, n): (Vec<char>, Vec<char>) = (filter.chars().collect(), number.chars().collect());
        n.windows(f.len().max(1)).any(|w| {
            w.iter()
                .zip(&f)
                .all(|(c, p)| *p == *c || (*p == '*' && c.is_ascii_digit()))
        })
    };
    let items = data
        .numbers
        .iter()
        .filter(|n| n.account_sid.eq_ignore_ascii_case(account) && matches(&n.phone_number))
        .map(|n| (n.sid.clone(), n))
        .collect();
    let filters = filter
        .map(|f| vec![("PhoneNumber".to_owned(), f.to_owned())])
        .unwrap_or_default();
    paginate(
        Envelope::V2010,
        &r.path,
        "incoming_phone_numbers",
        filters,
        &r.query,
        items,
        |n| n.json(),
    )
}

/// `POST …/IncomingPhoneNumbers/{Sid}.json`: the SMS fields (and the voice status
/// callback), validated as Twilio's schema says.
fn update_number(number: &mut FakeNumber, r: &Request) -> Result<(), Refusal> {
    let form = form_body(r)?;
    let mut updated = number.clone();
    for (name, value) in &form {
        match name.as_str() {
            "SmsUrl" => updated.sms_url = url_value(name, value)?,
            "SmsMethod" => updated.sms_method = method_value(name, value, &["GET", "POST"])?,
            "SmsFallbackUrl" => updated.sms_fallback_url = url_value(name, value)?,
            "SmsFallbackMethod" => {
                updated.sms_fallback_method = method_value(name, value, &["GET", "POST"])?;
            }
            // An empty value removes the TwiML App.
            "SmsApplicationSid" if value.is_empty() || is_sid(value, "AP") => {
                updated.sms_application_sid = value.clone();
            }
            "StatusCallback" => updated.status_callback = url_value(name, value)?,
            "StatusCallbackMethod" => {
                updated.status_callback_method = method_value(name, value, &["GET", "POST"])?;
            }
            "SmsApplicationSid" => return Err(Refusal::bad(21421, "Invalid SmsApplicationSid")),
            _ => {}
        }
    }
    updated.date_updated = Utc::now();
    *number = updated;
    Ok(())
}

/// `/v1/Services/{Sid}` (GET, POST) and `/v1/Services/{Sid}/PhoneNumbers` (GET).
fn services(data: &mut Data, account: &str, r: &Request, rest: &str) -> Response {
    let (sid, sub) = rest.split_once('/').unwrap_or((rest, ""));
    let base = data.base.clone();
    let Some(index) = data
        .services
        .iter()
        .position(|s| s.account_sid.eq_ignore_ascii_case(account) && s.sid == sid)
    else {
        return not_found(&r.path);
    };
    match (sub, r.method == Method::GET) {
        ("", true) => json_response(&data.services[index].json(&base)),
        ("", false) => match update_service(&mut data.services[index], r) {
            Ok(()) => json_response(&data.services[index].json(&base)),
            Err(refusal) => refusal.response(),
        },
        ("PhoneNumbers", true) => {
            let service = &data.services[index];
            let items = service
                .phone_numbers
                .iter()
                .filter_map(|pn| data.numbers.iter().find(|n| &n.sid == pn))
                .map(|n| (n.sid.clone(), n))
                .collect();
            paginate(
                Envelope::Meta(&base),
                &r.path,
                "phone_numbers",
                Vec::new(),
                &r.query,
                items,
                |n| service.number_json(n, &base),
            )
        }
        ("PhoneNumbers", false) => method_not_allowed(&r.path),
        _ => not_found(&r.path),
    }
}

/// `POST /v1/Services/{Sid}`: the URL fields and `UseInboundWebhookOnNumber`.
fn update_service(service: &mut FakeService, r: &Request) -> Result<(), Refusal> {
    let form = form_body(r)?;
    let mut updated = service.clone();
    let optional = |name: &str, value: &str| {
        url_value(name, value).map(|url| Some(url).filter(|u| !u.is_empty()))
    };
    for (name, value) in &form {
        match name.as_str() {
            "FriendlyName" => updated.friendly_name = value.clone(),
            "InboundRequestUrl" => updated.inbound_request_url = optional(name, value)?,
            "InboundMethod" => {
                updated.inbound_method = method_value(name, value, &["GET", "POST"])?
            }
            "FallbackUrl" => updated.fallback_url = optional(name, value)?,
            "FallbackMethod" => {
                updated.fallback_method = method_value(name, value, &["GET", "POST"])?;
            }
            "StatusCallback" => updated.status_callback = optional(name, value)?,
            "UseInboundWebhookOnNumber" => {
                updated.use_inbound_webhook_on_number = match value.as_str() {
                    "true" | "True" => true,
                    "false" | "False" => false,
                    _ => return Err(Refusal::bad(20001, &format!("Invalid {name}"))),
                };
            }
            _ => {}
        }
    }
    updated.date_updated = Utc::now();
    *service = updated;
    Ok(())
}

/// `/v2/Channels/Senders?Channel=…` (GET) and `/v2/Channels/Senders/{Sid}` (GET, POST).
fn senders(data: &mut Data, account: &str, r: &Request, rest: &str) -> Response {
    let base = data.base.clone();
    let mine = |s: &FakeSender| s.account_sid.eq_ignore_ascii_case(account);
    if rest.is_empty() {
        if r.method != Method::GET {
            return method_not_allowed(&r.path);
        }
        let Some(channel) = param(&r.query, "Channel") else {
            return bad_request(20001, "Missing required parameter Channel in the post body");
        };
        let prefix = format!("{channel}:");
        let items = data
            .senders
            .iter()
            .filter(|s| mine(s) && s.sender_id.starts_with(&prefix))
            .map(|s| (s.sid.clone(), s))
            .collect();
        let filters = vec![("Channel".to_owned(), channel.to_owned())];
        return paginate(
            Envelope::Meta(&base),
            &r.path,
            "senders",
            filters,
            &r.query,
            items,
            |s| s.json(&base),
        );
    }
    let sid = rest.strip_prefix('/').unwrap_or_default();
    let Some(sender) = data.senders.iter_mut().find(|s| mine(s) && s.sid == sid) else {
        return not_found(&r.path);
    };
    if r.method == Method::GET {
        return json_response(&sender.json(&base));
    }
    match update_sender(sender, r) {
        Ok(()) => {
            let mut response = json_response(&sender.json(&base));
            *response.status_mut() = StatusCode::ACCEPTED;
            response
        }
        Err(refusal) => refusal.response(),
    }
}

/// `POST /v2/Channels/Senders/{Sid}`: a JSON body whose `webhook` object sets the fields it
/// has (null unsets one).
fn update_sender(sender: &mut FakeSender, r: &Request) -> Result<(), Refusal> {
    if !r
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            20415,
            "Unsupported Media Type".into(),
        ));
    }
    let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&r.body) else {
        return Err(Refusal::bad(20001, "Invalid JSON"));
    };
    let Some(webhook) = body.get("webhook") else {
        return Ok(());
    };
    let Value::Object(webhook) = webhook else {
        return Err(Refusal::bad(20001, "Invalid webhook"));
    };
    let mut updated = sender.clone();
    for (name, value) in webhook {
        let value = match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => return Err(Refusal::bad(20001, &format!("Invalid webhook.{name}"))),
        };
        let method = |value: Option<String>| match value {
            Some(v) => method_value(name, &v, &["POST", "PUT"]).map(Some),
            None => Ok(None),
        };
        let url = |value: Option<String>| match value {
            Some(v) => url_value(name, &v).map(Some),
            None => Ok(None),
        };
        match name.as_str() {
            "callback_url" => updated.callback_url = url(value)?,
            "callback_method" => updated.callback_method = method(value)?,
            "fallback_url" => updated.fallback_url = url(value)?,
            "fallback_method" => updated.fallback_method = method(value)?,
            "status_callback_url" => updated.status_callback_url = url(value)?,
            "status_callback_method" => updated.status_callback_method = value,
            _ => return Err(Refusal::bad(20001, &format!("Unknown webhook.{name}"))),
        }
    }
    *sender = updated;
    Ok(())
}

/// The form of an update, which must be one.
fn form_body(r: &Request) -> Result<Vec<(String, String)>, Refusal> {
    if !r
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
    {
        return Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            20415,
            "Unsupported Media Type".into(),
        ));
    }
    Ok(url::form_urlencoded::parse(r.body.as_bytes())
        .into_owned()
        .collect())
}

/// A URL field: empty (unset), or an http(s) URL.
fn url_value(name: &str, value: &str) -> Result<String, Refusal> {
    let ok = value.is_empty() || value.starts_with("https://") || value.starts_with("http://");
    ok.then(|| value.to_owned())
        .ok_or_else(|| Refusal::bad(21502, &format!("{name} is not valid")))
}

/// A method field, one of `allowed`.
fn method_value(name: &str, value: &str, allowed: &[&str]) -> Result<String, Refusal> {
    allowed
        .contains(&value)
        .then(|| value.to_owned())
        .ok_or_else(|| Refusal::bad(20001, &format!("Invalid {name}")))
}

/// Why an update is refused: Twilio's error status, code and message.
struct Refusal(StatusCode, u32, String);

impl Refusal {
    fn bad(code: u32, message: &str) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, code, message.into())
    }

    fn response(self) -> Response {
        twilio_error(self.0, self.1, &self.2)
    }
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An RFC 3339 time, or a `YYYY-MM-DD` date (its first or last second).
fn parse_time(value: &str, end_of_day: bool) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    let time = if end_of_day {
        day.and_hms_opt(23, 59, 59)
    } else {
        day.and_hms_opt(0, 0, 0)
    };
    Some(time?.and_utc())
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?)
        .ok()?;
    let (user, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.into(), secret.into()))
}

fn json_response(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Twilio's error body.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let mut response = json_response(&json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    }));
    *response.status_mut() = status;
    response
}

fn unauthorized() -> Response {
    let mut r = twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Basic realm=\"Twilio API\"".parse().unwrap(),
    );
    r
}

fn not_found(path: &str) -> Response {
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        &format!("The requested resource {path} was not found"),
    )
}

fn method_not_allowed(path: &str) -> Response {
    twilio_error(
        StatusCode::METHOD_NOT_ALLOWED,
        20004,
        &format!("Method not allowed: {path}"),
    )
}

fn bad_request(code: u32, message: &str) -> Response {
    twilio_error(StatusCode::BAD_REQUEST, code, message)
}
