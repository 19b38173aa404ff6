//! Twilio's REST API (TWILIO.md §11): the Messages resources on `api.twilio.com`
//! ([`messages`]), and the resources that hold the webhook URLs Twilio calls, on the 2010 API
//! and on the Messaging API's own host ([`webhooks`]). This module owns the credentials of each account, the retry policy (429, 5xx, no answer),
//! the cap on requests in flight per account, and the typed resources; what is done with them
//! (reconciliation, `doctor`, `connect`) belongs to its callers.
//!
//! Shapes follow Twilio's OpenAPI description (twilio-oai): the 2010 API writes dates as
//! RFC 2822 strings and pages with `next_page_uri` (relative to the API's base URL, null on
//! the last page); the Messaging API (`messaging.twilio.com`, Services and channel senders)
//! writes ISO 8601 dates and pages with `meta.next_page_url` (absolute).
//!
//! Nothing here logs a credential, a message body or a phone number, nor puts one in an
//! error: paths are logged at debug without their query string (where `To`, `From` and
//! `PhoneNumber` travel), errors carry Twilio's error code and its message with long digit
//! runs masked, and the `Debug` of a message or a credential redacts. (The webhook resources
//! carry the business's own numbers, as their IDs.)

mod messages;
mod webhooks;

pub use messages::{ListFilter, ListItem, MediaResource, MessageResource, Page, Pages};
pub use webhooks::{
    IncomingPhoneNumber, NumberUpdate, SenderResource, SenderWebhook, ServicePhoneNumber,
    ServiceResource, ServiceUpdate,
};

use crate::{config::Settings, metrics::Metrics};
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::Semaphore;

/// Where every account's resources live.
const ACCOUNTS: &str = "/2010-04-01/Accounts";
/// The largest page Twilio serves.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// How much of Twilio's error message an error keeps.
const MAX_MESSAGE_CHARS: usize = 300;

/// One HTTP Basic credential: the user (an AccountSid, or an API key SID `SK…`) and its
/// secret (the auth token, or the key's secret).
#[derive(Clone)]
pub struct Credential {
    pub user: String,
    pub secret: SecretString,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// An account and the credentials its calls use, in the order they are tried.
#[derive(Clone, Debug)]
pub struct AccountCredentials {
    pub account_sid: String,
    pub credentials: Vec<Credential>,
}

/// What a [`RestClient`] is built from: the base URL and credentials from the settings
/// ([`RestSettings::from_settings`]), and limits that are no settings keys (tests shorten
/// the waits).
#[derive(Clone, Debug)]
pub struct RestSettings {
    /// `https://api.twilio.com`, or a regional edge; no trailing slash.
    pub base_url: String,
    /// `https://messaging.twilio.com` (Messaging Services, channel senders); no trailing
    /// slash.
    pub messaging_base_url: String,
    pub accounts: Vec<AccountCredentials>,
    /// The account whose credentials the Messaging API's calls use (`twilio.account_sid`):
    /// its paths name no account, the credentials choose it.
    pub main_account: Option<String>,
    /// Deadline for one request: connecting, the answer and its body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts at one request while the answers are 429, 408, 5xx or none at all.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles each time, with jitter, up to
    /// `backoff_max`. A 429's `Retry-After` replaces it.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` obeyed; a longer one is cut to this.
    pub max_retry_after: Duration,
    /// Requests in flight at once per account. Twilio limits concurrent requests per account
    /// (429, error 20429, beyond it), and whatever else uses the account shares that budget.
    pub max_in_flight: usize,
}

impl Default for RestSettings {
    fn default() -> Self {
        RestSettings {
            base_url: "https://api.twilio.com".into(),
            messaging_base_url: "https://messaging.twilio.com".into(),
            accounts: Vec::new(),
            main_account: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            max_in_flight: 4,
        }
    }
}

impl RestSettings {
    /// The main account (`twilio.account_sid`) with the API key when one is set, else its
    /// auth tokens; and every `twilio.accounts` sub-account with its own tokens.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let twilio = &settings.twilio;
        let base_url = twilio.api_base()?;
        let messaging_base_url = twilio.messaging_base()?;
        let main = twilio.account_sid.trim();
        let mut accounts = Vec::new();
        if !main.is_empty() {
            let account_sid = canonical_sid(main);
            let credentials = if twilio.has_api_key() {
                vec![Credential {
                    user: canonical_sid(&twilio.api_key),
                    secret: twilio.api_secret.clone(),
                }]
            } else {
                token_credentials(&account_sid, twilio.tokens_for(main))
            };
            accounts.push(AccountCredentials {
                account_sid,
                credentials,
            });
        }
        for (sid, tokens) in &twilio.accounts {
            if !sid.trim().eq_ignore_ascii_case(main) {
                let account_sid = canonical_sid(sid);
                accounts.push(AccountCredentials {
                    credentials: token_credentials(&account_sid, tokens),
                    account_sid,
                });
            }
        }
        Ok(RestSettings {
            base_url,
            messaging_base_url,
            main_account: (!main.is_empty()).then(|| canonical_sid(main)),
            accounts,
            ..RestSettings::default()
        })
    }
}

fn token_credentials(account_sid: &str, tokens: &[SecretString]) -> Vec<Credential> {
    tokens
        .iter()
        .filter(|t| !t.expose_secret().trim().is_empty())
        .map(|secret| Credential {
            user: account_sid.to_owned(),
            secret: secret.clone(),
        })
        .collect()
}

/// A SID as Twilio writes it: two upper-case letters, then lower-case hexadecimal. The
/// config crate lower-cases map keys, and the API's paths and users are Twilio's spelling.
fn canonical_sid(sid: &str) -> String {
    let sid = sid.trim();
    let split = sid.char_indices().nth(2).map_or(sid.len(), |(i, _)| i);
    format!(
        "{}{}",
        sid[..split].to_ascii_uppercase(),
        sid[split..].to_ascii_lowercase()
    )
}

/// What Twilio said about a request it refused: its error code and message (digit runs that
/// could be a phone number masked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problem {
    pub code: Option<u32>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.message.is_empty()) {
            (Some(code), false) => write!(f, "Twilio error {code}: {}", self.message),
            (Some(code), true) => write!(f, "Twilio error {code}"),
            (None, false) => f.write_str(&self.message),
            (None, true) => f.write_str("no details"),
        }
    }
}

impl Problem {
    /// Twilio's JSON error body (`code`, `message`, `more_info`, `status`), if that is what
    /// came.
    fn from_body(body: &[u8]) -> Problem {
        #[derive(Deserialize)]
        struct ErrorBody {
            code: Option<Value>,
            message: Option<String>,
        }
        let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
            return Problem::default();
        };
        let message: String = parsed
            .message
            .unwrap_or_default()
            .chars()
            .take(MAX_MESSAGE_CHARS)
            .collect();
        Problem {
            code: parsed
                .code
                .as_ref()
                .and_then(integer)
                .and_then(|c| c.try_into().ok()),
            message: mask_numbers(&message),
        }
    }
}

/// Errors by meaning. None holds a credential, a query string or a message body.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("no REST API credentials configured for account {account}")]
    NoCredentials { account: String },
    #[error(
        "no main account for the Messaging API: set twilio.account_sid (TWILIO_ACCOUNT_SID) with its auth token or an API key"
    )]
    NoMainAccount,
    #[error("the {what} is not a Twilio SID (letters and digits only)")]
    InvalidSid { what: &'static str },
    #[error(
        "unauthorized (401) for account {account}, with each of its {tried} credential(s) ({problem})"
    )]
    Unauthorized {
        account: String,
        tried: usize,
        problem: Problem,
    },
    #[error("forbidden (403) for account {account} ({problem})")]
    Forbidden { account: String, problem: Problem },
    #[error("not found (404): {path} ({problem})")]
    NotFound { path: String, problem: Problem },
    #[error("rate limited (429) after {attempts} attempt(s) ({problem})")]
    RateLimited { attempts: u32, problem: Problem },
    #[error("server error ({status}) after {attempts} attempt(s) ({problem})")]
    Server {
        status: u16,
        attempts: u32,
        problem: Problem,
    },
    #[error("refused ({status}): {path} ({problem})")]
    Rejected {
        status: u16,
        path: String,
        problem: Problem,
    },
    #[error("no answer after {attempts} attempt(s): {reason}")]
    Transport { attempts: u32, reason: String },
    #[error("cannot read the answer to {path}: {reason}")]
    Decode { path: String, reason: String },
}

/// An integer given as a number or as a string of digits (Twilio writes counts as strings).
fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The client: one per process (clones share the connections, the credential that last
/// worked and the in-flight limits).
#[derive(Clone)]
pub struct RestClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    messaging_base: String,
    /// By lower-cased AccountSid.
    accounts: HashMap<String, Account>,
    /// The Messaging API's account, as Twilio spells its SID.
    main: Option<String>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
}

struct Account {
    sid: String,
    credentials: Vec<Credential>,
    /// The credential that worked last, tried first: after a rotation the refused token is
    /// not tried again on every call.
    current: AtomicUsize,
    in_flight: Semaphore,
}

impl fmt::Debug for RestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut accounts: Vec<_> = self
            .inner
            .accounts
            .values()
            .map(|a| (a.sid.as_str(), a.credentials.len()))
            .collect();
        accounts.sort_unstable();
        f.debug_struct("RestClient")
            .field("base", &self.inner.base)
            .field("messaging_base", &self.inner.messaging_base)
            .field("main", &self.inner.main)
            .field("accounts (sid, credentials)", &accounts)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

/// Which of Twilio's hosts a request goes to; both with the same credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    /// `twilio.api_base_url`: the 2010 API (Messages, IncomingPhoneNumbers).
    Api,
    /// `twilio.messaging_base_url`: Messaging Services (v1) and channel senders (v2).
    Messaging,
}

/// A POST body, encoded once and sent unchanged on every attempt.
struct Payload {
    content_type: &'static str,
    bytes: Vec<u8>,
}

impl Payload {
    /// Form-encoded pairs, as the 2010 API and Messaging v1 take updates.
    fn form<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Payload {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(pairs);
        Payload {
            content_type: "application/x-www-form-urlencoded",
            bytes: form.finish().into_bytes(),
        }
    }

    /// A JSON document, as Messaging v2 takes updates.
    fn json(value: &Value) -> Payload {
        Payload {
            content_type: "application/json",
            bytes: value.to_string().into_bytes(),
        }
    }
}

/// How one attempt ended.
enum Verdict {
    Success(Vec<u8>),
    Unauthorized(Problem),
    /// Worth another attempt, after `Retry-After` if the answer gave one.
    Transient {
        retry_after: Option<Duration>,
        failure: Transient,
    },
    Final(RestError),
}

enum Transient {
    RateLimited(Problem),
    Server(u16, Problem),
    Transport(String),
}

impl Transient {
    fn into_error(self, attempts: u32) -> RestError {
        match self {
            Transient::RateLimited(problem) => RestError::RateLimited { attempts, problem },
            Transient::Server(status, problem) => RestError::Server {
                status,
                attempts,
                problem,
            },
            Transient::Transport(reason) => RestError::Transport { attempts, reason },
        }
    }
}

impl RestClient {
    pub fn new(settings: RestSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            // The API never redirects; a redirect would carry the Authorization header along.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("twilio-receiver/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let in_flight = settings.max_in_flight.max(1);
        let accounts = settings
            .accounts
            .into_iter()
            .map(|a| {
                let account = Account {
                    sid: canonical_sid(&a.account_sid),
                    credentials: a.credentials,
                    current: AtomicUsize::new(0),
                    in_flight: Semaphore::new(in_flight),
                };
                (account.sid.to_ascii_lowercase(), account)
            })
            .collect();
        Ok(RestClient {
            inner: Arc::new(Inner {
                http,
                base: settings.base_url.trim().trim_end_matches('/').to_owned(),
                messaging_base: settings
                    .messaging_base_url
                    .trim()
                    .trim_end_matches('/')
                    .to_owned(),
                accounts,
                main: settings.main_account.as_deref().map(canonical_sid),
                limits: Limits {
                    max_attempts: settings.max_attempts.max(1),
                    backoff_base: settings.backoff_base,
                    backoff_max: settings.backoff_max,
                    max_retry_after: settings.max_retry_after,
                },
                metrics,
            }),
        })
    }

    /// The API's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The Messaging API's base URL, without a trailing slash.
    pub fn messaging_base_url(&self) -> &str {
        &self.inner.messaging_base
    }

    /// The main account (`twilio.account_sid`), as Twilio spells its SID, when it has
    /// credentials: the Messaging API's calls are made as it, and phone numbers are looked up
    /// in it.
    pub fn main_account(&self) -> Result<&str, RestError> {
        let main = self.inner.main.as_deref().ok_or(RestError::NoMainAccount)?;
        Ok(&self.account(main)?.sid)
    }

    /// The accounts with credentials, as Twilio spells their SIDs.
    pub fn account_sids(&self) -> Vec<String> {
        let mut sids: Vec<_> = self
            .inner
            .accounts
            .values()
            .filter(|a| !a.credentials.is_empty())
            .map(|a| a.sid.clone())
            .collect();
        sids.sort_unstable();
        sids
    }

    /// `uri`, a path Twilio gave (`next_page_uri`, a media `uri`), if it stays on the API's
    /// host: it must start with one `/`, and hold no backslash, fragment or whitespace.
    fn own_path<'a>(&self, uri: &'a str, from: &str) -> Result<&'a str, RestError> {
        let ok = uri.starts_with('/')
            && !uri.starts_with("//")
            && !uri.contains(['\\', '#'])
            && !uri.chars().any(|c| c.is_whitespace() || c.is_control());
        ok.then_some(uri).ok_or_else(|| {
            decode_error(from, "a URI in the answer does not stay on the API's host")
        })
    }

    fn account(&self, account_sid: &str) -> Result<&Account, RestError> {
        let sid = path_sid(account_sid, "account SID")?;
        self.inner
            .accounts
            .get(&sid.to_ascii_lowercase())
            .filter(|a| !a.credentials.is_empty())
            .ok_or_else(|| RestError::NoCredentials {
                account: canonical_sid(sid),
            })
    }

    /// GETs `path` (with its query) on the 2010 API as `account_sid`: the body of a 2xx
    /// answer.
    async fn get(&self, account_sid: &str, path: &str) -> Result<Vec<u8>, RestError> {
        self.send(account_sid, Host::Api, path, None).await
    }

    /// Sends one request as `account_sid` (a GET, or a POST of `payload`): the body of a 2xx
    /// answer. A 401 moves on to the account's next credential (a rotation in progress) until
    /// each was refused once; 429, 408, 5xx and no answer are tried again, up to
    /// `max_attempts`.
    ///
    /// Retrying a POST is safe here because every POST this client makes is an update that
    /// sets fields to given values (a webhook URL, a method, a flag): applied twice it leaves
    /// the resource as applied once. Nothing here creates a resource or sends a message,
    /// where a retry after a lost answer could do it twice.
    async fn send(
        &self,
        account_sid: &str,
        host: Host,
        path: &str,
        payload: Option<&Payload>,
    ) -> Result<Vec<u8>, RestError> {
        let account = self.account(account_sid)?;
        let base = match host {
            Host::Api => &self.inner.base,
            Host::Messaging => &self.inner.messaging_base,
        };
        let url = format!("{base}{path}");
        // Never the query string: the filter's phone numbers travel there.
        let shown = path.split('?').next().unwrap_or_default();
        let limits = self.inner.limits;
        let count = account.credentials.len();
        let mut credential = account.current.load(Ordering::Relaxed) % count;
        let (mut refused, mut attempts) = (0, 0);
        loop {
            match self
                .attempt(account, credential, &url, shown, payload)
                .await
            {
                Verdict::Success(body) => {
                    account.current.store(credential, Ordering::Relaxed);
                    return Ok(body);
                }
                Verdict::Unauthorized(problem) => {
                    refused += 1;
                    if refused >= count {
                        return Err(RestError::Unauthorized {
                            account: account.sid.clone(),
                            tried: count,
                            problem,
                        });
                    }
                    tracing::warn!(
                        account = %account.sid, credential = credential + 1, of = count,
                        "Twilio REST API refused a credential (401); trying the account's next one"
                    );
                    credential = (credential + 1) % count;
                }
                Verdict::Transient {
                    retry_after,
                    failure,
                } => {
                    attempts += 1;
                    if attempts >= limits.max_attempts {
                        return Err(failure.into_error(attempts));
                    }
                    let wait = retry_after.map_or_else(
                        || backoff(limits.backoff_base, limits.backoff_max, attempts),
                        |w| w.min(limits.max_retry_after),
                    );
                    tracing::debug!(
                        path = shown,
                        attempt = attempts,
                        wait_ms = wait.as_millis() as u64,
                        "Twilio REST API: trying again"
                    );
                    tokio::time::sleep(wait).await;
                }
                Verdict::Final(e) => return Err(e),
            }
        }
    }

    /// One request with the account's credential number `credential`, counted and judged.
    async fn attempt(
        &self,
        account: &Account,
        credential: usize,
        url: &str,
        shown: &str,
        payload: Option<&Payload>,
    ) -> Verdict {
        let answer = {
            // The permit covers the request and its body, never the waits between attempts.
            let _permit = account.in_flight.acquire().await.ok();
            self.exchange(&account.credentials[credential], url, payload)
                .await
        };
        let metrics = &self.inner.metrics;
        let (status, retry_after, body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                metrics.rest_response(None);
                let reason = describe(&e);
                tracing::debug!(path = shown, error = %reason, "Twilio REST API: no answer");
                return Verdict::Transient {
                    retry_after: None,
                    failure: Transient::Transport(reason),
                };
            }
        };
        metrics.rest_response(Some(status));
        tracing::debug!(path = shown, status, "Twilio REST API answered");
        if (200..300).contains(&status) {
            return Verdict::Success(body);
        }
        let problem = Problem::from_body(&body);
        match status {
            401 => Verdict::Unauthorized(problem),
            403 => Verdict::Final(RestError::Forbidden {
                account: account.sid.clone(),
                problem,
            }),
            404 => Verdict::Final(RestError::NotFound {
                path: shown.to_owned(),
                problem,
            }),
            429 => Verdict::Transient {
                retry_after,
                failure: Transient::RateLimited(problem),
            },
            408 | 500..=599 => Verdict::Transient {
                retry_after,
                failure: Transient::Server(status, problem),
            },
            _ => Verdict::Final(RestError::Rejected {
                status,
                path: shown.to_owned(),
                problem,
            }),
        }
    }

    /// The status, `Retry-After` (in seconds, the form Twilio sends) and body of one GET, or
    /// of one POST of `payload`.
    async fn exchange(
        &self,
        credential: &Credential,
        url: &str,
        payload: Option<&Payload>,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), reqwest::Error> {
        let request = match payload {
            None => self.inner.http.get(url),
            Some(payload) => self
                .inner
                .http
                .post(url)
                .header(CONTENT_TYPE, payload.content_type)
                .body(payload.bytes.clone()),
        };
        let response = request
            .basic_auth(&credential.user, Some(credential.secret.expose_secret()))
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await?;
        Ok((status, retry_after, Vec::from(body)))
    }
}

/// A SID that can go into a path: letters and digits only, so nothing can climb out of it.
fn path_sid<'a>(sid: &'a str, what: &'static str) -> Result<&'a str, RestError> {
    let sid = sid.trim();
    let ok = !sid.is_empty() && sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(sid).ok_or(RestError::InvalidSid { what })
}

fn decode_error(path: &str, reason: &str) -> RestError {
    RestError::Decode {
        path: path.split('?').next().unwrap_or_default().to_owned(),
        reason: reason.to_owned(),
    }
}

/// A JSON error without the text serde quotes from the input (it could be a phone number or
/// a body): its category and position, and a missing field's name.
fn json_error(path: &str, e: &serde_json::Error) -> RestError {
    use serde_json::error::Category;
    let text = e.to_string();
    let what = match e.classify() {
        Category::Data if text.starts_with("missing field") => {
            text.split(" at line").next().unwrap_or_default().to_owned()
        }
        Category::Data => "unexpected shape".to_owned(),
        Category::Syntax => "not JSON".to_owned(),
        Category::Eof => "cut short".to_owned(),
        Category::Io => "unreadable".to_owned(),
    };
    decode_error(
        path,
        &format!("{what} at line {} column {}", e.line(), e.column()),
    )
}

/// Twilio's error messages can quote what was asked for, a phone number included: runs of 7
/// or more digits standing apart from letters are masked. Error codes (five digits) and SIDs
/// (digits among letters) stay whole.
fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.len() >= 7 && word.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str("[number]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Exponential backoff for attempt `attempt` (1: the first retry), capped at `max`, with
/// "equal jitter" (half fixed, half random) so clients that failed together retry apart.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let full = base
        .saturating_mul(1 << (attempt.clamp(1, 20) - 1))
        .min(max);
    full / 2 + full.mul_f64(random_fraction() / 2.0)
}

/// A number in [0, 1): `RandomState` is seeded at random and every new one differs, which
/// is all jitter needs (no random-number crate).
fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let n = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (n % 1_000_000) as f64 / 1_000_000.0
}

/// An HTTP client error without its URL (a query can hold phone numbers, a media URL a
/// pre-signed token), with its causes. Shared with the media archive.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer cut short"
    } else {
        "request failed"
    };
    let mut out = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;
    use serde_json::value::RawValue;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const SUB: &str = "ACfedcba9876543210fedcba9876543210";
    const KEY: &str = "SK00112233445566778899aabbccddeeff";

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn settings(env: &[(&str, &str)]) -> Settings {
        Settings::load(&Sources {
            config_dir: "/nonexistent".into(),
            config_file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn rest_settings_pick_the_api_key_or_the_tokens_per_account() {
        let mut s = settings(&[
            ("TWILIO_ACCOUNT_SID", &SID.to_ascii_lowercase()),
            ("TWILIO_RECEIVER__TWILIO__AUTH_TOKENS", "old,new"),
            (
                "TWILIO_RECEIVER__TWILIO__API_BASE_URL",
                "http://127.0.0.1:9/",
            ),
        ]);
        s.twilio.accounts.insert(
            SUB.to_ascii_lowercase(),
            vec![SecretString::from("sub-token")],
        );
        let rest = RestSettings::from_settings(&s).unwrap();
        assert_eq!(rest.base_url, "http://127.0.0.1:9");
        assert_eq!(rest.messaging_base_url, "https://messaging.twilio.com");
        // The Messaging API's calls are made as the main account, spelled as Twilio does.
        assert_eq!(rest.main_account.as_deref(), Some(SID));
        let users = |rest: &RestSettings| -> Vec<(String, Vec<String>)> {
            rest.accounts
                .iter()
                .map(|a| {
                    let creds = a
                        .credentials
                        .iter()
                        .map(|c| format!("{}:{}", c.user, c.secret.expose_secret()))
                        .collect();
                    (a.account_sid.clone(), creds)
                })
                .collect()
        };
        assert_eq!(
            users(&rest),
            [
                (
                    SID.to_owned(),
                    vec![format!("{SID}:old"), format!("{SID}:new")]
                ),
                (SUB.to_owned(), vec![format!("{SUB}:sub-token")]),
            ]
        );

        let s = settings(&[
            ("TWILIO_ACCOUNT_SID", SID),
            ("TWILIO_AUTH_TOKEN", "token"),
            ("TWILIO_API_KEY", KEY),
            ("TWILIO_API_SECRET", "key-secret"),
        ]);
        let rest = RestSettings::from_settings(&s).unwrap();
        assert_eq!(
            users(&rest),
            [(SID.to_owned(), vec![format!("{KEY}:key-secret")])]
        );
        let shown = format!("{rest:?}");
        assert!(!shown.contains("key-secret"), "{shown}");

        let s = settings(&[(
            "TWILIO_RECEIVER__TWILIO__API_BASE_URL",
            "http://api.twilio.com",
        )]);
        assert!(RestSettings::from_settings(&s).is_err());
    }

    #[test]
    fn rest_sids_are_spelled_as_twilio_does_and_checked_before_a_path() {
        assert_eq!(canonical_sid(" acABCDEF0123 "), "ACabcdef0123");
        assert_eq!(canonical_sid("s"), "S");
        assert_eq!(path_sid("SM0123abc", "message SID").unwrap(), "SM0123abc");
        let long = "a".repeat(65);
        for bad in ["", "SM1/../x", "SM1.json", "SM 1", "SM1?x=1", long.as_str()] {
            assert!(path_sid(bad, "message SID").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rest_errors_never_quote_a_phone_number() {
        let problem = Problem::from_body(
            br#"{"code": 21211, "message": "The 'To' number whatsapp:+15551234567 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        );
        assert_eq!(problem.code, Some(21211));
        assert_eq!(
            problem.message,
            "The 'To' number whatsapp:+[number] is not a valid phone number."
        );
        let kept = mask_numbers(
            "Resource /Accounts/AC1234567890abcdef/Messages/SM12345678901234.json, error 20404",
        );
        assert_eq!(
            kept,
            "Resource /Accounts/AC1234567890abcdef/Messages/SM12345678901234.json, error 20404"
        );
        assert_eq!(Problem::from_body(b"<html>busy</html>"), Problem::default());
        assert_eq!(Problem::default().to_string(), "no details");

        let err = MessageResource::decode(raw(
            r#"{"sid":"SM1","account_sid":"AC1","direction":"inbound","status":"received","from":15551234567}"#,
        ))
        .unwrap_err();
        let shown = json_error("/p?To=%2B15551234567", &err).to_string();
        assert!(!shown.contains("5551234567"), "{shown}");
        assert!(shown.contains("unexpected shape"), "{shown}");
        let missing = MessageResource::decode(raw(r#"{"account_sid":"AC1"}"#)).unwrap_err();
        assert!(
            json_error("/p", &missing)
                .to_string()
                .contains("missing field `sid`")
        );
    }

    #[test]
    fn rest_backoff_doubles_within_equal_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let samples: Vec<_> = (0..50).map(|_| backoff(base, max, 1)).collect();
        assert!(
            samples.iter().all(|d| *d >= base / 2 && *d <= base),
            "{samples:?}"
        );
        assert!(
            samples.iter().any(|d| *d != samples[0]),
            "no jitter: {samples:?}"
        );
        let third = backoff(base, max, 3);
        assert!(third >= base * 2 && third <= base * 4, "{third:?}");
        assert!(backoff(base, max, 40) <= max);
    }
}
