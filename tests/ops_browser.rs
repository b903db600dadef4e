//! The dashboard in a real browser: headless Chromium (Debian's `chromium`)
//! driven by playwright-core (`tests/browser/ops.mjs`) signs in with HTTP
//! Basic on a phone (390 × 844) and a laptop (1366 × 900), checks that
//! every action button is visible and hit-testable on both, reads the
//! confirmation of "Resend N matching" and the detail of a delivery, clicks
//! "Retry now" and "Resend", and saves a screenshot of each width into
//! `docs/screenshots/` (the README shows them).
//!
//! Without node, chromium or `npm ci` in `tests/browser` the test prints
//! `skipped: …`, unless `EMAIL2FA_TEST_BROWSER=1` (CI), where that fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::TestApp;
use email2fa_testkit::sink::Fault;
use secrecy::SecretString;
use serde_json::{Value, json};

const TOKEN: &str = "ops-token-for-the-browser-test-42";

async fn enroll_start(app: &TestApp, user: &str) -> String {
    let started = app
        .post_signed(
            "enrollment.started",
            json!({"user": {"id": user, "role": "customer"}, "email": format!("{user}@shop.example")}),
        )
        .await
        .json();
    started["delivery_id"]
        .as_str()
        .expect("delivery")
        .to_string()
}

/// Sends one enrollment email through a fault of the sink, and waits for
/// the delivery to reach `want`.
async fn through_fault(app: &TestApp, user: &str, fault: Fault, want: &str) -> String {
    app.sink.fail_next(1, fault);
    let delivery = enroll_start(app, user).await;
    assert_eq!(app.wait_delivery(&delivery, want).await, want, "{user}");
    delivery
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_dashboard_on_a_phone_and_a_laptop_in_chromium() {
    let Some(browser_dir) = common::browser::browser_dir_or_skip("the dashboard") else {
        return;
    };
    // Two attempts a minute apart: a failed email stays retrying.
    let app = TestApp::sqlite_with(|s| {
        s.ops_token = Some(SecretString::from(TOKEN));
        s.delivery.max_attempts = 2;
        s.delivery.backoff_base_ms = 60_000;
        s.delivery.backoff_cap_ms = 60_000;
    })
    .await;
    app.configure_mail(json!({"customer_2fa_allowed": true, "resend_cooldown_seconds": 0}))
        .await;
    for user in ["ada", "bob", "cyd"] {
        let sent = enroll_start(&app, user).await;
        assert_eq!(app.wait_delivery(&sent, "sent").await, "sent");
    }
    // A 550 (permanent), then a letter whose two attempts failed (the
    // second one made due by "retry now"), then an email in backoff.
    through_fault(&app, "jane", Fault::Reject, "dead").await;
    let kim = through_fault(&app, "kim", Fault::TempFail, "retrying").await;
    app.sink.fail_next(1, Fault::TempFail);
    let retried = app
        .client
        .post(format!("{}/ops/deliveries/{kim}/retry", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("retry");
    assert_eq!(retried.status(), 200);
    assert_eq!(app.wait_delivery(&kim, "dead").await, "dead");
    let rita = through_fault(&app, "rita", Fault::TempFail, "retrying").await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for name in ["ops-phone.png", "ops-desktop.png"] {
        let _ = std::fs::remove_file(shots.join(name));
    }
    let base = app.base.clone();
    let script = browser_dir.join("ops.mjs");
    let dir = shots.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([base.as_str(), TOKEN])
            .arg(&dir)
            .output()
            .expect("run node")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser script failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("not JSON: {stdout}"));
    for screen in ["phone", "desktop"] {
        assert_eq!(
            seen[screen]["overflow"], false,
            "nothing overflows sideways on the {screen}: {seen}"
        );
        let buttons = seen[screen]["buttons"].as_array().expect("buttons");
        // Resend, discard and details on 2 letters; retry and details on 1
        // retrying; "Resend 1 matching" and "Discard 2 matching".
        assert_eq!(buttons.len(), 10, "{screen}: {buttons:?}");
        for button in buttons {
            assert_eq!(button["visible"], true, "{screen}: {button}");
            assert_eq!(
                button["hit"], true,
                "a tap lands on the button on the {screen}: {button}"
            );
        }
        if screen == "phone" {
            assert!(
                buttons.iter().all(|b| b["height"].as_i64() >= Some(44)),
                "full-size tap targets: {buttons:?}"
            );
        }
    }
    let confirmation = seen["confirmation"].as_str().expect("confirmation");
    assert!(
        confirmation.starts_with("Resend 1 dead letter")
            && confirmation.contains("1 rejected by SMTP for good"),
        "the confirmation states N and what is left out: {confirmation}"
    );
    let detail = seen["detail"].as_str().expect("detail");
    assert!(
        detail.contains("attempts_exhausted")
            && detail.contains("transient")
            && detail.contains("2/2"),
        "the detail shows each attempt: {detail}"
    );
    assert!(!detail.contains("kim@shop.example"), "masked: {detail}");
    assert_eq!(seen["before"], 2, "{seen}");
    assert_eq!(seen["after"], 1, "the resent letter left the list: {seen}");
    assert_eq!(
        seen["recipient"], "k***@shop.example",
        "newest first, masked: {seen}"
    );
    assert_eq!(seen["retry_id"], rita.as_str());
    assert_eq!(seen["retry_status"], 200);
    assert_eq!(
        app.wait_delivery(&rita, "sent").await,
        "sent",
        "retried now, not in a minute"
    );
    let resent = seen["delivery_id"].as_str().expect("delivery id");
    assert_eq!(app.wait_delivery(resent, "sent").await, "sent");
    assert_eq!(app.delivery_status(&kim).await, "resent");
    app.mail_for("kim@shop.example", 1).await;

    // The README shows these two screenshots: copied into docs/ when
    // EMAIL2FA_UPDATE_SCREENSHOTS=1 (as the demo's), so that a test run
    // leaves the working tree as it was.
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    let update = std::env::var("EMAIL2FA_UPDATE_SCREENSHOTS").as_deref() == Ok("1");
    for name in ["ops-phone.png", "ops-desktop.png"] {
        let png = std::fs::read(shots.join(name)).expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: a real screenshot, {} bytes",
            png.len()
        );
        eprintln!("screenshot: {}", shots.join(name).display());
        if update {
            std::fs::create_dir_all(&docs).expect("docs/screenshots");
            std::fs::write(docs.join(name), &png).expect("copy the screenshot");
        }
    }
}
