//! Which servers' certificates the SMTP transports trust: the roots built
//! into the binary (Mozilla's, through `webpki-roots`) plus the
//! installation's own private CAs from `EMAIL2FA_DELIVERY__CA_FILE`.
//!
//! Extra roots are added to the built-in ones, never instead of them, and
//! certificate checks are never switched off: a certificate must chain to
//! a trusted root and name the provider's host. The file is read and
//! checked once at start-up, so a bad file stops the service instead of
//! failing every send later.

use std::path::{Path, PathBuf};

use lettre::transport::smtp::client::{Certificate, TlsParameters};

/// Why the CA file cannot be used (each names the file).
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error("cannot read the CA file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no `-----BEGIN CERTIFICATE-----` block.
    #[error("the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A block is not a certificate that can be a trust anchor.
    #[error("the CA file {} is not valid PEM CA certificates: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

/// The roots trusted besides the built-in ones. Cheap to clone.
#[derive(Clone, Default)]
pub struct TrustedRoots {
    extra: Option<Certificate>,
    count: usize,
}

impl std::fmt::Debug for TrustedRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedRoots")
            .field("extra", &self.count)
            .finish()
    }
}

impl TrustedRoots {
    /// Only the built-in roots.
    pub fn built_in() -> Self {
        Self::default()
    }

    /// The built-in roots plus every certificate of a PEM file (one or
    /// more CA certificates, as `openssl` writes them). Each is checked as
    /// a trust anchor now.
    pub fn with_pem_file(path: &Path) -> Result<Self, CaFileError> {
        let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::with_pem(&pem).map_err(|problem| match problem {
            None => CaFileError::NoCertificate {
                path: path.to_path_buf(),
            },
            Some(reason) => CaFileError::Invalid {
                path: path.to_path_buf(),
                reason,
            },
        })
    }

    /// The built-in roots plus the certificates of `pem`; `Err(None)` when
    /// it holds none, `Err(Some(why))` when one is not valid.
    fn with_pem(pem: &[u8]) -> Result<Self, Option<String>> {
        let count = String::from_utf8_lossy(pem)
            .matches("-----BEGIN CERTIFICATE-----")
            .count();
        if count == 0 {
            return Err(None);
        }
        let certificate = Certificate::from_pem(pem).map_err(|e| Some(e.to_string()))?;
        let roots = Self {
            extra: Some(certificate),
            count,
        };
        // Building parameters parses every certificate as a trust anchor:
        // a block that is PEM but not a certificate fails here, not at the
        // first send.
        roots
            .parameters("localhost")
            .map_err(|e| Some(e.to_string()))?;
        Ok(roots)
    }

    /// How many extra roots there are.
    pub fn extra_count(&self) -> usize {
        self.count
    }

    /// TLS parameters for a connection to `host`: its certificate must
    /// chain to one of these roots and name `host`.
    pub fn parameters(&self, host: &str) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        let mut builder = TlsParameters::builder(host.to_owned());
        if let Some(extra) = &self.extra {
            builder = builder.add_root_certificate(extra.clone());
        }
        builder.build_rustls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = TrustedRoots::with_pem_file(&path).expect_err("refused");
        assert!(matches!(error, CaFileError::NoCertificate { .. }));
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn a_broken_certificate_block_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let error = TrustedRoots::with_pem_file(&path).expect_err("refused");
        assert!(matches!(error, CaFileError::Invalid { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn a_missing_file_is_refused_naming_it() {
        let error =
            TrustedRoots::with_pem_file(Path::new("/nonexistent/ca.pem")).expect_err("refused");
        assert!(matches!(error, CaFileError::Read { .. }));
        assert!(error.to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn the_built_in_roots_make_parameters_for_any_host_name() {
        assert!(
            TrustedRoots::built_in()
                .parameters("smtp.example.com")
                .is_ok()
        );
    }
}
