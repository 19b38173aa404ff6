//! twilio-receiver: a webhook receiver for Twilio Programmable Messaging (WhatsApp first,
//! SMS alike). It verifies every request's `X-Twilio-Signature`, stores each message once in
//! Postgres with its 24-hour customer-service window, and answers with TwiML.
//!
//! Layering (DESIGN.md §10, README "Code layout"): `twilio`, `rules`, `reply` and `twiml` are
//! the pure core; `store` knows SQL; `ingest` takes a verified webhook from any source to a
//! stored row and an outcome; `routes` knows HTTP and calls ingest; `startup` and `cli` wire
//! them together. Nothing calls up: `cargo test --test layers` checks it.
#![forbid(unsafe_code)]

/// The command line and its subcommands.
pub mod cli;
/// Settings: layered files and environment, typed, secrets redacted.
pub mod config;
/// From a verified webhook of any kind and source to stored rows and an answer.
pub mod ingest;
/// The media archive: background workers that download and store inbound media.
pub mod media;
/// Prometheus metrics for the admin listener.
pub mod metrics;
/// `doctor`'s probe: proof that a test request comes from doctor, and the server's answer.
pub mod probe;
/// Completing history from Twilio's REST API through ingest (gap-fill, enrichment, stale
/// statuses, backfill).
pub mod reconcile;
/// The reply to an inbound message (where the rules engine plugs in).
pub mod reply;
/// Twilio's REST API for messages and their media: credentials, paging, retries, limits.
pub mod rest;
/// The HTTP layer: routes, extractors, middleware, errors as status codes.
pub mod routes;
/// Reply rules: the rules file, compiled and evaluated.
pub mod rules;
/// Proving a set-up: `doctor`'s checks and `connect`.
pub mod setup;
/// The local spool: a durable file queue of webhooks kept while Postgres is away.
pub mod spool;
/// Building, running and stopping the server.
pub mod startup;
/// Where archived media is kept (a directory or S3).
pub mod storage;
/// Postgres: pool, migrations, the write engine and every query.
pub mod store;
/// Logging setup and the per-request span.
pub mod telemetry;
/// Twilio's protocol: signatures, parameters, addresses, inbound messages.
pub mod twilio;
/// TwiML rendering.
pub mod twiml;
/// Partition upkeep: the coming days made ahead, and how far ahead they go.
pub mod upkeep;
