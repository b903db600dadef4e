//! The operator's side, end to end: an SMTP outage turns codes into dead
//! letters; after recovery a resend delivers fresh codes that verify; a
//! closed challenge is refused; discard removes; the ops token guards every
//! `/ops` path; `/metrics` is valid Prometheus text that counts the traffic.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::process::run;
use common::{TestApp, TestResponse, code_in};
use email2fa::settings::Settings;
use secrecy::SecretString;
use serde_json::{Value, json};

const TOKEN: &str = "ops-token-for-the-tests-0123456789";

fn ops_settings(settings: &mut Settings) {
    settings.ops_token = Some(SecretString::from(TOKEN));
    settings.delivery.max_attempts = 1;
}

async fn sqlite_app() -> TestApp {
    TestApp::sqlite_with(ops_settings).await
}

async fn postgres_app() -> Option<TestApp> {
    TestApp::postgres_with(ops_settings).await
}

macro_rules! on_both_backends_with_ops {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::sqlite_app().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = super::postgres_app().await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

/// An `/ops` call with the bearer token.
async fn ops(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> TestResponse {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    collect(request.send().await.expect("request")).await
}

async fn collect(response: reqwest::Response) -> TestResponse {
    TestResponse {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.expect("body").to_vec(),
    }
}

async fn ready(app: &TestApp) {
    app.configure_mail(
        json!({"admin_2fa_allowed": true, "customer_2fa_allowed": true,
        "resend_cooldown_seconds": 0}),
    )
    .await;
}

/// "Add" → "Send Code" for a customer; returns (challenge, delivery).
async fn start_enrollment(app: &TestApp, user: &str) -> (String, String) {
    let started = app
        .post_signed(
            "enrollment.started",
            json!({"user": {"id": user, "role": "customer"}, "email": format!("{user}@shop.example")}),
        )
        .await;
    let body = started.json();
    assert_eq!(started.status, 200, "{body}");
    (
        body["challenge_id"]
            .as_str()
            .expect("challenge")
            .to_string(),
        body["delivery_id"].as_str().expect("delivery").to_string(),
    )
}

async fn dead_letters(app: &TestApp, query: &str) -> Vec<Value> {
    let answer = ops(
        app,
        reqwest::Method::GET,
        &format!("/ops/dead-letters{query}"),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    answer.json()["dead_letters"]
        .as_array()
        .expect("list")
        .clone()
}

async fn verify(app: &TestApp, challenge: &str, code: &str) -> Value {
    app.post_signed(
        "enrollment.verify",
        json!({"challenge_id": challenge, "code": code}),
    )
    .await
    .json()
}

on_both_backends_with_ops!(
    an_smtp_outage_leaves_dead_letters_and_a_bulk_resend_after_recovery_delivers_fresh_codes,
    a_closed_challenge_is_refused_and_discard_removes_the_letter,
);

async fn an_smtp_outage_leaves_dead_letters_and_a_bulk_resend_after_recovery_delivers_fresh_codes(
    app: TestApp,
) {
    ready(&app).await;
    app.sink.stop().await;
    let (c1, d1) = start_enrollment(&app, "c1").await;
    assert_eq!(app.wait_delivery(&d1, "dead").await, "dead");
    let (c2, d2) = start_enrollment(&app, "c2").await;
    assert_eq!(app.wait_delivery(&d2, "dead").await, "dead");

    let queue = ops(&app, reqwest::Method::GET, "/ops/queue", None)
        .await
        .json();
    let emails = &queue["queues"][0];
    assert_eq!(emails["name"], "emails");
    assert_eq!(emails["dead"], 2, "{queue}");
    for field in [
        "pending",
        "scheduled",
        "running",
        "done",
        "failed",
        "oldest_pending_age_seconds",
    ] {
        assert!(emails[field].is_i64(), "{field} in {queue}");
    }

    let letters = dead_letters(&app, "").await;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["delivery_id"], d2.as_str(), "newest first");
    assert_eq!(letters[0]["recipient"], "c***@shop.example");
    assert_eq!(letters[0]["kind"], "enrollment_code");
    assert_eq!(letters[0]["tenant_id"], common::TENANT);
    assert_eq!(letters[0]["reason"], "attempts_exhausted");
    assert!(letters[0]["last_error"].is_string() && letters[0]["dead_at"].is_string());
    assert!(
        !String::from_utf8_lossy(
            &ops(&app, reqwest::Method::GET, "/ops/dead-letters", None)
                .await
                .bytes
        )
        .contains("c1@shop.example")
    );
    let page = ops(
        &app,
        reqwest::Method::GET,
        "/ops/dead-letters?limit=1",
        None,
    )
    .await
    .json();
    assert_eq!(page["dead_letters"][0]["delivery_id"], d2.as_str());
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let next = dead_letters(&app, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(next[0]["delivery_id"], d1.as_str());
    assert!(dead_letters(&app, "?kind=login_code").await.is_empty());

    app.sink.restart().await.expect("sink back");
    let bulk = ops(
        &app,
        reqwest::Method::POST,
        "/ops/dead-letters/resend",
        Some(json!({"kind": "enrollment_code"})),
    )
    .await;
    let answer = bulk.json();
    assert_eq!(bulk.status, 200, "{answer}");
    assert_eq!(
        answer["resent"].as_array().expect("resent").len(),
        2,
        "{answer}"
    );
    assert_eq!(answer["refused"], json!([]));

    for (user, challenge) in [("c1", &c1), ("c2", &c2)] {
        let code = code_in(&app.mail_for(&format!("{user}@shop.example"), 1).await);
        assert_eq!(verify(&app, challenge, &code).await["outcome"], "verified");
    }
    assert!(dead_letters(&app, "").await.is_empty());
    assert_eq!(app.delivery_status(&d1).await, "resent");
    assert_eq!(
        app.count(
            "select count(*) from deliveries where resent_from is not null and status = 'sent'"
        )
        .await,
        2
    );
    assert_eq!(
        app.count("select count(*) from dead_letters where resolution = 'resent' and resolved_at is not null").await,
        2
    );
    assert_eq!(
        app.count("select count(*) from audit_events where event = 'dead_letter_resent'")
            .await,
        2
    );
}

async fn a_closed_challenge_is_refused_and_discard_removes_the_letter(app: TestApp) {
    ready(&app).await;
    app.sink.stop().await;
    let (challenge, first) = start_enrollment(&app, "c1").await;
    assert_eq!(app.wait_delivery(&first, "dead").await, "dead");
    // "Send New Code" during the outage: the first letter's code is stale now.
    let resent = app
        .post_signed("challenge.resend", json!({"challenge_id": challenge}))
        .await
        .json();
    let second = resent["delivery_id"]
        .as_str()
        .expect("delivery")
        .to_string();
    assert_eq!(app.wait_delivery(&second, "dead").await, "dead");
    let letters = dead_letters(&app, "").await;
    let id_of = |delivery: &str| {
        letters
            .iter()
            .find(|l| l["delivery_id"] == delivery)
            .and_then(|l| l["id"].as_str())
            .expect("listed")
            .to_string()
    };
    let (stale, current) = (id_of(&first), id_of(&second));

    let refused = ops(
        &app,
        reqwest::Method::POST,
        &format!("/ops/dead-letters/{stale}/resend"),
        None,
    )
    .await;
    refused.assert_problem(409, "challenge_closed");

    app.sink.restart().await.expect("sink back");
    let ok = ops(
        &app,
        reqwest::Method::POST,
        &format!("/ops/dead-letters/{current}/resend"),
        None,
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.json());
    let new_delivery = ok.json()["delivery_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_delivery(&new_delivery, "sent").await, "sent");
    let code = code_in(&app.mail_for("c1@shop.example", 1).await);
    assert_eq!(verify(&app, &challenge, &code).await["outcome"], "verified");

    // Verified: the stale letter is refused in bulk too, and stays listed.
    let bulk = ops(
        &app,
        reqwest::Method::POST,
        "/ops/dead-letters/resend",
        Some(json!({})),
    )
    .await
    .json();
    assert_eq!(bulk["resent"], json!([]));
    assert_eq!(bulk["refused"][0]["id"], stale.as_str());
    assert_eq!(bulk["refused"][0]["code"], "challenge_closed");
    assert_eq!(dead_letters(&app, "").await.len(), 1);

    let discarded = ops(
        &app,
        reqwest::Method::DELETE,
        &format!("/ops/dead-letters/{stale}"),
        None,
    )
    .await;
    assert_eq!(discarded.json(), json!({"id": stale, "discarded": true}));
    assert!(dead_letters(&app, "").await.is_empty());
    assert_eq!(app.delivery_status(&first).await, "discarded");
    ops(
        &app,
        reqwest::Method::DELETE,
        &format!("/ops/dead-letters/{stale}"),
        None,
    )
    .await
    .assert_problem(404, "dead_letter_not_found");
    ops(
        &app,
        reqwest::Method::POST,
        &format!("/ops/dead-letters/{stale}/resend"),
        None,
    )
    .await
    .assert_problem(404, "dead_letter_not_found");
    assert_eq!(
        app.count("select count(*) from audit_events where event = 'dead_letter_discarded'")
            .await,
        1
    );
}

const OPS_CALLS: [(&str, &str); 7] = [
    ("GET", "/ops"),
    ("GET", "/ops/queue"),
    ("GET", "/ops/dead-letters"),
    ("POST", "/ops/dead-letters/resend"),
    (
        "POST",
        "/ops/dead-letters/01JXXXXXXXXXXXXXXXXXXXXXXX/resend",
    ),
    ("DELETE", "/ops/dead-letters/01JXXXXXXXXXXXXXXXXXXXXXXX"),
    ("GET", "/ops/queue?limit=1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ops_call_without_the_right_token_gets_401() {
    let app = sqlite_app().await;
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("anyone:{password}"))
        )
    };
    for (method, path) in OPS_CALLS {
        let method: reqwest::Method = method.parse().expect("method");
        for authorization in [
            None,
            Some("Bearer wrong-token-wrong-token".to_string()),
            Some(basic("wrong")),
            Some(format!("Bearer {TOKEN}x")),
        ] {
            let mut request = app
                .client
                .request(method.clone(), format!("{}{path}", app.base));
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let answer = collect(request.send().await.expect("request")).await;
            answer.assert_problem(401, "unauthorized");
            let challenges: Vec<&str> = answer
                .headers
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            assert!(
                challenges.contains(&"Basic realm=\"email2fa ops\""),
                "{method} {path}: {challenges:?}"
            );
        }
    }
    let with_basic = app
        .client
        .get(format!("{}/ops/queue", app.base))
        .header("authorization", basic(TOKEN))
        .send()
        .await
        .expect("request");
    assert_eq!(with_basic.status(), 200);
    let page = app
        .client
        .get(format!("{}/ops", app.base))
        .basic_auth("operator", Some(TOKEN))
        .send()
        .await
        .expect("request");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("<meta name=\"viewport\"")
    );
    let forged = app
        .client
        .post(format!("{}/ops/dead-letters/resend", app.base))
        .basic_auth("operator", Some(TOKEN))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("request");
    assert_eq!(
        forged.status(),
        403,
        "a cross-site form cannot use the browser's credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_token_configured_every_ops_path_is_404() {
    let app = TestApp::sqlite().await;
    for (method, path) in OPS_CALLS {
        let answer = collect(
            app.client
                .request(
                    method.parse().expect("method"),
                    format!("{}{path}", app.base),
                )
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(answer.status, 404, "{method} {path}");
    }
    assert_eq!(
        app.get("/healthz").await.status,
        200,
        "the rest still serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_resends_and_discards_dead_letters_like_the_api() {
    let app = sqlite_app().await;
    ready(&app).await;
    app.sink.stop().await;
    let (_, d1) = start_enrollment(&app, "c1").await;
    let (_, d2) = start_enrollment(&app, "c2").await;
    assert_eq!(app.wait_delivery(&d1, "dead").await, "dead");
    assert_eq!(app.wait_delivery(&d2, "dead").await, "dead");
    app.sink.restart().await.expect("sink back");
    let dir = tempfile::tempdir().expect("dir");
    let key = app
        .settings
        .master_key
        .as_ref()
        .map(secrecy::ExposeSecret::expose_secret)
        .expect("key")
        .to_string();
    let env = [
        ("EMAIL2FA_DATABASE_URL", app.settings.database_url.expose()),
        ("EMAIL2FA_MASTER_KEY", key.as_str()),
    ];
    let cli = |args: &[&str]| {
        let output = run(dir.path(), &env, args);
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{args:?}: {out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out
    };

    let stats: Value = serde_json::from_str(&cli(&["queue", "stats", "--json"])).expect("json");
    assert_eq!(stats["queues"][0]["dead"], 2);
    let table = cli(&["queue", "stats"]);
    assert!(
        table.contains("PENDING") && table.contains("emails"),
        "{table}"
    );
    let listed = cli(&["dlq", "list"]);
    assert!(
        listed.contains("c***@shop.example") && !listed.contains("c1@shop.example"),
        "{listed}"
    );
    let letters: Value = serde_json::from_str(&cli(&["dlq", "list", "--json"])).expect("json");
    let id_of = |delivery: &str| {
        letters["dead_letters"]
            .as_array()
            .expect("list")
            .iter()
            .find(|l| l["delivery_id"] == delivery)
            .and_then(|l| l["id"].as_str())
            .expect("listed")
            .to_string()
    };
    let resent = cli(&["dlq", "resend", &id_of(&d1)]);
    assert!(resent.contains("as delivery"), "{resent}");
    app.mail_for("c1@shop.example", 1).await;
    assert!(cli(&["dlq", "discard", &id_of(&d2)]).contains("discarded"));
    assert!(cli(&["dlq", "list"]).contains("no dead letters"));
    let refused = run(dir.path(), &env, &["dlq", "discard", &id_of(&d2)]);
    assert!(
        !refused.status.success(),
        "a resolved letter cannot be discarded twice"
    );
}

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
        "email2fa_dead_letters",
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
