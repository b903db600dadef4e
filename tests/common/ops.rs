//! Helpers of the operations tests: an app with the ops token, calls to
//! `/ops` with it, and a code email that can be made to die.

use email2fa::settings::Settings;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::{TestApp, TestResponse};

/// The ops token of the test apps.
pub const TOKEN: &str = "ops-token-for-the-tests-0123456789";

/// The ops token, and one attempt per email so an outage dead-letters at once.
pub fn ops_settings(settings: &mut Settings) {
    settings.ops_token = Some(SecretString::from(TOKEN));
    settings.delivery.max_attempts = 1;
}

/// An app on SQLite with [`ops_settings`].
pub async fn sqlite_app() -> TestApp {
    TestApp::sqlite_with(ops_settings).await
}

/// An app on PostgreSQL with [`ops_settings`], when configured.
pub async fn postgres_app() -> Option<TestApp> {
    TestApp::postgres_with(ops_settings).await
}

/// An app on the Redis queue with [`ops_settings`], when configured.
pub async fn redis_app() -> Option<TestApp> {
    TestApp::redis_with(ops_settings).await
}

/// Every queue backend (`on_every_queue!`) with the ops token set and one
/// attempt per email.
#[macro_export]
macro_rules! on_every_queue_with_ops {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::ops::sqlite_app().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::common::ops::postgres_app().await {
                    super::$name(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                if let Some(app) = $crate::common::ops::redis_app().await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

/// An `/ops` call with the bearer token.
pub async fn ops(
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

/// The answer as a [`TestResponse`].
pub async fn collect(response: reqwest::Response) -> TestResponse {
    TestResponse {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.expect("body").to_vec(),
    }
}

/// Mail through the sink, customers allowed, no resend cooldown.
pub async fn ready(app: &TestApp) {
    app.configure_mail(
        json!({"admin_2fa_allowed": true, "customer_2fa_allowed": true,
        "resend_cooldown_seconds": 0}),
    )
    .await;
}

/// "Add" → "Send Code" for a customer; returns (challenge, delivery).
pub async fn start_enrollment(app: &TestApp, user: &str) -> (String, String) {
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

/// `GET /ops/dead-letters{query}`: the list.
pub async fn dead_letters(app: &TestApp, query: &str) -> Vec<Value> {
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

/// `enrollment.verify` with a code.
pub async fn verify(app: &TestApp, challenge: &str, code: &str) -> Value {
    app.post_signed(
        "enrollment.verify",
        json!({"challenge_id": challenge, "code": code}),
    )
    .await
    .json()
}

/// `POST /ops/dead-letters/resend` for every letter of `kind`; the answer,
/// after checking it is a 200.
pub async fn resend_kind(app: &TestApp, kind: &str) -> Value {
    let bulk = ops(
        app,
        reqwest::Method::POST,
        "/ops/dead-letters/resend",
        Some(json!({ "kind": kind })),
    )
    .await;
    let answer = bulk.json();
    assert_eq!(bulk.status, 200, "{answer}");
    answer
}

/// The id of the dead letter of `delivery` in a `{"dead_letters": [...]}`
/// answer (of the API or of `dlq list --json`).
pub fn letter_of(page: &Value, delivery: &str) -> String {
    page["dead_letters"]
        .as_array()
        .expect("list")
        .iter()
        .find(|l| l["delivery_id"] == delivery)
        .and_then(|l| l["id"].as_str())
        .expect("listed")
        .to_string()
}
