//! `email2fa webhook send`: sign an event as a host platform would, post it,
//! print the answer. The integrator's first tool.

use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::settings::Settings;

/// Webhook commands.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Sign and post one event; prints the status and the answer.
    Send {
        /// The event type, e.g. settings.updated.
        event_type: String,
        /// The event's data as JSON, `@FILE`, or `-` for standard input.
        #[arg(default_value = "{}")]
        data: String,
        /// The tenant to post for.
        #[arg(long, default_value = crate::app::DEFAULT_TENANT)]
        tenant: String,
        /// The signing secret (whsec_…); default: the tenant's newest secret,
        /// read from the database with the master key.
        #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// The service's base URL; default: http:// + EMAIL2FA_LISTEN.
        #[arg(long)]
        url: Option<String>,
        /// The webhook-id (default: a new ULID); reuse one with the same data
        /// to see idempotency (with an id, the envelope carries no timestamp,
        /// so the body is the same each time).
        #[arg(long)]
        id: Option<String>,
        /// Print only this field of the answer on standard output (e.g.
        /// challenge_id, or a dotted path such as factor.id), for scripts:
        /// a string as it is, anything else as JSON; a missing field is an
        /// error. Repeat it for several fields, one line each. The whole
        /// answer then goes to standard error.
        #[arg(long, value_name = "FIELD")]
        get: Vec<String>,
    },
}

impl WebhookCommand {
    /// Runs the command.
    pub async fn run(self, settings: &Settings) -> anyhow::Result<()> {
        let Self::Send {
            event_type,
            data,
            tenant,
            secret,
            url,
            id,
            get,
        } = self;
        let data: serde_json::Value =
            serde_json::from_str(&read_data(&data)?).context("the data is not valid JSON")?;
        let secret = match secret {
            Some(secret) => secret,
            None => {
                let store = crate::app::open_existing_store(settings).await?;
                store.newest_secret(&tenant).await?.with_context(|| {
                    format!(
                        "no valid secret for tenant {tenant:?} in {}; pass --secret",
                        settings.database_url
                    )
                })?
            }
        };
        let key = crate::crypto::decode_signing_secret(&secret)
            .context("the secret is not a whsec_ secret (whsec_ + base64)")?;
        // The envelope's `timestamp` is optional (the signed header carries
        // the time); with a chosen id it is left out, so that posting the
        // same id and data again sends the same body, which is a replay,
        // whenever it is sent (with it, a second boundary between the two
        // made it a different body under the same id: 409).
        let mut envelope = serde_json::json!({"type": event_type, "data": data});
        if id.is_none() {
            envelope["timestamp"] = chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .into();
        }
        let body = serde_json::to_vec(&envelope)?;
        let id = id.unwrap_or_else(|| format!("msg_{}", ulid::Ulid::generate()));
        let timestamp = chrono::Utc::now().timestamp();
        let signature = crate::signature::sign(&key, &id, timestamp, &body);
        let base = url.unwrap_or_else(|| format!("http://{}", settings.listen));
        let endpoint = format!("{}/v1/webhooks/{tenant}", base.trim_end_matches('/'));
        let response = reqwest::Client::new()
            .post(&endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .with_context(|| {
                format!("failed to post to {endpoint} (is `email2fa serve` running?)")
            })?;
        let status = response.status();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let text = response.text().await?;
        eprintln!(
            "POST {endpoint} webhook-id={id} -> {status}{}",
            if replayed { " (idempotent replay)" } else { "" }
        );
        report(status, &text, &get)
    }
}

/// Prints the answer, or with `--get` the fields a script reads (one line
/// each) and the answer on standard error; fails on a non-2xx answer or a
/// missing field, printing no field then.
fn report(status: reqwest::StatusCode, text: &str, get: &[String]) -> anyhow::Result<()> {
    let json = serde_json::from_str::<serde_json::Value>(text).ok();
    let pretty = json
        .as_ref()
        .and_then(|json| serde_json::to_string_pretty(json).ok())
        .unwrap_or_else(|| text.to_string());
    if get.is_empty() {
        println!("{pretty}");
    } else {
        eprintln!("{pretty}");
    }
    if !status.is_success() {
        bail!("the service answered {status}");
    }
    let fields = get
        .iter()
        .map(|path| field(json.as_ref(), path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for value in fields {
        println!("{value}");
    }
    Ok(())
}

/// One field of the answer, by a dotted path: a string as it is, anything
/// else as compact JSON.
fn field(answer: Option<&serde_json::Value>, path: &str) -> anyhow::Result<String> {
    let mut found = answer;
    for key in path.split('.') {
        found = found.and_then(|value| value.get(key));
    }
    match found {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(value) if !value.is_null() => Ok(value.to_string()),
        _ => {
            let fields = answer
                .and_then(serde_json::Value::as_object)
                .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            bail!("the answer has no field {path:?} (its fields: {fields})")
        }
    }
}

fn read_data(data: &str) -> anyhow::Result<String> {
    if data == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else if let Some(path) = data.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("failed to read {path}"))
    } else {
        Ok(data.to_string())
    }
}
