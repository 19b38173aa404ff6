//! The `Signed` extractor: the only way a handler gets webhook parameters. It rebuilds the URL
//! Twilio called, buffers the raw body, verifies the signature over the raw bytes, and only
//! then hands out the parameters.

use super::AppError;
use crate::{
    config::PublicBase,
    probe,
    twilio::{Params, RawRequest, Rejection, Verifier},
};
use axum::{
    extract::{FromRequest, OriginalUri, Request},
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
};

/// A verified webhook.
#[derive(Debug)]
pub struct Signed {
    /// Twilio's parameters: the form or JSON body of a POST, the query string of a GET.
    pub params: Params,
    /// The query string's parameters (ours, such as a reply's `reply_to`, on a POST).
    pub query: Params,
    /// The base URL the request was verified against (`https://hooks.example.com`), for URLs
    /// we hand back to Twilio.
    pub base: String,
    /// When the request arrived (before its body was read): deadlines count from here.
    pub arrived: std::time::Instant,
}

/// The moment a request arrived, set by the outermost webhook middleware.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub std::time::Instant);

/// How requests are verified: tokens, the public base URL, the body limit.
#[derive(Debug)]
pub struct Signing {
    pub verifier: Verifier,
    pub base: PublicBase,
    pub body_limit: usize,
    /// Longest silence allowed between chunks of a body.
    pub body_read_timeout: std::time::Duration,
    /// The `Authorization` header required before anything else, when Basic auth is on.
    pub basic_auth: Option<secrecy::SecretString>,
    /// Nonces of doctor's probes already answered.
    pub probes: probe::Nonces,
}

impl Signing {
    /// The URL Twilio requested: the public base (DESIGN.md §9) + the raw path and query.
    pub fn url_for(
        &self,
        headers: &HeaderMap,
        authority: Option<&str>,
        path_and_query: &str,
    ) -> String {
        url_from(&self.base, headers, authority, path_and_query)
    }
}

/// The URL Twilio requested, with the public base taken from `base`.
fn url_from(
    base: &PublicBase,
    headers: &HeaderMap,
    authority: Option<&str>,
    path_and_query: &str,
) -> String {
    let (scheme, host, prefix) = match base {
        PublicBase::Configured(base) => return format!("{base}{path_and_query}"),
        PublicBase::Forwarded => forwarded_origin(headers),
        PublicBase::Host => (None, None, None),
    };
    let host = host
        .or_else(|| header_str(headers, header::HOST.as_str()).map(str::to_owned))
        .or_else(|| authority.map(str::to_owned))
        .unwrap_or_default();
    let scheme = scheme.unwrap_or_else(|| "http".to_owned());
    let prefix = prefix.unwrap_or_default();
    format!("{scheme}://{host}{prefix}{path_and_query}")
}

impl FromRequest<super::Shared> for Signed {
    /// An error's answer; or, for doctor's probe, the diagnosis (the handler never runs, so
    /// a probe is never stored).
    type Rejection = Response;

    async fn from_request(req: Request, state: &super::Shared) -> Result<Self, Response> {
        let signing = &state.signing;
        let (parts, body) = req.into_parts();
        let arrived = parts
            .extensions
            .get::<Arrived>()
            .map_or_else(std::time::Instant::now, |a| a.0);
        if let Some(expected) = &signing.basic_auth {
            use secrecy::ExposeSecret;
            use subtle::ConstantTimeEq;
            let given = parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            let expected = expected.expose_secret().as_bytes();
            // Constant-time; a missing header is Twilio's first try, answered 401 as it expects.
            if given.len() != expected.len() || !bool::from(given.ct_eq(expected)) {
                return Err(AppError::Unauthorized.into_response());
            }
        }
        // OriginalUri keeps the path Twilio called even when the router is nested. Its
        // path and query are the raw bytes of the request line: never re-encoded.
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(&parts.uri, |original| &original.0);
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let url = signing.url_for(
            &parts.headers,
            uri.authority().map(|a| a.as_str()),
            path_and_query,
        );

        // A client trickling its body cannot hold the request (and its concurrency slot) for
        // longer than the read timeout between chunks.
        let body = axum::body::Body::new(tower_http::timeout::TimeoutBody::new(
            signing.body_read_timeout,
            body,
        ));
        let body = axum::body::to_bytes(body, signing.body_limit)
            .await
            .map_err(|e| {
                if caused_by::<http_body_util::LengthLimitError>(&e) {
                    AppError::BodyTooLarge
                } else if caused_by::<tower_http::timeout::TimeoutError>(&e) {
                    AppError::BodyTimeout
                } else {
                    AppError::BadBody(e)
                }
                .into_response()
            })?;
        let signature = parts
            .headers
            .get("x-twilio-signature")
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        let request = RawRequest {
            is_get: parts.method == Method::GET,
            url: &url,
            content_type: header_str(&parts.headers, header::CONTENT_TYPE.as_str()),
            body: &body,
            signature: signature.as_deref(),
            signature_settings: header_str(&parts.headers, "x-twilio-webhooks-signature-settings"),
        };
        let verified = signing.verifier.verify(&request);
        if let Some(value) = parts.headers.get(probe::HEADER) {
            let (proto, host, prefix) = forwarded_origin(&parts.headers);
            let forwarded = proto.is_some() || host.is_some() || prefix.is_some();
            let seen = super::probe::Seen {
                url: &url,
                received_path: path_and_query,
                if_forwarded: forwarded.then(|| {
                    let authority = uri.authority().map(|a| a.as_str());
                    url_from(
                        &PublicBase::Forwarded,
                        &parts.headers,
                        authority,
                        path_and_query,
                    )
                }),
            };
            return Err(super::probe::answer(
                &state.metrics,
                &signing.verifier,
                &signing.base,
                &signing.probes,
                value,
                seen,
                &verified,
            ));
        }
        match verified {
            Ok(params) => {
                if !signing.verifier.enforces() {
                    state.metrics.unverified_requests.inc();
                    tracing::warn!(
                        "accepted an unverified request (twilio.verify_signatures = false)"
                    );
                }
                let query = uri
                    .query()
                    .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
                    .map(Params::from_iter)
                    .unwrap_or_default();
                let base = url[..url.len() - path_and_query.len()].to_owned();
                Ok(Signed {
                    params,
                    query,
                    base,
                    arrived,
                })
            }
            Err(Rejection::Signature(reason)) => {
                state
                    .metrics
                    .signature_rejections
                    .get_or_create(&crate::metrics::Reason {
                        reason: reason.code().to_owned(),
                    })
                    .inc();
                Err(AppError::BadSignature {
                    reason,
                    // The URL without its query (which may hold phone numbers) is what an
                    // operator needs to spot a proxy or public_url mismatch.
                    checked_url: url.split(['?', '#']).next().unwrap_or_default().to_owned(),
                }
                .into_response())
            }
            Err(rejection) => Err(AppError::from(rejection).into_response()),
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first (left-most, client-facing) value of a comma-separated header.
fn first_value(headers: &HeaderMap, name: &str) -> Option<String> {
    header_str(headers, name)
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Scheme, host and path prefix from proxy headers: `Forwarded` (RFC 7239) first, else
/// `X-Forwarded-Proto` / `X-Forwarded-Host`; the prefix from `X-Forwarded-Prefix`.
fn forwarded_origin(headers: &HeaderMap) -> (Option<String>, Option<String>, Option<String>) {
    let (mut proto, mut host) = (None, None);
    if let Some(first) = header_str(headers, "forwarded").and_then(|v| v.split(',').next()) {
        for pair in first.split(';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "proto" => proto = Some(value),
                "host" => host = Some(value),
                _ => {}
            }
        }
    }
    let proto = proto.or_else(|| first_value(headers, "x-forwarded-proto"));
    let host = host.or_else(|| first_value(headers, "x-forwarded-host"));
    let prefix = first_value(headers, "x-forwarded-prefix")
        .map(|p| p.trim_end_matches('/').to_owned())
        .filter(|p| p.starts_with('/'));
    (proto, host, prefix)
}

fn caused_by<E: std::error::Error + 'static>(e: &axum::Error) -> bool {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| e.is::<E>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn signing(base: PublicBase) -> Signing {
        Signing {
            verifier: Verifier::new(vec![], Default::default(), true),
            base,
            body_limit: 1,
            body_read_timeout: std::time::Duration::from_secs(1),
            basic_auth: None,
            probes: Default::default(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn configured_base_wins_over_every_header() {
        let s = signing(PublicBase::Configured(
            "https://hooks.example.com/prefix".into(),
        ));
        let h = headers(&[("host", "internal:8080"), ("x-forwarded-proto", "http")]);
        assert_eq!(
            s.url_for(&h, None, "/twilio/messages?a=%27"),
            "https://hooks.example.com/prefix/twilio/messages?a=%27"
        );
    }

    #[test]
    fn forwarded_header_comes_first_then_x_forwarded() {
        let s = signing(PublicBase::Forwarded);
        let h = headers(&[
            ("host", "internal:8080"),
            (
                "forwarded",
                r#"for=1.2.3.4;proto=https;host="Hooks.Example.com", for=5.6.7.8;proto=http"#,
            ),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "wrong.example"),
        ]);
        assert_eq!(s.url_for(&h, None, "/t"), "https://Hooks.Example.com/t");

        let h = headers(&[
            ("host", "internal:8080"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "hooks.example.com, proxy.internal"),
            ("x-forwarded-prefix", "/receiver/"),
        ]);
        assert_eq!(
            s.url_for(&h, None, "/t?x=1"),
            "https://hooks.example.com/receiver/t?x=1"
        );

        // Nothing forwarded: the Host header, over http.
        let h = headers(&[("host", "internal:8080")]);
        assert_eq!(s.url_for(&h, None, "/t"), "http://internal:8080/t");
    }

    #[test]
    fn without_configuration_the_host_header_is_used_and_proxies_ignored() {
        let s = signing(PublicBase::Host);
        let h = headers(&[("host", "h.example:8080"), ("x-forwarded-proto", "https")]);
        assert_eq!(s.url_for(&h, None, "/t"), "http://h.example:8080/t");
        assert_eq!(
            s.url_for(&HeaderMap::new(), Some("abs.example"), "/t"),
            "http://abs.example/t"
        );
    }
}
