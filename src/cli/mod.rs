//! The command line: `serve` (the default), `migrate`, `tenant …`,
//! `webhook send`, and the operator's `queue stats` and `dlq …`. Every command reads the same settings, so a command run
//! with the same `EMAIL2FA_DATABASE_URL` as `serve` acts on the same data.

mod ops;
mod tenant;
mod webhook;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::settings::Settings;

/// email2fa: email-based two-factor authentication for host platforms.
#[derive(Debug, Parser)]
#[command(name = "email2fa", version, about)]
pub struct Cli {
    /// A TOML settings file; environment variables (EMAIL2FA_*) override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to run (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook ingress and the delivery workers in one process.
    Serve,
    /// Run only the webhook ingress (scale it apart from the workers).
    Ingress,
    /// Run only the delivery workers (scale them apart from the ingress).
    Worker,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage tenants and their signing secrets.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Sign and post webhooks, as a host platform would.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Queue health, read from the deliveries table.
    #[command(subcommand)]
    Queue(ops::QueueCommand),
    /// Dead letters: list, resend, discard.
    #[command(subcommand)]
    Dlq(ops::DlqCommand),
}

impl Cli {
    /// Loads the settings this invocation uses.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Settings::load(self.config.as_deref())
            .map_err(|error| anyhow::anyhow!("invalid settings: {error}"))
    }

    /// Runs the chosen command.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self.command.unwrap_or(Command::Serve) {
            Command::Serve => crate::app::serve(settings).await,
            Command::Ingress => crate::app::ingress(settings).await,
            Command::Worker => crate::app::work(settings).await,
            Command::Migrate => {
                crate::app::open_store(&settings).await?;
                println!("migrations applied to {}", settings.database_url);
                Ok(())
            }
            Command::Tenant(command) => command.run(&settings).await,
            Command::Webhook(command) => command.run(&settings).await,
            Command::Queue(command) => command.run(&settings).await,
            Command::Dlq(command) => command.run(&settings).await,
        }
    }
}
