//! What each event does: the decisions and writes behind the webhook answers.
//!
//! The hot events (enrollment, login, verify, resend) are decided a batch at
//! a time, in plain code without I/O, over a snapshot the store reads for
//! the batch ([`batch`]); the ingress's batcher ([`crate::ingest`]) runs
//! the transaction around them. The rare events (settings, providers,
//! managing 2FA) run one at a time inside the ingress's transaction
//! ([`execute`]). Either way an event's writes and its idempotency receipt
//! commit or roll back as one, and emails are queued as delivery rows whose
//! jobs commit (or are pushed) with them.

pub mod batch;
mod enrollment;
pub mod keys;
mod login;
mod manage;
mod providers;
mod sending;
mod settings;
mod verify;

pub use enrollment::{ChallengeAnswer, role_allowed};
pub use login::{AllowReason, FirstStep, LoginAnswer, LoginDecision, first_step};
pub use manage::{RemovedAnswer, RevokedAnswer, StatusAnswer};
pub use providers::{SecondaryAuthProviderAnswer, ServiceProviderAnswer, SmtpAnswer};
pub use sending::{seconds_until, send_verdict};
pub use verify::{VerifyAnswer, VerifyOutcome, closed_outcome, normalize_code, wrong_code_outcome};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::events::{Envelope, EventType, FieldError, parse_data};
use crate::settings::{LimitSettings, Settings};
use crate::store::{Store, StoreError, Tx};

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Fields of `data` are wrong (422).
    #[error("invalid data")]
    Invalid(Vec<FieldError>),
    /// 2FA is Inactive for the user's role (403).
    #[error("{0}")]
    NotAllowed(String),
    /// No such challenge for this tenant (404).
    #[error("no such challenge for this tenant")]
    ChallengeNotFound,
    /// The user already has an email factor (409).
    #[error("this user already has an email factor; remove it first (factor.removed)")]
    AlreadyEnrolled,
    /// No secondary auth provider is configured (409).
    #[error("{0}")]
    NoProvider(String),
    /// The `webhook-id` was used before with another body (409).
    #[error("this webhook-id was already used with a different body")]
    WebhookIdConflict,
    /// The challenge is verified, locked, expired or replaced (409).
    #[error("the challenge is {0}; start a new one")]
    ChallengeClosed(String),
    /// Too many codes (429).
    #[error("{detail}")]
    RateLimited {
        /// Seconds until a code may be sent again.
        retry_after: u64,
        /// Which limit.
        detail: String,
    },
    /// A service provider still sends for secondary auth providers (409).
    #[error(
        "service provider {id:?} is used by secondary auth provider(s) {used_by:?}; delete or move them first"
    )]
    ProviderInUse {
        /// The provider.
        id: String,
        /// Who uses it.
        used_by: Vec<String>,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Vec<FieldError>> for EventError {
    fn from(errors: Vec<FieldError>) -> Self {
        Self::Invalid(errors)
    }
}

/// The service-wide settings the events need.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Send limits and lockout.
    pub limits: LimitSettings,
    /// Attempts per email before it becomes a dead letter.
    pub delivery_max_attempts: i32,
}

impl DomainConfig {
    /// From the service settings.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            limits: settings.limits.clone(),
            delivery_max_attempts: settings.delivery.max_attempts,
        }
    }
}

/// Where an event runs: its store, transaction and tenant.
pub struct EventContext<'a> {
    /// The store.
    pub store: &'a Store,
    /// The ingress's transaction.
    pub tx: &'a mut Tx,
    /// The tenant the call was signed for.
    pub tenant_id: &'a str,
    /// Limits and delivery settings.
    pub config: &'a DomainConfig,
    /// Deliveries queued by the event, to push once it succeeded.
    pub deliveries: Vec<String>,
}

/// Runs one rare event and returns its JSON answer (status 200). The hot
/// events never come here: the ingress decides them in batches
/// ([`EventType::is_hot`]).
pub async fn execute(
    ctx: &mut EventContext<'_>,
    envelope: &Envelope<'_>,
) -> Result<Vec<u8>, EventError> {
    let data = envelope.data;
    match envelope.event_type {
        EventType::SettingsUpdated => answer(settings::updated(ctx, parse(data)?).await?),
        EventType::ServiceProviderUpserted => {
            answer(providers::upsert_service(ctx, parse(data)?).await?)
        }
        EventType::ServiceProviderDeleted => {
            answer(providers::delete_service(ctx, parse(data)?).await?)
        }
        EventType::SecondaryAuthProviderUpserted => {
            answer(providers::upsert_secondary(ctx, parse(data)?).await?)
        }
        EventType::SecondaryAuthProviderDeleted => {
            answer(providers::delete_secondary(ctx, parse(data)?).await?)
        }
        EventType::EnrollmentStarted
        | EventType::EnrollmentVerify
        | EventType::LoginStarted
        | EventType::LoginVerify
        | EventType::ChallengeResend => {
            unreachable!("hot events are decided in batches (crate::ingest)")
        }
        EventType::FactorRemoved => answer(manage::factor_removed(ctx, parse(data)?).await?),
        EventType::TrustedDevicesRevoked => {
            answer(manage::devices_revoked(ctx, parse(data)?).await?)
        }
        EventType::UserStatus => answer(manage::user_status(ctx, parse(data)?).await?),
    }
}

fn parse<T: serde::de::DeserializeOwned>(data: &RawValue) -> Result<T, EventError> {
    Ok(parse_data(data)?)
}

fn answer<T: Serialize>(value: T) -> Result<Vec<u8>, EventError> {
    Ok(serde_json::to_vec(&value).expect("answers are plain structs with string keys"))
}

/// `{"id", "deleted"}`: the answer of the two delete events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletedAnswer {
    /// The id named in the event.
    pub id: String,
    /// False when there was nothing to delete (deletes are idempotent).
    pub deleted: bool,
}
