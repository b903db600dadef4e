//! The Mailbox: every email email2fa sent, newest first, read from the
//! `.eml` files of its file transport (each named after its delivery id).
//! It stands in for the users' inboxes, so the demo needs no mail server.

use std::path::Path;
use std::time::SystemTime;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mail_parser::MessageParser;

use super::signed_in;
use crate::html::{escape, page};
use crate::{App, SessionId};

/// How many emails the page shows.
const SHOWN: usize = 30;

/// One email as the page shows it.
struct Mail {
    delivery_id: String,
    to: String,
    subject: String,
    date: String,
    text: String,
}

/// GET /mailbox.
pub async fn show(State(app): State<App>, Extension(session): Extension<SessionId>) -> Response {
    let user = signed_in(&app, &session);
    let mails = read_outbox(&app.outbox);
    let list: String = mails
        .iter()
        .map(|m| {
            format!(
                r#"<section class="mail" data-to="{to}" data-delivery="{id}"><h2 class="subject">{subject}</h2>
<p class="hint">To <b>{to}</b> · {date} · delivery <code>{id}</code></p><pre>{text}</pre></section>"#,
                to = escape(&m.to),
                id = escape(&m.delivery_id),
                subject = escape(&m.subject),
                date = escape(&m.date),
                text = escape(&m.text),
            )
        })
        .collect();
    let empty = if mails.is_empty() {
        r#"<p id="empty">No email yet.</p>"#
    } else {
        ""
    };
    let body = format!(
        r#"<p class="hint">Every email email2fa sent, newest first: its file transport writes each to <code>{}</code>.</p>{empty}{list}"#,
        escape(&app.outbox.display().to_string())
    );
    page("Mailbox", user, None, &body).into_response()
}

/// The newest [`SHOWN`] emails of the outbox.
fn read_outbox(dir: &Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(SystemTime, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    // Newest first; delivery ids are ULIDs, so the name breaks ties in order.
    files.sort_by(|a, b| b.cmp(a));
    files
        .into_iter()
        .take(SHOWN)
        .filter_map(|(_, path)| parse(&path))
        .collect()
}

fn parse(path: &Path) -> Option<Mail> {
    let raw = std::fs::read(path).ok()?;
    let message = MessageParser::default().parse(&raw)?;
    let to = message
        .to()
        .and_then(|to| to.first())
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_string();
    Some(Mail {
        delivery_id: path.file_stem()?.to_string_lossy().into_owned(),
        to,
        subject: message.subject().unwrap_or("").to_string(),
        date: message.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
        text: message
            .body_text(0)
            .map(|t| t.into_owned())
            .unwrap_or_default(),
    })
}
