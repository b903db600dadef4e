//! The OpenAPI document served at `GET /openapi.json`. Paths come from the
//! handlers' annotations; this module adds the shapes that only exist on the
//! wire (the envelope, the problem answer) and the event answers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::domain::{
    ChallengeAnswer, DeletedAnswer, LoginAnswer, RemovedAnswer, RevokedAnswer,
    SecondaryAuthProviderAnswer, ServiceProviderAnswer, StatusAnswer, VerifyAnswer,
};
use crate::events::{
    ChallengeResend, EnrollmentStarted, FieldError, LoginStarted, ProviderDeleted,
    SecondaryAuthProviderUpserted, ServiceProviderUpserted, SettingsUpdated, UserScoped, Verify,
};
use crate::store::TenantSettings;

/// `{"type", "timestamp", "data"}`, signed with Standard Webhooks.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct WebhookEnvelope {
    /// The event type: `settings.updated`, `service_provider.upserted`,
    /// `service_provider.deleted`, `secondary_auth_provider.upserted`,
    /// `secondary_auth_provider.deleted`, `enrollment.started`,
    /// `enrollment.verify`, `login.started`, `login.verify`,
    /// `challenge.resend`, `factor.removed`, `trusted_devices.revoked`,
    /// `user.status`.
    #[serde(rename = "type")]
    event_type: String,
    /// When the host created the event (RFC 3339); optional.
    timestamp: Option<String>,
    /// The event's data; unknown fields are refused with 422.
    data: EventData,
}

/// The `data` of each event type.
#[derive(serde::Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum EventData {
    /// `settings.updated`.
    SettingsUpdated(#[schema(inline)] SettingsUpdatedDoc),
    /// `service_provider.upserted`.
    ServiceProviderUpserted(#[schema(inline)] ServiceProviderUpsertedDoc),
    /// `secondary_auth_provider.upserted`.
    SecondaryAuthProviderUpserted(#[schema(inline)] SecondaryAuthProviderUpsertedDoc),
    /// `service_provider.deleted`, `secondary_auth_provider.deleted`.
    ProviderDeleted(#[schema(inline)] ProviderDeletedDoc),
    /// `enrollment.started`.
    EnrollmentStarted(EnrollmentStarted),
    /// `enrollment.verify`, `login.verify`.
    Verify(Verify),
    /// `login.started`.
    LoginStarted(LoginStarted),
    /// `challenge.resend`.
    ChallengeResend(ChallengeResend),
    /// `factor.removed`, `trusted_devices.revoked`, `user.status`.
    UserScoped(UserScoped),
}

type SettingsUpdatedDoc = SettingsUpdated;
type ServiceProviderUpsertedDoc = ServiceProviderUpserted;
type SecondaryAuthProviderUpsertedDoc = SecondaryAuthProviderUpserted;
type ProviderDeletedDoc = ProviderDeleted;

/// An RFC 9457 problem (`application/problem+json`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// A short title of the problem kind.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What exactly was wrong.
    detail: String,
    /// The stable code: `malformed_payload`, `unknown_event_type`,
    /// `invalid_signature`, `timestamp_out_of_tolerance`, `not_allowed`,
    /// `unknown_tenant`, `challenge_not_found`, `webhook_id_conflict`,
    /// `already_enrolled`, `no_provider`, `provider_in_use`,
    /// `challenge_closed`, `payload_too_large`, `validation_failed`,
    /// `rate_limited`, `unavailable`; on `/ops`: `unauthorized`, `forbidden`,
    /// `not_found`, `dead_letter_not_found`, `delivery_not_found`, `not_retrying`.
    code: String,
    /// With `validation_failed`: each field's problem.
    errors: Option<Vec<FieldError>>,
    /// With `rate_limited` and `unavailable`: seconds to wait.
    retry_after: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "email2fa",
        description = "Email-based two-factor authentication for host platforms. Hosts post Standard Webhooks-signed events to `/v1/webhooks/{tenant_id}`; each event's answer is documented in the components: `TenantSettings` (settings.updated), `ServiceProviderAnswer`, `SecondaryAuthProviderAnswer`, `DeletedAnswer` (the deletes), `ChallengeAnswer` (enrollment.started, challenge.resend), `VerifyAnswer` (enrollment.verify, login.verify), `LoginAnswer` (login.started), `RemovedAnswer` (factor.removed), `RevokedAnswer` (trusted_devices.revoked), `StatusAnswer` (user.status)."
    ),
    components(schemas(
        WebhookEnvelope, Problem, TenantSettings, ServiceProviderAnswer,
        SecondaryAuthProviderAnswer, DeletedAnswer, ChallengeAnswer, LoginAnswer,
        VerifyAnswer, RemovedAnswer, RevokedAnswer, StatusAnswer
    )),
    modifiers(&OpsSecurity),
    tags((name = "webhooks", description = "The signed webhook ingress"),
         (name = "health", description = "Liveness, readiness and Prometheus metrics"),
         (name = "ops", description = "Queue health and dead letters, for operators. Needs `EMAIL2FA_OPS_TOKEN` as a bearer token, or as the password of HTTP Basic (any user name); 401 with `WWW-Authenticate` without it, 404 on every `/ops` path when no token is configured."))
)]
struct ApiDoc;

/// The two ways to present the ops token.
struct OpsSecurity;

impl Modify for OpsSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "ops_bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer EMAIL2FA_OPS_TOKEN`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "ops_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "HTTP Basic: any user name, the ops token as password (browsers)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's fixed parts, before the routes add their paths.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
