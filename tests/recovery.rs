//! Recovery from a Redis server that goes away: a private `redis-server`
//! ([`common::redis_server`]) is killed and started again empty, as a
//! server without persistence restarts. Every queued email is pushed again
//! about a second after it is back, and new emails go out at once.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{TestApp, ingress_only};
use serde_json::json;

/// Starts an enrollment for `user`, retrying while the ingress answers 503
/// (its Redis connection coming back), and returns when it was accepted.
async fn enrollment(app: &TestApp, user: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = app
            .post_signed(
                "enrollment.started",
                json!({"user": {"id": user, "role": "customer"}, "email": format!("{user}@shop.example")}),
            )
            .await;
        if answer.status == 200 {
            return Instant::now();
        }
        assert_eq!(answer.status, 503, "{:?}", answer.json());
        assert!(Instant::now() < deadline, "Redis did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs waiting in the queue's Redis keys (due now or scheduled).
fn jobs_in_redis(app: &TestApp, url: &str) -> usize {
    let client = redis::Client::open(url).expect("url");
    let Ok(mut conn) = client.get_connection() else {
        return 0;
    };
    let queue = &app.settings.queue_name;
    let scheduled: usize = redis::cmd("ZCARD")
        .arg(format!("{queue}:scheduled"))
        .query(&mut conn)
        .unwrap_or(0);
    let active: usize = redis::cmd("LLEN")
        .arg(format!("{queue}:active"))
        .query(&mut conn)
        .unwrap_or(0);
    scheduled + active
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Before: the jobs came back only through the outbox sweep, 30 s after
/// they fell due (the last of them 46 s after Redis was back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_lost_with_a_redis_server_are_pushed_again_as_soon_as_it_is_back() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let app = ingress_only(TestApp::redis_at(redis.url(), |_| {})).await;
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    // The sweep and the loss checks as every worker process runs them, but
    // no worker takes the jobs yet.
    let engine = email2fa::app::engine(&app.settings, &app.store, &app.queue).expect("engine");
    let (_stop, shutdown) = email2fa::app::Shutdown::new();
    let sweeper = engine.clone();
    let sweep_stop = shutdown.clone();
    tokio::spawn(async move {
        sweeper
            .run_sweeper(Duration::from_secs(10), sweep_stop.wait())
            .await;
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let emails = 30;
    for i in 0..emails {
        enrollment(&app, &format!("u{i}")).await;
    }
    let url = redis.url();
    assert_eq!(jobs_in_redis(&app, &url), emails, "every job waits");

    redis.restart().await;
    let back = Instant::now();
    wait_until("the jobs pushed again", Duration::from_secs(5), || {
        jobs_in_redis(&app, &url) >= emails
    })
    .await;
    let repushed = back.elapsed();
    let background = app.application.as_ref().expect("running").background();
    let _workers = email2fa::app::start_workers(
        &app.settings,
        engine,
        app.queue.clone(),
        shutdown,
        background,
    );
    let arrived = app.sink.wait_for(emails, Duration::from_secs(20)).await;
    assert_eq!(arrived.len(), emails, "every email arrived");
    eprintln!(
        "Redis back: jobs pushed again after {repushed:?}, every email arrived after {:?}",
        back.elapsed()
    );
}

/// Before: a new email waited up to 7 s after Redis was back, while the
/// worker that had failed waited out its restart delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_emails_go_out_within_a_second_of_redis_coming_back() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let app = TestApp::redis_at(redis.url(), |_| {}).await;
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    enrollment(&app, "before").await;
    app.mail_for("before@shop.example", 1).await;

    redis.kill();
    // Long enough for the worker's restart delay to grow to its longest.
    tokio::time::sleep(Duration::from_secs(9)).await;
    redis.restart().await;
    let back = Instant::now();
    let accepted = enrollment(&app, "after").await;
    app.mail_for("after@shop.example", 1).await;
    let waited = accepted.elapsed();
    eprintln!(
        "the first email after Redis came back waited {waited:?} after its webhook was \
         accepted, {:?} after Redis answered",
        back.elapsed()
    );
    assert!(
        waited < Duration::from_millis(1_500),
        "the new email waited {waited:?}"
    );
}
