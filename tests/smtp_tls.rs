//! Real mail servers: the whole flow (a signed `enrollment.started` through
//! the service, a worker that delivers through the provider configured by
//! `service_provider.upserted`) against a private Postfix
//! (`common::postfix`) with STARTTLS, implicit TLS and SMTP AUTH, its
//! certificates from a throwaway CA trusted through
//! `EMAIL2FA_DELIVERY__CA_FILE`; and the timeouts and connection reuse
//! against a server that stops answering or drops the connection mid-DATA
//! (the SMTP sink, which can be told to).
//!
//! Assertions are on what Postfix delivered into its Maildir, on the
//! deliveries and dead letters, on the ops dashboard, and on the logs of
//! the whole test process (captured at trace level): the SMTP password
//! never appears in a log line or a dead letter.

mod common;

use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use common::TestApp;
use common::ops::{dead_letters, ops};
use common::postfix::{Postfix, USER};
use email2fa::settings::Settings;
use email2fa_testkit::sink::Fault;
use mail_parser::MessageParser;
use secrecy::SecretString;
use serde_json::{Value, json};

/// Everything the test process logged, at trace level.
static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Arc::default);

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of this test binary (all tests share it).
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(|| LogWriter)
        .try_init();
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().expect("logs")).into_owned()
}

/// A UTF-8 sender name and an internationalised recipient domain.
const FROM_NAME: &str = "Bücherstube Müller";
const RECIPIENT: &str = "jane@Bücher.example";
const RECIPIENT_ASCII: &str = "jane@xn--bcher-kva.example";
const OPS_TOKEN: &str = common::ops::TOKEN;

/// An app that trusts `ca_file` besides the built-in roots, retries fast,
/// waits at most 2 s after rejected credentials, and has the ops API on.
async fn app_trusting(ca_file: Option<&std::path::Path>) -> TestApp {
    let ca_file = ca_file.map(std::path::Path::to_path_buf);
    TestApp::sqlite_with(move |settings: &mut Settings| {
        settings.delivery.ca_file = ca_file;
        settings.delivery.backoff_base_ms = 200;
        settings.delivery.backoff_cap_ms = 2000;
        settings.delivery.smtp_timeout_seconds = 5;
        settings.ops_token = Some(SecretString::from(OPS_TOKEN));
    })
    .await
}

/// Service provider `p1` with these SMTP settings and this test's sender,
/// secondary auth provider `s1`, customers allowed.
async fn use_provider(app: &TestApp, smtp: Value) {
    let mut smtp = smtp;
    smtp["from_address"] = json!("shop@acme.example");
    smtp["from_name"] = json!(FROM_NAME);
    app.configure_smtp(smtp, json!({"customer_2fa_allowed": true}))
        .await;
}

/// The host's "Add" → "Send Code"; returns the delivery id.
async fn enroll(app: &TestApp, user: &str) -> String {
    let answer = app
        .post_signed(
            "enrollment.started",
            json!({"user": {"id": user, "role": "customer"}, "email": RECIPIENT}),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    answer.json()["delivery_id"]
        .as_str()
        .expect("delivery")
        .to_string()
}

/// `status`, `attempts`, `last_error` of a delivery.
async fn delivery(app: &TestApp, id: &str) -> (String, i32, Option<String>) {
    email2fa_db::with_db!(app.store.db(), pool => sqlx::query_as(
        "select status, attempts, last_error from deliveries where id = $1")
        .bind(id).fetch_one(pool).await.expect("row"))
}

/// The dashboard's HTML.
async fn dashboard(app: &TestApp) -> String {
    let page = ops(app, reqwest::Method::GET, "/ops", None).await;
    assert_eq!(page.status, 200);
    String::from_utf8_lossy(&page.bytes).into_owned()
}

/// Asserts what Postfix delivered: the headers, both parts with the same
/// code, the UTF-8 sender name and the internationalised domain, and
/// Postfix's own record of TLS and of who authenticated.
fn assert_delivered(raw: &[u8], authenticated: bool) {
    let text = String::from_utf8_lossy(raw);
    let message = MessageParser::default().parse(raw).expect("a MIME message");
    let from = message.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.name(), Some(FROM_NAME), "{text}");
    assert_eq!(from.address(), Some("shop@acme.example"));
    let to = message.to().and_then(|a| a.first()).expect("To");
    assert_eq!(to.address(), Some(RECIPIENT_ASCII), "{text}");
    assert!(text.contains("Auto-Submitted: auto-generated"), "{text}");
    let subject = message.subject().expect("Subject");
    let code: String = subject.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "the subject starts with the code: {subject}");
    let plain = message.body_text(0).expect("a text part");
    let html = message.body_html(0).expect("an HTML part");
    assert!(plain.contains(&code) && html.contains(&code), "{text}");
    assert!(html.contains("<html") || html.contains("<p"), "{html}");
    let received = message
        .header_raw("Received")
        .expect("Postfix's Received header");
    assert!(received.contains("using TLS"), "sent over TLS: {received}");
    assert_eq!(
        received.contains(&format!("Authenticated sender: {USER}")),
        authenticated,
        "{received}"
    );
}

/// The password appears nowhere an operator or a host can read.
async fn assert_password_kept(app: &TestApp, password: &str) {
    assert!(
        !logs().contains(password),
        "the password reached a log line"
    );
    let errors: Vec<(Option<String>,)> = email2fa_db::with_db!(app.store.db(), pool =>
        sqlx::query_as("select last_error from deliveries union all select last_error from dead_letters")
            .fetch_all(pool).await.expect("errors"));
    for (error,) in errors {
        assert!(!error.unwrap_or_default().contains(password));
    }
}

/// Two emails (the second over the pooled TLS connection) through
/// `security` to the port `port` picks, with the right password and
/// Postfix's CA trusted: both delivered intact, over TLS, authenticated.
async fn delivered_with_the_right_password(port: fn(&Postfix) -> u16, security: &str) {
    capture_logs();
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let app = app_trusting(Some(&postfix.ca_file)).await;
    let smtp = json!({"host": "localhost", "port": port(&postfix), "security": security,
        "username": USER, "password": postfix.password});
    use_provider(&app, smtp).await;
    for user in ["u1", "u2"] {
        let id = enroll(&app, user).await;
        let status = app.wait_delivery(&id, "sent").await;
        assert_eq!(status, "sent", "{}", postfix.log());
    }
    let messages = postfix.wait_for(2).await;
    assert_eq!(messages.len(), 2, "{}", postfix.log());
    for message in &messages {
        assert_delivered(message, true);
    }
    assert!(postfix.log().contains(&format!("sasl_username={USER}")));
    assert_password_kept(&app, &postfix.password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_the_right_password_delivers_through_postfix() {
    delivered_with_the_right_password(|p| p.submission, "starttls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_the_right_password_delivers_through_postfix() {
    delivered_with_the_right_password(|p| p.smtps, "tls").await;
}

/// A 535 is the provider's fault: it shows as unhealthy, the email waits
/// (the attempt given back) instead of dying, and goes out once the
/// password is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_marks_the_provider_unhealthy_and_loses_nothing() {
    capture_logs();
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let app = app_trusting(Some(&postfix.ca_file)).await;
    let wrong = format!("wrong-{}", ulid::Ulid::generate());
    let smtp = |password: &str| {
        json!({"host": "localhost", "port": postfix.submission,
        "security": "starttls", "username": USER, "password": password})
    };
    use_provider(&app, smtp(&wrong)).await;
    let id = enroll(&app, "u1").await;
    assert_eq!(app.wait_delivery(&id, "retrying").await, "retrying");
    let (_, attempts, error) = delivery(&app, &id).await;
    assert!(
        error.as_deref().unwrap_or_default().contains("535"),
        "{error:?}"
    );
    assert_eq!(
        attempts, 0,
        "a rejected password does not use up an attempt"
    );
    let page = dashboard(&app).await;
    assert!(
        page.contains("SMTP credentials rejected") && page.contains("acme:p1"),
        "{page}"
    );
    // It keeps waiting, more often than max_attempts allows, without dying.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        assert_ne!(delivery(&app, &id).await.0, "dead", "dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        postfix.log().matches("authentication failed").count() >= 3,
        "{}",
        postfix.log()
    );
    assert!(dead_letters(&app, "").await.is_empty());
    assert!(postfix.messages().is_empty());
    use_provider(&app, smtp(&postfix.password)).await;
    assert_eq!(
        app.wait_delivery(&id, "sent").await,
        "sent",
        "{}",
        postfix.log()
    );
    assert_delivered(&postfix.wait_for(1).await[0], true);
    assert!(!dashboard(&app).await.contains("SMTP credentials rejected"));
    assert_password_kept(&app, &wrong).await;
    assert_password_kept(&app, &postfix.password).await;
}

/// Runs one email into a TLS failure and checks what everyone sees: a
/// `tls_failed` dead letter at the first attempt naming the cause, the
/// provider unhealthy on the dashboard, nothing delivered and nothing sent
/// in clear (Postfix saw no AUTH and no MAIL).
async fn assert_refused_for_tls(postfix: &Postfix, app: &TestApp, smtp: Value, cause: &str) {
    use_provider(app, smtp).await;
    let id = enroll(app, "u1").await;
    assert_eq!(
        app.wait_delivery(&id, "dead").await,
        "dead",
        "{}",
        postfix.log()
    );
    let letters = dead_letters(app, "").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "tls_failed", "{letters:?}");
    assert_eq!(
        letters[0]["attempts"], 1,
        "not retried: no retry fixes a certificate"
    );
    let error = letters[0]["last_error"].as_str().expect("last_error");
    assert!(error.contains(cause), "{error}");
    let page = dashboard(app).await;
    assert!(
        page.contains("TLS failed") && page.contains(cause),
        "{page}"
    );
    assert!(postfix.messages().is_empty());
    let log = postfix.log();
    assert!(
        !log.contains("sasl_username") && !log.contains("mail=1"),
        "{log}"
    );
    assert_password_kept(app, &postfix.password).await;
}

/// Which CA the app trusts besides the built-in roots.
#[derive(Clone, Copy)]
enum Trust {
    /// The CA that signed Postfix's certificates.
    PostfixCa,
    /// Another private CA, unrelated to Postfix's.
    OtherCa,
    /// Only the built-in roots.
    BuiltIn,
}

/// One email through `security` to the port `port` picks, with the
/// right password, trusting `trust`: refused as [`assert_refused_for_tls`].
async fn refused_for_tls(port: fn(&Postfix) -> u16, security: &str, trust: Trust, cause: &str) {
    capture_logs();
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let ca_file = match trust {
        Trust::PostfixCa => Some(postfix.ca_file.as_path()),
        Trust::OtherCa => Some(postfix.other_ca_file.as_path()),
        Trust::BuiltIn => None,
    };
    let app = app_trusting(ca_file).await;
    let smtp = json!({"host": "localhost", "port": port(&postfix), "security": security,
        "username": USER, "password": postfix.password});
    assert_refused_for_tls(&postfix, &app, smtp, cause).await;
}

/// Trusting another private CA does not make this one trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_untrusted_ca_is_refused_as_tls_failed() {
    refused_for_tls(
        |p| p.submission,
        "starttls",
        Trust::OtherCa,
        "UnknownIssuer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_implicit_tls_certificate_from_an_untrusted_ca_is_refused_as_tls_failed() {
    refused_for_tls(|p| p.smtps, "tls", Trust::BuiltIn, "UnknownIssuer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused_as_tls_failed() {
    refused_for_tls(
        |p| p.wrong_name,
        "starttls",
        Trust::PostfixCa,
        "not valid for name",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_starttls_is_refused_when_starttls_is_required() {
    refused_for_tls(
        |p| p.plain,
        "starttls",
        Trust::PostfixCa,
        "STARTTLS is not supported",
    )
    .await;
}

/// `tls` to a port that speaks plain SMTP: the server does not speak TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_to_a_plain_smtp_port_is_refused_as_tls_failed() {
    refused_for_tls(|p| p.plain, "tls", Trust::PostfixCa, "tls error").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_delivers_in_plain_text_to_a_local_relay() {
    capture_logs();
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let app = app_trusting(None).await;
    use_provider(
        &app,
        json!({"host": "127.0.0.1", "port": postfix.plain, "security": "none"}),
    )
    .await;
    let id = enroll(&app, "u1").await;
    assert_eq!(
        app.wait_delivery(&id, "sent").await,
        "sent",
        "{}",
        postfix.log()
    );
    let messages = postfix.wait_for(1).await;
    assert_eq!(messages.len(), 1);
    let text = String::from_utf8_lossy(&messages[0]);
    assert!(
        text.contains(RECIPIENT_ASCII) && !text.contains("using TLS"),
        "{text}"
    );
}

/// A sink that lets these tests make it stop answering or drop the line,
/// with a 1 s SMTP timeout and fast retries.
async fn app_with_sink_timeout() -> TestApp {
    let app = TestApp::sqlite_with(|settings: &mut Settings| {
        settings.delivery.smtp_timeout_seconds = 1;
        settings.delivery.backoff_base_ms = 300;
        settings.delivery.backoff_cap_ms = 600;
    })
    .await;
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    app
}

/// Waits for `status` and says how long that took.
async fn time_until(app: &TestApp, id: &str, status: &str) -> Duration {
    let started = Instant::now();
    assert_eq!(app.wait_delivery(id, status).await, status);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_ends_in_a_retry_within_the_timeout() {
    let app = app_with_sink_timeout().await;
    app.sink.set_delay(Duration::from_secs(3600));
    let id = enroll(&app, "u1").await;
    let waited = time_until(&app, &id, "retrying").await;
    assert!(
        waited < Duration::from_millis(2500),
        "the 1 s timeout ended it: {waited:?}"
    );
    let (_, _, error) = delivery(&app, &id).await;
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("did not answer"),
        "{error:?}"
    );
    app.sink.set_delay(Duration::ZERO);
    assert_eq!(app.wait_delivery(&id, "sent").await, "sent");
    assert!(
        app.sink.stats().connections >= 2,
        "the retry used a new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_whose_server_stops_answering_is_replaced() {
    let app = app_with_sink_timeout().await;
    let first = enroll(&app, "u1").await;
    assert_eq!(app.wait_delivery(&first, "sent").await, "sent");
    assert_eq!(app.sink.stats().connections, 1);
    app.sink.set_delay(Duration::from_secs(3600));
    let second = enroll(&app, "u2").await;
    let waited = time_until(&app, &second, "retrying").await;
    assert!(
        waited < Duration::from_millis(2500),
        "the 1 s timeout ended it: {waited:?}"
    );
    app.sink.set_delay(Duration::ZERO);
    assert_eq!(app.wait_delivery(&second, "sent").await, "sent");
    assert_eq!(app.sink.count(), 2);
    assert!(
        app.sink.stats().connections >= 2,
        "the silent connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_data_is_retried_on_a_new_connection() {
    let app = app_with_sink_timeout().await;
    let first = enroll(&app, "u1").await;
    assert_eq!(app.wait_delivery(&first, "sent").await, "sent");
    app.sink.fail_next(1, Fault::Disconnect);
    let second = enroll(&app, "u2").await;
    let waited = time_until(&app, &second, "retrying").await;
    assert!(
        waited < Duration::from_millis(1500),
        "no wait for a timeout: {waited:?}"
    );
    assert_eq!(app.wait_delivery(&second, "sent").await, "sent");
    let stats = app.sink.stats();
    assert_eq!(stats.disconnects, 1);
    assert_eq!(stats.connections, 2, "one pooled connection, replaced once");
    assert_eq!(
        delivery(&app, &second).await.1,
        2,
        "sent at the second attempt"
    );
    assert_eq!(app.sink.count(), 2);
}
