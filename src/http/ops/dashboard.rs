//! `GET /ops`: the operator's dashboard, one server-rendered page
//! (handlebars; the template is embedded in the binary) with a little
//! inline script for the resend and discard buttons and live relative times.
//!
//! Everything on it is read from the database at request time, so it shows
//! the same on every queue backend and from any process.

use std::sync::LazyLock;

use axum::extract::{Query, State};
use axum::response::Html;
use handlebars::Handlebars;
use serde::{Deserialize, Serialize};

use email2fa_workers::dead_letters::DeadLetterReason;
use email2fa_workers::health::{ProviderProblem, UnhealthyProvider};
use email2fa_workers::stats::{self, MinuteCounts, ProviderActivity};

use super::OpsAuth;
use crate::http::{ApiError, AppState};
use crate::ops::{self, DeadLetterView, FilterInput, QueueEntry, RetryingView};
use crate::store::Timestamp;

/// Minutes of throughput shown.
const WINDOW_MINUTES: i64 = 15;
/// Dead letters per page (older ones behind "Older", a keyset cursor).
const DEAD_LETTERS_SHOWN: i64 = 100;
/// Retrying emails shown, the next due first (all through the API).
const RETRYING_SHOWN: i64 = 50;

/// The page's query string: the dead letters' filters (kept in the URL so
/// a view can be shared and reloaded) and the page cursor.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DashboardQuery {
    /// Only this tenant's dead letters and retrying emails.
    pub tenant: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only dead letters dead at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only dead letters with this reason.
    pub reason: Option<String>,
    /// Only this secondary auth provider's.
    pub provider: Option<String>,
    /// The dead letters' page (`next_cursor` of the API).
    pub cursor: Option<String>,
}

static TEMPLATES: LazyLock<Handlebars<'static>> = LazyLock::new(|| {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry
        .register_template_string(
            "dashboard",
            include_str!("../../../templates/ops/dashboard.html.hbs"),
        )
        .expect("the embedded dashboard template parses (checked by a unit test)");
    registry
});

/// The page.
#[derive(Debug, Serialize)]
struct Page {
    generated_at: String,
    backend: &'static str,
    queue_backend: &'static str,
    queue: QueueEntry,
    oldest: String,
    oldest_class: &'static str,
    dead_class: &'static str,
    bars: Vec<Bar>,
    sent_total: i64,
    dead_total: i64,
    sent_per_minute: String,
    failure_rate: String,
    failure_class: &'static str,
    providers: Vec<ProviderRow>,
    health_known: bool,
    credentials_rejected: Vec<ProblemRow>,
    tls_failed: Vec<ProblemRow>,
    dead_letters: Vec<LetterRow>,
    shown: usize,
    filters: Filters,
    filtered: bool,
    matching: i64,
    matching_permanent: i64,
    matching_resendable: i64,
    older_href: Option<String>,
    newest_href: Option<String>,
    retrying: Vec<RetryRow>,
    more_retrying: bool,
    oldest_unsent: String,
    oldest_unsent_class: &'static str,
}

/// The filter form's values and choices.
#[derive(Debug, Default, Serialize)]
struct Filters {
    tenant: String,
    kind: String,
    since: String,
    reason: String,
    provider: String,
    kinds: Vec<Choice>,
    reasons: Vec<Choice>,
}

#[derive(Debug, Serialize)]
struct Choice {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

#[derive(Debug, Serialize)]
struct RetryRow {
    #[serde(flatten)]
    email: RetryingView,
    kind_label: &'static str,
    next_in: String,
    last_ago: String,
    due: bool,
}

#[derive(Debug, Serialize)]
struct Bar {
    label: String,
    sent: i64,
    dead: i64,
    sent_pct: i64,
    dead_pct: i64,
}

#[derive(Debug, Serialize)]
struct ProviderRow {
    tenant_id: String,
    provider: String,
    smtp: String,
    last_error: Option<String>,
    failing_since: String,
    failing_since_at: String,
    sent: i64,
    retrying: i64,
    dead: i64,
    last_sent: String,
    last_sent_at: String,
    status: &'static str,
    status_label: &'static str,
}

/// An unhealthy provider on the page.
#[derive(Debug, Serialize)]
struct ProblemRow {
    provider: String,
    host: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct LetterRow {
    #[serde(flatten)]
    letter: DeadLetterView,
    kind_label: &'static str,
    reason_label: &'static str,
    dead_ago: String,
    permanent: bool,
}

/// The dashboard.
#[utoipa::path(get, path = "/ops", tag = "ops", params(DashboardQuery),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "The HTML dashboard", content_type = "text/html"),
        (status = 422, description = "`validation_failed`: a bad filter or cursor", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized` (a browser then asks for the token as password)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: the ops API is off", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn dashboard(
    _: OpsAuth,
    State(state): State<AppState>,
    Query(query): Query<DashboardQuery>,
) -> Result<Html<String>, ApiError> {
    let page = gather(&state, query).await?;
    let html = TEMPLATES
        .render("dashboard", &page)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Html(html))
}

async fn gather(state: &AppState, query: DashboardQuery) -> Result<Page, ApiError> {
    let now = Timestamp::now();
    let db = state.store.db();
    let queue = ops::queue_stats(&state.store).await?.queues.remove(0);
    let minutes = stats::throughput(db, now, WINDOW_MINUTES)
        .await
        .map_err(store_error)?;
    let since = now.plus_seconds(-WINDOW_MINUTES * 60);
    let mut providers = Vec::new();
    let mut servers = ops::SmtpServers::new(&state.store);
    for activity in stats::provider_activity(db, since, 20)
        .await
        .map_err(store_error)?
    {
        let smtp = servers
            .of(&activity.tenant_id, &activity.secondary_auth_provider_id)
            .await?;
        providers.push(provider_row(db, activity, smtp, since, now).await?);
    }
    let input = FilterInput {
        tenant: query.tenant.clone(),
        kind: query.kind.clone(),
        since: query.since.clone(),
        reason: query.reason.clone(),
        provider: query.provider.clone(),
    };
    let filter = ops::filter("tenant", input)?;
    let letters = ops::list(
        &state.store,
        filter,
        DEAD_LETTERS_SHOWN,
        query.cursor.as_deref(),
    )
    .await?;
    let retry_filter = super::deliveries::retrying_filter(
        query.tenant.clone(),
        query.provider.clone(),
        query.kind.clone(),
    )?;
    let retrying = ops::list_retrying(&state.store, retry_filter, RETRYING_SHOWN, None).await?;
    let unhealthy = state.ops.unhealthy_providers.as_ref().map(|probe| probe());
    let (credentials_rejected, tls_failed) = problem_rows(unhealthy.as_deref().unwrap_or_default());
    let (sent_total, dead_total) = minutes
        .iter()
        .fold((0, 0), |(s, d), m| (s + m.sent, d + m.dead));
    let failure = (sent_total + dead_total > 0)
        .then(|| dead_total as f64 * 100.0 / (sent_total + dead_total) as f64);
    Ok(Page {
        generated_at: now.to_rfc3339(),
        backend: db.backend_name(),
        queue_backend: state.queue.backend_name(),
        oldest: duration_text(queue.oldest_pending_age_seconds),
        oldest_class: level(queue.oldest_pending_age_seconds, 30, 300),
        oldest_unsent: duration_text(queue.oldest_unsent_age_seconds),
        oldest_unsent_class: level(queue.oldest_unsent_age_seconds, 60, 180),
        dead_class: level(queue.dead, 1, 50),
        queue,
        bars: bars(&minutes),
        sent_total,
        dead_total,
        sent_per_minute: format!("{:.1}", sent_total as f64 / WINDOW_MINUTES as f64),
        failure_rate: failure.map_or("–".into(), |f| format!("{f:.1} %")),
        failure_class: failure.map_or("ok", |f| {
            if f >= 10.0 {
                "bad"
            } else if f > 0.0 {
                "warn"
            } else {
                "ok"
            }
        }),
        providers,
        health_known: unhealthy.is_some(),
        credentials_rejected,
        tls_failed,
        older_href: letters
            .next_cursor
            .as_deref()
            .map(|cursor| page_href(&query, Some(cursor))),
        newest_href: query
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|_| page_href(&query, None)),
        shown: letters.dead_letters.len(),
        matching: letters.matching,
        matching_permanent: letters.matching_permanent,
        matching_resendable: letters.matching - letters.matching_permanent,
        filtered: [
            &query.tenant,
            &query.kind,
            &query.since,
            &query.reason,
            &query.provider,
        ]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| !v.is_empty())),
        filters: filters(&query),
        dead_letters: letters
            .dead_letters
            .into_iter()
            .map(|l| letter_row(l, now))
            .collect(),
        more_retrying: retrying.next_cursor.is_some(),
        retrying: retrying
            .retrying
            .into_iter()
            .map(|r| retry_row(r, now))
            .collect(),
    })
}

/// `/ops?…` with the same filters and another cursor.
fn page_href(query: &DashboardQuery, cursor: Option<&str>) -> String {
    let mut url = reqwest::Url::parse("http://ops.invalid/ops").expect("a constant URL parses");
    let given = [
        ("tenant", &query.tenant),
        ("kind", &query.kind),
        ("since", &query.since),
        ("reason", &query.reason),
        ("provider", &query.provider),
    ];
    {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in given {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                pairs.append_pair(name, value);
            }
        }
        if let Some(cursor) = cursor {
            pairs.append_pair("cursor", cursor);
        }
    }
    format!("/ops?{}#dead-letters", url.query().unwrap_or_default())
}

fn filters(query: &DashboardQuery) -> Filters {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let kind = text(&query.kind);
    let reason = text(&query.reason);
    Filters {
        kinds: ops::KINDS
            .iter()
            .map(|&value| Choice {
                value,
                label: kind_label(value),
                selected: value == kind,
            })
            .collect(),
        reasons: DeadLetterReason::ALL
            .iter()
            .map(|r| Choice {
                value: r.as_str(),
                label: reason_label(r.as_str()),
                selected: r.as_str() == reason,
            })
            .collect(),
        tenant: text(&query.tenant),
        since: text(&query.since),
        provider: text(&query.provider),
        kind,
        reason,
    }
}

fn store_error(error: sqlx::Error) -> ApiError {
    crate::store::StoreError::from(error).into()
}

fn level(value: i64, warn: i64, bad: i64) -> &'static str {
    if value >= bad {
        "bad"
    } else if value >= warn {
        "warn"
    } else {
        "ok"
    }
}

fn bars(minutes: &[MinuteCounts]) -> Vec<Bar> {
    let top = minutes
        .iter()
        .map(|m| m.sent + m.dead)
        .max()
        .unwrap_or(0)
        .max(1);
    minutes
        .iter()
        .map(|m| Bar {
            label: chrono::DateTime::from_timestamp(m.minute, 0)
                .map(|t| t.format("%H:%M UTC").to_string())
                .unwrap_or_default(),
            sent: m.sent,
            dead: m.dead,
            sent_pct: m.sent * 100 / top,
            dead_pct: m.dead * 100 / top,
        })
        .collect()
}

async fn provider_row(
    db: &email2fa_db::Db,
    a: ProviderActivity,
    smtp: Option<String>,
    since: Timestamp,
    now: Timestamp,
) -> Result<ProviderRow, ApiError> {
    let (status, status_label) = match (a.sent, a.retrying + a.dead) {
        (_, 0) => ("ok", "Healthy"),
        (0, _) => ("bad", "Failing"),
        _ => ("warn", "Degraded"),
    };
    let last_error = if a.retrying + a.dead > 0 {
        stats::provider_last_error(db, &a.tenant_id, &a.secondary_auth_provider_id, since)
            .await
            .map_err(store_error)?
            .and_then(|(error, recipient)| {
                let masked = ops::mask_recipient(&recipient);
                error.map(|e| {
                    email2fa_workers::dead_letters::replace_ignoring_case(&e, &recipient, &masked)
                })
            })
    } else {
        None
    };
    let failing = a.first_failed_at.filter(|_| status != "ok");
    Ok(ProviderRow {
        last_sent: a.last_sent_at.map_or("–".into(), |t| ago(t, now)),
        last_sent_at: a.last_sent_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        failing_since: failing.map_or(String::new(), |t| ago(t, now)),
        failing_since_at: failing.map(|t| t.to_rfc3339()).unwrap_or_default(),
        smtp: smtp.unwrap_or_else(|| "provider deleted".into()),
        last_error,
        tenant_id: a.tenant_id,
        provider: a.secondary_auth_provider_id,
        sent: a.sent,
        retrying: a.retrying,
        dead: a.dead,
        status,
        status_label,
    })
}

fn retry_row(email: RetryingView, now: Timestamp) -> RetryRow {
    let at = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp::from(t.with_timezone(&chrono::Utc)))
            .unwrap_or(now)
    };
    let next = at(&email.next_attempt_at);
    let wait = next.unix_seconds() - now.unix_seconds();
    RetryRow {
        kind_label: kind_label(&email.kind),
        next_in: if wait > 0 {
            format!("in {}", duration_text(wait))
        } else {
            "due now".into()
        },
        due: wait <= 0,
        last_ago: ago(at(&email.last_attempt_at), now),
        email,
    }
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "enrollment_code" => "Enrollment code",
        "login_code" => "Login code",
        _ => "Factor removed",
    }
}

fn reason_label(reason: &str) -> &'static str {
    match DeadLetterReason::parse(reason) {
        Some(DeadLetterReason::AttemptsExhausted) => "Retries exhausted",
        Some(DeadLetterReason::Rejected) => "Rejected by SMTP",
        Some(DeadLetterReason::TlsFailed) => "TLS failed",
        Some(DeadLetterReason::Render) => "Could not render",
        Some(DeadLetterReason::Permanent) | None => "Cannot be sent",
    }
}

/// The unhealthy providers as two lists: credentials rejected, TLS failed.
fn problem_rows(unhealthy: &[UnhealthyProvider]) -> (Vec<ProblemRow>, Vec<ProblemRow>) {
    let (mut credentials, mut tls) = (Vec::new(), Vec::new());
    for entry in unhealthy {
        let (list, detail) = match &entry.problem {
            ProviderProblem::CredentialsRejected(reply) => (&mut credentials, reply),
            ProviderProblem::TlsFailed(why) => (&mut tls, why),
        };
        list.push(ProblemRow {
            provider: entry.provider.clone(),
            host: entry.host.clone(),
            detail: detail.clone(),
        });
    }
    (credentials, tls)
}

fn letter_row(letter: DeadLetterView, now: Timestamp) -> LetterRow {
    let dead_ago = chrono::DateTime::parse_from_rfc3339(&letter.dead_at)
        .map(|t| ago(Timestamp::from(t.with_timezone(&chrono::Utc)), now))
        .unwrap_or_default();
    LetterRow {
        kind_label: kind_label(&letter.kind),
        reason_label: reason_label(&letter.reason),
        permanent: letter.reason == DeadLetterReason::Rejected.as_str(),
        dead_ago,
        letter,
    }
}

/// "12 s ago", "4 min ago", "3 h ago", "2 d ago".
fn ago(at: Timestamp, now: Timestamp) -> String {
    format!(
        "{} ago",
        duration_text(now.unix_seconds() - at.unix_seconds())
    )
}

fn duration_text(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_template_parses() {
        assert!(TEMPLATES.get_template("dashboard").is_some());
    }

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(duration_text(-3), "0 s");
        assert_eq!(duration_text(59), "59 s");
        assert_eq!(duration_text(125), "2 min");
        assert_eq!(duration_text(7200), "2 h");
        assert_eq!(duration_text(200_000), "2 d");
    }

    #[test]
    fn a_page_with_everything_renders() {
        let letter = DeadLetterView {
            id: "01J".into(),
            tenant_id: "acme".into(),
            delivery_id: "01D".into(),
            kind: "login_code".into(),
            recipient: "j***@example.com".into(),
            attempts: 6,
            last_error: None,
            dead_at: "2026-11-28T07:00:00Z".into(),
            reason: "attempts_exhausted".into(),
        };
        let retrying = RetryingView {
            delivery_id: "01R".into(),
            tenant_id: "acme".into(),
            kind: "login_code".into(),
            recipient: "k***@example.com".into(),
            attempts: 2,
            max_attempts: 6,
            last_error: Some("421 4.7.0 try again later".into()),
            next_attempt_at: "2026-11-28T07:01:00Z".into(),
            last_attempt_at: "2026-11-28T07:00:00Z".into(),
            created_at: "2026-11-28T06:59:00Z".into(),
            provider: "sap-1".into(),
            smtp: Some("smtp.acme.example:587".into()),
        };
        let now = Timestamp::now();
        let page = Page {
            generated_at: now.to_rfc3339(),
            backend: "sqlite",
            queue_backend: "sqlite",
            queue: QueueEntry {
                name: "emails",
                pending: 1,
                scheduled: 2,
                running: 3,
                done: 4,
                failed: 5,
                dead: 1,
                oldest_pending_age_seconds: 7,
                oldest_unsent_age_seconds: 9,
            },
            oldest: duration_text(7),
            oldest_class: "ok",
            dead_class: "warn",
            bars: bars(&[MinuteCounts {
                minute: 60,
                sent: 3,
                dead: 1,
            }]),
            sent_total: 3,
            dead_total: 1,
            sent_per_minute: "0.2".into(),
            failure_rate: "25.0 %".into(),
            failure_class: "bad",
            providers: vec![],
            health_known: true,
            credentials_rejected: vec![],
            tls_failed: vec![ProblemRow {
                provider: "acme:p1".into(),
                host: "smtp.acme.example".into(),
                detail: "invalid peer certificate: UnknownIssuer".into(),
            }],
            dead_letters: vec![letter_row(letter, now)],
            shown: 1,
            filters: filters(&DashboardQuery::default()),
            filtered: false,
            matching: 1,
            matching_permanent: 0,
            matching_resendable: 1,
            older_href: Some("/ops?cursor=x#dead-letters".into()),
            newest_href: None,
            retrying: vec![retry_row(retrying, now)],
            more_retrying: false,
            oldest_unsent: duration_text(9),
            oldest_unsent_class: "ok",
        };
        let html = TEMPLATES.render("dashboard", &page).expect("renders");
        assert!(html.contains("data-dead-letter=\"01J\""));
        assert!(html.contains("data-retrying=\"01R\""));
        assert!(html.contains("smtp.acme.example:587"));
        assert!(html.contains("2/6"));
        assert!(html.contains("TLS failed"));
        assert!(html.contains("UnknownIssuer"));
    }
}
