//! A UDP proxy on loopback between one client and a server, for network faults made to
//! happen: it forwards datagrams both ways, in order, after a delay, and partitions the link (drops
//! everything, both ways) on command or once the server has sent a given number of bytes
//! through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the proxy does and has done; shared with the test.
#[derive(Debug, Default)]
pub struct Link {
    /// Drops every datagram, both ways.
    pub partitioned: AtomicBool,
    /// Delay added to every datagram, in microseconds.
    pub delay_us: AtomicU64,
    /// Once the server has sent this many bytes through the proxy, it partitions the link
    /// (0: never).
    pub partition_after_bytes: AtomicU64,
    /// Bytes the server sent through the proxy.
    pub downstream_bytes: AtomicU64,
    /// Datagrams dropped while partitioned.
    pub dropped: AtomicU64,
}

impl Link {
    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct UdpProxy {
    /// Where the client sends to.
    pub addr: SocketAddr,
    pub link: Arc<Link>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl UdpProxy {
    /// Forwards between whoever sends to [`UdpProxy::addr`] first and `server`.
    pub fn start(server: SocketAddr) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let link = Arc::new(Link::default());
        let (client_side, server_side) = runtime.block_on(async {
            let client_side = UdpSocket::bind(("127.0.0.1", 0)).await?;
            let server_side = UdpSocket::bind(("127.0.0.1", 0)).await?;
            server_side.connect(server).await?;
            Ok::<_, std::io::Error>((Arc::new(client_side), Arc::new(server_side)))
        })?;
        let addr = client_side.local_addr()?;
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        // Client → server: datagrams go out in the order they came, each after the delay.
        let (upstream, mut to_server) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        {
            let to = server_side.clone();
            runtime.spawn(async move {
                while let Some((due, datagram)) = to_server.recv().await {
                    tokio::time::sleep_until(due).await;
                    let _ = to.send(&datagram).await;
                }
            });
        }
        {
            let (from, link, client) = (client_side.clone(), link.clone(), client.clone());
            runtime.spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, peer)) = from.recv_from(&mut buf).await {
                    *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
                    if link.partitioned.load(Ordering::Relaxed) {
                        link.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let due = Instant::now() + link.delay();
                    if upstream.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            });
        }
        // Server → client, the same way.
        let (downstream, mut to_client) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        {
            let (to, client) = (client_side, client.clone());
            runtime.spawn(async move {
                while let Some((due, datagram)) = to_client.recv().await {
                    tokio::time::sleep_until(due).await;
                    let peer = *client.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(peer) = peer {
                        let _ = to.send_to(&datagram, peer).await;
                    }
                }
            });
        }
        {
            let (from, link) = (server_side, link.clone());
            runtime.spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = from.recv(&mut buf).await {
                    let sent = link.downstream_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let threshold = link.partition_after_bytes.load(Ordering::Relaxed);
                    if threshold > 0 && sent + n as u64 >= threshold {
                        link.partition_after_bytes.store(0, Ordering::Relaxed);
                        link.partitioned.store(true, Ordering::Relaxed);
                    }
                    if link.partitioned.load(Ordering::Relaxed) {
                        link.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let due = Instant::now() + link.delay();
                    if downstream.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Self {
            addr,
            link,
            runtime: Some(runtime),
        })
    }

    /// Partitions the link once the server has sent `bytes` more through it.
    pub fn partition_after(&self, bytes: u64) {
        let sent = self.link.downstream_bytes.load(Ordering::Relaxed);
        self.link
            .partition_after_bytes
            .store(sent.saturating_add(bytes).max(1), Ordering::Relaxed);
    }

    pub fn partitioned(&self) -> bool {
        self.link.partitioned.load(Ordering::Relaxed)
    }

    /// Heals a partition.
    pub fn heal(&self) {
        self.link.partitioned.store(false, Ordering::Relaxed);
    }

    /// Adds `delay` to every datagram from now on.
    pub fn delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.link.delay_us.store(us, Ordering::Relaxed);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
