//! Codes and trust tokens: drawn from the CSPRNG, stored only as keyed
//! hashes (HMAC-SHA256 under keys derived from the master key), compared in
//! constant time.
//!
//! A code's hash also covers its challenge id, so the same digits on two
//! challenges hash differently and a hash cannot be replayed elsewhere.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

use super::MasterKey;

/// The recognisable prefix of trust tokens (handy for secret scanners).
pub const TRUST_TOKEN_PREFIX: &str = "e2fa_td_";

/// Keyed hashing of codes and trust tokens.
#[derive(Clone)]
pub struct KeyedHasher {
    code_key: [u8; 32],
    token_key: [u8; 32],
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher([redacted])")
    }
}

fn mac(key: &[u8; 32]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a 32-byte key")
}

impl KeyedHasher {
    /// Hashers keyed from the master key.
    pub fn new(master: &MasterKey) -> Self {
        Self {
            code_key: master.derive("code-hash"),
            token_key: master.derive("trust-token-hash"),
        }
    }

    fn code_mac(&self, challenge_id: &str, code: &str) -> Hmac<Sha256> {
        let mut mac = mac(&self.code_key);
        mac.update(challenge_id.as_bytes());
        mac.update(b":");
        mac.update(code.as_bytes());
        mac
    }

    /// The stored form of a code.
    pub fn code_hash(&self, challenge_id: &str, code: &str) -> Vec<u8> {
        self.code_mac(challenge_id, code)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `code` is the one hashed in `stored`, in constant time.
    pub fn code_matches(&self, challenge_id: &str, code: &str, stored: &[u8]) -> bool {
        self.code_mac(challenge_id, code)
            .verify_slice(stored)
            .is_ok()
    }

    /// The stored form of a trust token (also its lookup key).
    pub fn token_hash(&self, token: &str) -> Vec<u8> {
        let mut mac = mac(&self.token_key);
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// A numeric code of `length` digits, each uniform over 0–9.
pub fn new_code(length: usize) -> String {
    let mut rng = rand::rng();
    (0..length)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A trust token: the prefix and 256 random bits, base64url.
pub fn new_trust_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{TRUST_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> KeyedHasher {
        use base64::engine::general_purpose::STANDARD;
        KeyedHasher::new(&MasterKey::from_base64(&STANDARD.encode([9u8; 32])).expect("key"))
    }

    #[test]
    fn a_code_matches_only_its_own_challenge() {
        let hasher = hasher();
        let stored = hasher.code_hash("ch_1", "123456");
        assert!(hasher.code_matches("ch_1", "123456", &stored));
        assert!(!hasher.code_matches("ch_1", "123457", &stored));
        assert!(!hasher.code_matches("ch_2", "123456", &stored));
        assert!(!stored.windows(6).any(|w| w == b"123456"));
    }

    #[test]
    fn codes_have_the_asked_length_and_use_every_digit() {
        let mut seen = [false; 10];
        for _ in 0..200 {
            let code = new_code(8);
            assert_eq!(code.len(), 8);
            for b in code.bytes() {
                seen[usize::from(b - b'0')] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn trust_tokens_carry_256_bits_behind_a_recognisable_prefix() {
        let token = new_trust_token();
        let body = token.strip_prefix(TRUST_TOKEN_PREFIX).expect("prefix");
        assert_eq!(URL_SAFE_NO_PAD.decode(body).expect("base64url").len(), 32);
        assert_ne!(token, new_trust_token());
        assert_ne!(
            hasher().token_hash(&token),
            hasher().token_hash(&new_trust_token())
        );
    }
}
