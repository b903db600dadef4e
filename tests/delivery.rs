//! The delivery engine end to end against a real SMTP server (the sink) on
//! all three queue backends: retries with growing delays, dead letters,
//! an SMTP outage, and the promise that no code rests anywhere.

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, code_in};
use email2fa_testkit::sink::Fault;
use serde_json::json;

async fn ready(app: &TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
}

async fn start_enrollment(app: &TestApp, user: &str) -> (String, String) {
    let answer = app
        .post_signed("enrollment.started", json!({"user": {"id": user, "role": "customer"}, "email": format!("{user}@shop.example")}))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    let body = answer.json();
    (
        body["challenge_id"].as_str().expect("id").into(),
        body["delivery_id"].as_str().expect("id").into(),
    )
}

async fn attempts_and_status(app: &TestApp, delivery: &str) -> (i32, String) {
    email2fa_db::with_db!(app.store.db(), pool => sqlx::query_as(
        "select attempts, status from deliveries where id = $1").bind(delivery).fetch_one(pool).await.expect("row"))
}

on_every_queue!(
    a_message_refused_twice_with_451_arrives_on_the_third_attempt,
    a_550_goes_straight_to_the_dead_letters,
    an_smtp_outage_of_a_few_seconds_delays_but_loses_nothing,
    no_code_rests_in_the_queue_the_deliveries_or_the_challenges,
    a_changed_provider_takes_effect_for_the_next_email,
    rejected_credentials_wait_the_longest_delay_instead_of_burning_attempts,
    a_retry_after_its_provider_was_deleted_goes_through_the_tenants_first,
    an_email_whose_challenge_was_replaced_while_it_waited_is_discarded,
    a_code_sent_again_without_the_user_asking_leaves_the_first_copy_valid,
);

async fn a_message_refused_twice_with_451_arrives_on_the_third_attempt(app: TestApp) {
    ready(&app).await;
    app.sink.fail_next(2, Fault::TempFail);
    let (challenge, delivery) = start_enrollment(&app, "u1").await;
    // Watch the row: the time each attempt starts.
    let mut starts: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (attempts, status) = attempts_and_status(&app, &delivery).await;
        while starts.len() < usize::try_from(attempts).expect("attempts") {
            starts.push(Instant::now());
        }
        if status == "sent" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after {attempts} attempts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(starts.len(), 3, "sent on the third attempt");
    let first_gap = starts[1] - starts[0];
    let second_gap = starts[2] - starts[1];
    assert!(
        first_gap >= Duration::from_millis(1500),
        "backoff starts near 2 s: {first_gap:?}"
    );
    assert!(
        second_gap >= first_gap,
        "the delay grows: {first_gap:?} then {second_gap:?}"
    );
    assert_eq!(app.sink.stats().temp_fails, 2);
    // Each attempt minted a fresh code; the one that arrived works.
    let code = code_in(&app.mail_for("u1@shop.example", 1).await);
    let verified = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await;
    assert_eq!(verified.json()["outcome"], "verified");
    let reply: (Option<String>, Option<String>) = email2fa_db::with_db!(app.store.db(), pool => sqlx::query_as(
        "select smtp_reply, message_id from deliveries where id = $1").bind(&delivery).fetch_one(pool).await.expect("row"));
    assert!(reply.0.expect("reply").starts_with("250"));
    assert!(reply.1.expect("message id").contains("@acme.example"));
}

async fn a_550_goes_straight_to_the_dead_letters(app: TestApp) {
    ready(&app).await;
    app.sink.fail_next(1, Fault::Reject);
    let (_, delivery) = start_enrollment(&app, "u1").await;
    assert_eq!(app.wait_delivery(&delivery, "dead").await, "dead");
    let (attempts, _) = attempts_and_status(&app, &delivery).await;
    assert_eq!(attempts, 1);
    let letter: (String, i32, Option<String>, String) = email2fa_db::with_db!(app.store.db(), pool => sqlx::query_as(
        "select reason, attempts, last_error, recipient from dead_letters where delivery_id = $1")
        .bind(&delivery).fetch_one(pool).await.expect("dead letter"));
    assert_eq!(letter.0, "rejected");
    assert_eq!(letter.1, 1);
    assert!(letter.2.expect("error").contains("550"));
    assert_eq!(letter.3, "u1@shop.example");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        attempts_and_status(&app, &delivery).await.0,
        1,
        "no further attempts"
    );
    assert_eq!(app.sink.count(), 0);
}

async fn an_smtp_outage_of_a_few_seconds_delays_but_loses_nothing(app: TestApp) {
    ready(&app).await;
    app.sink.stop().await;
    let mut deliveries = Vec::new();
    for i in 0..10 {
        deliveries.push(start_enrollment(&app, &format!("u{i}")).await.1);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.sink.count(), 0);
    app.sink.restart().await.expect("restart");
    let arrived = app.sink.wait_for(10, Duration::from_secs(40)).await;
    assert_eq!(arrived.len(), 10);
    for delivery in &deliveries {
        assert_eq!(app.wait_delivery(delivery, "sent").await, "sent");
    }
    let retried = app
        .count("select count(*) from deliveries where attempts > 1")
        .await;
    assert!(retried > 0, "the outage cost attempts");
    assert_eq!(app.count("select count(*) from dead_letters").await, 0);
}

async fn no_code_rests_in_the_queue_the_deliveries_or_the_challenges(app: TestApp) {
    ready(&app).await;
    app.post_signed("settings.updated", json!({"code_length": 10}))
        .await;
    let (_, delivery) = start_enrollment(&app, "u1").await;
    let code = code_in(&app.mail_for("u1@shop.example", 1).await);
    assert_eq!(code.len(), 10);
    app.sink.fail_next(1, Fault::Reject);
    let (_, dead) = start_enrollment(&app, "u2").await;
    assert_eq!(app.wait_delivery(&dead, "dead").await, "dead");
    assert_eq!(app.wait_delivery(&delivery, "sent").await, "sent");
    let stored = common::everything_stored(&app).await;
    assert!(
        stored.len() > 1000,
        "the dump holds the data ({} bytes)",
        stored.len()
    );
    assert!(
        stored.contains(&delivery),
        "the dump includes the deliveries"
    );
    assert!(!stored.contains(&code), "the code rests nowhere");
}

async fn a_changed_provider_takes_effect_for_the_next_email(app: TestApp) {
    ready(&app).await;
    let (_, first) = start_enrollment(&app, "u1").await;
    assert_eq!(app.wait_delivery(&first, "sent").await, "sent");
    let other = email2fa_testkit::sink::SmtpSink::start()
        .await
        .expect("sink");
    let moved = app
        .post_signed("service_provider.upserted", json!({"id": "p1", "title": "Moved", "kind": "smtp",
            "smtp": {"host": "127.0.0.1", "port": other.port(), "security": "none", "from_address": "shop@acme.example"}}))
        .await;
    assert_eq!(moved.status, 200);
    let (_, second) = start_enrollment(&app, "u2").await;
    assert_eq!(app.wait_delivery(&second, "sent").await, "sent");
    assert_eq!(other.count(), 1, "the new server got the second email");
    assert_eq!(app.sink.count(), 1, "the old one only the first");
}

async fn rejected_credentials_wait_the_longest_delay_instead_of_burning_attempts(app: TestApp) {
    ready(&app).await;
    app.sink.require_auth("shop", "right-password");
    let upsert = app
        .post_signed("service_provider.upserted", json!({"id": "p1", "title": "Sink", "kind": "smtp",
            "smtp": {"host": "127.0.0.1", "port": app.sink.port(), "security": "none",
                     "username": "shop", "password": "wrong-password", "from_address": "shop@acme.example"}}))
        .await;
    assert_eq!(upsert.status, 200);
    let (_, delivery) = start_enrollment(&app, "u1").await;
    assert_eq!(app.wait_delivery(&delivery, "retrying").await, "retrying");
    let (next, error): (email2fa::store::Timestamp, Option<String>) = email2fa_db::with_db!(app.store.db(), pool => sqlx::query_as(
        "select next_attempt_at, last_error from deliveries where id = $1").bind(&delivery).fetch_one(pool).await.expect("row"));
    assert!(error.expect("error").contains("535"));
    let wait = next.unix_seconds() - email2fa::store::Timestamp::now().unix_seconds();
    assert!(
        wait >= 50,
        "the next attempt waits the cap (60 s), not 2 s: {wait}"
    );
    assert_eq!(
        attempts_and_status(&app, &delivery).await.0,
        0,
        "a 535 gives its attempt back"
    );
    // Fixing the password lets the next email through at once.
    let fixed = app
        .post_signed("service_provider.upserted", json!({"id": "p1", "title": "Sink", "kind": "smtp",
            "smtp": {"host": "127.0.0.1", "port": app.sink.port(), "security": "none",
                     "username": "shop", "password": "right-password", "from_address": "shop@acme.example"}}))
        .await;
    assert_eq!(fixed.status, 200);
    let (_, next_delivery) = start_enrollment(&app, "u2").await;
    assert_eq!(app.wait_delivery(&next_delivery, "sent").await, "sent");
}

/// The secondary auth provider of a waiting email was deleted: its retry
/// goes through the tenant's first remaining provider, with a code that
/// verifies.
async fn a_retry_after_its_provider_was_deleted_goes_through_the_tenants_first(app: TestApp) {
    ready(&app).await;
    let other = email2fa_testkit::sink::SmtpSink::start()
        .await
        .expect("sink");
    let p2 = app
        .post_signed("service_provider.upserted", json!({"id": "p2", "title": "Other", "kind": "smtp",
            "smtp": {"host": "127.0.0.1", "port": other.port(), "security": "none", "from_address": "other@acme.example"}}))
        .await;
    assert_eq!(p2.status, 200, "{:?}", p2.json());
    let s2 = app
        .post_signed(
            "secondary_auth_provider.upserted",
            json!({"id": "s2", "title": "Backup", "service_provider_id": "p2"}),
        )
        .await;
    assert_eq!(s2.status, 200, "{:?}", s2.json());
    app.sink.fail_next(1, Fault::TempFail);
    let (challenge, delivery) = start_enrollment(&app, "u1").await;
    assert_eq!(app.wait_delivery(&delivery, "retrying").await, "retrying");
    let gone = app
        .post_signed("secondary_auth_provider.deleted", json!({"id": "s1"}))
        .await;
    assert_eq!(gone.json(), json!({"id": "s1", "deleted": true}));
    assert_eq!(app.wait_delivery(&delivery, "sent").await, "sent");
    let mail = other.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(mail.len(), 1, "the retry went through p2");
    assert_eq!(app.sink.count(), 0, "p1's server accepted nothing");
    let verified = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": challenge, "code": code_in(&mail[0])}),
        )
        .await;
    assert_eq!(verified.status, 200, "{:?}", verified.json());
    assert_eq!(verified.json()["outcome"], "verified");
}

/// A new "Add" replaced the challenge while its first email waited for a
/// retry: that email is discarded, and only the new code is mailed.
async fn an_email_whose_challenge_was_replaced_while_it_waited_is_discarded(app: TestApp) {
    ready(&app).await;
    app.sink.fail_next(1, Fault::TempFail);
    let (_, first) = start_enrollment(&app, "u1").await;
    assert_eq!(app.wait_delivery(&first, "retrying").await, "retrying");
    let (_, second) = start_enrollment(&app, "u1").await;
    assert_eq!(app.wait_delivery(&second, "sent").await, "sent");
    assert_eq!(app.wait_delivery(&first, "discarded").await, "discarded");
    assert_eq!(app.sink.count(), 1, "only the second code was mailed");
}

/// Sends a delivery that went out once a second time, as after a worker
/// killed between the SMTP server's acceptance and recording `sent`: the
/// row is `sending` with its lease run out, and its job comes again.
async fn send_again_as_after_a_crash(app: &TestApp, delivery: &str, recipient: &str, n: usize) {
    assert_eq!(app.wait_delivery(delivery, "sent").await, "sent");
    let expired = email2fa::store::Timestamp::now().plus_seconds(-1);
    email2fa_db::with_db!(app.store.db(), pool => sqlx::query(
        "update deliveries set status = 'sending', lease_until = $2 where id = $1")
        .bind(delivery).bind(expired).execute(pool).await.map(drop).expect("update"));
    let job = email2fa_workers::queue::EmailJob {
        delivery_id: delivery.to_string(),
    };
    app.queue.push(job, None).await.expect("push");
    app.mail_for(recipient, n).await;
}

async fn verify_code(app: &TestApp, challenge: &str, code: &str) -> serde_json::Value {
    app.post_signed(
        "enrollment.verify",
        json!({"challenge_id": challenge, "code": code}),
    )
    .await
    .json()
}

/// A second attempt of the same delivery (a worker died after the SMTP
/// server took the first copy) mints a new code, and the first copy's code
/// keeps working beside it; a wrong code is still one try. "Send New Code"
/// ends both.
async fn a_code_sent_again_without_the_user_asking_leaves_the_first_copy_valid(app: TestApp) {
    ready(&app).await;
    app.post_signed("settings.updated", json!({"resend_cooldown_seconds": 0}))
        .await;
    let (challenge, delivery) = start_enrollment(&app, "u1").await;
    let first = code_in(&app.mail_for("u1@shop.example", 1).await);
    send_again_as_after_a_crash(&app, &delivery, "u1@shop.example", 2).await;
    let wrong = verify_code(&app, &challenge, "000000").await;
    assert_eq!(wrong["attempts_remaining"], 4, "one try: {wrong}");
    let answer = verify_code(&app, &challenge, &first).await;
    assert_eq!(
        answer["outcome"], "verified",
        "the first copy's code: {answer}"
    );

    let (challenge, delivery) = start_enrollment(&app, "u2").await;
    let first = code_in(&app.mail_for("u2@shop.example", 1).await);
    send_again_as_after_a_crash(&app, &delivery, "u2@shop.example", 2).await;
    let second = code_in(&app.mail_for("u2@shop.example", 2).await);
    let resent = app
        .post_signed("challenge.resend", json!({"challenge_id": challenge}))
        .await;
    assert_eq!(resent.status, 200, "{:?}", resent.json());
    let third = code_in(&app.mail_for("u2@shop.example", 3).await);
    for stale in [&first, &second] {
        if *stale != third {
            let answer = verify_code(&app, &challenge, stale).await;
            assert_eq!(answer["outcome"], "invalid_code", "superseded: {answer}");
        }
    }
    assert_eq!(
        verify_code(&app, &challenge, &third).await["outcome"],
        "verified"
    );
}

/// A send that takes longer than its lease keeps the lease (the engine
/// renews it while the send runs), so the outbox sweep leaves it alone and
/// the email goes out once: which is what lets a lease be short, and a
/// killed worker's emails go out soon after it died.
async fn a_send_slower_than_its_lease_keeps_it_and_goes_out_once(app: TestApp) {
    ready(&app).await;
    // Six replies of the sink, 1.2 s each: a send of about 7 s.
    app.sink.set_delay(Duration::from_millis(1_200));
    let (_, delivery) = start_enrollment(&app, "u1").await;
    assert_eq!(app.wait_delivery(&delivery, "sending").await, "sending");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let engine = email2fa::app::engine(&app.settings, &app.store, &app.queue).expect("engine");
    let repushed = engine.sweep_with_grace(0).await.expect("sweep");
    assert_eq!(repushed, 0, "the running send's lease was renewed");
    assert_eq!(app.wait_delivery(&delivery, "sent").await, "sent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.sink.count(), 1, "sent once");
}

mod a_send_slower_than_its_lease_keeps_it_and_goes_out_once {
    use super::TestApp;

    /// A lease of 3 s (renewed every second): the send outlasts it.
    fn short_lease(settings: &mut email2fa::settings::Settings) {
        settings.delivery.lease_seconds = 3;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = TestApp::sqlite_with(short_lease).await;
        super::a_send_slower_than_its_lease_keeps_it_and_goes_out_once(app).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(app) = TestApp::postgres_with(short_lease).await {
            super::a_send_slower_than_its_lease_keeps_it_and_goes_out_once(app).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        if let Some(app) = TestApp::redis_with(short_lease).await {
            super::a_send_slower_than_its_lease_keeps_it_and_goes_out_once(app).await;
        }
    }
}
