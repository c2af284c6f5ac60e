//! Bounded admission: a semaphore whose queue of waiters has a limit.
//!
//! Every wait in the service has a bound (the catalogue's writer lock, the
//! search slots): a caller who finds the queue full is refused at once
//! instead of adding to a wait nobody can see the end of, so overload shows
//! up as `RESOURCE_EXHAUSTED` at the edge rather than as latency and memory
//! that grow with the load.
//!
//! Permits are owned (`OwnedSemaphorePermit`) so they can move into the
//! blocking task that does the work. That is what makes cancellation safe:
//! if the caller's future is dropped (deadline, disconnect, shutdown) while
//! the blocking work runs, the permit is released only when the work is
//! done, so the next holder never overlaps it.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A caller was refused because the queue it would have joined was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("overloaded: {max_waiting} {what} already waiting; retry later")]
pub struct Busy {
    pub what: &'static str,
    pub max_waiting: usize,
}

#[derive(Debug)]
pub struct Gate {
    what: &'static str,
    permits: Arc<Semaphore>,
    /// Callers currently waiting for a permit; at most `max_waiting` (a
    /// caller that would exceed it is refused and never counted).
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Decrements the waiter count however the wait ends, including by the
/// waiting future being dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// `permits` holders at once, `max_waiting` callers queued behind them.
    pub fn new(what: &'static str, permits: usize, max_waiting: usize) -> Self {
        Self {
            what,
            permits: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A permit, waiting for one if the queue has room; `Busy` at once if
    /// it has none.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(permit);
        }
        let busy = Busy {
            what: self.what,
            max_waiting: self.max_waiting,
        };
        let before = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiting).then_some(n + 1)
            });
        if before.is_err() {
            return Err(busy);
        }
        let _waiting = Waiting(&self.waiting);
        // `close` is never called on this semaphore, so acquiring cannot fail.
        Ok(Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed"))
    }

    /// Callers waiting now (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_dropped_waiter_frees_its_place() {
        let gate = Arc::new(Gate::new("writers", 1, 1));
        let held = gate
            .enter()
            .await
            .expect("the first caller gets the permit");
        // One waiter fits in the queue ...
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.enter().await.map(drop) }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // ... a second is refused without waiting.
        assert_eq!(
            gate.enter().await.err(),
            Some(Busy {
                what: "writers",
                max_waiting: 1
            })
        );
        // Cancelling the waiter frees its place in the queue.
        waiter.abort();
        assert!(waiter.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(gate.waiting(), 0);
        let next = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.enter().await.map(drop) }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert_eq!(next.await.expect("the waiter runs"), Ok(()));
        assert_eq!(gate.waiting(), 0);
    }
}
