//! The values a template sees, and what rendering produces.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{MessageKind, RenderError};

// The one definition for the whole service: the contract's `user.role`
// (its doc line is the OpenAPI description), the stored `role` columns, and
// how templates word a mail (admin mails differ).
/// Whose account it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An administrator of the admin console.
    Admin,
    /// A customer of the shop.
    Customer,
}

impl Role {
    /// The stored name, and the value templates compare against:
    /// `"admin"` or `"customer"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Customer => "customer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    /// The role of a stored name.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "admin" => Ok(Self::Admin),
            "customer" => Ok(Self::Customer),
            _ => Err(UnknownRole),
        }
    }
}

/// A stored role that is neither `admin` nor `customer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the role is neither admin nor customer")]
pub struct UnknownRole;

/// The values a template sees: exactly the variables documented in
/// `templates/README.md`.
///
/// Which fields reach the template depends on the kind: `code` and
/// `code_ttl_minutes` only for the code kinds (where they are required),
/// `removed_at` only for `factor_removed` (where it is required). A value set
/// for a kind that does not use it is left out, never rendered.
///
/// `Debug` redacts the code, so a context can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct TemplateContext {
    /// The shop or platform name the mail comes from, e.g. "Acme Shop".
    pub product_name: String,
    /// The user's display name, when the host platform knows one.
    pub user_name: Option<String>,
    /// The recipient address.
    pub email: String,
    /// Whose account it is.
    pub role: Role,
    /// The code to enter (code kinds only).
    pub code: Option<String>,
    /// The code's lifetime in minutes (code kinds only).
    pub code_ttl_minutes: Option<i64>,
    /// When the factor was removed, human readable in UTC, e.g.
    /// "2026-11-28 07:15 UTC" (`factor_removed` only).
    pub removed_at: Option<String>,
    /// The current year, for the footer.
    pub year: i32,
}

impl fmt::Debug for TemplateContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemplateContext")
            .field("product_name", &self.product_name)
            .field("user_name", &self.user_name)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("code", &self.code.as_ref().map(|_| "[redacted]"))
            .field("code_ttl_minutes", &self.code_ttl_minutes)
            .field("removed_at", &self.removed_at)
            .field("year", &self.year)
            .finish()
    }
}

impl TemplateContext {
    /// The JSON object a template of `kind` renders against: the common
    /// variables (`user_name` as `null` when unknown) plus the kind's own,
    /// which must be present.
    pub(super) fn to_json(&self, kind: MessageKind) -> Result<Value, RenderError> {
        let mut vars = Map::new();
        vars.insert("product_name".into(), self.product_name.clone().into());
        vars.insert("user_name".into(), self.user_name.clone().into());
        vars.insert("email".into(), self.email.clone().into());
        vars.insert("role".into(), self.role.as_str().into());
        vars.insert("year".into(), self.year.into());
        if kind.carries_code() {
            let code = self.code.as_deref().filter(|code| !code.trim().is_empty());
            let code = code.ok_or(RenderError::MissingField {
                kind,
                field: "code",
            })?;
            let ttl = self.code_ttl_minutes.ok_or(RenderError::MissingField {
                kind,
                field: "code_ttl_minutes",
            })?;
            if ttl <= 0 {
                return Err(RenderError::InvalidField {
                    kind,
                    field: "code_ttl_minutes",
                    reason: "must be at least one minute",
                });
            }
            vars.insert("code".into(), code.into());
            vars.insert("code_ttl_minutes".into(), ttl.into());
        } else {
            let removed_at = self
                .removed_at
                .as_deref()
                .filter(|at| !at.trim().is_empty());
            let removed_at = removed_at.ok_or(RenderError::MissingField {
                kind,
                field: "removed_at",
            })?;
            vars.insert("removed_at".into(), removed_at.into());
        }
        Ok(Value::Object(vars))
    }
}

/// A rendered mail: one subject line and the two bodies of the
/// `multipart/alternative` message.
///
/// `Debug` shows sizes only: every part may contain the code.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject, trimmed, guaranteed free of line breaks.
    pub subject: String,
    /// The `text/plain` body.
    pub text: String,
    /// The `text/html` body.
    pub html: String,
    /// The locale the HTML body came from (e.g. `de` for a `de-CH` reader,
    /// `en` after a fallback): the value for `Content-Language`.
    pub locale: String,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("subject_bytes", &self.subject.len())
            .field("text_bytes", &self.text.len())
            .field("html_bytes", &self.html.len())
            .field("locale", &self.locale)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{CODE, context};

    #[test]
    fn a_role_reads_back_from_its_stored_name_and_json() {
        for role in [Role::Admin, Role::Customer] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            let json = serde_json::to_value(role).expect("serializes");
            assert_eq!(json, role.as_str());
        }
        assert_eq!("Admin".parse::<Role>(), Err(UnknownRole));
        assert_eq!("".parse::<Role>(), Err(UnknownRole));
    }

    #[test]
    fn each_kind_sees_exactly_its_documented_variables() {
        let keys = |kind| {
            let json = context(kind, Role::Admin)
                .to_json(kind)
                .expect("fixture is complete");
            let mut keys: Vec<String> = json
                .as_object()
                .expect("an object")
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let common = ["email", "product_name", "role", "user_name", "year"];
        let mut code_kind: Vec<&str> = [&common[..], &["code", "code_ttl_minutes"]].concat();
        code_kind.sort();
        let mut removed: Vec<&str> = [&common[..], &["removed_at"]].concat();
        removed.sort();
        assert_eq!(keys(MessageKind::EnrollmentCode), code_kind);
        assert_eq!(keys(MessageKind::LoginCode), code_kind);
        assert_eq!(keys(MessageKind::FactorRemoved), removed);
    }

    #[test]
    fn an_unknown_user_name_is_null_and_a_stray_code_is_left_out() {
        let mut ctx = context(MessageKind::FactorRemoved, Role::Customer);
        ctx.user_name = None;
        ctx.code = Some(CODE.into());
        let json = ctx
            .to_json(MessageKind::FactorRemoved)
            .expect("fixture is complete");
        assert_eq!(json["user_name"], Value::Null);
        assert_eq!(json["role"], "customer");
        assert!(json.get("code").is_none());
    }

    #[test]
    fn missing_or_useless_kind_values_are_errors() {
        let mut ctx = context(MessageKind::LoginCode, Role::Admin);
        ctx.code = None;
        let err = ctx.to_json(MessageKind::LoginCode).expect_err("no code");
        assert!(
            matches!(err, RenderError::MissingField { field: "code", .. }),
            "{err}"
        );
        ctx.code = Some(" ".into());
        assert!(ctx.to_json(MessageKind::LoginCode).is_err());

        let mut ctx = context(MessageKind::EnrollmentCode, Role::Admin);
        ctx.code_ttl_minutes = Some(0);
        let err = ctx
            .to_json(MessageKind::EnrollmentCode)
            .expect_err("no lifetime");
        assert!(matches!(err, RenderError::InvalidField { .. }), "{err}");

        let mut ctx = context(MessageKind::FactorRemoved, Role::Admin);
        ctx.removed_at = None;
        let err = ctx
            .to_json(MessageKind::FactorRemoved)
            .expect_err("no time");
        assert_eq!(
            err.to_string(),
            "cannot render factor_removed: the context has no removed_at"
        );
    }

    #[test]
    fn debug_output_never_shows_the_code() {
        let ctx = context(MessageKind::LoginCode, Role::Admin);
        assert!(!format!("{ctx:?}").contains(CODE));
        let rendered = Rendered {
            subject: CODE.into(),
            text: CODE.into(),
            html: CODE.into(),
            locale: "en".into(),
        };
        assert!(!format!("{rendered:?}").contains(CODE));
    }
}
