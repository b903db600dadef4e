//! `email2fa worker` processes against the queue: killed with SIGKILL or
//! stopped with SIGTERM in the middle of a burst, and two processes sharing
//! one queue. Every accepted message arrives; only a send in flight at a
//! SIGKILL may arrive twice.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::Worker;
use common::{TestApp, ingress_only};
use serde_json::json;

const BURST: usize = 300;

/// The environment a worker process needs to share the test app's data.
fn worker_env(app: &TestApp) -> Vec<(&'static str, String)> {
    use secrecy::ExposeSecret;
    let mut env = vec![
        (
            "EMAIL2FA_DATABASE_URL",
            app.settings.database_url.expose().to_string(),
        ),
        ("EMAIL2FA_QUEUE_NAME", app.settings.queue_name.clone()),
        (
            "EMAIL2FA_MASTER_KEY",
            app.settings
                .master_key
                .as_ref()
                .expect("key")
                .expose_secret()
                .to_string(),
        ),
        (
            "EMAIL2FA_DATA_DIR",
            app.settings.data_dir.display().to_string(),
        ),
        ("EMAIL2FA_DELIVERY__LEASE_SECONDS", "3".into()),
        ("EMAIL2FA_DELIVERY__CONCURRENCY", "8".into()),
        (
            "EMAIL2FA_LOG",
            "email2fa=info,email2fa_workers=info,warn".into(),
        ),
    ];
    if let Some(queue) = &app.settings.queue_url {
        env.push(("EMAIL2FA_QUEUE_URL", queue.expose().to_string()));
    }
    env
}

fn start_worker(app: &TestApp, env: &[(&'static str, String)]) -> Worker {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Worker::start(&app.settings.data_dir, &env)
}

/// Queues `n` enrollment emails, one per user, and returns the recipients.
async fn burst(app: &TestApp, n: usize) -> Vec<String> {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    let mut recipients = Vec::with_capacity(n);
    for i in 0..n {
        let email = format!("user{i}@shop.example");
        let answer = app
            .post_signed(
                "enrollment.started",
                json!({"user": {"id": format!("user{i}"), "role": "customer"}, "email": email}),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.json());
        recipients.push(email);
    }
    recipients
}

/// Messages per recipient at the sink.
fn arrivals(app: &TestApp) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in app.sink.messages() {
        for rcpt in message.rcpt_to {
            *counts.entry(rcpt).or_insert(0) += 1;
        }
    }
    counts
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

macro_rules! on_every_queue_without_workers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(ingress_only(TestApp::sqlite()).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = ingress_only(TestApp::postgres()).await {
                    super::$name(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                if let Some(app) = ingress_only(TestApp::redis()).await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

on_every_queue_without_workers!(
    a_worker_killed_mid_burst_loses_nothing_after_a_restart,
    a_worker_stopped_with_sigterm_finishes_its_sends_and_loses_nothing,
    the_sweep_pushes_lost_jobs_again_but_not_a_waiting_backlog,
);

/// The outbox sweep must tell a lost job (the process died between commit
/// and push) from a job that is only waiting its turn in a backlog: pushing
/// the whole backlog again every 10 s doubled the queue's work.
async fn the_sweep_pushes_lost_jobs_again_but_not_a_waiting_backlog(app: TestApp) {
    use email2fa_workers::deliveries::{NewDelivery, insert_delivery, new_delivery_id};
    let engine = email2fa::app::engine(&app.settings, &app.store, &app.queue).expect("engine");
    burst(&app, 3).await;
    // Nobody takes the jobs: after more than the grace period the three
    // deliveries are overdue by the clock, but their jobs still wait.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        engine.sweep_with_grace(1).await.expect("sweep"),
        0,
        "the waiting backlog was pushed again"
    );
    // A delivery due well before the oldest waiting job, with no job at all.
    let lost_at = email2fa::store::Timestamp::now().plus_seconds(-20);
    let lost = NewDelivery {
        id: new_delivery_id(),
        tenant_id: common::TENANT.to_string(),
        kind: "factor_removed",
        user_id: "lost".into(),
        recipient: "lost@shop.example".into(),
        user_name: None,
        locale: None,
        role: "customer".into(),
        challenge_id: None,
        secondary_auth_provider_id: "s1".into(),
        max_attempts: 6,
        not_after: None,
        resent_from: None,
    };
    let mut tx = app.store.begin().await.expect("begin");
    insert_delivery(&mut tx, &lost, lost_at)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(
        engine.sweep_with_grace(1).await.expect("sweep"),
        1,
        "the lost delivery, and only it"
    );
}

async fn a_worker_killed_mid_burst_loses_nothing_after_a_restart(app: TestApp) {
    let recipients = burst(&app, BURST).await;
    let env = worker_env(&app);
    let mut first = start_worker(&app, &env);
    wait_until("a quarter of the burst", Duration::from_secs(60), || {
        app.sink.count() >= BURST / 4
    })
    .await;
    let status = first.signal("KILL");
    assert!(!status.success());
    let in_flight = app
        .count("select count(*) from deliveries where status = 'sending'")
        .await;
    // Each running job holds its delivery's lease: the worker runs
    // `JOBS_PER_SEND` jobs per send slot, so that their claims and records
    // are batched together.
    let running = i64::try_from(8 * email2fa::app::JOBS_PER_SEND).expect("small");
    assert!(
        in_flight <= running,
        "at most one lease per running job was held: {in_flight}"
    );
    let _second = start_worker(&app, &env);
    wait_until("every message", Duration::from_secs(120), || {
        arrivals(&app).len() == BURST
    })
    .await;
    let counts = arrivals(&app);
    for recipient in &recipients {
        assert!(counts.contains_key(recipient), "{recipient} got nothing");
    }
    let duplicates = counts.values().filter(|n| **n > 1).count();
    assert!(
        i64::try_from(duplicates).expect("small") <= in_flight,
        "{duplicates} duplicates but only {in_flight} sends were in flight at the kill"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .count("select count(*) from deliveries where status <> 'sent'")
        .await
        > 0
    {
        assert!(Instant::now() < deadline, "deliveries left unsent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_worker_stopped_with_sigterm_finishes_its_sends_and_loses_nothing(app: TestApp) {
    let recipients = burst(&app, BURST).await;
    let env = worker_env(&app);
    let mut first = start_worker(&app, &env);
    wait_until("a quarter of the burst", Duration::from_secs(60), || {
        app.sink.count() >= BURST / 4
    })
    .await;
    let status = first.signal("TERM");
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    // Its background loops (the outbox sweep; planner statistics on
    // PostgreSQL) ended before the pool was closed under them.
    let log = first.log_tail();
    let stopped = log.find("background tasks stopped");
    let exited = log.find("email2fa workers stopped");
    assert!(
        stopped.is_some() && stopped < exited,
        "the loops stop before the exit; worker log:\n{log}"
    );
    let sending = app
        .count("select count(*) from deliveries where status = 'sending'")
        .await;
    assert_eq!(
        sending,
        0,
        "in-flight sends finished before the exit; worker log:\n{}",
        first.log_tail()
    );
    let sent_by_first = app.sink.count();
    assert!(sent_by_first < BURST, "the stop came mid-burst");
    let _second = start_worker(&app, &env);
    wait_until("every message", Duration::from_secs(120), || {
        app.sink.count() >= BURST
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = arrivals(&app);
    for recipient in &recipients {
        assert_eq!(counts.get(recipient), Some(&1), "{recipient} exactly once");
    }
}

mod two_workers_share_a_burst_and_send_each_message_once {
    use super::*;

    async fn scenario(app: TestApp) {
        let n = 200;
        // Both running before the burst: a worker started first drains a
        // queued burst of 200 before the second one is up.
        let env = worker_env(&app);
        let first = start_worker(&app, &env);
        let second = start_worker(&app, &env);
        burst(&app, n).await;
        wait_until("every message", Duration::from_secs(120), || {
            app.sink.count() >= n
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counts = arrivals(&app);
        assert_eq!(counts.len(), n);
        assert!(counts.values().all(|c| *c == 1), "each message once");
        let (a, b) = (first.sent(), second.sent());
        assert_eq!(a + b, n, "the two processes sent {a} + {b}");
        assert!(a > 0 && b > 0, "both did part of the work: {a} and {b}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(app) = ingress_only(TestApp::postgres()).await {
            scenario(app).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        if let Some(app) = ingress_only(TestApp::redis()).await {
            scenario(app).await;
        }
    }
}
