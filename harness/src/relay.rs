//! A TCP relay that can be cut: puts one process's connections to a service (one agent's to etcd)
//! behind a switch, to simulate a network partition of a single node on one machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::free_port;

/// Forwards `127.0.0.1:<port>` to a target; [`Relay::cut`] drops every open connection and refuses
/// new ones (accepted and closed at once) until [`Relay::restore`].
pub struct Relay {
    /// The port clients connect to.
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying a free port on 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let up = Arc::new(AtomicBool::new(true));
        let (generation, gen_rx) = watch::channel(0u64);
        let up2 = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = gen_rx.clone();
                let born = *cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut c, mut s) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        _ = async {
                            while cut.changed().await.is_ok() {
                                if *cut.borrow() != born { break; }
                            }
                        } => {}
                    }
                });
            }
        });
        Ok(Relay {
            port,
            up,
            generation,
            task,
        })
    }

    /// Cuts the link: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
