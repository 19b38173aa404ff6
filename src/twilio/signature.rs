//! The `X-Twilio-Signature` algorithm (TWILIO.md §1), pure and allocation-light.
//!
//! The signed string is the URL Twilio requested followed by every POST parameter, sorted by
//! name (byte order), each written as `name` then `value` with no separators. A repeated name
//! contributes each *distinct* value once, values sorted (as twilio-python and twilio-node do).
//! The digest is HMAC-SHA1 keyed with an auth token, base64-encoded.
//!
//! Twilio is inconsistent about ports, so, like every official helper library, a request is
//! accepted when the URL as received, the URL with its port removed, or the URL with the
//! scheme's default port added matches.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::borrow::Cow;

type HmacSha1 = Hmac<Sha1>;

/// Why a signature was not accepted. Never carries a token or the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Twilio-Signature header")]
    Missing,
    #[error("X-Twilio-Signature is not valid base64")]
    BadBase64,
    #[error("no auth token is configured")]
    NoTokens,
    #[error("the body is JSON but the URL has no bodySHA256 parameter")]
    BodyHashMissing,
    #[error("bodySHA256 in the URL does not match the SHA-256 of the body")]
    BodyHashMismatch,
    #[error("no candidate URL matched ({candidates} URLs tried with {tokens} tokens)")]
    Mismatch { candidates: usize, tokens: usize },
    #[error(
        "X-Twilio-Webhooks-Signature-Settings names key {0:?}, which is not in twilio.shared_keys"
    )]
    UnknownKey(String),
    #[error("X-Twilio-Webhooks-Signature-Settings names unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
}

impl SignatureError {
    /// A short, stable name for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::BadBase64 => "bad_base64",
            SignatureError::NoTokens => "no_tokens",
            SignatureError::BodyHashMissing => "body_hash_missing",
            SignatureError::BodyHashMismatch => "body_hash_mismatch",
            SignatureError::Mismatch { .. } => "mismatch",
            SignatureError::UnknownKey(_) => "unknown_key",
            SignatureError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
        }
    }
}

/// The parameter part of the string to sign: sorted names, distinct values per name sorted.
pub fn params_to_sign(params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Sort by name first (never by the joined name+value: twilio-go#139), then by value so
    // that repeated names list their values in order; equal pairs are signed once.
    sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(b.1)));
    sorted.dedup();
    let len = sorted.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(len);
    for (k, v) in sorted {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The whole string Twilio signs for `url` and form `params`.
pub fn string_to_sign(url: &str, params: &[(String, String)]) -> String {
    let mut s = url.to_owned();
    s.push_str(&String::from_utf8_lossy(&params_to_sign(params)));
    s
}

/// The HMAC a signature uses: SHA-1 with an Auth Token (the default), or SHA-256 with a
/// shared key named by `X-Twilio-Webhooks-Signature-Settings` (TWILIO.md §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
}

impl Algorithm {
    /// Twilio's name for it (`HMAC_SHA1`, `HMAC_SHA256`), case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "HMAC_SHA1" => Some(Algorithm::Sha1),
            "HMAC_SHA256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    fn mac(self, key: &[u8], parts: [&[u8]; 2]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: [&[u8]; 2]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC accepts keys of any length");
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Algorithm::Sha1 => run::<HmacSha1>(key, parts),
            Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        }
    }
}

/// The signature Twilio would send for `url` and `params` under `token` (HMAC-SHA1).
pub fn compute(token: &[u8], url: &str, params: &[(String, String)]) -> String {
    compute_with(Algorithm::Sha1, token, url, params)
}

/// The signature for `url` and `params` under `key` with `algorithm`.
pub fn compute_with(
    algorithm: Algorithm,
    key: &[u8],
    url: &str,
    params: &[(String, String)],
) -> String {
    BASE64.encode(algorithm.mac(key, [url.as_bytes(), &params_to_sign(params)]))
}

/// Checks `header` (HMAC-SHA1) against every URL candidate and every token.
pub fn verify(
    tokens: &[&[u8]],
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> Result<(), SignatureError> {
    verify_with(Algorithm::Sha1, tokens, url, params, header)
}

/// Checks `header` against every URL candidate and every key, in constant time per try.
pub fn verify_with(
    algorithm: Algorithm,
    keys: &[&[u8]],
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> Result<(), SignatureError> {
    if header.is_empty() {
        return Err(SignatureError::Missing);
    }
    let expected = BASE64
        .decode(header)
        .map_err(|_| SignatureError::BadBase64)?;
    if keys.is_empty() {
        return Err(SignatureError::NoTokens);
    }
    let tail = params_to_sign(params);
    let candidates = url_candidates(url);
    for candidate in &candidates {
        for key in keys {
            let computed = algorithm.mac(key, [candidate.as_bytes(), &tail]);
            // Constant-time comparison; == on the bytes would leak the matching prefix length.
            if constant_time_eq(&computed, &expected) {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch {
        candidates: candidates.len(),
        tokens: keys.len(),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is public (it is the digest size); `subtle` compares the contents in full.
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The URLs a signature may have been computed over (TWILIO.md §1.3): as received, then with
/// the port toggled (removed when present, the scheme's default added when absent). The URL is
/// edited as a string so that nothing else in it (case, encoding, order) changes.
pub fn url_candidates(url: &str) -> Vec<Cow<'_, str>> {
    let mut out = vec![Cow::Borrowed(url)];
    let Some(parts) = split_authority(url) else {
        return out;
    };
    let toggled = match parts.port {
        // ":port" is removed, including a bare ":" with no digits.
        Some(port_start) => format!("{}{}", &url[..port_start - 1], &url[parts.end..]),
        None => {
            let default = if url[..parts.scheme_end].eq_ignore_ascii_case("https") {
                "443"
            } else {
                "80"
            };
            format!("{}:{default}{}", &url[..parts.end], &url[parts.end..])
        }
    };
    out.push(Cow::Owned(toggled));
    out
}

struct Authority {
    /// Byte offset of the end of the scheme (the `:` of `://`).
    scheme_end: usize,
    /// Byte offset of the first port digit, when the authority has a `:port`.
    port: Option<usize>,
    /// Byte offset just past the authority.
    end: usize,
}

fn split_authority(url: &str) -> Option<Authority> {
    let scheme_end = url.find("://")?;
    let start = scheme_end + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    // Userinfo may itself contain ':' (user:pass@), so look only after the last '@'.
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    // An IPv6 literal holds colons of its own; its port follows the closing bracket.
    let search_from = if host_port.starts_with('[') {
        host_port.find(']')?
    } else {
        0
    };
    let port = host_port[search_from..]
        .rfind(':')
        .map(|i| start + host_start + search_from + i + 1)
        .filter(|&p| url[p..end].bytes().all(|b| b.is_ascii_digit()));
    Some(Authority {
        scheme_end,
        port,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Twilio's published example, shared by every official helper library.
    fn example() -> (String, Vec<(String, String)>) {
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2".to_owned(),
            p(&[
                ("CallSid", "CA1234567890ABCDE"),
                ("Caller", "+14158675309"),
                ("Digits", "1234"),
                ("From", "+14158675309"),
                ("To", "+18005551212"),
            ]),
        )
    }

    #[test]
    fn twilio_published_example_has_the_published_signature() {
        let (url, params) = example();
        assert_eq!(
            string_to_sign(&url, &params),
            "https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212"
        );
        assert_eq!(
            compute(b"12345", &url, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            verify(&[b"12345"], &url, &params, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            Ok(())
        );
    }

    #[test]
    fn every_kind_of_tampering_is_rejected() {
        let (url, params) = example();
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let mismatch = Err(SignatureError::Mismatch {
            candidates: 2,
            tokens: 1,
        });
        // A changed value, an added parameter, a removed parameter.
        let mut changed = params.clone();
        changed[2].1 = "1235".into();
        assert_eq!(verify(&[b"12345"], &url, &changed, sig), mismatch);
        let mut added = params.clone();
        added.push(("Extra".into(), String::new()));
        assert_eq!(verify(&[b"12345"], &url, &added, sig), mismatch);
        assert_eq!(verify(&[b"12345"], &url, &params[1..], sig), mismatch);
        // A changed URL: path, query, host case, scheme.
        for other in [
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            "https://mycompany.com/myapp.php?bar=2&foo=1",
            "https://mycompany.com/other.php?foo=1&bar=2",
            "https://MyCompany.com/myapp.php?foo=1&bar=2",
            "http://mycompany.com/myapp.php?foo=1&bar=2",
        ] {
            assert_eq!(
                verify(&[b"12345"], other, &params, sig),
                mismatch,
                "{other}"
            );
        }
        // The wrong token, a changed signature, bad base64, nothing at all.
        assert_eq!(verify(&[b"54321"], &url, &params, sig), mismatch);
        assert_eq!(
            verify(&[b"12345"], &url, &params, "RSOYDt4T1cUTdK1PDd93/VVr8B8"),
            Err(SignatureError::BadBase64)
        );
        assert_eq!(
            verify(&[b"12345"], &url, &params, "SSOYDt4T1cUTdK1PDd93/VVr8B8="),
            mismatch
        );
        assert_eq!(
            verify(&[b"12345"], &url, &params, "not base64!"),
            Err(SignatureError::BadBase64)
        );
        assert_eq!(
            verify(&[b"12345"], &url, &params, ""),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(&[], &url, &params, sig),
            Err(SignatureError::NoTokens)
        );
    }

    #[test]
    fn any_of_several_tokens_is_accepted() {
        let (url, params) = example();
        let sig = compute(b"12345", &url, &params);
        assert_eq!(verify(&[b"old", b"12345"], &url, &params, &sig), Ok(()));
        assert!(verify(&[b"old", b"new"], &url, &params, &sig).is_err());
    }

    #[test]
    fn port_variants_match_either_way() {
        let params = p(&[("MessageSid", "SM1")]);
        let cases = [
            // (URL Twilio signed, URL we reconstructed)
            ("https://h.example/t", "https://h.example:443/t"),
            ("https://h.example:443/t", "https://h.example/t"),
            ("https://h.example/t", "https://h.example:8443/t"),
            ("http://h.example/t?x=1", "http://h.example:80/t?x=1"),
            ("http://h.example:80/t", "http://h.example/t"),
        ];
        for (signed, received) in cases {
            let sig = compute(b"tok", signed, &params);
            assert_eq!(
                verify(&[b"tok"], received, &params, &sig),
                Ok(()),
                "{signed} vs {received}"
            );
        }
        // A different non-default port is not a variant of another one.
        let sig = compute(b"tok", "https://h.example:8443/t", &params);
        assert!(verify(&[b"tok"], "https://h.example:9443/t", &params, &sig).is_err());
    }

    #[test]
    fn url_candidates_edit_only_the_port() {
        let c = |u| {
            url_candidates(u)
                .into_iter()
                .map(Cow::into_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            c("https://H.example/a//b?q=%27x'#f"),
            [
                "https://H.example/a//b?q=%27x'#f",
                "https://H.example:443/a//b?q=%27x'#f"
            ]
        );
        assert_eq!(
            c("HTTPS://h.example"),
            ["HTTPS://h.example", "HTTPS://h.example:443"]
        );
        assert_eq!(
            c("http://u:p@h.example:81/x"),
            ["http://u:p@h.example:81/x", "http://u:p@h.example/x"]
        );
        assert_eq!(
            c("http://u:p@h.example/x"),
            ["http://u:p@h.example/x", "http://u:p@h.example:80/x"]
        );
        assert_eq!(
            c("http://[::1]:8080/x"),
            ["http://[::1]:8080/x", "http://[::1]/x"]
        );
        assert_eq!(c("http://[::1]/x"), ["http://[::1]/x", "http://[::1]:80/x"]);
        assert_eq!(c("not a url"), ["not a url"]);
    }

    #[test]
    fn the_query_string_is_signed_byte_for_byte() {
        let params = p(&[("Body", "hi")]);
        let url = "https://h.example/t?name=O'Brien+x&enc=%27%3A";
        let sig = compute(b"tok", url, &params);
        assert_eq!(verify(&[b"tok"], url, &params, &sig), Ok(()));
        // The same query re-encoded the way WHATWG URL parsers do is a different URL.
        let reencoded = "https://h.example/t?name=O%27Brien+x&enc=%27%3A";
        assert!(verify(&[b"tok"], reencoded, &params, &sig).is_err());
    }

    #[test]
    fn names_sort_by_bytes_not_by_joined_strings() {
        // Sorting "name+value" strings would put ReasonConferenceEndedtest first.
        let params = p(&[
            ("ReasonParticipant", "a"),
            ("ReasonConferenceEnded", "test"),
        ]);
        assert_eq!(
            string_to_sign("u", &params),
            "uReasonConferenceEndedtestReasonParticipanta"
        );
        // Case-sensitive byte order: upper case first.
        let params = p(&[("callSid", "3"), ("CallSid", "2"), ("CALLSID", "1")]);
        assert_eq!(string_to_sign("", &params), "CALLSID1CallSid2callSid3");
    }

    #[test]
    fn repeated_names_list_distinct_values_in_order() {
        let params = p(&[("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]);
        assert_eq!(string_to_sign("", &params), "Digits1234Digits5678");
    }

    #[test]
    fn empty_values_still_count() {
        let with = p(&[("ToCity", ""), ("To", "+1")]);
        assert_eq!(string_to_sign("", &with), "To+1ToCity");
        let sig = compute(b"tok", "u", &with);
        assert!(verify(&[b"tok"], "u", &with[1..], &sig).is_err());
    }

    #[test]
    fn non_ascii_values_are_signed_as_utf8() {
        let params = p(&[("Body", "¡Hola, señor! 👋 日本")]);
        let sig = compute("tøken".as_bytes(), "https://h.example/ñ", &params);
        assert_eq!(
            verify(&["tøken".as_bytes()], "https://h.example/ñ", &params, &sig),
            Ok(())
        );
    }
}
