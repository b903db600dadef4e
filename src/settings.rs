//! The typed settings tree: defaults, then an optional TOML file
//! (`--config FILE`), then `EMAIL2FA_*` environment variables (`__` nests:
//! `EMAIL2FA_WEBHOOK__TOLERANCE_SECONDS=600`).
//!
//! Unknown keys and bad values stop start-up with a message naming the key and
//! how to fix it. Secrets are [`SecretString`]s and never print; the database
//! URL prints without its password.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Every setting of the service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `EMAIL2FA_LISTEN`: address of the HTTP server.
    pub listen: SocketAddr,
    /// `EMAIL2FA_DATABASE_URL`: `sqlite:…` or `postgres://…`.
    pub database_url: DatabaseUrl,
    /// `EMAIL2FA_QUEUE_URL`: the queue; unset means the database itself.
    pub queue_url: Option<DatabaseUrl>,
    /// `EMAIL2FA_QUEUE_NAME`: the apalis queue name (default `emails`); give
    /// each installation sharing one Redis server its own.
    pub queue_name: String,
    /// `EMAIL2FA_MASTER_KEY`: base64 of 32 bytes; generated into
    /// `{data_dir}/master.key` in the embedded default when unset.
    #[serde(serialize_with = "serialize_redacted")]
    pub master_key: Option<SecretString>,
    /// `EMAIL2FA_METRICS_LISTEN`: an extra address serving only `/metrics`
    /// (for `worker` processes, which have no HTTP server otherwise).
    pub metrics_listen: Option<SocketAddr>,
    /// `EMAIL2FA_OPS_TOKEN`: bearer token of `/ops`; unset turns it off.
    #[serde(serialize_with = "serialize_redacted")]
    pub ops_token: Option<SecretString>,
    /// `EMAIL2FA_MAIL_TRANSPORT`: `smtp` or `file`.
    pub mail_transport: MailTransport,
    /// `EMAIL2FA_LOG_FORMAT`: `pretty` or `json`.
    pub log_format: LogFormat,
    /// `EMAIL2FA_LOG`: a tracing filter (`info`, `email2fa=debug,info`);
    /// `RUST_LOG` wins when set.
    pub log: String,
    /// `EMAIL2FA_DATA_DIR`: where the embedded default keeps its master key
    /// and the file transport its `.eml` files.
    pub data_dir: PathBuf,
    /// The webhook ingress.
    pub webhook: WebhookSettings,
    /// Database pool.
    pub database: DatabaseSettings,
    /// Send limits and lockout.
    pub limits: LimitSettings,
    /// The delivery engine.
    pub delivery: DeliverySettings,
    /// The batching of hot webhooks.
    pub ingest: IngestSettings,
    /// `EMAIL2FA_HTTP__*`.
    pub http: HttpSettings,
}

/// `EMAIL2FA_HTTP__*`: the HTTP server's limits (see `src/http/server.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Milliseconds a client has to send a request's headers (and an idle
    /// keep-alive connection to start its next request).
    pub header_read_timeout_ms: u64,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Milliseconds the server waits for open connections after the
    /// shutdown signal.
    pub shutdown_timeout_ms: u64,
}

/// `EMAIL2FA_INGEST__*`: how the ingress groups concurrent webhooks into
/// one transaction (see the README's Architecture section).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Writer lanes (each holds at most one transaction); 0 picks 1.
    pub lanes: usize,
    /// Most webhooks in one transaction.
    pub max_batch: usize,
    /// Microseconds a lane waits for more webhooks after the first of a
    /// batch; 0 takes whatever arrived while the previous batch ran.
    pub linger_us: u64,
}

/// `EMAIL2FA_LIMITS__*`: the send limits and the lockout (API.md section 4).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Codes per user per window.
    pub codes_per_user: i64,
    /// The per-user window.
    pub user_window_seconds: i64,
    /// Codes per recipient address per window.
    pub codes_per_recipient: i64,
    /// The per-recipient window.
    pub recipient_window_seconds: i64,
    /// Consecutive wrong codes (across challenges) that pause new codes.
    pub lockout_failures: i32,
    /// How long new codes stay paused.
    pub lockout_seconds: i64,
}

/// `EMAIL2FA_DELIVERY__*`: the delivery engine.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Attempts per email before it becomes a dead letter.
    pub max_attempts: i32,
    /// First retry delay in milliseconds (then ×2 with jitter).
    pub backoff_base_ms: u64,
    /// Longest retry delay in milliseconds.
    pub backoff_cap_ms: u64,
    /// Emails sent at once per worker process.
    pub concurrency: usize,
    /// Seconds an SMTP command may take.
    pub smtp_timeout_seconds: u64,
    /// Seconds a shutdown waits for in-flight sends.
    pub shutdown_timeout_seconds: u64,
    /// Seconds a claimed delivery belongs to its worker, renewed every
    /// third of it while the worker runs its attempt; once it runs out (the
    /// worker died mid-send) another may retry it.
    pub lease_seconds: i64,
    /// Where per-tenant template overrides live (`{dir}/tenants/{tenant}/…`).
    pub templates_dir: PathBuf,
    /// `EMAIL2FA_DELIVERY__CA_FILE`: a PEM file of CA certificates that SMTP
    /// servers' certificates may chain to, besides the built-in roots (an
    /// internal relay's private CA). Read at start-up by the processes
    /// that send.
    pub ca_file: Option<PathBuf>,
}

/// `EMAIL2FA_WEBHOOK__*`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Largest accepted distance between `webhook-timestamp` and now.
    pub tolerance_seconds: i64,
    /// Largest accepted body (the contract says 64 KiB).
    pub max_body_bytes: usize,
    /// How long a `webhook-id` and its answer are remembered (≥ 24 h).
    pub idempotency_hours: i64,
}

/// `EMAIL2FA_DATABASE__*`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Most connections per process.
    pub max_connections: u32,
    /// Milliseconds to wait for a connection before answering 503.
    pub acquire_timeout_ms: u64,
}

/// How email leaves the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// Each service provider's SMTP server.
    Smtp,
    /// `.eml` files in `{data_dir}/outbox/`, for demos and development.
    File,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, with the span fields.
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: DatabaseUrl::from("sqlite://data/email2fa.db"),
            queue_url: None,
            queue_name: "emails".into(),
            master_key: None,
            ops_token: None,
            metrics_listen: None,
            mail_transport: MailTransport::Smtp,
            log_format: LogFormat::Pretty,
            log: "info".into(),
            data_dir: PathBuf::from("data"),
            webhook: WebhookSettings {
                tolerance_seconds: 300,
                max_body_bytes: 64 * 1024,
                idempotency_hours: 48,
            },
            database: DatabaseSettings {
                max_connections: 16,
                acquire_timeout_ms: 3000,
            },
            limits: LimitSettings {
                codes_per_user: 5,
                user_window_seconds: 900,
                codes_per_recipient: 10,
                recipient_window_seconds: 3600,
                lockout_failures: 20,
                lockout_seconds: 900,
            },
            delivery: DeliverySettings {
                max_attempts: 6,
                backoff_base_ms: 2000,
                backoff_cap_ms: 60_000,
                concurrency: 16,
                smtp_timeout_seconds: 15,
                shutdown_timeout_seconds: 30,
                lease_seconds: 30,
                templates_dir: PathBuf::from("templates"),
                ca_file: None,
            },
            ingest: IngestSettings {
                lanes: 0,
                max_batch: 64,
                linger_us: 0,
            },
            http: HttpSettings {
                header_read_timeout_ms: 10_000,
                max_connections: 4096,
                shutdown_timeout_ms: 10_000,
            },
        }
    }
}

/// A bad setting; the message says which and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A key is unknown, or a value has the wrong type.
    #[error("{}", describe_load_error(.0))]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("{key}: {message}")]
    Invalid {
        /// The environment variable (or TOML key) at fault.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl Settings {
    /// Loads defaults < `config_file` < environment, then validates.
    ///
    /// `EMAIL2FA_TEST_*` variables belong to the test suite and are skipped.
    pub fn load(config_file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            // Keys keep their case here (`TEST_BROWSER`): compare without it.
            Env::prefixed("EMAIL2FA_")
                .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                .split("__"),
        );
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and combinations serde cannot express.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key, message: &str| {
            Err(SettingsError::Invalid {
                key,
                message: message.into(),
            })
        };
        if !self.database_url.is_sqlite() && !self.database_url.is_postgres() {
            return invalid(
                "EMAIL2FA_DATABASE_URL",
                "must start with sqlite: (e.g. sqlite://data/email2fa.db) or postgres://",
            );
        }
        if let Some(queue) = &self.queue_url
            && !queue.expose().starts_with("redis://")
            && !queue.expose().starts_with("rediss://")
            && queue.expose() != self.database_url.expose()
        {
            return invalid(
                "EMAIL2FA_QUEUE_URL",
                "must be redis://… or rediss://…, or unset to use the database as the queue",
            );
        }
        let name_ok = (1..=64).contains(&self.queue_name.len())
            && self
                .queue_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return invalid(
                "EMAIL2FA_QUEUE_NAME",
                "must be 1 to 64 letters, digits, '-', '_' or '.'",
            );
        }
        if !(1..=3600).contains(&self.webhook.tolerance_seconds) {
            return invalid(
                "EMAIL2FA_WEBHOOK__TOLERANCE_SECONDS",
                "must be between 1 and 3600 (the Standard Webhooks default is 300)",
            );
        }
        if !(1024..=1024 * 1024).contains(&self.webhook.max_body_bytes) {
            return invalid(
                "EMAIL2FA_WEBHOOK__MAX_BODY_BYTES",
                "must be between 1024 and 1048576 (the contract's limit is 65536)",
            );
        }
        if self.webhook.idempotency_hours < 24 {
            return invalid(
                "EMAIL2FA_WEBHOOK__IDEMPOTENCY_HOURS",
                "must be at least 24: the contract promises to remember webhook ids for 24 h",
            );
        }
        let limits = &self.limits;
        if limits.codes_per_user < 1
            || limits.codes_per_recipient < 1
            || limits.lockout_failures < 1
            || limits.user_window_seconds < 1
            || limits.recipient_window_seconds < 1
            || limits.lockout_seconds < 0
        {
            return invalid(
                "EMAIL2FA_LIMITS__*",
                "counts and windows must be at least 1 (lockout_seconds at least 0)",
            );
        }
        if !(1..=25).contains(&self.delivery.max_attempts) {
            return invalid(
                "EMAIL2FA_DELIVERY__MAX_ATTEMPTS",
                "must be between 1 and 25",
            );
        }
        if self.ingest.lanes > 64 {
            return invalid(
                "EMAIL2FA_INGEST__LANES",
                "must be between 0 (automatic) and 64",
            );
        }
        if !(1..=1000).contains(&self.ingest.max_batch) {
            return invalid("EMAIL2FA_INGEST__MAX_BATCH", "must be between 1 and 1000");
        }
        if !(100..=300_000).contains(&self.http.header_read_timeout_ms) {
            return invalid(
                "EMAIL2FA_HTTP__HEADER_READ_TIMEOUT_MS",
                "must be between 100 and 300000 (5 minutes)",
            );
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            return invalid(
                "EMAIL2FA_HTTP__MAX_CONNECTIONS",
                "must be between 1 and 1000000",
            );
        }
        if self.http.shutdown_timeout_ms > 600_000 {
            return invalid(
                "EMAIL2FA_HTTP__SHUTDOWN_TIMEOUT_MS",
                "must be at most 600000 (10 minutes)",
            );
        }
        if self.ingest.linger_us > 100_000 {
            return invalid(
                "EMAIL2FA_INGEST__LINGER_US",
                "must be at most 100000 (0.1 s); 0 waits for nothing",
            );
        }
        if self.delivery.lease_seconds < 2 {
            return invalid("EMAIL2FA_DELIVERY__LEASE_SECONDS", "must be at least 2");
        }
        if self.delivery.concurrency == 0 {
            return invalid("EMAIL2FA_DELIVERY__CONCURRENCY", "must be at least 1");
        }
        if self.delivery.backoff_base_ms == 0
            || self.delivery.backoff_cap_ms < self.delivery.backoff_base_ms
        {
            return invalid(
                "EMAIL2FA_DELIVERY__BACKOFF_BASE_MS",
                "must be at least 1 and not above EMAIL2FA_DELIVERY__BACKOFF_CAP_MS",
            );
        }
        if self.database.max_connections == 0 {
            return invalid("EMAIL2FA_DATABASE__MAX_CONNECTIONS", "must be at least 1");
        }
        if self
            .ops_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().len() < 16)
        {
            return invalid(
                "EMAIL2FA_OPS_TOKEN",
                "must be at least 16 characters (generate one with `openssl rand -hex 32`)",
            );
        }
        Ok(())
    }
}

/// Names each failing setting the way an operator sets it:
/// `EMAIL2FA_LISTEN (listen): invalid socket address syntax`.
fn describe_load_error(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|error| {
            let path = setting_path(&error);
            let env = given_variable(&format!("EMAIL2FA_{}", path.join("__").to_uppercase()));
            let source = error
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            format!("{env} ({}, from {source}): {}", path.join("."), error.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The dotted path of the setting an error is about, lowercased. For an
/// unknown key figment's path usually ends with the key already (an unknown
/// `EMAIL2FA_DELIVERY__CA_FIEL` is `delivery.ca_fiel`); it is added only
/// when missing, so it is never named twice.
fn setting_path(error: &figment::Error) -> Vec<String> {
    let mut path: Vec<String> = error.path.iter().map(|p| p.to_lowercase()).collect();
    if let figment::error::Kind::UnknownField(name, _) = &error.kind
        && path.last() != Some(&name.to_lowercase())
    {
        path.push(name.to_lowercase());
    }
    path
}

/// The environment variable as the operator spelled it (figment lowercases
/// what follows the prefix), or `canonical` when none is set (the setting
/// came from the TOML file).
fn given_variable(canonical: &str) -> String {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .find(|name| name.eq_ignore_ascii_case(canonical))
        .unwrap_or_else(|| canonical.to_owned())
}

fn serialize_redacted<S: serde::Serializer>(
    value: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    // Settings only serialize to seed figment's defaults, where secrets are
    // always unset; a set secret is never written out.
    match value {
        None => serializer.serialize_none(),
        Some(_) => serializer.serialize_str("[redacted]"),
    }
}

/// A database or queue URL. `Debug` and `Display` hide its password.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl From<&str> for DatabaseUrl {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl DatabaseUrl {
    /// The full URL, password included: only for opening connections.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `sqlite:` scheme.
    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    /// The file of an `sqlite:` URL (`sqlite://data/email2fa.db` →
    /// `data/email2fa.db`); `None` for other schemes and in-memory databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.0.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or_default();
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }

    /// `postgres://` or `postgresql://` scheme.
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    /// `redis://` or `rediss://` scheme.
    pub fn is_redis(&self) -> bool {
        self.0.starts_with("redis://") || self.0.starts_with("rediss://")
    }

    /// The URL with the password of its user-info and any `password=`
    /// parameter replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let mut out = match url.find("://") {
            Some(scheme_end) => {
                let rest = &url[scheme_end + 3..];
                let authority_end = rest.find('/').unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => {
                        let userinfo = &rest[..at];
                        let user = userinfo.split(':').next().unwrap_or_default();
                        let masked = if userinfo.contains(':') {
                            format!("{user}:***")
                        } else {
                            user.to_string()
                        };
                        format!("{}://{masked}{}", &url[..scheme_end], &rest[at..])
                    }
                    None => url.clone(),
                }
            }
            None => url.clone(),
        };
        if let Some(start) = out.find("password=") {
            let value_start = start + "password=".len();
            let value_end = out[value_start..]
                .find('&')
                .map_or(out.len(), |i| value_start + i);
            out.replace_range(value_start..value_end, "***");
        }
        out
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sqlite_url_names_its_file() {
        let path = |url: &str| DatabaseUrl::from(url).sqlite_path();
        assert_eq!(
            path("sqlite://data/email2fa.db"),
            Some("data/email2fa.db".into())
        );
        assert_eq!(
            path("sqlite:///tmp/x.db?mode=rwc"),
            Some("/tmp/x.db".into())
        );
        assert_eq!(path("sqlite:shop.db"), Some("shop.db".into()));
        assert_eq!(path("sqlite::memory:"), None);
        assert_eq!(path("postgres://localhost/x"), None);
    }

    #[test]
    fn database_urls_print_without_their_password() {
        let url = DatabaseUrl::from("postgres://app:s3cret@db:5432/shop?sslmode=require");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db:5432/shop?sslmode=require"
        );
        let query = DatabaseUrl::from("postgres://db/shop?user=a&password=s3cret&x=1");
        assert_eq!(
            query.to_string(),
            "postgres://db/shop?user=a&password=***&x=1"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            DatabaseUrl::from("sqlite://data/e.db").to_string(),
            "sqlite://data/e.db"
        );
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let settings = Settings {
            master_key: Some(SecretString::from(
                "bWFzdGVyLWtleS1tYXN0ZXIta2V5LW1hc3Rlci1rZXk=",
            )),
            ops_token: Some(SecretString::from("ops-token-ops-token")),
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("bWFzdGVy"));
        assert!(!shown.contains("ops-token"));
    }

    #[test]
    fn out_of_range_values_say_how_to_fix_them() {
        let mut settings = Settings::default();
        settings.webhook.idempotency_hours = 1;
        let message = settings.validate().expect_err("refused").to_string();
        assert!(message.contains("EMAIL2FA_WEBHOOK__IDEMPOTENCY_HOURS"));
        assert!(message.contains("at least 24"));
        let bad_url = Settings {
            database_url: DatabaseUrl::from("mysql://x"),
            ..Settings::default()
        };
        assert!(
            bad_url
                .validate()
                .expect_err("refused")
                .to_string()
                .contains("sqlite:")
        );
    }
}
