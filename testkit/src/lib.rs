//! Test and benchmark tools of email2fa, never part of the service: a
//! dev-dependency of the service's and the engine's tests, a dependency of
//! the benchmark.
//!
//! [`sink`] is a real SMTP server that keeps what it receives in memory: the
//! peer of the end-to-end tests and the sink of the benchmark. [`servers`]
//! starts private PostgreSQL and Redis servers that a test or the fault
//! suite may kill and restart.

pub mod servers;
pub mod sink;
