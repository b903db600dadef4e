//! The help article's journeys, end to end with a real SMTP sink, on SQLite
//! and PostgreSQL: enrollment, login with a code and with "Trust this
//! device", "Send New Code", removal, the policy toggles, brute force and
//! the send limits.

mod common;

use std::sync::Arc;

use common::{TestApp, code_in};
use serde_json::{Value, json};

fn customer(id: &str) -> Value {
    json!({"id": id, "role": "customer", "email": format!("{id}@shop.example"), "name": "Jane <b>Doe</b>", "locale": "en"})
}

fn admin(id: &str) -> Value {
    json!({"id": id, "role": "admin", "email": format!("{id}@admin.example"), "name": "Ada Admin"})
}

async fn ready(app: &TestApp) {
    app.configure_mail(json!({"admin_2fa_allowed": true, "customer_2fa_allowed": true}))
        .await;
}

/// Runs "Add" → "Send Code" → "Verify" and returns the factor.
async fn enroll(app: &TestApp, user: Value, email: Option<&str>, mail_no: usize) -> Value {
    let recipient = email
        .map(str::to_string)
        .unwrap_or_else(|| user["email"].as_str().expect("email").to_string());
    let mut data = json!({"user": user});
    if let Some(email) = email {
        data["email"] = json!(email);
    }
    let started = app.post_signed("enrollment.started", data).await;
    assert_eq!(started.status, 200, "{:?}", started.json());
    let challenge = started.json()["challenge_id"]
        .as_str()
        .expect("challenge")
        .to_string();
    let code = code_in(&app.mail_for(&recipient, mail_no).await);
    let verified = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await;
    assert_eq!(
        verified.json()["outcome"],
        "verified",
        "{:?}",
        verified.json()
    );
    verified.json()["factor"].clone()
}

/// `login.started` for a user, expecting a challenge; returns its id.
async fn login_challenge(app: &TestApp, user: Value) -> String {
    let started = app
        .post_signed(
            "login.started",
            json!({"user": user, "ip": "203.0.113.7", "user_agent": "Firefox"}),
        )
        .await;
    let body = started.json();
    assert_eq!(body["decision"], "challenge", "{body}");
    assert_eq!(body["reason"], "code_sent");
    body["challenge_id"]
        .as_str()
        .expect("challenge")
        .to_string()
}

on_both_backends!(
    a_customer_enrolls_with_the_address_they_typed_in,
    an_admin_enrolls_with_the_account_address,
    a_login_code_and_trust_this_device,
    send_new_code_invalidates_the_old_code_and_keeps_the_tries,
    wrong_codes_lock_the_challenge_for_good,
    twenty_simultaneous_verifications_of_the_right_code_verify_once,
    racing_enrollment_verifications_create_one_factor,
    twenty_failures_across_challenges_pause_new_codes,
    removing_the_factor_turns_2fa_off_and_notifies_the_address,
    removing_the_factor_closes_its_open_login_challenges,
    the_toggles_and_require_decide_the_login,
    enrollment_is_refused_while_the_role_is_inactive,
    the_send_limits_and_the_lockout_answer_429,
    an_address_in_another_case_shares_its_send_limit,
    a_login_after_the_factors_provider_was_deleted_uses_the_tenants_first,
);

async fn a_customer_enrolls_with_the_address_they_typed_in(app: TestApp) {
    ready(&app).await;
    let no_email = app
        .post_signed("enrollment.started", json!({"user": customer("c1")}))
        .await;
    assert_eq!(
        no_email.assert_problem(422, "validation_failed")["errors"][0]["field"],
        "email"
    );

    let started = app
        .post_signed(
            "enrollment.started",
            json!({"user": customer("c1"), "email": "jane.typed@shop.example"}),
        )
        .await;
    let body = started.json();
    assert_eq!(started.status, 200, "{body}");
    assert_eq!(body["code_ttl_seconds"], 600);
    assert!(
        body["resend_after"]
            .as_str()
            .expect("resend_after")
            .ends_with('Z')
    );
    let challenge = body["challenge_id"].as_str().expect("id").to_string();
    let delivery = body["delivery_id"].as_str().expect("delivery").to_string();

    let mail = app.nth_mail(1).await;
    assert_eq!(mail.rcpt_to, ["jane.typed@shop.example"]);
    let code = code_in(&mail);
    assert_eq!(code.len(), 6);
    assert_eq!(app.wait_delivery(&delivery, "sent").await, "sent");

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let answer = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": challenge, "code": wrong}),
        )
        .await;
    assert_eq!(
        answer.json(),
        json!({"outcome": "invalid_code", "attempts_remaining": 4})
    );

    let answer = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await;
    let body = answer.json();
    assert_eq!(body["outcome"], "verified");
    assert_eq!(body["factor"]["email"], "jane.typed@shop.example");
    assert!(body["factor"]["id"].is_string() && body["factor"]["created_at"].is_string());

    let again = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await;
    assert_eq!(again.json()["outcome"], "already_used");
    let status = app
        .post_signed("user.status", json!({"user_id": "c1"}))
        .await
        .json();
    assert_eq!(status["factors"][0]["email"], "jane.typed@shop.example");
    assert_eq!(status["trusted_devices"], json!([]));

    let twice = app
        .post_signed(
            "enrollment.started",
            json!({"user": customer("c1"), "email": "x@shop.example"}),
        )
        .await;
    twice.assert_problem(409, "already_enrolled");
    let unknown = app
        .post_signed(
            "enrollment.verify",
            json!({"challenge_id": "01NOPE", "code": "123456"}),
        )
        .await;
    unknown.assert_problem(404, "challenge_not_found");
}

async fn an_admin_enrolls_with_the_account_address(app: TestApp) {
    ready(&app).await;
    let factor = enroll(&app, admin("a1"), None, 1).await;
    assert_eq!(factor["email"], "a1@admin.example");
    let mail = app.nth_mail(1).await;
    let text = String::from_utf8_lossy(&mail.data);
    assert!(text.contains("multipart/alternative"));
    assert!(text.contains("Auto-Submitted: auto-generated"));

    // The admin logs in with a code and trusts the browser.
    let challenge = login_challenge(&app, admin("a1")).await;
    let code = code_in(&app.mail_for("a1@admin.example", 2).await);
    let verified = app
        .post_signed(
            "login.verify",
            json!({"challenge_id": challenge, "code": code, "trust_device": true}),
        )
        .await
        .json();
    let token = verified["trust_token"].as_str().expect("token").to_string();
    let trusted = app
        .post_signed(
            "login.started",
            json!({"user": admin("a1"), "trust_token": token}),
        )
        .await
        .json();
    assert_eq!(trusted["reason"], "trusted_device");
    // Once the trust expires, the browser gets a code again.
    email2fa_db::with_db!(app.store.db(), pool => sqlx::query("update trusted_devices set expires_at = $1")
        .bind(email2fa::store::Timestamp::now().plus_seconds(-1)).execute(pool).await.map(drop)).expect("expire");
    let expired = app
        .post_signed(
            "login.started",
            json!({"user": admin("a1"), "trust_token": token}),
        )
        .await
        .json();
    assert_eq!(expired["decision"], "challenge");
}

async fn a_login_code_and_trust_this_device(app: TestApp) {
    ready(&app).await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;

    // A plain login with a code.
    let challenge = login_challenge(&app, customer("c1")).await;
    let code = code_in(&app.nth_mail(2).await);
    let verified = app
        .post_signed(
            "login.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await
        .json();
    assert_eq!(verified, json!({"outcome": "verified"}));

    // With "Trust this device".
    let challenge = login_challenge(&app, customer("c1")).await;
    let code = code_in(&app.nth_mail(3).await);
    let verified = app
        .post_signed("login.verify", json!({"challenge_id": challenge, "code": code, "trust_device": true, "device_label": "Firefox on Linux"}))
        .await
        .json();
    assert_eq!(verified["outcome"], "verified");
    let token = verified["trust_token"].as_str().expect("token").to_string();
    assert!(token.starts_with("e2fa_td_") && token.len() >= 8 + 43);
    assert!(verified["trust_expires_at"].is_string());

    // The trusted browser skips the code.
    let trusted = app
        .post_signed(
            "login.started",
            json!({"user": customer("c1"), "trust_token": token}),
        )
        .await
        .json();
    assert_eq!(
        trusted,
        json!({"decision": "allow", "reason": "trusted_device"})
    );
    let status = app
        .post_signed("user.status", json!({"user_id": "c1"}))
        .await
        .json();
    assert_eq!(status["trusted_devices"][0]["label"], "Firefox on Linux");
    assert!(status["trusted_devices"][0]["last_used_at"].is_string());

    // An unknown token, and this token presented for another user, fall
    // through to a challenge without an error.
    let unknown = app
        .post_signed(
            "login.started",
            json!({"user": customer("c1"), "trust_token": "e2fa_td_unknown"}),
        )
        .await
        .json();
    assert_eq!(unknown["decision"], "challenge", "{unknown}");
    enroll(&app, customer("c2"), Some("c2@shop.example"), 1).await;
    let foreign = app
        .post_signed(
            "login.started",
            json!({"user": customer("c2"), "trust_token": token}),
        )
        .await
        .json();
    assert_eq!(foreign["decision"], "challenge", "{foreign}");

    // Revoked: back to codes.
    let revoked = app
        .post_signed("trusted_devices.revoked", json!({"user_id": "c1"}))
        .await
        .json();
    assert_eq!(revoked, json!({"revoked_devices": 1}));
    let after = app
        .post_signed(
            "login.started",
            json!({"user": customer("c1"), "trust_token": token}),
        )
        .await
        .json();
    assert_eq!(after["decision"], "challenge");
    let decisions = app
        .count("select count(*) from login_decisions where ip = '203.0.113.7'")
        .await;
    assert_eq!(decisions, 2);
}

async fn send_new_code_invalidates_the_old_code_and_keeps_the_tries(app: TestApp) {
    ready(&app).await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    let challenge = login_challenge(&app, customer("c1")).await;
    let old = code_in(&app.nth_mail(2).await);
    let early = app
        .post_signed("challenge.resend", json!({"challenge_id": challenge}))
        .await;
    let body = early.assert_problem(429, "rate_limited");
    assert!(body["retry_after"].as_u64().expect("retry_after") >= 1);
    assert!(early.header("retry-after").is_some());

    app.post_signed("settings.updated", json!({"resend_cooldown_seconds": 0}))
        .await;
    // The cooldown of this challenge was fixed when it was sent; start over.
    let challenge = login_challenge(&app, customer("c1")).await;
    let first = code_in(&app.nth_mail(3).await);
    let wrong = app
        .post_signed(
            "login.verify",
            json!({"challenge_id": challenge, "code": "99999999"}),
        )
        .await;
    assert_eq!(wrong.json()["attempts_remaining"], 4);
    let resent = app
        .post_signed("challenge.resend", json!({"challenge_id": challenge}))
        .await;
    assert_eq!(resent.status, 200, "{:?}", resent.json());
    assert_eq!(resent.json()["challenge_id"], challenge.as_str());
    let second = code_in(&app.nth_mail(4).await);
    for stale in [first.as_str(), old.as_str()] {
        if stale != second {
            let answer = app
                .post_signed(
                    "login.verify",
                    json!({"challenge_id": challenge, "code": stale}),
                )
                .await
                .json();
            assert_eq!(
                answer["outcome"], "invalid_code",
                "an earlier code stopped working"
            );
        }
    }
    let answer = app
        .post_signed(
            "login.verify",
            json!({"challenge_id": challenge, "code": "00000000"}),
        )
        .await
        .json();
    assert!(
        answer["attempts_remaining"].as_i64().expect("remaining") <= 2,
        "tries carry over resends: {answer}"
    );
    let ok = app
        .post_signed(
            "login.verify",
            json!({"challenge_id": challenge, "code": second}),
        )
        .await
        .json();
    assert_eq!(ok["outcome"], "verified");
    let closed = app
        .post_signed("challenge.resend", json!({"challenge_id": challenge}))
        .await;
    closed.assert_problem(409, "challenge_closed");
}

async fn wrong_codes_lock_the_challenge_for_good(app: TestApp) {
    ready(&app).await;
    app.post_signed("settings.updated", json!({"max_attempts": 3}))
        .await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    let challenge = login_challenge(&app, customer("c1")).await;
    let code = code_in(&app.nth_mail(2).await);
    let wrong = if code.starts_with('9') { "0" } else { "9" };
    let answers: Vec<Value> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(
                app.post_signed(
                    "login.verify",
                    json!({"challenge_id": challenge, "code": format!("{wrong}{}", &code[1..])}),
                )
                .await
                .json(),
            );
        }
        out
    };
    assert_eq!(
        answers[0],
        json!({"outcome": "invalid_code", "attempts_remaining": 2})
    );
    assert_eq!(
        answers[1],
        json!({"outcome": "invalid_code", "attempts_remaining": 1})
    );
    assert_eq!(
        answers[2],
        json!({"outcome": "locked", "attempts_remaining": 0})
    );
    let right = app
        .post_signed(
            "login.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await
        .json();
    assert_eq!(
        right["outcome"], "locked",
        "the right code fails once locked"
    );
    let resend = app
        .post_signed("challenge.resend", json!({"challenge_id": challenge}))
        .await;
    resend.assert_problem(409, "challenge_closed");
    let audit = app
        .count("select count(*) from audit_events where event = 'locked'")
        .await;
    assert_eq!(audit, 1);
}

async fn twenty_simultaneous_verifications_of_the_right_code_verify_once(app: TestApp) {
    ready(&app).await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    let challenge = login_challenge(&app, customer("c1")).await;
    let code = code_in(&app.nth_mail(2).await);
    let app = Arc::new(app);
    let calls = (0..20).map(|_| {
        let app = app.clone();
        let data = json!({"challenge_id": challenge, "code": code});
        tokio::spawn(async move {
            app.post_signed("login.verify", data).await.json()["outcome"].clone()
        })
    });
    let outcomes: Vec<Value> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let verified = outcomes.iter().filter(|o| *o == "verified").count();
    assert_eq!(verified, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| o == "verified" || o == "already_used"),
        "{outcomes:?}"
    );
}

async fn removing_the_factor_turns_2fa_off_and_notifies_the_address(app: TestApp) {
    ready(&app).await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    let challenge = login_challenge(&app, customer("c1")).await;
    let code = code_in(&app.nth_mail(2).await);
    app.post_signed(
        "login.verify",
        json!({"challenge_id": challenge, "code": code, "trust_device": true}),
    )
    .await;

    let removed = app
        .post_signed("factor.removed", json!({"user_id": "c1"}))
        .await
        .json();
    assert_eq!(removed, json!({"removed": 1, "revoked_devices": 1}));
    let notice = app.nth_mail(3).await;
    assert_eq!(notice.rcpt_to, ["c1@shop.example"]);
    let text = String::from_utf8_lossy(&notice.data).to_lowercase();
    assert!(text.contains("removed"), "{text}");
    let login = app
        .post_signed("login.started", json!({"user": customer("c1")}))
        .await
        .json();
    assert_eq!(
        login,
        json!({"decision": "allow", "reason": "not_enrolled"})
    );
    let nothing = app
        .post_signed("factor.removed", json!({"user_id": "c1"}))
        .await
        .json();
    assert_eq!(nothing, json!({"removed": 0, "revoked_devices": 0}));
}

async fn removing_the_factor_closes_its_open_login_challenges(app: TestApp) {
    ready(&app).await;
    // A login whose code reached the inbox before the removal.
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    let challenge = login_challenge(&app, customer("c1")).await;
    let code = code_in(&app.mail_for("c1@shop.example", 2).await);
    let removed = app
        .post_signed("factor.removed", json!({"user_id": "c1"}))
        .await;
    assert_eq!(removed.status, 200, "{:?}", removed.json());
    let verify = app
        .post_signed(
            "login.verify",
            json!({"challenge_id": challenge, "code": code}),
        )
        .await;
    assert_eq!(verify.json()["outcome"], "expired", "{:?}", verify.json());
    let hashes = "select count(*) from challenges where status = 'expired' \
         and (code_hash is not null or previous_code_hash is not null)";
    assert_eq!(
        app.count(hashes).await,
        0,
        "a closed challenge keeps no hash"
    );

    // A login whose code is still queued at the removal (the mail server
    // is down): the code email is discarded, never sent.
    enroll(&app, customer("c2"), Some("c2@shop.example"), 1).await;
    app.sink.stop().await;
    login_challenge(&app, customer("c2")).await;
    app.post_signed("factor.removed", json!({"user_id": "c2"}))
        .await;
    app.sink.restart().await.expect("sink back");
    let discarded = "select count(*) from deliveries where user_id = 'c2' and kind = 'login_code' \
         and status = 'discarded'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.count(discarded).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queued code email was not discarded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The removal notice arrives; the code never does.
    let notice = app.mail_for("c2@shop.example", 2).await;
    assert!(
        String::from_utf8_lossy(&notice.data)
            .to_lowercase()
            .contains("removed")
    );
    assert_eq!(
        app.count(
            "select count(*) from deliveries where user_id = 'c2' and kind = 'login_code' \
             and status = 'sent'"
        )
        .await,
        0
    );
}

async fn the_toggles_and_require_decide_the_login(app: TestApp) {
    app.configure_mail(json!({})).await;
    let inactive = app
        .post_signed("login.started", json!({"user": admin("a1")}))
        .await
        .json();
    assert_eq!(
        inactive,
        json!({"decision": "allow", "reason": "2fa_inactive"})
    );
    // Admins cannot be required while 2FA is off for them: refused, and
    // nothing changes.
    app.post_signed("settings.updated", json!({"require_admin_2fa": true}))
        .await
        .assert_problem(422, "validation_failed");
    let still = app
        .post_signed("login.started", json!({"user": admin("a1")}))
        .await
        .json();
    assert_eq!(still["reason"], "2fa_inactive");
    app.post_signed(
        "settings.updated",
        json!({"admin_2fa_allowed": true, "require_admin_2fa": true}),
    )
    .await;
    let required = app
        .post_signed("login.started", json!({"user": admin("a1")}))
        .await
        .json();
    assert_eq!(
        required,
        json!({"decision": "enroll_required", "reason": "enrollment_required"})
    );
    let customer_login = app
        .post_signed("login.started", json!({"user": customer("c1")}))
        .await
        .json();
    assert_eq!(
        customer_login,
        json!({"decision": "allow", "reason": "2fa_inactive"})
    );
    app.post_signed("settings.updated", json!({"customer_2fa_allowed": true}))
        .await;
    let not_enrolled = app
        .post_signed("login.started", json!({"user": customer("c1")}))
        .await
        .json();
    assert_eq!(
        not_enrolled,
        json!({"decision": "allow", "reason": "not_enrolled"}),
        "customers are never required"
    );

    // An enrolled admin whose role is switched to Inactive logs in without a code.
    enroll(&app, admin("a1"), None, 1).await;
    app.post_signed(
        "settings.updated",
        json!({"admin_2fa_allowed": false, "require_admin_2fa": false}),
    )
    .await;
    let off = app
        .post_signed("login.started", json!({"user": admin("a1")}))
        .await
        .json();
    assert_eq!(off["reason"], "2fa_inactive");
    let reasons = app.count("select count(*) from login_decisions").await;
    assert_eq!(reasons, 6);
}

async fn enrollment_is_refused_while_the_role_is_inactive(app: TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    let refused = app
        .post_signed("enrollment.started", json!({"user": admin("a1")}))
        .await;
    let body = refused.assert_problem(403, "not_allowed");
    assert!(body["detail"].as_str().expect("detail").contains("Admin"));
    assert_eq!(app.count("select count(*) from challenges").await, 0);
    assert_eq!(app.count("select count(*) from deliveries").await, 0);
}

async fn an_address_in_another_case_shares_its_send_limit(app: TestApp) {
    ready(&app).await;
    // Ten codes to one address in an hour, from ten users, the address in
    // ever other cases: the eleventh is refused whatever its case.
    let spellings = ["x@example.com", "x@EXAMPLE.COM", "X@Example.Com"];
    for i in 0..10 {
        let started = app
            .post_signed(
                "enrollment.started",
                json!({"user": customer(&format!("u{i}")), "email": spellings[i % 3]}),
            )
            .await;
        assert_eq!(started.status, 200, "{i}: {:?}", started.json());
    }
    let eleventh = app
        .post_signed(
            "enrollment.started",
            json!({"user": customer("u10"), "email": "x@EXAMPLE.com"}),
        )
        .await;
    eleventh.assert_problem(429, "rate_limited");
    // Stored with the domain lowercased, the local part as typed.
    assert_eq!(
        app.count("select count(*) from challenges where email = 'X@example.com'")
            .await,
        3
    );
    assert_eq!(
        app.count("select count(*) from challenges where email = 'x@example.com'")
            .await,
        7
    );
}

async fn the_send_limits_and_the_lockout_answer_429(app: TestApp) {
    ready(&app).await;
    app.post_signed(
        "settings.updated",
        json!({"resend_cooldown_seconds": 0, "max_attempts": 10}),
    )
    .await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    // The enrollment was code 1 of 5 in 15 minutes.
    let challenge = login_challenge(&app, customer("c1")).await;
    for _ in 0..3 {
        let resent = app
            .post_signed("challenge.resend", json!({"challenge_id": challenge}))
            .await;
        assert_eq!(resent.status, 200, "{:?}", resent.json());
    }
    let sixth = app
        .post_signed("challenge.resend", json!({"challenge_id": challenge}))
        .await;
    let body = sixth.assert_problem(429, "rate_limited");
    let retry: u64 = sixth
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=900).contains(&retry), "{retry}");
    assert_eq!(body["retry_after"].as_u64(), Some(retry));
    let login = app
        .post_signed("login.started", json!({"user": customer("c1")}))
        .await;
    login.assert_problem(429, "rate_limited");
}

async fn racing_enrollment_verifications_create_one_factor(app: TestApp) {
    ready(&app).await;
    let started = app
        .post_signed(
            "enrollment.started",
            json!({"user": customer("c1"), "email": "c1@shop.example"}),
        )
        .await
        .json();
    let challenge = started["challenge_id"].as_str().expect("id").to_string();
    let code = code_in(&app.mail_for("c1@shop.example", 1).await);
    let app = Arc::new(app);
    let calls = (0..10).map(|_| {
        let app = app.clone();
        let data = json!({"challenge_id": challenge, "code": code});
        tokio::spawn(async move {
            app.post_signed("enrollment.verify", data).await.json()["outcome"].clone()
        })
    });
    let outcomes: Vec<Value> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "verified").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(app.count("select count(*) from factors").await, 1);
}

async fn twenty_failures_across_challenges_pause_new_codes(app: TestApp) {
    ready(&app).await;
    app.post_signed("settings.updated", json!({"max_attempts": 10}))
        .await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    for round in 0..2 {
        let challenge = login_challenge(&app, customer("c1")).await;
        let code = code_in(&app.mail_for("c1@shop.example", round + 2).await);
        let wrong = wrong_code(&code);
        for _ in 0..10 {
            app.post_signed(
                "login.verify",
                json!({"challenge_id": challenge, "code": wrong}),
            )
            .await;
        }
    }
    let paused = app
        .post_signed("login.started", json!({"user": customer("c1")}))
        .await;
    let body = paused.assert_problem(429, "rate_limited");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("20 wrong codes in a row")
    );
    let retry = body["retry_after"].as_u64().expect("retry_after");
    assert!((850..=900).contains(&retry), "about 15 minutes: {retry}");
}

/// Two ingress instances (two pools, as two processes would have) on one
/// PostgreSQL database: the per-user limit holds across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_limit_holds_across_two_ingress_processes_sharing_postgres() {
    let Some(app) = TestApp::postgres().await else {
        return;
    };
    ready(&app).await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    let bases = [app.base.clone(), app.second_ingress().await];
    let app = Arc::new(app);
    let calls = (0..20).map(|i| {
        let app = app.clone();
        let base = bases[i % 2].clone();
        tokio::spawn(async move {
            let data = json!({"user": customer("c1")});
            app.post_signed_to(&base, "login.started", data)
                .await
                .status
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        accepted, 4,
        "5 codes per user, one went to the enrollment: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 16);
}

/// A code of the same length that is certainly wrong.
fn wrong_code(code: &str) -> String {
    code.chars()
        .map(|c| if c == '9' { '0' } else { '9' })
        .collect()
}

/// The factor's secondary auth provider was deleted after the enrolment: the
/// login still sends its code, through the tenant's first provider, and the
/// challenge records that provider.
async fn a_login_after_the_factors_provider_was_deleted_uses_the_tenants_first(app: TestApp) {
    ready(&app).await;
    enroll(&app, customer("c1"), Some("c1@shop.example"), 1).await;
    let second = app
        .post_signed(
            "secondary_auth_provider.upserted",
            json!({"id": "s2", "title": "Backup codes", "service_provider_id": "p1"}),
        )
        .await;
    assert_eq!(second.status, 200, "{:?}", second.json());
    let gone = app
        .post_signed("secondary_auth_provider.deleted", json!({"id": "s1"}))
        .await;
    assert_eq!(gone.json(), json!({"id": "s1", "deleted": true}));
    login_challenge(&app, customer("c1")).await;
    let code = code_in(&app.mail_for("c1@shop.example", 2).await);
    assert_eq!(code.len(), 6);
    assert_eq!(
        app.count(
            "select count(*) from challenges where purpose = 'login' \
             and secondary_auth_provider_id = 's2'"
        )
        .await,
        1
    );
}
