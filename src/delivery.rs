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
use crate::store::{Store, StoreError, Timestamp, Tx};

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
    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, PrepareError> {
        let mut tx = self.store.begin().await.map_err(transient)?;
        let result = prepare_in(&self.store, &mut tx, delivery).await;
        match result {
            Ok(prepared) => {
                crate::store::commit(tx).await.map_err(transient)?;
                Ok(prepared)
            }
            Err(error) => {
                drop(tx.rollback().await);
                Err(error)
            }
        }
    }
}

async fn prepare_in(store: &Store, tx: &mut Tx, d: &Delivery) -> Result<Prepared, PrepareError> {
    let (provider, from) = provider_for(store, tx, d).await?;
    let now = Timestamp::now();
    let tenant_name = store
        .tenant_name(tx, &d.tenant_id)
        .await
        .map_err(transient)?
        .unwrap_or_default();
    let product_name = from
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or(tenant_name);
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
    if d.kind == "factor_removed" {
        context.removed_at = Some(
            d.created_at
                .as_datetime()
                .format("%Y-%m-%d %H:%M UTC")
                .to_string(),
        );
    } else {
        let (code, ttl) = mint(store, tx, d, now).await?;
        context.code = Some(code);
        context.code_ttl_minutes = Some((i64::from(ttl) + 59) / 60);
    }
    Ok(Prepared {
        provider,
        from,
        context,
    })
}

/// Draws the code for this send and stores its keyed hash and expiry with
/// the challenge — unless the challenge closed or a newer send replaced it.
async fn mint(
    store: &Store,
    tx: &mut Tx,
    d: &Delivery,
    now: Timestamp,
) -> Result<(String, i32), PrepareError> {
    let challenge_id = d
        .challenge_id
        .as_deref()
        .ok_or_else(|| PrepareError::Permanent("a code email without a challenge".into()))?;
    let Some(challenge) = store
        .challenge_in(tx, &d.tenant_id, challenge_id)
        .await
        .map_err(transient)?
    else {
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
    let hash = store.hasher().code_hash(&challenge.id, &code);
    let expires_at = now.plus_seconds(i64::from(challenge.code_ttl_seconds));
    let stored = store
        .store_minted_code(tx, &d.tenant_id, &challenge.id, &d.id, &hash, expires_at)
        .await
        .map_err(transient)?;
    if !stored {
        return Err(PrepareError::Skip("superseded by a newer send".into()));
    }
    Ok((code, challenge.code_ttl_seconds))
}

async fn provider_for(
    store: &Store,
    tx: &mut Tx,
    d: &Delivery,
) -> Result<(SmtpProvider, Mailbox), PrepareError> {
    let secondary = match store
        .secondary_auth_provider_in(tx, &d.tenant_id, Some(&d.secondary_auth_provider_id))
        .await
        .map_err(transient)?
    {
        Some(p) => p,
        None => store
            .secondary_auth_provider_in(tx, &d.tenant_id, None)
            .await
            .map_err(transient)?
            .ok_or_else(|| {
                PrepareError::Permanent("no secondary auth provider is configured".into())
            })?,
    };
    let sp = store
        .service_provider_in(tx, &d.tenant_id, &secondary.service_provider_id)
        .await
        .map_err(transient)?
        .ok_or_else(|| {
            PrepareError::Permanent(format!(
                "service provider {:?} was deleted",
                secondary.service_provider_id
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
