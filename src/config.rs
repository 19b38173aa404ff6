//! Settings: layered with the `config` crate, parsed into typed values once, secrets redacted.
//!
//! Precedence, lowest to highest (DESIGN.md §9): built-in defaults (`config/default.toml`,
//! compiled in) < `config/default.toml` on disk < `config/{APP_ENV}.toml` < `--config FILE` <
//! conventional variables (`DATABASE_URL`, `PORT`, `TWILIO_AUTH_TOKEN`, `TWILIO_ACCOUNT_SID`,
//! `TWILIO_API_KEY`, `TWILIO_API_SECRET`, `RUST_LOG`) < `TWILIO_RECEIVER__SECTION__KEY`. `try_parsing` stays off so `+1555…` stays a string.

use crate::twilio::Verifier;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::postgres::PgConnectOptions;
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

const DEFAULTS: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "TWILIO_RECEIVER";

#[derive(Debug, Deserialize, Serialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub twilio: TwilioSettings,
    pub database: DatabaseSettings,
    pub reply: ReplySettings,
    pub rules: RulesSettings,
    pub media: MediaSettings,
    pub spool: SpoolSettings,
    pub reconcile: ReconcileSettings,
    pub log: LogSettings,
    /// Where `default.toml`, `{APP_ENV}.toml` and the default rules file are looked for.
    #[serde(skip)]
    pub config_dir: PathBuf,
}

/// Reconciliation: reading the account's message history back from Twilio's REST API, so
/// messages whose webhooks never arrived are stored too.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ReconcileSettings {
    pub enabled: bool,
    /// How often a pass runs.
    pub interval_ms: u64,
    /// How far each pass reaches back before the end of the previous one (late `date_sent`s).
    pub overlap_ms: u64,
    /// A message whose status has not moved for this long is fetched again.
    pub stale_after_ms: u64,
    /// The business addresses to read (`whatsapp:+1…`); empty reads the whole account.
    #[serde(deserialize_with = "string_list")]
    pub senders: Vec<String>,
}

/// The local spool that keeps verified webhooks while Postgres is unavailable.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SpoolSettings {
    /// A directory on durable storage; empty turns the spool off.
    pub dir: String,
}

impl SpoolSettings {
    pub fn dir(&self) -> Option<PathBuf> {
        let dir = self.dir.trim();
        (!dir.is_empty()).then(|| PathBuf::from(dir))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MediaSettings {
    pub archive: bool,
    pub workers: usize,
    pub storage: String,
    pub max_bytes: u64,
    pub max_attempts: i32,
    pub retry_base_ms: u64,
    pub timeout_ms: u64,
    #[serde(deserialize_with = "string_list")]
    pub credential_hosts: Vec<String>,
    #[serde(deserialize_with = "string_list")]
    pub redirect_hosts: Vec<String>,
    pub allow_insecure_loopback: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RulesSettings {
    /// The rules file; empty means `rules.toml` in the config directory, if present.
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ServerSettings {
    pub listen: String,
    /// The base URL Twilio calls; empty means unset.
    #[serde(default)]
    pub public_url: String,
    pub trust_forwarded_headers: bool,
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// A client must send a request's headers within this (slowloris); also how long an idle
    /// keep-alive connection stays open.
    pub header_read_timeout_ms: u64,
    /// Longest silence allowed while a request body arrives (408 after it).
    pub body_read_timeout_ms: u64,
    /// Largest request head (request line with its query string, and headers); 431 above it.
    pub max_header_bytes: usize,
    /// Webhook requests handled at once; more are shed with 503.
    pub max_concurrent_requests: usize,
    /// Open client connections at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On SIGTERM: how long in-flight requests may take to finish before the process exits.
    pub shutdown_grace_ms: u64,
    pub admin_listen: String,
    /// HTTP Basic credentials the webhook routes require (when the URL in Twilio carries
    /// `user:password@`); both empty: off.
    #[serde(default)]
    pub basic_auth: BasicAuthSettings,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct BasicAuthSettings {
    #[serde(default)]
    pub user: String,
    #[serde(
        default,
        serialize_with = "redact_secret",
        deserialize_with = "secret_string"
    )]
    pub password: SecretString,
}

impl BasicAuthSettings {
    /// The expected `Authorization` header value, when Basic auth is on.
    pub fn header(&self) -> Option<SecretString> {
        use base64::Engine;
        let password = self.password.expose_secret();
        (!self.user.is_empty() || !password.is_empty()).then(|| {
            let raw = format!("{}:{password}", self.user);
            SecretString::from(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ))
        })
    }
}

#[derive(Deserialize, Serialize)]
pub struct TwilioSettings {
    #[serde(deserialize_with = "secret_list", serialize_with = "redact_list")]
    pub auth_tokens: Vec<SecretString>,
    #[serde(
        default,
        deserialize_with = "secret_map",
        serialize_with = "redact_map"
    )]
    pub accounts: BTreeMap<String, Vec<SecretString>>,
    /// Shared-key secrets for Twilio's Webhook Rules (key id -> secret), file only.
    #[serde(
        default,
        deserialize_with = "secret_by_id",
        serialize_with = "redact_by_id"
    )]
    pub shared_keys: BTreeMap<String, SecretString>,
    pub verify_signatures: bool,
    /// The main account's SID (`AC…`), whose REST API is read; empty: none.
    #[serde(default)]
    pub account_sid: String,
    /// An API key SID (`SK…`) for the main account's REST API; empty: its auth tokens.
    #[serde(default)]
    pub api_key: String,
    #[serde(
        default,
        serialize_with = "redact_secret",
        deserialize_with = "secret_string"
    )]
    pub api_secret: SecretString,
    /// Where Twilio's REST API answers (another region's edge, or a fake in tests).
    pub api_base_url: String,
    /// Where Twilio's Messaging API (Messaging Services, channel senders) answers: a host of
    /// its own.
    pub messaging_base_url: String,
}

impl std::fmt::Debug for TwilioSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioSettings")
            .field(
                "auth_tokens",
                &format_args!("[{} redacted]", self.auth_tokens.len()),
            )
            .field("accounts", &self.accounts.keys().collect::<Vec<_>>())
            .field("shared_keys", &self.shared_keys.keys().collect::<Vec<_>>())
            .field("verify_signatures", &self.verify_signatures)
            .field("account_sid", &self.account_sid)
            .field("api_key", &self.api_key)
            .field(
                "api_secret",
                &if self.api_secret.expose_secret().is_empty() {
                    ""
                } else {
                    "[redacted]"
                },
            )
            .field("api_base_url", &self.api_base_url)
            .field("messaging_base_url", &self.messaging_base_url)
            .finish()
    }
}

impl TwilioSettings {
    /// `twilio.api_base_url`, checked ([`base_url`]).
    pub fn api_base(&self) -> Result<String, String> {
        base_url("twilio.api_base_url", &self.api_base_url)
    }

    /// `twilio.messaging_base_url`, checked ([`base_url`]).
    pub fn messaging_base(&self) -> Result<String, String> {
        base_url("twilio.messaging_base_url", &self.messaging_base_url)
    }

    /// Whether the API key and its secret are both set (then the main account's REST calls
    /// use them instead of its auth tokens).
    pub fn has_api_key(&self) -> bool {
        !self.api_key.trim().is_empty() && !self.api_secret.expose_secret().trim().is_empty()
    }

    /// The auth tokens of an account, as signatures use them: its `twilio.accounts` entry,
    /// else `twilio.auth_tokens` (TWILIO_AUTH_TOKEN included). AccountSids match
    /// case-insensitively (the config crate lower-cases map keys).
    pub fn tokens_for(&self, account_sid: &str) -> &[SecretString] {
        self.accounts
            .iter()
            .find(|(sid, _)| sid.eq_ignore_ascii_case(account_sid.trim()))
            .map_or(self.auth_tokens.as_slice(), |(_, tokens)| tokens.as_slice())
    }
}

/// A Twilio API base URL without a trailing slash: https to any host, plain http only to this
/// machine (a fake API in tests), and no credentials, query or fragment (clients append paths
/// and Twilio's page URIs to it).
fn base_url(key: &str, raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let url = url::Url::parse(raw).map_err(|e| format!("{key}: not a URL ({e}): {raw:?}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("{key}: has no host: {raw:?}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => {
            return Err(format!(
                "{key}: plain http is allowed only to 127.0.0.1, ::1 or localhost \
                 (credentials would cross the network in clear): {raw:?}"
            ));
        }
        _ => return Err(format!("{key}: must start with https://: {raw:?}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{key}: must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{key}: must not have a query or fragment: {raw:?}"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `localhost` or a loopback IP address (`127.0.0.1`, `[::1]`).
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `AC` followed by 32 hexadecimal digits.
fn is_account_sid(sid: &str) -> bool {
    sid.len() == 34
        && sid.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("AC"))
        && sid.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub migrate_on_start: bool,
    /// Store concurrent webhooks together, many per transaction (`store::group`).
    pub group_commit: bool,
    /// Group-commit transactions in flight at once; each holds a pooled connection.
    pub group_writers: usize,
    /// Most webhooks in one group-commit transaction.
    pub group_size: usize,
    /// Whole days after today whose partitions every replica keeps made (hourly).
    pub partition_days_ahead: u32,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ReplySettings {
    /// The default reply body; empty means none.
    #[serde(default)]
    pub body: String,
    /// The fallback route's reply when the primary reply is empty or the database is down.
    #[serde(default)]
    pub fallback_body: String,
    /// Put an `action` status callback URL on every `<Message>` we answer with.
    pub track_delivery: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where settings come from. Tests build one by hand instead of touching the process
/// environment.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The directory holding `default.toml` and `{APP_ENV}.toml` (optional files).
    pub config_dir: PathBuf,
    /// The `--config FILE`, which must exist when given.
    pub config_file: Option<PathBuf>,
    /// The environment variables to read.
    pub env: HashMap<String, String>,
}

impl Sources {
    pub fn from_process(config_file: Option<PathBuf>) -> Self {
        Sources {
            config_dir: PathBuf::from("config"),
            config_file,
            env: std::env::vars().collect(),
        }
    }
}

/// The most a TwiML `<Body>` may hold (TWILIO.md §7).
pub const MAX_BODY_CHARS: usize = 1600;

impl Settings {
    /// Loads the layers and applies the conventional variables. Only structural errors (a
    /// missing `--config` file, bad TOML, wrong types) fail here; [`Settings::problems`]
    /// reports everything else.
    pub fn load(sources: &Sources) -> Result<Settings, config::ConfigError> {
        use config::{Environment, File, FileFormat};
        let app_env = sources
            .env
            .get("APP_ENV")
            .map(String::as_str)
            .unwrap_or("local");
        let mut builder = config::Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(sources.config_dir.join("default.toml")).required(false))
            .add_source(
                File::from(sources.config_dir.join(format!("{app_env}.toml"))).required(false),
            );
        if let Some(file) = &sources.config_file {
            builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
        }
        let env_map: config::Map<String, String> = sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut settings: Settings = builder
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env_map)),
            )
            .build()?
            .try_deserialize()?;
        settings.apply_conventional(&sources.env)?;
        settings.config_dir = sources.config_dir.clone();
        Ok(settings)
    }

    /// `DATABASE_URL`, `PORT`, `TWILIO_AUTH_TOKEN`, `TWILIO_ACCOUNT_SID`, `TWILIO_API_KEY`,
    /// `TWILIO_API_SECRET` and `RUST_LOG` sit below the explicit `TWILIO_RECEIVER__…`
    /// variables, so each yields when its explicit twin is set (`TWILIO_AUTH_TOKEN` is added
    /// to the token list instead).
    fn apply_conventional(
        &mut self,
        env: &HashMap<String, String>,
    ) -> Result<(), config::ConfigError> {
        let explicit =
            |section: &str, key: &str| env.contains_key(&format!("{ENV_PREFIX}__{section}__{key}"));
        let set = |name: &str| env.get(name).filter(|v| !v.is_empty());
        if let Some(url) = set("DATABASE_URL").filter(|_| !explicit("DATABASE", "URL")) {
            self.database.url = SecretString::from(url.clone());
        }
        if let Some(port) = set("PORT").filter(|_| !explicit("SERVER", "LISTEN")) {
            let port: u16 = port.trim().parse().map_err(|_| {
                config::ConfigError::Message(format!("PORT: not a port number: {port:?}"))
            })?;
            self.server.listen = match SocketAddr::from_str(&self.server.listen) {
                Ok(mut addr) => {
                    addr.set_port(port);
                    addr.to_string()
                }
                Err(_) => format!("0.0.0.0:{port}"),
            };
        }
        if let Some(token) = set("TWILIO_AUTH_TOKEN") {
            self.twilio
                .auth_tokens
                .push(SecretString::from(token.clone()));
        }
        // The names Twilio's own libraries and CLI read, so one environment serves both.
        if let Some(sid) = set("TWILIO_ACCOUNT_SID").filter(|_| !explicit("TWILIO", "ACCOUNT_SID"))
        {
            self.twilio.account_sid = sid.trim().to_owned();
        }
        if let Some(key) = set("TWILIO_API_KEY").filter(|_| !explicit("TWILIO", "API_KEY")) {
            self.twilio.api_key = key.trim().to_owned();
        }
        if let Some(secret) = set("TWILIO_API_SECRET").filter(|_| !explicit("TWILIO", "API_SECRET"))
        {
            self.twilio.api_secret = SecretString::from(secret.clone());
        }
        if let Some(filter) = set("RUST_LOG").filter(|_| !explicit("LOG", "FILTER")) {
            self.log.filter = filter.clone();
        }
        Ok(())
    }

    /// Everything wrong with these settings, each naming its key. Empty means valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = self.server.listen_addr() {
            out.push(e);
        }
        if let Err(e) = parse_addr("server.admin_listen", &self.server.admin_listen) {
            out.push(e);
        }
        if let Err(e) = self.server.public_base() {
            out.push(e);
        }
        if self.server.body_limit_bytes == 0 {
            out.push("server.body_limit_bytes: must be greater than 0".into());
        }
        for (key, value) in [
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            (
                "server.max_concurrent_requests",
                self.server.max_concurrent_requests as u64,
            ),
            ("server.max_connections", self.server.max_connections as u64),
        ] {
            if value == 0 {
                out.push(format!("{key}: must be greater than 0"));
            } else if key.starts_with("server.max_") && value > 1 << 20 {
                // Counts of permits: far above any real need, and below tokio's limit.
                out.push(format!("{key}: must be at most 1048576"));
            }
        }
        // hyper needs room for at least its own read buffer's minimum.
        if self.server.max_header_bytes < 8192 {
            out.push("server.max_header_bytes: must be at least 8192".into());
        }
        if self.twilio.verify_signatures
            && self.twilio.auth_tokens.is_empty()
            && self.twilio.accounts.is_empty()
        {
            out.push(
                "twilio.auth_tokens: no auth token configured, so every webhook would be rejected \
                 (set TWILIO_AUTH_TOKEN)"
                    .into(),
            );
        }
        if self
            .twilio
            .auth_tokens
            .iter()
            .chain(self.twilio.accounts.values().flatten())
            .any(|t| t.expose_secret().trim().is_empty())
        {
            out.push("twilio.auth_tokens: a token is empty".into());
        }
        if let Err(e) = self.database.connect_options() {
            out.push(e);
        }
        if self.database.max_connections == 0 {
            out.push("database.max_connections: must be greater than 0".into());
        }
        if self.database.group_writers == 0 || self.database.group_size == 0 {
            out.push(
                "database.group_writers and database.group_size: must be greater than 0".into(),
            );
        }
        if self.database.group_size > 10_000 {
            out.push("database.group_size: must be at most 10000".into());
        }
        if !(2..=365).contains(&self.database.partition_days_ahead) {
            out.push("database.partition_days_ahead: must be from 2 to 365".into());
        }
        if self.database.acquire_timeout_ms == 0 {
            out.push("database.acquire_timeout_ms: must be greater than 0".into());
        }
        for (key, body) in [
            ("reply.body", &self.reply.body),
            ("reply.fallback_body", &self.reply.fallback_body),
        ] {
            let chars = body.chars().count();
            if chars > MAX_BODY_CHARS {
                out.push(format!(
                    "{key}: {chars} characters; Twilio accepts at most {MAX_BODY_CHARS}"
                ));
            }
        }
        out.extend(self.rest_problems());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            out.push(format!("log.filter: {e}"));
        }
        if let Err(problems) = self.load_rules() {
            out.extend(problems);
        }
        out.extend(self.media_problems());
        out
    }

    /// What is wrong with the media archive's settings, when it is on.
    fn media_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.media.archive {
            return out;
        }
        if let Err(e) = crate::storage::open(&self.media.storage) {
            out.push(format!("media.storage: {e}"));
        }
        if self.media.workers == 0 {
            out.push("media.workers: must be at least 1 when media.archive is on".into());
        }
        if self.media.max_attempts < 1 {
            out.push("media.max_attempts: must be at least 1".into());
        }
        out
    }

    /// What is wrong with the REST API settings, and with reconciliation when it is on.
    fn rest_problems(&self) -> Vec<String> {
        let twilio = &self.twilio;
        let mut out = Vec::new();
        for base in [twilio.api_base(), twilio.messaging_base()] {
            if let Err(e) = base {
                out.push(e);
            }
        }
        let sid = twilio.account_sid.trim();
        if !sid.is_empty() && !is_account_sid(sid) {
            out.push(format!(
                "twilio.account_sid: not an Account SID (AC and 32 hexadecimal digits): {sid:?}"
            ));
        }
        let key = twilio.api_key.trim();
        let secret_set = !twilio.api_secret.expose_secret().trim().is_empty();
        if !key.is_empty() && !key.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("SK")) {
            out.push(format!(
                "twilio.api_key: an API key SID starts with SK: {key:?}"
            ));
        }
        if !key.is_empty() && !secret_set {
            out.push("twilio.api_secret: twilio.api_key is set but its secret is not (set TWILIO_API_SECRET)".into());
        }
        if key.is_empty() && secret_set {
            out.push("twilio.api_key: twilio.api_secret is set but the key SID is not (set TWILIO_API_KEY)".into());
        }
        if !self.reconcile.enabled {
            return out;
        }
        if sid.is_empty() {
            out.push(
                "reconcile.enabled: twilio.account_sid is not set, so there is no account to read (set TWILIO_ACCOUNT_SID)"
                    .into(),
            );
        } else if !twilio.has_api_key()
            && !twilio
                .tokens_for(sid)
                .iter()
                .any(|t| !t.expose_secret().trim().is_empty())
        {
            out.push(
                "reconcile.enabled: no credential for twilio.account_sid: set twilio.api_key and twilio.api_secret, or an auth token (TWILIO_AUTH_TOKEN)"
                    .into(),
            );
        }
        for (key, value) in [
            ("reconcile.interval_ms", self.reconcile.interval_ms),
            ("reconcile.stale_after_ms", self.reconcile.stale_after_ms),
        ] {
            if value == 0 {
                out.push(format!("{key}: must be greater than 0"));
            }
        }
        out
    }

    /// The rules file and whether it must exist (it must when `rules.path` names it).
    pub fn rules_file(&self) -> (PathBuf, bool) {
        if self.rules.path.trim().is_empty() {
            (self.config_dir.join("rules.toml"), false)
        } else {
            (PathBuf::from(self.rules.path.trim()), true)
        }
    }

    /// Loads and compiles the rules. The default file may be absent (no rules); a configured
    /// one may not.
    pub fn load_rules(&self) -> Result<crate::rules::Rules, Vec<String>> {
        let (path, required) = self.rules_file();
        crate::rules::Rules::load_file(&path, required)
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print settings: {e}\n"))
    }

    pub fn verifier(&self) -> Verifier {
        Verifier::new(
            self.twilio.auth_tokens.clone(),
            self.twilio
                .accounts
                .iter()
                .map(|(sid, tokens)| (sid.clone(), tokens.clone()))
                .collect(),
            self.twilio.verify_signatures,
        )
        .with_shared_keys(
            self.twilio
                .shared_keys
                .iter()
                .map(|(id, secret)| (id.clone(), secret.clone()))
                .collect(),
        )
    }

    pub fn default_reply(&self) -> Option<String> {
        Some(self.reply.body.clone()).filter(|b| !b.trim().is_empty())
    }

    pub fn fallback_reply(&self) -> Option<String> {
        Some(self.reply.fallback_body.clone()).filter(|b| !b.trim().is_empty())
    }
}

/// The webhook routes the server answers, as paths under `server.public_url`.
pub const MESSAGES_PATH: &str = "/twilio/messages";
pub const FALLBACK_PATH: &str = "/twilio/fallback";
pub const STATUS_PATH: &str = "/twilio/status";

/// Where the URL a signature is checked against comes from (DESIGN.md §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicBase {
    /// `server.public_url`, without a trailing slash.
    Configured(String),
    /// Scheme, host and prefix from trusted proxy headers.
    Forwarded,
    /// `http://` + the `Host` header.
    Host,
}

impl ServerSettings {
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        parse_addr("server.listen", &self.listen)
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, String> {
        parse_addr("server.admin_listen", &self.admin_listen)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn public_base(&self) -> Result<PublicBase, String> {
        let url = self.public_url.trim();
        if url.is_empty() {
            return Ok(if self.trust_forwarded_headers {
                PublicBase::Forwarded
            } else {
                PublicBase::Host
            });
        }
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                format!("server.public_url: must start with https:// or http://: {url:?}")
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("server.public_url: has no host: {url:?}"));
        }
        if rest.contains(['?', '#']) {
            return Err(format!(
                "server.public_url: must not have a query or fragment (Twilio's parameters go there): {url:?}"
            ));
        }
        if rest
            .split('/')
            .next()
            .is_some_and(|authority| authority.contains('@'))
        {
            return Err("server.public_url: must not contain credentials".into());
        }
        Ok(PublicBase::Configured(url.trim_end_matches('/').to_owned()))
    }
}

impl DatabaseSettings {
    /// Options for the request pool: `statement_timeout` set on every connection, JIT off,
    /// and generic plans always. The server's statements are index lookups over a few rows,
    /// but a generic plan's estimates grow with the tables: past `jit_above_cost` Postgres
    /// compiles the plan on every execution, which costs hundreds of milliseconds for a
    /// sub-millisecond read. And the write statement is large: left to choose between
    /// planning it per execution and its cached generic plan, Postgres spent about a tenth
    /// more CPU per status callback; forced generic it did not, and that plan does the same
    /// index lookups.
    pub fn connect_options(&self) -> Result<PgConnectOptions, String> {
        let statement_timeout = self.statement_timeout_ms.to_string();
        self.connect_options_without_timeout().map(|o| {
            o.options([
                ("statement_timeout", statement_timeout.as_str()),
                ("jit", "off"),
                ("plan_cache_mode", "force_generic_plan"),
            ])
        })
    }

    /// Options for migrations, which may legitimately run longer than a request.
    pub fn connect_options_without_timeout(&self) -> Result<PgConnectOptions, String> {
        let url = self.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("database.url: must start with postgres:// or postgresql://".to_owned());
        }
        let options = PgConnectOptions::from_str(url)
            // The error text may quote the URL, password included: never pass it on.
            .map_err(|_| "database.url: not a valid postgres:// URL".to_owned())?
            .application_name("twilio-receiver");
        // TLS to a Postgres on this very host protects nothing and costs both ends CPU.
        // Worse, sqlx 0.9.0 does not set TCP_NODELAY (sqlx#4335), so over loopback a TLS
        // write of more than one record waits for a delayed ACK, 40 ms, which every large
        // group commit hits. Where neither the URL nor PGSSLMODE chooses, loopback goes
        // without TLS; any other host keeps sqlx's default (`prefer`).
        let chosen = ["sslmode=", "ssl-mode="]
            .iter()
            .any(|key| url.split_once('?').is_some_and(|(_, q)| q.contains(key)))
            || std::env::var_os("PGSSLMODE").is_some();
        let host = options.get_host().trim_matches(['[', ']']);
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Ok(if loopback && !chosen {
            options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
        } else {
            options
        })
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(value.trim())
        .map_err(|_| format!("{key}: not an address like 0.0.0.0:8080: {value:?}"))
}

/// A list key accepts a list, or a comma-separated string (how lists arrive from the
/// environment).
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    List(Vec<String>),
    String(String),
}

impl StringOrList {
    /// The items, trimmed, blanks dropped.
    fn into_strings(self) -> Vec<String> {
        let items = match self {
            StringOrList::List(items) => items,
            StringOrList::String(s) => s.split(',').map(str::to_owned).collect(),
        };
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn into_secrets(self) -> Vec<SecretString> {
        self.into_strings()
            .into_iter()
            .map(SecretString::from)
            .collect()
    }
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(StringOrList::deserialize(d)?.into_strings())
}

fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    Ok(SecretString::from(String::deserialize(d)?))
}

fn redact_secret<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        "[redacted]"
    })
}

fn secret_by_id<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SecretString>, D::Error> {
    Ok(BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, SecretString::from(v)))
        .collect())
}

fn redact_by_id<S: Serializer>(
    map: &BTreeMap<String, SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(map.keys().map(|k| (k, "[redacted]")))
}

fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    Ok(StringOrList::deserialize(d)?.into_secrets())
}

fn secret_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<SecretString>>, D::Error> {
    let raw = BTreeMap::<String, StringOrList>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.into_secrets()))
        .collect())
}

fn redact_list<S: Serializer>(tokens: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(tokens.iter().map(|_| "[redacted]"))
}

fn redact_map<S: Serializer>(
    map: &BTreeMap<String, Vec<SecretString>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        map.iter()
            .map(|(k, v)| (k, v.iter().map(|_| "[redacted]").collect::<Vec<_>>())),
    )
}

/// Shows a database URL with its password replaced.
fn redact_url<S: Serializer>(url: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url.expose_secret()))
}

pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let mut out = match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let password = if userinfo.contains(':') {
                ":[redacted]"
            } else {
                ""
            };
            format!("{scheme}://{user}{password}{}", &rest[at..])
        }
        None => url.to_owned(),
    };
    // A password may also travel as ?password=…
    if let Some(i) = out.find("password=") {
        out.truncate(i);
        out.push_str("password=[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)]) -> Sources {
        Sources {
            config_dir: PathBuf::from("/nonexistent"),
            config_file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn tokens(s: &Settings) -> Vec<String> {
        s.twilio
            .auth_tokens
            .iter()
            .map(|t| t.expose_secret().to_owned())
            .collect()
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let s = Settings::load(&sources(&[])).unwrap();
        assert_eq!(s.server.listen, "0.0.0.0:8080");
        assert_eq!(s.server.admin_listen, "127.0.0.1:9090");
        assert_eq!(s.server.body_limit_bytes, 65536);
        assert!(!s.server.trust_forwarded_headers);
        assert_eq!(s.server.public_base(), Ok(PublicBase::Host));
        assert!(s.twilio.verify_signatures);
        assert_eq!(s.database.acquire_timeout_ms, 2000);
        assert_eq!(s.database.statement_timeout_ms, 5000);
        assert!(s.database.migrate_on_start);
        assert_eq!(s.default_reply(), None);
        assert_eq!(s.fallback_reply(), None);
        assert!(s.reply.track_delivery);
        assert_eq!(s.log.format, LogFormat::Pretty);
        // Without a token every webhook would be refused: that is a problem to report.
        assert_eq!(s.problems().len(), 1, "{:?}", s.problems());
    }

    #[test]
    fn environment_variables_override_files_and_keep_plus_signs() {
        let s = Settings::load(&sources(&[
            (
                "TWILIO_RECEIVER__SERVER__PUBLIC_URL",
                "https://hooks.example.com/",
            ),
            ("TWILIO_RECEIVER__REPLY__BODY", "+15551234567"),
            ("TWILIO_RECEIVER__SERVER__BODY_LIMIT_BYTES", "1024"),
            ("TWILIO_RECEIVER__TWILIO__VERIFY_SIGNATURES", "false"),
            ("TWILIO_RECEIVER__TWILIO__AUTH_TOKENS", "a, b"),
            ("TWILIO_RECEIVER__LOG__FORMAT", "json"),
        ]))
        .unwrap();
        assert_eq!(
            s.server.public_base(),
            Ok(PublicBase::Configured("https://hooks.example.com".into()))
        );
        assert_eq!(s.reply.body, "+15551234567");
        assert_eq!(s.server.body_limit_bytes, 1024);
        assert!(!s.twilio.verify_signatures);
        assert_eq!(tokens(&s), ["a", "b"]);
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn conventional_variables_sit_between_files_and_explicit_variables() {
        let s = Settings::load(&sources(&[
            ("DATABASE_URL", "postgres://u@db/x"),
            ("PORT", "3000"),
            ("TWILIO_AUTH_TOKEN", "conventional"),
            ("TWILIO_RECEIVER__TWILIO__AUTH_TOKENS", "explicit"),
            ("RUST_LOG", "debug"),
        ]))
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://u@db/x");
        assert_eq!(s.server.listen, "0.0.0.0:3000");
        // TWILIO_AUTH_TOKEN is added, never replacing the list.
        assert_eq!(tokens(&s), ["explicit", "conventional"]);
        assert_eq!(s.log.filter, "debug");

        let s = Settings::load(&sources(&[
            ("DATABASE_URL", "postgres://u@db/x"),
            ("TWILIO_RECEIVER__DATABASE__URL", "postgres://u@db/explicit"),
            ("PORT", "3000"),
            ("TWILIO_RECEIVER__SERVER__LISTEN", "127.0.0.1:4000"),
            ("RUST_LOG", "debug"),
            ("TWILIO_RECEIVER__LOG__FILTER", "warn"),
        ]))
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://u@db/explicit");
        assert_eq!(s.server.listen, "127.0.0.1:4000");
        assert_eq!(s.log.filter, "warn");

        assert!(Settings::load(&sources(&[("PORT", "http")])).is_err());
    }

    #[test]
    fn files_layer_in_order_and_accounts_match_case_insensitively() {
        let dir = std::env::temp_dir().join(format!("twr-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("default.toml"),
            "[server]\nbody_limit_bytes = 1\nrequest_timeout_ms = 7\n",
        )
        .unwrap();
        std::fs::write(dir.join("staging.toml"), "[server]\nbody_limit_bytes = 2\n").unwrap();
        let file = dir.join("extra.toml");
        std::fs::write(
            &file,
            "[server]\nbody_limit_bytes = 3\n[twilio.accounts]\nACabc = \"sub-token\"\n",
        )
        .unwrap();
        let mut src = sources(&[("APP_ENV", "staging")]);
        src.config_dir = dir.clone();
        let s = Settings::load(&src).unwrap();
        assert_eq!(
            (s.server.body_limit_bytes, s.server.request_timeout_ms),
            (2, 7)
        );
        src.config_file = Some(file);
        let s = Settings::load(&src).unwrap();
        assert_eq!(s.server.body_limit_bytes, 3);
        let verifier = s.verifier();
        assert_eq!(verifier.tokens_for(Some("ACABC")).len(), 1);
        src.config_file = Some(dir.join("missing.toml"));
        assert!(Settings::load(&src).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn problems_name_their_keys() {
        let s = Settings::load(&sources(&[
            ("TWILIO_RECEIVER__SERVER__LISTEN", "nowhere"),
            ("TWILIO_RECEIVER__SERVER__PUBLIC_URL", "hooks.example.com"),
            ("TWILIO_RECEIVER__DATABASE__URL", "mysql:/x"),
            ("TWILIO_RECEIVER__LOG__FILTER", "[[["),
            ("TWILIO_AUTH_TOKEN", "t"),
        ]))
        .unwrap();
        let problems = s.problems().join("\n");
        for key in [
            "server.listen",
            "server.public_url",
            "database.url",
            "log.filter",
        ] {
            assert!(problems.contains(key), "{key} missing from {problems}");
        }
    }

    #[test]
    fn printed_settings_never_show_secrets() {
        let s = Settings::load(&sources(&[
            ("TWILIO_AUTH_TOKEN", "sekrit-token"),
            ("DATABASE_URL", "postgres://app:pa55word@db:5432/x"),
            ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__USER", "twilio"),
            ("TWILIO_RECEIVER__SERVER__BASIC_AUTH__PASSWORD", "hunter2"),
        ]))
        .unwrap();
        let printed = format!("{}\n{s:?}", s.redacted_toml());
        assert!(!printed.contains("sekrit-token"), "{printed}");
        assert!(!printed.contains("pa55word"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("postgres://app:[redacted]@db:5432/x"),
            "{printed}"
        );
    }

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const KEY: &str = "SK0123456789abcdef0123456789abcdef";

    #[test]
    fn rest_api_variables_use_twilios_own_names_below_the_explicit_ones() {
        let s = Settings::load(&sources(&[
            ("TWILIO_ACCOUNT_SID", &format!(" {SID} ")),
            ("TWILIO_API_KEY", KEY),
            ("TWILIO_API_SECRET", "key-secret"),
        ]))
        .unwrap();
        assert_eq!(s.twilio.account_sid, SID);
        assert_eq!(s.twilio.api_key, KEY);
        assert_eq!(s.twilio.api_secret.expose_secret(), "key-secret");
        assert!(s.twilio.has_api_key());
        assert_eq!(s.twilio.api_base().as_deref(), Ok("https://api.twilio.com"));
        assert_eq!(
            s.twilio.messaging_base().as_deref(),
            Ok("https://messaging.twilio.com")
        );
        assert!(!s.reconcile.enabled);
        assert_eq!(
            (
                s.reconcile.interval_ms,
                s.reconcile.overlap_ms,
                s.reconcile.stale_after_ms
            ),
            (600_000, 3_600_000, 7_200_000)
        );
        assert!(s.reconcile.senders.is_empty());

        let s = Settings::load(&sources(&[
            ("TWILIO_ACCOUNT_SID", "AC_conventional"),
            ("TWILIO_RECEIVER__TWILIO__ACCOUNT_SID", SID),
            ("TWILIO_API_KEY", "SK_conventional"),
            ("TWILIO_RECEIVER__TWILIO__API_KEY", KEY),
            ("TWILIO_API_SECRET", "conventional"),
            ("TWILIO_RECEIVER__TWILIO__API_SECRET", "explicit"),
            ("TWILIO_RECEIVER__RECONCILE__ENABLED", "true"),
            ("TWILIO_RECEIVER__RECONCILE__INTERVAL_MS", "1000"),
            (
                "TWILIO_RECEIVER__RECONCILE__SENDERS",
                "whatsapp:+14155238886, +15017122661,",
            ),
        ]))
        .unwrap();
        assert_eq!(s.twilio.account_sid, SID);
        assert_eq!(s.twilio.api_key, KEY);
        assert_eq!(s.twilio.api_secret.expose_secret(), "explicit");
        assert!(s.reconcile.enabled);
        assert_eq!(s.reconcile.interval_ms, 1000);
        // try_parsing stays off: a number with a plus sign stays the string it was.
        assert_eq!(
            s.reconcile.senders,
            ["whatsapp:+14155238886", "+15017122661"]
        );
    }

    #[test]
    fn rest_api_base_url_is_https_or_plain_http_to_this_machine() {
        let base = |url: &str| {
            let s = Settings::load(&sources(&[
                ("TWILIO_RECEIVER__TWILIO__API_BASE_URL", url),
                ("TWILIO_AUTH_TOKEN", "t"),
            ]))
            .unwrap();
            let found = s
                .problems()
                .iter()
                .any(|p| p.starts_with("twilio.api_base_url"));
            assert_eq!(
                found,
                s.twilio.api_base().is_err(),
                "{url}: {:?}",
                s.problems()
            );
            s.twilio.api_base()
        };
        for (url, expected) in [
            ("https://api.twilio.com", "https://api.twilio.com"),
            (
                "https://api.dublin.ie1.twilio.com/",
                "https://api.dublin.ie1.twilio.com",
            ),
            ("http://127.0.0.1:4010", "http://127.0.0.1:4010"),
            ("http://[::1]:4010/", "http://[::1]:4010"),
            ("HTTP://LOCALHOST:4010", "http://localhost:4010"),
        ] {
            assert_eq!(base(url).as_deref(), Ok(expected), "{url}");
        }
        for url in [
            "http://api.twilio.com",
            "http://10.0.0.1:4010",
            "http://127.0.0.1.evil.example",
            "ftp://api.twilio.com",
            "api.twilio.com",
            "https://user:pw@api.twilio.com",
            "https://api.twilio.com/?edge=dublin",
            "",
        ] {
            assert!(base(url).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn rest_check_config_says_when_reconcile_lacks_an_account_or_a_credential() {
        let reconcile_problems = |env: &[(&str, &str)]| {
            let mut env = env.to_vec();
            env.push(("TWILIO_RECEIVER__RECONCILE__ENABLED", "true"));
            let s = Settings::load(&sources(&env)).unwrap();
            s.problems()
                .into_iter()
                .filter(|p| p.starts_with("reconcile") || p.contains("twilio.api_"))
                .collect::<Vec<_>>()
        };
        let no_account = reconcile_problems(&[("TWILIO_AUTH_TOKEN", "t")]);
        assert_eq!(no_account.len(), 1, "{no_account:?}");
        assert!(no_account[0].contains("twilio.account_sid is not set"));

        let no_credential = reconcile_problems(&[("TWILIO_ACCOUNT_SID", SID)]);
        assert_eq!(no_credential.len(), 1, "{no_credential:?}");
        assert!(no_credential[0].contains("no credential for twilio.account_sid"));
        // A sub-account's token is no credential for the main account.
        let s = {
            let mut s = Settings::load(&sources(&[
                ("TWILIO_ACCOUNT_SID", SID),
                ("TWILIO_RECEIVER__RECONCILE__ENABLED", "true"),
            ]))
            .unwrap();
            s.twilio.accounts.insert(
                "acfedcba9876543210fedcba9876543210".into(),
                vec![SecretString::from("sub-token")],
            );
            s
        };
        assert!(s.problems().iter().any(|p| p.contains("no credential")));

        assert!(
            reconcile_problems(&[("TWILIO_ACCOUNT_SID", SID), ("TWILIO_AUTH_TOKEN", "t")])
                .is_empty()
        );
        assert!(
            reconcile_problems(&[
                ("TWILIO_ACCOUNT_SID", SID),
                ("TWILIO_API_KEY", KEY),
                ("TWILIO_API_SECRET", "s")
            ])
            .is_empty()
        );
        let half_key = reconcile_problems(&[("TWILIO_ACCOUNT_SID", SID), ("TWILIO_API_KEY", KEY)]);
        assert!(
            half_key.iter().any(|p| p.starts_with("twilio.api_secret")),
            "{half_key:?}"
        );
        assert!(
            half_key.iter().any(|p| p.contains("no credential")),
            "{half_key:?}"
        );

        // Off, nothing is required; a malformed SID or half a key is reported all the same.
        let s = Settings::load(&sources(&[("TWILIO_AUTH_TOKEN", "t")])).unwrap();
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let s = Settings::load(&sources(&[
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_ACCOUNT_SID", "AC123"),
            ("TWILIO_API_SECRET", "s"),
            ("TWILIO_RECEIVER__RECONCILE__INTERVAL_MS", "0"),
        ]))
        .unwrap();
        let problems = s.problems().join("\n");
        assert!(
            problems.contains("twilio.account_sid: not an Account SID"),
            "{problems}"
        );
        assert!(
            problems.contains("twilio.api_key: twilio.api_secret is set"),
            "{problems}"
        );
        assert!(!problems.contains("reconcile"), "{problems}");
    }

    #[test]
    fn rest_api_secret_is_redacted_in_check_config_and_debug() {
        let s = Settings::load(&sources(&[
            ("TWILIO_ACCOUNT_SID", SID),
            ("TWILIO_API_KEY", KEY),
            ("TWILIO_API_SECRET", "api-key-s3cret"),
        ]))
        .unwrap();
        let printed = format!("{}\n{s:?}", s.redacted_toml());
        assert!(!printed.contains("api-key-s3cret"), "{printed}");
        assert!(
            printed.contains(&format!("api_key = \"{KEY}\"")),
            "{printed}"
        );
        assert!(printed.contains("api_secret = \"[redacted]\""), "{printed}");
        assert!(printed.contains("[reconcile]"), "{printed}");
    }

    #[test]
    fn loopback_goes_without_tls_unless_the_url_asks_for_it() {
        let mode = |url: &str| {
            let s = Settings::load(&sources(&[("DATABASE_URL", url)])).unwrap();
            format!("{:?}", s.database.connect_options().unwrap().get_ssl_mode())
        };
        // (PGSSLMODE is not set where the tests run; it would count as a choice.)
        if std::env::var_os("PGSSLMODE").is_some() {
            return;
        }
        assert_eq!(mode("postgres://u@127.0.0.1:5432/x"), "Disable");
        assert_eq!(mode("postgres://u@localhost/x"), "Disable");
        assert_eq!(mode("postgres://u@[::1]:5432/x"), "Disable");
        assert_eq!(mode("postgres://u@127.0.0.1/x?sslmode=require"), "Require");
        assert_eq!(mode("postgres://u@db.example.com/x"), "Prefer");
        assert_eq!(mode("postgres://u@10.0.0.5/x"), "Prefer");
    }
}
