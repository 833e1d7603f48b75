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
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

/// Wraps a future so that polling it does nothing (`Pending`) unless the future asked to be
/// polled since its last poll (it woke its waker) or this is the first poll, or the task polling
/// it changed. Costs one allocation for the future and one for its waker, when made.
pub(crate) struct OnWake<F> {
    future: Pin<Box<F>>,
    flag: Arc<Flag>,
    /// `flag` as a waker, made once.
    waker: Waker,
    /// The task waker stored in `flag` (compared without its lock).
    registered: Option<Waker>,
}

impl<F: Future> OnWake<F> {
    pub(crate) fn new(future: F) -> OnWake<F> {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        OnWake {
            future: Box::pin(future),
            waker: Waker::from(flag.clone()),
            flag,
            registered: None,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let w = cx.waker().clone();
            *this.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            this.registered = Some(w);
            // A wake-up meant for the former task's waker may have been lost: look anyway.
            this.flag.woken.store(true, Ordering::Relaxed);
        }
        if !this.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        this.future
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
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
