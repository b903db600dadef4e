//! `email2fa queue stats` and `email2fa dlq …` against a running service's
//! database: the same answers and rules as the `/ops` API.

mod common;

use common::ops::{ready, sqlite_app, start_enrollment};
use common::process::run;
use serde_json::Value;

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
    let id_of = |delivery: &str| common::ops::letter_of(&letters, delivery);
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

#[test]
fn without_a_token_the_service_says_at_start_up_that_the_ops_api_is_off() {
    let wait_for = |service: &common::process::Service, text: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !service.output().contains(text) {
            assert!(std::time::Instant::now() < deadline, "{}", service.output());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let dir = tempfile::tempdir().expect("dir");
    let off = common::process::Service::start(dir.path(), &[]);
    wait_for(&off, "operations API (/ops) is off");
    let with_token = tempfile::tempdir().expect("dir");
    let token = "a-token-of-enough-length";
    let on = common::process::Service::start(with_token.path(), &[("EMAIL2FA_OPS_TOKEN", token)]);
    wait_for(&on, "/ops (ops token required)");
    assert!(!on.output().contains(token), "the token never prints");
}
