//! The service's side of the delivery engine: preparing each email. It owns
//! what the engine must not see at rest — challenges and the code-hash key,
//! providers and the master key — so it mints codes and opens SMTP passwords
//! here, in memory, at the moment of sending.

use chrono::Datelike;
use email2fa_workers::deliveries::Delivery;
use email2fa_workers::engine::{MessageSource, PrepareError, Prepared};
use email2fa_workers::render::{Role, TemplateContext};
use email2fa_workers::transport::{Security, SmtpProvider};
use lettre::message::Mailbox;

use crate::crypto::new_code;
use crate::store::providers::password_context;
use crate::store::{ChallengeState, SendContext, Store, StoreError, Timestamp};

/// Prepares deliveries from the store.
#[derive(Clone, Debug)]
pub struct ServiceSource {
    store: Store,
}

impl ServiceSource {
    /// A source over the store.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn transient(error: StoreError) -> PrepareError {
    PrepareError::Transient(error.to_string())
}

impl MessageSource for ServiceSource {
    /// Three round trips at most: [`Store::send_context`], and for a code
    /// email the conditional write of its hash ([`Store::store_minted_code`]).
    /// Nothing holds a transaction (or SQLite's write lock) while it reads.
    async fn prepare(&self, d: &Delivery) -> Result<Prepared, PrepareError> {
        let store = &self.store;
        let code_email = d.kind != "factor_removed";
        let challenge_id = d.challenge_id.as_deref().filter(|_| code_email);
        let send = store
            .send_context(&d.tenant_id, &d.secondary_auth_provider_id, challenge_id)
            .await
            .map_err(transient)?
            .ok_or_else(no_provider)?;
        let (provider, from) = provider_from(store, &send)?;
        let now = Timestamp::now();
        let product_name = from
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| send.tenant_name.clone());
        let mut context = TemplateContext {
            product_name,
            user_name: d.user_name.clone(),
            email: d.recipient.clone(),
            role: if d.role == "admin" {
                Role::Admin
            } else {
                Role::Customer
            },
            code: None,
            code_ttl_minutes: None,
            removed_at: None,
            year: now.as_datetime().year(),
        };
        if code_email {
            let (code, ttl) = mint(store, d, send.challenge.as_ref(), now).await?;
            context.code = Some(code);
            context.code_ttl_minutes = Some((i64::from(ttl) + 59) / 60);
        } else {
            context.removed_at = Some(
                d.created_at
                    .as_datetime()
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string(),
            );
        }
        Ok(Prepared {
            provider,
            from,
            context,
        })
    }
}

fn no_provider() -> PrepareError {
    PrepareError::Permanent("no secondary auth provider is configured".into())
}

/// Draws the code for this send and stores its keyed hash and expiry with
/// the challenge — unless the challenge closed or a newer send replaced it.
async fn mint(
    store: &Store,
    d: &Delivery,
    challenge: Option<&ChallengeState>,
    now: Timestamp,
) -> Result<(String, i32), PrepareError> {
    let challenge_id = d
        .challenge_id
        .as_deref()
        .ok_or_else(|| PrepareError::Permanent("a code email without a challenge".into()))?;
    let Some(challenge) = challenge else {
        return Err(PrepareError::Skip("the challenge no longer exists".into()));
    };
    if challenge.status != "pending" {
        return Err(PrepareError::Skip(format!(
            "the challenge is {}",
            challenge.status
        )));
    }
    if challenge.current_delivery_id.as_deref() != Some(d.id.as_str()) {
        return Err(PrepareError::Skip("superseded by a newer send".into()));
    }
    let length = usize::try_from(challenge.code_length).unwrap_or(6);
    let code = new_code(length);
    let hash = store.hasher().code_hash(challenge_id, &code);
    let expires_at = now.plus_seconds(i64::from(challenge.code_ttl_seconds));
    let stored = store
        .store_minted_code(&d.tenant_id, challenge_id, &d.id, &hash, expires_at)
        .await
        .map_err(transient)?;
    if !stored {
        // A resend (or a verify) got in between our read and this write.
        return Err(PrepareError::Skip("superseded by a newer send".into()));
    }
    Ok((code, challenge.code_ttl_seconds))
}

/// The SMTP provider and sender of a [`SendContext`], its password opened.
fn provider_from(
    store: &Store,
    send: &SendContext,
) -> Result<(SmtpProvider, Mailbox), PrepareError> {
    let (service_provider_id, sp) = send.provider.as_ref().ok_or_else(no_provider)?;
    let sp = sp.as_ref().ok_or_else(|| {
        PrepareError::Permanent(format!(
            "service provider {service_provider_id:?} was deleted"
        ))
    })?;
    let password = match &sp.smtp_password_sealed {
        Some(sealed) => {
            let opened = store
                .secret_box()
                .open(sealed, &password_context(&sp.tenant_id, &sp.id))
                .map_err(|e| PrepareError::Permanent(e.to_string()))?;
            Some(String::from_utf8(opened).map_err(|_| {
                PrepareError::Permanent("the stored SMTP password is not UTF-8".into())
            })?)
        }
        None => None,
    };
    let address = sp.from_address.parse().map_err(|_| {
        PrepareError::Permanent("the provider's from_address is not a valid address".into())
    })?;
    let from = Mailbox::new(sp.from_name.clone(), address);
    let provider = SmtpProvider {
        key: format!(
            "{}:{}@{}",
            sp.tenant_id,
            sp.id,
            sp.updated_at.as_datetime().timestamp_micros()
        ),
        host: sp.smtp_host.clone(),
        port: u16::try_from(sp.smtp_port).unwrap_or(25),
        security: Security::parse(&sp.smtp_security).unwrap_or(Security::Starttls),
        username: sp.smtp_username.clone(),
        password,
    };
    Ok((provider, from))
}
