//! The leases of the deliveries this process is sending, renewed while
//! their sends run (a heartbeat), so that a lease can be short.
//!
//! A claim leases its delivery for `lease_seconds` (`sending`, with
//! `lease_until`); once the lease has run out, the outbox sweep and any
//! other worker may claim the delivery again, which is how the emails of a
//! worker killed mid-send go out. A lease that ran out under a live but
//! slow send (an SMTP server answering each step just within its timeout)
//! would send the email twice, so the engine renews the lease of every
//! delivery it holds every third of the lease: a live process keeps its
//! leases however long its sends take, and a dead one stops renewing them.
//! Two renewals in a row may fail (the database briefly away) before a
//! lease can run out under a live send.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::deliveries;
use email2fa_db::{Db, Timestamp};

/// The deliveries this process holds a lease on.
#[derive(Default)]
pub(crate) struct Leases(Mutex<HashSet<String>>);

/// One held lease, given up (no longer renewed) when dropped.
pub(crate) struct Held {
    leases: Arc<Leases>,
    id: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.id);
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Renews the lease of `id` until the returned guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>, id: &str) -> Held {
        self.lock().insert(id.to_owned());
        Held {
            leases: Arc::clone(self),
            id: id.to_owned(),
        }
    }

    /// Starts the heartbeat: every third of `lease_seconds`, one statement
    /// extends every held lease to `lease_seconds` from then. Ends once
    /// the leases are dropped (with the engine).
    pub(crate) fn start_heartbeat(self: &Arc<Self>, db: Db, lease_seconds: i64) {
        let leases: Weak<Self> = Arc::downgrade(self);
        let every = Duration::from_millis(
            u64::try_from(lease_seconds.max(1))
                .unwrap_or(1)
                .saturating_mul(1000)
                / 3,
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(leases) = leases.upgrade() else {
                    return;
                };
                let held: Vec<String> = leases.lock().iter().cloned().collect();
                drop(leases);
                if held.is_empty() {
                    continue;
                }
                let until = Timestamp::now().plus_seconds(lease_seconds);
                if let Err(error) = deliveries::renew_leases(&db, &held, until).await {
                    tracing::warn!(%error, leases = held.len(), "could not renew the delivery leases");
                }
            }
        });
    }
}
