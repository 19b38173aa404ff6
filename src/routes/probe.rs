//! The server's side of `doctor`'s probe (`crate::probe`): a request that proves it comes
//! from doctor is verified like any webhook, then answered with what the server made of it
//! instead of being handed to ingest.

use crate::{
    config::PublicBase,
    metrics::Metrics,
    probe::{self, Answer, Nonces, Probe},
    twilio::{Params, Rejection, Verifier},
};
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// What a probe looked like to the server.
pub(super) struct Seen<'a> {
    /// The URL the signature was checked against.
    pub url: &'a str,
    pub received_path: &'a str,
    /// The URL trusting the proxy headers would give, when any arrived.
    pub if_forwarded: Option<String>,
}

/// The diagnosis, authenticated with the key the probe was made with; for a probe that does
/// not prove itself, the bare 403 of a bad signature.
pub(super) fn answer(
    metrics: &Metrics,
    verifier: &Verifier,
    base: &PublicBase,
    nonces: &Nonces,
    value: &HeaderValue,
    seen: Seen<'_>,
    verified: &Result<Params, Rejection>,
) -> Response {
    let now = chrono::Utc::now().timestamp();
    let checked = value
        .to_str()
        .map_err(|_| probe::ProbeError::Malformed)
        .and_then(Probe::parse)
        .and_then(|p| {
            let key = p.check(verifier.all_tokens(), now, nonces)?;
            Ok((p, key))
        });
    let (probe, key) = match checked {
        Ok(checked) => checked,
        Err(reason) => {
            tracing::warn!(%reason, "refused a doctor probe");
            metrics
                .signature_rejections
                .get_or_create(&crate::metrics::Reason {
                    reason: "probe".to_owned(),
                })
                .inc();
            // Exactly the answer to a bad signature (error.rs): nothing tells a scanner
            // that probes exist.
            return (StatusCode::FORBIDDEN, "").into_response();
        }
    };
    let signature = match verified {
        Ok(_) if verifier.enforces() => "valid".to_owned(),
        Ok(_) => "not checked (twilio.verify_signatures = false)".to_owned(),
        Err(Rejection::Signature(reason)) => reason.to_string(),
        Err(other) => other.to_string(),
    };
    let base = match base {
        PublicBase::Configured(_) => "server.public_url",
        PublicBase::Forwarded => "forwarded headers",
        PublicBase::Host => "Host header",
    };
    let answer = Answer {
        url: seen.url.to_owned(),
        signature,
        base: base.to_owned(),
        received_path: seen.received_path.to_owned(),
        if_forwarded: seen.if_forwarded,
    };
    tracing::info!(signature = %answer.signature, "answered a doctor probe");
    let body = serde_json::to_vec(&answer).expect("plain strings serialize");
    let mac = probe::answer_mac(key, &probe.nonce, &body);
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::HeaderName::from_static(probe::ANSWER_MAC_HEADER),
                mac,
            ),
        ],
        body,
    )
        .into_response()
}
