//! `settings.updated`: a partial update of the Services Manager's settings.

use serde::Deserialize;

use super::validation::{Checks, FieldError};
use crate::store::TenantSettings;

/// `data` of `settings.updated`; every field optional.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdated {
    /// "Require Secondary Authentication (2FA) for Admin Users".
    pub require_admin_2fa: Option<bool>,
    /// The Admin "Allowed" toggle.
    pub admin_2fa_allowed: Option<bool>,
    /// The Customer "Allowed" toggle.
    pub customer_2fa_allowed: Option<bool>,
    /// 6–10.
    pub code_length: Option<i64>,
    /// 60–3600.
    pub code_ttl_seconds: Option<i64>,
    /// 1–10.
    pub max_attempts: Option<i64>,
    /// 0–600.
    pub resend_cooldown_seconds: Option<i64>,
    /// 0–365; 0 disables "Trust this device".
    pub trust_device_days: Option<i64>,
    /// Refused: customers can never be required to use 2FA.
    #[schema(ignore)]
    pub require_customer_2fa: Option<serde_json::Value>,
}

impl SettingsUpdated {
    /// Range checks, and the refusal to require 2FA of customers.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        if self.require_customer_2fa.is_some() {
            checks.fail(
                "require_customer_2fa",
                "customers can never be required to use 2FA; use customer_2fa_allowed to offer it",
            );
        }
        checks.range("code_length", self.code_length, 6, 10);
        checks.range("code_ttl_seconds", self.code_ttl_seconds, 60, 3600);
        checks.range("max_attempts", self.max_attempts, 1, 10);
        checks.range(
            "resend_cooldown_seconds",
            self.resend_cooldown_seconds,
            0,
            600,
        );
        checks.range("trust_device_days", self.trust_device_days, 0, 365);
        checks.finish()
    }

    /// Refuses settings that say admins are required to use 2FA while the
    /// feature is off for them ("Require 2FA for Admin Users" on, the Admin
    /// "Allowed" toggle off), naming both fields, whichever of them this
    /// update changed: the host turns the toggle on first (or in the same
    /// update), and turns the requirement off before the toggle.
    pub fn check_result(next: &TenantSettings) -> Result<(), Vec<FieldError>> {
        let mut checks = Checks::new();
        if next.require_admin_2fa && !next.admin_2fa_allowed {
            checks.fail(
                "require_admin_2fa",
                "cannot be on while admin_2fa_allowed is off; allow 2FA for admins first (or in the same update)",
            );
            checks.fail(
                "admin_2fa_allowed",
                "cannot be off while require_admin_2fa is on; turn require_admin_2fa off first (or in the same update)",
            );
        }
        checks.finish()
    }

    /// The settings after this update (call [`Self::validate`] first).
    pub fn apply_to(&self, current: &TenantSettings) -> TenantSettings {
        // Ranges are validated, so the narrowing casts cannot truncate.
        let int = |value: Option<i64>, old: i32| value.map_or(old, |v| v as i32);
        TenantSettings {
            require_admin_2fa: self.require_admin_2fa.unwrap_or(current.require_admin_2fa),
            admin_2fa_allowed: self.admin_2fa_allowed.unwrap_or(current.admin_2fa_allowed),
            customer_2fa_allowed: self
                .customer_2fa_allowed
                .unwrap_or(current.customer_2fa_allowed),
            code_length: int(self.code_length, current.code_length),
            code_ttl_seconds: int(self.code_ttl_seconds, current.code_ttl_seconds),
            max_attempts: int(self.max_attempts, current.max_attempts),
            resend_cooldown_seconds: int(
                self.resend_cooldown_seconds,
                current.resend_cooldown_seconds,
            ),
            trust_device_days: int(self.trust_device_days, current.trust_device_days),
            ..current.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_update_changes_only_what_it_names() {
        let current = TenantSettings::defaults_for("t");
        let update = SettingsUpdated {
            admin_2fa_allowed: Some(true),
            code_length: Some(8),
            ..Default::default()
        };
        update.validate().expect("valid");
        let next = update.apply_to(&current);
        assert!(next.admin_2fa_allowed);
        assert_eq!(next.code_length, 8);
        assert_eq!(next.code_ttl_seconds, 600);
        assert!(!next.customer_2fa_allowed);
    }

    #[test]
    fn out_of_range_values_and_required_customers_are_refused() {
        let update = SettingsUpdated {
            code_length: Some(5),
            trust_device_days: Some(366),
            require_customer_2fa: Some(serde_json::Value::Bool(true)),
            ..Default::default()
        };
        let fields: Vec<String> = update
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["require_customer_2fa", "code_length", "trust_device_days"]
        );
    }
}
