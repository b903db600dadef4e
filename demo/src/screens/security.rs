//! Account Settings → Secondary Authentication: `user.status` fills the
//! page; "Add" and "Send Code" send `enrollment.started` (again:
//! `challenge.resend`); "Verify" sends `enrollment.verify`; "Delete" on
//! the entry sends `factor.removed`; "Sign out trusted browsers" sends
//! `trusted_devices.revoked`.

use axum::Extension;
use axum::extract::{Form, Query, State};
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::login::TRUST_COOKIE;
use super::{
    NEW_CODE_SENT, Resend, outcome_notice, problem, redirect_with, resend, resend_after, seconds,
    seconds_until, signed_in, when,
};
use crate::html::{escape, page};
use crate::shop::{Notice, PendingEnrollment, User};
use crate::{App, SessionId};

const PAGE: &str = "/account/security";

/// `?add=1`: the "Add" form is open.
#[derive(Deserialize)]
pub struct Show {
    #[serde(default)]
    add: Option<String>,
}

/// GET /account/security.
pub async fn show(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    Query(query): Query<Show>,
) -> Response {
    let Some(user) = signed_in(&app, &session) else {
        return Redirect::to("/login").into_response();
    };
    let mut notice = app.shop.take_notice(&session.0);
    let status = match app
        .email2fa
        .send("user.status", json!({"user_id": user.id}))
        .await
    {
        Ok(answer) if answer.ok() => answer.body,
        Ok(answer) => {
            notice = notice.or(Some(problem(&answer)));
            Value::Null
        }
        Err(error) => {
            notice = notice.or(Some(super::unreachable(&error)));
            Value::Null
        }
    };
    let state = app.shop.session(&session.0);
    let factors = status["factors"].as_array().cloned().unwrap_or_default();
    let adding = match (&state.pending_enrollment, factors.is_empty()) {
        (Some(pending), _) => code_form(pending),
        (None, true) if query.add.is_some() => add_form(user),
        (None, true) => add_button(&app, user),
        (None, false) => String::new(),
    };
    let body = format!(
        r#"<section><h2>Secondary Authentication</h2>
<p class="hint">A code sent to this address is asked for when you sign in from a browser you have not trusted.</p>
{}{adding}</section>{}"#,
        entries(&factors),
        devices(&status["trusted_devices"]),
    );
    page("Account Settings", Some(user), notice, &body).into_response()
}

/// The user's Secondary Authentication Entries, each with "Delete".
fn entries(factors: &[Value]) -> String {
    if factors.is_empty() {
        return r#"<p id="no-entry">No Secondary Authentication Entry yet.</p>"#.into();
    }
    let rows: String = factors
        .iter()
        .map(|f| {
            format!(
                r#"<tr class="entry"><td>Email</td><td class="address">{}</td><td>added {}</td><td>
<form method="post" action="/account/security/delete"><input type="hidden" name="factor_id" value="{}">
<button class="danger">Delete</button></form></td></tr>"#,
                escape(f["email"].as_str().unwrap_or("")),
                when(f["created_at"].as_str()),
                escape(f["id"].as_str().unwrap_or("")),
            )
        })
        .collect();
    format!("<table>{rows}</table>")
}

/// The trusted browsers, with "Sign out trusted browsers".
fn devices(devices: &Value) -> String {
    let devices = devices.as_array().cloned().unwrap_or_default();
    let rows: String = devices
        .iter()
        .map(|d| {
            format!(
                "<tr><td>{}</td><td>last used {}</td><td>trusted until {}</td></tr>",
                escape(d["label"].as_str().unwrap_or("A browser")),
                when(d["last_used_at"].as_str().or(d["created_at"].as_str())),
                when(d["expires_at"].as_str()),
            )
        })
        .collect();
    if devices.is_empty() {
        return r#"<section><h2>Trusted browsers</h2><p class="hint">None: every sign-in asks for a code (tick "Trust this device" on the code screen to skip it in one browser).</p></section>"#.into();
    }
    format!(
        r#"<section><h2>Trusted browsers</h2><p class="hint">These skip the code until they expire.</p>
<table id="trusted-browsers">{rows}</table><form method="post" action="/account/security/revoke">
<button class="secondary" id="revoke">Sign out trusted browsers</button></form></section>"#
    )
}

/// "Add", shown while the user's role has 2FA Allowed.
fn add_button(app: &App, user: &User) -> String {
    let settings = app.shop.config().settings;
    if !settings[format!("{}_2fa_allowed", user.role)]
        .as_bool()
        .unwrap_or(false)
    {
        return r#"<p class="hint" id="inactive">Secondary Authentication is Inactive for your account type.</p>"#.into();
    }
    r#"<form method="get" action="/account/security"><input type="hidden" name="add" value="1"><button id="add">Add</button></form>"#.into()
}

/// The address and "Send Code" (admins use their account's address).
fn add_form(user: &User) -> String {
    let address = if user.role == "admin" {
        format!(
            "<p>Codes go to your account's address, <b>{}</b>.</p>",
            escape(user.email)
        )
    } else {
        r#"<label>Email address <input type="email" name="email" id="address" required></label>"#
            .into()
    };
    format!(
        r#"<form method="post" action="/account/security/add">{address}<button id="send-code">Send Code</button></form>"#
    )
}

/// The code field, "Verify", and "Send Code" again.
fn code_form(pending: &PendingEnrollment) -> String {
    let wait = seconds_until(pending.resend_after);
    let hint = if wait > 0 {
        format!("You can ask for another code in {}.", seconds(wait))
    } else {
        String::new()
    };
    format!(
        r#"<p>We sent a code to <b>{}</b>. Enter it to add the address.</p>
<form method="post" action="/account/security/verify"><label>Code <input type="text" name="code" inputmode="numeric" autocomplete="one-time-code" id="code" autofocus></label>
<button id="verify">Verify</button></form>
<form method="post" action="/account/security/resend"><span class="hint">{hint}</span> <button class="secondary" id="send-code-again">Send Code</button></form>"#,
        escape(&pending.email)
    )
}

/// The "Add" form.
#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    email: Option<String>,
}

/// POST /account/security/add: "Send Code" → `enrollment.started`.
pub async fn add(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    Form(form): Form<AddForm>,
) -> Response {
    let Some(user) = signed_in(&app, &session) else {
        return Redirect::to("/login").into_response();
    };
    let user_json =
        json!({"id": user.id, "role": user.role, "email": user.email, "name": user.name});
    // Customers type the address; admins use their account's.
    let (email, data) = match (user.role, form.email) {
        ("customer", Some(email)) => {
            let email = email.trim().to_string();
            (email.clone(), json!({"user": user_json, "email": email}))
        }
        _ => (user.email.to_string(), json!({"user": user_json})),
    };
    let notice = match app.email2fa.send("enrollment.started", data).await {
        Ok(answer) if answer.ok() => {
            let pending = PendingEnrollment {
                email,
                challenge_id: answer.text("challenge_id").into(),
                resend_after: resend_after(&answer),
            };
            app.shop
                .update(&session.0, |s| s.pending_enrollment = Some(pending));
            Notice::ok("A code is on its way.")
        }
        Ok(answer) => problem(&answer),
        Err(error) => super::unreachable(&error),
    };
    redirect_with(&app, &session, PAGE, notice)
}

/// POST /account/security/resend: "Send Code" again → `challenge.resend`
/// (never before `resend_after`).
pub async fn send_code_again(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
) -> Response {
    let Some(pending) = app.shop.session(&session.0).pending_enrollment else {
        return Redirect::to(PAGE).into_response();
    };
    let (notice, next) = match resend(&app, &pending.challenge_id, pending.resend_after).await {
        Resend::Sent(next) => (Notice::ok(NEW_CODE_SENT), Some(next)),
        Resend::NotSent(notice, next) => (notice, next),
        Resend::Closed => {
            app.shop.update(&session.0, |s| s.pending_enrollment = None);
            let notice = Notice::error("This code request has ended. Press Add to start again.");
            return redirect_with(&app, &session, PAGE, notice);
        }
    };
    if let Some(next) = next {
        app.shop.update(&session.0, |s| {
            if let Some(p) = s.pending_enrollment.as_mut() {
                p.resend_after = next;
            }
        });
    }
    redirect_with(&app, &session, PAGE, notice)
}

/// The code form.
#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
}

/// POST /account/security/verify: "Verify" → `enrollment.verify`; on
/// `verified` the entry is added (and an admin who had to add one may go on).
pub async fn verify(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    Form(form): Form<CodeForm>,
) -> Response {
    let state = app.shop.session(&session.0);
    let (Some(user), Some(pending)) = (signed_in(&app, &session), state.pending_enrollment) else {
        return Redirect::to(PAGE).into_response();
    };
    let answer = app
        .email2fa
        .send(
            "enrollment.verify",
            json!({"challenge_id": pending.challenge_id, "code": form.code}),
        )
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => return redirect_with(&app, &session, PAGE, super::unreachable(&error)),
    };
    if let Some(notice) = outcome_notice(&answer) {
        // A wrong code may be tried again; anything else starts over.
        if answer.text("outcome") != "invalid_code" {
            app.shop.update(&session.0, |s| s.pending_enrollment = None);
        }
        return redirect_with(&app, &session, PAGE, notice);
    }
    app.shop.update(&session.0, |s| {
        s.pending_enrollment = None;
        s.must_enroll = false;
    });
    let added = format!("Secondary Authentication Entry added: {}.", pending.email);
    let to = if state.must_enroll {
        super::login::landing(user)
    } else {
        PAGE
    };
    redirect_with(&app, &session, to, Notice::ok(added))
}

/// "Delete" on an entry.
#[derive(Deserialize)]
pub struct DeleteForm {
    factor_id: String,
}

/// POST /account/security/delete: `factor.removed` (it also signs out the
/// user's trusted browsers and emails a notice to the removed address).
pub async fn delete(
    State(app): State<App>,
    Extension(session): Extension<SessionId>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let Some(user) = signed_in(&app, &session) else {
        return Redirect::to("/login").into_response();
    };
    let answer = app
        .email2fa
        .send(
            "factor.removed",
            json!({"user_id": user.id, "factor_id": form.factor_id}),
        )
        .await;
    let notice = match answer {
        Ok(answer) if answer.ok() => Notice::ok(format!(
            "Secondary Authentication Entry deleted; {} trusted browsers signed out. A notice went to the address.",
            answer.body["revoked_devices"].as_i64().unwrap_or(0)
        )),
        Ok(answer) => problem(&answer),
        Err(error) => super::unreachable(&error),
    };
    forget_trust(redirect_with(&app, &session, PAGE, notice))
}

/// POST /account/security/revoke: "Sign out trusted browsers" →
/// `trusted_devices.revoked`.
pub async fn revoke(State(app): State<App>, Extension(session): Extension<SessionId>) -> Response {
    let Some(user) = signed_in(&app, &session) else {
        return Redirect::to("/login").into_response();
    };
    let answer = app
        .email2fa
        .send("trusted_devices.revoked", json!({"user_id": user.id}))
        .await;
    let notice = match answer {
        Ok(answer) if answer.ok() => Notice::ok(format!(
            "{} trusted browsers signed out: they need a code at the next sign-in.",
            answer.body["revoked_devices"].as_i64().unwrap_or(0)
        )),
        Ok(answer) => problem(&answer),
        Err(error) => super::unreachable(&error),
    };
    forget_trust(redirect_with(&app, &session, PAGE, notice))
}

/// Drops this browser's trust cookie (its token no longer works anyway).
fn forget_trust(mut response: Response) -> Response {
    let expired = format!("{TRUST_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax");
    if let Ok(value) = expired.parse() {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}
