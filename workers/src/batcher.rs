//! A per-process coalescer: concurrent callers each [`Batcher::submit`] one
//! item and await its answer; one task runs everything submitted meanwhile
//! as a single batch (one statement instead of one per caller).
//!
//! There is no linger: a batch is whatever queued while the previous batches
//! ran. With nothing running, a lone item goes at once; under load the
//! batches grow by themselves, up to `max_batch`. At most `in_flight`
//! batches run at a time, which is what makes callers queue up.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

type Request<I, O> = (I, oneshot::Sender<O>);

/// A handle to a running batcher. Cheap to clone; the batcher's task ends
/// once every handle is dropped and the batches it started have finished.
pub struct Batcher<I, O> {
    requests: mpsc::UnboundedSender<Request<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts a batcher that runs `run` on up to `max_batch` items at a
    /// time, at most `in_flight` batches at once. `run` answers with one
    /// output per item, in the items' order.
    pub fn start<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (requests, received) = mpsc::unbounded_channel();
        tokio::spawn(collect(received, max_batch.max(1), in_flight.max(1), run));
        Self { requests }
    }

    /// Submits one item and waits for its batch. `None` when the batch
    /// failed to answer (it panicked) or the batcher is gone.
    pub async fn submit(&self, item: I) -> Option<O> {
        let (answer, answered) = oneshot::channel();
        self.requests.send((item, answer)).ok()?;
        answered.await.ok()
    }
}

async fn collect<I, O, F, Fut>(
    mut received: mpsc::UnboundedReceiver<Request<I, O>>,
    max_batch: usize,
    in_flight: usize,
    run: F,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // Take a slot before looking at the queue: while every slot is busy,
        // requests pile up and the next batch takes them all.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = received.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match received.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (items, answers): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
        let outputs = run(items);
        tokio::spawn(async move {
            let outputs = outputs.await;
            debug_assert_eq!(outputs.len(), answers.len(), "one output per item");
            for (output, answer) in outputs.into_iter().zip(answers) {
                // The caller may have gone (shutdown): nothing to tell.
                let _ = answer.send(output);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_submissions_share_batches_and_get_their_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher = Batcher::start(8, 1, move |items: Vec<u32>| {
            seen.lock().expect("lock").push(items.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        });
        let calls = (0..20u32).map(|i| {
            let batcher = batcher.clone();
            tokio::spawn(async move { (i, batcher.submit(i).await) })
        });
        for call in futures::future::join_all(calls).await {
            let (i, answer) = call.expect("task");
            assert_eq!(answer, Some(i * 2));
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "no batching happened: {sizes:?}");
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_none_and_the_batcher_goes_on() {
        let batcher = Batcher::start(4, 1, |items: Vec<u32>| async move {
            assert!(!items.contains(&13), "unlucky");
            items
        });
        assert_eq!(batcher.submit(13).await, None);
        assert_eq!(batcher.submit(7).await, Some(7));
    }
}
