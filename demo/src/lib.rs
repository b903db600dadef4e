//! `email2fa demo`: a reference host platform. A small server-rendered web
//! shop with the screens of the help article (Admin console → Services
//! Manager; Account Settings → Secondary Authentication; the login and its
//! code screen) that uses email2fa exactly as a real host does: signed
//! Standard Webhooks over HTTP ([`host`]), nothing in-process. Each screen's
//! handler is short and says what the screen does, to be copied:
//!
//! - [`screens::services`]: the Services Manager;
//! - [`screens::security`]: "Add", "Send Code", "Verify", "Delete",
//!   "Sign out trusted browsers";
//! - [`screens::login`]: the password, the code screen, "Trust this device",
//!   "Send New Code";
//! - [`screens::mailbox`]: the emails email2fa sent (its file transport), so
//!   no mail server is needed.
//!
//! [`beside`] starts email2fa next to the shop; a real host reaches one that
//! runs on its own.

pub mod beside;
pub mod host;
pub mod html;
pub mod screens;
pub mod shop;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};

use crate::host::Email2fa;
use crate::shop::Shop;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The shop's address (port 0: any free port).
    pub listen: SocketAddr,
    /// The shop's configuration, email2fa's database and the outbox.
    pub data_dir: PathBuf,
    /// The `email2fa` binary to start beside the shop.
    pub binary: PathBuf,
}

/// What every handler reaches.
#[derive(Clone)]
pub struct App {
    /// The shop's own state.
    pub shop: Shop,
    /// The host's client of email2fa.
    pub email2fa: Email2fa,
    /// Where email2fa's file transport writes the emails.
    pub outbox: PathBuf,
}

/// This browser's session id (set by [`sessions`]).
#[derive(Debug, Clone)]
pub struct SessionId(pub String);

/// The shop's session cookie.
const SESSION_COOKIE: &str = "shop_session";

/// Runs the shop and email2fa beside it until SIGINT or SIGTERM.
pub async fn run(config: DemoConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("failed to create {}", config.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&config.data_dir)?;
    let shop = Shop::load(data_dir.join("shop.json"));
    if shop.config().secret.is_empty() {
        let secret = beside::create_tenant(&config.binary, &data_dir).await?;
        shop.update_config(|c| c.secret = secret)
            .context("failed to save shop.json")?;
    }
    let service = beside::Service::start(&config.binary, &data_dir).await?;
    let email2fa = Email2fa::new(&service.base, beside::TENANT, &shop.config().secret)?;
    // An empty partial update answers the whole settings object: the
    // shop's first call proves the secret works.
    let settings = email2fa
        .send("settings.updated", serde_json::json!({}))
        .await?;
    if !settings.ok() {
        service.stop().await;
        bail!(
            "email2fa refused the shop's secret ({}): delete {} to start afresh",
            settings.detail(),
            data_dir.display()
        );
    }
    shop.update_config(|c| c.settings = settings.body)?;
    let app = App {
        shop,
        email2fa,
        outbox: beside::outbox(&data_dir),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "Demo shop on http://{addr}/ (email2fa beside it on {}; data in {})",
        service.base,
        data_dir.display()
    );
    println!("Sign in as admin / admin or jane / jane. Ctrl-C stops both.");
    let served = axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await;
    service.stop().await;
    served.context("the shop's server failed")
}

/// The shop's routes.
pub fn router(app: App) -> Router {
    use screens::{home, login, mailbox, security, services};
    Router::new()
        .route("/", get(home::show))
        .route("/login", get(login::form).post(login::password))
        .route("/login/code", get(login::code_form).post(login::verify))
        .route("/login/resend", post(login::send_new_code))
        .route("/logout", post(login::sign_out))
        .route("/account/security", get(security::show))
        .route("/account/security/add", post(security::add))
        .route("/account/security/resend", post(security::send_code_again))
        .route("/account/security/verify", post(security::verify))
        .route("/account/security/delete", post(security::delete))
        .route("/account/security/revoke", post(security::revoke))
        .route("/admin/services", get(services::show))
        .route("/admin/services/smtp", post(services::save_smtp))
        .route("/admin/services/smtp/delete", post(services::delete_smtp))
        .route("/admin/services/auth", post(services::save_auth))
        .route("/admin/services/auth/delete", post(services::delete_auth))
        .route("/admin/services/settings", post(services::save_settings))
        .route("/mailbox", get(mailbox::show))
        .layer(axum::middleware::from_fn_with_state(app.clone(), sessions))
        .with_state(app)
}

/// A cookie's value.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// Gives every browser a session: a known session cookie, or a new one.
async fn sessions(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let known = cookie(request.headers(), SESSION_COOKIE).filter(|id| app.shop.exists(id));
    let (id, new) = match known {
        Some(id) => (id, false),
        None => (app.shop.new_session(), true),
    };
    request.extensions_mut().insert(SessionId(id.clone()));
    let mut response = next.run(request).await;
    if new {
        let cookie = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).ok();
        let terminated = async {
            match terminate.as_mut() {
                Some(signal) => drop(signal.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = terminated => {},
        }
    }
    #[cfg(not(unix))]
    drop(tokio::signal::ctrl_c().await);
}
