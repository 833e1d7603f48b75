//! The parking lot: idle auto-port sessions kept out of tokio.
//!
//! An auto-port client that is idle and holds no server connection waits for nothing but its next
//! query, yet its tokio task (~640 bytes with its future), tokio's registration of its socket (~256
//! bytes) and the session's working state (~450 bytes) stay allocated: thousands of such clients
//! are what a pooler is for, and PgBouncer keeps one in under 1 KiB. So such a session *parks*
//! (`session::Dormant` says when): its task ends, its socket leaves tokio for the lot's own epoll
//! instance (mio, one thread for the whole proxy) and what the session needs to go on waits in a
//! slab, keyed by the socket's token. When the client sends bytes or closes, the lot takes the
//! record out and hands it to `resume`, which spawns the session again on the runtime; the bytes
//! waited in the socket, so the client sees nothing.
//!
//! Draining the proxy closes the parked sessions at once (they are idle), with the FATAL every idle
//! session gets.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use praetor_protocol::{encode_error_response, Severity, SqlState};
use tracing::{debug, warn};

use crate::session::Dormant;

/// The waker's token (the slab's indexes start at 0).
const WAKER: Token = Token(usize::MAX);

/// How long parking must have been quiet before the lot gives freed memory back to the OS.
const TRIM_AFTER_QUIET: Duration = Duration::from_secs(1);

/// What the lot does with a session whose client spoke: spawn it again.
pub(crate) type Resume = Box<dyn Fn(TcpStream, Box<Dormant>) + Send>;

/// The parked sessions and the epoll instance that watches their clients.
pub(crate) struct ParkingLot {
    registry: Registry,
    waker: Waker,
    closed: AtomicBool,
    /// A session parked since the lot last gave memory back.
    parked_lately: AtomicBool,
    /// Mirrors `Slots::state == Open` without the lock, for sessions deciding whether to park.
    open: AtomicBool,
    slots: Mutex<Slots>,
}

/// A slab: `free` lists the empty entries of `parked`.
#[derive(Default)]
struct Slots {
    parked: Vec<Option<(mio::net::TcpStream, Box<Dormant>)>>,
    free: Vec<usize>,
    state: State,
    len: usize,
}

/// Whether the lot takes sessions.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Open,
    /// The proxy drains: a session that would park is closed, as an idle session is.
    Draining,
    /// The lot's thread failed: sessions stay in their tasks.
    Broken,
}

/// A session the lot did not take: its client socket and state, to go on in its task.
pub(crate) type Refused = (TcpStream, Box<Dormant>);

impl ParkingLot {
    /// Creates the lot and starts its thread, which calls `resume` for each session whose client
    /// becomes readable (bytes or end of file) until [`ParkingLot::close`].
    ///
    /// Errors: the epoll instance or the thread cannot be created.
    pub fn start(resume: Resume) -> io::Result<Arc<ParkingLot>> {
        let poll = Poll::new()?;
        let lot = Arc::new(ParkingLot {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKER)?,
            closed: AtomicBool::new(false),
            parked_lately: AtomicBool::new(false),
            open: AtomicBool::new(true),
            slots: Mutex::new(Slots::default()),
        });
        let watcher = lot.clone();
        std::thread::Builder::new()
            .name("praetor-parking".into())
            .spawn(move || watcher.watch(poll, resume))?;
        Ok(lot)
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Every update leaves the slab consistent: a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks a session: `client` is its (non-blocking) socket, taken out of tokio. Once the proxy
    /// drains, the session is closed instead, as an idle session is. Errors: the lot's thread has
    /// failed; the session is handed back.
    pub fn park(&self, client: TcpStream, dormant: Box<Dormant>) -> Result<(), Refused> {
        let mut slots = self.slots();
        match slots.state {
            State::Open => {}
            State::Broken => return Err((client, dormant)),
            State::Draining => {
                drop(slots);
                say_shutdown(&mut mio::net::TcpStream::from_std(client));
                return Ok(());
            }
        }
        let mut client = mio::net::TcpStream::from_std(client);
        let index = slots.free.pop().unwrap_or(slots.parked.len());
        // Edge-triggered, but registering a socket that already has bytes reports it at once: a
        // query sent while the session was parking is not missed.
        if let Err(e) = self
            .registry
            .register(&mut client, Token(index), Interest::READABLE)
        {
            warn!(error = %e, "cannot watch an idle client; closing it");
            if index < slots.parked.len() {
                slots.free.push(index);
            }
            return Ok(());
        }
        if index == slots.parked.len() {
            slots.parked.push(Some((client, dormant)));
        } else {
            slots.parked[index] = Some((client, dormant));
        }
        slots.len += 1;
        self.parked_lately.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether sessions may park (the proxy does not drain and the lot works).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// How many sessions are parked.
    pub fn len(&self) -> usize {
        self.slots().len
    }

    /// Stops parking and closes every parked session with the shutdown FATAL. Returns how many.
    pub fn drain(&self) -> usize {
        let parked = self.take_all(State::Draining);
        let mut closed = 0;
        for (mut client, dormant) in parked.into_iter().flatten() {
            let _ = self.registry.deregister(&mut client);
            say_shutdown(&mut client);
            drop(dormant);
            closed += 1;
        }
        closed
    }

    /// Stops the lot's thread (after [`ParkingLot::drain`]: sessions still parked are dropped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            warn!(error = %e, "cannot wake the parking thread");
        }
    }

    /// Closes the lot to new sessions (`state`) and takes every parked one out.
    fn take_all(&self, state: State) -> Vec<Option<(mio::net::TcpStream, Box<Dormant>)>> {
        let mut slots = self.slots();
        slots.state = state;
        self.open.store(false, Ordering::Relaxed);
        slots.free.clear();
        slots.len = 0;
        std::mem::take(&mut slots.parked)
    }

    /// Takes the session parked at `index` out of the lot (its socket no longer watched).
    fn take(&self, index: usize) -> Option<(TcpStream, Box<Dormant>)> {
        let mut slots = self.slots();
        let (mut client, dormant) = slots.parked.get_mut(index)?.take()?;
        slots.free.push(index);
        slots.len -= 1;
        drop(slots);
        if let Err(e) = self.registry.deregister(&mut client) {
            debug!(error = %e, "cannot stop watching a parked client");
        }
        Some((client.into(), dormant))
    }

    /// The lot's thread: waits for clients to speak and resumes their sessions.
    fn watch(&self, mut poll: Poll, resume: Resume) {
        let mut events = Events::with_capacity(256);
        while !self.closed.load(Ordering::Acquire) {
            if let Err(e) = poll.poll(&mut events, Some(TRIM_AFTER_QUIET)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(error = %e, "the parking thread cannot wait for clients; resuming them all");
                let parked = self.take_all(State::Broken);
                for (client, dormant) in parked.into_iter().flatten() {
                    resume(client.into(), dormant);
                }
                return;
            }
            if events.is_empty() && self.parked_lately.swap(false, Ordering::Relaxed) {
                release_free_memory();
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                // A token freed and reused within one batch resumes its new session spuriously:
                // harmless, that session waits in its task.
                if let Some((client, dormant)) = self.take(event.token().0) {
                    resume(client, dormant);
                }
            }
        }
    }
}

/// Gives the allocator's free pages back to the OS.
///
/// Why: a session that parks frees its task, its buffers and its working state, but glibc keeps
/// freed memory mapped (it only trims the top of its heaps), so after a burst of logins the
/// proxy's RSS would stay at the burst's peak although thousands of parked clients need a fraction
/// of it. `malloc_trim(0)` releases the free pages of every arena (glibc >= 2.8, `man 3
/// malloc_trim`); it runs on the lot's thread, after a second without parking activity.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only touches the allocator's own state, under
    // its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells a parked client the proxy is shutting down (best effort: the socket is non-blocking and
/// the message small) and closes it.
fn say_shutdown(client: &mut mio::net::TcpStream) {
    let mut out = BytesMut::with_capacity(96);
    encode_error_response(
        &mut out,
        Severity::Fatal,
        SqlState::ADMIN_SHUTDOWN,
        "terminating connection: the proxy is shutting down",
    );
    let _ = client.write_all(&out);
    let _ = client.shutdown(std::net::Shutdown::Write);
}
