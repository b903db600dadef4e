//! The background loops of an application (receipt pruning, planner
//! statistics, queue gauges, the tenant-change listener, the metrics
//! listener, the outbox sweep), tracked so that
//! [`crate::app::Application::stop`] stops every one of them before the
//! database pool is closed under them.
//!
//! Each loop runs until it ends by itself or [`Background::stop`] is
//! called; a stopped loop is dropped at its next `.await`, so a statement
//! in flight is abandoned with its connection, never half-applied (each
//! loop's writes are single statements).

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A set of background loops that stop together.
#[derive(Debug, Clone, Default)]
pub struct Background {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Background {
    /// Runs `task` on the current runtime until it ends or [`Self::stop`].
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => tracing::debug!(task = name, "background task stopped"),
                () = task => {}
            }
        });
    }

    /// Stops every loop without waiting for them (each ends at its next
    /// `.await`).
    pub fn cancel(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Stops every loop and waits until each has ended.
    pub async fn stop(&self) {
        let running = self.tasks.len();
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!(tasks = running, "background tasks stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Sets its flag when dropped: the loop it lives in has ended.
    struct Ended(Arc<AtomicBool>);

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn stop_returns_only_after_every_loop_has_ended() {
        let background = Background::default();
        let ticks = Arc::new(AtomicUsize::new(0));
        let mut flags = Vec::new();
        for _ in 0..3 {
            let ended = Arc::new(AtomicBool::new(false));
            flags.push(Arc::clone(&ended));
            let ticks = Arc::clone(&ticks);
            background.spawn("test loop", async move {
                let _guard = Ended(ended);
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        while ticks.load(Ordering::SeqCst) < 6 {
            tokio::task::yield_now().await;
        }
        background.stop().await;
        assert!(flags.iter().all(|f| f.load(Ordering::SeqCst)));
        let after = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), after, "a loop ran after stop");
    }

    #[tokio::test]
    async fn a_loop_spawned_after_stop_does_not_run() {
        let background = Background::default();
        background.stop().await;
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        background.spawn("late loop", async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            flag.store(true, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!ran.load(Ordering::SeqCst));
    }
}
