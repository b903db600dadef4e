//! The ceilings the scenario figures are compared with: (a) an axum server
//! that only checks the Standard Webhooks signature with the service's own
//! verifier, (b) pgbench running the statements of one `login.started`,
//! (c) postfix's `smtp-source` into the same SMTP sink.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use email2fa::signature::{SignatureHeaders, verify};
use email2fa_testkit::sink::SmtpSink;

use crate::cli::Config;
use crate::client::get_status;
use crate::deployment::{Deployment, Env, Kind};
use crate::load::{Until, closed_loop, open_loop};
use crate::process::Service;
use crate::scenarios::Outcome;
use crate::webhooks::login_started;

/// The environment variable that hands the ceiling server its key.
const KEY_VAR: &str = "EMAIL2FA_BENCH_CEILING_KEY";

/// The largest body the ceiling server reads, as the service.
const MAX_BODY: usize = 65_536;

/// The `ceiling-server` subcommand: serves until killed.
pub async fn ceiling_server(listen: &str) -> anyhow::Result<()> {
    let key = BASE64
        .decode(std::env::var(KEY_VAR).context("the key variable is unset")?)
        .context("the key is not base64")?;
    let app = axum::Router::new()
        .route("/v1/webhooks/{tenant}", axum::routing::post(receive))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(Arc::new(vec![key]));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn receive(
    State(keys): State<Arc<Vec<Vec<u8>>>>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE;
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = SignatureHeaders {
        id: text("webhook-id"),
        timestamp: text("webhook-timestamp"),
        signature: text("webhook-signature"),
    };
    match verify(signed, &body, &keys, chrono::Utc::now().timestamp(), 300) {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

/// (a) The ingress ceiling under the load of scenario 1.
pub async fn ceiling(config: &Config) -> anyhow::Result<Outcome> {
    let key: Vec<u8> = (0..32u8).collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let args = [
        "ceiling-server".to_string(),
        "--listen".into(),
        addr.to_string(),
    ];
    let env = [(KEY_VAR.to_string(), BASE64.encode(&key))];
    let service = Service::spawn("ceiling", &exe, &args, &env, dir.path().join("ceiling.log"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(get_status(addr, "/healthz").await, Ok(200)) {
        if Instant::now() > deadline {
            bail!("the ceiling server did not start: {}", service.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pool = Arc::new(login_started(&key, 1..20_001));
    let open_n = (config.duration.as_secs_f64() * config.open_rate) as u64;
    let open = Arc::new(login_started(&key, 1..open_n + 1));
    let idle = service.rss_mb();
    let warm = Until::Duration {
        warmup: Duration::ZERO,
        measure: config.warmup,
    };
    closed_loop(addr, Arc::clone(&pool), config.concurrency, warm, true).await?;
    let mut out = Outcome::new();
    let mark = service.mark();
    let until = Until::Duration {
        warmup: Duration::ZERO,
        measure: config.duration,
    };
    let closed = closed_loop(addr, pool, config.concurrency, until, true)
        .await?
        .summary();
    out.load("closed", &closed);
    out.process(
        "closed.ceiling",
        &service.figures(mark, Some(idle)),
        closed.requests_ok as f64,
    );
    let progress = Arc::new(AtomicU64::new(0));
    let open = open_loop(
        addr,
        open,
        config.concurrency,
        config.open_rate,
        false,
        progress,
    )
    .await?;
    out.load("open", &open.summary());
    service.stop(Duration::from_secs(5)).await;
    Ok(out)
}

/// (b) pgbench with the statements of one `login.started`, in one
/// transaction, against a scratch database migrated by `email2fa migrate`.
pub async fn pgbench(env: &Env, config: &Config) -> anyhow::Result<Option<Outcome>> {
    if std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: pgbench is not installed (apt-get install postgresql-client)");
        return Ok(None);
    }
    let deployment = Deployment::create(Kind::Postgres, env).await?;
    let result = run_pgbench(&deployment, config).await;
    deployment.close(env).await;
    result.map(Some)
}

async fn run_pgbench(d: &Deployment, config: &Config) -> anyhow::Result<Outcome> {
    let url = d.var("EMAIL2FA_DATABASE_URL").context("no database URL")?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("login_started.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-c", &config.concurrency.to_string(), "-j", "2", "-T"])
        .arg(config.duration.as_secs().max(1).to_string())
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let number_after = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(label))?;
        line[label.len()..].split_whitespace().next()?.parse().ok()
    };
    let mut out = Outcome::new();
    out.set(
        "tps",
        number_after("tps = ").context("no tps in pgbench's output")?,
    );
    if let Some(latency) = number_after("latency average = ") {
        out.set("latency_avg_ms", latency);
    }
    out.keep("output", text);
    Ok(out)
}

/// (c) postfix's `smtp-source` into an [`SmtpSink`]: messages per second.
pub async fn smtp_source(config: &Config) -> anyhow::Result<Option<Outcome>> {
    let bin = ["/usr/sbin/smtp-source", "/usr/bin/smtp-source"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        println!(
            "skipped: smtp-source is missing (DEBIAN_FRONTEND=noninteractive apt-get install -y postfix)"
        );
        return Ok(None);
    };
    let sink = SmtpSink::start().await?;
    let count = config.smtp_source_count;
    let started = Instant::now();
    let output = tokio::process::Command::new(bin)
        .args(["-s", "32", "-m", &count.to_string(), "-l", "1000"])
        .arg(format!("127.0.0.1:{}", sink.port()))
        .output()
        .await?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "smtp-source failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let received = sink.count();
    sink.stop().await;
    if (received as u64) < count {
        bail!("smtp-source sent {count} messages, the sink got {received}");
    }
    let mut out = Outcome::new();
    out.set("messages", received as f64);
    out.set("messages_per_s", received as f64 / elapsed.as_secs_f64());
    Ok(Some(out))
}

/// The statements one `login.started` for an enrolled user makes (see
/// src/http/webhooks.rs, src/domain/login.rs, src/domain/sending.rs and
/// src/store/*), with random ids. The apalis job push is not included.
const PGBENCH_SCRIPT: &str = include_str!("login_started.sql");
