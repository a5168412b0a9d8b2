//! The local API's connections: a cap on how many are open, and deadlines for a request's head
//! and body. One sweeper task keeps them on a coarse clock (a tick every
//! [`SWEEP_INTERVAL`]), so a request costs a few atomic stores and no timer of its own.
//!
//! Each connection is in one [`Phase`]: idle between requests, reading a request's head (from
//! its first byte), reading its body (from the end of the head), or busy (the handler runs and
//! answers). A head or body that takes longer than its deadline closes the connection. When
//! every slot is taken, a new connection evicts the longest-idle one; if none is idle, the new
//! one is closed at once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};

/// How often the sweeper reads the clock and checks the deadlines.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// `[api]` in `agent.toml`: bounds on the local API's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Most open connections; beyond it the longest-idle one is closed for a new one.
    pub max_connections: usize,
    /// Longest time from a request's first byte to the end of its head.
    pub header_timeout_ms: u64,
    /// Longest time from the end of a request's head to the end of its body.
    pub body_timeout_ms: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
        }
    }
}

/// Where a connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Idle = 0,
    Head = 1,
    Body = 2,
    Busy = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Phase::Head,
            2 => Phase::Body,
            3 => Phase::Busy,
            _ => Phase::Idle,
        }
    }
}

/// Why the sweeper closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    Head,
    Body,
}

/// Whether a connection in `phase` since `since_ms` is past its deadline at `now_ms`.
pub fn overdue(phase: Phase, since_ms: u64, now_ms: u64, limits: &ApiLimits) -> Option<Overdue> {
    let waited = now_ms.saturating_sub(since_ms);
    match phase {
        Phase::Head if waited > limits.header_timeout_ms => Some(Overdue::Head),
        Phase::Body if waited > limits.body_timeout_ms => Some(Overdue::Body),
        _ => None,
    }
}

/// The connection to close for a new one when every slot is taken: the one idle longest.
/// `None`: none is idle, and the new connection is refused.
pub fn evictee(open: impl IntoIterator<Item = (u64, Phase, u64)>) -> Option<u64> {
    open.into_iter()
        .filter(|&(_, phase, _)| phase == Phase::Idle)
        .min_by_key(|&(id, _, since)| (since, id))
        .map(|(id, _, _)| id)
}

/// Milliseconds since the server started, as of the sweeper's last tick.
#[derive(Debug)]
struct CoarseClock {
    start: Instant,
    now_ms: AtomicU64,
}

impl CoarseClock {
    fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    fn tick(&self) -> u64 {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now_ms.store(now, Ordering::Relaxed);
        now
    }
}

/// One open connection as the sweeper sees it.
#[derive(Debug)]
pub struct Tracked {
    phase: AtomicU8,
    since_ms: AtomicU64,
    clock: Arc<CoarseClock>,
    /// Woken when the connection must close.
    close: Notify,
    /// HTTP/2 (multiplexed): the calls open on the connection (it is `Busy` while there are
    /// any; counted and phased under one lock, as calls end on other threads), and the
    /// bytes of the connection preface still to come (its head: from then on, bytes alone —
    /// pings, window updates — start nothing).
    streams: Mutex<usize>,
    preface_left: AtomicUsize,
    multiplexed: AtomicBool,
    /// Told to close: the sweeper counts it once, however long its closing takes.
    closing: AtomicBool,
    /// Told to close after the answers already made have gone out (HTTP/2's GOAWAY).
    graceful: AtomicBool,
}

/// The client's HTTP/2 connection preface and the header of the SETTINGS frame after it.
pub const HTTP2_PREFACE: usize = 24 + 9;

impl Tracked {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn enter(&self, phase: Phase) {
        self.since_ms.store(self.clock.now(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, usize> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` bytes arrived: an idle connection starts reading a request's head (HTTP/2: its
    /// preface; once the preface is in, it waits for calls as an idle one does).
    fn bytes_arrived(&self, n: usize) {
        if !self.multiplexed.load(Ordering::Relaxed) {
            if self.phase() == Phase::Idle {
                self.enter(Phase::Head);
            }
            return;
        }
        let left = self.preface_left.load(Ordering::Relaxed);
        if left == 0 {
            return;
        }
        let rest = left.saturating_sub(n);
        self.preface_left.store(rest, Ordering::Relaxed);
        let streams = self.streams();
        if rest == 0 && *streams == 0 {
            self.enter(Phase::Idle);
        } else if rest > 0 && self.phase() == Phase::Idle {
            self.enter(Phase::Head);
        }
    }

    /// The head was read; the handler reads the body next, unless there is none.
    pub fn head_read(&self, body_follows: bool) {
        self.enter(if body_follows {
            Phase::Body
        } else {
            Phase::Busy
        });
    }

    /// The handler answered.
    pub fn answered(&self) {
        self.enter(Phase::Idle);
    }

    /// The connection speaks HTTP/2: its head is the connection preface, then calls come
    /// and go on it.
    pub fn expect_http2(&self) {
        self.preface_left.store(HTTP2_PREFACE, Ordering::Relaxed);
        self.multiplexed.store(true, Ordering::Relaxed);
    }

    /// HTTP/2: a call's head arrived (its message has a deadline of its own); the connection
    /// is busy until its last call ends.
    pub fn stream_opened(&self) {
        let mut streams = self.streams();
        *streams += 1;
        self.preface_left.store(0, Ordering::Relaxed);
        self.enter(Phase::Busy);
    }

    /// HTTP/2: a call ended, answered or dropped; the last one leaves the connection idle.
    pub fn stream_closed(&self) {
        let mut streams = self.streams();
        *streams = streams.saturating_sub(1);
        if *streams == 0 {
            self.enter(Phase::Idle);
        }
    }

    /// Closes the connection at once (past its head deadline, evicted).
    pub fn close_now(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }

    /// Closes the connection once the answers already made have gone out (HTTP/2: a call's
    /// message past its deadline, as HTTP/1.1's body deadline closes its connection).
    pub fn close_gracefully(&self) {
        self.graceful.store(true, Ordering::Relaxed);
        self.close_now();
    }

    /// Whether it is to close after its answers go out.
    pub fn graceful(&self) -> bool {
        self.graceful.load(Ordering::Relaxed)
    }

    /// Resolves when the sweeper or an eviction closes this connection.
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

/// Counters of what the connection bounds did.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
    pub head_timeouts: AtomicU64,
    pub body_timeouts: AtomicU64,
}

/// The open connections of one local API.
#[derive(Debug)]
pub struct Connections {
    limits: ApiLimits,
    clock: Arc<CoarseClock>,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_id: AtomicU64,
    pub stats: ConnectionStats,
}

/// A connection's slot; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    pub tracked: Arc<Tracked>,
    connections: Arc<Connections>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    pub fn new(limits: ApiLimits) -> Arc<Self> {
        let clock = Arc::new(CoarseClock {
            start: Instant::now(),
            now_ms: AtomicU64::new(0),
        });
        Arc::new(Self {
            limits,
            clock,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stats: ConnectionStats::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many are open now.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// How many are in `phase` now.
    pub fn count(&self, phase: Phase) -> usize {
        self.lock().values().filter(|t| t.phase() == phase).count()
    }

    pub fn limits(&self) -> &ApiLimits {
        &self.limits
    }

    /// A slot for a new connection, evicting the longest-idle one when all are taken; `None`
    /// when all are taken by requests in progress.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.lock();
        if open.len() >= self.limits.max_connections.max(1) {
            let victim = evictee(
                open.iter()
                    .map(|(&id, t)| (id, t.phase(), t.since_ms.load(Ordering::Relaxed))),
            );
            let Some(victim) = victim.and_then(|id| open.remove(&id)) else {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            victim.close_now();
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            phase: AtomicU8::new(Phase::Idle as u8),
            since_ms: AtomicU64::new(self.clock.now()),
            clock: self.clock.clone(),
            close: Notify::new(),
            streams: Mutex::new(0),
            preface_left: AtomicUsize::new(0),
            multiplexed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            graceful: AtomicBool::new(false),
        });
        open.insert(id, tracked.clone());
        Some(Slot {
            id,
            tracked,
            connections: self.clone(),
        })
    }

    /// Closes the connections past their deadlines; returns how many.
    fn sweep(&self) -> usize {
        let now = self.clock.tick();
        let open = self.lock();
        let mut closed = 0;
        for tracked in open.values() {
            if tracked.closing.load(Ordering::Relaxed) {
                continue;
            }
            let since = tracked.since_ms.load(Ordering::Relaxed);
            let Some(why) = overdue(tracked.phase(), since, now, &self.limits) else {
                continue;
            };
            let counter = match why {
                Overdue::Head => &self.stats.head_timeouts,
                Overdue::Body => &self.stats.body_timeouts,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracked.close_now();
            closed += 1;
        }
        closed
    }

    /// Keeps the clock and the deadlines until `stop` turns true.
    pub async fn keep(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let closed = self.sweep();
                    if closed > 0 {
                        tracing::debug!(closed, "local API connections past their deadline closed");
                    }
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// A connection's byte stream, telling its [`Tracked`] when a request's first bytes arrive.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    tracked: Arc<Tracked>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, tracked: Arc<Tracked>) -> Self {
        Self { inner, tracked }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracked.bytes_arrived(buf.filled().len() - before);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request's body, telling its [`Tracked`] when the last byte was read.
#[derive(Debug)]
pub struct WatchedBody {
    inner: Incoming,
    tracked: Arc<Tracked>,
}

impl WatchedBody {
    pub fn new(inner: Incoming, tracked: Arc<Tracked>) -> Self {
        Self { inner, tracked }
    }
}

impl Body for WatchedBody {
    type Data = <Incoming as Body>::Data;
    type Error = <Incoming as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.tracked.enter(Phase::Busy);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection gauges and counters of each form of the local API (`api`: `http`,
/// `grpc`) for `/metrics`.
pub fn exposition(agent: &str, tables: &[(&str, &Connections)]) -> String {
    use tern_proto::prometheus::{Exposition, Kind};
    let mut page = Exposition::default();
    page.family(
        "tern_agent_api_connections",
        Kind::Gauge,
        "Open connections to the local API.",
    );
    for (api, table) in tables {
        page.sample(&[("agent", agent), ("api", api)], table.open_count() as f64);
    }
    page.family(
        "tern_agent_api_connections_closed_total",
        Kind::Counter,
        "Local API connections the agent closed: evicted for a new one when all slots were \
         taken, refused when none was idle, or past the head or body deadline.",
    );
    for (api, table) in tables {
        for (reason, counter) in [
            ("evicted", &table.stats.evicted),
            ("refused", &table.stats.refused),
            ("head_timeout", &table.stats.head_timeouts),
            ("body_timeout", &table.stats.body_timeouts),
        ] {
            page.sample(
                &[("agent", agent), ("api", api), ("reason", reason)],
                counter.load(Ordering::Relaxed) as f64,
            );
        }
    }
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ApiLimits {
        ApiLimits {
            max_connections: 2,
            header_timeout_ms: 100,
            body_timeout_ms: 300,
        }
    }

    #[test]
    fn head_and_body_each_have_their_deadline_and_idle_or_busy_none() {
        let l = limits();
        assert_eq!(overdue(Phase::Head, 1_000, 1_100, &l), None);
        assert_eq!(overdue(Phase::Head, 1_000, 1_101, &l), Some(Overdue::Head));
        assert_eq!(overdue(Phase::Body, 1_000, 1_300, &l), None);
        assert_eq!(overdue(Phase::Body, 1_000, 1_301, &l), Some(Overdue::Body));
        assert_eq!(overdue(Phase::Idle, 0, u64::MAX, &l), None);
        assert_eq!(overdue(Phase::Busy, 0, u64::MAX, &l), None);
        assert_eq!(
            overdue(Phase::Head, 5_000, 1_000, &l),
            None,
            "a clock read before the phase began"
        );
    }

    #[test]
    fn the_longest_idle_connection_is_evicted_and_none_mid_request() {
        let open = [
            (1, Phase::Idle, 50),
            (2, Phase::Idle, 10),
            (3, Phase::Head, 0),
            (4, Phase::Busy, 0),
        ];
        assert_eq!(evictee(open), Some(2));
        assert_eq!(
            evictee([(1, Phase::Idle, 10), (0, Phase::Idle, 10)]),
            Some(0)
        );
        assert_eq!(
            evictee([
                (3, Phase::Head, 0),
                (4, Phase::Body, 0),
                (5, Phase::Busy, 0)
            ]),
            None
        );
    }

    #[test]
    fn a_full_table_evicts_an_idle_slot_and_refuses_when_all_are_busy() {
        let connections = Connections::new(limits());
        let first = connections.admit().expect("slot");
        let second = connections.admit().expect("slot");
        second.tracked.bytes_arrived(1);
        let third = connections.admit().expect("the idle first one makes room");
        assert_eq!(connections.open_count(), 2);
        assert_eq!(connections.stats.evicted.load(Ordering::Relaxed), 1);
        third.tracked.head_read(true);
        assert!(connections.admit().is_none(), "both are mid-request");
        assert_eq!(connections.stats.refused.load(Ordering::Relaxed), 1);
        drop((first, second));
        assert_eq!(
            connections.open_count(),
            1,
            "the evicted slot was already free"
        );
        drop(third);
        assert_eq!(connections.open_count(), 0);
    }
}
