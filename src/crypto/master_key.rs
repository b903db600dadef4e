//! The master key: 32 bytes from `EMAIL2FA_MASTER_KEY` (base64), or, in the
//! embedded default only, generated once into `data/master.key` (mode 0600).

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

/// The root of every key the service uses. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

/// Why the master key is unusable; each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// Not base64 of exactly 32 bytes.
    #[error(
        "EMAIL2FA_MASTER_KEY must be base64 of exactly 32 bytes (generate one with `openssl rand -base64 32`)"
    )]
    Malformed,
    /// A PostgreSQL deployment without a key.
    #[error(
        "EMAIL2FA_MASTER_KEY is required with PostgreSQL: every process must share one key (generate one with `openssl rand -base64 32`)"
    )]
    Missing,
    /// The key file could not be read or written.
    #[error("cannot use the master key file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// Parses base64 of 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self, MasterKeyError> {
        let bytes = BASE64
            .decode(encoded.trim())
            .map_err(|_| MasterKeyError::Malformed)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| MasterKeyError::Malformed)?;
        Ok(Self(key))
    }

    /// Reads the key file, creating it with a fresh random key (mode 0600)
    /// when it does not exist yet.
    pub fn load_or_generate(path: &Path) -> Result<Self, MasterKeyError> {
        let file_error = |source| MasterKeyError::File {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::from_base64(&text),
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(file_error(error));
            }
            Err(_) => {}
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(file_error)?;
        }
        let key: [u8; 32] = rand::rng().random();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                writeln!(file, "{}", BASE64.encode(key)).map_err(file_error)?;
                Ok(Self(key))
            }
            // Another process created it first: use theirs.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(file_error)?;
                Self::from_base64(&text)
            }
            Err(error) => Err(file_error(error)),
        }
    }

    /// A 32-byte key for one purpose, derived with HMAC-SHA256 over a label.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(b"email2fa/v1/");
        mac.update(purpose.as_bytes());
        mac.update(&[1]);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_file_is_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/master.key");
        let first = MasterKey::load_or_generate(&path).expect("generate");
        let second = MasterKey::load_or_generate(&path).expect("load");
        assert_eq!(first.derive("x"), second.derive("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused_and_debug_hides_the_key() {
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        let key = MasterKey::from_base64(&BASE64.encode([7u8; 32])).expect("valid");
        assert_eq!(format!("{key:?}"), "MasterKey([redacted])");
        assert_ne!(key.derive("a"), key.derive("b"));
    }
}
