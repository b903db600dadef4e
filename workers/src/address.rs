//! The one parser of a recipient address, used by the ingress (which
//! refuses what it cannot send to, naming the field) and by the workers
//! (which send to what it returns).
//!
//! An address is `local@domain` with a dot-atom local part: letters,
//! digits, ``!#$%&'*+-/=?^_`{|}~`` and dots (none first, last or twice in
//! a row), so a quoted local part such as `"x<a@b>"@example.com` (valid
//! under RFC 5321, but read differently by every parser it meets and
//! never used by a real mailbox) is refused before anything is written.
//! The domain is lettre's to check: a host name (or an IP address), not an
//! address literal in brackets, which lettre cannot build a message to.

use lettre::Address;
use lettre::message::{Mailbox, Mailboxes};

/// The longest address SMTP carries (RFC 5321's path limit less `<>`).
pub const MAX_LEN: usize = 254;

/// Why a text is not a recipient address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Empty, too long, or with white space or control characters.
    #[error("must be a single email address such as jane@example.com")]
    NotOne,
    /// Not `local@domain` with a plain (dot-atom) local part and a valid domain.
    #[error("is not a valid email address (expected local@domain, without quotes)")]
    Invalid,
}

/// Parses a recipient address (see the module's documentation).
pub fn recipient(text: &str) -> Result<Address, AddressError> {
    checked(text).map(|(address, _)| address)
}

/// The form an address is stored and compared in: [`recipient`]'s checks,
/// then the domain lowercased and in its ASCII (IDNA) form; the local part
/// stays as typed (a mailbox may tell its case apart, and the mail goes to
/// it as the user wrote it). `jane@Bücher.Example` → `jane@xn--bcher-kva.example`.
pub fn normalize(text: &str) -> Result<String, AddressError> {
    checked(text).map(|(_, normalized)| normalized)
}

/// An address and its stored form, both sendable: an address whose domain
/// has no valid ASCII form (`a@0´a` maps to one with a space) is refused,
/// so that whatever [`recipient`] accepts, [`normalize`] does too.
fn checked(text: &str) -> Result<(Address, String), AddressError> {
    let address = sendable(text)?;
    let (local, domain) = text.rsplit_once('@').ok_or(AddressError::Invalid)?;
    let domain = idna::domain_to_ascii(domain).map_err(|_| AddressError::Invalid)?;
    let normalized = format!("{local}@{domain}");
    // Usually the text as typed (a lowercase ASCII domain), checked
    // already. Otherwise the text had no white space: a refusal of the
    // normalized form is its domain's fault.
    if normalized != text {
        sendable(&normalized).map_err(|_| AddressError::Invalid)?;
    }
    Ok((address, normalized))
}

/// The plain checks, then lettre twice: as an [`Address`], and as the `To`
/// header that lettre reads back when it builds a message. The second
/// refuses address literals (`x@[192.0.2.1]`, `x@[(a)b]`), which lettre
/// takes as an address but then builds no message to ("missing
/// destination address"), so the worker would dead-letter them.
fn sendable(text: &str) -> Result<Address, AddressError> {
    if text.is_empty()
        || text.len() > MAX_LEN
        || text.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AddressError::NotOne);
    }
    let (local, _domain) = text.rsplit_once('@').ok_or(AddressError::Invalid)?;
    if !is_dot_atom(local) {
        return Err(AddressError::Invalid);
    }
    let address = text.parse::<Address>().map_err(|_| AddressError::Invalid)?;
    let reread: Vec<Mailbox> = text
        .parse::<Mailboxes>()
        .map_err(|_| AddressError::Invalid)?
        .into_iter()
        .collect();
    match reread.as_slice() {
        [mailbox] if mailbox.name.is_none() && mailbox.email == address => Ok(address),
        _ => Err(AddressError::Invalid),
    }
}

/// How the per-address send limit tells addresses apart: the whole
/// address with ASCII letters lowercased (most mailboxes ignore the local
/// part's case, so `Jane@` and `jane@` share one limit). SQL compares
/// `lower(recipient)` the same way (`collate "C"` on PostgreSQL).
pub fn limit_key(address: &str) -> String {
    address.to_ascii_lowercase()
}

/// RFC 5322's dot-atom: atoms of `atext` joined by single dots. Non-ASCII
/// letters are allowed (RFC 6531's UTF-8 local parts).
fn is_dot_atom(local: &str) -> bool {
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_parse() {
        for ok in [
            "jane@example.com",
            "jane.doe+2fa@shop.example",
            "o'brien@example.ie",
            "jürgen@müller.example",
        ] {
            assert!(recipient(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_domain_is_lowercased_and_ascii_the_local_part_kept() {
        assert_eq!(
            normalize("Jane.Doe@Shop.EXAMPLE").as_deref(),
            Ok("Jane.Doe@shop.example")
        );
        assert_eq!(
            normalize("jürgen@Bücher.example").as_deref(),
            Ok("jürgen@xn--bcher-kva.example")
        );
        assert_eq!(normalize("\"x\"@example.com"), Err(AddressError::Invalid));
        assert_eq!(limit_key("Jane.Doe@shop.example"), "jane.doe@shop.example");
    }

    #[test]
    fn quoted_odd_or_several_addresses_are_refused() {
        for (text, why) in [
            (
                "\"attacker.x@evil.test\"@example.com",
                AddressError::Invalid,
            ),
            ("\"x<a@b>\"@example.com", AddressError::Invalid),
            ("\"jane\"@example.com", AddressError::Invalid),
            ("jane..doe@example.com", AddressError::Invalid),
            (".jane@example.com", AddressError::Invalid),
            ("jane.@example.com", AddressError::Invalid),
            ("Jane <jane@example.com>", AddressError::NotOne),
            ("jane@example.com,x@evil.test", AddressError::Invalid),
            ("jane(comment)@example.com", AddressError::Invalid),
            ("jane@example.com\r\nBcc: x@evil.test", AddressError::NotOne),
            ("not-an-address", AddressError::Invalid),
            ("@example.com", AddressError::Invalid),
            ("", AddressError::NotOne),
            // Found by tests/properties.rs: lettre builds no message to an
            // address literal, and this domain has no ASCII form.
            ("x@[192.0.2.1]", AddressError::Invalid),
            ("a@[(comment)0.0.10.100]", AddressError::Invalid),
            ("a@0´a", AddressError::Invalid),
        ] {
            assert_eq!(recipient(text), Err(why), "{text:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(recipient(&long), Err(AddressError::NotOne));
    }
}
