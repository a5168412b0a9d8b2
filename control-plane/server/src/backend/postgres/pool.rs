//! Connections to PostgreSQL that come back: a [`Driver`] runtime drives them (so that
//! blocking callers on any thread, async ones included, can wait on them), and a connection
//! found closed — the server restarted, the network dropped it — is opened again on next use.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio_postgres::Client;
use tracing::{info, warn};

use super::super::driver::Driver;
use super::link::Link;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// With its causes: tokio-postgres's own text names the kind only ("error performing TLS
    /// handshake"), its source why.
    #[error("cannot connect to PostgreSQL: {}", with_causes(.0))]
    Connect(tokio_postgres::Error),
    #[error("the PostgreSQL driver thread has stopped")]
    Stopped,
}

/// `error` and each of its sources, `: `-separated.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Opens one connection on the driver's runtime and waits for it.
pub(super) fn connect(driver: &Driver, link: &Link) -> Result<Client, ConnectError> {
    driver
        .run(open(link.clone()))
        .ok_or(ConnectError::Stopped)?
        .map_err(ConnectError::Connect)
}

/// How long opening a connection may take when the URL does not say (`connect_timeout`): a
/// server that is away must not hold a request or a probe for the operating system's TCP
/// timeout.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `link`'s settings for a connection, with [`CONNECT_TIMEOUT`] and TCP keepalives unless
/// the URL sets them.
pub(super) fn settings(link: &Link) -> tokio_postgres::Config {
    let mut config = link.config().clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives(true);
    config
}

/// Opens one connection, driven by a task of the current runtime.
pub(super) async fn open(link: Link) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = settings(&link).connect(link.tls()).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            warn!(%error, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A fixed number of connections, taken in turn, each opened again once found closed.
#[derive(Debug)]
pub(super) struct Pool {
    link: Link,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    /// Connections opened again so far: a server restart (which may lose commits made
    /// without waiting for the WAL) shows as a change of it.
    reopened: AtomicU64,
}

/// One connection of the pool, held until dropped.
pub(super) struct Lease<'a>(MutexGuard<'a, Option<Client>>);

impl Lease<'_> {
    pub(super) fn client(&mut self) -> &mut Client {
        self.0
            .as_mut()
            .expect("a lease is only handed out with an open connection")
    }

    /// Drops the connection if it closed, so the next use opens a new one.
    pub(super) fn check(&mut self) {
        if self.0.as_ref().is_some_and(Client::is_closed) {
            *self.0 = None;
        }
    }
}

impl Pool {
    /// Opens `size` connections over `link` (at least one).
    pub(super) fn open(driver: &Driver, link: &Link, size: usize) -> Result<Self, ConnectError> {
        let mut slots = Vec::new();
        for _ in 0..size.max(1) {
            let client = connect(driver, link)?;
            slots.push(Mutex::new(Some(client)));
        }
        Ok(Self {
            link: link.clone(),
            slots,
            next: AtomicUsize::new(0),
            reopened: AtomicU64::new(0),
        })
    }

    /// How many connections were opened again so far.
    pub(super) fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::SeqCst)
    }

    /// The next connection in turn, opened again first if it had closed.
    pub(super) fn get(&self, driver: &Driver) -> Result<Lease<'_>, ConnectError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            let client = connect(driver, &self.link)?;
            self.reopened.fetch_add(1, Ordering::SeqCst);
            info!("connected to PostgreSQL again");
            *slot = Some(client);
        }
        Ok(Lease(slot))
    }
}
