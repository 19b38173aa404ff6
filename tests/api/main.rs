//! HTTP tests against real Postgres: `#[sqlx::test]` gives each test a fresh, migrated
//! database (DATABASE_URL must point at a server where it can create databases). The REST
//! client's tests (`rest`) run against `fake_twilio` and need no database.

mod cli;
mod connect;
mod database;
mod doctor;
mod fake_twilio;
mod fallback;
mod helpers;
mod hostile;
mod inbound;
mod logs;
mod media;
mod metrics;
mod operator;
mod partitions;
mod questions;
mod reconcile;
mod requests;
pub mod rest;
pub mod rules;
mod scaling;
mod server;
mod sessions;
mod shutdown;
mod signature;
mod spool;
pub mod status;
mod tracking;
mod write;
