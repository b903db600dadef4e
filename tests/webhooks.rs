//! The webhook ingress end to end, on SQLite and PostgreSQL: every row of
//! API.md's error table this version can reach, idempotency, and the
//! Services Manager events.

mod common;

use common::{TENANT, TestApp};
use serde_json::json;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

on_both_backends!(
    settings_updates_change_only_the_named_fields,
    admins_cannot_be_required_while_2fa_is_off_for_them,
    a_replayed_webhook_id_gets_the_first_answer_byte_for_byte,
    concurrent_duplicates_run_the_event_once,
    a_reused_webhook_id_with_another_body_is_a_conflict,
    bodies_that_are_not_an_envelope_are_malformed,
    an_unknown_event_type_is_refused,
    bad_or_missing_signatures_are_refused,
    stale_or_future_timestamps_are_refused,
    unknown_tenants_are_not_found,
    oversized_bodies_are_refused_before_anything_else,
    invalid_data_lists_every_field_problem,
    addresses_the_workers_could_not_send_to_are_refused_at_the_door,
    smtp_passwords_are_write_only_and_sealed,
    a_provider_in_use_cannot_be_deleted,
    a_refused_event_is_not_remembered_and_a_retry_runs_afresh,
    a_rotated_secret_keeps_the_old_one_valid_for_the_overlap,
    a_secret_added_by_another_process_is_accepted_at_once,
    garbage_signatures_and_unknown_tenants_reach_the_database_once_a_second,
    planner_statistics_follow_the_tables_that_grow,
    an_unreachable_database_answers_503_and_writes_nothing,
    health_readiness_and_the_openapi_document_are_served,
);

async fn settings_updates_change_only_the_named_fields(app: TestApp) {
    let answer = app
        .post_signed(
            "settings.updated",
            json!({"admin_2fa_allowed": true, "code_length": 8}),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    let body = answer.json();
    assert_eq!(body["admin_2fa_allowed"], true);
    assert_eq!(body["code_length"], 8);
    assert_eq!(body["customer_2fa_allowed"], false);
    assert_eq!(body["code_ttl_seconds"], 600);
    assert_eq!(body["max_attempts"], 5);
    assert_eq!(body["resend_cooldown_seconds"], 30);
    assert_eq!(body["trust_device_days"], 30);
    assert_eq!(body["require_admin_2fa"], false);

    let second = app
        .post_signed("settings.updated", json!({"require_admin_2fa": true}))
        .await;
    assert_eq!(
        second.json()["code_length"],
        8,
        "an earlier change survives a partial update"
    );
    assert_eq!(second.json()["require_admin_2fa"], true);
    let stored = app.store.settings(TENANT).await.expect("settings");
    assert!(stored.require_admin_2fa && stored.admin_2fa_allowed);
    assert_eq!(stored.code_length, 8);
}

async fn admins_cannot_be_required_while_2fa_is_off_for_them(app: TestApp) {
    let named = |answer: &common::TestResponse| -> Vec<String> {
        let body = answer.assert_problem(422, "validation_failed");
        body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["field"].as_str().expect("field").to_string())
            .collect()
    };
    let both = ["require_admin_2fa", "admin_2fa_allowed"];
    // Required first, while the Admin toggle is off (the default).
    let required = app
        .post_signed("settings.updated", json!({"require_admin_2fa": true}))
        .await;
    assert_eq!(named(&required), both);
    assert!(
        !app.store
            .settings(TENANT)
            .await
            .expect("settings")
            .require_admin_2fa,
        "nothing written"
    );
    // Both in one update, then the toggle off while required.
    let together = app
        .post_signed(
            "settings.updated",
            json!({"admin_2fa_allowed": true, "require_admin_2fa": true}),
        )
        .await;
    assert_eq!(together.status, 200, "{:?}", together.json());
    let off = app
        .post_signed("settings.updated", json!({"admin_2fa_allowed": false}))
        .await;
    assert_eq!(named(&off), both);
    let stored = app.store.settings(TENANT).await.expect("settings");
    assert!(stored.admin_2fa_allowed && stored.require_admin_2fa);
    // The requirement off first, then the toggle.
    for step in [
        json!({"require_admin_2fa": false}),
        json!({"admin_2fa_allowed": false}),
    ] {
        let answer = app.post_signed("settings.updated", step).await;
        assert_eq!(answer.status, 200, "{:?}", answer.json());
    }
}

async fn addresses_the_workers_could_not_send_to_are_refused_at_the_door(app: TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    for email in [
        "\"attacker.x@evil.test\"@example.com",
        "\"x<a@b>\"@example.com",
        "jane..doe@example.com",
        // Found by tests/properties.rs: lettre builds no message to an
        // address literal, and this domain has no ASCII form.
        "x@[192.0.2.1]",
        "a@0´a",
    ] {
        let answer = app
            .post_signed(
                "enrollment.started",
                json!({"user": {"id": "c1", "role": "customer"}, "email": email}),
            )
            .await;
        let body = answer.assert_problem(422, "validation_failed");
        assert_eq!(body["errors"][0]["field"], "email", "{email}: {body}");
    }
    assert_eq!(app.count("select count(*) from challenges").await, 0);
    assert_eq!(app.count("select count(*) from deliveries").await, 0);
}

async fn a_replayed_webhook_id_gets_the_first_answer_byte_for_byte(app: TestApp) {
    let first = app
        .post_signed_with_id("msg_replay", "settings.updated", json!({"code_length": 7}))
        .await;
    assert_eq!(first.status, 200);
    assert!(first.header("idempotent-replayed").is_none());
    // Another change in between: a replay must not execute the event again.
    let other = app
        .post_signed("settings.updated", json!({"code_length": 9}))
        .await;
    assert_eq!(other.status, 200);

    let replay = app
        .post_signed_with_id("msg_replay", "settings.updated", json!({"code_length": 7}))
        .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.bytes, first.bytes, "the first answer, byte for byte");
    assert_eq!(replay.header("content-type"), Some("application/json"));
    let stored = app.store.settings(TENANT).await.expect("settings");
    assert_eq!(
        stored.code_length, 9,
        "the replay did not run the event again"
    );
}

async fn concurrent_duplicates_run_the_event_once(app: TestApp) {
    let body = TestApp::envelope(
        "service_provider.upserted",
        json!({"id": "p1", "title": "Mail", "kind": "smtp",
               "smtp": {"host": "localhost", "port": 2525, "security": "none",
                        "from_address": "shop@example.com"}}),
    );
    let app = std::sync::Arc::new(app);
    let calls = (0..8).map(|_| {
        let app = app.clone();
        let body = body.clone();
        tokio::spawn(async move { app.post_body("msg_same", &body).await })
    });
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert!(answers.iter().all(|a| a.status == 200));
    let fresh = answers
        .iter()
        .filter(|a| a.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1, "exactly one call executed the event");
    assert!(answers.iter().all(|a| a.bytes == answers[0].bytes));
    assert_eq!(app.count("select count(*) from webhook_receipts").await, 1);
}

async fn a_reused_webhook_id_with_another_body_is_a_conflict(app: TestApp) {
    let first = app
        .post_signed_with_id("msg_1", "settings.updated", json!({"code_length": 7}))
        .await;
    assert_eq!(first.status, 200);
    let second = app
        .post_signed_with_id("msg_1", "settings.updated", json!({"code_length": 8}))
        .await;
    second.assert_problem(409, "webhook_id_conflict");
    assert_eq!(
        app.store
            .settings(TENANT)
            .await
            .expect("settings")
            .code_length,
        7
    );
}

async fn bodies_that_are_not_an_envelope_are_malformed(app: TestApp) {
    for body in [
        &b"not json"[..],
        br#"{"data": {}}"#,
        br#"{"type": "settings.updated"}"#,
        br#"{"type": "settings.updated", "data": "x"}"#,
        br#"{"type": "settings.updated", "data": {}, "extra": true}"#,
        br#"[1, 2]"#,
    ] {
        let answer = app
            .post_body(&format!("msg_{}", ulid::Ulid::generate()), body)
            .await;
        answer.assert_problem(400, "malformed_payload");
    }
    assert_eq!(app.count("select count(*) from webhook_receipts").await, 0);
}

async fn an_unknown_event_type_is_refused(app: TestApp) {
    let answer = app.post_signed("user.deleted", json!({})).await;
    let body = answer.assert_problem(400, "unknown_event_type");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("user.deleted")
    );
}

async fn bad_or_missing_signatures_are_refused(app: TestApp) {
    let body = TestApp::envelope("settings.updated", json!({"code_length": 7}));
    let ts = now().to_string();
    let good = app.signature("msg_sig", now(), &body);
    let other_secret = email2fa::crypto::new_signing_secret();
    let other_key = email2fa::crypto::decode_signing_secret(&other_secret).expect("key");
    let foreign = email2fa::signature::sign(&other_key, "msg_sig", now(), &body);
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![
            ("webhook-id", "msg_sig".into()),
            ("webhook-timestamp", ts.clone()),
        ],
        vec![
            ("webhook-id", "msg_sig".into()),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", foreign),
        ],
        vec![
            ("webhook-id", "msg_sig".into()),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl".into()),
        ],
        vec![
            ("webhook-id", "msg_other".into()),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", good.clone()),
        ],
        vec![
            ("webhook-id", "msg_sig".into()),
            ("webhook-timestamp", "soon".into()),
            ("webhook-signature", good.clone()),
        ],
    ];
    for headers in cases {
        let answer = app.post_raw(TENANT, &headers, body.clone()).await;
        answer.assert_problem(401, "invalid_signature");
    }
    // A tampered body with a signature of the original.
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let answer = app
        .post_raw(
            TENANT,
            &[
                ("webhook-id", "msg_sig".into()),
                ("webhook-timestamp", ts),
                ("webhook-signature", good),
            ],
            tampered,
        )
        .await;
    answer.assert_problem(401, "invalid_signature");
    assert_eq!(
        app.store
            .settings(TENANT)
            .await
            .expect("settings")
            .code_length,
        6
    );
}

async fn stale_or_future_timestamps_are_refused(app: TestApp) {
    let body = TestApp::envelope("settings.updated", json!({"code_length": 7}));
    // However far, whatever the sign: the ends of i64 once passed (the
    // distance saturated and its absolute value overflowed).
    for ts in [now() - 400, now() + 400, i64::MIN, i64::MIN + 1, i64::MAX] {
        let signature = app.signature("msg_time", ts, &body);
        let answer = app
            .post_raw(
                TENANT,
                &[
                    ("webhook-id", "msg_time".into()),
                    ("webhook-timestamp", ts.to_string()),
                    ("webhook-signature", signature),
                ],
                body.clone(),
            )
            .await;
        answer.assert_problem(401, "timestamp_out_of_tolerance");
    }
    // Inside the window is fine.
    let ts = now() - 200;
    let signature = app.signature("msg_time", ts, &body);
    let answer = app
        .post_raw(
            TENANT,
            &[
                ("webhook-id", "msg_time".into()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", signature),
            ],
            body,
        )
        .await;
    assert_eq!(answer.status, 200);
}

async fn unknown_tenants_are_not_found(app: TestApp) {
    let body = TestApp::envelope("settings.updated", json!({}));
    let signature = app.signature("msg_t", now(), &body);
    let headers = [
        ("webhook-id", "msg_t".to_string()),
        ("webhook-timestamp", now().to_string()),
        ("webhook-signature", signature),
    ];
    app.post_raw("globex", &headers, body.clone())
        .await
        .assert_problem(404, "unknown_tenant");
    app.post_raw("Not_A_Tenant", &headers, body.clone())
        .await
        .assert_problem(404, "unknown_tenant");
    // Bytes that are not UTF-8, or a NUL, in the path: the same problem,
    // not a plain-text 400 from the framework.
    for odd in ["acme%FF", "acme%00", "%C3%28"] {
        app.post_raw(odd, &headers, body.clone())
            .await
            .assert_problem(404, "unknown_tenant");
    }
}

async fn oversized_bodies_are_refused_before_anything_else(app: TestApp) {
    let padding = "x".repeat(64 * 1024);
    let body = TestApp::envelope("settings.updated", json!({"padding": padding}));
    let answer = app.post_body("msg_big", &body).await;
    answer.assert_problem(413, "payload_too_large");
    // Without a Content-Length (chunked), the limit holds as well.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(chunks);
    let sent = app
        .client
        .post(format!("{}/v1/webhooks/{TENANT}", app.base))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    // The service answers 413 as soon as the limit is passed and closes
    // the connection without reading the rest, so a client still
    // uploading may see the connection closed instead of the answer:
    // while writing (`BodyWrite`, `BrokenPipe`) or, when the close wins
    // the race with its read of the answer, as an incomplete message.
    match sent {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(error) => {
            let text = format!("{error:?}");
            assert!(
                ["BodyWrite", "BrokenPipe", "IncompleteMessage"]
                    .iter()
                    .any(|kind| text.contains(kind)),
                "not a closed upload: {text}"
            );
        }
    }
    // Exactly at the limit is accepted as far as size goes (it fails later, on data).
    let mut at_limit = TestApp::envelope("settings.updated", json!({"code_length": 7}));
    let pad = 64 * 1024 - at_limit.len();
    at_limit.splice(
        1..1,
        format!(
            "\"timestamp\":\"2026-11-28T07:00:00Z\",{}",
            " ".repeat(pad.saturating_sub(37))
        )
        .into_bytes(),
    );
    assert!(at_limit.len() <= 64 * 1024);
    let answer = app.post_body("msg_limit", &at_limit).await;
    assert_ne!(answer.status, 413);
}

async fn invalid_data_lists_every_field_problem(app: TestApp) {
    let answer = app
        .post_signed(
            "settings.updated",
            json!({"code_length": 5, "max_attempts": 11}),
        )
        .await;
    let body = answer.assert_problem(422, "validation_failed");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["code_length", "max_attempts"]);

    let unknown = app
        .post_signed("settings.updated", json!({"code_lenght": 8}))
        .await;
    let body = unknown.assert_problem(422, "validation_failed");
    assert_eq!(body["errors"][0]["field"], "code_lenght");

    let wrong_type = app
        .post_signed("settings.updated", json!({"code_length": "8"}))
        .await;
    assert_eq!(
        wrong_type.assert_problem(422, "validation_failed")["errors"][0]["field"],
        "code_length"
    );

    let customers = app
        .post_signed("settings.updated", json!({"require_customer_2fa": true}))
        .await;
    let body = customers.assert_problem(422, "validation_failed");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("customers can never be required")
    );

    let missing = app
        .post_signed(
            "secondary_auth_provider.upserted",
            json!({"id": "s1", "title": "Email"}),
        )
        .await;
    assert_eq!(
        missing.assert_problem(422, "validation_failed")["errors"][0]["field"],
        "service_provider_id"
    );

    // serde's derived structs would take an object's fields as an array, in
    // order; the contract's nested objects are objects.
    for (event, data, field) in [
        (
            "enrollment.started",
            json!({"user": ["u1", "customer"], "email": "jane@example.com"}),
            "user",
        ),
        (
            "login.started",
            json!({"user": ["u1", "admin", "jane@example.com"]}),
            "user",
        ),
        (
            "service_provider.upserted",
            json!({"id": "p1", "title": "Mail", "kind": "smtp",
                   "smtp": ["localhost", 25, "none", "shop@example.com"]}),
            "smtp",
        ),
    ] {
        let array = app.post_signed(event, data).await;
        assert_eq!(
            array.assert_problem(422, "validation_failed")["errors"][0]["field"],
            field,
            "{event}"
        );
    }

    let injected = app
        .post_signed("service_provider.upserted", json!({"id": "p1", "title": "Mail", "kind": "smtp",
            "smtp": {"host": "localhost", "port": 25, "security": "none",
                     "from_address": "shop@example.com\r\nBcc: victim@example.org", "from_name": "Shop\nX: y"}}))
        .await;
    let body = injected.assert_problem(422, "validation_failed");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["smtp.from_address", "smtp.from_name"]);
    assert_eq!(
        app.store
            .settings(TENANT)
            .await
            .expect("settings")
            .code_length,
        6,
        "nothing changed"
    );
    assert_eq!(app.count("select count(*) from service_providers").await, 0);
}

fn provider(password: Option<&str>) -> serde_json::Value {
    let mut smtp = json!({"host": "smtp.example.com", "port": 587, "security": "starttls",
        "username": "shop", "from_address": "shop@example.com", "from_name": "Acme Shop"});
    if let Some(password) = password {
        smtp["password"] = json!(password);
    }
    json!({"id": "p1", "title": "Main mail", "kind": "smtp", "smtp": smtp})
}

async fn smtp_passwords_are_write_only_and_sealed(app: TestApp) {
    let answer = app
        .post_signed(
            "service_provider.upserted",
            provider(Some("hunter2-very-secret")),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    let body = answer.json();
    assert_eq!(body["smtp"]["password_set"], true);
    assert!(!String::from_utf8_lossy(&answer.bytes).contains("hunter2"));
    assert_eq!(body["smtp"]["port"], 587);
    assert_eq!(body["smtp"]["security"], "starttls");

    // Absent keeps the password; null clears it.
    let kept = app
        .post_signed("service_provider.upserted", provider(None))
        .await;
    assert_eq!(kept.json()["smtp"]["password_set"], true);
    let mut cleared = provider(None);
    cleared["smtp"]["password"] = serde_json::Value::Null;
    assert_eq!(
        app.post_signed("service_provider.upserted", provider(Some("again-secret")))
            .await
            .status,
        200
    );
    let sealed: Vec<u8> = email2fa_db::with_db!(app.store.db(), pool => {
        let (v,): (Vec<u8>,) = sqlx::query_as("select smtp_password_sealed from service_providers")
            .fetch_one(pool).await.expect("row");
        v
    });
    assert!(
        !sealed.windows(12).any(|w| w == b"again-secret"),
        "the column holds no plaintext"
    );
    let opened = app
        .store
        .secret_box()
        .open(
            &sealed,
            &email2fa::store::providers::password_context(TENANT, "p1"),
        )
        .expect("opens with the master key");
    assert_eq!(opened, b"again-secret");
    let answer = app.post_signed("service_provider.upserted", cleared).await;
    assert_eq!(answer.json()["smtp"]["password_set"], false);
}

async fn a_provider_in_use_cannot_be_deleted(app: TestApp) {
    assert_eq!(
        app.post_signed("service_provider.upserted", provider(None))
            .await
            .status,
        200
    );
    let unknown = app
        .post_signed(
            "secondary_auth_provider.upserted",
            json!({"id": "s1", "title": "Email codes", "service_provider_id": "nope"}),
        )
        .await;
    assert_eq!(
        unknown.assert_problem(422, "validation_failed")["errors"][0]["field"],
        "service_provider_id"
    );
    let sap = app
        .post_signed(
            "secondary_auth_provider.upserted",
            json!({"id": "s1", "title": "Email codes", "service_provider_id": "p1"}),
        )
        .await;
    assert_eq!(sap.status, 200);
    assert_eq!(sap.json()["service_provider_id"], "p1");

    let refused = app
        .post_signed("service_provider.deleted", json!({"id": "p1"}))
        .await;
    let body = refused.assert_problem(409, "provider_in_use");
    assert!(body["detail"].as_str().expect("detail").contains("s1"));
    assert_eq!(app.count("select count(*) from service_providers").await, 1);

    let gone = app
        .post_signed("secondary_auth_provider.deleted", json!({"id": "s1"}))
        .await;
    assert_eq!(gone.json(), json!({"id": "s1", "deleted": true}));
    let deleted = app
        .post_signed("service_provider.deleted", json!({"id": "p1"}))
        .await;
    assert_eq!(deleted.json(), json!({"id": "p1", "deleted": true}));
    let again = app
        .post_signed("service_provider.deleted", json!({"id": "p1"}))
        .await;
    assert_eq!(
        again.json(),
        json!({"id": "p1", "deleted": false}),
        "deletes are idempotent"
    );
}

async fn a_refused_event_is_not_remembered_and_a_retry_runs_afresh(app: TestApp) {
    let enroll = json!({"user": {"id": "u1", "role": "customer"}, "email": "jane@example.com"});
    let refused = app
        .post_signed_with_id("msg_retry", "enrollment.started", enroll.clone())
        .await;
    refused.assert_problem(403, "not_allowed");
    assert_eq!(
        app.count("select count(*) from webhook_receipts").await,
        0,
        "failures are not remembered"
    );
    assert_eq!(app.count("select count(*) from challenges").await, 0);
    // The host fixes the cause and retries with the same webhook id.
    assert_eq!(
        app.post_signed("settings.updated", json!({"customer_2fa_allowed": true}))
            .await
            .status,
        200
    );
    let no_provider = app
        .post_signed_with_id("msg_retry", "enrollment.started", enroll)
        .await;
    let body = no_provider.assert_problem(409, "no_provider");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("secondary_auth_provider.upserted")
    );
    assert!(no_provider.header("idempotent-replayed").is_none());
}

async fn a_rotated_secret_keeps_the_old_one_valid_for_the_overlap(mut app: TestApp) {
    let old = app.secret.clone();
    let new = email2fa::crypto::new_signing_secret();
    let until = email2fa::store::Timestamp::now().plus_seconds(3600);
    app.store
        .rotate_secret(TENANT, &new, until)
        .await
        .expect("rotate");
    assert_eq!(
        app.post_signed("settings.updated", json!({})).await.status,
        200,
        "old secret still valid"
    );
    app.secret = new.clone();
    assert_eq!(
        app.post_signed("settings.updated", json!({})).await.status,
        200,
        "new secret valid"
    );
    // Rotate again with no overlap: the first two secrets end now.
    let newest = email2fa::crypto::new_signing_secret();
    let now = email2fa::store::Timestamp::now();
    app.store
        .rotate_secret(TENANT, &newest, now)
        .await
        .expect("rotate");
    app.secret = old;
    app.post_signed("settings.updated", json!({}))
        .await
        .assert_problem(401, "invalid_signature");
    app.secret = newest;
    assert_eq!(
        app.post_signed("settings.updated", json!({})).await.status,
        200
    );
}

/// Adds a new secret to the tenant through a second store (another
/// process, as `tenant rotate-secret` would) and signs with it from now on;
/// returns that store.
async fn rotate_in_another_process(app: &mut TestApp) -> email2fa::store::Store {
    let other_process = email2fa::app::open_store(&app.settings)
        .await
        .expect("a second store");
    let new = email2fa::crypto::new_signing_secret();
    let until = email2fa::store::Timestamp::now().plus_seconds(3600);
    other_process
        .rotate_secret(TENANT, &new, until)
        .await
        .expect("rotate");
    app.secret = new;
    other_process
}

/// The ingress caches tenants' keys; a secret added by another process
/// (`tenant rotate-secret`) must not wait for the cache to expire.
async fn a_secret_added_by_another_process_is_accepted_at_once(mut app: TestApp) {
    assert_eq!(
        app.post_signed("settings.updated", json!({})).await.status,
        200,
        "the keys are now cached"
    );
    rotate_in_another_process(&mut app).await;
    assert_eq!(
        app.post_signed("settings.updated", json!({})).await.status,
        200,
        "the new secret, right after the rotation"
    );
    app.secret = email2fa::crypto::new_signing_secret();
    app.post_signed("settings.updated", json!({}))
        .await
        .assert_problem(401, "invalid_signature");
}

/// A flood of bad signatures, or of calls for a tenant that does not exist,
/// must not become database load: a signature that matches no cached key
/// sends the ingress back to the database at most once a second per
/// tenant, and an unknown tenant is remembered for a second. Seen from
/// outside: a secret rotated in another process right after such a read is
/// refused until the second is over, then accepted; a tenant created in
/// another process right after a 404 is unknown for that second.
async fn garbage_signatures_and_unknown_tenants_reach_the_database_once_a_second(mut app: TestApp) {
    use std::time::{Duration, Instant};
    assert_eq!(
        app.post_signed("settings.updated", json!({})).await.status,
        200,
        "the keys are now cached"
    );
    app.secret = email2fa::crypto::new_signing_secret();
    app.post_signed("settings.updated", json!({}))
        .await
        .assert_problem(401, "invalid_signature");
    let forced = Instant::now();
    let other_process = rotate_in_another_process(&mut app).await;
    let soon = app.post_signed("settings.updated", json!({})).await;
    if forced.elapsed() < Duration::from_millis(900) {
        soon.assert_problem(401, "invalid_signature");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.post_signed("settings.updated", json!({})).await.status,
        200,
        "the new secret, a second later"
    );

    // An unknown tenant, created by another process right after a 404.
    let body = TestApp::envelope("settings.updated", json!({}));
    let signed = |secret: &str| {
        let key = email2fa::crypto::decode_signing_secret(secret).expect("key");
        let (id, ts) = (format!("msg_{}", ulid::Ulid::generate()), now());
        let signature = email2fa::signature::sign(&key, &id, ts, &body);
        vec![
            ("webhook-id", id),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ]
    };
    let secret = email2fa::crypto::new_signing_secret();
    app.post_raw("globex", &signed(&secret), body.clone())
        .await
        .assert_problem(404, "unknown_tenant");
    let missed = Instant::now();
    other_process
        .create_tenant("globex", "Globex", &secret)
        .await
        .expect("create");
    let early = app.post_raw("globex", &signed(&secret), body.clone()).await;
    if missed.elapsed() < Duration::from_millis(900) {
        early.assert_problem(404, "unknown_tenant");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let known = app.post_raw("globex", &signed(&secret), body).await;
    assert_eq!(known.status, 200, "{:?}", known.json());
}

/// PostgreSQL plans prepared statements from the statistics of the moment:
/// the service analyzes the tables that grew since their last analysis
/// (and only those), so plans made on empty tables do not stay.
async fn planner_statistics_follow_the_tables_that_grow(app: TestApp) {
    let email2fa::store::Db::Postgres(pool) = app.store.db() else {
        let analyzed = app.store.analyze_grown_tables().await.expect("analyze");
        assert!(analyzed.is_empty(), "nothing to analyze on SQLite");
        return;
    };
    // The test calls the analysis itself: the application's own loop
    // (every 2 s) would otherwise take the changes first, and this call
    // would find nothing left to analyze.
    app.application
        .as_ref()
        .expect("running")
        .background()
        .stop()
        .await;
    app.store.analyze_grown_tables().await.expect("settle");
    assert!(
        app.store
            .analyze_grown_tables()
            .await
            .expect("analyze")
            .is_empty(),
        "nothing changed since"
    );
    let inserted = sqlx::query(
        "insert into audit_events (tenant_id, id, user_id, event, detail, created_at) \
         select 'acme', 'a' || i, 'u', 'verified', '{}', now() from generate_series(1, 200) i",
    )
    .execute(pool)
    .await
    .expect("rows");
    assert_eq!(inserted.rows_affected(), 200);
    // Statistics reach pg_stat_user_tables within a second or so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let analyzed = loop {
        let analyzed = app.store.analyze_grown_tables().await.expect("analyze");
        if !analyzed.is_empty() || std::time::Instant::now() > deadline {
            break analyzed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(analyzed, ["email2fa.audit_events"]);
    let (rows,): (f32,) = sqlx::query_as(
        "select reltuples from pg_class where oid = 'email2fa.audit_events'::regclass",
    )
    .fetch_one(pool)
    .await
    .expect("stats");
    assert!(rows >= 200.0, "the planner now knows the rows: {rows}");

    // From 10,000 rows on, the plans keep their shape and the statistics
    // are autovacuum's: a large table that doubles is not analysed again.
    let grow = |from: i32, to: i32| {
        sqlx::query(
            "insert into audit_events (tenant_id, id, user_id, event, detail, created_at) \
             select 'acme', 'b' || i, 'u', 'verified', '{}', now() \
             from generate_series($1::int, $2::int) i",
        )
        .bind(from)
        .bind(to)
        .execute(pool)
    };
    grow(1, 12_000).await.expect("rows");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let analyzed = app.store.analyze_grown_tables().await.expect("analyze");
        if analyzed.contains(&"email2fa.audit_events".to_string()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "12,000 new rows were not analysed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    grow(12_001, 40_000).await.expect("rows");
    // Once PostgreSQL counts the new rows as changes (within a second or so).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (changed,): (i64,) = sqlx::query_as(
            "select n_mod_since_analyze from pg_stat_user_tables \
             where relid = 'email2fa.audit_events'::regclass",
        )
        .fetch_one(pool)
        .await
        .expect("stats");
        if changed >= 28_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "changes not counted: {changed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let analyzed = app.store.analyze_grown_tables().await.expect("analyze");
    assert!(
        !analyzed.contains(&"email2fa.audit_events".to_string()),
        "a table of 12,000 rows is autovacuum's: {analyzed:?}"
    );
}

async fn an_unreachable_database_answers_503_and_writes_nothing(app: TestApp) {
    // A second store on the same database, to look after the first is gone.
    let observer = email2fa::app::open_store(&app.settings)
        .await
        .expect("observer");
    app.store.db().close().await;
    let answer = app
        .post_signed("settings.updated", json!({"code_length": 9}))
        .await;
    let body = answer.assert_problem(503, "unavailable");
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert_eq!(body["retry_after"], 5);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        observer
            .settings(TENANT)
            .await
            .expect("settings")
            .code_length,
        6
    );
    let receipts: i64 = email2fa_db::with_db!(observer.db(), pool => {
        let (n,): (i64,) = sqlx::query_as("select count(*) from webhook_receipts").fetch_one(pool).await.expect("count");
        n
    });
    assert_eq!(receipts, 0);
}

async fn health_readiness_and_the_openapi_document_are_served(app: TestApp) {
    assert_eq!(app.get("/healthz").await.json()["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["database"], "ok");
    let doc = app.get("/openapi.json").await.json();
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    assert!(doc["paths"]["/v1/webhooks/{tenant_id}"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    for schema in [
        "TenantSettings",
        "ChallengeAnswer",
        "LoginAnswer",
        "VerifyAnswer",
        "StatusAnswer",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    let request_id = app.get("/healthz").await;
    assert_eq!(
        request_id.header("x-request-id").map(str::len),
        Some(26),
        "a ULID request id"
    );
}
