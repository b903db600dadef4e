//! `{"type": "…", "timestamp": "…", "data": {…}}`.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Every event type of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Services Manager settings (partial update).
    SettingsUpdated,
    /// An SMTP service provider was added or changed.
    ServiceProviderUpserted,
    /// An SMTP service provider was deleted.
    ServiceProviderDeleted,
    /// A secondary auth provider was added or changed.
    SecondaryAuthProviderUpserted,
    /// A secondary auth provider was deleted.
    SecondaryAuthProviderDeleted,
    /// "Add" → "Send Code".
    EnrollmentStarted,
    /// "Verify" during enrollment.
    EnrollmentVerify,
    /// A login reached the 2FA step.
    LoginStarted,
    /// "Verify" on the login code screen.
    LoginVerify,
    /// "Send New Code".
    ChallengeResend,
    /// An email factor was deleted.
    FactorRemoved,
    /// Trusted browsers were revoked.
    TrustedDevicesRevoked,
    /// Account Settings / User Security page data.
    UserStatus,
}

impl EventType {
    /// All types, in contract order.
    pub const ALL: [EventType; 13] = [
        Self::SettingsUpdated,
        Self::ServiceProviderUpserted,
        Self::ServiceProviderDeleted,
        Self::SecondaryAuthProviderUpserted,
        Self::SecondaryAuthProviderDeleted,
        Self::EnrollmentStarted,
        Self::EnrollmentVerify,
        Self::LoginStarted,
        Self::LoginVerify,
        Self::ChallengeResend,
        Self::FactorRemoved,
        Self::TrustedDevicesRevoked,
        Self::UserStatus,
    ];

    /// The wire name, e.g. `login.started`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::SettingsUpdated => "settings.updated",
            Self::ServiceProviderUpserted => "service_provider.upserted",
            Self::ServiceProviderDeleted => "service_provider.deleted",
            Self::SecondaryAuthProviderUpserted => "secondary_auth_provider.upserted",
            Self::SecondaryAuthProviderDeleted => "secondary_auth_provider.deleted",
            Self::EnrollmentStarted => "enrollment.started",
            Self::EnrollmentVerify => "enrollment.verify",
            Self::LoginStarted => "login.started",
            Self::LoginVerify => "login.verify",
            Self::ChallengeResend => "challenge.resend",
            Self::FactorRemoved => "factor.removed",
            Self::TrustedDevicesRevoked => "trusted_devices.revoked",
            Self::UserStatus => "user.status",
        }
    }

    /// Whether the ingress decides it in batches ([`crate::ingest`]): the
    /// events of the enrollment and login journeys, nearly all traffic.
    pub fn is_hot(&self) -> bool {
        matches!(
            self,
            Self::EnrollmentStarted
                | Self::EnrollmentVerify
                | Self::LoginStarted
                | Self::LoginVerify
                | Self::ChallengeResend
        )
    }

    /// Whether it changes what the batches cache of a tenant: its
    /// settings or its providers (the Services Manager).
    pub fn configures_tenant(&self) -> bool {
        matches!(
            self,
            Self::SettingsUpdated
                | Self::ServiceProviderUpserted
                | Self::ServiceProviderDeleted
                | Self::SecondaryAuthProviderUpserted
                | Self::SecondaryAuthProviderDeleted
        )
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// A parsed envelope; `data` stays raw until its type is known.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The event type.
    pub event_type: EventType,
    /// The raw `data` object.
    pub data: &'a RawValue,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, not an object, lacking `type` or `data`, or with an unknown
    /// field (400 `malformed_payload`).
    #[error("{0}")]
    Malformed(String),
    /// `type` is not an event of the contract (400 `unknown_event_type`).
    #[error("unknown event type {0:?}")]
    UnknownType(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Parses a webhook body.
    pub fn parse(body: &'a [u8]) -> Result<Self, EnvelopeError> {
        let malformed = |message: String| EnvelopeError::Malformed(message);
        let text = std::str::from_utf8(body)
            .map_err(|_| malformed("the body is not UTF-8 JSON".into()))?;
        // serde would also take the fields as an array, in order.
        if !text.trim_start().starts_with('{') {
            return Err(malformed(
                "the body must be a JSON object {\"type\", \"timestamp\", \"data\"}".into(),
            ));
        }
        let raw: RawEnvelope<'a> = serde_json::from_str(text).map_err(|e| {
            malformed(format!(
                "the body is not a JSON envelope {{\"type\", \"timestamp\", \"data\"}}: {e}"
            ))
        })?;
        let name = raw
            .event_type
            .ok_or_else(|| malformed("the envelope lacks \"type\"".into()))?;
        let data = raw
            .data
            .ok_or_else(|| malformed("the envelope lacks \"data\"".into()))?;
        if !data.get().trim_start().starts_with('{') {
            return Err(malformed("\"data\" must be a JSON object".into()));
        }
        if let Some(timestamp) = raw.timestamp
            && chrono::DateTime::parse_from_rfc3339(&timestamp).is_err()
        {
            return Err(malformed(
                "\"timestamp\" must be an RFC 3339 time, e.g. 2026-11-28T07:00:00Z".into(),
            ));
        }
        let event_type = EventType::parse(&name).ok_or(EnvelopeError::UnknownType(name))?;
        Ok(Self { event_type, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malformed(body: &str) -> String {
        match Envelope::parse(body.as_bytes()) {
            Err(EnvelopeError::Malformed(message)) => message,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_envelope_parses_and_keeps_data_raw() {
        let envelope = Envelope::parse(
            br#"{"type":"settings.updated","timestamp":"2026-11-28T07:00:00Z","data":{"a":1}}"#,
        )
        .expect("parses");
        assert_eq!(envelope.event_type, EventType::SettingsUpdated);
        assert_eq!(envelope.data.get(), r#"{"a":1}"#);
    }

    #[test]
    fn every_contract_type_round_trips_by_name() {
        for event_type in EventType::ALL {
            assert_eq!(EventType::parse(event_type.as_str()), Some(event_type));
        }
    }

    #[test]
    fn broken_envelopes_say_what_is_missing() {
        assert!(malformed("not json").contains("JSON object"));
        assert!(malformed("{not json").contains("not a JSON envelope"));
        // Found by tests/properties.rs: an array of the three fields passed.
        assert!(malformed(r#"["user.status", null, {"user_id": "u1"}]"#).contains("JSON object"));
        assert!(malformed(r#"{"data":{}}"#).contains("lacks \"type\""));
        assert!(malformed(r#"{"type":"user.status"}"#).contains("lacks \"data\""));
        assert!(malformed(r#"{"type":"user.status","data":[1]}"#).contains("JSON object"));
        assert!(malformed(r#"{"type":"user.status","data":{},"extra":1}"#).contains("extra"));
        assert!(
            malformed(r#"{"type":"user.status","timestamp":"yesterday","data":{}}"#)
                .contains("RFC 3339")
        );
    }

    #[test]
    fn an_unknown_type_is_named() {
        let result = Envelope::parse(br#"{"type":"user.deleted","data":{}}"#);
        assert!(matches!(result, Err(EnvelopeError::UnknownType(name)) if name == "user.deleted"));
    }
}
