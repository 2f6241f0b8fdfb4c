//! A TCP forwarder in front of a real API server, to cut the network between downsync and a
//! cluster and restore it: every open connection is dropped and new ones are refused while cut.
//! TLS passes through untouched (the test clusters' certificates name 127.0.0.1).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running forwarder.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Forwards a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, conns) = (Arc::clone(&cut), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap_or_else(PoisonError::into_inner).push(task);
            }
        });
        Ok(Self { addr, cut, connections, accept })
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for task in self.connections.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The `server:` address of a kubeconfig served on 127.0.0.1, and the kubeconfig text with that
/// server moved to `to`.
pub fn reroute(kubeconfig: &str, to: SocketAddr) -> Result<(SocketAddr, String)> {
    let mut from = None;
    let text = kubeconfig
        .lines()
        .map(|l| match l.split_once("server:") {
            Some((indent, url)) => {
                let hostport = url.trim().trim_start_matches("https://").trim_end_matches('/');
                from = hostport.parse::<SocketAddr>().ok();
                format!("{indent}server: https://{to}")
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((from.context("the kubeconfig has no https://IP:PORT server")?, text))
}
