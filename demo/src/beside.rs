//! Starting email2fa beside the shop, as an operator would: the same binary
//! as a child `email2fa serve` on a free port, its embedded SQLite database
//! and outbox in the demo's data folder, mail written to `.eml` files (the
//! file transport) instead of an SMTP server. The shop's tenant is created
//! once with `email2fa tenant create`, and its secret kept in the shop's
//! own configuration, as a host keeps it. Not part of the example to copy:
//! a real host reaches an email2fa that runs on its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The tenant the demo shop is.
pub const TENANT: &str = "demo-shop";

/// The tenant's name: the sender name of its emails when the SMTP
/// provider has no `from_name`.
const TENANT_NAME: &str = "Demo Shop";

/// A running `email2fa serve`.
pub struct Service {
    child: Child,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
}

/// The environment every email2fa command of the demo runs with.
fn command(binary: &Path, data_dir: &Path) -> Command {
    let database = format!("sqlite://{}", data_dir.join("email2fa.db").display());
    let mut command = Command::new(binary);
    command
        .env("EMAIL2FA_DATABASE_URL", database)
        .env("EMAIL2FA_DATA_DIR", data_dir)
        .env("EMAIL2FA_MAIL_TRANSPORT", "file")
        .env_remove("EMAIL2FA_QUEUE_URL")
        .env_remove("EMAIL2FA_MASTER_KEY")
        .kill_on_drop(true);
    command
}

/// The outbox the file transport writes to.
pub fn outbox(data_dir: &Path) -> PathBuf {
    data_dir.join("outbox")
}

/// Creates the shop's tenant (or, when the demo's copy of the secret was
/// lost, gives it a new one) and returns the `whsec_` secret: the last
/// line the command prints.
pub async fn create_tenant(binary: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let created = command(binary, data_dir)
        .args(["tenant", "create", TENANT, "--name", TENANT_NAME])
        .output()
        .await
        .context("failed to run email2fa tenant create")?;
    let output = if created.status.success() {
        created
    } else if String::from_utf8_lossy(&created.stderr).contains("already exists") {
        command(binary, data_dir)
            .args(["tenant", "rotate-secret", TENANT, "--overlap", "0s"])
            .output()
            .await
            .context("failed to run email2fa tenant rotate-secret")?
    } else {
        bail!(
            "email2fa tenant create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last() {
        Some(secret) if output.status.success() && secret.starts_with("whsec_") => {
            Ok(secret.to_string())
        }
        _ => bail!(
            "email2fa printed no secret: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

impl Service {
    /// Starts `email2fa serve` on a free port and waits until it listens;
    /// its log lines go on to this process's standard error.
    pub async fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        let mut child = command(binary, data_dir)
            .arg("serve")
            .env("EMAIL2FA_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start email2fa serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (found, address) = tokio::sync::oneshot::channel();
        tokio::spawn(forward_log(stderr, found));
        let base = tokio::time::timeout(Duration::from_secs(60), address)
            .await
            .context("email2fa serve did not listen within 60 s")?
            .context("email2fa serve exited before it listened")?;
        Ok(Self { child, base })
    }

    /// Stops the service with SIGTERM (it finishes what is in flight),
    /// or kills it after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Copies the service's log to standard error and reports the address
/// from its "listening on http://…" line.
async fn forward_log(
    stderr: tokio::process::ChildStderr,
    found: tokio::sync::oneshot::Sender<String>,
) {
    let mut found = Some(found);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[email2fa] {line}");
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on ".len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            if let Some(sender) = found.take() {
                let _ = sender.send(rest[..end].to_string());
            }
        }
    }
}
