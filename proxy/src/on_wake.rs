//! [`Branches`]: which of a hand-written select loop's futures asked to be polled since the last
//! wake-up of its task, so that the loop polls only those.
//!
//! `tokio::select!` polls every branch each time its task wakes, whatever woke it. A read-write
//! relay ([`crate::conn`]) wakes twice per transaction (the client's query, then the server's
//! answer), and each wake-up also polled the idle other direction (a read that is not ready: the
//! socket's waiter lock and a waker comparison), the switchover watch (its `Notify` lock) and the
//! connection's fence (an atomic flag in its own allocation). (PgBouncer's event loop likewise
//! runs only the callback of the socket that is ready.)
//!
//! Every branch's waker sets its bit in one shared [`WakeSet`], so a wake-up reads one cache
//! line to learn which branches to poll. That line matters more than the instructions: with many
//! sessions on one thread, each session's state has left the CPU's first-level cache by the
//! time its next message comes. Under callgrind's cache simulation (`PRAETOR_BENCH_CALLGRIND_CACHE=1`
//! in `benches/proxy.rs`, pgbench -S -c 64) the relay's former per-branch wrappers (one flag
//! allocation and one boxed future each, and the fence's flag polled at every wake-up) were about a
//! third of the read-write port's data-cache misses.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

/// The bits of the branches woken since the loop last looked, and the task to wake.
struct WakeSet {
    bits: AtomicU32,
    /// The waker of the task that runs the loop (set at its first poll).
    task: Mutex<Option<Waker>>,
}

/// The waker a branch is polled with: sets its bit, then wakes the task.
struct Branch {
    set: Arc<WakeSet>,
    bit: u32,
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.bits.fetch_or(self.bit, Ordering::Release);
        let task = self.set.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

/// Up to 32 branches of one loop, numbered from 0: [`Branches::woken`] at each poll of the loop,
/// then each woken branch polled with [`Branches::context`]. Costs one allocation for the set and
/// one per branch (touched only when that branch is woken), when made.
pub(crate) struct Branches {
    set: Arc<WakeSet>,
    wakers: Vec<Waker>,
    /// The task waker stored in `set` (compared without its lock).
    registered: Option<Waker>,
}

impl Branches {
    /// `n` (at most 32) branches.
    pub(crate) fn new(n: u32) -> Branches {
        assert!(n <= 32, "at most 32 branches");
        let set = Arc::new(WakeSet {
            bits: AtomicU32::new(0),
            task: Mutex::new(None),
        });
        let wakers = (0..n)
            .map(|i| {
                Waker::from(Arc::new(Branch {
                    set: set.clone(),
                    bit: 1 << i,
                }))
            })
            .collect();
        Branches {
            set,
            wakers,
            registered: None,
        }
    }

    /// The branches to poll now (bit `i` for branch `i`): those whose waker fired since the last
    /// call, or all of them at the first poll and whenever the task's waker changed (a wake-up
    /// meant for the former one may have been lost). Registers `cx`'s waker.
    pub(crate) fn woken(&mut self, cx: &Context<'_>) -> u32 {
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let w = cx.waker().clone();
            *self.set.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            self.registered = Some(w);
            self.set.bits.store(0, Ordering::Relaxed);
            return u32::MAX;
        }
        self.set.bits.swap(0, Ordering::Acquire)
    }

    /// The context branch `i` is polled with: its waker marks it woken.
    pub(crate) fn context(&self, i: u32) -> Context<'_> {
        Context::from_waker(&self.wakers[i as usize])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    /// A task waker that counts its wake-ups (also for [`crate::signal`]'s tests).
    #[derive(Default)]
    pub(crate) struct CountingWake(pub(crate) AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_branch_is_polled_first_then_only_after_its_own_wake_up() {
        let mut branches = Branches::new(3);
        let task = Arc::new(CountingWake::default());
        let waker = Waker::from(task.clone());
        let cx = Context::from_waker(&waker);
        assert_eq!(
            branches.woken(&cx) & 0b111,
            0b111,
            "the first poll reaches all"
        );
        // A spurious poll of the task (something else woke it) reaches none.
        assert_eq!(branches.woken(&cx), 0);
        // Branch 1's future stored its waker; firing it marks branch 1 and wakes the task.
        let stored = branches.context(1).waker().clone();
        stored.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        branches.context(2).waker().wake_by_ref();
        assert_eq!(branches.woken(&cx), 0b110);
        assert_eq!(branches.woken(&cx), 0);
    }

    #[test]
    fn a_new_task_waker_reaches_every_branch() {
        let mut branches = Branches::new(2);
        let first = Waker::from(Arc::new(CountingWake::default()));
        let second = Waker::from(Arc::new(CountingWake::default()));
        assert_eq!(branches.woken(&Context::from_waker(&first)), u32::MAX);
        assert_eq!(branches.woken(&Context::from_waker(&first)), 0);
        assert_eq!(branches.woken(&Context::from_waker(&second)), u32::MAX);
    }

    #[tokio::test]
    async fn a_loop_over_branches_completes_with_the_one_that_is_woken() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let idle_polls = AtomicUsize::new(0);
        let mut idle = pin!(std::future::poll_fn(|_| {
            idle_polls.fetch_add(1, Ordering::SeqCst);
            Poll::<u8>::Pending
        }));
        let mut woken = pin!(async { rx.await.unwrap() });
        let mut branches = Branches::new(2);
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
        });
        let got = std::future::poll_fn(|cx| {
            let bits = branches.woken(cx);
            if bits & 1 != 0 {
                if let Poll::Ready(v) = idle.as_mut().poll(&mut branches.context(0)) {
                    return Poll::Ready(v);
                }
            }
            if bits & 2 != 0 {
                if let Poll::Ready(v) = woken.as_mut().poll(&mut branches.context(1)) {
                    return Poll::Ready(v);
                }
            }
            Poll::Pending
        })
        .await;
        assert_eq!(got, 7);
        assert_eq!(idle_polls.load(Ordering::SeqCst), 1, "only the first poll");
    }
}
