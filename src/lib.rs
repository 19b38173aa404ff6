//! twilio-receiver: a webhook receiver for Twilio Programmable Messaging (WhatsApp first,
//! SMS alike). It verifies every request's `X-Twilio-Signature`, stores each message once in
//! Postgres with its 24-hour customer-service window, and answers with TwiML.
//!
//! Layering (DESIGN.md §10): `twilio`, `reply` and `twiml` are the pure core; `store` knows
//! SQL; `routes` knows HTTP; `startup` and `cli` wire them together.
#![forbid(unsafe_code)]

/// The command line and its subcommands.
pub mod cli;
/// Settings: layered files and environment, typed, secrets redacted.
pub mod config;
/// Errors and their HTTP status codes.
pub mod error;
/// The media archive: background workers that download and store inbound media.
pub mod media;
/// Prometheus metrics for the admin listener.
pub mod metrics;
/// The reply to an inbound message (where the rules engine plugs in).
pub mod reply;
/// Routes, extractors, middleware and shared state.
pub mod routes;
/// Reply rules: the rules file, compiled and evaluated.
pub mod rules;
/// The local spool: webhooks kept on disk while Postgres is away, replayed when it returns.
pub mod spool;
/// Building, running and stopping the server.
pub mod startup;
/// Postgres: pool, migrations, queries.
pub mod store;
/// Logging setup and the per-request span.
pub mod telemetry;
/// Twilio's protocol: signatures, parameters, addresses, inbound messages.
pub mod twilio;
/// TwiML rendering.
pub mod twiml;
/// Group commit: the writer tasks that store concurrent webhooks together.
pub mod writer;
