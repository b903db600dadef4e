//! The engine's Prometheus metrics, recorded through the `metrics` facade
//! (the service installs the exporter). Labels are bounded: an outcome, a
//! result or a kind, never a user, an address or a tenant.

use std::time::Duration;

use crate::dead_letters::DeadLetterReason;
use crate::engine::Outcome;
use crate::transport::SendError;
use email2fa_db::Timestamp;

/// Counts a finished attempt by its outcome (`email2fa_deliveries_total`).
pub fn outcome(outcome: &Outcome) {
    let label = match outcome {
        Outcome::Sent => "sent",
        Outcome::Retrying => "retrying",
        Outcome::Dead => "dead",
        Outcome::Finished(status) => status,
        Outcome::Skipped => return,
    };
    metrics::counter!("email2fa_deliveries_total", "outcome" => label).increment(1);
}

/// Records one SMTP send: the attempt by result, its latency, and for an
/// accepted email the time since its webhook created it.
pub fn send(result: &Result<String, SendError>, took: Duration, created_at: Timestamp) {
    let label = match result {
        Ok(_) => "accepted",
        Err(SendError::Transient(_)) => "transient",
        Err(SendError::AuthFailed(_)) => "auth_failed",
        Err(SendError::Permanent(_)) => "rejected",
        Err(SendError::Tls(_)) => "tls_failed",
    };
    metrics::counter!("email2fa_delivery_attempts_total", "result" => label).increment(1);
    metrics::histogram!("email2fa_smtp_send_duration_seconds", "result" => label)
        .record(took.as_secs_f64());
    if result.is_ok() {
        let since = chrono::Utc::now() - created_at.as_datetime();
        let seconds = since.num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics::histogram!("email2fa_delivery_end_to_end_seconds").record(seconds.max(0.0));
    }
}

/// Sets the number of unhealthy SMTP providers (rejecting our credentials,
/// or whose connection cannot be made secure).
pub fn unhealthy_providers(count: usize) {
    metrics::gauge!("email2fa_smtp_providers_unhealthy").set(count as f64);
}

/// Records one claim batch: how many jobs it served
/// (`email2fa_delivery_claim_batch_size`) and how many of their deliveries
/// it claimed.
pub fn claim_batch(jobs: usize, claimed: usize) {
    metrics::histogram!("email2fa_delivery_claim_batch_size").record(jobs as f64);
    metrics::counter!("email2fa_delivery_claims_total").increment(claimed as u64);
}

/// Counts a dead letter written (`email2fa_dead_letters_created_total`):
/// a counter, so alerts see new letters with `increase()` even when
/// operators resolve others in the same window (the unresolved gauge
/// would hide them).
pub fn dead_letter(reason: DeadLetterReason) {
    metrics::counter!("email2fa_dead_letters_created_total", "reason" => reason.as_str())
        .increment(1);
}

/// Registers the dead letter counter of every reason at 0.
pub fn register_dead_letter_reasons() {
    for reason in DeadLetterReason::ALL {
        metrics::counter!("email2fa_dead_letters_created_total", "reason" => reason.as_str())
            .increment(0);
    }
}
