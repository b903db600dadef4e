//! Packing a rendered mail into the MIME message a transport sends.

use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use ulid::Ulid;

use super::{RenderError, Rendered, locale_chain};

/// The domain for a Message-ID when the sender's cannot be written in ASCII
/// (lettre has already checked it, so this should never be used).
const FALLBACK_ID_DOMAIN: &str = "email2fa.invalid";

/// Builds the `multipart/alternative` message (text, then HTML, so that
/// clients pick the HTML part) from `from` to `to`.
///
/// Headers: From, To, Subject, Date, `Message-ID: <{ulid}@{from domain}>`,
/// `Auto-Submitted: auto-generated` (RFC 3834: no auto-replies, no vacation
/// notices), `X-Auto-Response-Suppress: All` (the same for Exchange), and
/// `Content-Language` from `locale` (normally [`Rendered::locale`]).
///
/// Returns the message and its id without the angle brackets, for the
/// deliveries table. A line break in the subject or a display name is
/// refused even though lettre would encode it.
pub fn build_message(
    from: &Mailbox,
    to: &Mailbox,
    rendered: &Rendered,
    locale: &str,
) -> Result<(Message, String), RenderError> {
    refuse_line_break("Subject", &rendered.subject)?;
    refuse_line_break("From", from.name.as_deref().unwrap_or_default())?;
    refuse_line_break("To", to.name.as_deref().unwrap_or_default())?;

    let message_id = format!("{}@{}", Ulid::generate(), id_domain(from.email.domain()));
    let message = Message::builder()
        .from(from.clone())
        .to(to.clone())
        .subject(rendered.subject.clone())
        .date_now()
        .message_id(Some(format!("<{message_id}>")))
        .raw_header(header("Auto-Submitted", "auto-generated"))
        .raw_header(header("X-Auto-Response-Suppress", "All"))
        .raw_header(header("Content-Language", &content_language(locale)))
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .map_err(RenderError::Message)?;
    Ok((message, message_id))
}

fn refuse_line_break(header: &'static str, value: &str) -> Result<(), RenderError> {
    if value.contains(['\r', '\n']) {
        return Err(RenderError::UnsafeHeader { header });
    }
    Ok(())
}

fn header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_owned())
}

/// The sender's domain in ASCII: a Message-ID may not contain UTF-8, and
/// lettre accepts internationalised domains.
fn id_domain(domain: &str) -> String {
    if domain.is_ascii() {
        return domain.to_owned();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| FALLBACK_ID_DOMAIN.to_owned())
}

/// `locale` as a well-formed language tag in its conventional case
/// (`de-ch` → `de-CH`, `zh-hant-tw` → `zh-Hant-TW`); `en` if it is not a
/// plausible tag.
fn content_language(locale: &str) -> String {
    let chain = locale_chain(Some(locale));
    let tag = chain.first().map(String::as_str).unwrap_or("en");
    let mut out = String::with_capacity(tag.len());
    for (i, subtag) in tag.split('-').enumerate() {
        if i > 0 {
            out.push('-');
            match subtag.len() {
                2 => out.push_str(&subtag.to_ascii_uppercase()),
                4 => {
                    let (first, rest) = subtag.split_at(1);
                    out.push_str(&first.to_ascii_uppercase());
                    out.push_str(rest);
                }
                _ => out.push_str(subtag),
            }
        } else {
            out.push_str(subtag);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use mail_parser::{MessageParser, MimeHeaders, PartType};

    use super::*;
    use crate::render::fixtures::{CODE, context};
    use crate::render::{MessageKind, Renderer, Role};

    fn mailbox(s: &str) -> Mailbox {
        s.parse().expect("a valid test mailbox")
    }

    fn rendered(locale: &str) -> Rendered {
        let renderer = Renderer::new(None).expect("shared templates compile");
        let ctx = context(MessageKind::LoginCode, Role::Customer);
        renderer
            .render("acme", Some(locale), MessageKind::LoginCode, &ctx)
            .expect("fixture renders")
    }

    #[test]
    fn a_built_message_parses_as_text_then_html_alternatives_with_the_code_in_both() {
        let rendered = rendered("de-CH");
        let from = mailbox("Acme Shop <no-reply@mail.acme.example>");
        let to = mailbox("Ada Lovelace <ada@example.com>");
        let (message, id) = build_message(&from, &to, &rendered, &rendered.locale).expect("builds");
        let bytes = message.formatted();
        let parsed = MessageParser::default().parse(&bytes).expect("valid MIME");

        let root = parsed.part(0).expect("a root part");
        let root_type = root.content_type().expect("a content type");
        assert_eq!(
            (root_type.ctype(), root_type.subtype()),
            ("multipart", Some("alternative"))
        );
        let children = root.sub_parts().expect("a multipart");
        let types: Vec<String> = children
            .iter()
            .map(|&i| {
                let ct = parsed
                    .part(i)
                    .and_then(|p| p.content_type())
                    .expect("typed parts");
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
            })
            .collect();
        assert_eq!(types, ["text/plain", "text/html"]);
        for &i in children {
            let part = parsed.part(i).expect("a part");
            let charset = part.content_type().and_then(|ct| ct.attribute("charset"));
            assert_eq!(
                charset.map(str::to_ascii_lowercase).as_deref(),
                Some("utf-8")
            );
            assert!(matches!(part.body, PartType::Text(_) | PartType::Html(_)));
        }

        // Text bodies travel with CRLF line ends (their canonical form, RFC 2046).
        let text = parsed
            .body_text(0)
            .expect("a text body")
            .replace("\r\n", "\n");
        let html = parsed
            .body_html(0)
            .expect("an HTML body")
            .replace("\r\n", "\n");
        assert_eq!(text, rendered.text);
        assert_eq!(html, rendered.html);
        assert!(text.contains(&format!("\n{CODE}\n")));
        assert!(html.contains(&format!(">{CODE}</td>")));

        assert_eq!(parsed.subject(), Some(rendered.subject.as_str()));
        assert!(
            rendered.subject.contains("für"),
            "the German subject survives encoding"
        );
        assert_eq!(parsed.message_id(), Some(id.as_str()));
        assert!(id.ends_with("@mail.acme.example"), "{id}");
        assert!(
            Ulid::from_string(id.split('@').next().unwrap_or_default()).is_ok(),
            "{id}"
        );
        assert!(parsed.date().is_some());
        assert_eq!(
            parsed.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-generated")
        );
        assert_eq!(
            parsed.header_raw("X-Auto-Response-Suppress").map(str::trim),
            Some("All")
        );
        assert_eq!(
            parsed.header_raw("Content-Language").map(str::trim),
            Some("de")
        );
        let from = parsed
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address());
        assert_eq!(from, Some("no-reply@mail.acme.example"));
    }

    #[test]
    fn the_raw_message_names_both_content_types_and_the_auto_submitted_header() {
        let rendered = rendered("en");
        let from = mailbox("no-reply@acme.example");
        let (message, id) =
            build_message(&from, &mailbox("ada@example.com"), &rendered, "en").expect("builds");
        let raw = String::from_utf8(message.formatted()).expect("ASCII on the wire");
        for needle in [
            "Content-Type: multipart/alternative",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Type: text/html; charset=utf-8",
            "Auto-Submitted: auto-generated",
            "X-Auto-Response-Suppress: All",
            "Content-Language: en",
            &format!("Message-ID: <{id}>"),
        ] {
            assert!(raw.contains(needle), "missing {needle:?}");
        }
        assert!(raw.find("text/plain") < raw.find("text/html"));
    }

    #[test]
    fn a_message_id_from_an_internationalised_domain_is_ascii() {
        let from = mailbox("no-reply@bücher.example");
        let (_, id) = build_message(&from, &mailbox("ada@example.com"), &rendered("en"), "en")
            .expect("builds");
        assert!(id.ends_with("@xn--bcher-kva.example"), "{id}");
    }

    #[test]
    fn line_breaks_in_a_subject_or_display_name_are_refused() {
        let to = mailbox("ada@example.com");
        let mut bad = rendered("en");
        bad.subject = "Hello\r\nBcc: eve@example.com".into();
        let err = build_message(&mailbox("a@acme.example"), &to, &bad, "en").expect_err("refused");
        assert!(
            matches!(err, RenderError::UnsafeHeader { header: "Subject" }),
            "{err}"
        );

        let evil = Mailbox::new(
            Some("Acme\r\nBcc: eve@example.com".into()),
            "a@acme.example".parse().expect("an address"),
        );
        let err = build_message(&evil, &to, &rendered("en"), "en").expect_err("refused");
        assert!(
            matches!(err, RenderError::UnsafeHeader { header: "From" }),
            "{err}"
        );
    }

    #[test]
    fn content_language_is_a_well_formed_tag() {
        assert_eq!(content_language("de-ch"), "de-CH");
        assert_eq!(content_language("EN_us"), "en-US");
        assert_eq!(content_language("zh-hant-tw"), "zh-Hant-TW");
        assert_eq!(content_language("de\r\nX-Evil: 1"), "en");
    }
}
