//! The Services Manager's provider events: SMTP service providers and
//! secondary auth providers.

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::validation::{Checks, FieldError};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (usually port 587).
    Starttls,
    /// Implicit TLS from the first byte (usually port 465).
    Tls,
    /// No TLS: only for a relay on the same host or network.
    None,
}

impl SmtpSecurity {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starttls => "starttls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }
}

/// The `smtp` object of `service_provider.upserted`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// SMTP server host name or IP address.
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// `starttls`, `tls` or `none`.
    pub security: SmtpSecurity,
    /// User name for SMTP AUTH.
    #[serde(default)]
    pub username: Option<String>,
    /// Write-only password: absent keeps the stored one, `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<Option<SecretString>>,
    /// The sender address.
    pub from_address: String,
    /// The sender's display name.
    #[serde(default)]
    pub from_name: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null`
/// (`Some(None)`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `data` of `service_provider.upserted`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceProviderUpserted {
    /// The host's id of the provider.
    pub id: String,
    /// Its title in the Services Manager.
    pub title: String,
    /// Only `smtp` is supported.
    pub kind: String,
    /// SMTP details.
    #[serde(deserialize_with = "super::validation::object")]
    pub smtp: SmtpSettings,
}

impl ServiceProviderUpserted {
    /// Field checks, including header injection in the sender fields.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        checks.id("id", &self.id);
        checks.text("title", &self.title, 1, 200);
        if self.kind != "smtp" {
            checks.fail("kind", "must be \"smtp\" (the only kind supported)");
        }
        let smtp = &self.smtp;
        let host_ok = !smtp.host.is_empty()
            && smtp.host.len() <= 253
            && smtp
                .host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !host_ok {
            checks.fail(
                "smtp.host",
                "must be a host name or IP address, e.g. smtp.example.com",
            );
        }
        if smtp.port == 0 {
            checks.fail("smtp.port", "must be between 1 and 65535");
        }
        if let Some(username) = &smtp.username {
            checks.text("smtp.username", username, 1, 256);
        }
        if let Some(Some(password)) = &smtp.password {
            use secrecy::ExposeSecret;
            // Never echo the value: only its shape is checked.
            let password = password.expose_secret();
            if password.is_empty() || password.len() > 1024 || password.contains(['\r', '\n']) {
                checks.fail(
                    "smtp.password",
                    "must be 1 to 1024 characters without line breaks",
                );
            }
        }
        checks.email("smtp.from_address", &smtp.from_address);
        if let Some(name) = &smtp.from_name {
            checks.text("smtp.from_name", name, 1, 100);
        }
        checks.finish()
    }
}

/// `data` of `secondary_auth_provider.upserted`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondaryAuthProviderUpserted {
    /// The host's id of the provider.
    pub id: String,
    /// Its title.
    pub title: String,
    /// The service provider that sends its emails.
    pub service_provider_id: String,
}

impl SecondaryAuthProviderUpserted {
    /// Field checks.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        checks.id("id", &self.id);
        checks.text("title", &self.title, 1, 200);
        checks.id("service_provider_id", &self.service_provider_id);
        checks.finish()
    }
}

/// `data` of `service_provider.deleted` and `secondary_auth_provider.deleted`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderDeleted {
    /// The id to delete.
    pub id: String,
}

impl ProviderDeleted {
    /// Field checks.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        checks.id("id", &self.id);
        checks.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse_data;
    use serde_json::value::RawValue;

    fn parse(json: &str) -> ServiceProviderUpserted {
        let raw: Box<RawValue> = serde_json::from_str(json).expect("json");
        parse_data(&raw).expect("parses")
    }

    const VALID: &str = r#"{"id":"p1","title":"Mail","kind":"smtp","smtp":{"host":"smtp.example.com","port":587,"security":"starttls","username":"u","password":"pw","from_address":"shop@example.com","from_name":"Shop"}}"#;

    #[test]
    fn a_valid_provider_passes_and_its_password_does_not_print() {
        let provider = parse(VALID);
        provider.validate().expect("valid");
        assert!(!format!("{provider:?}").contains("\"pw\""));
        assert!(matches!(provider.smtp.password, Some(Some(_))));
    }

    #[test]
    fn absent_and_null_passwords_differ() {
        let absent = parse(&VALID.replace(r#""password":"pw","#, ""));
        assert!(absent.smtp.password.is_none());
        let null = parse(&VALID.replace(r#""pw""#, "null"));
        assert!(matches!(null.smtp.password, Some(None)));
    }

    #[test]
    fn injected_headers_and_bad_hosts_are_refused() {
        let bad = parse(
            &VALID
                .replace("smtp.example.com", "smtp example")
                .replace(r#""Shop""#, r#""Shop\r\nBcc: a@b.c""#),
        );
        let fields: Vec<String> = bad
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["smtp.host", "smtp.from_name"]);
    }
}
