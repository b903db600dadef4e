//! email2fa: email-based two-factor authentication as a service for host
//! platforms. The host posts signed webhooks at each step of the 2FA journey;
//! this crate verifies them, decides, stores, and queues the emails that the
//! delivery engine (the `email2fa-workers` crate) sends.
//!
//! `main.rs` only parses the command line; everything runs from here, so the
//! tests and the benchmark drive the same code.
//!
//! The crates, each depending only on those below it:
//!
//! | crate | what it is |
//! |---|---|
//! | `email2fa` (this one) | the service: CLI, settings, events, domain rules, HTTP, store, ingress batches, operations |
//! | `email2fa-workers` (`workers/`) | the delivery engine: job queue, deliveries and dead letters, rendering, SMTP |
//! | `email2fa-db` (`db/`) | the database layer both share: one pool over SQLite and PostgreSQL, transactions, timestamps |
//! | `email2fa-demo` (`demo/`) | the reference host platform behind `email2fa demo` (only the HTTP API) |
//! | `email2fa-testkit` (`testkit/`) | test tools: a real SMTP server keeping what it receives (tests, benchmark) |
//! | `email2fa-bench` (`bench/`) | the benchmark and fault suite |
//!
//! Inside this crate the layers point one way: `http` → `ingest` → `domain`
//! (rules, no I/O) and `store` (SQL) → `email2fa-db`.

pub mod app;
pub mod background;
pub mod cli;
pub mod crypto;
pub mod delivery;
pub mod domain;
pub mod events;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod ops;
pub mod settings;
pub mod signature;
pub mod store;
pub mod telemetry;
