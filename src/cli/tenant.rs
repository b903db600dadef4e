//! `email2fa tenant create | rename | rotate-secret | list`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::crypto;
use crate::http::is_valid_tenant_id;
use crate::settings::Settings;
use crate::store::{StoreError, Timestamp};

/// Tenant commands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its signing secret once (last line of stdout).
    Create {
        /// Tenant id: lowercase letters, digits and dashes (^[a-z0-9][a-z0-9-]{0,62}$).
        id: String,
        /// Display name (defaults to the id): 1–100 characters, no line
        /// breaks or other control characters (it can become an email's
        /// sender name).
        #[arg(long, value_parser = parse_name)]
        name: Option<String>,
    },
    /// Give a tenant a new name (the sender name of its emails when the
    /// SMTP provider has no from_name).
    Rename {
        /// Tenant id.
        id: String,
        /// The new name: 1–100 characters, no line breaks or other control
        /// characters.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Add a new signing secret; older ones stay valid for the overlap.
    RotateSecret {
        /// Tenant id.
        id: String,
        /// How long the previous secrets stay valid (e.g. 24h, 30m, 7d; at
        /// most 365d).
        #[arg(long, default_value = "24h", value_parser = parse_overlap)]
        overlap: Duration,
    },
    /// List tenants and the validity of their secrets (never the secrets).
    List,
}

impl TenantCommand {
    /// Runs the command.
    pub async fn run(self, settings: &Settings) -> anyhow::Result<()> {
        match self {
            Self::Create { id, name } => {
                if !is_valid_tenant_id(&id) {
                    bail!(
                        "invalid tenant id {id:?}: use lowercase letters, digits and dashes, starting with a letter or digit, at most 63 characters"
                    );
                }
                let store = crate::app::open_store(settings).await?;
                let secret = crypto::new_signing_secret();
                let name = name.unwrap_or_else(|| id.clone());
                match store.create_tenant(&id, &name, &secret).await {
                    Err(StoreError::AlreadyExists) => bail!("tenant {id:?} already exists"),
                    other => other.context("failed to create the tenant")?,
                }
                println!("Created tenant {id:?}. Its webhook signing secret (shown once):");
                println!("{secret}");
            }
            Self::Rename { id, name } => {
                let store = crate::app::open_existing_store(settings).await?;
                match store.rename_tenant(&id, &name).await {
                    Err(StoreError::NotFound) => bail!("no tenant {id:?}"),
                    other => other.context("failed to rename the tenant")?,
                }
                println!("Tenant {id:?} is now named {name:?}.");
            }
            Self::RotateSecret { id, overlap } => {
                let store = crate::app::open_existing_store(settings).await?;
                let secret = crypto::new_signing_secret();
                // At most a year (`parse_overlap`): fits an i64 and a date.
                let seconds = i64::try_from(overlap.as_secs()).unwrap_or(MAX_OVERLAP_SECONDS);
                let until = Timestamp::now().plus_seconds(seconds);
                match store.rotate_secret(&id, &secret, until).await {
                    Err(StoreError::NotFound) => bail!("no tenant {id:?}"),
                    other => other.context("failed to rotate the secret")?,
                }
                println!(
                    "New secret for tenant {id:?}; the previous ones stay valid until {until}. The new secret (shown once):"
                );
                println!("{secret}");
            }
            Self::List => print_tenants(&crate::app::open_existing_store(settings).await?).await?,
        }
        Ok(())
    }
}

/// The longest `--overlap`: a year.
const MAX_OVERLAP_SECONDS: i64 = 365 * 24 * 3600;

/// `--overlap`: a duration of at most [`MAX_OVERLAP_SECONDS`].
fn parse_overlap(text: &str) -> Result<Duration, String> {
    let overlap = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if overlap.as_secs() > MAX_OVERLAP_SECONDS.unsigned_abs() {
        return Err("at most 365d: a longer overlap keeps a replaced secret valid for good".into());
    }
    Ok(overlap)
}

/// `--name`: 1–100 characters, none of them a control character.
fn parse_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err("1 to 100 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("no line breaks or other control characters".into());
    }
    Ok(name.to_string())
}

async fn print_tenants(store: &crate::store::Store) -> anyhow::Result<()> {
    let tenants = store.list_tenants().await?;
    if tenants.is_empty() {
        println!("no tenants (create one with `email2fa tenant create ID`)");
        return Ok(());
    }
    let now = Timestamp::now();
    println!("{:<24} {:<24} {:<21} SECRETS", "TENANT", "NAME", "CREATED");
    for tenant in tenants {
        let secrets: Vec<String> = tenant
            .secrets
            .iter()
            .map(|secret| match secret.expires_at {
                None => format!("{} valid", secret.id),
                Some(end) if end > now => format!("{} valid until {end}", secret.id),
                Some(end) => format!("{} expired {end}", secret.id),
            })
            .collect();
        println!(
            "{:<24} {:<24} {:<21} {}",
            tenant.id,
            tenant.name,
            tenant.created_at.to_string(),
            secrets.join("; ")
        );
    }
    Ok(())
}
