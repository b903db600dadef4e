//! `email2fa queue stats` and `email2fa dlq list | resend | discard`: the
//! operations API on the command line, acting on the database directly
//! (no running server needed), with the same rules and audit events.

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::ops::{self, DeadLetterView, OpsError, QueueStats};
use crate::settings::Settings;

/// `email2fa queue …`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// The queue counts, read from the deliveries table (as GET /ops/queue).
    Stats {
        /// Print the JSON answer of GET /ops/queue instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters (the filters of GET /ops/dead-letters).
#[derive(Debug, Args)]
pub struct Filter {
    /// Only this tenant's.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this kind: enrollment_code, login_code or factor_removed.
    #[arg(long)]
    kind: Option<String>,
    /// Only those dead at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only this reason: attempts_exhausted, rejected, tls_failed, permanent
    /// or render.
    #[arg(long)]
    reason: Option<String>,
    /// Only those sent through this secondary auth provider.
    #[arg(long)]
    provider: Option<String>,
}

impl Filter {
    /// The filter, or the operator's mistakes, each named.
    fn build(self) -> anyhow::Result<email2fa_workers::dead_letters::DeadLetterFilter> {
        let input = ops::FilterInput {
            tenant: self.tenant,
            kind: self.kind,
            since: self.since,
            reason: self.reason,
            provider: self.provider,
        };
        ops::filter("--tenant", input).map_err(explain)
    }
}

/// `email2fa dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Unresolved dead letters, newest first, recipients masked.
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many (1–500).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON (as GET /ops/dead-letters) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue a dead letter again (a code email gets a fresh code).
    Resend {
        /// The dead letter's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every unresolved dead letter matching the filters.
        #[arg(long)]
        all: bool,
        /// With --all: also the letters SMTP rejected for good (reason
        /// rejected), which are left out otherwise.
        #[arg(long, requires = "all")]
        include_permanent: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Drop a dead letter for good.
    Discard {
        /// The dead letter's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every unresolved dead letter matching the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
    },
}

impl QueueCommand {
    /// Runs the command.
    pub async fn run(self, settings: &Settings) -> anyhow::Result<()> {
        let store = crate::app::open_existing_store(settings).await?;
        let Self::Stats { json } = self;
        let stats = ops::queue_stats(&store).await.map_err(explain)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            print_stats(&stats);
        }
        Ok(())
    }
}

fn print_stats(stats: &QueueStats) {
    println!(
        "{:<8} {:>8} {:>10} {:>8} {:>10} {:>8} {:>6} {:>20} {:>19}",
        "QUEUE",
        "PENDING",
        "SCHEDULED",
        "RUNNING",
        "DONE",
        "FAILED",
        "DEAD",
        "OLDEST PENDING (s)",
        "OLDEST UNSENT (s)"
    );
    for q in &stats.queues {
        println!(
            "{:<8} {:>8} {:>10} {:>8} {:>10} {:>8} {:>6} {:>20} {:>19}",
            q.name,
            q.pending,
            q.scheduled,
            q.running,
            q.done,
            q.failed,
            q.dead,
            q.oldest_pending_age_seconds,
            q.oldest_unsent_age_seconds
        );
    }
}

impl DlqCommand {
    /// Runs the command.
    pub async fn run(self, settings: &Settings) -> anyhow::Result<()> {
        let store = crate::app::open_existing_store(settings).await?;
        match self {
            Self::List {
                filter,
                limit,
                json,
            } => {
                let filter = filter.build()?;
                let page = ops::list(&store, filter, limit, None)
                    .await
                    .map_err(explain)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&page)?);
                } else {
                    print_letters(&page.dead_letters, page.next_cursor.is_some());
                }
            }
            Self::Resend {
                id,
                all,
                include_permanent,
                filter,
            } => {
                let queue = crate::app::open_queue(settings, &store).await?;
                if all {
                    let filter = filter.build()?;
                    let answer = ops::resend_matching(&store, &queue, &filter, include_permanent)
                        .await
                        .map_err(explain)?;
                    for resent in &answer.resent {
                        println!("resent {} as delivery {}", resent.id, resent.delivery_id);
                    }
                    for refused in &answer.refused {
                        println!(
                            "refused {} ({}): {}",
                            refused.id, refused.code, refused.detail
                        );
                    }
                    println!(
                        "{} resent, {} refused",
                        answer.resent.len(),
                        answer.refused.len()
                    );
                    if answer.left_out_permanent > 0 {
                        println!(
                            "{} rejected by SMTP for good left out (--include-permanent to resend them too)",
                            answer.left_out_permanent
                        );
                    }
                } else {
                    let id = id.context("give a dead letter id, or --all")?;
                    let delivery = ops::resend(&store, &queue, &id).await.map_err(explain)?;
                    println!("resent {id} as delivery {delivery}");
                }
            }
            Self::Discard { id, all, filter } => {
                if all {
                    let answer = ops::discard_matching(&store, &filter.build()?)
                        .await
                        .map_err(explain)?;
                    for id in &answer.discarded {
                        println!("discarded {id}");
                    }
                    println!("{} discarded", answer.discarded.len());
                } else {
                    let id = id.context("give a dead letter id, or --all")?;
                    ops::discard(&store, &id).await.map_err(explain)?;
                    println!("discarded {id}");
                }
            }
        }
        Ok(())
    }
}

fn print_letters(letters: &[DeadLetterView], more: bool) {
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:<26} {:<20} {:<16} {:<16} {:<28} {:>3} {:<18} LAST ERROR",
        "ID", "DEAD AT", "TENANT", "KIND", "RECIPIENT", "TRY", "REASON"
    );
    for l in letters {
        println!(
            "{:<26} {:<20} {:<16} {:<16} {:<28} {:>3} {:<18} {}",
            l.id,
            l.dead_at,
            l.tenant_id,
            l.kind,
            l.recipient,
            l.attempts,
            l.reason,
            l.last_error.as_deref().unwrap_or("")
        );
    }
    if more {
        println!(
            "(more: narrow with --tenant, --kind, --since, --reason, --provider or raise --limit)"
        );
    }
}

/// Turns a refusal into the message an operator acts on.
fn explain(error: OpsError) -> anyhow::Error {
    match error {
        OpsError::Invalid(errors) => {
            let text: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            anyhow::anyhow!("invalid arguments: {}", text.join("; "))
        }
        OpsError::ChallengeClosed(detail) => {
            anyhow::anyhow!("challenge_closed: {detail}; discard the letter instead")
        }
        other => anyhow::Error::new(other),
    }
}
