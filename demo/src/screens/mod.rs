//! The shop's screens, one file each, and what they share: who is signed
//! in, the redirect after a form, and the words for email2fa's answers that
//! several screens show.

pub mod home;
pub mod login;
pub mod mailbox;
pub mod security;
pub mod services;

use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use crate::host::{Answer, SendError};
use crate::shop::{Notice, User};
use crate::{App, SessionId};

/// The signed-in user of this session, if any.
pub fn signed_in(app: &App, session: &SessionId) -> Option<&'static User> {
    let user_id = app.shop.session(&session.0).user_id?;
    crate::shop::user(&user_id)
}

/// Shows `notice` on the next page and redirects there (post, redirect, get).
pub fn redirect_with(app: &App, session: &SessionId, to: &str, notice: Notice) -> Response {
    app.shop.update(&session.0, |s| s.notice = Some(notice));
    Redirect::to(to).into_response()
}

/// An RFC 3339 time of an answer as people read it: `2026-12-07 20:47 UTC`.
pub fn when(time: Option<&str>) -> String {
    time.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_default()
}

/// A wait as people read it: "12 s", or past two minutes "15 minutes".
pub fn seconds(seconds: i64) -> String {
    match seconds.max(1) {
        short @ ..120 => format!("{short} s"),
        long => format!("{} minutes", (long + 59) / 60),
    }
}

/// The seconds until `time`.
pub fn seconds_until(time: chrono::DateTime<chrono::Utc>) -> i64 {
    (time - chrono::Utc::now()).num_seconds() + 1
}

/// `resend_after` of an answer (now when absent or unreadable).
pub fn resend_after(answer: &Answer) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(answer.text("resend_after"))
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now())
}

/// A failed answer as the user reads it: the cases every code-sending
/// screen meets, else email2fa's own detail.
pub fn problem(answer: &Answer) -> Notice {
    match answer.code() {
        "rate_limited" => Notice::error(format!(
            "Too many codes were sent. Please wait {} before asking for another one.",
            seconds(i64::try_from(answer.retry_after.unwrap_or(60)).unwrap_or(60))
        )),
        "not_allowed" => {
            Notice::error("Secondary Authentication is Inactive for your account type.")
        }
        "no_provider" => Notice::error(
            "The shop has no Secondary Auth provider yet: an admin adds one in Admin console → Services Manager.",
        ),
        "already_enrolled" => {
            Notice::error("Your account already has a Secondary Authentication Entry.")
        }
        "validation_failed" => Notice::error(format!("Please check the form:{}", answer.detail())),
        _ => Notice::error(format!("Something went wrong: {}", answer.detail())),
    }
}

/// email2fa could not be reached at all.
pub fn unreachable(error: &SendError) -> Notice {
    tracing::error!(%error, "email2fa is unreachable");
    Notice::error("The sign-in service is not answering right now. Please try again in a minute.")
}

/// What "Send New Code" (or "Send Code" again) came to.
pub enum Resend {
    /// A new code is on its way; the next may be asked for from this time.
    Sent(chrono::DateTime<chrono::Utc>),
    /// No code sent: what to tell the user, and from when to offer it
    /// again when that is known (the cooldown, a 429's `Retry-After`).
    NotSent(Notice, Option<chrono::DateTime<chrono::Utc>>),
    /// The challenge is over (verified, locked, expired or replaced).
    Closed,
}

/// "Send New Code": never before `resend_after` (the shop says how long
/// to wait without asking), else `challenge.resend`.
pub async fn resend(
    app: &App,
    challenge_id: &str,
    resend_after_time: chrono::DateTime<chrono::Utc>,
) -> Resend {
    let wait = seconds_until(resend_after_time);
    if wait > 0 {
        let text = format!(
            "Please wait {} before asking for a new code.",
            seconds(wait)
        );
        return Resend::NotSent(Notice::error(text), None);
    }
    let answer = app
        .email2fa
        .send("challenge.resend", json!({"challenge_id": challenge_id}))
        .await;
    match answer {
        Ok(answer) if answer.ok() => Resend::Sent(resend_after(&answer)),
        Ok(answer) if answer.code() == "challenge_closed" || answer.status == 404 => Resend::Closed,
        Ok(answer) => {
            let next = answer.retry_after.map(|wait| {
                chrono::Utc::now() + chrono::Duration::seconds(wait.try_into().unwrap_or(60))
            });
            Resend::NotSent(problem(&answer), next)
        }
        Err(error) => Resend::NotSent(unreachable(&error), None),
    }
}

/// What the user reads after a new code was sent.
pub const NEW_CODE_SENT: &str = "A new code is on its way. Earlier codes no longer work.";

/// What a verify's outcome means to the user; `None` for `verified`.
pub fn outcome_notice(answer: &Answer) -> Option<Notice> {
    let text = match answer.text("outcome") {
        "verified" => return None,
        "invalid_code" => format!(
            "That code is not right. {} attempts remaining.",
            answer.body["attempts_remaining"].as_i64().unwrap_or(0)
        ),
        "expired" => "That code has expired. Start again to get a new one.".into(),
        "locked" => {
            "Too many wrong codes: this code can no longer be used. Start again to get a new one."
                .into()
        }
        "already_used" => "That code was already used. Start again to get a new one.".into(),
        _ if answer.code() == "challenge_not_found" => {
            "This code request has ended. Start again to get a new code.".into()
        }
        _ => return Some(problem(answer)),
    };
    Some(Notice::error(text))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(status: u16, body: serde_json::Value, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            body,
            retry_after,
        }
    }

    fn said(notice: Option<Notice>) -> String {
        notice.map(|n| n.text).unwrap_or_default()
    }

    #[test]
    fn each_verify_outcome_reads_as_a_user_would_see_it() {
        let outcome = |body| said(outcome_notice(&answer(200, body, None)));
        assert_eq!(outcome(json!({"outcome": "verified"})), "");
        assert!(
            outcome(json!({"outcome": "invalid_code", "attempts_remaining": 2}))
                .contains("not right. 2 attempts remaining")
        );
        assert!(outcome(json!({"outcome": "expired"})).contains("has expired"));
        assert!(
            outcome(json!({"outcome": "locked", "attempts_remaining": 0}))
                .contains("Too many wrong codes")
        );
        assert!(outcome(json!({"outcome": "already_used"})).contains("already used"));
        let gone = answer(
            404,
            json!({"code": "challenge_not_found", "detail": "x"}),
            None,
        );
        assert!(said(outcome_notice(&gone)).contains("has ended"));
    }

    #[test]
    fn each_refusal_reads_as_a_user_would_see_it() {
        let refused = |status, code, retry_after| {
            problem(&answer(
                status,
                json!({"code": code, "detail": "the detail"}),
                retry_after,
            ))
            .text
        };
        assert!(refused(429, "rate_limited", Some(42)).contains("Please wait 42 s"));
        assert!(refused(429, "rate_limited", Some(898)).contains("Please wait 15 minutes"));
        assert!(refused(403, "not_allowed", None).contains("Inactive for your account type"));
        assert!(refused(409, "no_provider", None).contains("Services Manager"));
        assert!(refused(409, "already_enrolled", None).contains("already has"));
        let invalid = answer(
            422,
            json!({"code": "validation_failed", "detail": "Invalid data.",
                   "errors": [{"field": "email", "message": "not an address"}]}),
            None,
        );
        assert!(problem(&invalid).text.contains("email: not an address"));
    }

    #[test]
    fn times_read_as_people_read_them() {
        assert_eq!(
            when(Some("2026-12-07T20:47:55.163871Z")),
            "2026-12-07 20:47 UTC"
        );
        assert_eq!(when(Some("garbage")), "");
        assert_eq!(when(None), "");
    }
}
