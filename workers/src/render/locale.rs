//! Locale fallback and the checks that keep request values out of file
//! paths.

/// The longest locale tag accepted; BCP 47 advises supporting 35 characters.
const MAX_LOCALE_LEN: usize = 35;

/// The locales to try, most specific first, always ending in `en`.
///
/// Tags are normalised to lowercase with `-` (`EN_us` → `en-us`) and reduced
/// one subtag at a time: `de-CH` → `["de-ch", "de", "en"]`. Anything that is
/// not a plausible tag (characters outside `[a-zA-Z0-9_-]`, empty subtags, a
/// primary subtag that is not 2–8 letters, more than 35 characters), and
/// `None`, gives `["en"]`, so a locale never reaches a file path unchecked.
pub fn locale_chain(locale: Option<&str>) -> Vec<String> {
    let mut chain = Vec::new();
    if let Some(tag) = locale.and_then(normalize_locale) {
        let mut tag = tag.as_str();
        chain.push(tag.to_owned());
        while let Some((shorter, _)) = tag.rsplit_once('-') {
            tag = shorter;
            chain.push(tag.to_owned());
        }
    }
    if chain.last().map(String::as_str) != Some("en") {
        chain.push("en".to_owned());
    }
    chain
}

/// `locale` in lowercase with `-` separators, or `None` if it is not a
/// plausible language tag.
pub(super) fn normalize_locale(locale: &str) -> Option<String> {
    let locale = locale.trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if locale.is_empty() || locale.len() > MAX_LOCALE_LEN || !locale.chars().all(allowed) {
        return None;
    }
    let tag = locale.replace('_', "-").to_ascii_lowercase();
    let mut subtags = tag.split('-');
    let primary = subtags.next()?;
    let primary_ok =
        (2..=8).contains(&primary.len()) && primary.chars().all(|c| c.is_ascii_alphabetic());
    (primary_ok && subtags.all(|subtag| !subtag.is_empty())).then_some(tag)
}

/// Whether `tenant_id` may name a folder of overrides: `^[a-z0-9][a-z0-9-]{0,62}$`,
/// which rules out path traversal (`..`, `/`, `\`) and case-folding clashes.
pub(super) fn is_valid_tenant_id(tenant_id: &str) -> bool {
    let bytes = tenant_id.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    matches!(bytes.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.len() <= 63
        && bytes.iter().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swiss_german_locale_falls_back_to_german_then_english() {
        assert_eq!(locale_chain(Some("de-CH")), ["de-ch", "de", "en"]);
    }

    #[test]
    fn underscores_and_odd_case_are_normalised() {
        assert_eq!(locale_chain(Some("EN_us")), ["en-us", "en"]);
        assert_eq!(
            locale_chain(Some("zh_Hant_TW")),
            ["zh-hant-tw", "zh-hant", "zh", "en"]
        );
        assert_eq!(locale_chain(Some("en")), ["en"]);
    }

    #[test]
    fn junk_or_missing_locales_give_english_only() {
        for junk in [
            None,
            Some(""),
            Some("  "),
            Some("../etc"),
            Some("de/../../x"),
            Some("de;q=0.9"),
            Some("de--ch"),
            Some("-de"),
            Some("de-"),
            Some("d"),
            Some("123"),
            Some("de_DE.UTF-8"),
            Some("a-very-long-tag-that-nobody-would-ever-send"),
        ] {
            assert_eq!(locale_chain(junk), ["en"], "{junk:?}");
        }
    }

    #[test]
    fn tenant_ids_that_could_escape_a_folder_are_invalid() {
        for good in ["acme", "acme-shop-2", "0", &"a".repeat(63)] {
            assert!(is_valid_tenant_id(good), "{good}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "Acme",
            "-acme",
            "acme_shop",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_tenant_id(bad), "{bad}");
        }
    }
}
