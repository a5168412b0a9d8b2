//! Every process's commits, heard through PostgreSQL's `LISTEN`/`NOTIFY`.
//!
//! A commit sends one notification on its namespace's channel from inside its transaction,
//! so it is delivered only if the transaction commits, and PostgreSQL delivers the
//! notifications of different transactions in the order they committed. The payload carries
//! who committed (a process's random origin and its commit sequence) and the changes, inline
//! when small, or as the id of a row of `tern_notices` when over PostgreSQL's payload limit.
//! A listener connection per backend hears them all — this process's too, so subscribers get
//! one order — and opens again when it is lost, telling subscribers they may have missed some.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tracing::{info, warn};

use super::super::{Change, Notice, Notifier, Table};

/// Largest changes sent inside a notification (PostgreSQL's payload limit is 8,000 bytes).
pub(super) const INLINE_LIMIT: usize = 6000;
/// First and longest pause before the listener connects again.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MOST: Duration = Duration::from_secs(5);
/// Distinct table names a feed will learn (every store's tables, with room to spare).
const MOST_TABLES: usize = 4096;

/// Who made a commit: a backend's random origin and its commit sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub origin: u64,
    pub seq: u64,
}

/// Where a notification's changes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Body {
    Inline(Vec<u8>),
    /// The id of a `tern_notices` row.
    Stored(i64),
}

/// The channel of a namespace.
pub(super) fn channel(namespace: &str) -> String {
    format!("tern_changes_{namespace}")
}

/// A notification's payload: stamp in hex, then `=` and base64, or `@` and a notice id.
pub(super) fn payload(stamp: Stamp, body: &Body) -> String {
    let head = format!("{:016x}{:016x}", stamp.origin, stamp.seq);
    match body {
        Body::Inline(bytes) => format!(
            "{head}={}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        ),
        Body::Stored(id) => format!("{head}@{id}"),
    }
}

/// Reads a payload; `None` when it is not one of ours.
pub(super) fn parse(payload: &str) -> Option<(Stamp, Body)> {
    let origin = u64::from_str_radix(payload.get(..16)?, 16).ok()?;
    let seq = u64::from_str_radix(payload.get(16..32)?, 16).ok()?;
    let rest = payload.get(32..)?;
    let body = if let Some(encoded) = rest.strip_prefix('=') {
        Body::Inline(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(encoded)
                .ok()?,
        )
    } else {
        Body::Stored(rest.strip_prefix('@')?.parse().ok()?)
    };
    Some((Stamp { origin, seq }, body))
}

/// The wire form of one change.
type WireChange<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

pub(super) fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let wire: Vec<WireChange<'_>> = changes
        .iter()
        .map(|c| (c.table.0, c.key.as_slice(), c.value.as_deref()))
        .collect();
    postcard::to_allocvec(&wire).unwrap_or_default()
}

/// The changes of a notification; `None` when they do not decode.
pub(super) fn decode_changes(bytes: &[u8]) -> Option<Vec<Change>> {
    let wire: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = postcard::from_bytes(bytes).ok()?;
    wire.into_iter()
        .map(|(table, key, value)| {
            Some(Change {
                table: Table(intern(table)?),
                key,
                value,
            })
        })
        .collect()
}

/// A table name heard from another process, as the `'static` name a [`Table`] holds.
fn intern(name: String) -> Option<&'static str> {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.get(name.as_str()) {
        return Some(known);
    }
    if names.len() >= MOST_TABLES {
        return None;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    Some(leaked)
}

/// What the listener has heard, for commits waiting on their own notification.
#[derive(Debug, Default)]
struct Heard {
    listening: bool,
    /// The latest sequence of this backend's own commits heard back.
    seq: u64,
}

/// Where heard commits go: this process's subscribers.
#[derive(Debug)]
pub(super) struct Feed {
    pub notices: Notifier,
    origin: u64,
    heard: Mutex<Heard>,
    changed: Condvar,
}

impl Feed {
    pub(super) fn new(origin: u64, capacity: usize) -> Self {
        Self {
            notices: Notifier::new(capacity),
            origin,
            heard: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn announce(&self, notice: Notice) {
        if self.notices.subscribers() > 0 {
            self.notices.send(notice);
        }
    }

    fn update(&self, change: impl FnOnce(&mut Heard)) {
        change(&mut self.heard.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    /// Whether the listener listens now.
    pub(super) fn listening(&self) -> bool {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .listening
    }

    /// Waits until the listener listens, at most `timeout`; whether it does.
    pub(super) fn wait_listening(&self, timeout: Duration) -> bool {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let (heard, _) = self
            .changed
            .wait_timeout_while(heard, timeout, |h| !h.listening)
            .unwrap_or_else(|p| p.into_inner());
        heard.listening
    }

    /// Waits until this backend's commit `seq` is heard back, at most `timeout`, unless the
    /// listener is not listening. Subscribers are told they missed it when it is not heard.
    pub(super) fn wait_heard(&self, seq: u64, timeout: Duration) {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let (heard, _) = self
            .changed
            .wait_timeout_while(heard, timeout, |h| h.listening && h.seq < seq)
            .unwrap_or_else(|p| p.into_inner());
        if heard.seq < seq {
            drop(heard);
            warn!(seq, "a commit was not heard back from PostgreSQL in time");
            self.announce(Notice::Missed);
        }
    }
}

/// Listens on `channel` until the driver stops, connecting again whenever the connection is
/// lost, with a pause that doubles up to [`RECONNECT_MOST`].
pub(super) async fn listen(link: super::Link, channel: String, feed: Arc<Feed>) {
    let mut pause = RECONNECT_FIRST;
    let mut heard_before = false;
    loop {
        match listen_once(&link, &channel, &feed, heard_before).await {
            Ok(()) => warn!(%channel, "the PostgreSQL change feed closed; listening again"),
            Err(error) => warn!(%channel, %error, "the PostgreSQL change feed failed"),
        }
        if feed
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .listening
        {
            heard_before = true;
            pause = RECONNECT_FIRST;
            feed.update(|h| h.listening = false);
            feed.announce(Notice::Missed);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MOST);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen_once(
    link: &super::Link,
    channel: &str,
    feed: &Feed,
    heard_before: bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = super::pool::settings(link).connect(link.tls()).await?;
    let (tx, mut notifications) = mpsc::unbounded_channel();
    let _pump = AbortOnDrop(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    warn!(%error, "the PostgreSQL change feed's connection ended");
                    return;
                }
                None => return,
            }
        }
    }));
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    feed.update(|h| h.listening = true);
    if heard_before {
        info!(%channel, "listening to the PostgreSQL change feed again");
        // Commits made while nobody listened are not told again.
        feed.announce(Notice::Missed);
    }
    while let Some(notification) = notifications.recv().await {
        let Some((stamp, body)) = parse(notification.payload()) else {
            warn!(%channel, "a change notification that is not Tern's; ignored");
            continue;
        };
        let bytes = match body {
            Body::Inline(bytes) => Some(bytes),
            Body::Stored(id) => client
                .query_opt("SELECT body FROM tern_notices WHERE id = $1", &[&id])
                .await?
                .map(|row| row.get::<_, Vec<u8>>(0)),
        };
        match bytes.as_deref().and_then(decode_changes) {
            Some(changes) => feed.announce(Notice::Committed(changes.into())),
            None => {
                warn!(%channel, "a change notification could not be read; subscribers read again");
                feed.announce(Notice::Missed);
            }
        }
        if stamp.origin == feed.origin {
            feed.update(|h| h.seq = h.seq.max(stamp.seq));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_changes_read_back_and_garbage_is_refused() {
        let changes = vec![
            Change {
                table: Table("desired"),
                key: b"agent-1".to_vec(),
                value: Some(vec![0, 1, 2]),
            },
            Change {
                table: Table("a table first heard here"),
                key: vec![],
                value: None,
            },
        ];
        let stamp = Stamp {
            origin: u64::MAX,
            seq: 7,
        };
        let inline = payload(stamp, &Body::Inline(encode_changes(&changes)));
        let (read, body) = parse(&inline).expect("parses");
        assert_eq!(read, stamp);
        let Body::Inline(bytes) = body else {
            panic!("inline")
        };
        assert_eq!(decode_changes(&bytes), Some(changes));
        assert_eq!(
            parse(&payload(stamp, &Body::Stored(42))),
            Some((stamp, Body::Stored(42)))
        );
        for garbage in [
            "",
            "zz",
            &"0".repeat(32),
            &format!("{}=***", "0".repeat(32)),
        ] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
        assert_eq!(decode_changes(&[0xff, 0xff, 0xff]), None);
    }
}
