//! Errors and how they become HTTP answers.
//!
//! Where error types live: `twilio::SignatureError` / `twilio::Rejection` (protocol, pure),
//! `store::StoreError` (database, classified as unavailable, too large or other), and
//! [`AppError`], the only type that knows status codes. Each failure is logged once, here, at
//! a level that fits who caused it: client mistakes at info/warn, outages at warn, bugs at
//! error. Bodies carry a short fixed reason, never internals; a 403 says nothing at all.

use crate::{
    store::StoreError,
    twilio::{MissingParam, Rejection},
};
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

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
    /// The database did not finish within the fallback route's deadline.
    #[error("the database did not answer in time")]
    DatabaseTooSlow,
    /// The client stopped sending its body for longer than `server.body_read_timeout_ms`.
    #[error("request body arrived too slowly")]
    BodyTimeout,
    /// More webhook requests in flight than `server.max_concurrent_requests`.
    #[error("too many requests in flight")]
    Overloaded,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Basic auth is on and the request has no (or wrong) credentials.
    #[error("missing or wrong HTTP Basic credentials")]
    Unauthorized,
    /// Migrations have not been applied yet (Postgres was unreachable at start).
    #[error("the database schema is not ready yet")]
    NotReady,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Rejected(Rejection::UnsupportedMediaType) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            AppError::Rejected(Rejection::Signature(_)) | AppError::BadSignature { .. } => {
                StatusCode::FORBIDDEN
            }
            AppError::Rejected(Rejection::BadJson)
            | AppError::MissingParam(_)
            | AppError::BadBody(_) => StatusCode::BAD_REQUEST,
            AppError::BodyTooLarge | AppError::Store(StoreError::TooLarge(_)) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            AppError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Store(StoreError::Unavailable(_))
            | AppError::NotReady
            | AppError::DatabaseTooSlow => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Store(StoreError::Other(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
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
            AppError::Store(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "database unavailable; answering 503");
            }
            AppError::Store(StoreError::TooLarge(e)) => {
                tracing::warn!(error = %e, "refused a request: a value too large to store");
            }
            AppError::Store(StoreError::Other(e)) => {
                // Display only: a database error's Debug carries its DETAIL and WHERE, which
                // can quote the row (phone numbers, bodies).
                let code = match e {
                    sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                    _ => None,
                };
                tracing::error!(error = %e, sqlstate = code, "database error");
            }
            AppError::NotReady => {
                tracing::warn!("database schema not migrated yet; answering 503");
            }
            AppError::DatabaseTooSlow => {
                tracing::warn!("database too slow for the deadline; answering 503");
            }
            // Counted in requests_shed; one line per shed request would flood the log exactly
            // when the server is busiest.
            AppError::Overloaded => tracing::debug!("shed a request: too many in flight"),
            other => tracing::info!(reason = %other, status = status.as_u16(), "bad request"),
        }
        if let AppError::Unauthorized = self {
            return (
                status,
                [(
                    axum::http::header::WWW_AUTHENTICATE,
                    r#"Basic realm="twilio-receiver""#,
                )],
            )
                .into_response();
        }
        let body = match &self {
            AppError::Rejected(Rejection::Signature(_)) | AppError::BadSignature { .. } => "",
            AppError::Store(StoreError::Unavailable(_)) => "service unavailable\n",
            AppError::Store(StoreError::Other(_)) => "internal error\n",
            AppError::Store(StoreError::TooLarge(_)) => "a value is too large to store\n",
            AppError::BodyTooLarge => "request body too large\n",
            AppError::Rejected(Rejection::UnsupportedMediaType) => {
                "expected application/x-www-form-urlencoded or application/json\n"
            }
            AppError::Rejected(Rejection::BadJson) => "the JSON body is not an object\n",
            AppError::NotReady | AppError::DatabaseTooSlow => "service unavailable\n",
            AppError::Unauthorized => "",
            AppError::BadBody(_) => "request body could not be read\n",
            AppError::BodyTimeout => "request body arrived too slowly\n",
            AppError::Overloaded => "service overloaded\n",
            AppError::MissingParam(MissingParam(name)) => {
                return (status, format!("missing required parameter {name}\n")).into_response();
            }
        };
        (status, body).into_response()
    }
}
