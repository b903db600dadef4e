//! What a run leaves behind outside its temp dirs, undone at the end of
//! each deployment and once more on exit (also after a failure or Ctrl-C):
//! PostgreSQL databases and the Redis keys of a queue name.

use std::sync::{Arc, Mutex, PoisonError};

/// One thing to undo.
#[derive(Debug, Clone)]
pub enum Action {
    /// `drop database NAME with (force)` through the admin URL.
    DropDatabase { admin_url: String, name: String },
    /// Delete every key of a queue name.
    RedisKeys { url: String, queue: String },
}

/// The pending actions, shared by the whole run.
#[derive(Debug, Clone, Default)]
pub struct Cleanup {
    actions: Arc<Mutex<Vec<Action>>>,
}

impl Cleanup {
    /// Registers an action to run later.
    pub fn push(&self, action: Action) {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(action);
    }

    /// Runs and forgets every pending action; failures are printed.
    pub async fn run_all(&self) {
        let actions: Vec<Action> =
            std::mem::take(&mut *self.actions.lock().unwrap_or_else(PoisonError::into_inner));
        for action in actions {
            if let Err(error) = run(&action).await {
                eprintln!("cleanup of {action:?} failed: {error:#}");
            }
        }
    }
}

async fn run(action: &Action) -> anyhow::Result<()> {
    match action {
        Action::DropDatabase { admin_url, name } => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(admin_url).await?;
            let sql = format!("drop database if exists {name} with (force)");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        Action::RedisKeys { url, queue } => {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{queue}*"))
                .query_async(&mut conn)
                .await?;
            for chunk in keys.chunks(500) {
                let _: i64 = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
            }
        }
    }
    Ok(())
}
