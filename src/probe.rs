//! `doctor`'s probe: a test request, signed as Twilio would sign it, that also proves it comes
//! from `twilio-receiver doctor`. The proof is the `X-Twilio-Receiver-Probe` header: an
//! HMAC-SHA256, keyed with an auth token, over a timestamp and a nonce. Only such a request
//! gets the server's diagnosis (the URL it reconstructed, how, and whether the signature
//! verified), and that answer carries an HMAC of its own, so doctor knows it came from a
//! server holding the same token. A stale, replayed or forged probe gets the bare 403 of a bad
//! signature, which says nothing about hosts or ports.
//!
//! Pure: the caller supplies the clock and the keys.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::{collections::HashMap, sync::Mutex};

/// The request header that makes a request a probe.
pub const HEADER: &str = "x-twilio-receiver-probe";
/// The answer's header: an HMAC over the nonce and the answer's body.
pub const ANSWER_MAC_HEADER: &str = "x-twilio-receiver-probe-mac";
/// How far a probe's timestamp may be from the server's clock, either way, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;
/// Nonces remembered at once. A nonce is only remembered once its MAC verified, so only a
/// holder of the token can fill this; past it, probes are refused until old ones expire.
const MAX_REMEMBERED: usize = 4096;

const REQUEST_CONTEXT: &str = "twilio-receiver probe v1";
const ANSWER_CONTEXT: &str = "twilio-receiver probe answer v1";

/// The header value for a probe sent at `ts` (Unix seconds) with `nonce`.
pub fn header(key: &SecretString, ts: i64, nonce: &str) -> String {
    let mac = request_mac(key, ts, nonce).finalize().into_bytes();
    format!("v1 ts={ts} nonce={nonce} mac={}", BASE64.encode(mac))
}

/// A probe header, parsed but not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ts: i64,
    pub nonce: String,
    mac: Vec<u8>,
}

/// Why a probe header is refused (logged; the client learns nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("malformed probe header")]
    Malformed,
    #[error("probe MAC matches no configured auth token")]
    BadMac,
    #[error("probe timestamp too far from this server's clock")]
    Stale,
    #[error("probe nonce already used")]
    Replayed,
    #[error("too many recent probes")]
    Full,
}

impl Probe {
    pub fn parse(value: &str) -> Result<Probe, ProbeError> {
        let mut fields = value.split_ascii_whitespace();
        if fields.next() != Some("v1") {
            return Err(ProbeError::Malformed);
        }
        let (mut ts, mut nonce, mut mac) = (None, None, None);
        for field in fields {
            match field.split_once('=') {
                Some(("ts", v)) => ts = v.parse::<i64>().ok(),
                Some(("nonce", v)) => nonce = Some(v.to_owned()),
                Some(("mac", v)) => mac = BASE64.decode(v).ok(),
                _ => return Err(ProbeError::Malformed),
            }
        }
        // A nonce of 16 to 64 hex-ish characters: long enough to be unique, short enough to
        // bound what the replay guard keeps.
        let nonce = nonce
            .filter(|n| {
                (16..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .ok_or(ProbeError::Malformed)?;
        Ok(Probe {
            ts: ts.ok_or(ProbeError::Malformed)?,
            nonce,
            mac: mac.ok_or(ProbeError::Malformed)?,
        })
    }

    /// The key (among `keys`) that made this probe's MAC, if its timestamp is within
    /// [`MAX_SKEW_SECS`] of `now` and its nonce is new; the nonce is then remembered.
    pub fn check<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k SecretString>,
        now: i64,
        seen: &Nonces,
    ) -> Result<&'k SecretString, ProbeError> {
        let key = keys
            .into_iter()
            .find(|key| {
                request_mac(key, self.ts, &self.nonce)
                    .verify_slice(&self.mac)
                    .is_ok()
            })
            .ok_or(ProbeError::BadMac)?;
        if (now - self.ts).abs() > MAX_SKEW_SECS {
            return Err(ProbeError::Stale);
        }
        seen.remember(&self.nonce, now)?;
        Ok(key)
    }
}

/// The nonces of recent probes: a probe is answered once.
#[derive(Debug, Default)]
pub struct Nonces(Mutex<HashMap<String, i64>>);

impl Nonces {
    fn remember(&self, nonce: &str, now: i64) -> Result<(), ProbeError> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A nonce older than twice the skew cannot come back: its timestamp would be stale.
        seen.retain(|_, at| now - *at <= 2 * MAX_SKEW_SECS);
        if seen.contains_key(nonce) {
            return Err(ProbeError::Replayed);
        }
        if seen.len() >= MAX_REMEMBERED {
            return Err(ProbeError::Full);
        }
        seen.insert(nonce.to_owned(), now);
        Ok(())
    }
}

/// The server's answer to a probe: what it saw and what it made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The URL the server reconstructed and checked the signature against.
    pub url: String,
    /// `valid`, or the reason the signature did not verify (as `verify` prints it).
    pub signature: String,
    /// Where the scheme and host came from: `server.public_url`, `forwarded headers` or
    /// `Host header`.
    pub base: String,
    /// The path and query of the request as the server received it.
    pub received_path: String,
    /// The URL the server would reconstruct from the proxy headers it received, were
    /// `server.trust_forwarded_headers` on (absent when no such header arrived).
    #[serde(default)]
    pub if_forwarded: Option<String>,
}

/// The MAC of an answer's body, for [`ANSWER_MAC_HEADER`].
pub fn answer_mac(key: &SecretString, nonce: &str, body: &[u8]) -> String {
    BASE64.encode(
        digest(key, &[ANSWER_CONTEXT.as_bytes(), nonce.as_bytes(), body])
            .finalize()
            .into_bytes(),
    )
}

/// Whether `mac` is [`answer_mac`] of this body (constant time).
pub fn answer_is_authentic(key: &SecretString, nonce: &str, body: &[u8], mac: &str) -> bool {
    let Ok(given) = BASE64.decode(mac.trim()) else {
        return false;
    };
    digest(key, &[ANSWER_CONTEXT.as_bytes(), nonce.as_bytes(), body])
        .verify_slice(&given)
        .is_ok()
}

fn request_mac(key: &SecretString, ts: i64, nonce: &str) -> Hmac<Sha256> {
    let ts = ts.to_string();
    digest(
        key,
        &[REQUEST_CONTEXT.as_bytes(), ts.as_bytes(), nonce.as_bytes()],
    )
}

/// HMAC-SHA256 over the parts, each followed by a newline (so no two lists of parts collide).
fn digest(key: &SecretString, parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut m =
        Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).expect("any key length");
    for part in parts {
        m.update(part);
        m.update(b"\n");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn probe_made_with_a_configured_token_is_accepted_once() {
        let (a, b) = (key("token-a"), key("token-b"));
        let seen = Nonces::default();
        let probe = Probe::parse(&header(&b, 1_000, NONCE)).unwrap();
        let used = probe.check([&a, &b], 1_010, &seen).unwrap();
        assert_eq!(used.expose_secret(), "token-b");
        assert_eq!(
            probe.check([&a, &b], 1_011, &seen).err(),
            Some(ProbeError::Replayed)
        );
    }

    #[test]
    fn probe_with_another_token_or_an_old_clock_is_refused() {
        let seen = Nonces::default();
        let forged = Probe::parse(&header(&key("guess"), 1_000, NONCE)).unwrap();
        assert_eq!(
            forged.check([&key("token")], 1_000, &seen).err(),
            Some(ProbeError::BadMac)
        );
        let old = Probe::parse(&header(&key("token"), 1_000, NONCE)).unwrap();
        assert_eq!(
            old.check([&key("token")], 1_000 + MAX_SKEW_SECS + 1, &seen)
                .err(),
            Some(ProbeError::Stale)
        );
        assert_eq!(
            old.check([&key("token")], 1_000 - MAX_SKEW_SECS - 1, &seen)
                .err(),
            Some(ProbeError::Stale)
        );
        // A refused probe does not use up its nonce.
        assert!(old.check([&key("token")], 1_000, &seen).is_ok());
    }

    #[test]
    fn a_changed_timestamp_or_nonce_breaks_the_mac() {
        let k = key("token");
        let good = header(&k, 1_000, NONCE);
        let mac = good.rsplit_once("mac=").unwrap().1;
        let seen = Nonces::default();
        for tampered in [
            format!("v1 ts=1001 nonce={NONCE} mac={mac}"),
            format!("v1 ts=1000 nonce={} mac={mac}", NONCE.replace('0', "1")),
        ] {
            let probe = Probe::parse(&tampered).unwrap();
            assert_eq!(
                probe.check([&k], 1_000, &seen).err(),
                Some(ProbeError::BadMac)
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "v2 ts=1 nonce=0123456789abcdef mac=AA==",
            "v1 ts=x nonce=0123456789abcdef mac=AA==",
            "v1 ts=1 nonce=short mac=AA==",
            "v1 ts=1 nonce=0123456789abcdef",
            "v1 ts=1 nonce=0123456789abcdef mac=AA== extra=1",
            "v1 ts=1 nonce=0123456789abcdef/../ mac=AA==",
        ] {
            assert_eq!(Probe::parse(bad), Err(ProbeError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn the_answer_is_bound_to_its_body_nonce_and_key() {
        let k = key("token");
        let mac = answer_mac(&k, NONCE, b"{\"url\":\"x\"}");
        assert!(answer_is_authentic(&k, NONCE, b"{\"url\":\"x\"}", &mac));
        assert!(!answer_is_authentic(&k, NONCE, b"{\"url\":\"y\"}", &mac));
        assert!(!answer_is_authentic(
            &k,
            "another-nonce-000",
            b"{\"url\":\"x\"}",
            &mac
        ));
        assert!(!answer_is_authentic(
            &key("other"),
            NONCE,
            b"{\"url\":\"x\"}",
            &mac
        ));
        assert!(!answer_is_authentic(
            &k,
            NONCE,
            b"{\"url\":\"x\"}",
            "not base64"
        ));
    }

    #[test]
    fn the_replay_guard_is_bounded_and_forgets_what_cannot_return() {
        let seen = Nonces::default();
        for i in 0..MAX_REMEMBERED {
            seen.remember(&format!("n{i:015}"), 0).unwrap();
        }
        assert_eq!(seen.remember("one-more-nonce-00", 0), Err(ProbeError::Full));
        assert!(
            seen.remember("one-more-nonce-00", 2 * MAX_SKEW_SECS + 1)
                .is_ok()
        );
    }
}
