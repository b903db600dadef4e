//! email2fa: email-based two-factor authentication as a service for host
//! platforms. The host posts signed webhooks at each step of the 2FA journey;
//! this crate verifies them, decides, stores, and queues the emails that the
//! delivery engine (the `email2fa-workers` crate) sends.
//!
//! `main.rs` only parses the command line; everything runs from here, so the
//! tests and the benchmark drive the same code.

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
