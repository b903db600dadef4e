//! How messages leave: a pooled lettre SMTP transport per service provider
//! (cached, rebuilt when the provider changes), or `.eml` files for demos,
//! and the classification of every failure: transient, permanent, rejected
//! credentials, or a connection that cannot be made secure.
//!
//! `starttls` and `tls` always check the server's certificate against the
//! trusted roots ([`TrustedRoots`]) and the provider's host name; nothing
//! ever falls back to plain text. Every read, write and TLS handshake is
//! bounded by the SMTP timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::Tls;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::trust::TrustedRoots;

/// How a provider's connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// STARTTLS upgrade (required; usually port 587).
    Starttls,
    /// Implicit TLS (usually port 465).
    Tls,
    /// Plain text, for a relay on the same host or network only.
    None,
}

impl Security {
    /// Parses the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "starttls" => Some(Self::Starttls),
            "tls" => Some(Self::Tls),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// One SMTP service provider, with its password opened in memory only.
#[derive(Clone)]
pub struct SmtpProvider {
    /// Changes whenever the provider's settings change (tenant, id, update
    /// time): the transport cache is keyed by it.
    pub key: String,
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Connection security.
    pub security: Security,
    /// SMTP AUTH user.
    pub username: Option<String>,
    /// SMTP AUTH password (never logged: `Debug` hides it).
    pub password: Option<String>,
}

impl SmtpProvider {
    /// The provider without its version (`tenant:provider` of the key
    /// `tenant:provider@version`): the same across its updates.
    pub fn identity(&self) -> &str {
        identity_of(&self.key)
    }
}

/// `tenant:provider` of a provider key `tenant:provider@version`.
pub fn identity_of(key: &str) -> &str {
    key.rsplit_once('@').map_or(key, |(identity, _)| identity)
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("key", &self.key)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Where messages go.
#[derive(Debug, Clone)]
pub enum MailMode {
    /// Each provider's SMTP server.
    Smtp,
    /// `.eml` files in this directory.
    Files(PathBuf),
}

/// What happened to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth another attempt (4xx, timeouts, refused or reset connections).
    Transient(String),
    /// Will never succeed (5xx, rejected recipient, bad address).
    Permanent(String),
    /// The server refused our credentials (535): the provider is broken,
    /// not the message.
    AuthFailed(String),
    /// The connection could not be made secure: a certificate from an
    /// untrusted CA or for another host name, no STARTTLS offered where it
    /// is required, a server that does not speak TLS. The provider's setup
    /// (or the trusted CAs) must change; no retry fixes it.
    Tls(String),
}

/// Classifies a lettre SMTP error. The text keeps the server's reply but
/// never the message or the credentials (lettre's errors carry neither).
pub fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    let text = error.to_string();
    match error.status().map(u16::from) {
        Some(535) => SendError::AuthFailed(text),
        Some(_) if error.is_permanent() => SendError::Permanent(text),
        Some(_) => SendError::Transient(text),
        None if error.is_tls() => SendError::Tls(text),
        None if error.is_client() => SendError::Permanent(text),
        None => SendError::Transient(text),
    }
}

/// The transports, built once per provider version and shared by all sends.
///
/// At most `pool_size` sends run at once (more jobs than that may be
/// claiming or recording at the same time): each provider's pool then never
/// needs more connections than it keeps, and a connection is handed from
/// one send to the next instead of being opened and closed.
#[derive(Clone)]
pub struct Transports {
    mode: MailMode,
    timeout: Duration,
    pool_size: u32,
    roots: TrustedRoots,
    sends: Arc<tokio::sync::Semaphore>,
    cache: Arc<Mutex<HashMap<String, AsyncSmtpTransport<Tokio1Executor>>>>,
}

impl Transports {
    /// Transports with an SMTP command timeout, a connection pool of
    /// `pool_size` per provider, and the roots their TLS connections trust.
    pub fn new(mode: MailMode, timeout: Duration, pool_size: u32, roots: TrustedRoots) -> Self {
        let pool_size = pool_size.max(1);
        Self {
            mode,
            timeout,
            pool_size,
            roots,
            sends: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(pool_size).unwrap_or(usize::MAX),
            )),
            cache: Arc::default(),
        }
    }

    fn smtp(
        &self,
        provider: &SmtpProvider,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, SendError> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(transport) = cache.get(&provider.key) {
            return Ok(transport.clone());
        }
        let tls = match provider.security {
            Security::None => Tls::None,
            secured => {
                let parameters = self.roots.parameters(&provider.host).map_err(|e| {
                    SendError::Tls(format!("cannot configure TLS for {}: {e}", provider.host))
                })?;
                if secured == Security::Tls {
                    Tls::Wrapper(parameters)
                } else {
                    Tls::Required(parameters)
                }
            }
        };
        // `builder_dangerous` only means "no TLS unless told": the line
        // after sets it (Required: STARTTLS or nothing; Wrapper: TLS from
        // the first byte).
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&provider.host)
            .tls(tls)
            .port(provider.port)
            .timeout(Some(self.timeout))
            .pool_config(PoolConfig::new().max_size(self.pool_size));
        if let (Some(user), Some(password)) = (&provider.username, &provider.password) {
            builder = builder
                .credentials(Credentials::new(user.clone(), password.clone()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        let transport = builder.build();
        // An older version of this provider is dropped with its pool.
        cache.retain(|key, _| identity_of(key) != provider.identity());
        cache.insert(provider.key.clone(), transport.clone());
        Ok(transport)
    }

    /// Sends a message; returns the server's reply (or the file's name).
    /// The file transport names each file after `delivery_id`
    /// (`{delivery_id}.eml`), so a script finds the email of the delivery
    /// an answer named; a second attempt of the same delivery replaces it.
    pub async fn send(
        &self,
        provider: &SmtpProvider,
        delivery_id: &str,
        message: Message,
    ) -> Result<String, SendError> {
        // The semaphore is never closed.
        let _turn = self.sends.acquire().await.ok();
        match &self.mode {
            MailMode::Files(dir) => write_file(dir, delivery_id, &message).await,
            MailMode::Smtp => {
                let response = self
                    .smtp(provider)?
                    .send(message)
                    .await
                    .map_err(|e| classify(&e))?;
                let lines: Vec<&str> = response.message().collect();
                Ok(format!("{} {}", response.code(), lines.join(" ")))
            }
        }
    }
}

/// Writes `{dir}/{delivery_id}.eml` whole: to a temporary name first, then
/// renamed, so a reader never sees half a message.
async fn write_file(
    dir: &std::path::Path,
    delivery_id: &str,
    message: &Message,
) -> Result<String, SendError> {
    if delivery_id.is_empty()
        || !delivery_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(SendError::Permanent(format!(
            "delivery id {delivery_id:?} cannot name a file"
        )));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| SendError::Transient(format!("cannot create {}: {e}", dir.display())))?;
    let name = format!("{delivery_id}.eml");
    let partial = dir.join(format!(".{delivery_id}.eml.partial"));
    let written = async {
        tokio::fs::write(&partial, message.formatted()).await?;
        tokio::fs::rename(&partial, dir.join(&name)).await
    };
    written
        .await
        .map_err(|e| SendError::Transient(format!("cannot write {name}: {e}")))?;
    Ok(format!("file {name}"))
}
