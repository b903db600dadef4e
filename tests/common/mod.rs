//! The end-to-end harness: the real service on port 0 with a fresh database
//! (an SQLite temp file, or a new PostgreSQL database when
//! `EMAIL2FA_TEST_DATABASE_URL` is set) and typed helpers per call.
#![allow(dead_code)]

pub mod browser;
pub mod ops;
pub mod postfix;
pub mod process;
pub mod redis_server;

use base64::Engine;
use email2fa::app;
use email2fa::settings::{DatabaseUrl, Settings};
use email2fa::store::Store;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::Value;
use std::time::Duration;

pub use email2fa_testkit::sink::{ReceivedMessage, SmtpSink};
use email2fa_workers::queue::Queue;

tokio::task_local! {
    /// False inside [`ingress_only`]: the app runs without in-process workers.
    static WITH_WORKERS: bool;
}

/// Builds a test app without in-process workers (for tests that run
/// `email2fa worker` processes): `ingress_only(TestApp::postgres()).await`.
pub async fn ingress_only<T>(build: impl std::future::Future<Output = T>) -> T {
    WITH_WORKERS.scope(false, build).await
}

/// The tenant every test app starts with.
pub const TENANT: &str = "acme";

/// Runs each named scenario `async fn name(app: TestApp)` as two tests,
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::TestApp::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::common::TestApp::postgres().await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

/// Runs each named scenario on the three queue backends: `name::sqlite`
/// (SQLite database and queue), `name::postgres` (PostgreSQL database and
/// queue) and `name::redis` (Redis queue; PostgreSQL database when
/// configured, else SQLite).
#[macro_export]
macro_rules! on_every_queue {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::TestApp::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::common::TestApp::postgres().await {
                    super::$name(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                if let Some(app) = $crate::common::TestApp::redis().await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

/// The Redis URL of the test server, or `None` (with a note) when unset.
pub fn redis_url() -> Option<String> {
    match std::env::var("EMAIL2FA_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!(
                "skipped: EMAIL2FA_TEST_REDIS_URL is not set, so this Redis test did not run"
            );
            None
        }
    }
}

/// A running service with one tenant.
pub struct TestApp {
    pub base: String,
    pub store: Store,
    pub settings: Settings,
    pub secret: String,
    pub client: reqwest::Client,
    pub sink: SmtpSink,
    pub queue: Queue,
    /// The service under test, as `email2fa serve` (or `ingress`) runs it.
    pub application: Option<app::Application>,
    /// Further ingress processes on the same database ([`Self::second_ingress`]).
    others: std::sync::Mutex<Vec<app::Application>>,
    _guard: DbGuard,
}

/// The code in a code email: the line of digits alone in its text part.
pub fn code_in(message: &ReceivedMessage) -> String {
    let text = String::from_utf8_lossy(&message.data);
    text.lines()
        .map(str::trim)
        .find(|line| (6..=10).contains(&line.len()) && line.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in the email:\n{text}"))
        .to_string()
}

/// An answer.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.bytes)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem answer with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) -> Value {
        let body = self.json();
        assert_eq!(self.status, status, "answer: {body}");
        assert_eq!(body["code"], code, "answer: {body}");
        assert_eq!(body["status"], status);
        assert!(body["title"].is_string() && body["detail"].is_string());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        body
    }
}

enum DbGuard {
    Sqlite(tempfile::TempDir),
    Postgres {
        admin_url: String,
        name: String,
        _dir: tempfile::TempDir,
    },
    Redis {
        url: String,
        queue: String,
        #[allow(dead_code)]
        database: Box<DbGuard>,
    },
}

/// Deletes one queue's keys (never FLUSHALL: the server is shared).
fn delete_redis_keys(url: &str, queue: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection() else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{queue}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    for key in keys {
        let _: Result<(), _> = redis::cmd("DEL").arg(&key).query(&mut conn);
    }
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        if let DbGuard::Redis { url, queue, .. } = self {
            delete_redis_keys(url, queue);
        }
        if let DbGuard::Postgres {
            admin_url, name, ..
        } = self
        {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs outside async; a small runtime on its own thread cleans up.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(async {
                        if let Ok(pool) = sqlx::PgPool::connect(&admin_url).await {
                            let sql = format!("drop database if exists {name} with (force)");
                            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// A fresh random master key, base64.
pub fn random_master_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// Settings for a test service on port 0.
pub fn test_settings(database_url: &str, data_dir: &std::path::Path) -> Settings {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: DatabaseUrl::from(database_url),
        master_key: Some(SecretString::from(random_master_key())),
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    settings.database.max_connections = 8;
    settings.database.acquire_timeout_ms = 2000;
    settings
}

/// A new PostgreSQL database on the test server, or `None` (with a note)
/// when `EMAIL2FA_TEST_DATABASE_URL` is unset. Panics when it is set but the
/// server cannot be reached: a configured backend that is down is a failure.
pub async fn postgres_database() -> Option<(String, String, String)> {
    let Ok(admin_url) = std::env::var("EMAIL2FA_TEST_DATABASE_URL") else {
        eprintln!(
            "skipped: EMAIL2FA_TEST_DATABASE_URL is not set, so this PostgreSQL test did not run"
        );
        return None;
    };
    let pool = sqlx::PgPool::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("EMAIL2FA_TEST_DATABASE_URL is set but unreachable: {e}"));
    let name = format!(
        "e2fa_test_{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&pool)
        .await
        .expect("create test database");
    pool.close().await;
    let url = with_database_name(&admin_url, &name);
    Some((admin_url, name, url))
}

async fn postgres_database_quiet() -> Option<(String, String, String)> {
    if std::env::var("EMAIL2FA_TEST_DATABASE_URL").is_err() {
        return None;
    }
    postgres_database().await
}

pub use email2fa_db::with_database_name;

impl TestApp {
    pub async fn sqlite() -> Self {
        Self::sqlite_with(|_| {}).await
    }

    pub async fn sqlite_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("email2fa.db").display());
        let mut settings = test_settings(&url, dir.path());
        adjust(&mut settings);
        Self::start(settings, DbGuard::Sqlite(dir)).await
    }

    pub async fn postgres() -> Option<Self> {
        Self::postgres_with(|_| {}).await
    }

    pub async fn postgres_with(adjust: impl FnOnce(&mut Settings)) -> Option<Self> {
        let (admin_url, name, url) = postgres_database().await?;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(&url, dir.path());
        adjust(&mut settings);
        Some(
            Self::start(
                settings,
                DbGuard::Postgres {
                    admin_url,
                    name,
                    _dir: dir,
                },
            )
            .await,
        )
    }

    /// A Redis queue (a queue name of its own) over PostgreSQL when
    /// configured, else SQLite; `None` when Redis is not configured.
    pub async fn redis() -> Option<Self> {
        Self::redis_with(|_| {}).await
    }

    pub async fn redis_with(adjust: impl FnOnce(&mut Settings)) -> Option<Self> {
        let url = redis_url()?;
        Some(Self::redis_at(url, adjust).await)
    }

    /// [`Self::redis_with`] on the Redis server at `url` (a private one,
    /// [`redis_server::RedisServer`], for tests that take it away).
    pub async fn redis_at(url: String, adjust: impl FnOnce(&mut Settings)) -> Self {
        let client = redis::Client::open(url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("EMAIL2FA_TEST_REDIS_URL is set but unreachable: {e}"));
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("redis ping");
        let queue = format!(
            "e2fa_test_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().to_path_buf();
        let (database, db_url) = match postgres_database_quiet().await {
            Some((admin_url, name, db_url)) => (
                DbGuard::Postgres {
                    admin_url,
                    name,
                    _dir: dir,
                },
                db_url,
            ),
            None => {
                let db_url = format!("sqlite://{}", data_dir.join("email2fa.db").display());
                (DbGuard::Sqlite(dir), db_url)
            }
        };
        let mut settings = test_settings(&db_url, &data_dir);
        settings.queue_url = Some(DatabaseUrl::from(url.as_str()));
        settings.queue_name = queue.clone();
        adjust(&mut settings);
        let guard = DbGuard::Redis {
            url,
            queue,
            database: Box::new(database),
        };
        Self::start(settings, guard).await
    }

    async fn start(settings: Settings, guard: DbGuard) -> Self {
        // EMAIL2FA_TEST_LOG=debug shows the service's logs while debugging a test.
        if let Ok(filter) = std::env::var("EMAIL2FA_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let store = app::open_store(&settings).await.expect("open store");
        let secret = email2fa::crypto::new_signing_secret();
        store
            .create_tenant(TENANT, "Acme Shop", &secret)
            .await
            .expect("tenant");
        let sink = SmtpSink::start().await.expect("smtp sink");
        let roles = app::Roles {
            ingress: true,
            workers: WITH_WORKERS.try_with(|on| *on).unwrap_or(true),
        };
        let application = app::Application::build_on(&settings, store.clone(), roles)
            .await
            .expect("start");
        Self {
            base: format!("http://{}", application.addr().expect("an HTTP server")),
            store,
            settings,
            secret,
            client: reqwest::Client::new(),
            sink,
            queue: application.queue().clone(),
            application: Some(application),
            others: std::sync::Mutex::new(Vec::new()),
            _guard: guard,
        }
    }

    /// Points the tenant's mail at this app's SMTP sink: service provider
    /// `p1`, secondary auth provider `s1`, and the given settings.
    pub async fn configure_mail(&self, settings: Value) {
        let sink = serde_json::json!({"host": "127.0.0.1", "port": self.sink.port(),
            "security": "none", "from_address": "shop@acme.example", "from_name": "Acme Shop"});
        self.configure_smtp(sink, settings).await;
    }

    /// Service provider `p1` with these `smtp` settings, secondary auth
    /// provider `s1`, and the given tenant settings.
    pub async fn configure_smtp(&self, smtp: Value, settings: Value) {
        let provider = self
            .post_signed(
                "service_provider.upserted",
                serde_json::json!({"id": "p1", "title": "SMTP", "kind": "smtp", "smtp": smtp}),
            )
            .await;
        assert_eq!(provider.status, 200, "{:?}", provider.json());
        let secondary = self
            .post_signed("secondary_auth_provider.upserted",
                serde_json::json!({"id": "s1", "title": "Email codes", "service_provider_id": "p1"}))
            .await;
        assert_eq!(secondary.status, 200);
        let updated = self.post_signed("settings.updated", settings).await;
        assert_eq!(updated.status, 200, "{:?}", updated.json());
    }

    /// Waits for the n-th message at the sink (1-based) and returns it.
    pub async fn nth_mail(&self, n: usize) -> ReceivedMessage {
        let messages = self.sink.wait_for(n, Duration::from_secs(20)).await;
        assert!(
            messages.len() >= n,
            "only {} of {n} emails arrived",
            messages.len()
        );
        messages[n - 1].clone()
    }

    /// Waits for the n-th message (1-based) to `recipient` and returns it.
    pub async fn mail_for(&self, recipient: &str, n: usize) -> ReceivedMessage {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mine: Vec<ReceivedMessage> = self
                .sink
                .messages()
                .into_iter()
                .filter(|m| m.rcpt_to.iter().any(|r| r == recipient))
                .collect();
            if mine.len() >= n {
                return mine[n - 1].clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} emails to {recipient} arrived",
                mine.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The status of a delivery, polled until it is `want` or 20 s passed.
    pub async fn wait_delivery(&self, delivery_id: &str, want: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.delivery_status(delivery_id).await;
            if status == want || std::time::Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A delivery's status.
    pub async fn delivery_status(&self, delivery_id: &str) -> String {
        email2fa_workers::deliveries::status_of(self.store.db(), delivery_id)
            .await
            .expect("status")
            .unwrap_or_default()
    }

    /// Signs a body as the host would, with this app's tenant secret.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = email2fa::crypto::decode_signing_secret(&self.secret).expect("key");
        email2fa::signature::sign(&key, id, timestamp, body)
    }

    /// An envelope body for an event.
    pub fn envelope(event_type: &str, data: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": event_type,
            "timestamp": "2026-11-28T07:00:00Z",
            "data": data,
        }))
        .expect("json")
    }

    /// Posts a correctly signed event with a fresh webhook id.
    pub async fn post_signed(&self, event_type: &str, data: Value) -> TestResponse {
        let id = format!("msg_{}", ulid::Ulid::generate());
        self.post_signed_with_id(&id, event_type, data).await
    }

    /// Posts a correctly signed event with a given webhook id.
    pub async fn post_signed_with_id(
        &self,
        id: &str,
        event_type: &str,
        data: Value,
    ) -> TestResponse {
        self.post_body(id, &Self::envelope(event_type, data)).await
    }

    /// Posts raw bytes, correctly signed, now.
    pub async fn post_body(&self, id: &str, body: &[u8]) -> TestResponse {
        let now = chrono::Utc::now().timestamp();
        let signature = self.signature(id, now, body);
        self.post_raw(
            TENANT,
            &[
                ("webhook-id", id.to_string()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", signature),
            ],
            body.to_vec(),
        )
        .await
    }

    /// Posts anything to a tenant's webhook URL.
    pub async fn post_raw(
        &self,
        tenant: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> TestResponse {
        let mut request = self
            .client
            .post(format!("{}/v1/webhooks/{tenant}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        Self::collect(request.send().await.expect("request")).await
    }

    /// A GET.
    pub async fn get(&self, path: &str) -> TestResponse {
        Self::collect(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    async fn collect(response: reqwest::Response) -> TestResponse {
        TestResponse {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            bytes: response.bytes().await.expect("body").to_vec(),
        }
    }

    /// A second ingress on this app's database, with its own pool and
    /// caches, as another process would have; returns its base URL.
    pub async fn second_ingress(&self) -> String {
        let other = app::Application::build(&self.settings, app::Roles::INGRESS)
            .await
            .expect("second ingress");
        let base = format!("http://{}", other.addr().expect("an HTTP server"));
        self.others.lock().expect("not poisoned").push(other);
        base
    }

    /// Posts a correctly signed event with a fresh webhook id to the
    /// ingress at `base`.
    pub async fn post_signed_to(&self, base: &str, event_type: &str, data: Value) -> TestResponse {
        let body = Self::envelope(event_type, data);
        let id = format!("msg_{}", ulid::Ulid::generate());
        let now = chrono::Utc::now().timestamp();
        let signature = self.signature(&id, now, &body);
        let request = self
            .client
            .post(format!("{base}/v1/webhooks/{TENANT}"))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(body);
        Self::collect(request.send().await.expect("request")).await
    }

    /// A count from the database, for asserting what was (not) written.
    pub async fn count(&self, sql: &'static str) -> i64 {
        email2fa_db::with_db!(self.store.db(), pool => {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.expect("count");
            n
        })
    }
}

impl TestApp {
    /// Stops the workers and the server, waiting for in-flight sends.
    pub async fn shutdown(&mut self) {
        if let Some(application) = self.application.take() {
            let _ = application.stop().await;
        }
    }
}

/// Everything the service stored, as text and bytes: for SQLite the
/// database file and its WAL; for PostgreSQL every row of the service's and
/// apalis's tables; for Redis every value of the queue's keys.
pub async fn everything_stored(app: &TestApp) -> String {
    let mut out = String::new();
    match app.store.db() {
        email2fa_db::Db::Sqlite(pool, _) => {
            let _ = sqlx::query("pragma wal_checkpoint(passive)")
                .execute(pool)
                .await;
            let file = app
                .settings
                .database_url
                .expose()
                .trim_start_matches("sqlite://")
                .to_string();
            for path in [file.clone(), format!("{file}-wal")] {
                if let Ok(bytes) = std::fs::read(&path) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
        }
        email2fa_db::Db::Postgres(pool) => {
            let tables: Vec<(String,)> = sqlx::query_as(
                "select table_schema || '.' || table_name from information_schema.tables \
                 where table_schema in ('email2fa', 'apalis') and table_type = 'BASE TABLE'",
            )
            .fetch_all(pool)
            .await
            .expect("tables");
            for (table,) in tables {
                let sql = format!("select coalesce(string_agg(t::text, ' '), '') from {table} t");
                let (text,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .expect("dump");
                out.push_str(&text);
            }
        }
    }
    if let Some(url) = app.settings.queue_url.as_ref().filter(|u| u.is_redis()) {
        let client = redis::Client::open(url.expose()).expect("redis");
        let mut conn = client.get_connection().expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", app.settings.queue_name))
            .query(&mut conn)
            .expect("keys");
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).expect("type");
            let values: Vec<Vec<u8>> = match kind.as_str() {
                "string" => vec![redis::cmd("GET").arg(&key).query(&mut conn).expect("get")],
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query(&mut conn)
                    .expect("hgetall"),
                "list" => redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut conn)
                    .expect("lrange"),
                "set" => redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query(&mut conn)
                    .expect("smembers"),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut conn)
                    .expect("zrange"),
                _ => Vec::new(),
            };
            for value in values {
                out.push_str(&String::from_utf8_lossy(&value));
            }
        }
    }
    out
}
