//! A deployment of the real binary: a fresh database (an SQLite file in a
//! temp dir, or `CREATE DATABASE bench_<random>`), a fresh Redis queue name,
//! the tenant made with `email2fa tenant create`, its mail pointed at an
//! in-process SMTP sink, and enrolled users seeded straight into `factors`.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use email2fa_testkit::sink::SmtpSink;

use crate::cleanup::{Action, Cleanup};
use crate::client::{Connection, get_status};
use crate::process::Service;
use crate::webhooks::{self, TENANT};

/// The three topologies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SQLite database and queue.
    Sqlite,
    /// PostgreSQL database and queue.
    Postgres,
    /// PostgreSQL database, Redis queue.
    Redis,
}

impl Kind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "sqlite" => Self::Sqlite,
            "postgres" => Self::Postgres,
            "redis" => Self::Redis,
            other => bail!("unknown deployment {other:?} (sqlite, postgres, redis)"),
        })
    }
}

/// Where the servers and the binary are.
#[derive(Debug, Clone)]
pub struct Env {
    pub bin: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    pub cleanup: Cleanup,
}

enum Seeder {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// One deployment, torn down by [`Deployment::close`].
pub struct Deployment {
    pub kind: Kind,
    pub listen: SocketAddr,
    pub key: Vec<u8>,
    pub sink: SmtpSink,
    bin: PathBuf,
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
    seeder: Seeder,
    next_user: u64,
    spawned: usize,
}

impl Deployment {
    /// Creates the database, migrates it, creates the tenant.
    pub async fn create(kind: Kind, env: &Env) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("email2fa-bench-")
            .tempdir()?;
        let listen = free_port()?;
        let suffix = ulid::Ulid::generate().to_string().to_lowercase();
        let mut vars = base_vars(&dir, listen);
        let db_url = match kind {
            Kind::Sqlite => format!("sqlite://{}", dir.path().join("email2fa.db").display()),
            Kind::Postgres | Kind::Redis => {
                create_database(env, &format!("bench_{suffix}")).await?
            }
        };
        vars.push(("EMAIL2FA_DATABASE_URL".into(), db_url.clone()));
        if kind == Kind::Redis {
            let queue = format!("bench_{suffix}");
            env.cleanup.push(Action::RedisKeys {
                url: env.redis_url.clone(),
                queue: queue.clone(),
            });
            vars.push(("EMAIL2FA_QUEUE_URL".into(), env.redis_url.clone()));
            vars.push(("EMAIL2FA_QUEUE_NAME".into(), queue));
        }
        let mut deployment = Self {
            kind,
            listen,
            key: Vec::new(),
            sink: SmtpSink::start()
                .await
                .context("failed to start the SMTP sink")?,
            bin: env.bin.clone(),
            seeder: Seeder::Sqlite(sqlx::SqlitePool::connect_lazy("sqlite::memory:")?),
            dir,
            vars,
            next_user: 1,
            spawned: 0,
        };
        deployment.command(&["migrate"]).await?;
        let out = deployment
            .command(&["tenant", "create", TENANT, "--name", "Bench Shop"])
            .await?;
        let secret = out.lines().last().unwrap_or_default().trim().to_string();
        deployment.key = email2fa::crypto::decode_signing_secret(&secret)
            .with_context(|| format!("tenant create printed no secret: {out:?}"))?;
        deployment.seeder = match kind {
            Kind::Sqlite => Seeder::Sqlite(sqlx::SqlitePool::connect(&db_url).await?),
            _ => Seeder::Postgres(sqlx::PgPool::connect(&db_url).await?),
        };
        Ok(deployment)
    }

    /// One of the deployment's variables.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) a variable of every process started from now on.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.to_string()));
    }

    /// Runs a one-shot command (`migrate`, `tenant create`, `dlq resend
    /// --all`); its stdout.
    pub async fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .output()
            .await
            .with_context(|| format!("failed to run {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "email2fa {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `email2fa ROLE`; for `serve` and `ingress`, waits for
    /// `/healthz`.
    pub async fn start(&mut self, role: &str) -> anyhow::Result<Service> {
        let listen = self.listen;
        self.start_on(role, listen).await
    }

    /// Starts `email2fa ROLE` listening on `listen` rather than the
    /// deployment's address (a second ingress beside the first).
    pub async fn start_on(&mut self, role: &str, listen: SocketAddr) -> anyhow::Result<Service> {
        self.spawned += 1;
        let log = self.dir.path().join(format!("{role}-{}.log", self.spawned));
        let mut vars = self.vars.clone();
        vars.retain(|(k, _)| k != "EMAIL2FA_LISTEN");
        vars.push(("EMAIL2FA_LISTEN".to_string(), listen.to_string()));
        let mut service = Service::spawn(role, &self.bin, &[role.to_string()], &vars, log)?;
        if role != "worker" {
            wait_healthy(&mut service, listen).await?;
        }
        Ok(service)
    }

    /// Points the tenant's mail at the sink, as `configure_mail` in the
    /// tests does. Needs a running ingress.
    pub async fn configure(&self) -> anyhow::Result<()> {
        let mut conn = Connection::open(self.listen).await?;
        for request in webhooks::configure_mail(&self.key, self.sink.port()) {
            let (status, body) = conn.post(&request).await?;
            if status != 200 {
                bail!(
                    "configuring the tenant answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        Ok(())
    }

    /// Enrols `n` new users (one email factor each); returns their numbers.
    pub async fn seed_users(&mut self, n: u64) -> anyhow::Result<Range<u64>> {
        let users = self.next_user..self.next_user + n;
        self.next_user += n;
        if n == 0 {
            return Ok(users);
        }
        let (first, last) = (users.start as i64, users.end as i64 - 1);
        match &self.seeder {
            Seeder::Sqlite(pool) => {
                sqlx::query(
                    "with recursive s(g) as (select ?1 union all select g + 1 from s where g < ?2) \
                     insert into factors (tenant_id, id, user_id, role, email, \
                        secondary_auth_provider_id, created_at) \
                     select 'bench', 'f' || g, 'u' || g, 'customer', 'u' || g || '@bench.example', \
                        's1', '2026-01-01T00:00:00.000000Z' from s",
                )
                .bind(first)
                .bind(last)
                .execute(pool)
                .await?;
            }
            Seeder::Postgres(pool) => {
                sqlx::query(
                    "insert into email2fa.factors (tenant_id, id, user_id, role, email, \
                        secondary_auth_provider_id, created_at) \
                     select 'bench', 'f' || g, 'u' || g, 'customer', 'u' || g || '@bench.example', \
                        's1', now() from generate_series($1::bigint, $2::bigint) g",
                )
                .bind(first)
                .bind(last)
                .execute(pool)
                .await?;
            }
        }
        Ok(users)
    }

    /// Enrols `n` new users and signs one `login.started` for each.
    pub async fn enrolled_logins(&mut self, n: u64) -> anyhow::Result<Requests> {
        let users = self.seed_users(n).await?;
        Ok(Arc::new(webhooks::login_started(&self.key, users)))
    }

    /// The first column of the first row of `sql`, a count (table names
    /// without schema on SQLite, with `email2fa.` on PostgreSQL).
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        Ok(match &self.seeder {
            Seeder::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Seeder::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        })
    }

    /// Closes the seeding pool and undoes what [`Env::cleanup`] holds.
    pub async fn close(self, env: &Env) {
        match self.seeder {
            Seeder::Sqlite(pool) => pool.close().await,
            Seeder::Postgres(pool) => pool.close().await,
        }
        self.sink.stop().await;
        env.cleanup.run_all().await;
    }
}

fn base_vars(dir: &tempfile::TempDir, listen: SocketAddr) -> Vec<(String, String)> {
    let mut key = ulid::Ulid::generate().to_bytes().to_vec();
    key.extend(ulid::Ulid::generate().to_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    [
        ("EMAIL2FA_LISTEN", listen.to_string()),
        ("EMAIL2FA_MASTER_KEY", key),
        ("EMAIL2FA_DATA_DIR", dir.path().display().to_string()),
        ("EMAIL2FA_LOG", "warn".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `CREATE DATABASE name` next to the admin URL's; returns its URL and
/// registers its drop.
async fn create_database(env: &Env, name: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&env.database_url)
        .await
        .with_context(|| format!("PostgreSQL at {} is unreachable", redact(&env.database_url)))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await?;
    env.cleanup.push(Action::DropDatabase {
        admin_url: env.database_url.clone(),
        name: name.to_string(),
    });
    Ok(email2fa_db::with_database_name(&env.database_url, name))
}

/// A URL without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let colon = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..colon], &url[at..])
        }
        _ => url.to_string(),
    }
}

pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

async fn wait_healthy(service: &mut Service, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        service.check_alive()?;
        if matches!(get_status(addr, "/healthz").await, Ok(200)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "email2fa {} did not answer /healthz in 30 s; log:\n{}",
                service.role,
                service.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shared handle type for prepared requests.
pub type Requests = Arc<Vec<webhooks::Prepared>>;
