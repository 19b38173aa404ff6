//! Request verification: from the raw parts of an HTTP request to verified [`Params`].
//!
//! The server's extractor and the `verify` command both call [`Verifier::verify`], so what
//! the command says is exactly what the server would do with the same URL and body.

use super::{
    form,
    params::Params,
    signature::{self, Algorithm, SignatureError},
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The raw parts of a request that verification needs.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// GET webhooks carry their parameters in the query string and sign the URL alone.
    pub is_get: bool,
    /// The full URL Twilio requested (scheme, host, port, raw path and query).
    pub url: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// The `X-Twilio-Signature` header; `None` when absent.
    pub signature: Option<&'a str>,
    /// `X-Twilio-Webhooks-Signature-Settings` (`key=<id>,algorithm=HMAC_SHA256`): present when
    /// Twilio signed with a shared key instead of the Auth Token.
    pub signature_settings: Option<&'a str>,
}

/// Why a request was turned away before any handler saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unsupported content type (expected a form or JSON)")]
    UnsupportedMediaType,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("the JSON body is not an object")]
    BadJson,
}

/// How a POST body is encoded, from its `Content-Type` (parameters such as charset ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
}

impl BodyKind {
    pub fn from_content_type(content_type: Option<&str>) -> Option<Self> {
        let media_type = content_type?.split(';').next()?.trim();
        if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Some(BodyKind::Form)
        } else if media_type.eq_ignore_ascii_case("application/json") {
            Some(BodyKind::Json)
        } else {
            None
        }
    }
}

/// The tokens requests are checked against, and whether checking is on at all.
#[derive(Clone)]
pub struct Verifier {
    tokens: Vec<SecretString>,
    /// Per-account tokens, keyed by lower-cased AccountSid (the config crate lower-cases keys).
    accounts: HashMap<String, Vec<SecretString>>,
    /// Shared-key secrets by lower-cased key id (`twilio.shared_keys`).
    shared_keys: HashMap<String, SecretString>,
    enforce: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("tokens", &self.tokens.len())
            .field("accounts", &self.accounts.keys().collect::<Vec<_>>())
            .field("enforce", &self.enforce)
            .finish()
    }
}

impl Verifier {
    pub fn new(
        tokens: Vec<SecretString>,
        accounts: HashMap<String, Vec<SecretString>>,
        enforce: bool,
    ) -> Self {
        let accounts = accounts
            .into_iter()
            .map(|(sid, tokens)| (sid.to_ascii_lowercase(), tokens))
            .collect();
        Verifier {
            tokens,
            accounts,
            shared_keys: HashMap::new(),
            enforce,
        }
    }

    /// Turns checking on whatever the settings say (the `verify` command always checks).
    pub fn enforce(&mut self) {
        self.enforce = true;
    }

    /// Adds shared-key secrets (`twilio.shared_keys`: key id -> secret).
    pub fn with_shared_keys(mut self, keys: HashMap<String, SecretString>) -> Self {
        self.shared_keys = keys
            .into_iter()
            .map(|(id, secret)| (id.to_ascii_lowercase(), secret))
            .collect();
        self
    }

    /// The algorithm and keys a request is checked with: the shared key and algorithm that
    /// `X-Twilio-Webhooks-Signature-Settings` names, else the Auth Tokens with HMAC-SHA1.
    fn keys_for(
        &self,
        settings: Option<&str>,
        account_sid: Option<&str>,
    ) -> Result<(Algorithm, std::borrow::Cow<'_, [SecretString]>), SignatureError> {
        let Some(settings) = settings.filter(|s| !s.trim().is_empty()) else {
            return Ok((Algorithm::Sha1, self.tokens_for(account_sid).into()));
        };
        let field = |name: &str| {
            settings.split(',').find_map(|part| {
                let (k, v) = part.split_once('=')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let algorithm_name = field("algorithm").unwrap_or_else(|| "HMAC_SHA1".to_owned());
        let algorithm = Algorithm::from_name(&algorithm_name)
            .ok_or(SignatureError::UnsupportedAlgorithm(algorithm_name))?;
        let key_id = field("key").unwrap_or_default();
        let secret = self
            .shared_keys
            .get(&key_id.to_ascii_lowercase())
            .ok_or(SignatureError::UnknownKey(key_id))?;
        Ok((algorithm, vec![secret.clone()].into()))
    }

    /// Whether signatures are checked (`twilio.verify_signatures`).
    pub fn enforces(&self) -> bool {
        self.enforce
    }

    /// The tokens for a request from `account_sid`: that account's own tokens when configured
    /// (sub-accounts sign with their own token), otherwise the global list.
    pub fn tokens_for(&self, account_sid: Option<&str>) -> &[SecretString] {
        account_sid
            .and_then(|sid| self.accounts.get(&sid.to_ascii_lowercase()))
            .unwrap_or(&self.tokens)
    }

    /// Every configured auth token: the global list, then each account's own.
    pub fn all_tokens(&self) -> impl Iterator<Item = &SecretString> {
        self.tokens.iter().chain(self.accounts.values().flatten())
    }

    /// Checks the signature and returns the parameters. With verification disabled the
    /// parameters are returned unchecked.
    pub fn verify(&self, req: &RawRequest<'_>) -> Result<Params, Rejection> {
        let kind = (!req.is_get)
            .then(|| BodyKind::from_content_type(req.content_type))
            .map(|kind| kind.ok_or(Rejection::UnsupportedMediaType))
            .transpose()?;
        if self.enforce && req.signature.is_none_or(str::is_empty) {
            return Err(SignatureError::Missing.into());
        }
        // A JSON body that is not an object still has its signature checked first, so an
        // unsigned request is a 403 whatever its body.
        let (pairs, json_ok) = match kind {
            None => (query_pairs(req.url), true),
            Some(BodyKind::Form) => (form::pairs(req.body), true),
            Some(BodyKind::Json) => {
                if self.enforce {
                    check_body_hash(req.url, req.body)?;
                }
                json_pairs(req.body).map_or((Vec::new(), false), |p| (p, true))
            }
        };
        if self.enforce {
            // A form POST signs its parameters; GET and JSON requests sign the URL alone.
            let signed: &[(String, String)] = if kind == Some(BodyKind::Form) {
                &pairs
            } else {
                &[]
            };
            let account = pairs
                .iter()
                .find(|(k, _)| k == "AccountSid")
                .map(|(_, v)| v.as_str());
            let (algorithm, keys) = self.keys_for(req.signature_settings, account)?;
            let keys: Vec<&[u8]> = keys.iter().map(|t| t.expose_secret().as_bytes()).collect();
            signature::verify_with(
                algorithm,
                &keys,
                req.url,
                signed,
                req.signature.unwrap_or_default(),
            )?;
        }
        if !json_ok {
            return Err(Rejection::BadJson);
        }
        Ok(Params::new(pairs))
    }
}

/// Why `sign` cannot produce a signature for a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("unsupported content type (expected a form or JSON)")]
    UnsupportedMediaType,
    #[error("a JSON body is signed with its hash in the URL; use this URL: {url}")]
    NeedsBodyHash { url: String },
    #[error("bodySHA256 in the URL does not match the body; it should be {expected}")]
    BodyHashMismatch { expected: String },
}

/// The `X-Twilio-Signature` Twilio would send for this URL, content type and body.
pub fn sign(
    token: &[u8],
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<String, SignError> {
    match BodyKind::from_content_type(content_type) {
        None => Err(SignError::UnsupportedMediaType),
        Some(BodyKind::Form) => Ok(signature::compute(token, url, &form::pairs(body))),
        Some(BodyKind::Json) => match check_body_hash(url, body) {
            Ok(()) => Ok(signature::compute(token, url, &[])),
            Err(SignatureError::BodyHashMismatch) => Err(SignError::BodyHashMismatch {
                expected: sha256_hex(body),
            }),
            Err(_) => {
                // The hash goes at the end of the query, before any `#fragment`.
                let (base, fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}bodySHA256={}{fragment}", sha256_hex(body));
                Err(SignError::NeedsBodyHash { url })
            }
        },
    }
}

/// JSON bodies are signed through the URL, which must carry the hex SHA-256 of the raw body.
fn check_body_hash(url: &str, body: &[u8]) -> Result<(), SignatureError> {
    let expected = query_pairs(url)
        .into_iter()
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v)
        .ok_or(SignatureError::BodyHashMissing)?;
    if expected == sha256_hex(body) {
        Ok(())
    } else {
        Err(SignatureError::BodyHashMismatch)
    }
}

fn sha256_hex(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// Lowercase hex, as Twilio writes `bodySHA256` (and as the media archive records digests).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The query string's pairs, parsed as a form body is (blanks and repeats kept, invalid
/// UTF-8 decoded lossily); the fragment is never part of it.
fn query_pairs(url: &str) -> Vec<(String, String)> {
    let without_fragment = url.split('#').next().unwrap_or_default();
    without_fragment
        .split_once('?')
        .map_or_else(Vec::new, |(_, query)| form::pairs(query.as_bytes()))
}

/// A JSON object's members as pairs: strings as they are, other values as JSON text.
fn json_pairs(body: &[u8]) -> Result<Vec<(String, String)>, Rejection> {
    let serde_json::Value::Object(map) =
        serde_json::from_slice(body).map_err(|_| Rejection::BadJson)?
    else {
        return Err(Rejection::BadJson);
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json; charset=utf-8");

    fn verifier(tokens: &[&str]) -> Verifier {
        Verifier::new(
            tokens.iter().map(|t| SecretString::from(*t)).collect(),
            HashMap::new(),
            true,
        )
    }

    fn post<'a>(url: &'a str, ct: Option<&'a str>, body: &'a [u8], sig: &'a str) -> RawRequest<'a> {
        RawRequest {
            is_get: false,
            url,
            content_type: ct,
            body,
            signature: Some(sig),
            signature_settings: None,
        }
    }

    #[test]
    fn a_signed_form_yields_its_params_in_order_with_blanks() {
        let body = b"To=%2B1&ToCity=&Body=a+b%26c&To=%2B2";
        let url = "https://h.example/twilio/messages";
        let sig = sign(b"tok", url, FORM, body).unwrap();
        let params = verifier(&["tok"])
            .verify(&post(url, FORM, body, &sig))
            .unwrap();
        assert_eq!(params.get("Body"), Some("a b&c"));
        assert_eq!(params.get("ToCity"), Some(""));
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn missing_and_empty_headers_are_missing_signatures() {
        let v = verifier(&["tok"]);
        let mut req = post("https://h/x", FORM, b"A=1", "");
        assert_eq!(v.verify(&req), Err(SignatureError::Missing.into()));
        req.signature = None;
        assert_eq!(v.verify(&req), Err(SignatureError::Missing.into()));
    }

    #[test]
    fn content_types_other_than_form_or_json_are_unsupported() {
        let v = verifier(&["tok"]);
        for ct in [
            None,
            Some("text/plain"),
            Some("multipart/form-data; boundary=x"),
        ] {
            assert_eq!(
                v.verify(&post("https://h/x", ct, b"A=1", "sig")),
                Err(Rejection::UnsupportedMediaType)
            );
        }
        assert_eq!(
            BodyKind::from_content_type(Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8")),
            Some(BodyKind::Form)
        );
    }

    #[test]
    fn get_requests_sign_the_url_alone_and_read_params_from_the_query() {
        let url = "https://h.example/twilio/messages?MessageSid=SM1&Body=hi+there&To=";
        let sig = signature::compute(b"tok", url, &[]);
        let req = RawRequest {
            is_get: true,
            url,
            content_type: None,
            body: b"",
            signature: Some(&sig),
            signature_settings: None,
        };
        let params = verifier(&["tok"]).verify(&req).unwrap();
        assert_eq!(params.get("Body"), Some("hi there"));
        assert_eq!(params.get("To"), Some(""));
    }

    #[test]
    fn json_bodies_need_a_matching_body_hash() {
        let body = br#"{"MessageSid":"SM1","NumMedia":0,"Body":"hi"}"#;
        let url = "https://h.example/twilio/messages";
        let Err(SignError::NeedsBodyHash { url: hashed }) = sign(b"tok", url, JSON, body) else {
            panic!("a JSON body without bodySHA256 must not be signed");
        };
        assert!(hashed.starts_with("https://h.example/twilio/messages?bodySHA256="));
        let sig = sign(b"tok", &hashed, JSON, body).unwrap();
        let v = verifier(&["tok"]);
        let params = v.verify(&post(&hashed, JSON, body, &sig)).unwrap();
        assert_eq!(params.get("NumMedia"), Some("0"));

        // A forged body under a genuinely signed URL fails the hash check.
        let forged = br#"{"MessageSid":"SM2"}"#;
        assert_eq!(
            v.verify(&post(&hashed, JSON, forged, &sig)),
            Err(SignatureError::BodyHashMismatch.into())
        );
        // No hash in the URL at all.
        let sig = signature::compute(b"tok", url, &[]);
        assert_eq!(
            v.verify(&post(url, JSON, body, &sig)),
            Err(SignatureError::BodyHashMissing.into())
        );
    }

    #[test]
    fn a_json_body_that_is_not_an_object_is_checked_for_a_signature_first() {
        let body = b"[1, 2]";
        let url = format!("https://h/x?bodySHA256={}", sha256_hex(body));
        let v = verifier(&["tok"]);
        assert_eq!(
            v.verify(&post(&url, JSON, body, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            Err(SignatureError::Mismatch {
                candidates: 2,
                tokens: 1
            }
            .into())
        );
        let sig = signature::compute(b"tok", &url, &[]);
        assert_eq!(
            v.verify(&post(&url, JSON, body, &sig)),
            Err(Rejection::BadJson)
        );
    }

    #[test]
    fn sign_and_verify_agree_on_a_stale_body_hash() {
        let body = br#"{"A":"1"}"#;
        let stale = format!("https://h/x?bodySHA256={}", sha256_hex(b"other"));
        assert!(matches!(
            sign(b"tok", &stale, JSON, body),
            Err(SignError::BodyHashMismatch { .. })
        ));
        let twice = format!("{stale}&bodySHA256={}", sha256_hex(body));
        assert!(sign(b"tok", &twice, JSON, body).is_err());
    }

    #[test]
    fn shared_keys_sign_with_hmac_sha256_and_unknown_keys_or_algorithms_are_refused() {
        let url = "https://h/x";
        let body = b"MessageSid=SM1&AccountSid=AC1";
        let pairs = form::pairs(body);
        let sig = signature::compute_with(Algorithm::Sha256, b"secret", url, &pairs);
        let v = verifier(&["auth-token"]).with_shared_keys(HashMap::from([(
            "Key_1".to_owned(),
            SecretString::from("secret"),
        )]));
        let req = |settings| RawRequest {
            signature_settings: Some(settings),
            ..post(url, FORM, body, &sig)
        };
        assert!(v.verify(&req("key=key_1,algorithm=HMAC_SHA256")).is_ok());
        assert!(v.verify(&req("algorithm=hmac_sha256, key=KEY_1")).is_ok());
        assert_eq!(
            v.verify(&req("key=other,algorithm=HMAC_SHA256")),
            Err(SignatureError::UnknownKey("other".into()).into())
        );
        assert_eq!(
            v.verify(&req("key=key_1,algorithm=HMAC_SHA512")),
            Err(SignatureError::UnsupportedAlgorithm("HMAC_SHA512".into()).into())
        );
        // SHA-1 with the shared key is a different signature.
        assert!(v.verify(&req("key=key_1,algorithm=HMAC_SHA1")).is_err());
        // Without the header the Auth Token and SHA-1 apply.
        assert!(v.verify(&post(url, FORM, body, &sig)).is_err());
    }

    #[test]
    fn per_account_tokens_are_chosen_by_account_sid() {
        let v = Verifier::new(
            vec![SecretString::from("parent")],
            HashMap::from([("ACSUB".to_owned(), vec![SecretString::from("child")])]),
            true,
        );
        let url = "https://h/x";
        let body = b"AccountSid=acsub&MessageSid=SM1";
        let by_child = sign(b"child", url, FORM, body).unwrap();
        let by_parent = sign(b"parent", url, FORM, body).unwrap();
        assert!(v.verify(&post(url, FORM, body, &by_child)).is_ok());
        assert!(v.verify(&post(url, FORM, body, &by_parent)).is_err());
        let other = b"AccountSid=ACOTHER&MessageSid=SM1";
        let by_parent = sign(b"parent", url, FORM, other).unwrap();
        assert!(v.verify(&post(url, FORM, other, &by_parent)).is_ok());
    }

    #[test]
    fn disabled_verification_accepts_unsigned_requests() {
        let v = Verifier::new(vec![], HashMap::new(), false);
        let req = RawRequest {
            is_get: false,
            url: "https://h/x",
            content_type: FORM,
            body: b"MessageSid=SM1",
            signature: None,
            signature_settings: None,
        };
        assert_eq!(v.verify(&req).unwrap().get("MessageSid"), Some("SM1"));
    }

    /// Requests signed by Twilio's official Python helper library (tests/fixtures/).
    #[test]
    fn requests_signed_by_twilio_python_are_accepted_and_tampered_ones_are_not() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/twilio_python_signatures.json"
        ))
        .unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 9);
        for case in cases {
            let field = |k: &str| case[k].as_str().unwrap();
            let name = field("name");
            let settings = case["signature_settings"].as_str();
            let mut v = verifier(&[field("token")]);
            if let Some(settings) = settings {
                let id = settings
                    .split(',')
                    .find_map(|p| p.strip_prefix("key="))
                    .unwrap();
                v = v.with_shared_keys(HashMap::from([(
                    id.to_owned(),
                    SecretString::from(field("token")),
                )]));
            }
            let is_get = name.starts_with("get");
            let req = RawRequest {
                is_get,
                url: field("url"),
                content_type: (!is_get).then(|| field("content_type")),
                body: field("body").as_bytes(),
                signature: Some(field("signature")),
                signature_settings: settings,
            };
            assert!(v.verify(&req).is_ok(), "{name}: {:?}", v.verify(&req));
            // The same signature made by our signer.
            if !is_get && settings.is_none() {
                assert_eq!(
                    sign(
                        field("token").as_bytes(),
                        req.url,
                        req.content_type,
                        req.body
                    )
                    .as_deref(),
                    Ok(field("signature")),
                    "{name}"
                );
            }
            let mut body = field("body").to_owned();
            body.push_str(if field("content_type") == "application/json" {
                " "
            } else {
                "&X=1"
            });
            let tampered = RawRequest {
                body: body.as_bytes(),
                ..req
            };
            if !is_get {
                assert!(
                    v.verify(&tampered).is_err(),
                    "{name}: tampered body accepted"
                );
            }
            let url = format!("{}x", field("url"));
            let other_url = RawRequest { url: &url, ..req };
            assert!(v.verify(&other_url).is_err(), "{name}: other URL accepted");
        }
    }

    #[test]
    fn invalid_utf8_and_bad_escapes_never_fail_parsing() {
        let pairs = form::pairs(b"Body=%FF%FE&Bad=%zz&%=1&&x");
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[0].1, "\u{FFFD}\u{FFFD}");
    }
}

/// Property tests: a request signed by [`sign`] always verifies, with exactly its parameters,
/// and no single change to the URL, a name, a value or the signature does.
#[cfg(test)]
mod props {
    use super::*;
    use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
    use proptest::prelude::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded; charset=UTF-8");
    const TOKEN: &str = "12345";

    fn verifier() -> Verifier {
        Verifier::new(vec![SecretString::from(TOKEN)], HashMap::new(), true)
    }

    /// Any character, with the form syntax, NUL and multi-byte characters made common.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '&', '=', '+', '%', ' ', '\0', '\r', '\n', '#', '?', ':', '/', 'a', 'B', '0', 'ñ',
                '日', '👋', '\u{fffd}',
            ]),
        ]
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(tricky_char(), 0..max).prop_map(String::from_iter)
    }

    /// Names from a small set (so repeats are common) or anything at all.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["Body", "To", "ToCity", "MediaUrl0", ""])
                .prop_map(str::to_owned),
            text(12),
        ]
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((name(), text(16)), 0..8)
    }

    /// URLs shaped like Twilio's (with and without ports, queries, fragments) and any string.
    fn url() -> impl Strategy<Value = String> {
        let shaped = (
            prop::sample::select(vec!["https", "http", "HTTPS"]),
            prop::sample::select(vec!["h.example", "H.Example", "u:p@h.example", "[::1]"]),
            prop::sample::select(vec!["", ":", ":443", ":80", ":8443"]),
            text(12),
            prop::option::of(text(12)),
        )
            .prop_map(|(scheme, host, port, path, query)| {
                let query = query.map(|q| format!("?{q}")).unwrap_or_default();
                format!("{scheme}://{host}{port}/{path}{query}")
            });
        prop_oneof![3 => shaped, 1 => text(24)]
    }

    fn encode(pairs: &[(String, String)]) -> String {
        serde_urlencoded::to_string(pairs).expect("string pairs always encode")
    }

    fn post<'a>(url: &'a str, body: &'a [u8], signature: &'a str) -> RawRequest<'a> {
        RawRequest {
            is_get: false,
            url,
            content_type: FORM,
            body,
            signature: Some(signature),
            signature_settings: None,
        }
    }

    /// Replaces the character at `at` (any character, when `s` is empty: then it is added).
    fn change_char(s: &str, at: prop::sample::Index, c: char) -> String {
        if s.is_empty() {
            return c.to_string();
        }
        let i = at.index(s.chars().count());
        s.chars()
            .enumerate()
            .map(|(j, old)| if j == i { c } else { old })
            .collect()
    }

    proptest! {
        #[test]
        fn a_signed_form_verifies_with_exactly_its_params(url in url(), pairs in pairs()) {
            let body = encode(&pairs);
            let sig = sign(TOKEN.as_bytes(), &url, FORM, body.as_bytes()).unwrap();
            let params = verifier().verify(&post(&url, body.as_bytes(), &sig));
            prop_assert_eq!(params, Ok(Params::new(pairs)));
        }

        #[test]
        fn a_signed_get_verifies_with_exactly_its_query(url in url(), pairs in pairs()) {
            // Twilio appends its parameters to the configured URL's query.
            let base = url.split(['?', '#']).next().unwrap_or_default();
            let url = format!("{base}?{}", encode(&pairs));
            let sig = signature::compute(TOKEN.as_bytes(), &url, &[]);
            let req = RawRequest {
                is_get: true,
                url: &url,
                content_type: None,
                body: b"",
                signature: Some(&sig),
                signature_settings: None,
            };
            prop_assert_eq!(verifier().verify(&req), Ok(Params::new(pairs)));
        }

        /// Replacing one character keeps the URL's length in characters, while the port
        /// variants tried (TWILIO.md §1.3) add or remove at least one: no variant of a changed
        /// URL is the signed URL.
        #[test]
        fn a_changed_url_fails(
            url in url(),
            pairs in pairs(),
            at in any::<prop::sample::Index>(),
            c in tricky_char(),
        ) {
            let changed = change_char(&url, at, c);
            prop_assume!(changed != url);
            let body = encode(&pairs);
            let sig = sign(TOKEN.as_bytes(), &url, FORM, body.as_bytes()).unwrap();
            let result = verifier().verify(&post(&changed, body.as_bytes(), &sig));
            prop_assert!(
                matches!(result, Err(Rejection::Signature(SignatureError::Mismatch { .. }))),
                "{:?} accepted for {:?}: {:?}", changed, url, result
            );
        }

        /// A name or value is changed in its decoded form, then the form is encoded again:
        /// changing the encoded bytes instead could decode to the same pairs (`+` and `%20`,
        /// `%2b` and `%2B`), which is the same request.
        ///
        /// Two changes legitimately keep the signature, both properties of Twilio's scheme
        /// rather than of this code, so they are excluded: the signed string joins names and
        /// values with no separator (`a`+`bc` and `ab`+`c` sign alike), and a repeated name
        /// lists each distinct value once (turning one copy of a repeated pair into another
        /// value the name already has changes nothing signed).
        #[test]
        fn a_changed_name_or_value_fails(
            url in url(),
            pairs in pairs().prop_filter("a pair to change", |p| !p.is_empty()),
            which in any::<prop::sample::Index>(),
            in_value in any::<bool>(),
            at in any::<prop::sample::Index>(),
            c in tricky_char(),
        ) {
            let mut changed = pairs.clone();
            let pair = &mut changed[which.index(pairs.len())];
            let field = if in_value { &mut pair.1 } else { &mut pair.0 };
            *field = change_char(field, at, c);
            prop_assume!(
                signature::params_to_sign(&changed) != signature::params_to_sign(&pairs)
            );
            let sig = sign(TOKEN.as_bytes(), &url, FORM, encode(&pairs).as_bytes()).unwrap();
            let body = encode(&changed);
            let result = verifier().verify(&post(&url, body.as_bytes(), &sig));
            prop_assert!(
                matches!(result, Err(Rejection::Signature(SignatureError::Mismatch { .. }))),
                "{:?} accepted for {:?}: {:?}", changed, pairs, result
            );
        }

        #[test]
        fn a_changed_digest_fails(
            url in url(),
            pairs in pairs(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let body = encode(&pairs);
            let sig = sign(TOKEN.as_bytes(), &url, FORM, body.as_bytes()).unwrap();
            let mut digest = BASE64.decode(&sig).unwrap();
            let i = at.index(digest.len());
            digest[i] ^= flip;
            let forged = BASE64.encode(&digest);
            let result = verifier().verify(&post(&url, body.as_bytes(), &forged));
            prop_assert!(
                matches!(result, Err(Rejection::Signature(SignatureError::Mismatch { .. }))),
                "{:?}", result
            );
        }

        /// Any character of the header changed: bad base64 (including non-zero padding bits)
        /// or another digest, never a pass.
        #[test]
        fn a_changed_header_fails(
            url in url(),
            pairs in pairs(),
            at in any::<prop::sample::Index>(),
            c in prop_oneof![prop::char::range('+', 'z'), tricky_char()],
        ) {
            let body = encode(&pairs);
            let sig = sign(TOKEN.as_bytes(), &url, FORM, body.as_bytes()).unwrap();
            let forged = change_char(&sig, at, c);
            prop_assume!(forged != sig);
            prop_assert!(verifier().verify(&post(&url, body.as_bytes(), &forged)).is_err());
        }

        /// Every pair survives parsing, in order, blanks and repeats included, however the
        /// form was encoded (`+` or `%20`, upper- or lower-case hex, literal or escaped).
        #[test]
        fn form_parsing_keeps_every_pair(pairs in pairs(), styles in prop::collection::vec(0u8..4, 1..8)) {
            prop_assert_eq!(form::pairs(encode(&pairs).as_bytes()), pairs.clone());
            let mut style = styles.iter().cycle();
            let mut escape = |s: &str| -> String {
                s.bytes()
                    .map(|b| match (style.next().unwrap(), b) {
                        (0, b' ') => "+".to_owned(),
                        (1, b) if b.is_ascii_alphanumeric() => char::from(b).to_string(),
                        (2, b) => format!("%{b:02x}"),
                        (_, b) => format!("%{b:02X}"),
                    })
                    .collect()
            };
            let body = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
                .collect::<Vec<_>>()
                .join("&");
            prop_assert_eq!(form::pairs(body.as_bytes()), pairs);
        }

        /// Any bytes at all parse, never panic, and parsing what was parsed, encoded again,
        /// gives the same pairs.
        #[test]
        fn any_bytes_parse_stably(body in prop::collection::vec(any::<u8>(), 0..96)) {
            let pairs = form::pairs(&body);
            prop_assert_eq!(form::pairs(encode(&pairs).as_bytes()), pairs);
        }

        /// Whatever the headers and body, verification answers; it never panics. The signature
        /// here is random text, never computed with the token or the shared key, and the
        /// verifier enforces: every such request is refused, whatever else it is (no signature
        /// at all is refused as missing). What `sign` makes for the same request passes the
        /// signature check.
        #[test]
        fn any_request_is_answered(
            url in url(),
            body in prop::collection::vec(any::<u8>(), 0..64),
            content_type in prop::option::of(prop_oneof![
                Just("application/x-www-form-urlencoded".to_owned()),
                Just("application/json".to_owned()),
                text(24),
            ]),
            signature in prop::option::of(text(32)),
            settings in prop::option::of(text(32)),
            is_get in any::<bool>(),
        ) {
            let req = RawRequest {
                is_get,
                url: &url,
                content_type: content_type.as_deref(),
                body: &body,
                signature: signature.as_deref(),
                signature_settings: settings.as_deref(),
            };
            let v = verifier().with_shared_keys(HashMap::from([(
                "key_1".to_owned(),
                SecretString::from("secret"),
            )]));
            let verified = v.verify(&req);
            prop_assert!(verified.is_err(), "{:?} accepted: {:?}", req, verified);

            let signed = sign(TOKEN.as_bytes(), &url, content_type.as_deref(), &body);
            match (BodyKind::from_content_type(content_type.as_deref()), signed) {
                (None, signed) => {
                    prop_assert_eq!(signed, Err(SignError::UnsupportedMediaType));
                }
                // A JSON body is signed only under a URL carrying its hash.
                (Some(_), Err(e)) => prop_assert!(
                    matches!(e, SignError::NeedsBodyHash { .. } | SignError::BodyHashMismatch { .. }),
                    "{:?}", e
                ),
                // Signed as a POST with the Auth Token: the signature holds (a JSON body that is
                // not an object is still refused, for its body).
                (Some(kind), Ok(sig)) => {
                    let req = RawRequest {
                        is_get: false,
                        signature: Some(&sig),
                        signature_settings: None,
                        ..req
                    };
                    let verified = verifier().verify(&req);
                    prop_assert!(
                        matches!(
                            (&verified, kind),
                            (Ok(_), _) | (Err(Rejection::BadJson), BodyKind::Json)
                        ),
                        "{:?} refused: {:?}", req, verified
                    );
                }
            }
        }
    }
}
