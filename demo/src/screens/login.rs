//! Login: the shop checks the password itself, then asks email2fa
//! (`login.started`) whether a code is needed; the code screen sends
//! `login.verify` (with "Trust this device") and "Send New Code" sends
//! `challenge.resend`. The trust cookie is set as the README says.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::HeaderMap;
use axum::http::header::{SET_COOKIE, USER_AGENT};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::{
    NEW_CODE_SENT, Resend, outcome_notice, problem, redirect_with, resend, resend_after, seconds,
    seconds_until,
};
use crate::html::{escape, page};
use crate::shop::{self, Notice, PendingLogin, User};
use crate::{App, SessionId, cookie};

/// The cookie that holds this browser's trust token.
pub const TRUST_COOKIE: &str = "e2fa_trust";

/// GET /login: user name and password.
pub async fn form(State(app): State<App>, Extension(session): Extension<SessionId>) -> Response {
    let notice = app.shop.take_notice(&session.0);
    let body = r#"<section><form method="post" action="/login">
<label>User name <input type="text" name="user" autocomplete="username" autofocus></label>
<label>Password <input type="password" name="password" autocomplete="current-password"></label>
<button id="sign-in">Sign in</button></form>
<p class="hint">Demo users: <b>admin</b> / <b>admin</b> (an administrator) and <b>jane</b> / <b>jane</b> (a customer).</p></section>"#;
    page("Sign in", None, notice, body).into_response()
}

/// The login form.
#[derive(Deserialize)]
pub struct Credentials {
    user: String,
    password: String,
}

/// POST /login: after the password check, `login.started` with the
/// browser's trust cookie, IP and user agent decides what comes next.
pub async fn password(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<Credentials>,
) -> Response {
    let Some(user) = shop::check_password(&form.user, &form.password) else {
        let notice = Notice::error("Wrong user name or password.");
        return redirect_with(&app, &session, "/login", notice);
    };
    let answer = app
        .email2fa
        .send(
            "login.started",
            json!({
                "user": {"id": user.id, "role": user.role, "email": user.email, "name": user.name},
                "trust_token": cookie(&headers, TRUST_COOKIE),
                "ip": peer.ip().to_string(),
                "user_agent": headers.get(USER_AGENT).and_then(|v| v.to_str().ok()),
            }),
        )
        .await;
    let answer = match answer {
        Ok(answer) if answer.ok() => answer,
        Ok(answer) => return redirect_with(&app, &session, "/login", problem(&answer)),
        Err(error) => return redirect_with(&app, &session, "/login", super::unreachable(&error)),
    };
    match answer.text("decision") {
        // 2FA Inactive for the role, not enrolled, or a trusted browser.
        "allow" => {
            let text = match answer.text("reason") {
                "trusted_device" => "Signed in without a code: this browser is trusted.",
                "not_enrolled" => {
                    "Signed in. Protect your account: add Secondary Authentication below."
                }
                _ => "Signed in.",
            };
            sign_in(&app, &session, user, false);
            let to = landing(user);
            redirect_with(&app, &session, to, Notice::ok(text))
        }
        // A code is on its way: the code screen.
        "challenge" => {
            let pending = PendingLogin {
                user_id: user.id.into(),
                challenge_id: answer.text("challenge_id").into(),
                resend_after: resend_after(&answer),
            };
            app.shop
                .update(&session.0, |s| s.pending_login = Some(pending));
            Redirect::to("/login/code").into_response()
        }
        // An admin without a factor while 2FA is required: add one first.
        "enroll_required" => {
            sign_in(&app, &session, user, true);
            redirect_with(&app, &session, MUST_ADD, Notice::error(MUST_ADD_TEXT))
        }
        other => {
            let notice = Notice::error(format!("Unexpected answer from email2fa: {other:?}"));
            redirect_with(&app, &session, "/login", notice)
        }
    }
}

/// Where an admin goes who must add a factor first.
pub const MUST_ADD: &str = "/account/security?add=1";

/// What they read there.
pub const MUST_ADD_TEXT: &str = "This shop requires Secondary Authentication for administrators. Add your email address to continue.";

/// Where a user lands after signing in.
pub fn landing(user: &User) -> &'static str {
    if user.role == "admin" {
        "/admin/services"
    } else {
        "/account/security"
    }
}

/// Marks the session signed in (`must_enroll`: only the Secondary
/// Authentication page is open until a factor is added). A production
/// host would also give the browser a new session id here.
pub fn sign_in(app: &App, session: &SessionId, user: &User, must_enroll: bool) {
    app.shop.update(&session.0, |s| {
        s.user_id = Some(user.id.into());
        s.must_enroll = must_enroll;
        s.pending_login = None;
        s.pending_enrollment = None;
    });
}

/// GET /login/code: the code field, "Trust this device", "Send New Code".
pub async fn code_form(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
) -> Response {
    let Some(pending) = app.shop.session(&session.0).pending_login else {
        return Redirect::to("/login").into_response();
    };
    let notice = app.shop.take_notice(&session.0);
    let days = app.shop.config().settings["trust_device_days"]
        .as_i64()
        .unwrap_or(30);
    let trust = if days > 0 {
        format!(
            r#"<label><input type="checkbox" name="trust_device" value="true" id="trust-device"> Trust this device for {days} days</label>"#
        )
    } else {
        String::new()
    };
    let wait = seconds_until(pending.resend_after);
    let resend_hint = if wait > 0 {
        format!("You can ask for a new code in {}.", seconds(wait))
    } else {
        "Didn't get it?".into()
    };
    let body = format!(
        r#"<section><p>We sent a sign-in code to the email address of your Secondary Authentication. Enter it below.</p>
<form method="post" action="/login/code">
<label>Code <input type="text" name="code" inputmode="numeric" autocomplete="one-time-code" autofocus id="code"></label>
{trust}<button id="verify">Verify</button></form></section>
<section><form method="post" action="/login/resend"><span class="hint" id="resend-hint">{}</span>
<button class="secondary" id="send-new-code">Send New Code</button></form>
<p class="hint">No mail server needed: the email is in the <a href="/mailbox" target="_blank">Mailbox</a>.</p></section>"#,
        escape(&resend_hint)
    );
    page("Enter your code", None, notice, &body).into_response()
}

/// The code form.
#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
    #[serde(default)]
    trust_device: bool,
}

/// POST /login/code: `login.verify`; on `verified` with a trust token, the
/// cookie for this browser.
pub async fn verify(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let Some(pending) = app.shop.session(&session.0).pending_login else {
        return Redirect::to("/login").into_response();
    };
    let answer = app
        .email2fa
        .send(
            "login.verify",
            json!({
                "challenge_id": pending.challenge_id,
                "code": form.code,
                "trust_device": form.trust_device,
                "device_label": headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).map(device_label),
            }),
        )
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            return redirect_with(&app, &session, "/login/code", super::unreachable(&error));
        }
    };
    if let Some(notice) = outcome_notice(&answer) {
        // Wrong code: try again here; expired: "Send New Code" still
        // works; locked, used or gone: back to the password.
        let to = match answer.text("outcome") {
            "invalid_code" => "/login/code",
            _ => "/login",
        };
        return redirect_with(&app, &session, to, notice);
    }
    let Some(user) = shop::user(&pending.user_id) else {
        return Redirect::to("/login").into_response();
    };
    sign_in(&app, &session, user, false);
    let mut response = redirect_with(&app, &session, landing(user), Notice::ok("Signed in."));
    if let Some(cookie) = trust_cookie(&answer) {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

/// `e2fa_trust=<token>; Max-Age=…; Path=/; HttpOnly; SameSite=Lax`, lasting
/// until `trust_expires_at`. Behind HTTPS add `Secure` (as the README's
/// cookie has it); this demo serves plain HTTP on the loopback.
fn trust_cookie(answer: &crate::host::Answer) -> Option<axum::http::HeaderValue> {
    let token = answer.body["trust_token"].as_str()?;
    let expires = chrono::DateTime::parse_from_rfc3339(answer.text("trust_expires_at")).ok()?;
    let max_age = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    format!("{TRUST_COOKIE}={token}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax")
        .parse()
        .ok()
}

/// A short label for the trusted browser ("Chrome on Linux").
fn device_label(user_agent: &str) -> String {
    let browser = ["Firefox", "Edg", "Chrome", "Safari"]
        .into_iter()
        .find(|b| user_agent.contains(b))
        .map_or("A browser", |b| if b == "Edg" { "Edge" } else { b });
    let system = ["Windows", "Mac OS", "Android", "iPhone", "Linux"]
        .into_iter()
        .find(|s| user_agent.contains(s))
        .unwrap_or("an unknown system");
    format!("{browser} on {system}")
}

/// POST /login/resend: "Send New Code", never before `resend_after`; a
/// `429` tells how long to wait.
pub async fn send_new_code(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
) -> Response {
    let Some(pending) = app.shop.session(&session.0).pending_login else {
        return Redirect::to("/login").into_response();
    };
    let (notice, next) = match resend(&app, &pending.challenge_id, pending.resend_after).await {
        Resend::Sent(next) => (Notice::ok(NEW_CODE_SENT), Some(next)),
        Resend::NotSent(notice, next) => (notice, next),
        Resend::Closed => {
            let notice = Notice::error("This sign-in has ended. Please sign in again.");
            return redirect_with(&app, &session, "/login", notice);
        }
    };
    if let Some(next) = next {
        app.shop.update(&session.0, |s| {
            if let Some(p) = s.pending_login.as_mut() {
                p.resend_after = next;
            }
        });
    }
    redirect_with(&app, &session, "/login/code", notice)
}

/// POST /logout.
pub async fn sign_out(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
) -> Response {
    app.shop.update(&session.0, |s| *s = Default::default());
    redirect_with(&app, &session, "/login", Notice::ok("Signed out."))
}
