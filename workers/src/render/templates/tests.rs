//! Rendering of every shared template with fixture data, the locale and
//! override lookup, escaping, and the refusals.

use std::fs;
use std::path::Path;

use super::*;
use crate::render::Role;
use crate::render::fixtures::{CODE, context};

fn shared() -> Renderer {
    Renderer::new(None).expect("the shared templates compile")
}

/// Writes `source` as an override file under `root/tenants/…`.
fn write_override(root: &Path, tenant: &str, locale: &str, file: &str, source: &str) {
    let dir = root.join("tenants").join(tenant).join(locale);
    fs::create_dir_all(&dir).expect("create the override folder");
    fs::write(dir.join(file), source).expect("write the override");
}

fn render(renderer: &Renderer, tenant: &str, locale: Option<&str>, kind: MessageKind) -> Rendered {
    let ctx = context(kind, Role::Customer);
    renderer
        .render(tenant, locale, kind, &ctx)
        .expect("fixture renders")
}

#[test]
fn the_shared_templates_cover_every_kind_and_part_in_every_locale() {
    let renderer = shared();
    assert_eq!(renderer.locales(), ["de", "en"]);
    for locale in renderer.locales() {
        for kind in MessageKind::ALL {
            for part in Part::ALL {
                let name = format!("{locale}/{}.{}", kind.as_str(), part.as_str());
                assert!(
                    renderer.templates.registry(part).has_template(&name),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn every_template_renders_in_every_locale_for_admins_and_customers() {
    let renderer = shared();
    for locale in renderer.locales() {
        for kind in MessageKind::ALL {
            for role in [Role::Admin, Role::Customer] {
                for (user_name, ttl) in [(Some("Ada Lovelace"), 10), (None, 1)] {
                    let mut ctx = context(kind, role);
                    ctx.user_name = user_name.map(str::to_owned);
                    ctx.code_ttl_minutes = ctx.code_ttl_minutes.map(|_| ttl);
                    let case = format!("{locale} {kind} {role:?} {user_name:?} ttl={ttl}");
                    let out = renderer
                        .render("acme", Some(&locale), kind, &ctx)
                        .expect(&case);

                    assert_eq!(out.locale, locale, "{case}");
                    assert!(
                        !out.subject.is_empty() && !out.subject.contains(['\r', '\n']),
                        "{case}"
                    );
                    assert!(
                        out.html.starts_with("<!DOCTYPE html>"),
                        "{case}: the leading comment is trimmed"
                    );
                    assert!(
                        out.html.contains(&format!("<html lang=\"{locale}\"")),
                        "{case}"
                    );
                    assert!(
                        out.text.contains("Acme Shop") && out.html.contains("Acme Shop"),
                        "{case}"
                    );
                    assert!(
                        !out.text.contains("{{") && !out.html.contains("{{"),
                        "{case}"
                    );
                    assert!(
                        !out.text.contains(" ,") && !out.html.contains(" ,"),
                        "{case}: no dangling name"
                    );
                    if let Some(name) = user_name {
                        assert!(out.text.contains(name) && out.html.contains(name), "{case}");
                    }
                    if kind.carries_code() {
                        assert!(
                            out.subject.starts_with(CODE),
                            "{case}: the code leads the subject"
                        );
                        assert!(
                            out.text.contains(&format!("\n{CODE}\n")),
                            "{case}: the code on its own line"
                        );
                        assert!(
                            out.html.contains(&format!(">{CODE}</td>")),
                            "{case}: the code alone in its cell"
                        );
                        let minutes = if ttl == 1 {
                            ["1 minute", "1 Minute"]
                        } else {
                            ["10 minutes", "10 Minuten"]
                        };
                        assert!(
                            minutes.iter().any(|m| out.text.contains(m)),
                            "{case}: {minutes:?}"
                        );
                    } else {
                        assert!(
                            !out.subject.contains(CODE) && !out.text.contains(CODE),
                            "{case}"
                        );
                        assert!(out.text.contains("2026-11-28 07:15 UTC"), "{case}");
                        assert!(out.html.contains("2026-11-28 07:15 UTC"), "{case}");
                    }
                }
            }
        }
    }
}

#[test]
fn admins_and_customers_are_addressed_differently() {
    let renderer = shared();
    for kind in MessageKind::ALL {
        let admin = renderer
            .render("acme", None, kind, &context(kind, Role::Admin))
            .expect("renders");
        let customer = renderer
            .render("acme", None, kind, &context(kind, Role::Customer))
            .expect("renders");
        assert!(admin.text.contains("administrator"), "{kind}");
        assert!(!customer.text.contains("administrator"), "{kind}");
    }
}

#[test]
fn a_swiss_german_reader_gets_the_german_templates() {
    let out = render(&shared(), "acme", Some("de-CH"), MessageKind::LoginCode);
    assert_eq!(out.locale, "de");
    assert!(out.subject.contains("Anmeldecode"), "{}", out.subject);
}

#[test]
fn a_french_reader_gets_the_english_templates() {
    let out = render(&shared(), "acme", Some("fr"), MessageKind::LoginCode);
    assert_eq!(out.locale, "en");
    assert_eq!(
        out.subject,
        format!("{CODE} is your Acme Shop sign-in code")
    );
}

#[test]
fn a_tenant_override_replaces_exactly_one_part() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "de",
        "login_code.subject.hbs",
        "Code {{code}} für {{product_name}}\n",
    );
    let renderer = Renderer::new(Some(dir.path())).expect("the override compiles");
    let plain = shared();

    let out = render(&renderer, "acme", Some("de-CH"), MessageKind::LoginCode);
    let reference = render(&plain, "acme", Some("de-CH"), MessageKind::LoginCode);
    assert_eq!(
        out.subject,
        format!("Code {CODE} für Acme Shop"),
        "trailing newline trimmed"
    );
    assert_eq!(out.text, reference.text);
    assert_eq!(out.html, reference.html);

    let other_tenant = render(&renderer, "globex", Some("de"), MessageKind::LoginCode);
    assert_eq!(other_tenant, reference);
    let other_kind = render(&renderer, "acme", Some("de"), MessageKind::EnrollmentCode);
    assert_eq!(
        other_kind,
        render(&plain, "acme", Some("de"), MessageKind::EnrollmentCode)
    );
}

#[test]
fn a_tenant_english_override_does_not_beat_the_shared_german_template() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "en",
        "login_code.subject.hbs",
        "Acme code {{code}}",
    );
    write_override(
        dir.path(),
        "acme",
        "de-CH",
        "login_code.txt.hbs",
        "Grüezi {{code}}",
    );
    let renderer = Renderer::new(Some(dir.path())).expect("the overrides compile");

    let german = render(&renderer, "acme", Some("de"), MessageKind::LoginCode);
    assert!(german.subject.contains("Anmeldecode"), "{}", german.subject);
    assert!(
        !german.text.contains("Grüezi"),
        "de-CH is more specific than de"
    );

    let swiss = render(&renderer, "acme", Some("de_CH"), MessageKind::LoginCode);
    assert_eq!(swiss.text, format!("Grüezi {CODE}"));
    assert_eq!(swiss.locale, "de", "the HTML part still comes from de");

    let english = render(&renderer, "acme", Some("fr"), MessageKind::LoginCode);
    assert_eq!(english.subject, format!("Acme code {CODE}"));
}

#[test]
fn an_invalid_tenant_id_never_reaches_the_overrides() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "en",
        "login_code.subject.hbs",
        "Acme code {{code}}",
    );
    let renderer = Renderer::new(Some(dir.path())).expect("the override compiles");
    let reference = render(&shared(), "acme", None, MessageKind::LoginCode);
    for tenant in ["Acme", "../tenants/acme", "acme/", "", "acme/../acme"] {
        assert_eq!(
            render(&renderer, tenant, None, MessageKind::LoginCode),
            reference,
            "{tenant:?}"
        );
    }
}

#[test]
fn badly_named_override_folders_are_skipped_and_other_files_ignored() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "Acme",
        "en",
        "login_code.subject.hbs",
        "{{nonsense",
    );
    write_override(
        dir.path(),
        "acme",
        "not a locale",
        "login_code.subject.hbs",
        "{{nonsense",
    );
    write_override(
        dir.path(),
        "acme",
        "en",
        "README.md",
        "notes for the tenant",
    );
    fs::write(dir.path().join("tenants").join("notes.txt"), "x").expect("write a stray file");
    let renderer = Renderer::new(Some(dir.path())).expect("nothing to compile");
    assert_eq!(
        render(&renderer, "acme", None, MessageKind::LoginCode),
        render(&shared(), "acme", None, MessageKind::LoginCode)
    );
}

#[test]
fn a_missing_overrides_folder_is_not_an_error() {
    let dir = tempfile::tempdir().expect("a temp dir");
    Renderer::new(Some(dir.path())).expect("no tenants folder");
    Renderer::new(Some(&dir.path().join("absent"))).expect("no folder at all");
}

#[test]
fn a_template_syntax_error_in_an_override_names_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "de",
        "login_code.html.hbs",
        "<p>{{#if user_name}}Hallo</p>",
    );
    let err = Renderer::new(Some(dir.path())).expect_err("a broken override");
    let path = dir.path().join("tenants/acme/de/login_code.html.hbs");
    assert!(matches!(err, RenderError::Syntax { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn an_override_using_a_variable_its_kind_lacks_stops_start_up() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "en",
        "factor_removed.txt.hbs",
        "Your code was {{code}}",
    );
    let err = Renderer::new(Some(dir.path())).expect_err("code is not a factor_removed variable");
    assert!(matches!(err, RenderError::Sample { .. }), "{err}");
    assert!(err.to_string().contains("factor_removed.txt.hbs"), "{err}");
}

#[test]
fn an_override_using_a_removed_helper_stops_start_up() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "en",
        "login_code.txt.hbs",
        "{{log code}}{{code}}",
    );
    let err = Renderer::new(Some(dir.path())).expect_err("log is not an allowed helper");
    assert!(matches!(err, RenderError::Sample { .. }), "{err}");
}

#[test]
fn an_override_subject_on_two_lines_stops_start_up() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "en",
        "login_code.subject.hbs",
        "{{code}}\nis your code",
    );
    let err = Renderer::new(Some(dir.path())).expect_err("a two-line subject");
    assert!(matches!(err, RenderError::SampleSubject { .. }), "{err}");
}

#[test]
fn an_override_file_with_an_unknown_name_stops_start_up() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(dir.path(), "acme", "en", "login.subject.hbs", "{{code}}");
    let err = Renderer::new(Some(dir.path())).expect_err("no such kind");
    assert!(matches!(err, RenderError::UnknownOverride { .. }), "{err}");
    assert!(err.to_string().contains("login.subject.hbs"), "{err}");
}

#[test]
fn two_override_folders_for_the_same_locale_clash() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_override(
        dir.path(),
        "acme",
        "de-CH",
        "login_code.txt.hbs",
        "{{code}}",
    );
    write_override(
        dir.path(),
        "acme",
        "de_ch",
        "login_code.txt.hbs",
        "{{code}}",
    );
    let err = Renderer::new(Some(dir.path())).expect_err("a duplicate");
    assert!(
        matches!(err, RenderError::DuplicateOverride { .. }),
        "{err}"
    );
}

#[test]
fn markup_in_the_user_name_is_escaped_in_html_and_raw_in_text() {
    let renderer = shared();
    for locale in renderer.locales() {
        for kind in MessageKind::ALL {
            let mut ctx = context(kind, Role::Customer);
            ctx.user_name = Some("<b>x</b> & co".into());
            let out = renderer
                .render("acme", Some(&locale), kind, &ctx)
                .expect("renders");
            assert!(
                out.html.contains("&lt;b&gt;x&lt;/b&gt; &amp; co"),
                "{locale} {kind}"
            );
            assert!(!out.html.contains("<b>x</b>"), "{locale} {kind}");
            assert!(out.text.contains("<b>x</b> & co"), "{locale} {kind}");
        }
    }
}

#[test]
fn a_code_kind_without_a_code_is_an_error() {
    let mut ctx = context(MessageKind::LoginCode, Role::Admin);
    ctx.code = None;
    let err = shared()
        .render("acme", None, MessageKind::LoginCode, &ctx)
        .expect_err("no code");
    assert!(
        matches!(err, RenderError::MissingField { field: "code", .. }),
        "{err}"
    );

    let mut ctx = context(MessageKind::EnrollmentCode, Role::Admin);
    ctx.code_ttl_minutes = None;
    let err = shared()
        .render("acme", None, MessageKind::EnrollmentCode, &ctx)
        .expect_err("no lifetime");
    assert!(
        matches!(
            err,
            RenderError::MissingField {
                field: "code_ttl_minutes",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_subject_with_a_newline_injected_through_the_product_name_is_refused() {
    let mut ctx = context(MessageKind::LoginCode, Role::Customer);
    ctx.product_name = "Acme\r\nBcc: eve@example.com".into();
    let err = shared()
        .render("acme", Some("de"), MessageKind::LoginCode, &ctx)
        .expect_err("refused");
    assert!(
        matches!(&err, RenderError::MultiLineSubject { locale, .. } if locale == "de"),
        "{err}"
    );
    assert!(!err.to_string().contains(CODE), "{err}");
}

#[test]
fn render_failures_never_carry_the_code() {
    let message = format!("Error rendering \"x\" line 1, col 1: value {CODE} is odd");
    assert_eq!(
        redact(message, Some(CODE)),
        "Error rendering \"x\" line 1, col 1: value [code] is odd"
    );
    assert_eq!(redact("no code".into(), None), "no code");
}

#[test]
fn one_renderer_can_be_shared_by_every_worker() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Renderer>();
}
