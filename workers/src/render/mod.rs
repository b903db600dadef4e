//! Rendering owns what a mail says and how it is packed: the handlebars
//! templates under `templates/` (embedded in the binary) with per-tenant
//! overrides from disk ([`Renderer`]), the values a template may see
//! ([`TemplateContext`]), the locale fallback chain ([`locale_chain`]), and
//! the MIME message handed to a transport ([`build_message`]).
//!
//! The context a template receives is shaped per [`MessageKind`] and holds
//! exactly the variables `templates/README.md` lists for that kind. With
//! handlebars in strict mode, any other variable is a render error, so a
//! `factor_removed` template cannot print a code it was never given.

mod context;
mod locale;
mod message;
mod overrides;
mod templates;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use context::{Rendered, Role, TemplateContext, UnknownRole};
pub use locale::locale_chain;
pub use message::build_message;
pub use templates::Renderer;

/// The kinds of message email2fa sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// The user is adding email as a second factor; the code proves the
    /// address is theirs.
    EnrollmentCode,
    /// The user is signing in and has to enter the code.
    LoginCode,
    /// Security notice to an address that no longer receives codes.
    FactorRemoved,
}

impl MessageKind {
    /// Every kind, in the order the templates README lists them.
    pub const ALL: [Self; 3] = [Self::EnrollmentCode, Self::LoginCode, Self::FactorRemoved];

    /// The kind's name, as used in template file names and job payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EnrollmentCode => "enrollment_code",
            Self::LoginCode => "login_code",
            Self::FactorRemoved => "factor_removed",
        }
    }

    /// The kind named `name` (exactly as [`as_str`](Self::as_str) spells it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Whether mails of this kind carry a code (and its lifetime).
    pub fn carries_code(self) -> bool {
        !matches!(self, Self::FactorRemoved)
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a mail could not be rendered or assembled.
///
/// No variant ever carries a context value such as the code: these messages
/// end up in logs and in delivery records.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template file does not compile; `file` names it.
    #[error("template {file} does not compile: {reason}")]
    Syntax {
        /// The file: its path under `templates/` for the shared ones, the
        /// path on disk for overrides.
        file: String,
        /// The parser's explanation, with line and column.
        reason: String,
    },
    /// An override compiles but fails on sample data, e.g. it uses a
    /// variable its kind does not have.
    #[error("template override {file} does not render with sample data: {reason}")]
    Sample {
        /// The path of the override on disk.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// An override subject renders to more than one line.
    #[error("template override {file} renders a subject with a line break")]
    SampleSubject {
        /// The path of the override on disk.
        file: String,
    },
    /// A file under the overrides folder is not `{kind}.{part}.hbs`.
    #[error(
        "unexpected template override {file}: expected {{kind}}.{{subject,txt,html}}.hbs with kind enrollment_code, login_code or factor_removed"
    )]
    UnknownOverride {
        /// The path of the file on disk.
        file: String,
    },
    /// Two override files land on the same tenant, locale and part (e.g.
    /// folders `de-CH` and `de_ch`).
    #[error(
        "template override {file} duplicates another file for the same tenant, locale and part"
    )]
    DuplicateOverride {
        /// The path of the second file on disk.
        file: String,
    },
    /// The overrides folder or one of its files could not be read.
    #[error("cannot read template overrides at {path}: {source}")]
    Io {
        /// The path that failed.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The context lacks a value this kind needs.
    #[error("cannot render {kind}: the context has no {field}")]
    MissingField {
        /// The kind being rendered.
        kind: MessageKind,
        /// The missing variable.
        field: &'static str,
    },
    /// A value this kind needs is out of range.
    #[error("cannot render {kind}: {field} {reason}")]
    InvalidField {
        /// The kind being rendered.
        kind: MessageKind,
        /// The offending variable.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Handlebars failed while rendering one part.
    #[error("cannot render the {part} of {kind} in locale {locale} ({template}): {reason}")]
    Render {
        /// The kind being rendered.
        kind: MessageKind,
        /// The locale of the template that failed.
        locale: String,
        /// `subject`, `txt` or `html`.
        part: &'static str,
        /// The template's name, e.g. `tenants/acme/de/login_code.txt`.
        template: String,
        /// Handlebars' explanation, with the code redacted.
        reason: String,
    },
    /// A subject rendered to more than one line: refused, since a line break
    /// in a header is a header injection.
    #[error(
        "refusing the subject of {kind} in locale {locale} ({template}): it contains a line break"
    )]
    MultiLineSubject {
        /// The kind being rendered.
        kind: MessageKind,
        /// The locale of the subject template.
        locale: String,
        /// The subject template's name.
        template: String,
    },
    /// A header value for the message contains a line break.
    #[error("refusing the {header} header: it contains a line break")]
    UnsafeHeader {
        /// The header's name.
        header: &'static str,
    },
    /// lettre refused to assemble the message.
    #[error("cannot assemble the message: {0}")]
    Message(#[source] lettre::error::Error),
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::{MessageKind, Role, TemplateContext};

    /// The code every fixture carries; tests look for it in the output.
    pub const CODE: &str = "482913";

    /// A complete context for `kind`, as the engine would build it.
    pub fn context(kind: MessageKind, role: Role) -> TemplateContext {
        TemplateContext {
            product_name: "Acme Shop".into(),
            user_name: Some("Ada Lovelace".into()),
            email: "ada@example.com".into(),
            role,
            code: kind.carries_code().then(|| CODE.into()),
            code_ttl_minutes: kind.carries_code().then_some(10),
            removed_at: (!kind.carries_code()).then(|| "2026-11-28 07:15 UTC".into()),
            year: 2026,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_kinds_round_trip_through_their_names_and_serde() {
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).expect("a kind serialises");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: MessageKind = serde_json::from_str(&json).expect("a kind deserialises");
            assert_eq!(back, kind);
        }
        assert_eq!(MessageKind::parse("LoginCode"), None);
    }
}
