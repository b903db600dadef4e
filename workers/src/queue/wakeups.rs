//! Wake-ups for idle workers: whatever tells a worker to look for jobs now,
//! merged with the fallback poll.

use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

/// The shortest fallback poll: a zero
/// [`WorkerConfig::poll_interval`](super::WorkerConfig::poll_interval) would
/// spin.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A stream of wake-ups for an idle worker that merges whatever woke it
/// since it last looked into one item, so a burst of pushes costs one fetch.
/// `Sync` (as apalis's poll strategies must be) through a mutex that is only
/// ever taken with `&mut`.
pub(super) struct Wakeups(Mutex<BoxStream<'static, ()>>);

impl Wakeups {
    /// Merges the sources with a tick every `poll_interval` (the fallback).
    pub(super) fn new(sources: Vec<BoxStream<'static, ()>>, poll_interval: Duration) -> Self {
        let mut ticks = tokio::time::interval(poll_interval.max(MIN_POLL_INTERVAL));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks = futures::stream::unfold(ticks, |mut ticks| async move {
            ticks.tick().await;
            Some(((), ticks))
        })
        .boxed();
        let all = futures::stream::select_all(sources.into_iter().chain([ticks]));
        Self(Mutex::new(all.boxed()))
    }
}

impl Stream for Wakeups {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let stream = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let mut woken = false;
        // Drain until Pending, so that the waker is registered again.
        loop {
            match stream.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => woken = true,
                Poll::Ready(None) if woken => return Poll::Ready(Some(())),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending if woken => return Poll::Ready(Some(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
