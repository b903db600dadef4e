//! The compiled templates: the shared set embedded in the binary, the
//! per-tenant overrides read once at start-up, and the lookup that picks one
//! file per part along the locale chain.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use handlebars::{Handlebars, no_escape};
use serde_json::Value;

use super::locale::{is_valid_tenant_id, locale_chain};
use super::overrides::load_overrides;
use super::{MessageKind, RenderError, Rendered, TemplateContext};

/// One part of a mail; each part is its own template file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    Subject,
    Txt,
    Html,
}

impl Part {
    pub(super) const ALL: [Self; 3] = [Self::Subject, Self::Txt, Self::Html];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Txt => "txt",
            Self::Html => "html",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|part| part.as_str() == name)
    }
}

/// A template shipped in the binary, from `templates/{locale}/{kind}.{part}.hbs`.
struct SharedFile {
    locale: &'static str,
    kind: &'static str,
    part: &'static str,
    source: &'static str,
}

/// Embeds the three parts of each listed kind for each listed locale.
macro_rules! shared_templates {
    ($($locale:literal: $($kind:literal),+;)+) => {
        &[$($(
            shared_templates!(@file $locale, $kind, "subject"),
            shared_templates!(@file $locale, $kind, "txt"),
            shared_templates!(@file $locale, $kind, "html"),
        )+)+]
    };
    (@file $locale:literal, $kind:literal, $part:literal) => {
        SharedFile {
            locale: $locale,
            kind: $kind,
            part: $part,
            source: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"), "/../templates/", $locale, "/", $kind, ".", $part, ".hbs"
            )),
        }
    };
}

/// The shared templates. `en` is the last resort of every locale chain and
/// must hold every kind and part (a unit test checks that every locale does).
const SHARED: &[SharedFile] = shared_templates! {
    "en": "enrollment_code", "login_code", "factor_removed";
    "de": "enrollment_code", "login_code", "factor_removed";
};

/// Built-in helpers removed from both registries. `templates/README.md`
/// allows only `if`, `unless`, `each`, `with` and `eq`, which keeps
/// templates portable to handlebars.js for previews; `log` in particular
/// would write values such as the code to the process log.
const REMOVED_HELPERS: [&str; 12] = [
    "lookup", "raw", "log", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len",
];

/// Renders mails from compiled templates.
///
/// Cheap to clone (the templates sit behind an [`Arc`]) and shared by every
/// worker; nothing touches the disk after [`Renderer::new`].
#[derive(Clone)]
pub struct Renderer {
    templates: Arc<Templates>,
}

/// Template names are `{locale}/{kind}.{part}` for the shared set and
/// `tenants/{tenant}/{locale}/{kind}.{part}` for overrides, with the locale
/// normalised as in [`locale_chain`].
pub(super) struct Templates {
    /// Subjects and plain-text bodies: values inserted verbatim.
    plain: Handlebars<'static>,
    /// HTML bodies: values HTML-escaped.
    html: Handlebars<'static>,
    /// The shared locales, sorted.
    locales: Vec<String>,
}

/// The template chosen for one part.
struct Resolved {
    name: String,
    locale: String,
}

impl Renderer {
    /// Compiles the shared templates embedded in the binary, plus the
    /// per-tenant overrides under
    /// `{overrides_dir}/tenants/{tenant_id}/{locale}/{kind}.{part}.hbs` when
    /// that folder exists (it usually does not).
    ///
    /// Every override must compile and render with sample data of its kind;
    /// otherwise start-up stops with an error naming the file, rather than
    /// every mail of that tenant failing later. Folders whose name is not a
    /// valid tenant id or locale are skipped with a warning, files not ending
    /// in `.hbs` are ignored.
    pub fn new(overrides_dir: Option<&Path>) -> Result<Self, RenderError> {
        let mut templates = Templates::new();
        for file in SHARED {
            let part = Part::parse(file.part).expect("the shared file list names real parts");
            let name = format!("{}/{}.{}", file.locale, file.kind, file.part);
            let path = format!("templates/{}/{}.{}.hbs", file.locale, file.kind, file.part);
            templates.add(&name, part, file.source, &path)?;
        }
        if let Some(dir) = overrides_dir {
            let count = load_overrides(&mut templates, &dir.join("tenants"))?;
            tracing::info!(
                template.overrides = count,
                "loaded tenant template overrides"
            );
        }
        Ok(Self {
            templates: Arc::new(templates),
        })
    }

    /// Renders the three parts of a `kind` mail for `tenant_id`'s reader in
    /// `locale`.
    ///
    /// Each part is looked up on its own along [`locale_chain`], preferring
    /// the tenant's override at each step. A `tenant_id` that is not a valid
    /// folder name gets the shared templates. The subject is trimmed and
    /// refused if it still contains a line break.
    pub fn render(
        &self,
        tenant_id: &str,
        locale: Option<&str>,
        kind: MessageKind,
        ctx: &TemplateContext,
    ) -> Result<Rendered, RenderError> {
        let data = ctx.to_json(kind)?;
        let chain = locale_chain(locale);
        let tenant = is_valid_tenant_id(tenant_id).then_some(tenant_id);
        let code = ctx.code.as_deref();
        let t = &self.templates;

        let (subject, at) = t.render_part(tenant, &chain, kind, Part::Subject, &data, code)?;
        let subject = one_line(&subject).ok_or(RenderError::MultiLineSubject {
            kind,
            locale: at.locale,
            template: at.name,
        })?;
        let (text, _) = t.render_part(tenant, &chain, kind, Part::Txt, &data, code)?;
        let (html, at) = t.render_part(tenant, &chain, kind, Part::Html, &data, code)?;
        Ok(Rendered {
            subject,
            text,
            html,
            locale: at.locale,
        })
    }

    /// The locales of the shared templates, sorted (`["de", "en"]`).
    pub fn locales(&self) -> Vec<String> {
        self.templates.locales.clone()
    }
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.templates;
        f.debug_struct("Renderer")
            .field("locales", &t.locales)
            .field(
                "templates",
                &(t.plain.get_templates().len() + t.html.get_templates().len()),
            )
            .finish()
    }
}

impl Templates {
    fn new() -> Self {
        let locales: BTreeSet<&str> = SHARED.iter().map(|file| file.locale).collect();
        Self {
            plain: registry(false),
            html: registry(true),
            locales: locales.into_iter().map(str::to_owned).collect(),
        }
    }

    pub(super) fn registry(&self, part: Part) -> &Handlebars<'static> {
        match part {
            Part::Subject | Part::Txt => &self.plain,
            Part::Html => &self.html,
        }
    }

    /// Compiles `source` as template `name`; `file` names it in errors.
    pub(super) fn add(
        &mut self,
        name: &str,
        part: Part,
        source: &str,
        file: &str,
    ) -> Result<(), RenderError> {
        let registry = match part {
            Part::Subject | Part::Txt => &mut self.plain,
            Part::Html => &mut self.html,
        };
        if registry.has_template(name) {
            return Err(RenderError::DuplicateOverride { file: file.into() });
        }
        registry
            .register_template_string(name, source)
            .map_err(|e| RenderError::Syntax {
                file: file.into(),
                reason: e.to_string(),
            })
    }

    /// The first template along the chain, the tenant's before the shared one
    /// at each locale. The shared `en` set is complete, so the fallback to
    /// it only matters if that invariant broke; rendering then reports the
    /// template as not found.
    fn resolve(
        &self,
        tenant: Option<&str>,
        chain: &[String],
        kind: MessageKind,
        part: Part,
    ) -> Resolved {
        let registry = self.registry(part);
        let (kind, part) = (kind.as_str(), part.as_str());
        for locale in chain {
            let tenant_name = tenant.map(|t| format!("tenants/{t}/{locale}/{kind}.{part}"));
            let shared_name = format!("{locale}/{kind}.{part}");
            for name in tenant_name.into_iter().chain([shared_name]) {
                if registry.has_template(&name) {
                    let locale = locale.clone();
                    return Resolved { name, locale };
                }
            }
        }
        Resolved {
            name: format!("en/{kind}.{part}"),
            locale: "en".into(),
        }
    }

    fn render_part(
        &self,
        tenant: Option<&str>,
        chain: &[String],
        kind: MessageKind,
        part: Part,
        data: &Value,
        code: Option<&str>,
    ) -> Result<(String, Resolved), RenderError> {
        let at = self.resolve(tenant, chain, kind, part);
        match self.registry(part).render(&at.name, data) {
            Ok(out) => Ok((out, at)),
            Err(e) => Err(RenderError::Render {
                kind,
                locale: at.locale,
                part: part.as_str(),
                template: at.name,
                reason: redact(e.to_string(), code),
            }),
        }
    }
}

/// A strict registry, HTML-escaping or verbatim.
fn registry(escape_html: bool) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    if !escape_html {
        registry.register_escape_fn(no_escape);
    }
    for helper in REMOVED_HELPERS {
        registry.unregister_helper(helper);
    }
    registry
}

/// `subject` trimmed, or `None` if a line break remains inside it.
pub(super) fn one_line(subject: &str) -> Option<String> {
    let subject = subject.trim();
    (!subject.contains(['\r', '\n'])).then(|| subject.to_owned())
}

/// `message` with every occurrence of the code replaced. Handlebars errors
/// name templates and variables, not values, but an error message must
/// never be the place a code leaks from.
fn redact(message: String, code: Option<&str>) -> String {
    match code.map(str::trim) {
        Some(code) if !code.is_empty() => message.replace(code, "[code]"),
        _ => message,
    }
}

#[cfg(test)]
mod tests;
