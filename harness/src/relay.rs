//! A TCP relay that a test can cut, slow down or make lossy, to put one client behind a network
//! partition or a bad link while the server and every other client carry on.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long a "lost" chunk is held before it goes on: Linux's minimum TCP retransmission timeout
/// (`TCP_RTO_MIN`, 200 ms), what a dropped segment costs a TCP stream at best.
pub const LOSS_PENALTY: Duration = Duration::from_millis(200);

/// Forwards connections from `<bind>:port` to a target address.
///
/// [`TcpRelay::cut`] closes every relayed connection and leaves new ones hanging without an answer
/// (as packets dropped by a partition would); [`TcpRelay::restore`] forwards again (connections held
/// while cut are closed then, so clients reconnect). [`TcpRelay::set_delay`] and
/// [`TcpRelay::set_loss`] degrade the link instead (this kernel has no `tc netem`). Dropping the
/// relay stops it and closes everything.
pub struct TcpRelay {
    /// The port clients connect to.
    pub port: u16,
    bind: String,
    cut: watch::Sender<bool>,
    link: Arc<Link>,
    task: JoinHandle<()>,
}

/// The link's quality, shared by every relayed connection (read per chunk, so changes apply at once).
#[derive(Default)]
struct Link {
    /// One-way delay added to every chunk, microseconds.
    delay_us: AtomicU64,
    /// Probability a chunk is "lost", in millionths.
    loss_ppm: AtomicU64,
}

impl TcpRelay {
    /// Starts relaying a free port of 127.0.0.1 to `target` (`host:port`).
    pub async fn start(target: &str) -> io::Result<TcpRelay> {
        TcpRelay::start_on("127.0.0.1", target).await
    }

    /// Starts relaying a free port of address `bind` (e.g. a [`crate::netns::Network::gateway`],
    /// which every host of that network reaches) to `target` (`host:port`).
    pub async fn start_on(bind: &str, target: &str) -> io::Result<TcpRelay> {
        let listener = TcpListener::bind((bind, 0)).await?;
        TcpRelay::serve(listener, bind, target, None)
    }

    /// Starts relaying a free port of `bind` inside network namespace host `host` to `target`
    /// (an `ip:port`), with every socket of the relay in that host: a process of the host reaches
    /// the relay on `bind` (e.g. 127.0.0.1, never affected by the host's faults), and the relay's
    /// connections to `target` leave from the host's address, so the host's network faults
    /// (silence, partitions) apply to them as to the process's own connections.
    ///
    /// Errors: the namespace cannot be joined, the port cannot be bound.
    pub async fn start_in(
        host: &crate::netns::Host,
        bind: &str,
        target: &str,
    ) -> io::Result<TcpRelay> {
        let addr = bind.to_string();
        let std_listener = host
            .run(move || {
                let l = std::net::TcpListener::bind((addr.as_str(), 0))?;
                l.set_nonblocking(true)?;
                Ok::<_, io::Error>(l)
            })
            .map_err(io::Error::other)??;
        let listener = TcpListener::from_std(std_listener)?;
        TcpRelay::serve(listener, bind, target, Some(host.clone()))
    }

    fn serve(
        listener: TcpListener,
        bind: &str,
        target: &str,
        host: Option<crate::netns::Host>,
    ) -> io::Result<TcpRelay> {
        let port = listener.local_addr()?.port();
        let (cut, cut_rx) = watch::channel(false);
        let link = Arc::new(Link::default());
        let target = target.to_string();
        let shared = link.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(
                    client,
                    target.clone(),
                    host.clone(),
                    cut_rx.clone(),
                    shared.clone(),
                ));
            }
        });
        Ok(TcpRelay {
            port,
            bind: bind.to_string(),
            cut,
            link,
            task,
        })
    }

    /// `<bind>:<port>`: what clients connect to.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.bind, self.port)
    }

    /// Cuts the link: relayed connections close, new ones get no answer.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Delays every chunk of bytes by `delay` in each direction (so a round trip gains twice
    /// `delay`), keeping their order. `Duration::ZERO` restores a fast link.
    pub fn set_delay(&self, delay: Duration) {
        self.link
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Makes a fraction `rate` (0.0 to 1.0) of chunks "lost": a lost chunk is held
    /// [`LOSS_PENALTY`] longer and everything behind it waits (head-of-line blocking), which is
    /// what a dropped segment does to a TCP stream; bytes are never dropped, since the relay's own
    /// TCP would have retransmitted them. 0.0 restores a clean link.
    pub fn set_loss(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        self.link.loss_ppm.store(ppm, Ordering::Relaxed);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection until either side closes, the link is cut or the relay is dropped.
async fn relay(
    client: TcpStream,
    target: String,
    host: Option<crate::netns::Host>,
    mut cut: watch::Receiver<bool>,
    link: Arc<Link>,
) {
    if *cut.borrow_and_update() {
        // Hold the connection unanswered until the link is restored (or the relay dropped).
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let server = match host {
        None => TcpStream::connect(&target).await,
        Some(h) => connect_in(h, &target).await,
    };
    let Ok(server) = server else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pipe(cr, sw, link.clone()) => {}
        _ = pipe(sr, cw, link) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}

/// Connects to `target` (an `ip:port`) from a socket made inside namespace host `host` (a
/// socket belongs to the namespace of the thread that creates it).
async fn connect_in(host: crate::netns::Host, target: &str) -> io::Result<TcpStream> {
    let addr: std::net::SocketAddr = target
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{target}: {e}")))?;
    let socket = tokio::task::spawn_blocking(move || {
        host.run(move || {
            if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        })
    })
    .await
    .map_err(io::Error::other)?
    .map_err(io::Error::other)??;
    socket.connect(addr).await
}

/// Copies `from` to `to`, each chunk released after the link's delay (plus the loss penalty when
/// it is "lost"), in order.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut rng = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let mut last = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut at =
                Instant::now() + Duration::from_micros(link.delay_us.load(Ordering::Relaxed));
            // xorshift64: a coin per chunk, without a dependency for test randomness.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng % 1_000_000 < link.loss_ppm.load(Ordering::Relaxed) {
                at += LOSS_PENALTY;
            }
            // In order: never before the chunk ahead of it.
            at = at.max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    // The reader ends at EOF, dropping the sender; the writer then flushes what is queued.
    tokio::join!(reader, writer);
}
