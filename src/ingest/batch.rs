//! One batch in one transaction: lock, read, decide, write, push, commit.
//!
//! On PostgreSQL this is three round trips per batch whatever its size,
//! on the lane's own connection, where the previous batch's commit began
//! this batch's transaction: one call for the users' locks and the reads
//! (receipts, challenges, factors, streaks, trusted devices, and the send
//! counts after the locks of the addresses the batch can send to; settings
//! and providers come from a cache); one statement for every write (with
//! Redis, the jobs are pushed meanwhile; with the queue in the database,
//! apalis's insert follows); `commit; begin`.

use email2fa_db::LaneConn;
use email2fa_workers::queue::QueueError;

use super::{IngestError, Job, Shared};
use crate::domain::batch::Key;
use crate::domain::batch::{Overlay, RandomMint, Verdict, send_targets};
use crate::store::batch::SendWindows;
use crate::store::{StoreError, Timestamp};

/// Why a batch wrote nothing.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    /// A guarded write found a row changed since it was read: decide the
    /// batch again.
    #[error("a row changed under the batch")]
    Race,
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
    /// The queue refused the jobs.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl BatchError {
    /// Whether one webhook's data may have caused it (then the webhooks
    /// are run one by one), as opposed to the database or queue failing.
    pub(super) fn is_item_specific(&self) -> bool {
        match self {
            Self::Store(error) => !matches!(error, StoreError::Unavailable(_)),
            Self::Queue(QueueError::Other(_)) => true,
            Self::Race | Self::Queue(QueueError::Unavailable(_)) => false,
        }
    }

    /// What each webhook of a failed batch answers.
    pub(super) fn for_webhook(&self) -> IngestError {
        match self {
            Self::Store(StoreError::Unavailable(_)) | Self::Race => {
                IngestError::Unavailable("the database is unavailable")
            }
            Self::Queue(QueueError::Unavailable(_)) => {
                IngestError::Unavailable("the queue is unavailable")
            }
            Self::Store(_) | Self::Queue(_) => IngestError::Internal,
        }
    }
}

impl From<StoreError> for BatchError {
    /// A deadlock or a serialization failure is a race like any other: the
    /// transaction was rolled back and the batch is decided again.
    fn from(error: StoreError) -> Self {
        if let StoreError::Other(sqlx::Error::Database(db)) = &error
            && matches!(db.code().as_deref(), Some("40P01" | "40001"))
        {
            return Self::Race;
        }
        Self::Store(error)
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::from(error).into()
    }
}

/// Runs one batch on the lane's connection `lane`: every webhook's
/// verdict, its writes committed.
pub(super) async fn run_batch(
    shared: &Shared,
    lane: &mut Option<LaneConn>,
    jobs: &[Job],
) -> Result<Vec<Verdict>, BatchError> {
    let store = &shared.store;
    let items: Vec<_> = jobs.iter().map(|job| &job.item).collect();
    let lock_keys: Vec<u32> = jobs.iter().map(|job| job.key).collect();
    let t0 = std::time::Instant::now();
    let mut tx = store.begin_batch(lane).await?;
    let t_begin = t0.elapsed();
    let now = Timestamp::now();
    let limits = &shared.domain.limits;
    let windows = SendWindows {
        user_since: now.plus_seconds(-limits.user_window_seconds),
        recipient_since: now.plus_seconds(-limits.recipient_window_seconds),
    };
    let mut snap = store
        .read_batch(&mut tx, &items, &lock_keys, windows)
        .await?;
    let t_read = t0.elapsed();
    let (users, recipients) = send_targets(&items, &snap);
    if store.batches_lock() {
        // PostgreSQL: the read locked and counted every address the batch
        // can send to. One it did not (a factor or challenge that changed
        // between the read's two statements) is a race like any other.
        if !counted(&users, &snap.user_sends) || !counted(&recipients, &snap.recipient_sends) {
            store.roll_back_batch(tx, lane).await;
            return Err(BatchError::Race);
        }
    } else {
        store
            .read_send_counts(
                &mut tx,
                &mut snap,
                &users,
                &recipients,
                windows.user_since,
                windows.recipient_since,
            )
            .await?;
    }
    let t_counts = t0.elapsed();
    let mut mint = RandomMint;
    let mut overlay = Overlay::new(snap, &shared.domain, store.hasher(), &mut mint, now);
    let verdicts =
        crate::domain::batch::plan(&items, &lock_keys, store.batches_lock(), &mut overlay);
    let writes = overlay.finish();
    if writes.receipts.is_empty() {
        // Nothing was decided afresh (replays, refusals, moves).
        store.roll_back_batch(tx, lane).await;
        return Ok(verdicts);
    }
    let mut jobs: Vec<_> = writes
        .job_ids()
        .into_iter()
        .map(|delivery_id| email2fa_workers::queue::EmailJob { delivery_id })
        .collect();
    let pushed = !jobs.is_empty();
    // Jobs in Redis are pushed while the writes run (one round trip less
    // to wait for); jobs in the database go through the transaction.
    let (written, apart) = if shared.queue.pushes_apart() {
        let (written, apart) = tokio::join!(
            store.write_batch(&mut tx, &writes, now),
            shared.queue.push_apart(std::mem::take(&mut jobs))
        );
        (written, Some(apart))
    } else {
        (store.write_batch(&mut tx, &writes, now).await, None)
    };
    let written = written?;
    let t_write = t0.elapsed();
    if written.receipts != writes.receipts.len() as u64
        || written.challenge_updates != writes.challenge_updates.len() as u64
    {
        store.roll_back_batch(tx, lane).await;
        return Err(BatchError::Race);
    }
    let queued = match apart {
        Some(apart) => apart,
        None => shared.queue.push_with(&mut tx, jobs).await,
    };
    if let Err(error) = queued {
        store.roll_back_batch(tx, lane).await;
        return Err(error.into());
    }
    store.commit_batch(tx, lane).await?;
    tracing::debug!(
        size = items.len(),
        begin_us = t_begin.as_micros() as u64,
        read_us = (t_read - t_begin).as_micros() as u64,
        counts_us = (t_counts - t_read).as_micros() as u64,
        write_us = (t_write - t_counts).as_micros() as u64,
        commit_us = (t0.elapsed() - t_write).as_micros() as u64,
        "batch phases"
    );
    if pushed {
        shared.queue.wake_workers();
    }
    Ok(verdicts)
}

/// Whether the read counted the sends of every one of `keys`.
fn counted<V>(keys: &[Key], counts: &std::collections::HashMap<Key, V>) -> bool {
    keys.iter().all(|k| counts.contains_key(k))
}
