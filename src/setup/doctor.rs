//! `doctor`'s checks of this side: the configuration, the database, the spool, and the
//! webhook URL end to end (a signed probe through whatever sits in front of the server).

use super::Check;
use crate::{
    config::Settings,
    probe::{self, Answer},
    store, twilio,
};
use secrecy::SecretString;
use sqlx::postgres::PgPoolOptions;
use std::{path::Path, time::Duration};

/// How long each network check may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What `check-config` checks.
pub fn configuration(settings: &Settings) -> Vec<Check> {
    let problems = settings.problems();
    if problems.is_empty() {
        return vec![Check::pass("configuration", "no problems found")];
    }
    problems
        .into_iter()
        .map(|p| Check::fail("configuration", p, "correct the setting named above"))
        .collect()
}

/// The database answers, is migrated, and this role may write to every table.
pub async fn database(settings: &Settings) -> Check {
    const NAME: &str = "database";
    let options = match settings.database.connect_options() {
        Ok(options) => options,
        Err(e) => return Check::fail(NAME, e, "correct database.url (or DATABASE_URL)"),
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(TIMEOUT)
        .connect_lazy_with(options);
    let checked = async {
        let pending = store::setup::pending_migrations(&pool).await?;
        let unwritable = store::setup::unwritable(&pool).await?;
        let days = if pending.is_empty() {
            Some(store::setup::partition_days_ahead(&pool).await?)
        } else {
            None
        };
        Ok::<_, sqlx::Error>((pending, unwritable, days))
    };
    let result = tokio::time::timeout(TIMEOUT, checked).await;
    pool.close().await;
    match result {
        Err(_) => Check::fail(
            NAME,
            format!("no answer within {} s", TIMEOUT.as_secs()),
            "check database.url and that Postgres is running and reachable from here",
        ),
        // sqlx's errors name the host and the cause, never the password.
        Ok(Err(e)) => Check::fail(
            NAME,
            format!("cannot connect: {e}"),
            "check database.url and that Postgres is running and reachable from here",
        ),
        Ok(Ok((pending, _, _))) if !pending.is_empty() => Check::fail(
            NAME,
            format!(
                "{} migration(s) not applied (first: {})",
                pending.len(),
                pending[0]
            ),
            "run `twilio-receiver migrate` (or start the server with database.migrate_on_start = true)",
        ),
        Ok(Ok((_, (Some(reason), _), _))) => Check::fail(
            NAME,
            format!("cannot write: {reason}"),
            "point database.url at the primary",
        ),
        Ok(Ok((_, (None, missing), _))) if !missing.is_empty() => Check::fail(
            NAME,
            format!("this role cannot write to {}", missing.join(", ")),
            "grant it SELECT, INSERT, UPDATE and DELETE on the tables of its schema",
        ),
        Ok(Ok((_, _, Some(days)))) if days < 2 => Check::warn(
            NAME,
            match days {
                ..0 => {
                    "today has no partition: webhooks are spooled (503) until it exists".to_owned()
                }
                _ => format!("partitions exist for only {days} day(s) after today"),
            },
            "run `twilio-receiver migrate` as the tables' owner (it makes the coming days), and check that the server's hourly upkeep can (its log says why not)",
        ),
        Ok(Ok(_)) => Check::pass(NAME, "reachable, migrated, and this role can write"),
    }
}

/// The spool directory is writable, and on a filesystem that outlives the container.
pub fn spool(settings: &Settings) -> Check {
    const NAME: &str = "spool";
    let Some(dir) = settings.spool.dir() else {
        return Check::warn(
            NAME,
            "off: while Postgres is away, inbound webhooks are answered 503 (Twilio then calls the fallback URL) and status callbacks are lost",
            "set spool.dir to a directory on a persistent volume",
        );
    };
    let shown = dir.display();
    // The server creates the directory: where it does not exist yet, its nearest existing
    // parent must let a directory be made (doctor may run as another user, so it makes
    // none to keep).
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(&dir);
    let writable = if existing == dir {
        write_test_file(&dir)
    } else {
        let probe = existing.join(format!(".doctor-{}", std::process::id()));
        std::fs::create_dir(&probe).and_then(|()| std::fs::remove_dir(&probe))
    };
    if let Err(e) = writable {
        return Check::fail(
            NAME,
            format!("{shown} is not writable: {e}"),
            "make spool.dir a directory this user can create and write files in",
        );
    }
    match filesystem_of(existing) {
        Some(fs) if EPHEMERAL.contains(&fs.as_str()) => Check::warn(
            NAME,
            format!(
                "{shown} is writable but on a {fs} filesystem, which looks like the container's own: spooled webhooks are lost when the container is replaced"
            ),
            format!("mount a persistent volume at {shown}"),
        ),
        _ => Check::pass(NAME, format!("{shown} is writable")),
    }
}

/// Filesystems whose contents do not survive the container (or the machine).
const EPHEMERAL: &[&str] = &["overlay", "aufs", "tmpfs", "ramfs"];

fn write_test_file(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(format!(".doctor-{}", std::process::id()));
    let mut file = std::fs::File::create(&path)?;
    let written = file.write_all(b"doctor\n").and_then(|()| file.sync_all());
    std::fs::remove_file(&path)?;
    written
}

/// The type of the filesystem `dir` is on, from the longest mount point above it in
/// `/proc/self/mountinfo` (Linux); `None` elsewhere.
fn filesystem_of(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(|line| {
            // `id parent major:minor root mount-point options [optional...] - fstype ...`
            let (before, after) = line.split_once(" - ")?;
            let mount_point = unescape_octal(before.split(' ').nth(4)?);
            let fstype = after.split(' ').next()?;
            dir.starts_with(&mount_point)
                .then(|| (mount_point.len(), fstype.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fstype)| fstype)
}

/// mountinfo writes space, tab, newline and backslash in a path as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], digits) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a probe to `url`, signed as Twilio would sign it, and judges the server's answer.
/// A URL an HTTP client cannot send byte for byte adds a warning, and its normal form is
/// probed instead.
pub async fn webhook_url(settings: &Settings, http: &reqwest::Client, url: &str) -> Vec<Check> {
    let target = match Target::of(url) {
        Ok(target) => target,
        Err(failed) => return vec![failed],
    };
    let mut checks = Vec::new();
    if target.sent != target.signed {
        checks.push(Check::warn(
            target.name.clone(),
            format!("not in the normal form an HTTP client sends ({}): host case, a default port or percent-encoding differ, and signatures keep them; doctor probes the normal form", target.sent),
            format!("use {} in Twilio (and in server.public_url)", target.sent),
        ));
    }
    let account = settings.twilio.account_sid.trim();
    let Some(token) = settings.twilio.tokens_for(account).first() else {
        checks.push(Check::fail(
            target.name,
            "no auth token configured to sign the probe with",
            "set TWILIO_AUTH_TOKEN",
        ));
        return checks;
    };
    checks.push(match send_probe(http, token, account, &target).await {
        Ok(answer) => judge(&target.name, &target.sent, &answer),
        Err(failure) => failure.into_check(target.name),
    });
    checks
}

/// A webhook URL as doctor probes it.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// As Twilio signs it: the URL without credentials and fragment (TWILIO.md §1.2).
    signed: String,
    /// As an HTTP client sends it (normalised by the `url` crate).
    sent: String,
    /// The check's name: the signed URL, credentials masked.
    name: String,
    /// The Basic credentials Twilio sends for `user:password@`, decoded.
    credentials: Option<(String, Option<String>)>,
}

impl Target {
    fn of(url: &str) -> Result<Target, Check> {
        let url = url.trim();
        let mut parsed = url::Url::parse(url).map_err(|e| {
            // Not echoed: a malformed URL may hold a password.
            Check::fail(
                "webhook URL",
                format!("a --url is not a valid URL ({e})"),
                "pass the URL exactly as it is in the Twilio Console",
            )
        })?;
        // Where the `url` crate parsed, the authority ends at the first `/`, `?` or `#`.
        let signed = without_userinfo(url.split('#').next().unwrap_or_default());
        let credentials = (!parsed.username().is_empty()).then(|| {
            (
                percent_decode(parsed.username()),
                parsed.password().map(percent_decode),
            )
        });
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        parsed.set_fragment(None);
        let name = match credentials {
            Some(_) => format!("webhook {}", signed.replacen("://", "://***@", 1)),
            None => format!("webhook {signed}"),
        };
        Ok(Target {
            sent: parsed.as_str().to_owned(),
            signed,
            name,
            credentials,
        })
    }
}

/// Why a probe got no diagnosis.
#[derive(Debug)]
enum Unanswered {
    Unreachable(String),
    Status(u16, Option<String>),
    NotAuthentic,
}

impl Unanswered {
    fn into_check(self, name: String) -> Check {
        match self {
            Unanswered::Unreachable(e) => Check::fail(
                name,
                format!("cannot reach it: {e}"),
                "check that the server runs (or use `doctor --serve`) and that the URL's host resolves to whatever sits in front of it",
            ),
            Unanswered::Status(401, _) => Check::fail(
                name,
                "answered 401: HTTP Basic credentials missing or wrong",
                "put server.basic_auth's user and password in the URL (https://user:password@host/...), as Twilio needs them",
            ),
            Unanswered::Status(403, _) => Check::fail(
                name,
                "answered 403 without a diagnosis: the server there holds none of this configuration's auth tokens, its clock is more than 5 minutes off, it is older than this doctor, or a proxy or firewall in front answers 403",
                "give that server the same twilio.auth_tokens as this configuration, and check what sits in front of it",
            ),
            Unanswered::Status(404, _) => Check::fail(
                name,
                "answered 404: nothing serves this path there",
                "make the proxy pass the path unchanged, or correct the path in Twilio (the routes are /twilio/messages, /twilio/fallback and /twilio/status)",
            ),
            Unanswered::Status(status @ 300..=399, location) => Check::fail(
                name,
                format!(
                    "answered {status}, a redirect to {}: Twilio's request would not arrive",
                    location.unwrap_or_else(|| "nowhere".into())
                ),
                "put the final URL in Twilio (often https:// instead of http://, or a missing or extra trailing slash)",
            ),
            Unanswered::Status(status, _) => Check::fail(
                name,
                format!("answered {status} without a diagnosis"),
                "check that twilio-receiver (this version or later) answers at this URL, and its log",
            ),
            Unanswered::NotAuthentic => Check::fail(
                name,
                "answered 200, but not as twilio-receiver answers a probe: something else serves this URL",
                "point the URL (or the proxy in front) at twilio-receiver",
            ),
        }
    }
}

async fn send_probe(
    http: &reqwest::Client,
    token: &SecretString,
    account: &str,
    target: &Target,
) -> Result<Answer, Unanswered> {
    use secrecy::ExposeSecret;
    let url = &target.sent;
    let mut params = vec![("Body", "twilio-receiver doctor probe")];
    if !account.is_empty() {
        params.push(("AccountSid", account));
    }
    let body = serde_urlencoded::to_string(&params).expect("strings encode");
    let content_type = "application/x-www-form-urlencoded";
    let signature = twilio::verify::sign(
        token.expose_secret().as_bytes(),
        url,
        Some(content_type),
        body.as_bytes(),
    )
    .expect("a form body signs");
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let probe_header = probe::header(token, chrono::Utc::now().timestamp(), &nonce);
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header("x-twilio-signature", signature)
        .header(probe::HEADER, probe_header)
        .body(body);
    if let Some((user, password)) = &target.credentials {
        request = request.basic_auth(user, password.as_ref());
    }
    let response = request
        .send()
        .await
        .map_err(|e| Unanswered::Unreachable(crate::rest::describe(&e)))?;
    let status = response.status().as_u16();
    let mac = response
        .headers()
        .get(probe::ANSWER_MAC_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != 200 {
        return Err(Unanswered::Status(status, location));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| Unanswered::Unreachable(crate::rest::describe(&e)))?;
    match mac {
        Some(mac) if probe::answer_is_authentic(token, &nonce, &body, &mac) => {
            serde_json::from_slice(&body).map_err(|_| Unanswered::NotAuthentic)
        }
        _ => Err(Unanswered::NotAuthentic),
    }
}

/// Percent-decodes a URL's user or password. Through the form decoder, with `+` escaped
/// first: in userinfo a `+` is itself, not a space.
fn percent_decode(s: &str) -> String {
    let s = s.replace('+', "%2B");
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The URL without `user:password@`.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{tail}")
}

/// A URL's pieces as a signature sees them: nothing decoded or lower-cased.
#[derive(Debug, PartialEq, Eq)]
struct Pieces<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

fn pieces(url: &str) -> Option<Pieces<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let rest = rest.split('#').next().unwrap_or(rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    Some(Pieces {
        scheme,
        host,
        port,
        path,
        query,
    })
}

fn default_port(scheme: &str) -> &'static str {
    if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    }
}

/// The verdict on a probe's answer: pass when the signature verified; otherwise each way the
/// URL the server reconstructed differs from Twilio's, and the setting that fixes it.
fn judge(name: &str, twilio_url: &str, answer: &Answer) -> Check {
    if answer.signature.starts_with("not checked") {
        return Check::warn(
            name,
            format!(
                "the server reconstructed {} but does not check signatures: anyone can post to it",
                answer.url
            ),
            "set twilio.verify_signatures = true",
        );
    }
    if answer.signature == "valid" {
        let detail = if answer.url == twilio_url {
            "the server reconstructs Twilio's URL exactly and the signature verifies".to_owned()
        } else {
            format!(
                "the signature verifies (the server reconstructed {}, which differs only in the port Twilio may drop)",
                answer.url
            )
        };
        return Check::pass(name, detail);
    }
    let (Some(want), Some(got)) = (pieces(twilio_url), pieces(&answer.url)) else {
        return Check::fail(
            name,
            format!("the server reconstructed {}", answer.url),
            "set server.public_url to the scheme, host and path prefix of the URL in Twilio",
        );
    };
    let mut differences = Vec::new();
    if want.scheme != got.scheme {
        differences.push(format!(
            "scheme: Twilio signs {}, the server saw {}",
            want.scheme, got.scheme
        ));
    }
    if want.host != got.host {
        let how = if want.host.eq_ignore_ascii_case(got.host) {
            " (only the case differs, and signatures keep it)"
        } else {
            ""
        };
        differences.push(format!(
            "host: Twilio signs {}, the server saw {}{how}",
            want.host, got.host
        ));
    }
    let port = |p: &Pieces<'_>| p.port.unwrap_or(default_port(p.scheme)).to_owned();
    if want.port != got.port && (want.scheme != got.scheme || port(&want) != port(&got)) {
        let show = |p: &Pieces<'_>| p.port.map_or_else(|| "none".to_owned(), |p| p.to_owned());
        differences.push(format!(
            "port: Twilio signs {}, the server saw {}",
            show(&want),
            show(&got)
        ));
    }
    let prefix_only =
        want.path != got.path && (want.path.ends_with(got.path) || got.path.ends_with(want.path));
    if want.path != got.path {
        differences.push(if want.path.ends_with(got.path) {
            format!(
                "path prefix: Twilio calls {}, the server saw {} (the prefix {} is stripped on the way)",
                want.path,
                got.path,
                &want.path[..want.path.len() - got.path.len()]
            )
        } else if got.path.ends_with(want.path) {
            format!(
                "path prefix: the server added {} to the path Twilio calls",
                &got.path[..got.path.len() - want.path.len()]
            )
        } else {
            format!("path: Twilio calls {}, the server saw {}", want.path, got.path)
        });
    }
    if want.query != got.query {
        differences.push(
            "query: the query string the server saw is not the one Twilio signs, byte for byte"
                .to_owned(),
        );
    }
    if differences.is_empty() {
        return Check::fail(
            name,
            format!(
                "the server reconstructs Twilio's URL exactly, but the signature does not verify: {}",
                answer.signature
            ),
            "check that the server and this configuration hold the same twilio.auth_tokens",
        );
    }
    let fix = fix_for(
        twilio_url,
        answer,
        want.query != got.query,
        prefix_only || want.path == got.path,
    );
    Check::fail(
        name,
        format!(
            "the server reconstructed {}; {}",
            answer.url,
            differences.join("; ")
        ),
        fix,
    )
}

fn fix_for(twilio_url: &str, answer: &Answer, query_differs: bool, path_ok: bool) -> String {
    if query_differs {
        return "make the proxy pass the request target unchanged (no re-encoding, reordering or dropping of the query string); no setting can repair it".into();
    }
    // The base is Twilio's URL before the path and query the server received.
    let base = twilio_url
        .strip_suffix(answer.received_path.as_str())
        .filter(|_| path_ok);
    let Some(base) = base else {
        return "make the proxy pass the path unchanged, or correct the URL in Twilio".into();
    };
    let mut fix = format!("set server.public_url = \"{base}\"");
    match (answer.base.as_str(), &answer.if_forwarded) {
        ("server.public_url", _) => fix.push_str(" (it is set, to something else)"),
        ("forwarded headers", _) => fix.push_str(
            " (it wins over the proxy's X-Forwarded-* headers, which give the URL above)",
        ),
        (_, Some(forwarded)) if forwarded == twilio_url => fix.push_str(
            ", or server.trust_forwarded_headers = true: the proxy's forwarding headers give exactly Twilio's URL",
        ),
        _ => {}
    }
    fix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::Verdict;

    fn answer(url: &str, received_path: &str, base: &str, if_forwarded: Option<&str>) -> Answer {
        Answer {
            url: url.into(),
            signature: "signature does not match".into(),
            base: base.into(),
            received_path: received_path.into(),
            if_forwarded: if_forwarded.map(Into::into),
        }
    }

    const TWILIO: &str = "https://hooks.example.com/receiver/twilio/messages?tenant=a";

    #[test]
    fn a_valid_signature_passes_even_when_only_a_default_port_differs() {
        let mut a = answer(
            "https://hooks.example.com:443/receiver/twilio/messages?tenant=a",
            "/",
            "Host header",
            None,
        );
        a.signature = "valid".into();
        assert_eq!(judge("w", TWILIO, &a).verdict, Verdict::Pass);
    }

    #[test]
    fn a_server_that_checks_no_signatures_is_a_warning() {
        let mut a = answer(TWILIO, "/", "server.public_url", None);
        a.signature = "not checked (twilio.verify_signatures = false)".into();
        let check = judge("w", TWILIO, &a);
        assert_eq!(check.verdict, Verdict::Warn);
        assert_eq!(
            check.fix.as_deref(),
            Some("set twilio.verify_signatures = true")
        );
    }

    #[test]
    fn a_tls_terminating_proxy_is_named_with_both_fixes() {
        let a = answer(
            "http://10.0.0.5:8080/twilio/messages?tenant=a",
            "/twilio/messages?tenant=a",
            "Host header",
            Some("https://hooks.example.com/receiver/twilio/messages?tenant=a"),
        );
        let check = judge("w", TWILIO, &a);
        assert_eq!(check.verdict, Verdict::Fail);
        for part in [
            "scheme: Twilio signs https, the server saw http",
            "host: Twilio signs hooks.example.com, the server saw 10.0.0.5",
            "port: Twilio signs none, the server saw 8080",
            "path prefix: Twilio calls /receiver/twilio/messages, the server saw /twilio/messages (the prefix /receiver is stripped on the way)",
        ] {
            assert!(
                check.detail.contains(part),
                "{part:?} not in {:?}",
                check.detail
            );
        }
        assert!(!check.detail.contains("query"), "{}", check.detail);
        assert_eq!(
            check.fix.as_deref(),
            Some(
                "set server.public_url = \"https://hooks.example.com/receiver\", or server.trust_forwarded_headers = true: the proxy's forwarding headers give exactly Twilio's URL"
            )
        );
    }

    #[test]
    fn a_changed_query_cannot_be_fixed_by_a_setting() {
        let a = answer(
            "https://hooks.example.com/receiver/twilio/messages?tenant=b",
            "/receiver/twilio/messages?tenant=b",
            "server.public_url",
            None,
        );
        let check = judge("w", TWILIO, &a);
        assert!(check.detail.contains("query:"), "{}", check.detail);
        assert!(
            !check.detail.contains("host:") && !check.detail.contains("path"),
            "{}",
            check.detail
        );
        assert!(
            check
                .fix
                .unwrap()
                .starts_with("make the proxy pass the request target unchanged")
        );
    }

    #[test]
    fn host_case_and_explicit_ports_are_differences() {
        let a = answer(
            "https://Hooks.example.com:8443/receiver/twilio/messages?tenant=a",
            "/twilio/messages?tenant=a",
            "server.public_url",
            None,
        );
        let check = judge("w", TWILIO, &a);
        assert!(
            check.detail.contains("only the case differs"),
            "{}",
            check.detail
        );
        assert!(
            check
                .detail
                .contains("port: Twilio signs none, the server saw 8443"),
            "{}",
            check.detail
        );
        assert!(
            check
                .fix
                .unwrap()
                .ends_with("(it is set, to something else)")
        );
    }

    #[test]
    fn the_filesystem_of_a_path_comes_from_its_longest_mount_point() {
        if Path::new("/proc/self/mountinfo").exists() {
            assert_eq!(
                filesystem_of(Path::new("/proc/self")).as_deref(),
                Some("proc")
            );
        }
    }

    #[test]
    fn a_target_is_signed_without_credentials_and_fragment_and_named_masked() {
        let t = Target::of(" https://u:p%40ss@Hooks.example.com:443/twilio/messages?a=%27#rc=3 ")
            .unwrap();
        assert_eq!(
            t.signed,
            "https://Hooks.example.com:443/twilio/messages?a=%27"
        );
        assert_eq!(t.sent, "https://hooks.example.com/twilio/messages?a=%27");
        assert_eq!(
            t.name,
            "webhook https://***@Hooks.example.com:443/twilio/messages?a=%27"
        );
        assert_eq!(t.credentials, Some(("u".into(), Some("p@ss".into()))));
        let plus = Target::of("https://u:a+b%20c@h.example/x").unwrap();
        assert_eq!(plus.credentials, Some(("u".into(), Some("a+b c".into()))));
        // A password with an unencoded `#` or `/` does not parse, and is not echoed.
        for bad in ["https://u:p#w@h/x", "https://u:p/w@h/x"] {
            let check = Target::of(bad).unwrap_err();
            assert!(!check.detail.contains("p#w") && !check.detail.contains("p/w"));
        }
        let plain = Target::of("https://h.example/twilio/status#rc=3").unwrap();
        assert_eq!(
            (plain.signed.as_str(), plain.sent.as_str()),
            (
                "https://h.example/twilio/status",
                "https://h.example/twilio/status"
            )
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal("/mnt/a\\040b\\011c\\134d"), "/mnt/a b\tc\\d");
        assert_eq!(unescape_octal("/plain\\x"), "/plain\\x");
    }

    #[test]
    fn urls_are_split_without_decoding() {
        assert_eq!(
            pieces("https://u:p@[::1]:8443/a%2Fb?x=%27#frag"),
            Some(Pieces {
                scheme: "https",
                host: "[::1]",
                port: Some("8443"),
                path: "/a%2Fb",
                query: Some("x=%27"),
            })
        );
        assert_eq!(without_userinfo("https://u:p@h/x?y@z"), "https://h/x?y@z");
        assert_eq!(without_userinfo("https://h/x"), "https://h/x");
    }
}
