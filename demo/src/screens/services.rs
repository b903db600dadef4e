//! Admin console → Services Manager: the SMTP service provider
//! (`service_provider.upserted` / `.deleted`), the Secondary Auth provider
//! on it (`secondary_auth_provider.upserted` / `.deleted`), and the
//! Secondary Authentication settings: the Admin and Customer "Allowed"
//! toggles, "Require Secondary Authentication (2FA) for Admin Users" and
//! the code settings (`settings.updated`).

use axum::Extension;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{problem, redirect_with, signed_in};
use crate::html::{escape, page};
use crate::shop::{AuthProvider, Notice, SmtpProvider, User};
use crate::{App, SessionId};

const PAGE: &str = "/admin/services";
/// The ids the shop gives its two providers (one of each).
const SMTP_ID: &str = "smtp";
const AUTH_ID: &str = "email-codes";

/// The signed-in admin, or where to send anyone else.
fn admin(app: &App, session: &SessionId) -> Result<&'static User, Redirect> {
    match signed_in(app, session) {
        Some(user) if user.role == "admin" && !app.shop.session(&session.0).must_enroll => Ok(user),
        Some(user) if user.role == "admin" => {
            let notice = Notice::error(super::login::MUST_ADD_TEXT);
            app.shop.update(&session.0, |s| s.notice = Some(notice));
            Err(Redirect::to(super::login::MUST_ADD))
        }
        _ => Err(Redirect::to("/login")),
    }
}

/// GET /admin/services.
pub async fn show(State(app): State<App>, Extension(session): Extension<SessionId>) -> Response {
    let user = match admin(&app, &session) {
        Ok(user) => user,
        Err(redirect) => return redirect.into_response(),
    };
    let notice = app.shop.take_notice(&session.0);
    let config = app.shop.config();
    let body = format!(
        "{}{}{}",
        smtp_section(config.smtp.as_ref()),
        auth_section(config.smtp.as_ref(), config.auth_provider.as_ref()),
        settings_section(&config.settings)
    );
    page("Services Manager", Some(user), notice, &body).into_response()
}

fn smtp_section(smtp: Option<&SmtpProvider>) -> String {
    let saved = smtp.map_or(String::new(), |p| {
        format!(
            r#"<table><tr id="smtp-provider"><td><b>{}</b></td><td>{}:{} ({})</td><td>from {} &lt;{}&gt;</td>
<td><form method="post" action="/admin/services/smtp/delete"><button class="danger">Delete</button></form></td></tr></table>"#,
            escape(&p.title),
            escape(&p.host),
            p.port,
            escape(&p.security),
            escape(&p.from_name),
            escape(&p.from_address)
        )
    });
    let p = smtp.cloned().unwrap_or(SmtpProvider {
        port: 587,
        security: "starttls".into(),
        ..SmtpProvider::default()
    });
    let option = |value: &str, label: &str| {
        let selected = if p.security == value { " selected" } else { "" };
        format!(r#"<option value="{value}"{selected}>{label}</option>"#)
    };
    format!(
        r#"<section><h2>Service Providers</h2>{saved}
<form method="post" action="/admin/services/smtp"><h3>SMTP service provider</h3>
<label>Title <input type="text" name="title" value="{}" required></label>
<label>Host <input type="text" name="host" value="{}" required></label>
<label>Port <input type="number" name="port" value="{}" min="1" max="65535" required></label>
<label>Security <select name="security">{}{}{}</select></label>
<label>User name <input type="text" name="username" value="{}"></label>
<label>Password <input type="password" name="password" placeholder="unchanged when empty" autocomplete="new-password"></label>
<label>From address <input type="email" name="from_address" value="{}" required></label>
<label>From name <input type="text" name="from_name" value="{}"> <span class="hint">the shop's name in emails (empty: the tenant's name)</span></label>
<button id="save-smtp">Save</button></form>
<p class="hint">This demo's email2fa writes every email to a file instead (<code>EMAIL2FA_MAIL_TRANSPORT=file</code>): see the Mailbox.</p></section>"#,
        escape(&p.title),
        escape(&p.host),
        p.port,
        option("starttls", "STARTTLS"),
        option("tls", "TLS"),
        option("none", "None"),
        escape(&p.username),
        escape(&p.from_address),
        escape(&p.from_name),
    )
}

fn auth_section(smtp: Option<&SmtpProvider>, auth: Option<&AuthProvider>) -> String {
    let Some(smtp) = smtp else {
        return r#"<section><h2>Secondary Auth Providers</h2><p class="hint">Add an SMTP service provider first.</p></section>"#.into();
    };
    let saved = auth.map_or(String::new(), |a| {
        format!(
            r#"<table><tr id="auth-provider"><td><b>{}</b></td><td>Email codes through {}</td>
<td><form method="post" action="/admin/services/auth/delete"><button class="danger">Delete</button></form></td></tr></table>"#,
            escape(&a.title),
            escape(&smtp.title)
        )
    });
    let title = auth.map_or("Email codes".to_string(), |a| a.title.clone());
    format!(
        r#"<section><h2>Secondary Auth Providers</h2>{saved}
<form method="post" action="/admin/services/auth"><label>Title <input type="text" name="title" value="{}" required></label>
<label>Service provider <select name="service_provider_id"><option value="{SMTP_ID}">{}</option></select></label>
<button id="save-auth">Save</button></form></section>"#,
        escape(&title),
        escape(&smtp.title)
    )
}

fn settings_section(settings: &Value) -> String {
    let checked = |field: &str| {
        if settings[field].as_bool().unwrap_or(false) {
            " checked"
        } else {
            ""
        }
    };
    let status = |field: &str| {
        if settings[field].as_bool().unwrap_or(false) {
            r#"<span class="status active">Active</span>"#
        } else {
            r#"<span class="status inactive">Inactive</span>"#
        }
    };
    let number = |field: &str, label: &str| {
        format!(
            r#"<label class="inline">{label} <input type="number" name="{field}" value="{}" style="min-width:5em"></label>"#,
            settings[field].as_i64().unwrap_or(0)
        )
    };
    format!(
        r#"<section><h2>Secondary Authentication</h2><form method="post" action="/admin/services/settings">
<table><tr><th>Role</th><th>Allowed</th><th>Status</th></tr>
<tr><td>Admin</td><td><input type="checkbox" name="admin_2fa_allowed" value="true" id="admin-allowed"{}></td><td>{}</td></tr>
<tr><td>Customer</td><td><input type="checkbox" name="customer_2fa_allowed" value="true" id="customer-allowed"{}></td><td>{}</td></tr></table>
<label><input type="checkbox" name="require_admin_2fa" value="true" id="require-admin"{}> Require Secondary Authentication (2FA) for Admin Users</label>
<p>{}{}{}{}{}</p><button id="save-settings">Save</button></form></section>"#,
        checked("admin_2fa_allowed"),
        status("admin_2fa_allowed"),
        checked("customer_2fa_allowed"),
        status("customer_2fa_allowed"),
        checked("require_admin_2fa"),
        number("code_length", "Code length"),
        number("code_ttl_seconds", "Code valid (s)"),
        number("max_attempts", "Wrong tries"),
        number("resend_cooldown_seconds", "Resend after (s)"),
        number("trust_device_days", "Trust a device (days)"),
    )
}

/// The SMTP form.
#[derive(Deserialize)]
pub struct SmtpForm {
    title: String,
    host: String,
    port: u16,
    security: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    from_address: String,
    #[serde(default)]
    from_name: String,
}

/// POST /admin/services/smtp: `service_provider.upserted`.
pub async fn save_smtp(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    Form(form): Form<SmtpForm>,
) -> Response {
    if let Err(redirect) = admin(&app, &session) {
        return redirect.into_response();
    }
    let mut smtp = json!({
        "host": form.host, "port": form.port, "security": form.security,
        "from_address": form.from_address,
    });
    let optional = [("username", &form.username), ("from_name", &form.from_name)];
    for (field, value) in optional.into_iter().filter(|(_, v)| !v.is_empty()) {
        smtp[field] = json!(value);
    }
    // The password is write-only: left out, email2fa keeps the stored one.
    if !form.password.is_empty() {
        smtp["password"] = json!(form.password);
    }
    let data = json!({"id": SMTP_ID, "title": form.title, "kind": "smtp", "smtp": smtp});
    let saved = SmtpProvider {
        title: form.title,
        host: form.host,
        port: form.port,
        security: form.security,
        username: form.username,
        from_address: form.from_address,
        from_name: form.from_name,
    };
    let done = "SMTP service provider saved.";
    let notice = send_and_save(&app, "service_provider.upserted", data, done, |c| {
        c.smtp = Some(saved);
    })
    .await;
    redirect_with(&app, &session, PAGE, notice)
}

/// The Secondary Auth provider form.
#[derive(Deserialize)]
pub struct AuthForm {
    title: String,
    service_provider_id: String,
}

/// POST /admin/services/auth: `secondary_auth_provider.upserted`.
pub async fn save_auth(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    Form(form): Form<AuthForm>,
) -> Response {
    if let Err(redirect) = admin(&app, &session) {
        return redirect.into_response();
    }
    let data = json!({"id": AUTH_ID, "title": form.title, "service_provider_id": form.service_provider_id});
    let saved = AuthProvider { title: form.title };
    let done = "Secondary Auth provider saved.";
    let notice = send_and_save(&app, "secondary_auth_provider.upserted", data, done, |c| {
        c.auth_provider = Some(saved);
    })
    .await;
    redirect_with(&app, &session, PAGE, notice)
}

/// POST /admin/services/smtp/delete: `service_provider.deleted`
/// (`provider_in_use` while the Secondary Auth provider uses it).
pub async fn delete_smtp(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
) -> Response {
    if let Err(redirect) = admin(&app, &session) {
        return redirect.into_response();
    }
    let data = json!({"id": SMTP_ID});
    let done = "SMTP service provider deleted.";
    let notice = send_and_save(&app, "service_provider.deleted", data, done, |c| {
        c.smtp = None
    })
    .await;
    redirect_with(&app, &session, PAGE, notice)
}

/// POST /admin/services/auth/delete: `secondary_auth_provider.deleted`.
pub async fn delete_auth(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
) -> Response {
    if let Err(redirect) = admin(&app, &session) {
        return redirect.into_response();
    }
    let data = json!({"id": AUTH_ID});
    let done = "Secondary Auth provider deleted.";
    let notice = send_and_save(&app, "secondary_auth_provider.deleted", data, done, |c| {
        c.auth_provider = None;
    })
    .await;
    redirect_with(&app, &session, PAGE, notice)
}

/// The Secondary Authentication form (unchecked boxes are absent).
#[derive(Deserialize)]
pub struct SettingsForm {
    #[serde(default)]
    admin_2fa_allowed: bool,
    #[serde(default)]
    customer_2fa_allowed: bool,
    #[serde(default)]
    require_admin_2fa: bool,
    code_length: i64,
    code_ttl_seconds: i64,
    max_attempts: i64,
    resend_cooldown_seconds: i64,
    trust_device_days: i64,
}

/// POST /admin/services/settings: `settings.updated`; its answer is the
/// whole settings object, which the page shows.
pub async fn save_settings(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    Form(form): Form<SettingsForm>,
) -> Response {
    if let Err(redirect) = admin(&app, &session) {
        return redirect.into_response();
    }
    let data = json!({
        "admin_2fa_allowed": form.admin_2fa_allowed,
        "customer_2fa_allowed": form.customer_2fa_allowed,
        "require_admin_2fa": form.require_admin_2fa,
        "code_length": form.code_length,
        "code_ttl_seconds": form.code_ttl_seconds,
        "max_attempts": form.max_attempts,
        "resend_cooldown_seconds": form.resend_cooldown_seconds,
        "trust_device_days": form.trust_device_days,
    });
    let notice = match app.email2fa.send("settings.updated", data).await {
        Ok(answer) if answer.ok() => {
            let _ = app.shop.update_config(|c| c.settings = answer.body);
            Notice::ok("Secondary Authentication settings saved.")
        }
        Ok(answer) => problem(&answer),
        Err(error) => super::unreachable(&error),
    };
    redirect_with(&app, &session, PAGE, notice)
}

/// Sends a Services Manager event; on success saves the change in the
/// shop's own configuration.
async fn send_and_save(
    app: &App,
    event_type: &str,
    data: Value,
    done: &str,
    change: impl FnOnce(&mut crate::shop::Config),
) -> Notice {
    match app.email2fa.send(event_type, data).await {
        Ok(answer) if answer.ok() => match app.shop.update_config(change) {
            Ok(()) => Notice::ok(done),
            Err(error) => Notice::error(format!("Saved in email2fa, but shop.json: {error}")),
        },
        Ok(answer) if answer.code() == "provider_in_use" => {
            Notice::error(format!("Still in use: {}", answer.detail()))
        }
        Ok(answer) => problem(&answer),
        Err(error) => super::unreachable(&error),
    }
}
