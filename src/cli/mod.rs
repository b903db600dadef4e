//! The command line: `serve` (the default), `migrate`, `tenant …`,
//! `webhook send`, the operator's `queue stats` and `dlq …`, and `demo`
//! (the reference host platform). Every command reads the same settings, so a command run
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
    /// A demo web shop that uses email2fa as a host platform does (signed
    /// webhooks), with email2fa started beside it and a Mailbox page.
    Demo {
        /// The shop's address.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// The shop's configuration, email2fa's database and the emails.
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
    },
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
            Command::Demo { listen, data_dir } => {
                let binary = std::env::current_exe()
                    .map_err(|e| anyhow::anyhow!("cannot find the email2fa binary: {e}"))?;
                email2fa_demo::run(email2fa_demo::DemoConfig {
                    listen,
                    data_dir,
                    binary,
                })
                .await
            }
        }
    }
}
