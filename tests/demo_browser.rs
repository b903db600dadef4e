//! The demo shop (`email2fa demo`) in a real browser: headless Chromium
//! (Debian's `chromium`) driven by playwright-core
//! (`tests/browser/demo.mjs`) walks the help article end to end against
//! the real binary started in an empty folder: Services Manager,
//! enrollment with a code from the Mailbox, a login with a code, "Send New
//! Code", "Trust this device", a trusted login, "Delete", an admin
//! required to add a factor, a locked challenge and too many codes. Screenshots of each screen land in
//! `target/tmp/demo-screens/`; with `EMAIL2FA_UPDATE_SCREENSHOTS=1` the
//! README's ones in `docs/screenshots/` are replaced by them.
//!
//! Without node, chromium or `npm ci` in `tests/browser` the test prints
//! `skipped: …`, unless `EMAIL2FA_TEST_BROWSER=1` (CI), where that fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::capture;
use serde_json::Value;

/// The screenshots the README shows.
const README_SCREENS: [&str; 5] = [
    "02-services-manager",
    "04-enter-code",
    "06-entry",
    "08-trust-this-device",
    "12-admin-must-add",
];

/// `email2fa demo` in its own process group (so that the email2fa it
/// starts goes with it), its output captured.
struct Demo {
    child: Child,
    output: Arc<Mutex<String>>,
    url: String,
}

impl Demo {
    fn start(dir: &Path) -> (Self, Duration) {
        use std::os::unix::process::CommandExt;
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_email2fa"))
            .args(["demo", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn email2fa demo");
        let output = Arc::new(Mutex::new(String::new()));
        capture(child.stdout.take().expect("stdout"), output.clone());
        capture(child.stderr.take().expect("stderr"), output.clone());
        let deadline = started + Duration::from_secs(60);
        let url = loop {
            let text = output.lock().expect("lock").clone();
            if let Some(at) = text.find("Demo shop on ") {
                let rest = &text[at + "Demo shop on ".len()..];
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                break rest[..end].trim_end_matches('/').to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("email2fa demo exited with {status}: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "the demo served nothing within a minute: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = started.elapsed();
        (Self { child, output, url }, elapsed)
    }

    fn output(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    /// SIGTERM to the demo, which stops its email2fa; exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The whole group: the demo and the email2fa it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// Runs the browser script; what it saw, or the failure with its output.
fn drive(script: &Path, url: &str, shots: &Path, demo: &Demo) -> Value {
    let output = Command::new("node")
        .arg(script)
        .arg(url)
        .arg(shots)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser script failed (screenshot: {}/failure.png): {stdout}{}\n--- demo ---\n{}",
        shots.display(),
        String::from_utf8_lossy(&output.stderr),
        demo.output()
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("not JSON: {stdout}"))
}

fn says(seen: &Value, key: &str, words: &str) {
    let text = seen[key].as_str().unwrap_or_default();
    assert!(
        text.contains(words),
        "{key}: {text:?} lacks {words:?}\n{seen:#}"
    );
}

#[test]
fn the_help_article_works_end_to_end_in_the_demo_shop_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(browser_dir) = common::browser::browser_dir_or_skip("the demo shop") else {
        return;
    };
    let folder = tempfile::tempdir().expect("an empty folder");
    let (mut demo, startup) = Demo::start(folder.path());
    eprintln!("the demo served its root page {startup:?} after starting");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-screens");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");

    let seen = drive(&browser_dir.join("demo.mjs"), &demo.url, &shots, &demo);

    // Services Manager: 2FA is Inactive until the admin turns it on.
    assert_eq!(seen["admin_first_login"], "Services Manager", "{seen:#}");
    for saved in ["smtp_saved", "auth_saved", "settings_saved"] {
        says(&seen, saved, "saved");
    }
    assert_eq!(seen["customer_status"], "Active", "{seen:#}");
    says(&seen, "provider_in_use", "Still in use");
    // Enrollment: "Add", "Send Code", a wrong code, "Verify".
    says(&seen, "jane_first_login", "add Secondary Authentication");
    says(&seen, "code_sent", "on its way");
    says(&seen, "enrollment_subject", "Demo Shop");
    says(&seen, "wrong_code", "4 attempts remaining");
    says(
        &seen,
        "enrolled",
        "Secondary Authentication Entry added: jane@example.com",
    );
    assert_eq!(seen["entry"], "jane@example.com", "{seen:#}");
    // Login: the code screen, "Send New Code" honouring the cooldown, the
    // superseded code refused, "Trust this device".
    assert_eq!(seen["code_screen"], "Enter your code", "{seen:#}");
    says(&seen, "resend_too_early", "Please wait");
    says(&seen, "resent", "new code is on its way");
    says(&seen, "old_code", "attempts remaining");
    says(&seen, "signed_in_with_code", "Signed in");
    assert_eq!(
        seen["trust_cookie"], true,
        "an HttpOnly e2fa_trust cookie: {seen:#}"
    );
    assert_eq!(seen["trusted_browsers"], 1, "{seen:#}");
    // A trusted login sends no code.
    says(&seen, "trusted_login", "this browser is trusted");
    assert_eq!(seen["mails_during_trusted_login"], 0, "{seen:#}");
    // "Delete": the entry goes, the trusted browser is signed out, a
    // notice reaches the removed address.
    says(&seen, "deleted", "1 trusted browsers signed out");
    assert_eq!(seen["entry_left"], 0, "{seen:#}");
    says(
        &seen,
        "removal_notice",
        "was removed from your Demo Shop account",
    );
    // Required for admins: no console before a factor.
    says(&seen, "required_saved", "saved");
    assert_eq!(seen["required_redirect"], "/account/security", "{seen:#}");
    says(
        &seen,
        "required_notice",
        "requires Secondary Authentication",
    );
    assert_eq!(
        seen["console_before_factor"], "/account/security",
        "{seen:#}"
    );
    says(&seen, "admin_enrolled", "admin@shop.example");
    assert_eq!(seen["admin_lands_on"], "Services Manager", "{seen:#}");
    // Refusals: a locked challenge, then too many codes (429 Retry-After).
    says(&seen, "locked", "Too many wrong codes");
    assert_eq!(seen["locked_back_to"], "/login", "{seen:#}");
    says(
        &seen,
        "too_many_codes",
        "Too many codes were sent. Please wait",
    );

    for name in README_SCREENS {
        let png = std::fs::read(shots.join(format!("{name}.png"))).expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
        if std::env::var("EMAIL2FA_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let docs = root.join("docs/screenshots");
            std::fs::create_dir_all(&docs).expect("docs/screenshots");
            std::fs::write(docs.join(format!("{name}.png")), png).expect("copy");
        }
    }
    eprintln!(
        "screenshots: {}; the trusted login came {} ms after the browser opened the shop",
        shots.display(),
        seen["trusted_login_after_ms"]
    );

    let status = demo.stop();
    assert!(status.success(), "SIGTERM stops the demo with 0: {status}");
    // No secret in what the demo and its email2fa printed.
    let output = demo.output();
    let secret =
        std::fs::read_to_string(folder.path().join("demo-data/shop.json")).expect("shop.json");
    let secret: Value = serde_json::from_str(&secret).expect("json");
    let secret = secret["secret"].as_str().expect("a secret");
    assert!(secret.starts_with("whsec_"));
    for leaked in [secret, "e2fa_td_", "smtp-password"] {
        assert!(
            !output.contains(leaked),
            "{leaked} in the output:\n{output}"
        );
    }
}
