//! Managing 2FA: `factor.removed`, `trusted_devices.revoked`, `user.status`.

use email2fa_workers::deliveries::{NewDelivery, insert_delivery, new_delivery_id};
use serde::Serialize;

use super::{EventContext, EventError};
use crate::events::UserScoped;
use crate::store::AuditEvent;
use crate::store::{Factor, StoreError, Timestamp, TrustedDevice};

/// The answer of `factor.removed`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RemovedAnswer {
    /// Factors removed.
    pub removed: u64,
    /// Trusted devices revoked with them.
    pub revoked_devices: u64,
}

/// The answer of `trusted_devices.revoked`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevokedAnswer {
    /// Trusted devices revoked.
    pub revoked_devices: u64,
}

/// The answer of `user.status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusAnswer {
    /// The user's email factors.
    pub factors: Vec<Factor>,
    /// The user's live trusted devices.
    pub trusted_devices: Vec<TrustedDevice>,
}

/// Removes one or all factors, closes the login challenges that send to
/// them, revokes the trusted devices, and queues the security notice to
/// each removed address.
pub async fn factor_removed(
    ctx: &mut EventContext<'_>,
    event: UserScoped,
) -> Result<RemovedAnswer, EventError> {
    event.validate(Some("factor_id"))?;
    lock_user(ctx, &event.user_id).await?;
    let now = Timestamp::now();
    let removed = ctx
        .store
        .delete_factors(
            ctx.tx,
            ctx.tenant_id,
            &event.user_id,
            event.factor_id.as_deref(),
        )
        .await?;
    let revoked = if removed.is_empty() {
        0
    } else {
        ctx.store
            .revoke_trusted_devices(ctx.tx, ctx.tenant_id, &event.user_id, None, now)
            .await?
    };
    for factor in &removed {
        // A login challenge opened before the removal must not let the
        // user in with the removed factor's code.
        ctx.store
            .expire_login_challenges(ctx.tx, ctx.tenant_id, &event.user_id, &factor.email, now)
            .await?;
        let delivery = NewDelivery {
            id: new_delivery_id(),
            tenant_id: ctx.tenant_id.to_string(),
            kind: "factor_removed",
            user_id: factor.user_id.clone(),
            recipient: factor.email.clone(),
            user_name: None,
            locale: None,
            role: factor.role.clone(),
            challenge_id: None,
            secondary_auth_provider_id: factor.secondary_auth_provider_id.clone(),
            max_attempts: ctx.config.delivery_max_attempts,
            not_after: None,
            resent_from: None,
        };
        insert_delivery(ctx.tx, &delivery, now)
            .await
            .map_err(StoreError::from)?;
        ctx.deliveries.push(delivery.id.clone());
        ctx.store
            .audit(ctx.tx, ctx.tenant_id, Some(&event.user_id), AuditEvent::FactorRemoved,
                serde_json::json!({"factor_id": factor.id, "notice_delivery_id": delivery.id, "revoked_devices": revoked}))
            .await?;
    }
    Ok(RemovedAnswer {
        removed: removed.len() as u64,
        revoked_devices: revoked,
    })
}

/// Waits for the user's hot webhooks in flight (their batches hold the
/// user's lock, see [`super::keys`]) and keeps new ones out until this
/// transaction ends.
async fn lock_user(ctx: &mut EventContext<'_>, user_id: &str) -> Result<(), EventError> {
    let key = super::keys::user_key(ctx.tenant_id, user_id);
    Ok(ctx.store.lock_users(ctx.tx, &[key]).await?)
}

/// Revokes one or all of a user's trusted devices.
pub async fn devices_revoked(
    ctx: &mut EventContext<'_>,
    event: UserScoped,
) -> Result<RevokedAnswer, EventError> {
    event.validate(Some("device_id"))?;
    lock_user(ctx, &event.user_id).await?;
    let revoked = ctx
        .store
        .revoke_trusted_devices(
            ctx.tx,
            ctx.tenant_id,
            &event.user_id,
            event.device_id.as_deref(),
            Timestamp::now(),
        )
        .await?;
    if revoked > 0 {
        ctx.store
            .audit(
                ctx.tx,
                ctx.tenant_id,
                Some(&event.user_id),
                AuditEvent::DevicesRevoked,
                serde_json::json!({"device_id": event.device_id, "revoked_devices": revoked}),
            )
            .await?;
    }
    Ok(RevokedAnswer {
        revoked_devices: revoked,
    })
}

/// The user's factors and live trusted devices.
pub async fn user_status(
    ctx: &mut EventContext<'_>,
    event: UserScoped,
) -> Result<StatusAnswer, EventError> {
    event.validate(None)?;
    let factors = ctx
        .store
        .user_factors(ctx.tx, ctx.tenant_id, &event.user_id)
        .await?;
    let trusted_devices = ctx
        .store
        .active_trusted_devices(ctx.tx, ctx.tenant_id, &event.user_id, Timestamp::now())
        .await?;
    Ok(StatusAnswer {
        factors,
        trusted_devices,
    })
}
