//! Per-tenant overrides: read once at start-up from
//! `{overrides_dir}/tenants/{tenant_id}/{locale}/{kind}.{part}.hbs`, compiled
//! next to the shared templates, and checked against sample data so that a
//! broken override stops start-up instead of failing that tenant's mails.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::locale::{is_valid_tenant_id, normalize_locale};
use super::templates::{Part, Templates, one_line};
use super::{MessageKind, RenderError, Role, TemplateContext};

/// Plausible values for checking an override of `kind` at start-up.
fn sample_context(kind: MessageKind, role: Role, user_name: Option<&str>) -> TemplateContext {
    let code = kind.carries_code();
    TemplateContext {
        product_name: "Sample Shop".into(),
        user_name: user_name.map(str::to_owned),
        email: "user@example.com".into(),
        role,
        code: code.then(|| "123456".into()),
        code_ttl_minutes: code.then_some(10),
        removed_at: (!code).then(|| "2026-01-01 00:00 UTC".into()),
        year: 2026,
    }
}

/// Renders an override with sample data for both roles, so that a
/// variable its kind lacks or a multi-line subject stops start-up.
fn check_sample(
    templates: &Templates,
    name: &str,
    kind: MessageKind,
    part: Part,
    file: &str,
) -> Result<(), RenderError> {
    for (role, user_name) in [(Role::Admin, Some("Sample User")), (Role::Customer, None)] {
        let data = sample_context(kind, role, user_name)
            .to_json(kind)
            .expect("the sample context is complete for every kind");
        let out =
            templates
                .registry(part)
                .render(name, &data)
                .map_err(|e| RenderError::Sample {
                    file: file.into(),
                    reason: e.to_string(),
                })?;
        if part == Part::Subject && one_line(&out).is_none() {
            return Err(RenderError::SampleSubject { file: file.into() });
        }
    }
    Ok(())
}

/// Compiles every override under `root` (`{overrides_dir}/tenants`) and
/// returns how many there were; a missing `root` means none.
pub(super) fn load_overrides(templates: &mut Templates, root: &Path) -> Result<usize, RenderError> {
    let tenant_dirs = match subdirectories(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        other => other.map_err(|e| io_error(root, e))?,
    };
    let mut count = 0;
    for (tenant, tenant_dir) in tenant_dirs {
        if !is_valid_tenant_id(&tenant) {
            tracing::warn!(path = %tenant_dir.display(), "skipping template overrides: the folder name is not a valid tenant id");
            continue;
        }
        for (locale, locale_dir) in
            subdirectories(&tenant_dir).map_err(|e| io_error(&tenant_dir, e))?
        {
            let Some(locale) = normalize_locale(&locale) else {
                tracing::warn!(path = %locale_dir.display(), "skipping template overrides: the folder name is not a locale");
                continue;
            };
            count += load_locale(templates, &tenant, &locale, &locale_dir)?;
        }
    }
    Ok(count)
}

/// Compiles the `*.hbs` files of one tenant and locale folder.
fn load_locale(
    templates: &mut Templates,
    tenant: &str,
    locale: &str,
    dir: &Path,
) -> Result<usize, RenderError> {
    let mut count = 0;
    for path in sorted_entries(dir).map_err(|e| io_error(dir, e))? {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = file_name.strip_suffix(".hbs") else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        let file = path.display().to_string();
        let (kind, part) = stem
            .split_once('.')
            .and_then(|(kind, part)| Some((MessageKind::parse(kind)?, Part::parse(part)?)))
            .ok_or_else(|| RenderError::UnknownOverride { file: file.clone() })?;
        let source = fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        let name = format!(
            "tenants/{tenant}/{locale}/{}.{}",
            kind.as_str(),
            part.as_str()
        );
        templates.add(&name, part, &source, &file)?;
        check_sample(templates, &name, kind, part, &file)?;
        count += 1;
    }
    Ok(count)
}

/// The sub-folders of `dir` with their names, sorted so that loading (and
/// which of two clashing files is reported) does not depend on the file
/// system's order.
fn subdirectories(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let dirs = sorted_entries(dir)?
        .into_iter()
        .filter(|path| path.is_dir());
    Ok(dirs
        .filter_map(|path| Some((path.file_name()?.to_str()?.to_owned(), path)))
        .collect())
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    paths.sort();
    Ok(paths)
}

fn io_error(path: &Path, source: io::Error) -> RenderError {
    RenderError::Io {
        path: path.display().to_string(),
        source,
    }
}
