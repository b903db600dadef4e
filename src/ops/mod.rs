//! Operations: what an operator sees and does, shared by the `/ops` HTTP
//! API, the dashboard and the CLI (`queue stats`, `dlq …`): the queue
//! counts, the dead letters (listed newest first with masked recipients and
//! an opaque cursor) and their resend and discard.

mod detail;
mod resend;
mod retrying;

pub use detail::{AttemptView, DeliveryDetail, LetterView, ResendVerdict, delivery_detail};
pub use resend::{
    BulkAnswer, BulkDiscarded, Refused, Resent, discard, discard_matching, resend, resend_matching,
};
pub use retrying::{RetryingPage, RetryingView, SmtpServers, list_retrying, retry_now};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use email2fa_workers::dead_letters::{self, DeadLetter, DeadLetterFilter, DeadLetterReason};
use email2fa_workers::queue::QueueError;
use email2fa_workers::stats::{self, QueueCounts};

use crate::events::FieldError;
use crate::store::{Store, StoreError, Timestamp};

/// The kinds of email a dead letter can hold.
pub const KINDS: [&str; 3] = ["enrollment_code", "login_code", "factor_removed"];

/// Largest page of `GET /ops/dead-letters`.
pub const MAX_LIMIT: i64 = 500;

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// No unresolved dead letter with this id (unknown, or already resent
    /// or discarded).
    #[error("no unresolved dead letter {0:?} (unknown, or already resent or discarded)")]
    NotFound(String),
    /// The code's challenge is verified, locked, expired or was replaced by
    /// a newer send: a new code would be useless.
    #[error("{0}")]
    ChallengeClosed(String),
    /// No delivery with this id.
    #[error("no delivery {0:?}")]
    DeliveryNotFound(String),
    /// The delivery is not waiting for a retry.
    #[error("{0}")]
    NotRetrying(String),
    /// A filter or cursor is invalid.
    #[error("invalid parameters")]
    Invalid(Vec<FieldError>),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue refused the job (Redis down): nothing was written.
    #[error("the queue is unavailable")]
    Queue(#[from] QueueError),
}

impl From<sqlx::Error> for OpsError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// One entry of `GET /ops/queue`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueEntry {
    /// The queue: `emails`.
    pub name: &'static str,
    /// Waiting for a worker: queued, plus retrying whose next attempt is due.
    pub pending: i64,
    /// Retrying, next attempt not due yet.
    pub scheduled: i64,
    /// Being sent now.
    pub running: i64,
    /// Sent (accepted by SMTP), all time.
    pub done: i64,
    /// Retrying: the last attempt failed and another follows (also counted
    /// in `pending` or `scheduled`).
    pub failed: i64,
    /// Unresolved dead letters.
    pub dead: i64,
    /// Seconds the oldest pending delivery has been due; 0 when none is.
    pub oldest_pending_age_seconds: i64,
    /// Seconds since the oldest email not sent yet (queued, sending or
    /// retrying, due or in backoff) was created; 0 when none is.
    pub oldest_unsent_age_seconds: i64,
}

/// `{"queues": [...]}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// One entry: `emails`.
    pub queues: Vec<QueueEntry>,
}

/// The queue counts now.
pub async fn queue_stats(store: &Store) -> Result<QueueStats, OpsError> {
    let QueueCounts {
        pending,
        scheduled,
        running,
        done,
        failed,
        dead,
        oldest_pending_age_seconds,
        oldest_unsent_age_seconds,
    } = stats::queue_counts(store.db(), Timestamp::now()).await?;
    Ok(QueueStats {
        queues: vec![QueueEntry {
            name: email2fa_workers::queue::QUEUE_NAME,
            pending,
            scheduled,
            running,
            done,
            failed,
            dead,
            oldest_pending_age_seconds,
            oldest_unsent_age_seconds,
        }],
    })
}

/// A dead letter as operators see it: the recipient masked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// The dead letter's id (resend and discard take it).
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// The delivery that gave up.
    pub delivery_id: String,
    /// `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: String,
    /// Masked: first letter, `***`, then `@domain`.
    pub recipient: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last failure (the address in it masked too).
    pub last_error: Option<String>,
    /// When it gave up (RFC 3339).
    pub dead_at: String,
    /// `attempts_exhausted`, `rejected` (a permanent SMTP refusal),
    /// `tls_failed` (the connection to the provider could not be made
    /// secure), `permanent` (e.g. its provider was deleted) or `render`.
    pub reason: String,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        let masked = mask_recipient(&letter.recipient);
        Self {
            last_error: letter.last_error.map(|e| {
                email2fa_workers::dead_letters::replace_ignoring_case(
                    &e,
                    &letter.recipient,
                    &masked,
                )
            }),
            id: letter.id,
            tenant_id: letter.tenant_id,
            delivery_id: letter.delivery_id,
            kind: letter.kind,
            recipient: masked,
            attempts: letter.attempts,
            dead_at: letter.dead_at.to_rfc3339(),
            reason: letter.reason,
        }
    }
}

/// One page of dead letters.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    /// Newest first.
    pub dead_letters: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// How many unresolved letters match the filters (all pages).
    pub matching: i64,
    /// Of those, how many SMTP rejected for good (`reason` `rejected`): a
    /// bulk resend leaves them out unless `include_permanent` is set.
    pub matching_permanent: i64,
}

/// `j***@example.com`: the first letter, `***`, then `@domain`.
pub fn mask_recipient(address: &str) -> String {
    let (local, domain) = match address.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (address, None),
    };
    let first: String = local.chars().take(1).collect();
    match domain {
        Some(domain) => format!("{first}***@{domain}"),
        None => format!("{first}***"),
    }
}

/// The filters an operator gives, as text (a query string, a JSON body,
/// command-line flags): the same for the page, the API and `dlq`.
#[derive(Debug, Clone, Default)]
pub struct FilterInput {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only those dead at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only this reason.
    pub reason: Option<String>,
    /// Only this secondary auth provider's.
    pub provider: Option<String>,
}

/// Builds a filter from operator input, naming each bad field.
///
/// A tenant that is not a tenant id (a NUL byte, say, which PostgreSQL
/// refuses in text) is refused naming `tenant_field`, not passed on. Empty
/// values mean "any" (an empty form field).
pub fn filter(
    tenant_field: &'static str,
    input: FilterInput,
) -> Result<DeadLetterFilter, OpsError> {
    let given = |value: Option<String>| value.filter(|v| !v.is_empty());
    let (tenant, kind, reason, provider) = (
        given(input.tenant),
        given(input.kind),
        given(input.reason),
        given(input.provider),
    );
    let mut errors = Vec::new();
    if tenant
        .as_deref()
        .is_some_and(|t| !crate::http::is_valid_tenant_id(t))
    {
        errors.push(FieldError::new(
            tenant_field,
            "must be a tenant id: lowercase letters, digits and dashes",
        ));
    }
    if kind.as_deref().is_some_and(|k| !KINDS.contains(&k)) {
        errors.push(FieldError::new("kind", format!("must be one of {KINDS:?}")));
    }
    if reason
        .as_deref()
        .is_some_and(|r| DeadLetterReason::parse(r).is_none())
    {
        let names: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
        errors.push(FieldError::new(
            "reason",
            format!("must be one of {names:?}"),
        ));
    }
    if provider.as_deref().is_some_and(|p| !is_plausible_name(p)) {
        errors.push(FieldError::new(
            "provider",
            "must be a secondary auth provider id (at most 128 characters, no control characters)",
        ));
    }
    let since = given(input.since).and_then(|text| match parse_time(&text) {
        Some(at) => Some(at),
        None => {
            errors.push(FieldError::new(
                "since",
                "must be an RFC 3339 time, e.g. 2026-11-28T07:00:00Z",
            ));
            None
        }
    });
    if !errors.is_empty() {
        return Err(OpsError::Invalid(errors));
    }
    Ok(DeadLetterFilter {
        tenant_id: tenant,
        kind,
        since,
        reason,
        provider,
        except_reason: None,
        before: None,
    })
}

/// Whether `name` could be a provider id: 1–128 characters, none a
/// control character (PostgreSQL refuses a NUL byte in text).
pub fn is_plausible_name(name: &str) -> bool {
    (1..=128).contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

fn parse_time(text: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| Timestamp::from(t.with_timezone(&chrono::Utc)))
}

/// One page of unresolved dead letters, newest first.
pub async fn list(
    store: &Store,
    mut filter: DeadLetterFilter,
    limit: i64,
    cursor: Option<&str>,
) -> Result<DeadLetterPage, OpsError> {
    check_limit(limit)?;
    if let Some(cursor) = cursor.filter(|c| !c.is_empty()) {
        filter.before = Some(decode_cursor(cursor).ok_or_else(|| {
            OpsError::Invalid(vec![FieldError::new(
                "cursor",
                "not a cursor this service gave out",
            )])
        })?);
    }
    let mut rows = dead_letters::list_unresolved(store.db(), &filter, limit + 1).await?;
    let (matching, matching_permanent) = dead_letters::count_matching(store.db(), &filter).await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|last| encode_cursor(last.dead_at, &last.id))
        })
        .flatten();
    Ok(DeadLetterPage {
        dead_letters: rows.into_iter().map(DeadLetterView::from).collect(),
        next_cursor,
        matching,
        matching_permanent,
    })
}

/// Refuses a page size outside 1–[`MAX_LIMIT`].
fn check_limit(limit: i64) -> Result<(), OpsError> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(())
    } else {
        Err(OpsError::Invalid(vec![FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )]))
    }
}

/// The cursor is the last row's `(dead_at, id)`, base64url: opaque to
/// clients, stable under inserts (new letters are newer, so they never shift
/// a page that follows).
fn encode_cursor(at: Timestamp, id: &str) -> String {
    let micros = at.as_datetime().timestamp_micros();
    URL_SAFE_NO_PAD.encode(format!("{micros}.{id}"))
}

fn decode_cursor(cursor: &str) -> Option<(Timestamp, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (micros, id) = text.split_once('.')?;
    let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    is_plausible_id(id).then(|| (Timestamp::from(at), id.to_string()))
}

/// Whether `id` could be one of this service's ids (a ULID; at most 64
/// ASCII letters, digits, `-` and `_`): anything else is unknown without
/// asking the database (which refuses a NUL byte in text with an error).
pub fn is_plausible_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_masked_to_their_first_letter_and_domain() {
        assert_eq!(mask_recipient("jane@example.com"), "j***@example.com");
        assert_eq!(mask_recipient("é.x@bücher.de"), "é***@bücher.de");
        assert_eq!(mask_recipient("@example.com"), "***@example.com");
        assert_eq!(mask_recipient("nodomain"), "n***");
    }

    #[test]
    fn the_address_is_masked_inside_the_last_error_too() {
        let masked = email2fa_workers::dead_letters::replace_ignoring_case(
            "550 5.1.1 <Jane@Example.com>: no such user (jane@example.com)",
            "jane@example.com",
            "j***@example.com",
        );
        assert_eq!(
            masked,
            "550 5.1.1 <j***@example.com>: no such user (j***@example.com)"
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let at = Timestamp::now();
        let cursor = encode_cursor(at, "01JABC");
        assert_eq!(decode_cursor(&cursor), Some((at, "01JABC".to_string())));
        assert_eq!(decode_cursor("not a cursor"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("12.")), None);
    }

    #[test]
    fn filters_name_each_bad_field() {
        let bad = FilterInput {
            tenant: Some("acme\0".into()),
            kind: Some("sms".into()),
            since: Some("yesterday".into()),
            reason: Some("bounced".into()),
            provider: Some("p\0".into()),
        };
        let Err(OpsError::Invalid(errors)) = filter("tenant", bad) else {
            panic!("refused");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tenant", "kind", "reason", "provider", "since"]);
        let good = FilterInput {
            tenant: Some("acme".into()),
            since: Some("2026-11-28T07:00:00Z".into()),
            reason: Some("rejected".into()),
            provider: Some("sap-1".into()),
            ..FilterInput::default()
        };
        assert!(filter("tenant", good).is_ok());
        let empty = FilterInput {
            tenant: Some(String::new()),
            reason: Some(String::new()),
            ..FilterInput::default()
        };
        let f = filter("tenant", empty).expect("empty is any");
        assert!(f.tenant_id.is_none() && f.reason.is_none());
    }

    #[test]
    fn only_plausible_ids_reach_the_database() {
        assert!(is_plausible_id("01KC0Y8S3M9Q5V3B6X2N4R7T1W"));
        for id in ["", "a\0b", "a b", "../x", &"x".repeat(65)] {
            assert!(!is_plausible_id(id), "{id:?}");
        }
        let cursor = URL_SAFE_NO_PAD.encode("12.a\0b");
        assert_eq!(decode_cursor(&cursor), None);
    }
}
