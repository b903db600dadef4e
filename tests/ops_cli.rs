//! `email2fa queue stats` and `email2fa dlq …` against a running service's
//! database: the same answers and rules as the `/ops` API.

mod common;

use common::TestApp;
use common::ops::{ready, sqlite_app, start_enrollment};
use common::process::run;
use serde_json::Value;

/// `email2fa` run on the test app's database, as an operator would.
struct Cli {
    dir: tempfile::TempDir,
    database_url: String,
    master_key: String,
}

impl Cli {
    fn of(app: &TestApp) -> Self {
        Self {
            dir: tempfile::tempdir().expect("dir"),
            database_url: app.settings.database_url.expose().to_string(),
            master_key: app
                .settings
                .master_key
                .as_ref()
                .map(secrecy::ExposeSecret::expose_secret)
                .expect("key")
                .to_string(),
        }
    }

    fn env(&self) -> [(&str, &str); 2] {
        [
            ("EMAIL2FA_DATABASE_URL", self.database_url.as_str()),
            ("EMAIL2FA_MASTER_KEY", self.master_key.as_str()),
        ]
    }

    /// Runs `args`, asserts success, returns standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = run(self.dir.path(), &self.env(), args);
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{args:?}: {out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out
    }
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
    let cli = Cli::of(&app);
    let (dir, env) = (&cli.dir, cli.env());
    let cli = |args: &[&str]| cli.ok(args);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_filters_by_reason_leaves_permanent_rejections_out_and_discards_a_filter() {
    let app = sqlite_app().await;
    ready(&app).await;
    app.sink.reject_recipient("perm");
    let (_, rejected) = start_enrollment(&app, "perm").await;
    assert_eq!(app.wait_delivery(&rejected, "dead").await, "dead");
    app.sink.stop().await;
    let (_, exhausted) = start_enrollment(&app, "c1").await;
    assert_eq!(app.wait_delivery(&exhausted, "dead").await, "dead");
    app.sink.restart().await.expect("sink back");
    let cli = Cli::of(&app);

    let permanent: Value =
        serde_json::from_str(&cli.ok(&["dlq", "list", "--reason", "rejected", "--json"]))
            .expect("json");
    assert_eq!(permanent["dead_letters"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        permanent["dead_letters"][0]["delivery_id"],
        rejected.as_str()
    );
    assert!(
        cli.ok(&["dlq", "list", "--provider", "s2"])
            .contains("no dead letters")
    );
    let bad = run(
        cli.dir.path(),
        &cli.env(),
        &["dlq", "list", "--reason", "bounced"],
    );
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("reason"),
        "a bad reason is named"
    );
    assert!(cli.ok(&["queue", "stats"]).contains("OLDEST UNSENT"));

    let resent = cli.ok(&["dlq", "resend", "--all", "--provider", "s1"]);
    assert!(resent.contains("1 resent, 0 refused"), "{resent}");
    assert!(
        resent.contains("1 rejected by SMTP for good left out"),
        "{resent}"
    );
    let discarded = cli.ok(&["dlq", "discard", "--all", "--reason", "rejected"]);
    assert!(discarded.contains("1 discarded"), "{discarded}");
    assert!(cli.ok(&["dlq", "list"]).contains("no dead letters"));
    assert_eq!(app.delivery_status(&rejected).await, "discarded");
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
