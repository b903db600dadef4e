//! Group commit at the ingress: concurrent hot webhooks decided and
//! committed in one transaction, on every queue backend. Each app here
//! lingers 100 ms for more webhooks after the first of a batch, so that a
//! burst sent at once lands in one batch; rows a batch writes share its
//! time, which is how the tests see that they did.

mod common;

use std::sync::Arc;

use common::TestApp;
use serde_json::{Value, json};

/// Runs each scenario on SQLite, PostgreSQL and PostgreSQL + Redis, with
/// a lingering batcher.
macro_rules! lingering_on_every_queue {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            fn linger(settings: &mut email2fa::settings::Settings) {
                settings.ingest.linger_us = 100_000;
                // Two lanes (the default is one), so that the webhooks of
                // a burst also meet across lanes.
                settings.ingest.lanes = 2;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::TestApp::sqlite_with(linger).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = crate::common::TestApp::postgres_with(linger).await {
                    super::$name(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                if let Some(app) = crate::common::TestApp::redis_with(linger).await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

lingering_on_every_queue!(
    a_burst_of_logins_for_one_user_applies_the_limits_in_order,
    the_same_webhook_id_twice_in_one_batch_runs_once,
    a_refused_webhook_writes_nothing_and_the_rest_of_its_batch_commits,
    a_batch_that_cannot_commit_answers_503_for_every_webhook_and_writes_nothing,
);

fn customer(id: &str) -> Value {
    json!({"id": id, "role": "customer", "email": format!("{id}@shop.example")})
}

async fn ready(app: &TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true, "resend_cooldown_seconds": 0}))
        .await;
}

/// Posts every `(webhook-id, event type, data)` at once; the statuses and
/// bodies in the same order.
async fn burst(
    app: &Arc<TestApp>,
    calls: Vec<(String, &'static str, Value)>,
) -> Vec<(u16, Value, bool)> {
    let tasks = calls.into_iter().map(|(id, event_type, data)| {
        let app = Arc::clone(app);
        tokio::spawn(async move {
            let answer = app.post_signed_with_id(&id, event_type, data).await;
            let replayed = answer.header("idempotent-replayed") == Some("true");
            (answer.status, answer.json(), replayed)
        })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect()
}

fn fresh_id() -> String {
    format!("msg_{}", ulid::Ulid::generate())
}

async fn a_burst_of_logins_for_one_user_applies_the_limits_in_order(app: TestApp) {
    ready(&app).await;
    // Enrolled by hand: the factor alone, no code sent yet.
    let enrolled = app
        .post_signed(
            "enrollment.started",
            json!({"user": customer("c1"), "email": "c1@shop.example"}),
        )
        .await;
    assert_eq!(enrolled.status, 200);
    let challenge = enrolled.json()["challenge_id"]
        .as_str()
        .expect("id")
        .to_string();
    let code = common::code_in(&app.mail_for("c1@shop.example", 1).await);
    let verified = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await;
    assert_eq!(verified.json()["outcome"], "verified");
    let app = Arc::new(app);
    let calls = (0..8)
        .map(|_| (fresh_id(), "login.started", json!({"user": customer("c1")})))
        .collect();
    let answers = burst(&app, calls).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _, _)| *s).collect();
    // Five codes per user per 15 minutes, one of them the enrollment's.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{answers:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        4,
        "{answers:?}"
    );
    assert_eq!(
        app.count("select count(distinct created_at) from challenges where purpose = 'login'")
            .await,
        1,
        "the four challenges were written by one batch"
    );
    // Each superseded the one before; only the last answered is pending.
    assert_eq!(
        app.count("select count(*) from challenges where purpose = 'login' and status = 'pending'")
            .await,
        1
    );
    assert_eq!(
        app.count(
            "select count(*) from challenges where purpose = 'login' and status = 'superseded'"
        )
        .await,
        3
    );
    assert_eq!(app.count("select count(*) from login_decisions").await, 4);
    assert_eq!(app.count("select count(*) from deliveries").await, 5);
    // The pending challenge's code is the one that arrives and verifies.
    let pending: Vec<String> = answers
        .iter()
        .filter(|(s, _, _)| *s == 200)
        .map(|(_, body, _)| body["challenge_id"].as_str().expect("id").to_string())
        .collect();
    let mut verified = 0;
    for challenge in &pending {
        let status = app
            .post_signed(
                "login.verify",
                json!({"challenge_id": challenge, "code": "000000"}),
            )
            .await
            .json();
        if status["outcome"] == "invalid_code" {
            verified += 1;
        }
    }
    assert_eq!(verified, 1, "only the newest challenge still takes codes");
}

async fn the_same_webhook_id_twice_in_one_batch_runs_once(app: TestApp) {
    ready(&app).await;
    let app = Arc::new(app);
    let id = fresh_id();
    let data = json!({"user": customer("c1"), "email": "c1@shop.example"});
    let calls = vec![
        (id.clone(), "enrollment.started", data.clone()),
        (id.clone(), "enrollment.started", data),
        (
            id.clone(),
            "enrollment.started",
            json!({"user": customer("c2"), "email": "c2@shop.example"}),
        ),
        (
            fresh_id(),
            "enrollment.started",
            json!({"user": customer("c3"), "email": "c3@shop.example"}),
        ),
    ];
    let answers = burst(&app, calls).await;
    // Whichever of the three with the same id the lane saw first runs; the
    // others replay it (the same body) or are refused (another body).
    let same_id = &answers[..3];
    let fresh: Vec<usize> = (0..3)
        .filter(|&i| same_id[i].0 == 200 && !same_id[i].2)
        .collect();
    assert_eq!(fresh.len(), 1, "exactly one runs: {answers:?}");
    let winner = fresh[0];
    for (i, (status, body, replayed)) in same_id.iter().enumerate() {
        if i == winner {
            continue;
        }
        let same_body = (i < 2) == (winner < 2);
        if same_body {
            assert_eq!((*status, *replayed), (200, true), "{answers:?}");
            assert_eq!(
                body, &same_id[winner].1,
                "the duplicate gets the first answer"
            );
        } else {
            assert_eq!(*status, 409, "{answers:?}");
            assert_eq!(body["code"], "webhook_id_conflict");
        }
    }
    assert_eq!(answers[3].0, 200);
    assert_eq!(app.count("select count(*) from challenges").await, 2);
    assert_eq!(
        app.count("select count(distinct created_at) from challenges")
            .await,
        1,
        "both challenges were written by one batch"
    );
    assert_eq!(app.count("select count(*) from deliveries").await, 2);
    assert_eq!(
        app.count("select count(*) from webhook_receipts where event_type = 'enrollment.started'")
            .await,
        2
    );
}

async fn a_refused_webhook_writes_nothing_and_the_rest_of_its_batch_commits(app: TestApp) {
    ready(&app).await;
    let app = Arc::new(app);
    let calls = vec![
        (
            fresh_id(),
            "enrollment.started",
            json!({"user": customer("c1"), "email": "c1@shop.example"}),
        ),
        // Not allowed: admin 2FA is Inactive.
        (
            fresh_id(),
            "enrollment.started",
            json!({"user": {"id": "a1", "role": "admin", "email": "a1@shop.example"}}),
        ),
        // No such challenge.
        (
            fresh_id(),
            "login.verify",
            json!({"challenge_id": "01KC0000000000000000000000", "code": "123456"}),
        ),
        (
            fresh_id(),
            "enrollment.started",
            json!({"user": customer("c2"), "email": "c2@shop.example"}),
        ),
    ];
    let answers = burst(&app, calls).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(statuses, [200, 403, 404, 200], "{answers:?}");
    assert_eq!(answers[1].1["code"], "not_allowed");
    assert_eq!(answers[2].1["code"], "challenge_not_found");
    assert_eq!(app.count("select count(*) from challenges").await, 2);
    assert_eq!(
        app.count("select count(*) from challenges where user_id = 'a1'")
            .await,
        0
    );
    assert_eq!(
        app.count("select count(distinct created_at) from challenges")
            .await,
        1
    );
    assert_eq!(
        app.count("select count(*) from audit_events where user_id = 'a1'")
            .await,
        0
    );
    assert_eq!(
        app.count("select count(*) from webhook_receipts where event_type <> 'enrollment.started'")
            .await,
        3,
        "the Services Manager's three webhooks; refused ones leave no receipt"
    );
}

async fn a_batch_that_cannot_commit_answers_503_for_every_webhook_and_writes_nothing(app: TestApp) {
    ready(&app).await;
    let observer = email2fa::app::open_store(&app.settings)
        .await
        .expect("observer");
    app.store.db().close().await;
    let app = Arc::new(app);
    let calls = (1..=3)
        .map(|n| {
            let user = format!("c{n}");
            (
                fresh_id(),
                "enrollment.started",
                json!({"user": customer(&user), "email": format!("{user}@shop.example")}),
            )
        })
        .collect();
    let answers = burst(&app, calls).await;
    for (status, body, _) in &answers {
        assert_eq!(*status, 503, "{answers:?}");
        assert_eq!(body["code"], "unavailable");
    }
    let counts: Vec<i64> = email2fa_db::with_db!(observer.db(), pool => {
        let mut counts = Vec::new();
        for sql in ["select count(*) from challenges", "select count(*) from deliveries",
                    "select count(*) from webhook_receipts where event_type = 'enrollment.started'"] {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.expect("count");
            counts.push(n);
        }
        counts
    });
    assert_eq!(counts, [0, 0, 0]);
}

/// Two ingress processes (two pools and caches) on one PostgreSQL database:
/// a settings change through one is heard by the other at once, not when
/// its cached copy of the tenant's settings expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_change_reaches_the_other_ingress_processes_cache_at_once() {
    let Some(app) = TestApp::postgres().await else {
        return;
    };
    ready(&app).await;
    let other = app.second_ingress().await;
    let login = || async {
        let data = json!({"user": customer("c1")});
        app.post_signed_to(&other, "login.started", data)
            .await
            .json()
    };
    // The other process caches the tenant: customers have 2FA, c1 has none.
    assert_eq!(login().await["reason"], "not_enrolled");
    let off = app
        .post_signed("settings.updated", json!({"customer_2fa_allowed": false}))
        .await;
    assert_eq!(off.status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let reason = login().await["reason"].clone();
        if reason == "2fa_inactive" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other process still uses its cached settings: {reason}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Two ingress processes on one PostgreSQL database, each batching eight
/// enrollments of different users to one address (in four spellings) at
/// the same moment: the per-address limit (ten codes per hour) holds across
/// the two batches. Each batch locks the address before it counts its
/// sends, so the second counts the first's eight and admits two; without
/// the lock both would count none and send sixteen codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_of_two_processes_share_one_address_limit() {
    let Some(app) = TestApp::postgres_with(|s| s.ingest.linger_us = 100_000).await else {
        return;
    };
    ready(&app).await;
    let other = app.second_ingress().await;
    let app = Arc::new(app);
    let spellings = [
        "shared@shop.example",
        "Shared@shop.example",
        "SHARED@SHOP.EXAMPLE",
        "shared@Shop.Example",
    ];
    let tasks = (0..16).map(|n| {
        let app = Arc::clone(&app);
        let base = (n % 2 == 1).then(|| other.clone());
        let data = json!({
            "user": customer(&format!("c{n}")),
            "email": spellings[n % spellings.len()],
        });
        tokio::spawn(async move {
            match base {
                Some(base) => {
                    app.post_signed_to(&base, "enrollment.started", data)
                        .await
                        .status
                }
                None => app.post_signed("enrollment.started", data).await.status,
            }
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(app.count("select count(*) from deliveries").await, 10);
}

/// Under load that never lets the lanes go quiet, PostgreSQL still learns
/// how the tables grow: a lane's session reports its table statistics only
/// while it waits outside a transaction, and a lane begins each batch's
/// transaction with the previous commit. Without those reports the tables
/// are never analyzed, and the plans made while they were empty (a scan of
/// a whole table for each batch) stay. The lanes must end a transaction
/// without beginning the next at least every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_statistics_reach_postgres_while_the_lanes_are_busy() {
    let Some(app) = TestApp::postgres().await else {
        return;
    };
    ready(&app).await;
    let app = Arc::new(app);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posters: Vec<_> = (0..8)
        .map(|task| {
            let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("busy{task}x{n}");
                    let data =
                        json!({"user": customer(&id), "email": format!("{id}@shop.example")});
                    let status = app.post_signed("enrollment.started", data).await.status;
                    assert_eq!(status, 200);
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let reported = app
        .count(
            "select coalesce(sum(n_tup_ins), 0)::bigint from pg_stat_user_tables \
             where schemaname = 'email2fa' and relname = 'challenges'",
        )
        .await;
    let written = app.count("select count(*) from challenges").await;
    eprintln!("PostgreSQL knows of {reported} of the {written} challenges written");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for poster in posters {
        poster.await.expect("poster");
    }
    assert!(written >= 50, "only {written} enrollments in 3.5 s");
    assert!(
        reported * 4 >= written,
        "PostgreSQL knows of {reported} of the {written} challenges written"
    );
}
