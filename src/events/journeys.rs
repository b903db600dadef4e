//! The user-facing events: enrollment, login challenges and managing 2FA.

use serde::Deserialize;

use super::validation::{Checks, FieldError};

pub use email2fa_workers::render::Role;

/// The `user` object of the contract.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The host's user id (1–128 characters).
    pub id: String,
    /// `admin` or `customer`.
    pub role: Role,
    /// The account's address.
    #[serde(default)]
    pub email: Option<String>,
    /// Display name, for the greeting.
    #[serde(default)]
    pub name: Option<String>,
    /// BCP 47 locale, e.g. `de-CH`.
    #[serde(default)]
    pub locale: Option<String>,
}

impl User {
    /// The account address in its stored form (call after the checks).
    fn normalize(&mut self) {
        if let Some(email) = &mut self.email
            && let Ok(normalized) = email2fa_workers::address::normalize(email)
        {
            *email = normalized;
        }
    }

    fn check(&self, checks: &mut Checks) {
        checks.id("user.id", &self.id);
        if let Some(email) = &self.email {
            checks.email("user.email", email);
        }
        if let Some(name) = &self.name {
            checks.text("user.name", name, 1, 200);
        }
        if let Some(locale) = &self.locale {
            let ok = (2..=35).contains(&locale.len())
                && locale
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                checks.fail(
                    "user.locale",
                    "must be a BCP 47 language tag such as en or de-CH",
                );
            }
        }
    }
}

/// `data` of `enrollment.started`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentStarted {
    /// Who enrolls.
    #[serde(deserialize_with = "super::validation::object")]
    pub user: User,
    /// The address to enroll (customers type it in; admins default to `user.email`).
    #[serde(default)]
    pub email: Option<String>,
    /// The secondary auth provider; default: the tenant's only (or first) one.
    #[serde(default)]
    pub secondary_auth_provider_id: Option<String>,
}

impl EnrollmentStarted {
    /// Field checks; the address to enroll is required for customers.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        self.user.check(&mut checks);
        match (&self.email, self.user.role, &self.user.email) {
            (Some(email), _, _) => checks.email("email", email),
            (None, Role::Admin, Some(_)) => {}
            (None, Role::Admin, None) => {
                checks.fail("email", "is required when the admin's user.email is absent")
            }
            (None, Role::Customer, _) => checks.fail(
                "email",
                "is required for customers: the address they typed in to enroll",
            ),
        }
        if let Some(id) = &self.secondary_auth_provider_id {
            checks.id("secondary_auth_provider_id", id);
        }
        checks.finish()
    }

    /// The addresses in their stored form ([`email2fa_workers::address::normalize`]):
    /// every lookup and factor match uses it. Call after [`Self::validate`].
    pub fn normalize(&mut self) {
        self.user.normalize();
        if let Some(email) = &mut self.email
            && let Ok(normalized) = email2fa_workers::address::normalize(email)
        {
            *email = normalized;
        }
    }

    /// The address to enroll.
    pub fn address(&self) -> &str {
        self.email
            .as_deref()
            .or(self.user.email.as_deref())
            .unwrap_or_default()
    }
}

/// `data` of `enrollment.verify` and `login.verify`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// The challenge.
    pub challenge_id: String,
    /// What the user typed.
    pub code: String,
    /// `login.verify` only: "Trust this device".
    #[serde(default)]
    pub trust_device: Option<bool>,
    /// `login.verify` only: a label for the trusted device.
    #[serde(default)]
    pub device_label: Option<String>,
}

impl Verify {
    /// Field checks. A code of the wrong shape is not an error here: it is a
    /// wrong try like any other.
    pub fn validate(&self, login: bool) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        checks.id("challenge_id", &self.challenge_id);
        if self.code.len() > 64 {
            checks.fail("code", "must be at most 64 characters");
        }
        if !login {
            if self.trust_device.is_some() {
                checks.fail("trust_device", "only login.verify can trust a device");
            }
            if self.device_label.is_some() {
                checks.fail("device_label", "only login.verify can trust a device");
            }
        }
        if let Some(label) = &self.device_label {
            checks.text("device_label", label, 1, 200);
        }
        checks.finish()
    }
}

/// `data` of `login.started`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginStarted {
    /// Who logs in.
    #[serde(deserialize_with = "super::validation::object")]
    pub user: User,
    /// The host's "Trust this device" cookie, if the browser sent one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub trust_token: Option<secrecy::SecretString>,
    /// The browser's address.
    #[serde(default)]
    pub ip: Option<String>,
    /// The browser's user agent.
    #[serde(default)]
    pub user_agent: Option<String>,
}

impl LoginStarted {
    /// Field checks; a login needs the account's address.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        self.user.check(&mut checks);
        if let Some(ip) = &self.ip {
            checks.text("ip", ip, 1, 64);
        }
        if let Some(agent) = &self.user_agent {
            checks.text("user_agent", agent, 1, 1024);
        }
        checks.finish()
    }
}

/// `data` of `challenge.resend`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResend {
    /// The challenge.
    pub challenge_id: String,
}

impl ChallengeResend {
    /// Field checks.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        checks.id("challenge_id", &self.challenge_id);
        checks.finish()
    }
}

/// `data` of `factor.removed`, `trusted_devices.revoked` and `user.status`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserScoped {
    /// The host's user id.
    pub user_id: String,
    /// `factor.removed` only: one factor (default: all).
    #[serde(default)]
    pub factor_id: Option<String>,
    /// `trusted_devices.revoked` only: one device (default: all).
    #[serde(default)]
    pub device_id: Option<String>,
}

impl UserScoped {
    /// Field checks; `allowed` names the optional id this event takes.
    pub fn validate(&self, allowed: Option<&str>) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        checks.id("user_id", &self.user_id);
        for (name, value) in [
            ("factor_id", &self.factor_id),
            ("device_id", &self.device_id),
        ] {
            match value {
                Some(id) if allowed == Some(name) => checks.id(name, id),
                Some(_) => checks.fail(name, "unknown field for this event"),
                None => {}
            }
        }
        checks.finish()
    }
}
