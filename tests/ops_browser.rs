//! The dashboard in a real browser: headless Chromium (Debian's `chromium`)
//! driven by playwright-core (`tests/browser/ops.mjs`) signs in with HTTP
//! Basic, sees a dead letter, clicks "Resend", sees it leave the list, and
//! saves a screenshot.
//!
//! Without node, chromium or `npm ci` in `tests/browser` the test prints
//! `skipped: …`, unless `EMAIL2FA_TEST_BROWSER=1` (CI), where that fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::TestApp;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resends_a_dead_letter_from_the_dashboard_in_chromium() {
    let Some(browser_dir) = common::browser::browser_dir_or_skip("the dashboard") else {
        return;
    };
    let app = TestApp::sqlite_with(|s| {
        s.ops_token = Some(SecretString::from(TOKEN));
        s.delivery.max_attempts = 1;
    })
    .await;
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    for user in ["ada", "bob", "cyd"] {
        let sent = enroll_start(&app, user).await;
        assert_eq!(app.wait_delivery(&sent, "sent").await, "sent");
    }
    app.sink.stop().await;
    let mut dead = Vec::new();
    for user in ["jane", "kim"] {
        let delivery = enroll_start(&app, user).await;
        assert_eq!(app.wait_delivery(&delivery, "dead").await, "dead");
        dead.push(delivery);
    }
    app.sink.restart().await.expect("sink back");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ops-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let base = app.base.clone();
    let script = browser_dir.join("ops.mjs");
    let shot = screenshot.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([base.as_str(), TOKEN])
            .arg(&shot)
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
    assert_eq!(seen["before"], 2, "{seen}");
    assert_eq!(seen["after"], 1, "the resent letter left the list: {seen}");
    assert_eq!(
        seen["recipient"], "k***@shop.example",
        "newest first, masked: {seen}"
    );
    assert_eq!(
        seen["overflow"], false,
        "nothing overflows a laptop screen: {seen}"
    );
    let resent = seen["delivery_id"].as_str().expect("delivery id");
    assert_eq!(app.wait_delivery(resent, "sent").await, "sent");
    assert_eq!(app.delivery_status(&dead[1]).await, "resent");
    app.mail_for("kim@shop.example", 1).await;

    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
}
