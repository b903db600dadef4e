//! The keys that put every write about one user in one line.
//!
//! A user's events must be decided one after the other: the send limits,
//! "Send New Code" superseding and the wrong-try counter all read what the
//! previous event of that user wrote. The ingress therefore routes every
//! event of a user to the same writer lane ([`crate::ingest`]) and, on
//! PostgreSQL, takes a transaction-scoped advisory lock on the user's key
//! before reading anything, so that other ingress processes wait too.
//!
//! Events that name only a challenge (`enrollment.verify`, `login.verify`,
//! `challenge.resend`) must find the same key without reading the
//! challenge first, so a challenge id carries its user's key: a challenge
//! id is a ULID whose first 32 random bits are the user's key
//! ([`challenge_id`]). It is still a valid, unique ULID (48 random bits
//! remain per millisecond and user), and hosts keep treating it as an
//! opaque string. A challenge id that carries another key (one minted
//! before keys existed) is detected after its row is read and the event is
//! decided again under the right lock.

use sha2::{Digest, Sha256};
use ulid::Ulid;

/// The lock and routing key of a user of a tenant: the first 32 bits of
/// SHA-256 over `tenant \0 user`. Stable across processes and releases
/// (it is stored inside challenge ids). Two users may share a key; that
/// only makes them wait for each other.
pub fn user_key(tenant_id: &str, user_id: &str) -> u32 {
    digest32(tenant_id, user_id)
}

fn digest32(tenant_id: &str, name: &str) -> u32 {
    let mut hash = Sha256::new();
    hash.update(tenant_id.as_bytes());
    hash.update([0]);
    hash.update(name.as_bytes());
    let digest = hash.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A new challenge id carrying `user_key` (see the module documentation).
pub fn challenge_id(user_key: u32) -> String {
    let fresh = Ulid::generate();
    let random = (u128::from(user_key) << 48) | (fresh.random() & ((1u128 << 48) - 1));
    Ulid::from_parts(fresh.timestamp_ms(), random).to_string()
}

/// The user key a challenge id carries, or `None` when it is not a ULID.
/// Ids minted before keys existed carry random bits here: the caller checks
/// the key against the challenge's user once the row is read.
pub fn key_of_challenge(challenge_id: &str) -> Option<u32> {
    let ulid = Ulid::from_string(challenge_id).ok()?;
    u32::try_from(ulid.random() >> 48).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_id_carries_its_users_key() {
        let key = user_key("acme", "u1");
        let id = challenge_id(key);
        assert_eq!(id.len(), 26);
        assert_eq!(key_of_challenge(&id), Some(key));
        assert_ne!(challenge_id(key), id, "ids stay unique");
    }

    #[test]
    fn keys_depend_on_tenant_and_user() {
        assert_ne!(user_key("acme", "u1"), user_key("acme", "u2"));
        assert_ne!(user_key("acme", "u1"), user_key("shop", "u1"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(user_key("ab", "c"), user_key("a", "bc"));
        assert_eq!(user_key("acme", "u1"), user_key("acme", "u1"));
    }

    #[test]
    fn ids_that_are_not_ulids_carry_no_key() {
        assert_eq!(key_of_challenge("not-a-ulid"), None);
        assert_eq!(key_of_challenge(""), None);
    }
}
