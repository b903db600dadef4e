//! Logging through tracing-subscriber: human-readable (`pretty`) or one JSON
//! object per line (`json`), always to standard error so that standard output
//! stays for what a command prints (a new tenant's secret, a table).
//!
//! Secrets never reach a log line because they never reach a field: the
//! handlers record ids, types and outcomes only, and settings print redacted.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{LogFormat, Settings};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over
/// `EMAIL2FA_LOG`. Calling it twice is harmless (the second call is ignored).
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.log_format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A subscriber already installed (tests that start several apps) is fine.
    drop(result);
}
