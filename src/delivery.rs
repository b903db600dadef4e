//! The service's side of the delivery engine: preparing each email. It owns
//! what the engine must not see at rest — challenges and the code-hash key,
//! providers and the master key — so it mints codes and opens SMTP passwords
//! here, in memory, at the moment of sending.

use std::collections::HashSet;

use chrono::Datelike;
use email2fa_workers::deliveries::Delivery;
use email2fa_workers::engine::{ContextQuery, MessageSource, PrepareError, Prepared};
use email2fa_workers::render::{Role, TemplateContext};
use email2fa_workers::transport::{Security, SmtpProvider};
use lettre::message::Mailbox;

use crate::crypto::new_code;
use crate::store::providers::password_context;
use crate::store::{
    ChallengeState, MintedCode, SEND_CONTEXT, SendContext, SendContextRow, Store, Timestamp,
};

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

/// A code email whose code is drawn, waiting for its hash to be stored.
struct Minted {
    code: String,
    ttl_seconds: i32,
    hash: MintedCode,
}

impl MessageSource for ServiceSource {
    type Context = SendContextRow;

    const CONTEXT: ContextQuery = SEND_CONTEXT;

    /// One round trip for the whole batch, and none without a code email:
    /// the context came with the claim, the codes are drawn here and their
    /// hashes stored with [`Store::store_minted_codes`]. A code whose send
    /// was superseded meanwhile is not stored, and its email is discarded.
    async fn prepare_batch(
        &self,
        claimed: Vec<(Delivery, SendContextRow)>,
    ) -> Vec<(Delivery, Result<Prepared, PrepareError>)> {
        let now = Timestamp::now();
        let mut prepared = Vec::with_capacity(claimed.len());
        let mut codes = Vec::new();
        for (d, row) in claimed {
            let result = row
                .into_send_context(&d.tenant_id)
                .ok_or_else(no_provider)
                .and_then(|send| self.prepare_one(&d, &send, now));
            let (result, minted) = match result {
                Ok((ready, minted)) => (Ok(ready), minted),
                Err(error) => (Err(error), None),
            };
            if let Some(minted) = &minted {
                codes.push(minted.hash.clone());
            }
            prepared.push((d, result, minted));
        }
        let stored = match self.store.store_minted_codes(&codes).await {
            Ok(stored) => Ok(stored),
            Err(error) => Err(PrepareError::Transient(error.to_string())),
        };
        prepared
            .into_iter()
            .map(|(d, result, minted)| {
                let result = match (result, minted) {
                    (Ok(ready), Some(minted)) => with_code(ready, minted, &d, &stored),
                    (result, _) => result,
                };
                (d, result)
            })
            .collect()
    }
}

impl ServiceSource {
    /// Everything but storing the code: the provider, the sender, the
    /// template's values, and for a code email its freshly drawn code.
    fn prepare_one(
        &self,
        d: &Delivery,
        send: &SendContext,
        now: Timestamp,
    ) -> Result<(Prepared, Option<Minted>), PrepareError> {
        let (provider, from) = provider_from(&self.store, send)?;
        // The shop's name: the provider's `from_name`, else the tenant's
        // name, in the sender's display name as in the template.
        let product_name = from
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| send.tenant_name.clone());
        let from = Mailbox::new(Some(product_name.clone()), from.email);
        let code_email = d.kind != "factor_removed";
        let mut context = TemplateContext {
            product_name,
            user_name: d.user_name.clone(),
            email: d.recipient.clone(),
            // The ingress stores only these two; anything else reads as a
            // customer, the plainer wording.
            role: d.role.parse().unwrap_or(Role::Customer),
            code: None,
            code_ttl_minutes: None,
            removed_at: None,
            year: now.as_datetime().year(),
        };
        let minted = if code_email {
            Some(mint(&self.store, d, send.challenge.as_ref(), now)?)
        } else {
            context.removed_at = Some(
                d.created_at
                    .as_datetime()
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string(),
            );
            None
        };
        let prepared = Prepared {
            provider,
            from,
            context,
        };
        Ok((prepared, minted))
    }
}

/// Puts the code into the message once its hash is stored.
fn with_code(
    mut ready: Prepared,
    minted: Minted,
    d: &Delivery,
    stored: &Result<HashSet<String>, PrepareError>,
) -> Result<Prepared, PrepareError> {
    match stored {
        Err(error) => Err(error.clone()),
        // A resend (or a verify) got in between the claim and this write.
        Ok(stored) if !stored.contains(&d.id) => {
            Err(PrepareError::Skip("superseded by a newer send".into()))
        }
        Ok(_) => {
            ready.context.code = Some(minted.code);
            ready.context.code_ttl_minutes = Some((i64::from(minted.ttl_seconds) + 59) / 60);
            Ok(ready)
        }
    }
}

fn no_provider() -> PrepareError {
    PrepareError::Permanent("no secondary auth provider is configured".into())
}

/// Draws the code for this send, and its keyed hash and expiry to store
/// with the challenge — unless the challenge closed or a newer send
/// replaced it.
fn mint(
    store: &Store,
    d: &Delivery,
    challenge: Option<&ChallengeState>,
    now: Timestamp,
) -> Result<Minted, PrepareError> {
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
    Ok(Minted {
        code,
        ttl_seconds: challenge.code_ttl_seconds,
        hash: MintedCode {
            tenant_id: d.tenant_id.clone(),
            challenge_id: challenge_id.to_owned(),
            delivery_id: d.id.clone(),
            code_hash: hash,
            expires_at: now.plus_seconds(i64::from(challenge.code_ttl_seconds)),
        },
    })
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
