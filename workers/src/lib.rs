//! The email2fa delivery engine: the email job contract, the apalis worker
//! assembly, rendering, SMTP transports, retries with backoff and dead letters.
//!
//! The queue ([`queue`]) carries email jobs (a delivery id each) over
//! apalis on SQLite, PostgreSQL or Redis, and runs the workers.
//!
//! The database plumbing it shares with the service (the pool over SQLite or
//! PostgreSQL, transactions, the timestamp both backends store the same way)
//! is the crate `email2fa-db`. The service depends on this crate, never the
//! reverse.

pub mod address;
mod batcher;
pub mod dead_letters;
pub mod deliveries;
pub mod engine;
pub mod health;
pub mod history;
mod leases;
pub mod metrics;
pub mod queue;
pub mod render;
pub mod retrying;
pub mod stats;
pub mod transport;
pub mod trust;
