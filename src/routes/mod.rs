//! The HTTP surface: the table of paths, the middleware stack and the shared state. Handlers
//! extract and verify (`Signed`), hand the webhook to ingest, and translate its outcome; no
//! SQL, rules or spool decisions here.

mod error;
mod health;
mod probe;
mod signed;
mod webhooks;

pub use error::AppError;
pub use signed::{Signed, Signing};

use crate::{
    config::{FALLBACK_PATH, MESSAGES_PATH, STATUS_PATH},
    ingest::Ingest,
    metrics::Metrics,
    telemetry,
};
use axum::{
    Router,
    extract::State,
    handler::Handler,
    http::{HeaderName, StatusCode, header, header::AUTHORIZATION},
    response::IntoResponse,
    routing::{MethodRouter, get},
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    timeout::TimeoutLayer,
    trace::{DefaultOnResponse, TraceLayer},
};

/// What handlers and middleware need. The router holds it behind one `Arc` ([`Shared`]):
/// extractors and middleware clone their state for every request, and one reference count
/// is cheaper than several.
#[derive(Clone)]
pub struct AppState {
    /// How requests are verified.
    pub signing: Arc<Signing>,
    /// Where verified webhooks go.
    pub ingest: Arc<Ingest>,
    pub metrics: Arc<Metrics>,
    /// One permit per webhook request in flight (`server.max_concurrent_requests`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// The router's state: [`AppState`] behind one reference count.
pub type Shared = Arc<AppState>;

/// The outermost webhook middleware: counts each request by route template and status
/// (timeouts, panics and shed requests too), and sheds it with 503 when
/// `server.max_concurrent_requests` are in flight: Twilio then calls the fallback URL, and
/// the server keeps its memory and its database pool for the requests it has already
/// accepted. Shedding happens before the request span and the body are touched, so it costs
/// almost nothing. (One middleware, not two: each `from_fn` layer boxes the request's
/// future once more.)
async fn admit(
    State(state): State<Shared>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    request
        .extensions_mut()
        .insert(signed::Arrived(std::time::Instant::now()));
    let response = match state.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => {
            state.metrics.requests_shed.inc();
            AppError::Overloaded.into_response()
        }
    };
    state.metrics.request(&route, response.status().as_u16());
    response
}

/// The admin listener's routes: `GET /metrics`. The pool is only read for its gauges.
pub fn admin_router(metrics: Arc<Metrics>, db: PgPool) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state((metrics, db))
}

async fn serve_metrics(State((metrics, db)): State<(Arc<Metrics>, PgPool)>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], metrics.render(&db))
}

/// A webhook route: GET and POST, the methods Twilio lets users choose. HEAD is refused
/// explicitly: axum would otherwise run the handler for it, and a HEAD must store nothing.
fn webhook<H, T>(handler: H) -> MethodRouter<Shared>
where
    H: Handler<T, Shared>,
    T: 'static,
{
    get(handler.clone()).post(handler).head(|| async {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET,POST")],
        )
    })
}

/// The router with its middleware. `request_timeout` bounds every webhook, well inside the
/// 15 s Twilio waits.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let state: Shared = Arc::new(state);
    // ServiceBuilder order: first = outermost. Admission (counting, shedding) comes first;
    // the request id exists before the span that records it; sensitive headers are marked
    // before anything could log them; panics become 500s inside the span, and the timeout
    // answers 503 so Twilio moves to the fallback URL. One `Router::layer` call: each call
    // wraps every route in another boxed service, a heap copy of the future per request.
    let middleware = ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit))
        .layer(SetRequestIdLayer::new(
            telemetry::REQUEST_ID,
            MakeRequestUuid,
        ))
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            HeaderName::from_static("x-twilio-signature"),
        ]))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(telemetry::make_span)
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                // Failures are logged once, with their cause, where they are turned into
                // responses (error.rs).
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(telemetry::REQUEST_ID))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(CatchPanicLayer::new());

    Router::new()
        .route(MESSAGES_PATH, webhook(webhooks::inbound))
        .route(FALLBACK_PATH, webhook(webhooks::fallback))
        .route(STATUS_PATH, webhook(webhooks::status))
        .layer(middleware)
        // Health checks are polled every few seconds: kept out of the request log.
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}
