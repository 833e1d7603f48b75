//! A TCP relay on 127.0.0.1 that a test can cut, to put one client behind a network partition while
//! the server and every other client carry on.

use std::io;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections from `127.0.0.1:port` to a target address.
///
/// [`TcpRelay::cut`] closes every relayed connection and leaves new ones hanging without an answer
/// (as packets dropped by a partition would); [`TcpRelay::restore`] forwards again (connections held
/// while cut are closed then, so clients reconnect). Dropping the relay stops it and closes everything.
pub struct TcpRelay {
    /// The port clients connect to.
    pub port: u16,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TcpRelay {
    /// Starts relaying a free port to `target` (`host:port`).
    pub async fn start(target: &str) -> io::Result<TcpRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, cut_rx) = watch::channel(false);
        let target = target.to_string();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target.clone(), cut_rx.clone()));
            }
        });
        Ok(TcpRelay { port, cut, task })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts the link: relayed connections close, new ones get no answer.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection until either side closes, the link is cut or the relay is dropped.
async fn relay(mut client: TcpStream, target: String, mut cut: watch::Receiver<bool>) {
    if *cut.borrow_and_update() {
        // Hold the connection unanswered until the link is restored (or the relay dropped).
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}
