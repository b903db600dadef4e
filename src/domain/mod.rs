//! What each event does: the decisions and writes behind the webhook answers.
//!
//! Every handler runs inside the ingress's transaction, together with the
//! idempotency receipt, so an event's writes and its receipt commit or roll
//! back as one.

mod providers;
mod settings;

pub use providers::{SecondaryAuthProviderAnswer, ServiceProviderAnswer, SmtpAnswer};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::events::{Envelope, EventType, FieldError, parse_data};
use crate::store::{Store, StoreError, Tx};

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Fields of `data` are wrong (422).
    #[error("invalid data")]
    Invalid(Vec<FieldError>),
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
    /// A recognised event whose handling is not built yet (501).
    #[error("{} is part of the contract but not handled by this version yet", .0.as_str())]
    NotBuilt(EventType),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Vec<FieldError>> for EventError {
    fn from(errors: Vec<FieldError>) -> Self {
        Self::Invalid(errors)
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
}

/// Runs one event and returns its JSON answer (status 200).
pub async fn execute(
    ctx: EventContext<'_>,
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
        other => Err(EventError::NotBuilt(other)),
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
