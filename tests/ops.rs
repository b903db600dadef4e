//! The operator's side, end to end: an SMTP outage turns codes into dead
//! letters; after recovery a resend delivers fresh codes that verify; a
//! closed challenge is refused; discard removes; the ops token guards every
//! `/ops` path.

mod common;

use base64::Engine as _;
use common::ops::{
    TOKEN, collect, dead_letters, ops, ready, resend_kind, sqlite_app, start_enrollment, verify,
};
use common::{TestApp, code_in};
use serde_json::json;

on_every_queue_with_ops!(
    an_smtp_outage_leaves_dead_letters_and_a_bulk_resend_after_recovery_delivers_fresh_codes,
    a_closed_challenge_is_refused_and_discard_removes_the_letter,
    an_operators_resend_does_not_count_against_the_users_send_limits,
    odd_bytes_in_ops_input_are_refused_by_name_not_passed_to_the_database,
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
        "oldest_unsent_age_seconds",
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
    let answer = resend_kind(&app, "enrollment_code").await;
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

async fn an_operators_resend_does_not_count_against_the_users_send_limits(app: TestApp) {
    ready(&app).await;
    app.sink.stop().await;
    let (_, dead) = start_enrollment(&app, "c1").await;
    assert_eq!(app.wait_delivery(&dead, "dead").await, "dead");
    app.sink.restart().await.expect("sink back");
    let answer = resend_kind(&app, "enrollment_code").await;
    assert_eq!(answer["resent"].as_array().expect("resent").len(), 1);
    // Five codes per user: the dead send was the first; the operator's
    // resend is not counted, so four more pass and the next is refused.
    for _ in 0..4 {
        start_enrollment(&app, "c1").await;
    }
    let over = app
        .post_signed(
            "enrollment.started",
            json!({"user": {"id": "c1", "role": "customer"}, "email": "c1@shop.example"}),
        )
        .await;
    over.assert_problem(429, "rate_limited");
}

async fn odd_bytes_in_ops_input_are_refused_by_name_not_passed_to_the_database(app: TestApp) {
    let list = ops(
        &app,
        reqwest::Method::GET,
        "/ops/dead-letters?tenant=acme%00",
        None,
    )
    .await;
    assert_eq!(
        list.assert_problem(422, "validation_failed")["errors"][0]["field"],
        "tenant"
    );
    let bulk = ops(
        &app,
        reqwest::Method::POST,
        "/ops/dead-letters/resend",
        Some(json!({"tenant_id": "acme\u{0}"})),
    )
    .await;
    assert_eq!(
        bulk.assert_problem(422, "validation_failed")["errors"][0]["field"],
        "tenant_id"
    );
    for (method, path) in [
        (reqwest::Method::POST, "/ops/dead-letters/a%00b/resend"),
        (reqwest::Method::DELETE, "/ops/dead-letters/a%00b"),
    ] {
        ops(&app, method, path, None)
            .await
            .assert_problem(404, "dead_letter_not_found");
    }
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
async fn the_openapi_document_lists_the_ops_routes_and_their_security() {
    let app = TestApp::sqlite().await;
    let doc = app.get("/openapi.json").await.json();
    for path in [
        "/ops",
        "/ops/queue",
        "/ops/dead-letters",
        "/ops/dead-letters/resend",
        "/ops/dead-letters/{id}/resend",
        "/ops/dead-letters/{id}",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["ops_bearer"]["scheme"], "bearer");
    assert_eq!(schemes["ops_basic"]["scheme"], "basic");
    assert!(doc["paths"]["/ops/queue"]["get"]["security"].is_array());
    assert!(doc["paths"]["/ops/dead-letters/{id}"]["delete"].is_object());
}
