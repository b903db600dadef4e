//! The shop's front page: what the demo is and where each screen of the
//! help article lives.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::signed_in;
use crate::html::page;
use crate::{App, SessionId};

/// GET /.
pub async fn show(State(app): State<App>, Extension(session): Extension<SessionId>) -> Response {
    let user = signed_in(&app, &session);
    let notice = app.shop.take_notice(&session.0);
    let body = r#"<section><p>A small web shop that plays the host platform of email2fa. Every screen below talks to
email2fa only through signed webhooks, as your platform would; its handlers are in <code>demo/src/screens/</code>.</p>
<ol><li><a href="/login">Sign in</a> as <b>admin</b> / <b>admin</b> and open <b>Admin console → Services Manager</b>: add the SMTP
service provider, the Secondary Auth provider on it, and turn the Admin and Customer "Allowed" toggles on.</li>
<li>Sign in as <b>jane</b> / <b>jane</b>: <b>Account Settings → Secondary Authentication</b> → "Add", "Send Code", "Verify".</li>
<li>Sign out and in again: the code screen, "Trust this device", "Send New Code".</li>
<li>The codes arrive in the <a href="/mailbox">Mailbox</a>: no mail server needed.</li></ol></section>"#;
    page("Demo Shop", user, notice, body).into_response()
}
