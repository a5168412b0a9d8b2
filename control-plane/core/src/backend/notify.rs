//! Change notifications without a runtime: a bounded broadcast of [`Notice`]s from an engine
//! to its subscribers. A subscriber that falls more than the capacity behind loses the oldest
//! and is told how many ([`RecvError::Lagged`]), so it reads what it follows again; the engine
//! never waits for a subscriber. [`Subscription::recv`] is a future that any executor can
//! await (it keeps the wakers itself), and [`Subscription::try_recv`] serves synchronous code.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::Notice;

/// Why [`Subscription::recv`] returned no notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// This many notices were lost: the subscriber fell more than the capacity behind.
    #[error("fell {0} notices behind")]
    Lagged(u64),
    /// The engine is gone: no notice will come.
    #[error("the engine is gone")]
    Closed,
}

/// Why [`Subscription::try_recv`] returned no notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// None yet.
    #[error("no notice yet")]
    Empty,
    /// This many notices were lost: the subscriber fell more than the capacity behind.
    #[error("fell {0} notices behind")]
    Lagged(u64),
    /// The engine is gone: no notice will come.
    #[error("the engine is gone")]
    Closed,
}

#[derive(Debug)]
struct Channel {
    /// The last `capacity` notices; `first` is the number of the oldest.
    kept: VecDeque<Notice>,
    first: u64,
    capacity: usize,
    subscribers: usize,
    waiting: Vec<Waker>,
    closed: bool,
}

fn lock(channel: &Mutex<Channel>) -> MutexGuard<'_, Channel> {
    channel.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sending side, held by an engine; dropping it closes every subscription.
#[derive(Debug)]
pub struct Notifier {
    channel: Arc<Mutex<Channel>>,
}

impl Notifier {
    /// A notifier that keeps at most `capacity` notices for a subscriber that is behind.
    pub fn new(capacity: usize) -> Self {
        Self {
            channel: Arc::new(Mutex::new(Channel {
                kept: VecDeque::new(),
                first: 0,
                capacity: capacity.max(1),
                subscribers: 0,
                waiting: Vec::new(),
                closed: false,
            })),
        }
    }

    /// Tells every subscriber; with none, the notice goes nowhere.
    pub fn send(&self, notice: Notice) {
        let waiting = {
            let mut channel = lock(&self.channel);
            if channel.subscribers == 0 {
                return;
            }
            channel.kept.push_back(notice);
            if channel.kept.len() > channel.capacity {
                channel.kept.pop_front();
                channel.first += 1;
            }
            std::mem::take(&mut channel.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }

    /// How many subscriptions are open (an engine skips building notices nobody hears).
    pub fn subscribers(&self) -> usize {
        lock(&self.channel).subscribers
    }

    /// A subscription to every notice sent from now on.
    pub fn subscribe(&self) -> Subscription {
        let mut channel = lock(&self.channel);
        channel.subscribers += 1;
        Subscription {
            next: channel.first + channel.kept.len() as u64,
            channel: self.channel.clone(),
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let waiting = {
            let mut channel = lock(&self.channel);
            channel.closed = true;
            std::mem::take(&mut channel.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }
}

/// The receiving side: the notices sent since it was made, in order.
#[derive(Debug)]
pub struct Subscription {
    channel: Arc<Mutex<Channel>>,
    /// The number of the next notice to hand out.
    next: u64,
}

impl Subscription {
    fn take(&mut self, channel: &Channel) -> Result<Notice, TryRecvError> {
        if self.next < channel.first {
            let lost = channel.first - self.next;
            self.next = channel.first;
            return Err(TryRecvError::Lagged(lost));
        }
        match channel.kept.get((self.next - channel.first) as usize) {
            Some(notice) => {
                self.next += 1;
                Ok(notice.clone())
            }
            None if channel.closed => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next notice, if one was sent.
    pub fn try_recv(&mut self) -> Result<Notice, TryRecvError> {
        let channel = self.channel.clone();
        let channel = lock(&channel);
        self.take(&channel)
    }

    /// The next notice, once one is sent.
    pub async fn recv(&mut self) -> Result<Notice, RecvError> {
        poll_fn(|cx| {
            let channel = self.channel.clone();
            let mut channel = lock(&channel);
            match self.take(&channel) {
                Ok(notice) => Poll::Ready(Ok(notice)),
                Err(TryRecvError::Lagged(lost)) => Poll::Ready(Err(RecvError::Lagged(lost))),
                Err(TryRecvError::Closed) => Poll::Ready(Err(RecvError::Closed)),
                Err(TryRecvError::Empty) => {
                    if !channel.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                        channel.waiting.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channel = lock(&self.channel);
        channel.subscribers -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake};

    use super::super::{Change, Table};
    use super::*;

    fn numbered(n: usize) -> Notice {
        Notice::Committed(
            vec![Change {
                table: Table("t"),
                key: n.to_be_bytes().to_vec(),
                value: None,
            }]
            .into(),
        )
    }

    fn number(notice: Notice) -> usize {
        match notice {
            Notice::Committed(changes) => {
                usize::from_be_bytes(changes[0].key.as_slice().try_into().expect("a number"))
            }
            Notice::Missed => panic!("missed"),
        }
    }

    #[test]
    fn every_subscriber_hears_every_notice_in_order_and_a_slow_one_is_told_it_lagged() {
        let notifier = Notifier::new(3);
        notifier.send(numbered(0)); // nobody hears it
        let mut fast = notifier.subscribe();
        let mut slow = notifier.subscribe();
        assert_eq!(notifier.subscribers(), 2);
        for n in 1..=5 {
            notifier.send(numbered(n));
            assert_eq!(fast.try_recv().map(number), Ok(n));
        }
        assert_eq!(fast.try_recv().map(number), Err(TryRecvError::Empty));
        assert_eq!(slow.try_recv().map(number), Err(TryRecvError::Lagged(2)));
        assert_eq!(slow.try_recv().map(number), Ok(3), "the oldest kept");
        drop(fast);
        assert_eq!(notifier.subscribers(), 1);
        drop(notifier);
        assert_eq!(slow.try_recv().map(number), Ok(4), "what was sent stays");
        assert_eq!(slow.try_recv().map(number), Ok(5));
        assert_eq!(slow.try_recv().map(number), Err(TryRecvError::Closed));
    }

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_subscriber_is_woken_by_a_notice_and_by_the_close() {
        let notifier = Notifier::new(8);
        let mut subscription = notifier.subscribe();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        {
            let mut next = std::pin::pin!(subscription.recv());
            assert!(next.as_mut().poll(&mut cx).is_pending());
            assert!(next.as_mut().poll(&mut cx).is_pending(), "polled again");
            notifier.send(numbered(7));
            assert_eq!(woken.0.load(Ordering::SeqCst), 1, "woken once");
            match next.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(notice)) => assert_eq!(number(notice), 7),
                other => panic!("{other:?}"),
            }
        }
        let mut next = std::pin::pin!(subscription.recv());
        assert!(next.as_mut().poll(&mut cx).is_pending());
        drop(notifier);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        assert_eq!(
            next.as_mut().poll(&mut cx).map(|r| r.map(number)),
            Poll::Ready(Err(RecvError::Closed))
        );
    }
}
