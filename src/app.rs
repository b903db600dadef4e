//! Start-up and the long-running processes: open the store (master key,
//! pool, migrations), create the `default` tenant on a fresh embedded
//! database, and serve HTTP until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use email2fa_workers::engine::{Engine, EngineConfig};
use email2fa_workers::queue::{Queue, QueueTarget, WorkerConfig, run_workers};
use email2fa_workers::render::Renderer;
use email2fa_workers::transport::{MailMode, Transports};
use email2fa_workers::trust::TrustedRoots;
use tokio::sync::watch;

use crate::background::Background;
use crate::crypto::{self, MasterKey};
use crate::delivery::ServiceSource;
use crate::http::ops::{OpsConfig, UnhealthyProviders};
use crate::http::{self, AppState};
use crate::settings::{MailTransport, Settings};
use crate::store::{Db, PoolConfig, Store, Timestamp};

/// The tenant a fresh embedded database starts with.
pub const DEFAULT_TENANT: &str = "default";

/// Resolves the master key: the setting, else (SQLite only) the key file.
pub fn master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if let Some(encoded) = &settings.master_key {
        return Ok(MasterKey::from_base64(encoded.expose_secret())?);
    }
    if !settings.database_url.is_sqlite() {
        return Err(crypto::MasterKeyError::Missing.into());
    }
    Ok(MasterKey::load_or_generate(
        &settings.data_dir.join("master.key"),
    )?)
}

/// Opens the database and applies the migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let key = master_key(settings)?;
    let pool = PoolConfig {
        max_connections: settings.database.max_connections,
        acquire_timeout: Duration::from_millis(settings.database.acquire_timeout_ms),
    };
    let db = Db::connect(settings.database_url.expose(), &pool)
        .await
        .with_context(|| format!("failed to open the database {}", settings.database_url))?;
    let store = Store::new(db, &key);
    store
        .migrate()
        .await
        .context("failed to apply the database migrations")?;
    Ok(store)
}

/// Opens a database that must already exist, for the commands that only
/// read or change existing rows (`webhook send`, `tenant list`, `queue
/// stats`, `dlq …`): run in the wrong directory, they would otherwise
/// create an empty embedded database and a new master key there, and then
/// fail for want of a tenant.
pub async fn open_existing_store(settings: &Settings) -> anyhow::Result<Store> {
    if let Some(path) = settings.database_url.sqlite_path() {
        let key = settings.data_dir.join("master.key");
        let missing = if !path.exists() {
            Some(format!("no database at {}", shown(&path)))
        } else if settings.master_key.is_none() && !key.exists() {
            Some(format!(
                "the database {} is there but its master key {} is not",
                shown(&path),
                shown(&key)
            ))
        } else {
            None
        };
        if let Some(missing) = missing {
            anyhow::bail!(
                "{missing} (EMAIL2FA_DATABASE_URL is {}). Run this command from the directory `email2fa serve` runs in, or set EMAIL2FA_DATABASE_URL (and EMAIL2FA_DATA_DIR, which holds master.key) to the service's",
                settings.database_url
            );
        }
    }
    open_store(settings).await
}

/// A path as the user should read it: absolute, from the working directory.
fn shown(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// On an empty embedded database, creates tenant `default` and returns its
/// secret (printed once by the caller).
pub async fn ensure_default_tenant(
    settings: &Settings,
    store: &Store,
) -> anyhow::Result<Option<String>> {
    if !settings.database_url.is_sqlite() || store.count_tenants().await? > 0 {
        return Ok(None);
    }
    let secret = crypto::new_signing_secret();
    store
        .create_tenant(DEFAULT_TENANT, "Default tenant", &secret)
        .await
        .context("failed to create the default tenant")?;
    Ok(Some(secret))
}

/// Opens the queue named by the settings (Redis, or the database itself)
/// and creates its tables.
pub async fn open_queue(settings: &Settings, store: &Store) -> anyhow::Result<Queue> {
    let target = match &settings.queue_url {
        Some(url) if url.is_redis() => QueueTarget::Redis(url.expose().to_string()),
        _ => QueueTarget::Database(store.db().clone()),
    };
    let queue = Queue::connect(target)
        .await
        .context("failed to connect to the queue")?
        .renamed(&settings.queue_name);
    queue.setup().await.context("failed to set up the queue")?;
    Ok(queue)
}

/// The delivery engine over the store and the queue.
pub fn engine(
    settings: &Settings,
    store: &Store,
    queue: &Queue,
) -> anyhow::Result<Engine<ServiceSource>> {
    let overrides = Some(settings.delivery.templates_dir.as_path()).filter(|dir| dir.exists());
    let renderer = Renderer::new(overrides).context("failed to load the email templates")?;
    let mode = match settings.mail_transport {
        MailTransport::Smtp => MailMode::Smtp,
        MailTransport::File => MailMode::Files(settings.data_dir.join("outbox")),
    };
    let transports = Transports::new(
        mode,
        Duration::from_secs(settings.delivery.smtp_timeout_seconds),
        u32::try_from(settings.delivery.concurrency).unwrap_or(u32::MAX),
        trusted_roots(settings)?,
    );
    let config = EngineConfig {
        backoff_base: Duration::from_millis(settings.delivery.backoff_base_ms),
        backoff_cap: Duration::from_millis(settings.delivery.backoff_cap_ms),
        lease_seconds: settings.delivery.lease_seconds,
        ..EngineConfig::default()
    };
    Ok(Engine::new(
        store.db().clone(),
        queue.clone(),
        ServiceSource::new(store.clone()),
        renderer,
        transports,
        config,
    ))
}

/// The roots SMTP servers' certificates may chain to: the built-in ones,
/// plus the CAs of `EMAIL2FA_DELIVERY__CA_FILE` (a file that cannot be read
/// or holds no valid certificate stops start-up, naming it).
pub fn trusted_roots(settings: &Settings) -> anyhow::Result<TrustedRoots> {
    let Some(path) = &settings.delivery.ca_file else {
        return Ok(TrustedRoots::built_in());
    };
    let roots = TrustedRoots::with_pem_file(path).context("EMAIL2FA_DELIVERY__CA_FILE")?;
    tracing::info!(
        ca_file = %path.display(),
        certificates = roots.extra_count(),
        "SMTP TLS trusts the built-in roots and the CA file"
    );
    Ok(roots)
}

/// A shutdown signal several tasks can wait for.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that fires it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once the signal fired (or its sender is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Jobs a worker process runs at once per email it sends at once. Measured
/// on a drain of 20,000 emails (Redis queue): 1 job per send ran at
/// 1,288 emails/s, 4 at 2,211–2,876/s, 8 at 2,381/s. Each running job holds
/// its delivery's lease, so this also bounds the deliveries a killed worker
/// leaves `sending` until their lease runs out.
pub const JOBS_PER_SEND: usize = 4;

/// Runs the workers until `shutdown`, and the outbox sweep in `background`.
pub fn start_workers(
    settings: &Settings,
    engine: Engine<ServiceSource>,
    queue: Queue,
    shutdown: Shutdown,
    background: &Background,
) -> JoinHandle<anyhow::Result<()>> {
    let config = WorkerConfig {
        // More jobs than sends at once: while some send, others wait in the
        // engine's claim and record batches, which then hold more each.
        // The sends themselves stay at `delivery.concurrency`
        // (`Transports`).
        concurrency: settings.delivery.concurrency.saturating_mul(JOBS_PER_SEND),
        name_prefix: "email2fa".into(),
        shutdown_timeout: Duration::from_secs(settings.delivery.shutdown_timeout_seconds),
        ..WorkerConfig::default()
    };
    let sweeper = engine.clone();
    let sweep_stop = shutdown.clone();
    background.spawn("outbox sweep", async move {
        sweeper
            .run_sweeper(Duration::from_secs(10), sweep_stop.wait())
            .await;
    });
    tokio::spawn(async move {
        let handler = move |job| {
            let engine = engine.clone();
            async move { engine.handle(job).await }
        };
        run_workers(queue, config, handler, shutdown.wait())
            .await
            .context("the workers failed")
    })
}

/// A running HTTP server.
struct RunningServer {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

/// What the dashboard asks this process's engine: the providers that
/// reject our credentials.
pub fn provider_health(engine: &Engine<ServiceSource>) -> UnhealthyProviders {
    let engine = engine.clone();
    Arc::new(move || engine.unhealthy_providers())
}

/// Binds the listener and serves until `shutdown` resolves; `/ops` shows the
/// provider health of `engine` when this process runs workers. Its loops
/// (tenant changes, receipt pruning) run in `background`.
async fn start_server(
    settings: &Settings,
    store: &Store,
    queue: Queue,
    engine: Option<UnhealthyProviders>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    background: &Background,
) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("failed to listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let domain = Arc::new(crate::domain::DomainConfig::from_settings(settings));
    store.watch_tenant_changes(background);
    let ingest = crate::ingest::Ingest::start(
        store.clone(),
        queue.clone(),
        Arc::clone(&domain),
        ingest_config(settings),
    );
    let state = AppState {
        store: store.clone(),
        webhook: Arc::new(settings.webhook.clone()),
        domain,
        queue,
        ingest,
        ops: Arc::new(OpsConfig {
            token: settings.ops_token.clone(),
            unhealthy_providers: engine,
        }),
    };
    spawn_receipt_pruning(
        store.clone(),
        settings.webhook.idempotency_hours,
        background,
    );
    let app = http::router(state);
    let limits = http::server::ServeLimits {
        header_read_timeout: Duration::from_millis(settings.http.header_read_timeout_ms),
        max_connections: settings.http.max_connections,
        shutdown_timeout: Duration::from_millis(settings.http.shutdown_timeout_ms),
    };
    let task = tokio::spawn(http::server::serve(listener, app, limits, shutdown));
    tracing::info!(
        %addr,
        database = %settings.database_url,
        backend = store.db().backend_name(),
        "email2fa listening on http://{addr}"
    );
    if settings.ops_token.is_some() {
        tracing::info!("operations API and dashboard on http://{addr}/ops (ops token required)");
    } else {
        tracing::info!("the operations API (/ops) is off: set EMAIL2FA_OPS_TOKEN to turn it on");
    }
    Ok(RunningServer { addr, task })
}

/// The batcher's settings: one lane unless configured. On PostgreSQL one
/// lane measured 5 % more webhooks/s than two, with a fifth less CPU per
/// webhook (login.started, c=32, 4 alternated rounds): its batches are
/// twice as large, and a batch's cost is mostly per batch. SQLite has one
/// writer anyway.
fn ingest_config(settings: &Settings) -> crate::ingest::IngestConfig {
    let lanes = settings.ingest.lanes.max(1);
    crate::ingest::IngestConfig {
        lanes,
        max_batch: settings.ingest.max_batch,
        linger: Duration::from_micros(settings.ingest.linger_us),
    }
}

/// Serves `/metrics` alone on `EMAIL2FA_METRICS_LISTEN`, when set (a
/// `worker` process has no other listener); whether it does.
async fn start_metrics_listener(
    settings: &Settings,
    background: &Background,
) -> anyhow::Result<bool> {
    let Some(addr) = settings.metrics_listen else {
        return Ok(false);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} (EMAIL2FA_METRICS_LISTEN)"))?;
    let addr = listener.local_addr()?;
    background.spawn("metrics listener", async move {
        if let Err(error) = axum::serve(listener, http::metrics_router()).await {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
    tracing::info!("Prometheus metrics on http://{addr}/metrics");
    Ok(true)
}

/// Forgets idempotency receipts older than the retention, every 10 minutes.
fn spawn_receipt_pruning(store: Store, hours: i64, background: &Background) {
    background.spawn("receipt pruning", async move {
        let mut interval = tokio::time::interval(Duration::from_secs(600));
        loop {
            interval.tick().await;
            let before = Timestamp::now().plus_seconds(-hours * 3600);
            match store.prune_receipts(before).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "pruned old webhook receipts"),
                Err(error) => tracing::warn!(%error, "pruning webhook receipts failed"),
            }
        }
    });
}

/// Keeps the planner statistics of the tables fresh on PostgreSQL
/// ([`Store::analyze_grown_tables`]): every 2 s, the tables that changed
/// noticeably since their last analysis, in every long-running process.
/// Stops with the application's other [`Background`] loops.
fn keep_statistics_fresh(store: &Store, background: &Background) {
    if !store.batches_lock() {
        return; // SQLite: see `SQLite housekeeping` in the README
    }
    let store = store.clone();
    background.spawn("planner statistics", async move {
        let mut ticker = tokio::time::interval(crate::store::STATISTICS_CHECK);
        loop {
            ticker.tick().await;
            match store.analyze_grown_tables().await {
                Ok(tables) if !tables.is_empty() => {
                    tracing::debug!(?tables, "planner statistics refreshed");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "could not refresh the planner statistics"),
            }
        }
    });
}

/// What one process runs: the webhook ingress (HTTP), the delivery
/// workers, or both (`serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The HTTP server: webhooks, `/ops`, `/metrics`, health.
    pub ingress: bool,
    /// The delivery workers and the outbox sweep.
    pub workers: bool,
}

impl Roles {
    /// `email2fa serve`: both in one process.
    pub const SERVE: Self = Self {
        ingress: true,
        workers: true,
    };
    /// `email2fa ingress`: only the webhook ingress.
    pub const INGRESS: Self = Self {
        ingress: true,
        workers: false,
    };
    /// `email2fa worker`: only the workers.
    pub const WORKER: Self = Self {
        ingress: false,
        workers: true,
    };
}

/// The running application: what `serve`, `ingress`, `worker` and the
/// integration tests run, built one way ([`Application::build`]) and
/// stopped one way ([`Application::stop`]), which ends every task it
/// started before it closes the pool.
pub struct Application {
    store: Store,
    queue: Queue,
    addr: Option<SocketAddr>,
    background: Background,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    workers: Option<JoinHandle<anyhow::Result<()>>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .field("workers", &self.workers.is_some())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Opens the store (migrations applied) and starts `roles` on it.
    pub async fn build(settings: &Settings, roles: Roles) -> anyhow::Result<Self> {
        let store = open_store(settings).await?;
        Self::build_on(settings, store, roles).await
    }

    /// Starts `roles` on an opened store: the queue, the planner
    /// statistics, the metrics listener and the queue gauges (once per
    /// process, whichever listener serves `/metrics`), the workers and the
    /// outbox sweep, the HTTP server.
    pub async fn build_on(settings: &Settings, store: Store, roles: Roles) -> anyhow::Result<Self> {
        let background = Background::default();
        keep_statistics_fresh(&store, &background);
        let queue = open_queue(settings, &store).await?;
        let metrics_listener = start_metrics_listener(settings, &background).await?;
        if roles.ingress || metrics_listener {
            crate::metrics::spawn_refresh(store.db().clone(), &background);
        }
        let (stop, shutdown) = Shutdown::new();
        let (workers, health) = if roles.workers {
            let engine = engine(settings, &store, &queue)?;
            let health = provider_health(&engine);
            let workers = start_workers(
                settings,
                engine,
                queue.clone(),
                shutdown.clone(),
                &background,
            );
            (Some(workers), Some(health))
        } else {
            (None, None)
        };
        let server = if roles.ingress {
            let server = start_server(
                settings,
                &store,
                queue.clone(),
                health,
                shutdown.wait(),
                &background,
            );
            Some(server.await?)
        } else {
            tracing::info!(
                backend = store.db().backend_name(),
                "email2fa workers running"
            );
            None
        };
        Ok(Self {
            store,
            queue,
            addr: server.as_ref().map(|s| s.addr),
            background,
            stop,
            server: server.map(|s| s.task),
            workers,
        })
    }

    /// The HTTP server's address (port 0 resolved), when it runs one.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Its queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Its background loops (for a test that starts more of them).
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Stops everything it started: the server finishes its in-flight
    /// requests, the workers their in-flight sends, every background loop
    /// ends; then the pool closes.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            server.await.context("the server task failed")??;
        }
        if let Some(workers) = self.workers.take() {
            workers.await.context("the worker task failed")??;
        }
        self.background.stop().await;
        self.store.db().close().await;
        Ok(())
    }
}

impl Drop for Application {
    /// An application dropped without [`Application::stop`] (a test that
    /// ends early) still stops its server, workers and loops, without
    /// waiting for them.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.background.cancel();
    }
}

/// `email2fa serve`: the ingress and the workers in one process, until
/// SIGINT or SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let store = open_store(&settings).await?;
    if let Some(secret) = ensure_default_tenant(&settings, &store).await? {
        println!(
            "Created tenant \"{DEFAULT_TENANT}\" on this new database. Its webhook signing secret is shown once; keep it:"
        );
        println!("{secret}");
    }
    let app = Application::build_on(&settings, store, Roles::SERVE).await?;
    signal.await;
    app.stop().await?;
    tracing::info!("email2fa stopped");
    Ok(())
}

/// `email2fa ingress`: only the webhook ingress (no workers), for scaling
/// the ingress apart from delivery. Emails queue up until a `worker` runs.
pub async fn ingress(settings: Settings) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let app = Application::build(&settings, Roles::INGRESS).await?;
    signal.await;
    app.stop().await?;
    tracing::info!("email2fa ingress stopped");
    Ok(())
}

/// `email2fa worker`: only the workers (and the outbox sweep), for scaling
/// delivery apart from the ingress.
pub async fn work(settings: Settings) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let app = Application::build(&settings, Roles::WORKER).await?;
    signal.await;
    app.stop().await?;
    tracing::info!("email2fa workers stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it before starting anything, so that a signal that
/// arrives while the service starts is kept for the shutdown instead of
/// killing the process the default way (exit by signal, no graceful stop).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let received = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => drop(signal.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = received(interrupt) => {},
                () = received(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        drop(tokio::signal::ctrl_c().await);
        tracing::info!("shutdown signal received; finishing in-flight requests");
    }
}
