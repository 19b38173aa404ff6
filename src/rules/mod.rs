//! Reply rules: a TOML file of ordered rules, validated completely and compiled once
//! (regexes, templates, hour ranges), then evaluated per message without I/O.
//!
//! The first rule whose conditions all hold answers; `continue = true` adds its messages and
//! keeps evaluating. While a contact is opted out, only rules whose conditions say
//! `consent = "opted_out"` answer them.

mod facts;
mod hours;

pub use facts::{ConsentCause, ConsentState, Facts};
pub use hours::Hours;

use crate::{twilio::InboundMessage, twiml};
use chrono::Duration;
use chrono_tz::Tz;
use minijinja::{AutoEscape, Environment, Value};
use regex::Regex;
use serde::Deserialize;
use std::{collections::BTreeMap, path::Path};

/// Variables a template may use; naming any other is a load error.
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "body",
    "profile_name",
    "from",
    "to",
    "wa_id",
    "channel",
    "message_type",
    "media",
    "num_media",
    "latitude",
    "longitude",
    "address",
    "label",
    "button_text",
    "button_payload",
    "first_contact",
    "new_session",
    "inbound_count",
    "window_expires_at",
    "consent",
    "now",
];

/// Template steps allowed per render: enough for any reply, and no template can hang.
const TEMPLATE_FUEL: u64 = 20_000;

/// A consent change a rule makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentChange {
    OptIn,
    OptOut,
}

impl ConsentChange {
    pub fn state(self) -> ConsentState {
        match self {
            ConsentChange::OptIn => ConsentState::OptedIn,
            ConsentChange::OptOut => ConsentState::OptedOut,
        }
    }
}

/// Compiled rules, ready to evaluate.
#[derive(Debug)]
pub struct Rules {
    timezone: Tz,
    rules: Vec<Rule>,
    templates: Environment<'static>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    when: When,
    reply: Vec<ReplyTemplate>,
    consent: Option<ConsentChange>,
    limit: Option<Limit>,
    cont: bool,
}

#[derive(Debug, Default)]
struct When {
    case_sensitive: bool,
    body_equals: Option<String>,
    keywords: Option<Vec<String>>,
    body_matches: Option<Regex>,
    has_media: Option<bool>,
    media_type: Option<String>,
    message_type: Option<Vec<String>>,
    button_payload: Option<String>,
    channel: Option<String>,
    to: Option<Vec<String>>,
    from: Option<Vec<String>>,
    first_contact: Option<bool>,
    new_session: Option<bool>,
    within_hours: Vec<Hours>,
    outside_hours: Vec<Hours>,
    consent: Option<ConsentState>,
}

#[derive(Debug)]
struct ReplyTemplate {
    body: String,
    media: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Limit {
    count: u32,
    per: Duration,
}

/// What the rules decided for one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Names of the rules that answered, in order (a rule with zero messages still counts).
    pub matched: Vec<String>,
    /// Each message with the rule that produced it.
    pub messages: Vec<(String, twiml::Message)>,
    /// The consent change of the last rule that made one, and that rule.
    pub consent: Option<(ConsentChange, String)>,
}

impl Rules {
    /// No rules at all.
    pub fn empty() -> Self {
        Rules {
            timezone: Tz::UTC,
            rules: Vec::new(),
            templates: environment(),
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Loads `path`; when it is not `required` (the default location), a missing file means no
    /// rules.
    pub fn load_file(path: &Path, required: bool) -> Result<Self, Vec<String>> {
        if !required && !path.exists() {
            return Ok(Rules::empty());
        }
        Self::load(path)
    }

    /// Reads and compiles a rules file. Every problem is reported, each naming the file, the
    /// rule and the reason; a file with any problem yields no rules at all.
    pub fn load(path: &Path) -> Result<Self, Vec<String>> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{origin}: cannot read the rules file: {e}")])?;
        Self::parse(&text, &origin)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            vec![format!("{origin}: not valid TOML: {}", e.message())]
        })?;
        for key in table.keys() {
            if key != "timezone" && key != "rules" {
                problems.push(format!(
                    "{origin}: unknown key `{key}` (expected `timezone` and `[[rules]]`)"
                ));
            }
        }
        let timezone = match table.get("timezone") {
            None => Tz::UTC,
            Some(toml::Value::String(tz)) => tz.parse().unwrap_or_else(|_| {
                problems.push(format!("{origin}: unknown time zone {tz:?}"));
                Tz::UTC
            }),
            Some(_) => {
                problems.push(format!("{origin}: `timezone` must be a string"));
                Tz::UTC
            }
        };
        let items = match table.get("rules") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items.clone(),
            Some(one @ toml::Value::Table(_)) => vec![one.clone()],
            Some(_) => {
                problems.push(format!(
                    "{origin}: `rules` must be a list of tables ([[rules]])"
                ));
                Vec::new()
            }
        };

        let mut templates = environment();
        let mut rules = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let label = item
                .get("name")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("rule #{}", i + 1), |n| format!("rule `{n}`"));
            let raw = match RawRule::deserialize(item) {
                Ok(raw) => raw,
                Err(e) => {
                    problems.push(format!("{origin}: {label}: {}", e.message().trim()));
                    continue;
                }
            };
            if !names.insert(raw.name.clone()) {
                problems.push(format!("{origin}: {label}: duplicate rule name"));
            }
            match compile(raw, &mut templates) {
                Ok(rule) => rules.push(rule),
                Err(errors) => problems.extend(
                    errors
                        .into_iter()
                        .map(|e| format!("{origin}: {label}: {e}")),
                ),
            }
        }
        if problems.is_empty() {
            Ok(Rules {
                timezone,
                rules,
                templates,
            })
        } else {
            Err(problems)
        }
    }

    /// The longest `limit.per` of any rule: how far back the store must read this contact's
    /// earlier replies.
    pub fn lookback(&self) -> Duration {
        self.rules
            .iter()
            .filter_map(|r| r.limit.map(|l| l.per))
            .max()
            .unwrap_or_else(Duration::zero)
    }

    /// Evaluates the rules for one message, given what the store read back.
    pub fn evaluate(&self, msg: &InboundMessage, facts: &Facts) -> Evaluation {
        let mut out = Evaluation::default();
        let mut context = None;
        for rule in &self.rules {
            // An opted-out contact hears only from rules written for opted-out contacts.
            if facts.consent == ConsentState::OptedOut
                && rule.when.consent != Some(ConsentState::OptedOut)
            {
                continue;
            }
            if !rule.when.holds(msg, facts) || rule.limit_reached(facts) {
                continue;
            }
            let context = context.get_or_insert_with(|| self.context(msg, facts));
            for reply in &rule.reply {
                let body = self.render(&rule.name, &reply.body, context);
                let media: Vec<String> = reply
                    .media
                    .iter()
                    .map(|m| self.render(&rule.name, m, context))
                    .filter(|m| !m.trim().is_empty())
                    .collect();
                // A template that rendered nothing (and no media) sends nothing: Twilio rejects
                // an empty message.
                if body.trim().is_empty() && media.is_empty() {
                    continue;
                }
                // Over-long bodies become several messages; the media goes with the first.
                for (j, part) in twiml::split_body(&body).into_iter().enumerate() {
                    let message = twiml::Message {
                        body: part,
                        media: if j == 0 { media.clone() } else { Vec::new() },
                        action: None,
                    };
                    out.messages.push((rule.name.clone(), message));
                }
            }
            out.matched.push(rule.name.clone());
            if let Some(change) = rule.consent {
                out.consent = Some((change, rule.name.clone()));
            }
            if !rule.cont {
                break;
            }
        }
        out
    }

    fn render(&self, rule: &str, name: &str, context: &Value) -> String {
        let mut out = Capped::default();
        let result = self
            .templates
            .get_template(name)
            .and_then(|t| t.render_captured_to(context, &mut out).map(drop));
        match result {
            Ok(_) => {}
            Err(_) if out.full => tracing::warn!(
                rule,
                limit = MAX_TEMPLATE_OUTPUT,
                "a reply template printed more than one TwiML answer can hold; the rest is cut"
            ),
            Err(e) => {
                tracing::warn!(rule, error = %e, "a reply template failed; its text is left empty");
                return String::new();
            }
        }
        // `Capped` cuts only at character boundaries, so this is never lossy.
        String::from_utf8(out.bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Template variables: only values that are present, so an absent one renders empty.
    fn context(&self, msg: &InboundMessage, facts: &Facts) -> Value {
        let local = |t: chrono::DateTime<chrono::Utc>| {
            let t = t.with_timezone(&self.timezone);
            Value::from(t.format("%Y-%m-%d %H:%M").to_string())
        };
        let mut c: BTreeMap<&str, Value> = BTreeMap::new();
        c.insert("body", Value::from(msg.body.as_str()));
        c.insert("from", Value::from(msg.from.expose()));
        c.insert("to", Value::from(msg.to.expose()));
        c.insert("channel", Value::from(msg.to.channel()));
        c.insert("num_media", Value::from(msg.media.len()));
        c.insert(
            "media",
            Value::from_serialize(
                msg.media
                    .iter()
                    .map(|m| {
                        BTreeMap::from([
                            ("url", Some(m.url.as_str())),
                            ("content_type", m.content_type.as_deref()),
                        ])
                    })
                    .collect::<Vec<_>>(),
            ),
        );
        let optional = [
            ("profile_name", &msg.profile_name),
            ("wa_id", &msg.wa_id),
            ("message_type", &msg.message_type),
            ("address", &msg.location_address),
            ("label", &msg.location_label),
            ("button_text", &msg.button_text),
            ("button_payload", &msg.button_payload),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                c.insert(k, Value::from(v.as_str()));
            }
        }
        for (k, v) in [("latitude", msg.latitude), ("longitude", msg.longitude)] {
            if let Some(v) = v {
                c.insert(k, Value::from(v));
            }
        }
        c.insert("first_contact", Value::from(facts.first_contact));
        c.insert("new_session", Value::from(facts.new_session));
        c.insert("inbound_count", Value::from(facts.inbound_count));
        if let Some(t) = facts.window_expires_at {
            c.insert("window_expires_at", local(t));
        }
        c.insert("consent", Value::from(facts.consent.as_str()));
        c.insert("now", local(facts.now));
        Value::from_serialize(&c)
    }
}

impl Rule {
    /// Loop protection: this rule already answered this contact `count` times within `per`.
    fn limit_reached(&self, facts: &Facts) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let since = facts.now - limit.per;
        let answered = facts
            .recent_replies
            .iter()
            .filter(|(rule, at)| *at > since && *rule == self.name)
            .count();
        answered >= limit.count as usize
    }
}

impl When {
    fn holds(&self, msg: &InboundMessage, facts: &Facts) -> bool {
        let body = msg.body.trim();
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.to_lowercase() == b.to_lowercase()
            }
        };
        let now = facts.now;
        self.body_equals.as_ref().is_none_or(|want| eq(body, want))
            && self.keywords.as_ref().is_none_or(|words| {
                let first = body
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_matches(|c: char| !c.is_alphanumeric());
                words.iter().any(|w| eq(body, w) || eq(first, w))
            })
            && self
                .body_matches
                .as_ref()
                .is_none_or(|re| re.is_match(body))
            && self
                .has_media
                .is_none_or(|want| want != msg.media.is_empty())
            && self.media_type.as_ref().is_none_or(|pattern| {
                msg.media
                    .iter()
                    .filter_map(|m| m.content_type.as_deref())
                    .any(|ct| media_type_matches(pattern, ct))
            })
            && self.message_type.as_ref().is_none_or(|types| {
                msg.message_type
                    .as_deref()
                    .is_some_and(|t| types.iter().any(|w| w.eq_ignore_ascii_case(t)))
            })
            && self
                .button_payload
                .as_ref()
                .is_none_or(|want| msg.button_payload.as_deref() == Some(want.as_str()))
            && self
                .channel
                .as_ref()
                .is_none_or(|c| c.eq_ignore_ascii_case(&msg.to.channel()))
            && self
                .to
                .as_ref()
                .is_none_or(|to| to.iter().any(|a| a == msg.to.expose()))
            && self
                .from
                .as_ref()
                .is_none_or(|from| from.iter().any(|a| a == msg.from.expose()))
            && self
                .first_contact
                .is_none_or(|want| want == facts.first_contact)
            && self
                .new_session
                .is_none_or(|want| want == facts.new_session)
            && (self.within_hours.is_empty() || self.within_hours.iter().any(|h| h.contains(now)))
            && (self.outside_hours.is_empty()
                || !self.outside_hours.iter().any(|h| h.contains(now)))
            && self.consent.is_none_or(|want| want == facts.consent)
    }
}

fn media_type_matches(pattern: &str, content_type: &str) -> bool {
    let content_type = content_type.split(';').next().unwrap_or_default().trim();
    match pattern.strip_suffix("/*") {
        Some(major) => {
            major == "*"
                || content_type
                    .split('/')
                    .next()
                    .is_some_and(|m| m.eq_ignore_ascii_case(major))
        }
        None => pattern == "*" || pattern.eq_ignore_ascii_case(content_type),
    }
}

/// The most a template may print. Fuel bounds the steps, not what each step prints
/// (`{{ "x" * 100000000 }}` in a loop is a few steps and gigabytes), and more than one TwiML
/// answer holds could never be sent anyway.
const MAX_TEMPLATE_OUTPUT: usize = twiml::MAX_DOCUMENT_BYTES;

/// A template's output, stopping the render once it reaches [`MAX_TEMPLATE_OUTPUT`]: what fits
/// is kept, cut at a character boundary (every piece a template prints is a whole string).
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    full: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, piece: &[u8]) -> std::io::Result<usize> {
        let room = MAX_TEMPLATE_OUTPUT - self.bytes.len();
        if piece.len() <= room {
            self.bytes.extend_from_slice(piece);
            return Ok(piece.len());
        }
        // Back off to the start of the character that would not fit whole.
        let mut end = room;
        while end > 0 && piece[end] & 0b1100_0000 == 0b1000_0000 {
            end -= 1;
        }
        self.bytes.extend_from_slice(&piece[..end]);
        self.full = true;
        Err(std::io::Error::other("template output limit reached"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // The TwiML writer escapes once; escaping here too would show users "&amp;".
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

/// Rule names appear in URLs and SQL: letters, digits, `-` and `_` only.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn compile(raw: RawRule, templates: &mut Environment<'static>) -> Result<Rule, Vec<String>> {
    let mut errors = Vec::new();
    if !valid_name(&raw.name) {
        errors.push("the name may only hold letters, digits, - and _ (at most 64)".to_owned());
    }
    let when = compile_when(raw.when, &mut errors);
    let limit = compile_limit(raw.limit, &mut errors);
    // WhatsApp delivers one media item per message; SMS (MMS) up to ten.
    let max_media = if when.channel.as_deref() == Some("sms") {
        10
    } else {
        1
    };
    let reply = raw
        .reply
        .into_vec()
        .into_iter()
        .enumerate()
        .map(|(i, r)| compile_reply(&raw.name, i + 1, r, max_media, templates, &mut errors))
        .collect();
    if errors.is_empty() {
        Ok(Rule {
            name: raw.name,
            when,
            reply,
            consent: raw.consent,
            limit,
            cont: raw.cont,
        })
    } else {
        Err(errors)
    }
}

/// The conditions, with regexes and hour ranges compiled; problems go to `errors`.
fn compile_when(w: RawWhen, errors: &mut Vec<String>) -> When {
    let case_sensitive = w.case_sensitive.unwrap_or(false);
    let body_matches = w.body_matches.and_then(|pattern| {
        let source = if case_sensitive {
            pattern.clone()
        } else {
            format!("(?i){pattern}")
        };
        Regex::new(&source)
            .map_err(|e| errors.push(format!("bad regex in body_matches: {e}")))
            .ok()
    });
    let mut hours = |ranges: Option<OneOrMany<RawHours>>, key: &str| -> Vec<Hours> {
        ranges
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|h| {
                Hours::parse(&h.tz, &h.days, &h.from, &h.to)
                    .map_err(|e| errors.push(format!("{key}: {e}")))
                    .ok()
            })
            .collect()
    };
    let within_hours = hours(w.within_hours, "within_hours");
    let outside_hours = hours(w.outside_hours, "outside_hours");
    if let Some(OneOrMany::Many(words)) = &w.keywords
        && (words.is_empty() || words.iter().any(|k| k.trim().is_empty()))
    {
        errors.push("keywords: empty list or empty keyword".into());
    }
    if let Some(OneOrMany::One(word)) = &w.keywords
        && word.trim().is_empty()
    {
        errors.push("keywords: empty keyword".into());
    }
    When {
        case_sensitive,
        body_equals: w.body_equals.map(|b| b.trim().to_owned()),
        keywords: w.keywords.map(|k| {
            k.into_vec()
                .into_iter()
                .map(|w| w.trim().to_owned())
                .collect()
        }),
        body_matches,
        has_media: w.has_media,
        media_type: w.media_type,
        message_type: w.message_type.map(OneOrMany::into_vec),
        button_payload: w.button_payload,
        channel: w.channel.map(|c| c.to_ascii_lowercase()),
        to: w.to.map(OneOrMany::into_vec),
        from: w.from.map(OneOrMany::into_vec),
        first_contact: w.first_contact,
        new_session: w.new_session,
        within_hours,
        outside_hours,
        consent: w.consent,
    }
}

fn compile_limit(limit: Option<RawLimit>, errors: &mut Vec<String>) -> Option<Limit> {
    let l = limit?;
    let per = parse_duration(&l.per)
        .map_err(|e| errors.push(format!("limit.per: {e}")))
        .ok()?;
    if l.count == 0 {
        errors
            .push("limit.count must be at least 1 (to silence a rule, give it reply = [])".into());
    }
    Some(Limit {
        count: l.count,
        per,
    })
}

/// Reply number `n` of rule `rule`: its templates added to `templates` under names of their
/// own, each checked for variables no message has.
fn compile_reply(
    rule: &str,
    n: usize,
    r: RawReply,
    max_media: usize,
    templates: &mut Environment<'static>,
    errors: &mut Vec<String>,
) -> ReplyTemplate {
    if r.body.trim().is_empty() && r.media.is_none() {
        errors.push(format!(
            "reply #{n}: neither a body nor media (use reply = [] to answer nothing)"
        ));
    }
    let media = r.media.map(OneOrMany::into_vec).unwrap_or_default();
    if media.len() > max_media {
        errors.push(format!(
            "reply #{n}: {} media items; WhatsApp delivers one per message (up to 10 only for rules with channel = \"sms\")",
            media.len()
        ));
    }
    let mut add = |suffix: String, source: String| {
        let name = format!("{rule}#{n}.{suffix}");
        match templates.add_template_owned(name.clone(), source) {
            Ok(()) => check_variables(templates, &name, n, &suffix, errors),
            Err(e) => errors.push(format!("reply #{n}: bad template in {suffix}: {e}")),
        }
        name
    };
    let body = add("body".into(), r.body);
    let media = media
        .into_iter()
        .enumerate()
        .map(|(j, m)| add(format!("media{}", j + 1), m))
        .collect();
    ReplyTemplate { body, media }
}

/// Template `name` may use only the variables a message has, and the engine's globals.
fn check_variables(
    templates: &Environment<'static>,
    name: &str,
    n: usize,
    suffix: &str,
    errors: &mut Vec<String>,
) {
    let Ok(t) = templates.get_template(name) else {
        return;
    };
    // Globals (range, dict, ...) are functions, not missing variables.
    let mut unknown: Vec<_> = t
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| {
            !TEMPLATE_VARIABLES.contains(&v.as_str()) && !templates.globals().any(|(g, _)| g == v)
        })
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        errors.push(format!(
            "reply #{n}: {suffix} uses unknown variable(s) {} (known: {})",
            unknown.join(", "),
            TEMPLATE_VARIABLES.join(", ")
        ));
    }
}

/// The longest `limit.per` accepted: loop protection looks back at most a year.
const MAX_LIMIT_PERIOD_DAYS: i64 = 366;

/// `90s`, `30m`, `12h`, `7d`, `1w`, or sums like `1h30m`; at most a year.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("not a duration: {s:?} (use e.g. 30m, 12h, 7d; at most 366d)");
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let part = match c {
            's' => Duration::try_seconds(n),
            'm' => Duration::try_minutes(n),
            'h' => Duration::try_hours(n),
            'd' => Duration::try_days(n),
            'w' => Duration::try_weeks(n),
            _ => None,
        }
        .ok_or_else(bad)?;
        total = total.checked_add(&part).ok_or_else(bad)?;
    }
    if !digits.is_empty()
        || total <= Duration::zero()
        || total > Duration::days(MAX_LIMIT_PERIOD_DAYS)
    {
        return Err(bad());
    }
    Ok(total)
}

/// A single value wherever a list is accepted (and a list wherever a table is). Deserialized
/// by hand so an error names the real problem (an unknown key inside an item, a wrong type)
/// rather than "did not match any variant".
#[derive(Debug)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::Array(items) => items
                .into_iter()
                .map(|item| T::deserialize(item).map_err(|e| D::Error::custom(e.message().trim())))
                .collect::<Result<_, _>>()
                .map(OneOrMany::Many),
            one => T::deserialize(one)
                .map(OneOrMany::One)
                .map_err(|e| D::Error::custom(e.message().trim())),
        }
    }
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(one) => vec![one],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    when: RawWhen,
    /// Required: `reply = []` is the explicit way to answer nothing.
    reply: OneOrMany<RawReply>,
    consent: Option<ConsentChange>,
    limit: Option<RawLimit>,
    #[serde(default, rename = "continue")]
    cont: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    body_equals: Option<String>,
    keywords: Option<OneOrMany<String>>,
    body_matches: Option<String>,
    case_sensitive: Option<bool>,
    has_media: Option<bool>,
    media_type: Option<String>,
    message_type: Option<OneOrMany<String>>,
    button_payload: Option<String>,
    channel: Option<String>,
    to: Option<OneOrMany<String>>,
    from: Option<OneOrMany<String>>,
    first_contact: Option<bool>,
    new_session: Option<bool>,
    within_hours: Option<OneOrMany<RawHours>>,
    outside_hours: Option<OneOrMany<RawHours>>,
    consent: Option<ConsentState>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHours {
    tz: String,
    days: String,
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReply {
    #[serde(default)]
    body: String,
    media: Option<OneOrMany<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    count: u32,
    per: String,
}

#[cfg(test)]
mod tests;
