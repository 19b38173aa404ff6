//! A fake of Twilio's REST API for the Messages resources (TWILIO.md §11) on 127.0.0.1: each
//! account's messages and their media, in memory, served in the shapes of Twilio's OpenAPI
//! description (RFC 2822 dates; `num_segments`, `num_media` and `price` as strings; the
//! paging envelope with relative URIs and `next_page_uri` null on the last page). It checks
//! HTTP Basic auth, lets a test script failures (the next N requests answer 429, 500, 401 or
//! 403) and a delay, and records every request (path, query, user) for the test to assert.
//!
//! Paging works like Twilio's: `PageSize` (1 to 1000, 50 by default) and `Page`, and past the
//! first page a `PageToken` (`PA` + the SID of the previous page's last item) that only the
//! `next_page_uri` it served carries, so a client that builds its own page URLs is refused.
//! Lists are newest first by `date_sent` (a message not sent yet by `date_created`).
//! `DateSent>` and `DateSent<` are inclusive, and take `YYYY-MM-DD` or an RFC 3339 time.

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
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
    pub path: String,
    /// The query's pairs, decoded, in order.
    pub query: Vec<(String, String)>,
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
}

#[derive(Default)]
struct Data {
    messages: Vec<FakeMessage>,
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
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeTwilio {
            shared,
            addr,
            server,
        }
    }

    /// What `twilio.api_base_url` points at.
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

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_owned();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let account = path
        .strip_prefix(ACCOUNTS)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let credentials = basic_auth(&headers);
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
        Some(failure) => failure.response(&path),
        None if !authenticated => unauthorized(),
        None => route(&data, &account, &path, &query),
    };
    data.requests.push(Recorded {
        path,
        query,
        user: credentials.map(|(user, _)| user),
        authenticated,
        status: response.status().as_u16(),
    });
    drop(data);
    drop(in_flight);
    response
}

fn route(data: &Data, account: &str, path: &str, query: &[(String, String)]) -> Response {
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
                paginate(path, "media_list", Vec::new(), query, items, |me| {
                    m.media_json(me)
                })
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
    paginate(path, "messages", filters, query, items, |m| m.json())
}

/// One page of `items` (SID and item) under `key`, with Twilio's envelope; only the page's
/// items are turned into JSON (a benchmark lists tens of thousands).
fn paginate<T>(
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
        q.extend_pairs(&filters);
        q.append_pair("PageSize", &size.to_string());
        q.append_pair("Page", &page.to_string());
        if let Some(token) = token {
            q.append_pair("PageToken", &token);
        }
        format!("{path}?{}", q.finish())
    };
    let end = start + shown.len();
    let next = (end < items.len()).then(|| uri(page + 1, token(end - 1)));
    let previous =
        (page > 0).then(|| uri(page - 1, token(start).map(|t| t.replacen("PA", "PB", 1))));
    let mut envelope = json!({
        "end": end.saturating_sub(1).max(start),
        "first_page_uri": uri(0, None),
        "next_page_uri": next,
        "page": page,
        "page_size": size,
        "previous_page_uri": previous,
        "start": start,
        "uri": uri(page, param(query, "PageToken").map(str::to_owned)),
    });
    envelope[key] = Value::Array(shown);
    json_response(&envelope)
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

fn bad_request(code: u32, message: &str) -> Response {
    twilio_error(StatusCode::BAD_REQUEST, code, message)
}
