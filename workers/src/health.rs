//! Provider health as this process's workers see it: a provider is
//! unhealthy while it refuses our credentials (535) or while its connection
//! cannot be made secure (TLS), and healthy again after its next accepted
//! send. Both are faults of the provider's setup, not of any one message,
//! so the dashboard names the provider and what to fix.
//!
//! Health is kept per provider, across its updates: fixing a provider's
//! password (a new version of it) clears the mark at its first accepted
//! send. It lives in memory, per process; the metric
//! `email2fa_smtp_providers_unhealthy` counts it for scraping.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::transport::SmtpProvider;

/// What is wrong with a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderProblem {
    /// It answers 535 to our username and password; the server's reply.
    CredentialsRejected(String),
    /// Its connection cannot be made secure; what the TLS check said.
    TlsFailed(String),
}

/// A provider this process's workers saw failing, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnhealthyProvider {
    /// `tenant:provider`.
    pub provider: String,
    /// The provider's host, as configured.
    pub host: String,
    /// Why.
    pub problem: ProviderProblem,
}

/// The marks, keyed by provider identity.
#[derive(Debug, Default)]
pub struct ProviderHealth {
    marks: Mutex<BTreeMap<String, UnhealthyProvider>>,
}

impl ProviderHealth {
    /// Marks `provider` unhealthy (or updates why); logs the change.
    pub fn mark(&self, provider: &SmtpProvider, problem: ProviderProblem) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = UnhealthyProvider {
            provider: provider.identity().to_owned(),
            host: provider.host.clone(),
            problem,
        };
        if marks.get(&entry.provider) != Some(&entry) {
            match &entry.problem {
                ProviderProblem::CredentialsRejected(reply) => tracing::error!(
                    provider = %entry.provider, host = %entry.host, %reply,
                    "SMTP provider rejects our credentials (535): marked unhealthy; fix its username/password"),
                ProviderProblem::TlsFailed(why) => tracing::error!(
                    provider = %entry.provider, host = %entry.host, error = %why,
                    "SMTP provider's connection cannot be made secure: marked unhealthy; fix its host, port or security, or trust its CA (EMAIL2FA_DELIVERY__CA_FILE)"),
            }
            marks.insert(entry.provider.clone(), entry);
        }
        crate::metrics::unhealthy_providers(marks.len());
    }

    /// Clears the mark of `provider` after an accepted send.
    pub fn clear(&self, provider: &SmtpProvider) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if marks.remove(provider.identity()).is_some() {
            tracing::info!(provider = %provider.identity(), "SMTP provider accepts our emails again");
            crate::metrics::unhealthy_providers(marks.len());
        }
    }

    /// The unhealthy providers, by identity.
    pub fn unhealthy(&self) -> Vec<UnhealthyProvider> {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Security;

    fn provider(version: u32) -> SmtpProvider {
        SmtpProvider {
            key: format!("acme:p1@{version}"),
            host: "smtp.example.com".into(),
            port: 587,
            security: Security::Starttls,
            username: Some("shop".into()),
            password: Some("secret".into()),
        }
    }

    #[test]
    fn a_provider_is_unhealthy_until_a_later_version_sends() {
        let health = ProviderHealth::default();
        health.mark(
            &provider(1),
            ProviderProblem::CredentialsRejected("535".into()),
        );
        health.mark(
            &provider(1),
            ProviderProblem::TlsFailed("UnknownIssuer".into()),
        );
        let marks = health.unhealthy();
        assert_eq!(marks.len(), 1, "one mark per provider: {marks:?}");
        assert_eq!(marks[0].provider, "acme:p1");
        assert_eq!(
            marks[0].problem,
            ProviderProblem::TlsFailed("UnknownIssuer".into())
        );
        health.clear(&provider(2));
        assert!(health.unhealthy().is_empty());
    }
}
