//! `GET /metrics`: valid Prometheus text exposition whose counters move
//! with the traffic of a test.

mod common;

use std::time::Duration;

use common::ops::{ready, sqlite_app, start_enrollment, verify};
use common::{TestApp, code_in};

/// One sample of a parsed exposition, or 0.
fn sample(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let answer = app.get("/metrics").await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .expect("type")
            .starts_with("text/plain")
    );
    let text = String::from_utf8(answer.bytes).expect("utf-8");
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("email2fa_"),
            "only our metrics, named by convention: {line}"
        );
        assert!(!line.contains('@'), "no address in a metric: {line}");
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus exposition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_traffic() {
    let app = sqlite_app().await;
    let before = scrape(&app).await.samples;
    ready(&app).await;
    let (challenge, delivery) = start_enrollment(&app, "c1").await;
    assert_eq!(app.wait_delivery(&delivery, "sent").await, "sent");
    let code = code_in(&app.mail_for("c1@shop.example", 1).await);
    assert_eq!(verify(&app, &challenge, &code).await["outcome"], "verified");
    let forged = app
        .post_raw(
            common::TENANT,
            &[
                ("webhook-id", "msg_x".into()),
                (
                    "webhook-timestamp",
                    chrono::Utc::now().timestamp().to_string(),
                ),
                ("webhook-signature", "v1,AAAA".into()),
            ],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(forged.status, 401);
    // Correctly signed an hour ago: refused as out of tolerance.
    let stale = chrono::Utc::now().timestamp() - 3600;
    let body = br#"{"type":"settings.updated","data":{}}"#.to_vec();
    let late = app
        .post_raw(
            common::TENANT,
            &[
                ("webhook-id", "msg_late".into()),
                ("webhook-timestamp", stale.to_string()),
                ("webhook-signature", app.signature("msg_late", stale, &body)),
            ],
            body,
        )
        .await;
    assert_eq!(late.status, 401);
    tokio::time::sleep(email2fa::metrics::REFRESH_INTERVAL + Duration::from_secs(1)).await;
    let after = scrape(&app).await;
    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let (was, is) = (
            sample(&before, name, labels),
            sample(&after.samples, name, labels),
        );
        assert!(is - was >= by, "{name}{labels:?}: {was} → {is}");
    };
    grew(
        "email2fa_webhooks_total",
        &[("type", "settings.updated"), ("outcome", "ok")],
        1.0,
    );
    grew(
        "email2fa_webhooks_total",
        &[("type", "enrollment.started"), ("outcome", "ok")],
        1.0,
    );
    grew(
        "email2fa_webhooks_total",
        &[("outcome", "invalid_signature")],
        1.0,
    );
    grew(
        "email2fa_webhook_signature_failures_total",
        &[("reason", "no_match")],
        1.0,
    );
    grew(
        "email2fa_webhook_signature_failures_total",
        &[("reason", "out_of_tolerance")],
        1.0,
    );
    grew(
        "email2fa_webhook_duration_seconds_count",
        &[("type", "enrollment.verify")],
        1.0,
    );
    grew("email2fa_deliveries_total", &[("outcome", "sent")], 1.0);
    grew(
        "email2fa_delivery_attempts_total",
        &[("result", "accepted")],
        1.0,
    );
    grew(
        "email2fa_smtp_send_duration_seconds_count",
        &[("result", "accepted")],
        1.0,
    );
    grew("email2fa_delivery_end_to_end_seconds_count", &[], 1.0);
    for gauge in [
        "email2fa_queue_depth",
        "email2fa_queue_oldest_pending_age_seconds",
        "email2fa_queue_oldest_unsent_age_seconds",
        "email2fa_dead_letters",
        "email2fa_dead_letters_created_total",
        "email2fa_smtp_providers_unhealthy",
    ] {
        assert!(
            after.samples.iter().any(|s| s.metric == gauge),
            "{gauge} is exported"
        );
    }
    assert!(
        after.docs.contains_key("email2fa_webhooks_total"),
        "metrics carry their HELP"
    );
}

#[test]
fn a_worker_process_serves_its_metrics_on_the_metrics_listener() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("dir");
    let mut child =
        common::process::email2fa(dir.path(), &[("EMAIL2FA_METRICS_LISTEN", "127.0.0.1:0")])
            .arg("worker")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn email2fa worker");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut url = None;
    for line in stderr.lines().map_while(Result::ok) {
        if let Some(at) = line.find("metrics on http://") {
            let rest = &line[at + "metrics on ".len()..];
            url = Some(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string(),
            );
            break;
        }
    }
    let url = url.expect("the worker logs its metrics address");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = reqwest::blocking::get(&url)
            .and_then(|r| r.text())
            .unwrap_or_default();
        if text.contains("email2fa_queue_depth") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("email2fa_queue_depth{state=\"pending\"} 0"),
        "{text}"
    );
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus exposition");
}
