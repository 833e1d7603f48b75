//! The session threads: client sessions run on `n` single-threaded tokio runtimes, one OS thread
//! each, handed out in turn as clients connect ([`Proxy::with_workers`]). The listeners, the DCS
//! feed, the fencing handshake, the admin console and the metrics server stay on the runtime that
//! calls [`Proxy::serve`].
//!
//! Why not tokio's multi-threaded scheduler for sessions: a relayed round trip is two tiny reads and
//! two tiny writes, and the work-stealing scheduler adds cross-thread wake-ups (an idle worker is
//! woken to look for work whenever another gets some) to each. A session bound to one thread is
//! woken by that thread's epoll only. benches/proxy.rs, select-only through the read-write port on
//! a 2-CPU machine shared with PostgreSQL and pgbench: 0.69-0.75x direct with one session thread,
//! 0.64-0.73x with two, 0.62-0.68x with the multi-threaded scheduler (paired runs, 2 rounds each).
//!
//! A session stays on its thread for its whole life (a parked auto-port session resumes on the next
//! thread in turn). Pooled server connections may be used by sessions of any thread: tokio I/O
//! objects work from any runtime while the one that registered them runs, and these all run until
//! `serve` returns.
//!
//! [`Proxy::with_workers`]: crate::Proxy::with_workers
//! [`Proxy::serve`]: crate::Proxy::serve

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the session thread this is ([`Workers::start`]'s `i`); [`OTHER_THREAD`] on
    /// any other thread.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(OTHER_THREAD) };
}

/// [`current`] on a thread that is not a session thread.
pub(crate) const OTHER_THREAD: usize = usize::MAX;

/// The index of the session thread the caller runs on, or [`OTHER_THREAD`].
pub(crate) fn current() -> usize {
    WORKER.with(|w| w.get())
}

/// The session threads; dropping this stops them, dropping the tasks still on them.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping a sender ends its thread's `block_on`.
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` (at least one) threads named `praetor-proxy-<i>`, each running a single-threaded
    /// runtime with I/O and timers. Errors: the runtime or the thread could not be created (out of
    /// file descriptors, threads or memory); threads already started are stopped.
    pub(crate) fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("praetor-proxy-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(i));
                    // A current-thread runtime runs its spawned tasks while it blocks on something.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.handles.push(handle);
            workers.stops.push(stop);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The runtime the next session goes to (round robin).
    pub(crate) fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            // Stopping drops the remaining tasks (closing their sockets): quick, nothing to wait for.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_handed_out_in_turn_and_run_on_their_own_threads() {
        let workers = Workers::start(2).expect("threads start");
        let names: Vec<String> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                workers.next().spawn(async move {
                    let name = std::thread::current().name().map(str::to_string);
                    let name = name.unwrap_or_default();
                    assert_eq!(name, format!("praetor-proxy-{}", current()));
                    let _ = tx.send(name);
                });
                rx.recv().expect("the task ran")
            })
            .collect();
        assert_eq!(
            names,
            [
                "praetor-proxy-0",
                "praetor-proxy-1",
                "praetor-proxy-0",
                "praetor-proxy-1"
            ]
        );
    }

    #[test]
    fn dropping_the_workers_stops_their_threads_and_drops_pending_tasks() {
        let workers = Workers::start(1).expect("threads start");
        let (tx, rx) = oneshot::channel::<()>();
        workers.next().spawn(async move {
            // Never completes on its own; holds `tx` until the runtime drops the task.
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert!(rx.blocking_recv().is_err(), "the pending task was dropped");
    }
}
