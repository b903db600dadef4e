//! What the shop itself keeps, as any host platform does: its users and
//! their passwords, browser sessions, and the Services Manager's
//! configuration (saved to `shop.json` in the data folder together with the
//! tenant's signing secret). email2fa never sees a password; the shop never
//! sees a code except the one the user types.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rand::RngExt;
use serde::{Deserialize, Serialize};

/// A shop user. Demo users: `admin` / `admin` and `jane` / `jane`.
#[derive(Debug, Clone)]
pub struct User {
    /// The host's user id (what email2fa knows the user by).
    pub id: &'static str,
    /// `admin` or `customer`.
    pub role: &'static str,
    /// The account's address.
    pub email: &'static str,
    /// Display name, used in the emails.
    pub name: &'static str,
    password: &'static str,
}

/// The demo's users.
pub const USERS: [User; 2] = [
    User {
        id: "admin",
        role: "admin",
        email: "admin@shop.example",
        name: "Alex Admin",
        password: "admin",
    },
    User {
        id: "jane",
        role: "customer",
        email: "jane@shop.example",
        name: "Jane Doe",
        password: "jane",
    },
];

/// The password check: the host's own, before email2fa is asked anything.
pub fn check_password(name: &str, password: &str) -> Option<&'static User> {
    USERS
        .iter()
        .find(|u| u.id == name && u.password.as_bytes() == password.as_bytes())
}

/// A user by id.
pub fn user(id: &str) -> Option<&'static User> {
    USERS.iter().find(|u| u.id == id)
}

/// A login that waits for its code (the code screen).
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// Who typed the right password.
    pub user_id: String,
    /// email2fa's challenge.
    pub challenge_id: String,
    /// From when "Send New Code" may ask for another code.
    pub resend_after: chrono::DateTime<chrono::Utc>,
}

/// An enrollment that waits for its code (Account Settings → "Add").
#[derive(Debug, Clone)]
pub struct PendingEnrollment {
    /// The address being added.
    pub email: String,
    /// email2fa's challenge.
    pub challenge_id: String,
    /// From when "Send Code" may be pressed again.
    pub resend_after: chrono::DateTime<chrono::Utc>,
}

/// One browser's session.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The signed-in user.
    pub user_id: Option<String>,
    /// Signed in, but an admin without a factor while 2FA is required:
    /// only the Secondary Authentication page is open to them.
    pub must_enroll: bool,
    /// The code screen's login.
    pub pending_login: Option<PendingLogin>,
    /// The "Add" form's enrollment.
    pub pending_enrollment: Option<PendingEnrollment>,
    /// A message for the next page (post, redirect, get).
    pub notice: Option<Notice>,
}

/// A message shown once at the top of a page.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `ok` or `error` (the CSS class).
    pub kind: &'static str,
    /// What the user reads.
    pub text: String,
}

impl Notice {
    /// Good news.
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            kind: "ok",
            text: text.into(),
        }
    }

    /// Something the user has to act on.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            kind: "error",
            text: text.into(),
        }
    }
}

/// The Services Manager's SMTP service provider, as the admin typed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmtpProvider {
    pub title: String,
    pub host: String,
    pub port: u16,
    pub security: String,
    pub username: String,
    pub from_address: String,
    pub from_name: String,
}

/// The Secondary Auth provider, on an SMTP provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthProvider {
    pub title: String,
}

/// What the shop saves: its secret and the Services Manager.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// The tenant's `whsec_` secret (the host's configuration; keep it out
    /// of logs and repositories).
    pub secret: String,
    /// The SMTP service provider, once saved.
    pub smtp: Option<SmtpProvider>,
    /// The Secondary Auth provider, once saved.
    pub auth_provider: Option<AuthProvider>,
    /// The settings as email2fa last answered them.
    pub settings: serde_json::Value,
}

/// The shop's state, shared by its handlers.
#[derive(Clone)]
pub struct Shop {
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    config: Arc<Mutex<Config>>,
    path: PathBuf,
}

impl Shop {
    /// The shop with the configuration saved at `path` (if any).
    pub fn load(path: PathBuf) -> Self {
        let config = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            sessions: Arc::default(),
            config: Arc::new(Mutex::new(config)),
            path,
        }
    }

    /// A copy of the configuration.
    pub fn config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the configuration and saves it (mode 0600: it holds the secret).
    pub fn update_config(&self, change: impl FnOnce(&mut Config)) -> std::io::Result<()> {
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut config);
        let bytes = serde_json::to_vec_pretty(&*config).map_err(std::io::Error::other)?;
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(temporary, &self.path)
    }

    /// A new session id (256 random bits).
    pub fn new_session(&self) -> String {
        let bytes: [u8; 32] = rand::rng().random();
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Session::default());
        id
    }

    /// Whether a session id is one this shop gave out.
    pub fn exists(&self, id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// A copy of a session (an unknown id is an empty session).
    pub fn session(&self, id: &str) -> Session {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Changes a session.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Session)) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        change(sessions.entry(id.to_string()).or_default());
    }

    /// Takes the session's notice (shown once).
    pub fn take_notice(&self, id: &str) -> Option<Notice> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get_mut(id).and_then(|s| s.notice.take())
    }
}
