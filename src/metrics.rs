//! Prometheus metrics: the exporter (metrics-exporter-prometheus, installed
//! once per process as the `metrics` facade's recorder), the ingress's
//! counters, and the gauges refreshed from the database.
//!
//! Names follow Prometheus conventions: `email2fa_` prefix, `_total` for
//! counters, `_seconds` for durations. Labels are bounded sets (an event
//! type, an outcome code, a reason, a state): never a user, an address or a
//! tenant, so a host with millions of users cannot blow up the series count.
//! The queue gauges are read from the deliveries table every
//! [`REFRESH_INTERVAL`], so every process serving `/metrics` reports the same
//! numbers whatever the queue backend.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use email2fa_db::{Db, Timestamp};
use email2fa_workers::stats;

/// Records the size of one ingress batch (webhooks per transaction).
pub fn ingest_batch(size: usize) {
    metrics::histogram!("email2fa_ingest_batch_size").record(size as f64);
}

/// How often the queue gauges are read from the database.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Buckets of the request and SMTP latencies (seconds).
const FAST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the webhook-to-inbox latency: seconds to minutes (retries).
const END_TO_END_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets of the ingress's batch sizes (webhooks per transaction).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's exporter, installed on first use. `None` when another
/// recorder was installed first (then `/metrics` answers 503).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("email2fa_delivery_end_to_end_seconds".into()),
            END_TO_END_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("email2fa_ingest_batch_size".into()),
                BATCH_BUCKETS,
            )
        })
        .and_then(|b| b.set_buckets(FAST_BUCKETS));
    let installed = builder.and_then(|b| b.install_recorder());
    match installed {
        Ok(handle) => {
            describe();
            metrics::gauge!("email2fa_smtp_providers_unhealthy").set(0.0);
            // Every reason from the start, so that `increase()` sees the
            // first dead letter of a process as an increase from 0.
            email2fa_workers::metrics::register_dead_letter_reasons();
            Some(handle)
        }
        Err(error) => {
            tracing::error!(%error, "could not install the Prometheus recorder; /metrics is off");
            None
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "email2fa_webhooks_total",
        "Webhooks received, by event type and outcome code"
    );
    describe_counter!(
        "email2fa_webhook_signature_failures_total",
        "Webhooks refused for their signature, by reason"
    );
    describe_histogram!(
        "email2fa_webhook_duration_seconds",
        Unit::Seconds,
        "Time to answer a webhook, by event type"
    );
    describe_histogram!(
        "email2fa_ingest_batch_size",
        "Hot webhooks committed in one transaction by the ingress"
    );
    describe_counter!(
        "email2fa_deliveries_total",
        "Delivery attempts finished, by outcome (sent, retrying, dead, expired, discarded)"
    );
    describe_counter!(
        "email2fa_delivery_attempts_total",
        "SMTP sends, by result (accepted, transient, auth_failed, tls_failed, rejected)"
    );
    describe_histogram!(
        "email2fa_smtp_send_duration_seconds",
        Unit::Seconds,
        "Time of one SMTP send, by result"
    );
    describe_histogram!(
        "email2fa_delivery_end_to_end_seconds",
        Unit::Seconds,
        "From the webhook that queued an email to its acceptance by SMTP"
    );
    describe_gauge!(
        "email2fa_queue_depth",
        "Deliveries by queue state (pending, scheduled, running)"
    );
    describe_gauge!(
        "email2fa_queue_oldest_pending_age_seconds",
        Unit::Seconds,
        "How long the oldest pending delivery has been due"
    );
    describe_gauge!(
        "email2fa_queue_oldest_unsent_age_seconds",
        Unit::Seconds,
        "How long the oldest email not sent yet (due or in backoff) has waited since its creation"
    );
    describe_gauge!("email2fa_dead_letters", "Unresolved dead letters");
    describe_counter!(
        "email2fa_dead_letters_created_total",
        "Dead letters written by this process's workers, by reason"
    );
    describe_gauge!(
        "email2fa_smtp_providers_unhealthy",
        "SMTP providers rejecting our credentials or failing TLS (in this process)"
    );
}

/// Counts one webhook and its latency.
pub fn webhook(event_type: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!("email2fa_webhooks_total", "type" => event_type, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("email2fa_webhook_duration_seconds", "type" => event_type)
        .record(took.as_secs_f64());
}

/// Counts a refused signature (`bad_header`, `no_match`, `out_of_tolerance`).
pub fn signature_failure(reason: &'static str) {
    metrics::counter!("email2fa_webhook_signature_failures_total", "reason" => reason).increment(1);
}

/// Reads the queue gauges from the database once.
pub async fn refresh(db: &Db) -> Result<(), sqlx::Error> {
    let counts = stats::queue_counts(db, Timestamp::now()).await?;
    for (state, value) in [
        ("pending", counts.pending),
        ("scheduled", counts.scheduled),
        ("running", counts.running),
    ] {
        metrics::gauge!("email2fa_queue_depth", "state" => state).set(value as f64);
    }
    metrics::gauge!("email2fa_queue_oldest_pending_age_seconds")
        .set(counts.oldest_pending_age_seconds as f64);
    metrics::gauge!("email2fa_queue_oldest_unsent_age_seconds")
        .set(counts.oldest_unsent_age_seconds as f64);
    metrics::gauge!("email2fa_dead_letters").set(counts.dead as f64);
    Ok(())
}

/// Refreshes the gauges every [`REFRESH_INTERVAL`] (and drains the
/// exporter's histogram buffers) until `background` stops.
pub fn spawn_refresh(db: Db, background: &crate::background::Background) {
    let Some(handle) = handle() else { return };
    background.spawn("queue gauges", async move {
        let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
        loop {
            ticker.tick().await;
            if let Err(error) = refresh(&db).await {
                tracing::debug!(%error, "could not refresh the queue gauges");
            }
            handle.run_upkeep();
        }
    });
}
