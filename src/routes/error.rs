//! Errors and how they become HTTP answers.
//!
//! Where error types live: `twilio::SignatureError` / `twilio::Rejection` (protocol, pure),
//! `store::StoreError` (database, classified by what the caller must do), `ingest::Away` and
//! `ingest::IngestError` (a webhook kept for later, or refused, with the database's `Cause`), and [`AppError`], the only
//! type that knows status codes. Each failure is logged once, here, at a level that fits who
//! caused it: client mistakes at info/warn, outages at warn, bugs at error. Bodies carry a
//! short fixed reason, never internals; a 403 says nothing at all.

use crate::{
    ingest::{Away, Cause, IngestError},
    twilio::{MissingParam, Rejection},
};
use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A missing or wrong signature, with the URL it was checked against (query removed).
    #[error("signature not valid: {reason}")]
    BadSignature {
        reason: crate::twilio::SignatureError,
        checked_url: String,
    },
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    MissingParam(#[from] MissingParam),
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error("request body could not be read")]
    BadBody(#[source] axum::Error),
    /// The client stopped sending its body for longer than `server.body_read_timeout_ms`.
    #[error("request body arrived too slowly")]
    BodyTimeout,
    /// More webhook requests in flight than `server.max_concurrent_requests`.
    #[error("too many requests in flight")]
    Overloaded,
    /// The database cannot take the webhook now (it may have been spooled): 503, so Twilio
    /// calls the fallback URL.
    #[error(transparent)]
    Unavailable(Away),
    /// A value Postgres cannot store.
    #[error("a value is too large to store")]
    TooLarge(#[source] Cause),
    /// A bug, ours or the schema's.
    #[error("database error")]
    Bug(#[source] Cause),
    /// Basic auth is on and the request has no (or wrong) credentials.
    #[error("missing or wrong HTTP Basic credentials")]
    Unauthorized,
}

impl From<IngestError> for AppError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::MissingParam(missing) => AppError::MissingParam(missing),
            IngestError::TooLarge(cause) => AppError::TooLarge(cause),
            IngestError::Bug(cause) => AppError::Bug(cause),
        }
    }
}

impl AppError {
    /// The status and the short fixed body a client gets.
    fn answer(&self) -> (StatusCode, Cow<'static, str>) {
        let (status, body) = match self {
            AppError::Rejected(Rejection::UnsupportedMediaType) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected application/x-www-form-urlencoded or application/json\n",
            ),
            AppError::Rejected(Rejection::Signature(_)) | AppError::BadSignature { .. } => {
                (StatusCode::FORBIDDEN, "")
            }
            AppError::Rejected(Rejection::BadJson) => {
                (StatusCode::BAD_REQUEST, "the JSON body is not an object\n")
            }
            AppError::MissingParam(MissingParam(name)) => {
                let body = format!("missing required parameter {name}\n");
                return (StatusCode::BAD_REQUEST, body.into());
            }
            AppError::BadBody(_) => (StatusCode::BAD_REQUEST, "request body could not be read\n"),
            AppError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            AppError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "a value is too large to store\n",
            ),
            AppError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request body arrived too slowly\n",
            ),
            AppError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "service overloaded\n"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, ""),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service unavailable\n"),
            AppError::Bug(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
        };
        (status, body.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = self.answer();
        match &self {
            AppError::Rejected(Rejection::Signature(reason)) => {
                tracing::warn!(%reason, "rejected a request: signature not valid");
            }
            AppError::BadSignature {
                reason,
                checked_url,
            } => {
                tracing::warn!(%reason, url = %checked_url, "rejected a request: signature not valid");
            }
            AppError::Unavailable(away) => {
                tracing::warn!(reason = %away, "database unavailable; answering 503");
            }
            AppError::TooLarge(e) => {
                tracing::warn!(error = %e, "refused a request: a value too large to store");
            }
            AppError::Bug(e) => {
                // Display only: a database error's Debug carries its DETAIL and WHERE, which
                // can quote the row (phone numbers, bodies).
                tracing::error!(error = %e, sqlstate = e.sqlstate(), "database error");
            }
            // Counted in requests_shed; one line per shed request would flood the log exactly
            // when the server is busiest.
            AppError::Overloaded => tracing::debug!("shed a request: too many in flight"),
            other => tracing::info!(reason = %other, status = status.as_u16(), "bad request"),
        }
        if let AppError::Unauthorized = self {
            let challenge = r#"Basic realm="twilio-receiver""#;
            return (status, [(header::WWW_AUTHENTICATE, challenge)]).into_response();
        }
        (status, body).into_response()
    }
}
