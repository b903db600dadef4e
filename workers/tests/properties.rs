//! Property tests of what the workers parse or render from untrusted input:
//! recipient addresses (the one parser the ingress and the workers share),
//! locale tags, and the template variables that reach a built message.
//!
//! Each property runs a bounded number of cases in `cargo test` (see
//! [`cases::config`]); `PROPTEST_CASES=100000 cargo test -p email2fa-workers --test
//! properties` runs them longer.

#[path = "support/cases.rs"]
mod cases;

use email2fa_workers::address::{self, AddressError};
use email2fa_workers::render::{
    MessageKind, Renderer, Role, TemplateContext, build_message, locale_chain,
};
use lettre::message::Mailbox;
use mail_parser::MessageParser;
use proptest::prelude::*;

// ---------------------------------------------------------------- strategies

/// A character of a dot-atom, mostly plain ASCII, sometimes anything.
fn atext() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range('a', 'z'),
        4 => proptest::char::range('A', 'Z'),
        2 => proptest::char::range('0', '9'),
        2 => proptest::sample::select("!#$%&'*+-/=?^_`{|}~".chars().collect::<Vec<_>>()),
        1 => proptest::sample::select(vec!['ü', 'ß', 'é', 'Ω', '例', 'İ', 'K', 'ﬀ']),
        1 => any::<char>(),
    ]
}

fn local_part() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::collection::vec(atext(), 1..8), 1..4).prop_map(|atoms| {
        atoms
            .into_iter()
            .map(|atom| atom.into_iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(".")
    })
}

/// A domain label: ASCII in any case, internationalised, or already in
/// its ASCII (punycode) form.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?",
        2 => proptest::sample::select(vec![
            "bücher", "BÜCHER", "Müller", "straße", "例え", "ΑΒΓ", "xn--bcher-kva",
            "ＥＸＡＭＰＬＥ", "İstanbul", "ǅemal", "café",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9\u{80}-\u{2FFF}_-]{1,10}",
    ]
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::collection::vec(label(), 1..4).prop_map(|labels| labels.join(".")),
        1 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("[{a}.{b}.{c}.{d}]")),
        1 => proptest::sample::select(vec![
            "[::1]", "[2001:DB8::1]", "[IPv6:2001:db8::1]", "[IPV6:::1]", "192.0.2.1",
            "[192.0.2.1]", "localhost", "EXAMPLE.COM.",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Address-like text: mostly well-formed addresses, sometimes anything.
fn address_like() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (local_part(), domain()).prop_map(|(local, domain)| format!("{local}@{domain}")),
        1 => any::<String>(),
        1 => "[ -~]{0,40}",
    ]
}

/// Text that would end or extend a header, or add a recipient, if it
/// reached one.
fn injection() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "\r\n",
        "\n",
        "\r",
        "\0",
        "\r\nBcc: eve@evil.test",
        "\nBcc: eve@evil.test",
        "\r\n\r\n<html>",
        ", eve@evil.test",
        ",eve@evil.test",
        ";eve@evil.test",
        " <eve@evil.test>",
        "<eve@evil.test>",
        "\"eve@evil.test\"",
        "\tBcc: eve@evil.test",
        "(comment)",
        " ",
        "\u{85}",
        "\u{2028}",
    ])
    .prop_map(str::to_owned)
}

/// `text` with every ASCII letter's case flipped where `flips` says so.
fn flip_case(text: &str, flips: &[bool]) -> String {
    text.chars()
        .zip(flips.iter().copied().cycle())
        .map(|(c, flip)| match (flip, c.is_ascii_lowercase()) {
            (false, _) => c,
            (true, true) => c.to_ascii_uppercase(),
            (true, false) => c.to_ascii_lowercase(),
        })
        .collect()
}

/// `text` with `insert` placed before its `at`-th character (modulo its
/// length plus one).
fn insert_at(text: &str, at: usize, insert: &str) -> String {
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let at = boundaries[at % boundaries.len()];
    format!("{}{insert}{}", &text[..at], &text[at..])
}

// ----------------------------------------------------------------- addresses

proptest! {
    #![proptest_config(cases::config(2000))]

    /// Whatever the ingress accepts, the worker can send: no line break,
    /// NUL or other control character, lettre parses it as an address,
    /// and so does a message addressed to it.
    #[test]
    fn an_accepted_address_is_one_lettre_can_send_to(text in address_like()) {
        if let Ok(parsed) = address::recipient(&text) {
            prop_assert!(!text.chars().any(char::is_control), "{text:?}");
            prop_assert!(!text.chars().any(char::is_whitespace), "{text:?}");
            prop_assert!(text.len() <= address::MAX_LEN);
            prop_assert_eq!(parsed.to_string(), text.clone());
            prop_assert!(text.parse::<lettre::Address>().is_ok(), "{text:?}");
            let built = lettre::Message::builder()
                .from("shop@example.com".parse::<Mailbox>().expect("a sender"))
                .to(Mailbox::new(None, parsed))
                .subject("s")
                .body(String::from("b"));
            prop_assert!(built.is_ok(), "{text:?}: {built:?}");
        }
    }

    /// An address the ingress accepts has a stored form, which the worker
    /// accepts as well (it re-parses what the ingress stored).
    #[test]
    fn an_accepted_address_normalizes_to_one_the_worker_accepts(text in address_like()) {
        if address::recipient(&text).is_ok() {
            let normalized = address::normalize(&text);
            prop_assert!(normalized.is_ok(), "{text:?}: {normalized:?}");
            let normalized = normalized.unwrap_or_default();
            prop_assert!(address::recipient(&normalized).is_ok(), "{text:?} -> {normalized:?}");
        }
    }

    /// Normalizing twice changes nothing; the domain comes out ASCII and
    /// lowercase, the local part as typed.
    #[test]
    fn normalize_is_idempotent_with_an_ascii_lowercase_domain(text in address_like()) {
        if let Ok(once) = address::normalize(&text) {
            prop_assert_eq!(address::normalize(&once), Ok(once.clone()), "{:?}", text);
            let (local, domain) = once.rsplit_once('@').unwrap_or_default();
            let (typed_local, _) = text.rsplit_once('@').unwrap_or_default();
            prop_assert_eq!(local, typed_local);
            prop_assert!(domain.is_ascii(), "{once:?}");
            prop_assert_eq!(domain, domain.to_ascii_lowercase());
        }
    }

    /// Two spellings of an address that differ only in ASCII case are both
    /// accepted or both refused, and share one send limit.
    #[test]
    fn addresses_differing_in_ascii_case_share_one_limit_key(
        text in address_like(),
        flips in proptest::collection::vec(any::<bool>(), 1..16),
    ) {
        let other = flip_case(&text, &flips);
        let (a, b) = (address::normalize(&text), address::normalize(&other));
        prop_assert_eq!(a.is_ok(), b.is_ok(), "{:?} vs {:?}: {:?} / {:?}", text, other, a, b);
        if let (Ok(a), Ok(b)) = (a, b) {
            prop_assert_eq!(address::limit_key(&a), address::limit_key(&b));
        }
        prop_assert_eq!(
            address::limit_key(&text),
            address::limit_key(&text.to_ascii_uppercase())
        );
    }

    /// A line break, NUL, second recipient, display name or comment added
    /// anywhere to an accepted address makes it refused.
    #[test]
    fn header_injection_in_an_address_is_refused(
        (local, domain) in (local_part(), domain()),
        at in any::<usize>(),
        attack in injection(),
    ) {
        let text = format!("{local}@{domain}");
        prop_assume!(address::recipient(&text).is_ok());
        let attacked = insert_at(&text, at, &attack);
        let verdict = address::recipient(&attacked);
        prop_assert!(
            matches!(verdict, Err(AddressError::NotOne | AddressError::Invalid)),
            "{attacked:?} was accepted"
        );
        prop_assert!(address::normalize(&attacked).is_err());
    }
}

// ------------------------------------------------------------------- locales

proptest! {
    #![proptest_config(cases::config(2000))]

    /// Any locale text gives a chain of lowercase tags, each a shorter
    /// prefix of the one before, ending in `en`; text that is not a
    /// plausible tag gives `en` alone.
    #[test]
    fn any_locale_falls_back_along_its_subtags_to_english(
        locale in prop_oneof![
            any::<String>(),
            "[a-zA-Z]{2,3}([-_][a-zA-Z0-9]{1,8}){0,3}",
            "[ -~]{0,40}",
        ],
    ) {
        let chain = locale_chain(Some(&locale));
        prop_assert_eq!(chain.last().map(String::as_str), Some("en"));
        for tag in &chain {
            prop_assert!(tag.len() <= 35, "{tag:?}");
            prop_assert!(
                tag.split('-').all(|subtag| !subtag.is_empty()
                    && subtag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())),
                "{locale:?} gave {chain:?}"
            );
        }
        for pair in chain.windows(2) {
            if pair[1] != "en" || pair[0].starts_with("en-") {
                prop_assert!(pair[0].starts_with(&format!("{}-", pair[1])), "{chain:?}");
            }
        }
        let trimmed = locale.trim();
        let plausible = !trimmed.is_empty()
            && trimmed.len() <= 35
            && trimmed.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plausible {
            prop_assert_eq!(chain, vec!["en".to_owned()]);
        } else if chain.len() > 1 || chain[0] != "en" {
            prop_assert_eq!(&chain[0], &trimmed.replace('_', "-").to_ascii_lowercase());
        }
    }
}

// ------------------------------------------------- template variables, MIME

/// The headers of a built message, unfolded: (name, value) in order.
fn headers_of(raw: &[u8]) -> Vec<(String, String)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let block = String::from_utf8_lossy(&raw[..end]);
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in block.split("\r\n") {
        match (line.starts_with([' ', '\t']), headers.last_mut()) {
            (true, Some((_, value))) => value.push_str(line),
            _ => {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
    }
    headers
}

/// The top-level headers every built message has, and no others.
const HEADERS: [&str; 10] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "X-Auto-Response-Suppress",
    "Content-Language",
    "MIME-Version",
    "Content-Type",
];

/// Names that need no escaping, standing in for the real ones.
const USER: &str = "Zq9UserPlaceholderZq9";
const PRODUCT: &str = "Zq9ProductPlaceholderZq9";

fn renderer() -> &'static Renderer {
    static RENDERER: std::sync::OnceLock<Renderer> = std::sync::OnceLock::new();
    RENDERER.get_or_init(|| Renderer::new(None).expect("the shared templates compile"))
}

/// Display names: mostly what a host would send, sometimes hostile.
fn display_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{1,40}",
        2 => any::<String>(),
        2 => ("[ -~]{0,10}", injection(), "[ -~]{0,10}").prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        1 => proptest::sample::select(vec![
            "<script>alert(1)</script>", "Ada & Bob", "\"Ada\" <ada@evil.test>",
            "=?utf-8?q?Bcc=3A_eve@evil.test?=", "Jürgen Müller", "' onload='x",
        ])
        .prop_map(str::to_owned),
    ]
}

proptest! {
    #![proptest_config(cases::config(300))]

    /// Whatever the user's name, the sender's name and the locale, a
    /// rendered and built mail has exactly its own headers (nothing
    /// injected, no line break inside one), the names come back out of
    /// the headers as they went in, and the HTML part shows the user's
    /// name HTML-escaped.
    #[test]
    fn template_variables_never_inject_headers_and_are_escaped_in_html(
        product_name in display_name(),
        user_name in proptest::option::of(display_name()),
        from_name in proptest::option::of(display_name()),
        locale in proptest::option::of(prop_oneof!["[a-zA-Z_-]{0,8}", any::<String>()]),
        kind in proptest::sample::select(MessageKind::ALL.to_vec()),
        admin in any::<bool>(),
    ) {
        let code = kind.carries_code();
        let ctx = TemplateContext {
            product_name: product_name.clone(),
            user_name: user_name.clone(),
            email: "ada@example.com".into(),
            role: if admin { Role::Admin } else { Role::Customer },
            code: code.then(|| "482913".into()),
            code_ttl_minutes: code.then_some(10),
            removed_at: (!code).then(|| "2026-11-28 07:15 UTC".into()),
            year: 2026,
        };
        let Ok(rendered) = renderer().render("acme", locale.as_deref(), kind, &ctx) else {
            // Refused: only a product name with a line break may do that.
            prop_assert!(product_name.contains(['\r', '\n']), "{product_name:?}");
            return Ok(());
        };
        prop_assert!(renderer().locales().contains(&rendered.locale));
        // The same mail with placeholder names, which need no escaping:
        // the real one must be it with the names put in, HTML-escaped in
        // the HTML part, as typed in the text part.
        let placeholders = TemplateContext {
            product_name: PRODUCT.into(),
            user_name: user_name.as_deref().filter(|n| !n.is_empty()).map(|_| USER.into()),
            ..ctx.clone()
        };
        let expected = renderer()
            .render("acme", locale.as_deref(), kind, &placeholders)
            .expect("placeholders render");
        let escape = handlebars::html_escape;
        let user = user_name.unwrap_or_default();
        let html = expected.html.replace(USER, &escape(&user)).replace(PRODUCT, &escape(&product_name));
        prop_assert!(rendered.html == html, "{user:?} / {product_name:?} not escaped in HTML");
        let text = expected.text.replace(USER, &user).replace(PRODUCT, &product_name);
        prop_assert!(rendered.text == text, "{user:?} / {product_name:?} changed in text");
        let from = Mailbox::new(from_name.clone(), "shop@example.com".parse().expect("sender"));
        let to = Mailbox::new(None, "ada@example.com".parse().expect("recipient"));
        let built = build_message(&from, &to, &rendered, &rendered.locale);
        let Ok((message, _)) = built else {
            // Refused: only a sender name with a control character may be.
            let name = from_name.unwrap_or_default();
            prop_assert!(name.contains(char::is_control), "{name:?}: {built:?}");
            return Ok(());
        };
        let raw = message.formatted();
        let headers = headers_of(&raw);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        let mut expected = HEADERS.to_vec();
        expected.sort_unstable();
        prop_assert_eq!(sorted, expected, "{}", String::from_utf8_lossy(&raw));
        for (name, value) in &headers {
            prop_assert!(
                !value.contains(['\r', '\n', '\0']),
                "{name}: {value:?}"
            );
        }
        let parsed = MessageParser::default().parse(&raw);
        prop_assert!(parsed.is_some(), "unparseable MIME");
        let parsed = parsed.expect("checked");
        // A name that itself looks like an RFC 2047 encoded word is
        // written as typed and decoded by readers: the sender's own text,
        // shown differently, never a header of its own (checked above).
        // White space may change on the way: runs fold, and lettre writes
        // the run between two encoded words as is, which readers drop
        // (RFC 2047), so "﹨  𐤿" reads as "﹨𐤿".
        let words = |text: &str| text.split_whitespace().collect::<String>();
        if !rendered.subject.contains("=?") {
            prop_assert_eq!(parsed.subject().map(words), Some(words(&rendered.subject)));
        }
        let to_addresses: Vec<&str> = parsed
            .to()
            .map(|to| to.iter().filter_map(|a| a.address()).collect())
            .unwrap_or_default();
        prop_assert_eq!(to_addresses, vec!["ada@example.com"]);
        prop_assert!(parsed.bcc().is_none() && parsed.cc().is_none());
        let sender = parsed.from().and_then(|f| f.first());
        prop_assert_eq!(sender.and_then(|a| a.address()), Some("shop@example.com"));
    }
}
