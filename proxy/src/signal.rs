//! [`Signal`]: a one-way shutdown signal (the drain, the stop) that every session checks at every
//! wake-up, with one atomic load.
//!
//! A `CancellationToken` costs more where thousands of sessions poll it: its `is_cancelled` takes
//! the token's mutex and its `cancelled()` future, polled again while it waits, takes the lock of
//! the token's `Notify` to compare wakers. Both locks are shared by every session of the process,
//! on every session thread. Under callgrind (pgbench -S -c 64, `pool_mode: transaction`) the
//! serving loop's two shutdown futures were ~650 instructions and ~2 first-level data-cache misses
//! per transaction, for a signal that fires once in the process's life.
//!
//! [`Fired`] polls the token's future only when the task's waker changed since it last did (the
//! future keeps the waker it registered; [`Signal::fire`] wakes it); otherwise it reads the flag.
//! The same pattern as the router's per-connection [`crate::router::Fence`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Fired once, never cleared. Clones share it. Its token is private: only [`Signal::fire`] fires
/// it, so the flag and the token always agree ([`Signal::child_token`] hands out tokens that wait
/// for it and cannot fire it).
#[derive(Clone, Default)]
pub(crate) struct Signal {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    pub(crate) fn new() -> Signal {
        Signal::default()
    }

    /// Fires the signal: sets the flag, then wakes every waiter (so a waiter woken reads it set).
    pub(crate) fn fire(&self) {
        self.inner.fired.store(true, Ordering::Release);
        self.inner.token.cancel();
    }

    /// Whether it fired: one atomic load.
    pub(crate) fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// A future that resolves once the signal fired; cheap to poll again and again from the same
    /// task (see the module's documentation).
    pub(crate) fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            wait: self.inner.token.cancelled(),
            registered: None,
        }
    }

    /// A token cancelled when the signal fires, for code that takes a `CancellationToken`
    /// (cancelling it does not fire the signal).
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.inner.token.child_token()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Signal::fired`].
    pub(crate) struct Fired<'a> {
        signal: &'a Signal,
        #[pin]
        wait: WaitForCancellationFuture<'a>,
        // The waker `wait` registered at its last poll.
        registered: Option<Waker>,
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            // `wait` holds a waker that wakes this task; `fire` sets the flag before it wakes it.
            return Poll::Pending;
        }
        let polled = this.wait.poll(cx);
        *this.registered = polled.is_pending().then(|| cx.waker().clone());
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_wake::tests::CountingWake;

    fn context_of(task: &Arc<CountingWake>) -> Waker {
        Waker::from(task.clone())
    }

    #[test]
    fn a_waiting_future_follows_the_last_waker_and_is_woken_and_ready_once_fired() {
        let signal = Signal::new();
        let mut fired = std::pin::pin!(signal.fired());
        let first = Arc::new(CountingWake::default());
        let waker = context_of(&first);
        let mut cx = Context::from_waker(&waker);
        assert!(fired.as_mut().poll(&mut cx).is_pending());
        assert!(
            fired.as_mut().poll(&mut cx).is_pending(),
            "polled again with the same waker"
        );
        // Another task polls it now: the registration moves to that task's waker.
        let second = Arc::new(CountingWake::default());
        let waker2 = context_of(&second);
        let mut cx2 = Context::from_waker(&waker2);
        assert!(fired.as_mut().poll(&mut cx2).is_pending());
        assert!(!signal.is_fired());
        signal.fire();
        assert!(signal.is_fired());
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the last waker is woken"
        );
        assert_eq!(
            first.0.load(Ordering::SeqCst),
            0,
            "the first one was replaced"
        );
        assert!(fired.as_mut().poll(&mut cx2).is_ready());
        // A future made after the signal fired is ready at once; so is a child token.
        assert!(std::pin::pin!(signal.fired()).poll(&mut cx).is_ready());
        assert!(signal.child_token().is_cancelled());
    }

    #[test]
    fn cancelling_a_child_token_does_not_fire_the_signal() {
        let signal = Signal::new();
        signal.child_token().cancel();
        assert!(!signal.is_fired());
        let clone = signal.clone();
        clone.fire();
        assert!(signal.is_fired(), "clones share the signal");
    }
}
