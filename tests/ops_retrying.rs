//! The on-call engineer's views beside the dead letters: emails in backoff
//! (`GET /ops/retrying`) and "retry now", one delivery in detail with every
//! attempt, the dead letters' filters by reason and provider, bulk resend
//! that leaves permanent rejections out unless asked, and bulk discard.

mod common;

use common::TestApp;
use common::ops::{TOKEN, dead_letters, ops, ready, start_enrollment};
use email2fa::settings::Settings;
use secrecy::SecretString;
use serde_json::{Value, json};

/// The ops token; three attempts a minute apart, so a failed email stays
/// `retrying` for the whole test unless an operator retries it now.
fn slow_retries(settings: &mut Settings) {
    settings.ops_token = Some(SecretString::from(TOKEN));
    settings.delivery.max_attempts = 3;
    settings.delivery.backoff_base_ms = 60_000;
    settings.delivery.backoff_cap_ms = 60_000;
}

/// One attempt per email: an outage or a 550 dead-letters at once.
fn one_attempt(settings: &mut Settings) {
    settings.ops_token = Some(SecretString::from(TOKEN));
    settings.delivery.max_attempts = 1;
}

/// Each test on SQLite, PostgreSQL and Redis (the last two when configured).
macro_rules! on_every_queue_with {
    ($adjust:ident: $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::TestApp::sqlite_with(super::$adjust).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = super::TestApp::postgres_with(super::$adjust).await {
                    super::$name(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                if let Some(app) = super::TestApp::redis_with(super::$adjust).await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

on_every_queue_with!(slow_retries:
    a_retrying_email_shows_its_last_answer_and_retry_now_sends_it,
);
on_every_queue_with!(one_attempt:
    bulk_resend_leaves_permanent_rejections_out_unless_asked_and_bulk_discard_clears_a_filter,
);

async fn get(app: &TestApp, path: &str) -> Value {
    let answer = ops(app, reqwest::Method::GET, path, None).await;
    assert_eq!(answer.status, 200, "{path}: {:?}", answer.json());
    answer.json()
}

async fn post(app: &TestApp, path: &str, body: Option<Value>) -> common::TestResponse {
    ops(app, reqwest::Method::POST, path, body).await
}

async fn a_retrying_email_shows_its_last_answer_and_retry_now_sends_it(app: TestApp) {
    ready(&app).await;
    app.sink.stop().await;
    let (_, delivery) = start_enrollment(&app, "c1").await;
    assert_eq!(app.wait_delivery(&delivery, "retrying").await, "retrying");

    let page = get(&app, "/ops/retrying").await;
    assert_eq!(page["next_cursor"], Value::Null);
    let row = &page["retrying"][0];
    assert_eq!(row["delivery_id"], delivery.as_str(), "{page}");
    assert_eq!(row["recipient"], "c***@shop.example");
    assert_eq!(
        (row["attempts"].as_i64(), row["max_attempts"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(row["provider"], "s1");
    assert_eq!(row["smtp"], format!("127.0.0.1:{}", app.sink.port()));
    assert!(
        row["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{row}"
    );
    let next = chrono::DateTime::parse_from_rfc3339(row["next_attempt_at"].as_str().expect("time"))
        .expect("RFC 3339");
    assert!(next > chrono::Utc::now(), "in backoff: {row}");
    assert!(
        !page.to_string().contains("c1@shop.example"),
        "masked: {page}"
    );
    let queue = get(&app, "/ops/queue").await;
    assert!(
        queue["queues"][0]["oldest_unsent_age_seconds"].is_i64(),
        "{queue}"
    );

    // The same filters as the dead letters; a bad one is named.
    let other = get(&app, "/ops/retrying?provider=s2&kind=login_code").await;
    assert_eq!(other["retrying"], json!([]));
    let bad = ops(
        &app,
        reqwest::Method::GET,
        "/ops/retrying?kind=sms&limit=0",
        None,
    )
    .await;
    let errors = bad.assert_problem(422, "validation_failed")["errors"].clone();
    assert_eq!(errors[0]["field"], "kind", "{errors}");
    ops(
        &app,
        reqwest::Method::GET,
        "/ops/retrying?cursor=nope",
        None,
    )
    .await
    .assert_problem(422, "validation_failed");

    let detail = get(&app, &format!("/ops/deliveries/{delivery}")).await;
    assert_eq!(detail["status"], "retrying");
    assert_eq!(detail["tenant_id"], common::TENANT);
    assert_eq!(detail["smtp"], row["smtp"]);
    assert_eq!(detail["history"][0]["attempt"], 1, "{detail}");
    assert_eq!(detail["history"][0]["result"], "transient");
    assert!(detail["resend"].is_null() && detail["dead_letter"].is_null());

    app.sink.restart().await.expect("sink back");
    let retried = post(&app, &format!("/ops/deliveries/{delivery}/retry"), None).await;
    assert_eq!(
        retried.json(),
        json!({"delivery_id": delivery, "due_now": true})
    );
    assert_eq!(
        app.wait_delivery(&delivery, "sent").await,
        "sent",
        "sent long before its backoff"
    );
    assert!(
        get(&app, "/ops/retrying").await["retrying"]
            .as_array()
            .expect("list")
            .is_empty()
    );

    let detail = get(&app, &format!("/ops/deliveries/{delivery}")).await;
    let results: Vec<&str> = detail["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|a| a["result"].as_str().expect("result"))
        .collect();
    assert_eq!(results, ["transient", "accepted"], "{detail}");
    assert!(
        !detail.to_string().contains("c1@shop.example"),
        "masked: {detail}"
    );

    post(&app, &format!("/ops/deliveries/{delivery}/retry"), None)
        .await
        .assert_problem(409, "not_retrying");
    post(
        &app,
        "/ops/deliveries/01JXXXXXXXXXXXXXXXXXXXXXXX/retry",
        None,
    )
    .await
    .assert_problem(404, "delivery_not_found");
    post(&app, "/ops/deliveries/a%00b/retry", None)
        .await
        .assert_problem(404, "delivery_not_found");
    ops(&app, reqwest::Method::GET, "/ops/deliveries/a%00b", None)
        .await
        .assert_problem(404, "delivery_not_found");
    assert_eq!(
        app.count("select count(*) from audit_events where event = 'delivery_retried_now'")
            .await,
        1
    );
}

async fn bulk_resend_leaves_permanent_rejections_out_unless_asked_and_bulk_discard_clears_a_filter(
    app: TestApp,
) {
    ready(&app).await;
    app.sink.reject_recipient("perm");
    let (_, rejected) = start_enrollment(&app, "perm").await;
    assert_eq!(app.wait_delivery(&rejected, "dead").await, "dead");
    app.sink.stop().await;
    let (challenge, exhausted) = start_enrollment(&app, "c1").await;
    assert_eq!(app.wait_delivery(&exhausted, "dead").await, "dead");

    let only = |reason: &str| format!("?reason={reason}");
    let permanent = dead_letters(&app, &only("rejected")).await;
    assert_eq!(permanent.len(), 1);
    assert_eq!(permanent[0]["delivery_id"], rejected.as_str());
    let page = get(&app, "/ops/dead-letters?provider=s1").await;
    assert_eq!(
        (
            page["matching"].as_i64(),
            page["matching_permanent"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert!(dead_letters(&app, "?provider=s2").await.is_empty());
    let bad = ops(
        &app,
        reqwest::Method::GET,
        "/ops/dead-letters?reason=bounced",
        None,
    )
    .await;
    assert_eq!(
        bad.assert_problem(422, "validation_failed")["errors"][0]["field"],
        "reason"
    );

    // The detail says why it died and that a resend would be accepted.
    let detail = get(&app, &format!("/ops/deliveries/{rejected}")).await;
    assert_eq!(detail["dead_letter"]["reason"], "rejected", "{detail}");
    assert_eq!(detail["resend"]["possible"], true);
    assert!(
        detail["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("550") && !e.contains("perm@shop.example")),
        "{detail}"
    );

    app.sink.restart().await.expect("sink back");
    let bulk = post(&app, "/ops/dead-letters/resend", Some(json!({})))
        .await
        .json();
    assert_eq!(bulk["left_out_permanent"], 1, "{bulk}");
    assert_eq!(bulk["resent"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        bulk["resent"][0]["id"],
        common::ops::letter_of(&page, &exhausted)
    );
    let resent = bulk["resent"][0]["delivery_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(app.wait_delivery(&resent, "sent").await, "sent");
    assert_eq!(
        dead_letters(&app, "").await.len(),
        1,
        "the 550 is still listed"
    );

    // The old delivery is `resent`, its letter resolved.
    let old = get(&app, &format!("/ops/deliveries/{exhausted}")).await;
    assert_eq!(old["status"], "resent");
    assert_eq!(old["challenge_id"], challenge.as_str());
    assert_eq!(old["dead_letter"]["resolution"], "resent", "{old}");
    assert!(old["resend"].is_null());

    // Asked for explicitly, the 550 is resent, and comes straight back.
    let asked = post(
        &app,
        "/ops/dead-letters/resend",
        Some(json!({"reason": "rejected", "include_permanent": true})),
    )
    .await
    .json();
    assert_eq!(asked["resent"].as_array().map(Vec::len), Some(1), "{asked}");
    assert_eq!(asked["left_out_permanent"], 0);
    let again = asked["resent"][0]["delivery_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(app.wait_delivery(&again, "dead").await, "dead");

    post(
        &app,
        "/ops/dead-letters/discard",
        Some(json!({"reason": "sms"})),
    )
    .await
    .assert_problem(422, "validation_failed");
    let discarded = post(
        &app,
        "/ops/dead-letters/discard",
        Some(json!({"reason": "rejected"})),
    )
    .await
    .json();
    assert_eq!(
        discarded["discarded"].as_array().map(Vec::len),
        Some(1),
        "{discarded}"
    );
    assert!(dead_letters(&app, "").await.is_empty());
    assert_eq!(app.delivery_status(&again).await, "discarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_ops_calls_need_the_token_and_refuse_other_sites() {
    let app = TestApp::sqlite_with(one_attempt).await;
    for (method, path) in [
        ("GET", "/ops/retrying"),
        ("GET", "/ops/deliveries/01JXXXXXXXXXXXXXXXXXXXXXXX"),
        ("POST", "/ops/deliveries/01JXXXXXXXXXXXXXXXXXXXXXXX/retry"),
        ("POST", "/ops/dead-letters/discard"),
        ("GET", "/ops?reason=rejected"),
    ] {
        let method: reqwest::Method = method.parse().expect("method");
        let answer = common::ops::collect(
            app.client
                .request(method.clone(), format!("{}{path}", app.base))
                .bearer_auth("wrong-token-wrong-token")
                .send()
                .await
                .expect("request"),
        )
        .await;
        answer.assert_problem(401, "unauthorized");
        if method != reqwest::Method::GET {
            let forged = app
                .client
                .request(method, format!("{}{path}", app.base))
                .basic_auth("operator", Some(TOKEN))
                .header("sec-fetch-site", "cross-site")
                .send()
                .await
                .expect("request");
            assert_eq!(forged.status(), 403, "{path}");
        }
    }
    let bad = ops(&app, reqwest::Method::GET, "/ops?kind=sms", None).await;
    bad.assert_problem(422, "validation_failed");
    let doc = app.get("/openapi.json").await.json();
    for path in [
        "/ops/retrying",
        "/ops/deliveries/{id}",
        "/ops/deliveries/{id}/retry",
        "/ops/dead-letters/discard",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
}
