//! `settings.updated`.

use super::{EventContext, EventError};
use crate::events::SettingsUpdated;
use crate::store::{TenantSettings, Timestamp};

/// Applies a partial update and answers with the whole settings object.
pub async fn updated(
    ctx: &mut EventContext<'_>,
    update: SettingsUpdated,
) -> Result<TenantSettings, EventError> {
    update.validate()?;
    let current = ctx.store.settings_in(ctx.tx, ctx.tenant_id).await?;
    let mut next = update.apply_to(&current);
    SettingsUpdated::check_result(&next)?;
    next.updated_at = Timestamp::now();
    ctx.store.write_settings(ctx.tx, &next).await?;
    Ok(next)
}
