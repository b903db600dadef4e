//! Key material and the primitives built on it: the master key, the
//! authenticated encryption of secrets at rest ([`SecretBox`]) and the keyed
//! hashes that stand in for codes and trust tokens.
//!
//! Every purpose gets its own key, derived from the master key with
//! HMAC-SHA256 over a fixed label (the single-block HKDF-Expand), so that a
//! key used for hashing is never also used for encryption.

mod keyed_hash;
mod master_key;
mod secret_box;

pub use keyed_hash::{KeyedHasher, TRUST_TOKEN_PREFIX, new_code, new_trust_token};
pub use master_key::{MasterKey, MasterKeyError};
pub use secret_box::{SecretBox, SecretBoxError};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngExt;

/// `whsec_` + base64 of 32 random bytes: a new Standard Webhooks signing secret.
pub fn new_signing_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("whsec_{}", BASE64.encode(bytes))
}

/// Decodes a signing secret (with or without its `whsec_` prefix) to key
/// bytes. Padding is optional, as in the reference libraries.
pub fn decode_signing_secret(secret: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    LENIENT.decode(raw).ok().filter(|key| !key.is_empty())
}
