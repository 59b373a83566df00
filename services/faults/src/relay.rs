//! A TCP relay in front of the fake provider, which can refuse connections for a while:
//! the provider's host gone, not merely answering errors.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct Relay {
    pub port: u16,
    target: SocketAddr,
    /// Accepts and relays; aborting it closes the listener and every relayed
    /// connection (their tasks live in its `JoinSet`).
    serving: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays a free local port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            port,
            target,
            serving: Some(tokio::spawn(serve(listener, target))),
        })
    }

    /// From now on connections are refused, and those open are closed.
    pub fn refuse(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }

    /// Accepts connections again, on the same port.
    pub async fn accept(&mut self) -> anyhow::Result<()> {
        self.refuse();
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        self.serving = Some(tokio::spawn(serve(listener, self.target)));
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.refuse();
    }
}

async fn serve(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
