//! The webhook events of the contract (API.md section 3): the envelope, the
//! event types, and each event's typed, validated `data`.
//!
//! Parsing is strict: an unknown field anywhere is a 422 naming it, so a
//! host's typo never silently does nothing.

mod envelope;
mod journeys;
mod providers;
mod settings;
mod validation;

pub use envelope::{Envelope, EnvelopeError, EventType};
pub use journeys::{
    ChallengeResend, EnrollmentStarted, LoginStarted, Role, User, UserScoped, Verify,
};
pub use providers::{
    ProviderDeleted, SecondaryAuthProviderUpserted, ServiceProviderUpserted, SmtpSecurity,
    SmtpSettings,
};
pub use settings::SettingsUpdated;
pub use validation::{FieldError, parse_data};
