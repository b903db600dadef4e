//! Group commit for the hot webhooks: concurrent `enrollment.started`,
//! `login.started`, verifies and resends are decided and committed together,
//! one transaction per batch.
//!
//! Each webhook goes to a *lane* chosen by its user's key
//! ([`crate::domain::keys`]), so all of one user's webhooks in this process
//! meet in one lane, in arrival order. A lane is a task that takes whatever
//! has arrived while its previous batch ran (up to
//! [`IngestConfig::max_batch`], after an optional linger), runs the batch in
//! one transaction ([`batch`]) and answers each webhook once the commit is
//! durable. Under light load a batch is one webhook and adds no wait; under
//! load batches grow by themselves, and the database commits, reads and
//! writes once per batch instead of once per webhook.
//!
//! A 2xx still means the webhook's writes and its email job are committed.
//! A refused webhook writes nothing while the others of its batch commit;
//! a batch that fails as a whole answers every webhook 503 with nothing
//! written, and the host's retry (same `webhook-id`) is evaluated afresh.

mod batch;
mod lane;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use email2fa_workers::queue::Queue;

use crate::domain::batch::HotItem;
use crate::domain::{DomainConfig, EventError, keys};
use crate::store::Store;

/// How the batcher runs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Lanes (writer tasks, each with at most one transaction open).
    pub lanes: usize,
    /// Most webhooks in one batch.
    pub max_batch: usize,
    /// How long a lane waits for more webhooks after the first of a batch
    /// (zero: take what is there).
    pub linger: Duration,
}

/// A hot webhook's answer.
#[derive(Debug)]
pub enum Answer {
    /// Decided and committed now: 200 with this JSON.
    Fresh(Vec<u8>),
    /// Seen before: the first answer again.
    Replayed {
        /// Its status.
        status: u16,
        /// Its bytes.
        body: Vec<u8>,
    },
}

/// Why a hot webhook was not answered with 2xx. The cause of a failed
/// batch is logged once by its lane; each webhook carries only its kind.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The event was refused (4xx); nothing of it was written.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The database or the queue is unavailable (503); nothing was written.
    #[error("{0}")]
    Unavailable(&'static str),
    /// The batch failed for another reason (500); nothing was written.
    #[error("the batch failed")]
    Internal,
    /// The batcher is gone (the process is stopping).
    #[error("the ingress is shutting down")]
    Stopped,
}

/// A webhook waiting in a lane.
struct Job {
    item: HotItem,
    /// The user key it is locked and routed under.
    key: u32,
    reply: oneshot::Sender<Result<Answer, IngestError>>,
}

/// What the lanes share.
struct Shared {
    store: Store,
    queue: Queue,
    domain: Arc<DomainConfig>,
    config: IngestConfig,
    /// The lanes' inboxes, for webhooks that must move to another lane.
    lanes: Vec<mpsc::WeakSender<Job>>,
}

/// The batcher: a handle on its lanes. Cheap to clone; the lanes stop when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Ingest {
    lanes: Arc<Vec<mpsc::Sender<Job>>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("lanes", &self.lanes.len())
            .finish()
    }
}

/// Webhooks that may wait in one lane before senders wait.
const LANE_CAPACITY: usize = 4096;

impl Ingest {
    /// Starts the lanes.
    pub fn start(
        store: Store,
        queue: Queue,
        domain: Arc<DomainConfig>,
        config: IngestConfig,
    ) -> Self {
        let count = config.lanes.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::channel(LANE_CAPACITY)).unzip();
        let shared = Arc::new(Shared {
            store,
            queue,
            domain,
            config,
            lanes: senders.iter().map(mpsc::Sender::downgrade).collect(),
        });
        for inbox in receivers {
            tokio::spawn(lane::run(Arc::clone(&shared), inbox));
        }
        Self {
            lanes: Arc::new(senders),
        }
    }

    /// Decides and commits one hot webhook with whatever else arrives.
    pub async fn submit(&self, item: HotItem) -> Result<Answer, IngestError> {
        let key = route_key(&item);
        let (reply, answer) = oneshot::channel();
        let lane = &self.lanes[lane_of(key, self.lanes.len())];
        lane.send(Job { item, key, reply })
            .await
            .map_err(|_| IngestError::Stopped)?;
        answer.await.map_err(|_| IngestError::Stopped)?
    }
}

/// The user key of a webhook: its user's, or the one its challenge carries.
fn route_key(item: &HotItem) -> u32 {
    if let Some(user) = item.event.user_id() {
        return keys::user_key(&item.tenant_id, user);
    }
    let challenge = item.event.challenge_id().unwrap_or_default();
    keys::key_of_challenge(challenge).unwrap_or_else(|| keys::user_key(&item.tenant_id, challenge))
}

fn lane_of(key: u32, lanes: usize) -> usize {
    usize::try_from(key).unwrap_or(0) % lanes.max(1)
}
