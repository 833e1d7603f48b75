//! [`OnWake`]: a future its task polls only once the future's own waker fired.
//!
//! `tokio::select!` polls every branch each time its task wakes, whatever woke it. A read-write
//! relay ([`crate::conn`]) wakes twice per transaction (the client's query, then the server's
//! answer), and each wake-up also polled the idle other direction (a read that is not ready: the
//! socket's waiter lock and a waker comparison) and the switchover watch (its `Notify` lock),
//! which were most of tokio's share of the relay's instructions. Wrapped, a branch that nothing
//! woke costs one atomic swap per wake-up. (PgBouncer's event loop likewise runs only the
//! callback of the socket that is ready.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// The waker an [`OnWake`] gives its future: marks it woken, then wakes the task.
///
/// The task's waker sits behind a mutex, taken once per wake-up and never contended in practice
/// (the polling side takes it only when the task's waker changes, i.e. at the first poll). An
/// `AtomicWaker` (`futures`, `atomic-waker`) was considered and costs more here: its `wake` takes
/// the waker out (two atomic operations), so every poll has to register again (two more, and a
/// clone of the task's waker after each wake-up), where the mutex costs two per wake-up and
/// nothing per poll. A wake-up that finds the flag already set skips the mutex: the wake-up that
/// set it woke the task, which has not polled yet.
struct Flag {
    woken: AtomicBool,
    /// The waker of the task that polls the [`OnWake`] (set at its first poll).
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Already set: the wake-up that set it woke the task, which has not looked yet.
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A branch's wake-up flag, kept across passes of a `select!` whose branch futures are made anew
/// at each pass (the auto port's session loop): [`OnWake`] without a future of its own. Each pass
/// [`arm`](Self::arm)s it, so that the pass's first poll reaches the new future (which registers
/// this flag's waker); later polls within the pass reach it only after that waker fired. Costs
/// two allocations when made, none per pass.
pub(crate) struct WakeFlag {
    flag: Arc<Flag>,
    /// `flag` as a waker, made once.
    waker: Waker,
    /// The task waker stored in `flag` (compared without its lock).
    registered: Option<Waker>,
}

impl WakeFlag {
    pub(crate) fn new() -> WakeFlag {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        WakeFlag {
            waker: Waker::from(flag.clone()),
            flag,
            registered: None,
        }
    }

    /// Lets the next [`poll`](Self::poll) through, whether or not the waker fired: for a new
    /// future, which has registered nothing yet.
    pub(crate) fn arm(&mut self) {
        self.flag.woken.store(true, Ordering::Relaxed);
    }

    /// Calls `poll` with this flag's waker if it fired since the last call (or it was armed, or
    /// the task polling changed); else `Pending`, without calling it.
    pub(crate) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let w = cx.waker().clone();
            *self.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            self.registered = Some(w);
            // A wake-up meant for the former task's waker may have been lost: look anyway.
            self.flag.woken.store(true, Ordering::Relaxed);
        }
        if !self.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        poll(&mut Context::from_waker(&self.waker))
    }
}

/// Wraps a future so that polling it does nothing (`Pending`) unless the future asked to be
/// polled since its last poll (it woke its waker) or this is the first poll, or the task polling
/// it changed. Costs one allocation for the future and two for its waker, when made.
pub(crate) struct OnWake<F> {
    future: Pin<Box<F>>,
    wake: WakeFlag,
}

impl<F: Future> OnWake<F> {
    pub(crate) fn new(future: F) -> OnWake<F> {
        OnWake {
            future: Box::pin(future),
            wake: WakeFlag::new(),
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let future = &mut this.future;
        this.wake.poll(cx, |cx| future.as_mut().poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, registering the waker it is given.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[derive(Default)]
    struct CountingWake(AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_then_only_after_its_own_wake_up() {
        let (polls, ready, inner_waker) = Default::default();
        let probe = Probe {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
            waker: Arc::clone(&inner_waker),
        };
        let mut wrapped = OnWake::new(probe);
        let task = Arc::new(CountingWake::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll reaches the future"
        );
        // Spurious polls of the task (another branch woke it) do not reach the future.
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // The future's own wake-up wakes the task and lets the next poll through.
        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_task_waker_lets_the_next_poll_through() {
        let (polls, ready, inner_waker) = Default::default();
        let probe = Probe {
            polls: Arc::clone(&polls),
            ready,
            waker: inner_waker,
        };
        let mut wrapped = OnWake::new(probe);
        let first = Waker::from(Arc::new(CountingWake::default()));
        assert!(Pin::new(&mut wrapped)
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        let second = Waker::from(Arc::new(CountingWake::default()));
        assert!(Pin::new(&mut wrapped)
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_flag_lets_a_poll_through_when_armed_or_woken_and_skips_the_mutex_when_set() {
        let task = Arc::new(CountingWake::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut flag = WakeFlag::new();
        let inner: Arc<Mutex<Option<Waker>>> = Default::default();
        let mut calls = 0;
        let mut poll = |flag: &mut WakeFlag, cx: &mut Context<'_>| {
            flag.poll(cx, |inner_cx| {
                calls += 1;
                *inner.lock().unwrap() = Some(inner_cx.waker().clone());
                Poll::<()>::Pending
            })
        };
        assert!(poll(&mut flag, &mut cx).is_pending());
        assert!(poll(&mut flag, &mut cx).is_pending());
        // Armed (a new pass, a new future): the next poll goes through, once.
        flag.arm();
        assert!(poll(&mut flag, &mut cx).is_pending());
        assert!(poll(&mut flag, &mut cx).is_pending());
        // Woken twice before the task looked: the task is woken once, the next poll goes through.
        let w = inner.lock().unwrap().take().unwrap();
        w.wake_by_ref();
        w.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut flag, &mut cx).is_pending());
        assert!(poll(&mut flag, &mut cx).is_pending());
        drop(poll);
        assert_eq!(calls, 3, "the first poll, the armed one, the woken one");
    }

    #[tokio::test]
    async fn a_select_of_wrapped_futures_completes_with_the_one_that_is_woken() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let idle = OnWake::new(std::future::pending::<u8>());
        let woken = OnWake::new(async { rx.await.unwrap() });
        tokio::pin!(idle, woken);
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
        });
        let got = tokio::select! {
            v = &mut idle => v,
            v = &mut woken => v,
        };
        assert_eq!(got, 7);
    }
}
