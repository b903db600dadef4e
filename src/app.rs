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

use crate::crypto::{self, MasterKey};
use crate::http::{self, AppState};
use crate::settings::Settings;
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

/// A running server (used by `serve` and by the tests).
pub struct RunningServer {
    /// The bound address (port 0 resolves here).
    pub addr: SocketAddr,
    /// The store it serves from.
    pub store: Store,
    /// The server task; it ends after the shutdown future resolves.
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Binds the listener and serves until `shutdown` resolves.
pub async fn start(
    settings: Arc<Settings>,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("failed to listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        store: store.clone(),
        webhook: Arc::new(settings.webhook.clone()),
        domain: Arc::new(crate::domain::DomainConfig::from_settings(&settings)),
    };
    spawn_receipt_pruning(store.clone(), settings.webhook.idempotency_hours);
    let app = http::router(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    tracing::info!(
        %addr,
        database = %settings.database_url,
        backend = store.db().backend_name(),
        "email2fa listening on http://{addr}"
    );
    Ok(RunningServer { addr, store, task })
}

/// Forgets idempotency receipts older than the retention, every 10 minutes.
fn spawn_receipt_pruning(store: Store, hours: i64) {
    tokio::spawn(async move {
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

/// `email2fa serve`: everything in one process until SIGINT or SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    if let Some(secret) = ensure_default_tenant(&settings, &store).await? {
        println!(
            "Created tenant \"{DEFAULT_TENANT}\" on this new database. Its webhook signing secret is shown once; keep it:"
        );
        println!("{secret}");
    }
    let server = start(Arc::new(settings), store.clone(), shutdown_signal()).await?;
    server.task.await.context("the server task failed")??;
    store.db().close().await;
    tracing::info!("email2fa stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        drop(tokio::signal::ctrl_c().await);
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
