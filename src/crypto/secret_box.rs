//! Authenticated encryption of secrets at rest (SMTP passwords, signing
//! secrets, stored webhook answers) with XChaCha20-Poly1305.
//!
//! A sealed value is `0x01 ‖ 24-byte random nonce ‖ ciphertext+tag`. The
//! associated data names what the value is and whose it is (for example
//! `smtp_password:acme:primary`), so a ciphertext copied into another row or
//! tenant fails to open instead of decrypting into the wrong place.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngExt;

use super::MasterKey;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Seals and opens secrets with a key derived from the master key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

/// A sealed value that does not open: wrong key, wrong context or tampering.
#[derive(Debug, thiserror::Error)]
#[error("a stored secret could not be decrypted (was the master key changed?)")]
pub struct SecretBoxError;

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox([redacted])")
    }
}

impl SecretBox {
    /// A box keyed for secrets at rest.
    pub fn new(master: &MasterKey) -> Self {
        let key = master.derive("secret-box");
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Encrypts `plaintext`, binding it to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::rng().random();
        let nonce = XNonce::from(nonce_bytes);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        let ciphertext = self
            .cipher
            .encrypt(&nonce, payload)
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts a value sealed with the same key and `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, SecretBoxError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(SecretBoxError);
        }
        let nonce_bytes: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN]
            .try_into()
            .map_err(|_| SecretBoxError)?;
        let payload = Payload {
            msg: &sealed[1 + NONCE_LEN..],
            aad: context.as_bytes(),
        };
        self.cipher
            .decrypt(&XNonce::from(nonce_bytes), payload)
            .map_err(|_| SecretBoxError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed() -> SecretBox {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        SecretBox::new(&MasterKey::from_base64(&encoded).expect("key"))
    }

    #[test]
    fn a_sealed_secret_opens_only_in_its_own_context() {
        let secret_box = boxed();
        let sealed = secret_box.seal(b"hunter2", "smtp_password:acme:p1");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            secret_box
                .open(&sealed, "smtp_password:acme:p1")
                .expect("opens"),
            b"hunter2"
        );
        assert!(secret_box.open(&sealed, "smtp_password:other:p1").is_err());
    }

    #[test]
    fn tampering_is_detected_and_nonces_differ() {
        let secret_box = boxed();
        let mut sealed = secret_box.seal(b"x", "c");
        assert_ne!(sealed, secret_box.seal(b"x", "c"));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(secret_box.open(&sealed, "c").is_err());
    }
}
