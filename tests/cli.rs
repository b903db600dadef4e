//! The binary as a newcomer and an operator meet it: the first start, the
//! tenant commands, `webhook send`, start-up errors, and the promise that no
//! secret ever reaches a log line.

mod common;

use common::process::{Service, email2fa, run};
use serde_json::json;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A SIGTERM that arrives while the service is still starting (here: as it
/// prints the new tenant's secret, before it listens) is kept for the
/// graceful shutdown: exit 0, not a death by signal.
#[test]
fn a_sigterm_during_startup_stops_the_service_gracefully() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("dir");
    let mut child = email2fa(dir.path(), &[("EMAIL2FA_LISTEN", "127.0.0.1:0")])
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn email2fa serve");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a first line").expect("text");
    assert!(first.starts_with("Created tenant"), "{first}");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = child.wait_with_output().expect("wait");
    assert!(
        output.status.success(),
        "exit 0, not {}: {}",
        output.status,
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("shutdown signal received"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_fresh_embedded_start_creates_the_default_tenant_and_prints_its_secret_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mut service = Service::start(dir.path(), &[]);
    let first = service.stdout.lock().expect("lock").clone();
    let secret = first.lines().last().expect("a secret line").to_string();
    assert!(secret.starts_with("whsec_"), "{first}");
    assert_eq!(
        email2fa::crypto::decode_signing_secret(&secret).map(|k| k.len()),
        Some(32)
    );
    assert!(first.contains("\"default\""));
    let status = service.stop();
    assert!(
        status.success(),
        "SIGTERM exits 0, not {status}: {}",
        service.output()
    );

    // The defaults put everything under data/.
    assert!(dir.path().join("data/email2fa.db").exists());
    let key = dir.path().join("data/master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
            0o600
        );
    }

    let again = Service::start(dir.path(), &[]);
    assert!(
        !again.stdout.lock().expect("lock").contains("whsec_"),
        "printed once only"
    );
    let list = run(dir.path(), &[], &["tenant", "list"]);
    assert!(stdout(&list).contains("default"));
    drop(again);
}

#[test]
fn tenant_create_prints_the_secret_alone_on_its_last_line_and_list_never_shows_it() {
    let dir = tempfile::tempdir().expect("dir");
    let created = run(
        dir.path(),
        &[],
        &["tenant", "create", "acme-shop", "--name", "Acme Shop"],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let out = stdout(&created);
    let secret = out.lines().last().expect("last line");
    assert!(
        secret.starts_with("whsec_") && !secret.contains(' '),
        "{out}"
    );

    let duplicate = run(dir.path(), &[], &["tenant", "create", "acme-shop"]);
    assert!(!duplicate.status.success());
    assert!(stderr(&duplicate).contains("already exists"));
    let invalid = run(dir.path(), &[], &["tenant", "create", "Acme_Shop"]);
    assert!(!invalid.status.success());
    assert!(stderr(&invalid).contains("invalid tenant id"));

    let rotated = run(
        dir.path(),
        &[],
        &["tenant", "rotate-secret", "acme-shop", "--overlap", "2h"],
    );
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let new_secret = stdout(&rotated).lines().last().expect("line").to_string();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);

    let list = run(dir.path(), &[], &["tenant", "list"]);
    let listed = stdout(&list);
    assert!(listed.contains("acme-shop") && listed.contains("Acme Shop"));
    assert!(listed.contains("valid until"), "{listed}");
    assert!(!listed.contains("whsec_"));
    assert!(!listed.contains(&secret[6..20]) && !listed.contains(&new_secret[6..20]));
}

/// Operator input that would break mail or the binary is refused with a
/// clear error: a tenant name with a line break (it becomes the sender
/// name of the tenant's emails), an overlap too long to be a date.
#[test]
fn tenant_commands_refuse_names_and_overlaps_that_cannot_work() {
    let dir = tempfile::tempdir().expect("dir");
    // A usage error (exit 2) whose message names the option.
    let refused = |args: &[&str], option: &str| {
        let output = run(dir.path(), &[], args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains(option), "{}", stderr(&output));
    };
    let long = "x".repeat(101);
    for name in ["Acme\nBcc: x@evil.test", "Acme\rShop", "", "   ", &long] {
        refused(&["tenant", "create", "acme-shop", "--name", name], "--name");
    }
    let created = run(dir.path(), &[], &["tenant", "create", "acme-shop"]);
    assert!(created.status.success(), "{}", stderr(&created));
    for overlap in ["1000000years", "366d", "soon"] {
        refused(
            &["tenant", "rotate-secret", "acme-shop", "--overlap", overlap],
            "--overlap",
        );
    }
    let year = run(
        dir.path(),
        &[],
        &["tenant", "rotate-secret", "acme-shop", "--overlap", "365d"],
    );
    assert!(year.status.success(), "{}", stderr(&year));
}

/// CI exports `EMAIL2FA_TEST_*` for the test suite; a service started in the
/// same shell must ignore them (the benchmark's smoke run found it did not).
#[test]
fn the_test_suites_variables_are_ignored() {
    let dir = tempfile::tempdir().expect("dir");
    let output = run(
        dir.path(),
        &[
            ("EMAIL2FA_TEST_BROWSER", "1"),
            ("EMAIL2FA_TEST_DATABASE_URL", "postgres://127.0.0.1:1/x"),
            ("EMAIL2FA_TEST_NESTED__KEY", "x"),
        ],
        &["migrate"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        ("EMAIL2FA_LISTEN", "not-an-address", "listen"),
        ("EMAIL2FA_LISTN", "127.0.0.1:1", "listn"),
        (
            "EMAIL2FA_DATABASE_URL",
            "mysql://x",
            "EMAIL2FA_DATABASE_URL",
        ),
        ("EMAIL2FA_LOG_FORMAT", "xml", "log_format"),
        ("EMAIL2FA_MASTER_KEY", "c2hvcnQ=", "EMAIL2FA_MASTER_KEY"),
        // An unknown nested key is named once, exactly as it was given.
        (
            "EMAIL2FA_DELIVERY__CA_FIEL",
            "/etc/ca.pem",
            "EMAIL2FA_DELIVERY__CA_FIEL (delivery.ca_fiel,",
        ),
        (
            "EMAIL2FA_Delivery__Ca_Fiel",
            "/etc/ca.pem",
            "EMAIL2FA_Delivery__Ca_Fiel (delivery.ca_fiel,",
        ),
        ("EMAIL2FA_LISTN", "127.0.0.1:1", "EMAIL2FA_LISTN (listn,"),
    ];
    for (key, value, named) in cases {
        let output = run(dir.path(), &[(key, value)], &["migrate"]);
        assert!(!output.status.success(), "{key}={value} was accepted");
        let message = stderr(&output);
        assert!(message.contains(named), "{key}: {message}");
    }
    let postgres_without_key = run(
        dir.path(),
        &[("EMAIL2FA_DATABASE_URL", "postgres://127.0.0.1:1/x")],
        &["migrate"],
    );
    assert!(stderr(&postgres_without_key).contains("EMAIL2FA_MASTER_KEY is required"));
}

#[test]
fn webhook_send_signs_posts_and_prints_the_answer() {
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::start(dir.path(), &[]);
    let url = service.base.clone();
    let sent = run(
        dir.path(),
        &[],
        &[
            "webhook",
            "send",
            "--url",
            &url,
            "settings.updated",
            r#"{"admin_2fa_allowed": true}"#,
        ],
    );
    assert!(sent.status.success(), "{}", stderr(&sent));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&sent)).expect("json answer");
    assert_eq!(answer["admin_2fa_allowed"], true);

    let args = [
        "webhook",
        "send",
        "--url",
        &url,
        "--id",
        "msg_fixed",
        "settings.updated",
        "{}",
    ];
    assert!(run(dir.path(), &[], &args).status.success());
    // A retry comes seconds later: the same id and data are still the same
    // body (the envelope once carried the time of sending, and a retry in
    // another second was refused as a different body under the same id).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let replay = run(dir.path(), &[], &args);
    assert!(
        stderr(&replay).contains("idempotent replay"),
        "{}",
        stderr(&replay)
    );

    let refused = run(
        dir.path(),
        &[],
        &[
            "webhook",
            "send",
            "--url",
            &url,
            "settings.updated",
            r#"{"code_length": 99}"#,
        ],
    );
    assert!(!refused.status.success());
    assert!(stdout(&refused).contains("validation_failed"));
    drop(service);
}

#[test]
fn no_secret_reaches_any_log_line_at_any_level() {
    let dir = tempfile::tempdir().expect("dir");
    let master_key = common::random_master_key();
    for format in ["json", "pretty"] {
        let env = [
            ("EMAIL2FA_MASTER_KEY", master_key.as_str()),
            ("EMAIL2FA_LOG_FORMAT", format),
            ("RUST_LOG", "trace"),
        ];
        let created = run(
            dir.path(),
            &env,
            &["tenant", "create", &format!("shop-{format}")],
        );
        assert!(created.status.success(), "{}", stderr(&created));
        let secret = stdout(&created).lines().last().expect("secret").to_string();
        let mut service = Service::start(dir.path(), &env);
        let client = reqwest::blocking::Client::new();
        let key = email2fa::crypto::decode_signing_secret(&secret).expect("key");
        let smtp_password = format!("smtp-pw-{}", ulid::Ulid::generate());
        let events = [
            ("settings.updated", json!({"admin_2fa_allowed": true})),
            (
                "service_provider.upserted",
                json!({"id": "p1", "title": "Mail", "kind": "smtp",
                "smtp": {"host": "localhost", "port": 2525, "security": "none", "username": "u",
                         "password": smtp_password, "from_address": "shop@example.com"}}),
            ),
            (
                "service_provider.upserted",
                json!({"id": "p2", "title": "Mail", "kind": "smtp",
                "smtp": {"host": "bad host", "port": 2525, "security": "none",
                         "password": smtp_password, "from_address": "shop@example.com"}}),
            ),
        ];
        for (i, (event_type, data)) in events.iter().enumerate() {
            let body =
                serde_json::to_vec(&json!({"type": event_type, "data": data})).expect("json");
            let ts = chrono::Utc::now().timestamp();
            let id = format!("msg_{i}");
            let signature = email2fa::signature::sign(&key, &id, ts, &body);
            for signature in [signature, "v1,AAAA".to_string()] {
                let status = client
                    .post(format!("{}/v1/webhooks/shop-{format}", service.base))
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signature)
                    .body(body.clone())
                    .send()
                    .expect("post")
                    .status();
                assert!(status.is_client_error() || status.is_success());
            }
        }
        let sent = run(
            dir.path(),
            &env,
            &[
                "webhook",
                "send",
                "--tenant",
                &format!("shop-{format}"),
                "--url",
                &service.base,
                "settings.updated",
                "{}",
            ],
        );
        assert!(sent.status.success());
        assert!(service.stop().success());
        let logs = format!("{}{}{}", service.output(), stderr(&created), stderr(&sent));
        assert!(
            logs.contains("service_provider.upserted"),
            "the calls were logged at all"
        );
        assert!(logs.lines().count() > 20, "trace level produced logs");
        let forbidden = [
            ("the signing secret", secret.clone()),
            (
                "the signing secret's key",
                secret["whsec_".len()..].to_string(),
            ),
            ("the SMTP password", smtp_password.clone()),
            ("the master key", master_key.clone()),
        ];
        for (what, value) in forbidden {
            assert!(
                !logs.contains(&value),
                "{what} appeared in the {format} logs"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_code_or_trust_token_reaches_any_log_line() {
    let dir = tempfile::tempdir().expect("dir");
    let sink = common::SmtpSink::start().await.expect("sink");
    let master_key = common::random_master_key();
    let env = [
        ("EMAIL2FA_MASTER_KEY", master_key.as_str()),
        ("EMAIL2FA_LOG_FORMAT", "json"),
        ("RUST_LOG", "trace"),
    ];
    let created = run(dir.path(), &env, &["tenant", "create", "shop"]);
    let secret = stdout(&created).lines().last().expect("secret").to_string();
    let key = email2fa::crypto::decode_signing_secret(&secret).expect("key");
    let mut service = Service::start(dir.path(), &env);
    let client = reqwest::Client::new();
    let post = |event_type: &'static str, data: serde_json::Value| {
        let body = serde_json::to_vec(&json!({"type": event_type, "data": data})).expect("json");
        let ts = chrono::Utc::now().timestamp();
        let id = format!("msg_{}", ulid::Ulid::generate());
        let signature = email2fa::signature::sign(&key, &id, ts, &body);
        client
            .post(format!("{}/v1/webhooks/shop", service.base))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };
    let ok = |r: reqwest::Response| async move {
        assert!(r.status().is_success(), "{}", r.status());
        r.json::<serde_json::Value>().await.expect("json")
    };
    ok(post("service_provider.upserted", json!({"id": "p1", "title": "Sink", "kind": "smtp",
        "smtp": {"host": "127.0.0.1", "port": sink.port(), "security": "none", "from_address": "shop@acme.example"}})).await.expect("post")).await;
    ok(post(
        "secondary_auth_provider.upserted",
        json!({"id": "s1", "title": "Codes", "service_provider_id": "p1"}),
    )
    .await
    .expect("post"))
    .await;
    ok(
        post("settings.updated", json!({"customer_2fa_allowed": true}))
            .await
            .expect("post"),
    )
    .await;
    let user = json!({"id": "u1", "role": "customer", "email": "u1@shop.example"});
    let started = ok(post(
        "enrollment.started",
        json!({"user": user, "email": "u1@shop.example"}),
    )
    .await
    .expect("post"))
    .await;
    let mut codes = vec![common::code_in(
        &sink.wait_for(1, std::time::Duration::from_secs(20)).await[0],
    )];
    let verified = ok(post(
        "enrollment.verify",
        json!({"challenge_id": started["challenge_id"], "code": codes[0]}),
    )
    .await
    .expect("post"))
    .await;
    assert_eq!(verified["outcome"], "verified");
    let login = ok(post("login.started", json!({"user": user}))
        .await
        .expect("post"))
    .await;
    codes.push(common::code_in(
        &sink.wait_for(2, std::time::Duration::from_secs(20)).await[1],
    ));
    let trusted = ok(post(
        "login.verify",
        json!({"challenge_id": login["challenge_id"], "code": codes[1], "trust_device": true}),
    )
    .await
    .expect("post"))
    .await;
    let token = trusted["trust_token"].as_str().expect("token").to_string();
    ok(
        post("login.started", json!({"user": user, "trust_token": token}))
            .await
            .expect("post"),
    )
    .await;
    assert!(service.stop().success());
    let logs = format!("{}{}", service.output(), stderr(&created));
    assert!(logs.contains("email sent"), "the sends were logged");
    for code in &codes {
        assert!(!logs.contains(code.as_str()), "a code appeared in the logs");
    }
    assert!(
        !logs.contains(&token),
        "the trust token appeared in the logs"
    );
    assert!(
        !logs.contains(&token["e2fa_td_".len()..]),
        "the trust token's body appeared in the logs"
    );
}

/// Reads until the service closes the connection; how long that took.
fn time_to_close(stream: &mut std::net::TcpStream) -> std::time::Duration {
    use std::io::Read;
    let started = std::time::Instant::now();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return started.elapsed();
            }
            Err(error) => panic!("the connection stayed open: {error}"),
        }
    }
}

/// Opens a connection that sends half a request's headers and stalls.
fn stalled_client(service: &Service) -> std::net::TcpStream {
    use std::io::Write;
    let addr = service.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"POST /v1/webhooks/acme HTTP/1.1\r\nHost: localhost\r\n")
        .expect("half the headers");
    stream
}

/// A client that sends half its headers and stalls is cut off after the
/// header-read timeout instead of holding its connection for as long as it
/// likes.
#[test]
fn a_stalled_client_is_cut_off_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::start(
        dir.path(),
        &[("EMAIL2FA_HTTP__HEADER_READ_TIMEOUT_MS", "500")],
    );
    let mut slow = stalled_client(&service);
    let took = time_to_close(&mut slow);
    assert!(
        took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(5),
        "closed after {took:?}"
    );
}

/// SIGTERM ends the service within its shutdown deadline even while a
/// client stalls mid-request (the header-read timeout set far away).
#[test]
fn a_stalled_client_does_not_delay_the_stop() {
    let dir = tempfile::tempdir().expect("dir");
    let mut service = Service::start(
        dir.path(),
        &[
            ("EMAIL2FA_HTTP__HEADER_READ_TIMEOUT_MS", "120000"),
            ("EMAIL2FA_HTTP__SHUTDOWN_TIMEOUT_MS", "1000"),
        ],
    );
    let _slow = stalled_client(&service);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let status = service.stop();
    assert!(status.success(), "exit 0: {status:?}: {}", service.output());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "stopped after {:?}",
        started.elapsed()
    );
}

/// Open connections are bounded: past `EMAIL2FA_HTTP__MAX_CONNECTIONS` a
/// new client waits until one closes.
#[test]
fn open_connections_are_bounded() {
    let dir = tempfile::tempdir().expect("dir");
    let service = Service::start(
        dir.path(),
        &[
            ("EMAIL2FA_HTTP__HEADER_READ_TIMEOUT_MS", "120000"),
            ("EMAIL2FA_HTTP__MAX_CONNECTIONS", "1"),
        ],
    );
    let health = format!("{}/healthz", service.base);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_millis(1500))
        .build()
        .expect("client");
    let slow = stalled_client(&service);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        client.get(&health).send().is_err(),
        "a second connection is served while the first holds the only slot"
    );
    drop(slow);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match client.get(&health).send() {
            Ok(answer) if answer.status().is_success() => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "not served after the slot freed: {other:?}"
            ),
        }
    }
}

/// `EMAIL2FA_DELIVERY__CA_FILE` that cannot be used stops a process that
/// sends, naming the setting and the file; a good one is accepted.
#[test]
fn a_ca_file_that_cannot_be_used_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let missing = dir.path().join("missing.pem");
    for file in [&junk, &broken, &missing] {
        let file = file.to_str().expect("path");
        let mut child = email2fa(dir.path(), &[("EMAIL2FA_DELIVERY__CA_FILE", file)])
            .arg("worker")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn email2fa worker");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("email2fa worker started with the CA file {file}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut message = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut message)
            .expect("stderr");
        assert!(!status.success(), "{file}: {message}");
        assert!(
            message.contains("EMAIL2FA_DELIVERY__CA_FILE") && message.contains(file),
            "{file}: {message}"
        );
    }
}

/// A command that only reads or changes what exists, run where no service
/// ever ran, says which database it looked for and how to point at the
/// right one, and leaves no database or master key behind.
#[test]
fn commands_that_need_an_existing_database_never_create_one() {
    let dir = tempfile::tempdir().expect("dir");
    let commands: [&[&str]; 6] = [
        &["webhook", "send", "settings.updated", "{}"],
        &["tenant", "list"],
        &["tenant", "rename", "default", "Acme"],
        &["tenant", "rotate-secret", "default"],
        &["queue", "stats"],
        &["dlq", "list"],
    ];
    for args in commands {
        let output = run(dir.path(), &[], args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = stderr(&output);
        let expected = dir.path().join("data/email2fa.db");
        assert!(
            message.contains(&format!("no database at {}", expected.display())),
            "{args:?}: {message}"
        );
        assert!(
            message.contains("EMAIL2FA_DATABASE_URL"),
            "{args:?}: {message}"
        );
    }
    assert!(!dir.path().join("data").exists(), "nothing was created");

    // A database without its master key is not given a new one (that key
    // could open none of its secrets).
    assert!(run(dir.path(), &[], &["migrate"]).status.success());
    std::fs::remove_file(dir.path().join("data/master.key")).expect("rm");
    let output = run(dir.path(), &[], &["tenant", "list"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("master key"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("data/master.key").exists());
}

#[test]
fn tenant_rename_changes_the_name_with_the_same_rules_as_create() {
    let dir = tempfile::tempdir().expect("dir");
    let created = run(dir.path(), &[], &["tenant", "create", "acme-shop"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let renamed = run(
        dir.path(),
        &[],
        &["tenant", "rename", "acme-shop", "Acme Outdoor Shop"],
    );
    assert!(renamed.status.success(), "{}", stderr(&renamed));
    assert!(stdout(&run(dir.path(), &[], &["tenant", "list"])).contains("Acme Outdoor Shop"));

    for name in ["Acme\nBcc: x@evil.test", "", &"x".repeat(101)] {
        let refused = run(dir.path(), &[], &["tenant", "rename", "acme-shop", name]);
        assert_eq!(refused.status.code(), Some(2), "{name:?}");
        assert!(stderr(&refused).contains("NAME"), "{}", stderr(&refused));
    }
    let unknown = run(dir.path(), &[], &["tenant", "rename", "nobody", "Nobody"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("no tenant \"nobody\""));
}

/// The Quick start without copying: `--get` prints one field for a
/// script, the file transport names each email after its delivery id, and
/// the sender name is the tenant's name when the provider has no
/// `from_name` (after a rename, the new one).
#[test]
fn webhook_send_get_prints_one_field_and_the_email_is_named_after_its_delivery() {
    let dir = tempfile::tempdir().expect("dir");
    let env = [("EMAIL2FA_MAIL_TRANSPORT", "file")];
    let service = Service::start(dir.path(), &env);
    let send = |args: &[&str]| {
        let mut all = vec!["webhook", "send", "--url", &service.base];
        all.extend_from_slice(args);
        run(dir.path(), &env, &all)
    };
    let ok = |output: std::process::Output| {
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).trim_end().to_string()
    };
    ok(send(&[
        "settings.updated",
        r#"{"customer_2fa_allowed": true}"#,
    ]));
    ok(send(&[
        "service_provider.upserted",
        r#"{"id": "mail", "title": "Mail", "kind": "smtp", "smtp": {"host": "localhost", "port": 25, "security": "none", "from_address": "shop@example.com"}}"#,
    ]));
    ok(send(&[
        "secondary_auth_provider.upserted",
        r#"{"id": "codes", "title": "Codes", "service_provider_id": "mail"}"#,
    ]));
    ok(run(
        dir.path(),
        &env,
        &["tenant", "rename", "default", "Acme Outdoor"],
    ));
    let delivery = ok(send(&[
        "enrollment.started",
        r#"{"user": {"id": "u1", "role": "customer"}, "email": "jane@example.com"}"#,
        "--get",
        "delivery_id",
    ]));
    assert!(
        !delivery.contains('"') && !delivery.contains('\n'),
        "{delivery}"
    );
    let file = dir.path().join(format!("data/outbox/{delivery}.eml"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {}",
            file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let email = std::fs::read_to_string(&file).expect("eml");
    assert!(
        email.contains("is your Acme Outdoor verification code"),
        "{email}"
    );

    let login = send(&[
        "login.started",
        r#"{"user": {"id": "u2", "role": "customer"}}"#,
        "--get",
        "decision",
        "--get",
        "reason",
    ]);
    assert!(
        stderr(&login).contains(r#""decision": "allow""#),
        "the whole answer on stderr: {}",
        stderr(&login)
    );
    assert_eq!(ok(login), "allow\nnot_enrolled", "one line per field");
    let missing = send(&["settings.updated", "{}", "--get", "challenge_id"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stdout(&missing).is_empty());
    assert!(
        stderr(&missing).contains("the answer has no field \"challenge_id\""),
        "{}",
        stderr(&missing)
    );
    let refused = send(&[
        "settings.updated",
        r#"{"code_length": 99}"#,
        "--get",
        "code_length",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stdout(&refused).is_empty(),
        "a script reads nothing on a failure"
    );
    assert!(stderr(&refused).contains("validation_failed"));
    drop(service);
}
