//! The email2fa delivery engine: the email job contract, the apalis worker
//! assembly, rendering, SMTP transports, retries with backoff and dead letters.
//!
//! The queue ([`queue`]) carries email jobs (a delivery id each) over
//! apalis on SQLite, PostgreSQL or Redis, and runs the workers.
//!
//! It also owns the database plumbing that the service and the engine share
//! ([`db`]): the pool over SQLite or PostgreSQL and the timestamp type both
//! backends store the same way. The service depends on this crate, never the
//! reverse.
//!
//! [`sink`] is an in-memory SMTP server for the end-to-end tests and the
//! benchmark; it is a test and benchmark tool, not part of the delivery path.

pub mod address;
mod batcher;
pub mod db;
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
pub mod sink;
pub mod stats;
pub mod transport;
pub mod trust;
