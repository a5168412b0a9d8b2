//! Change notifications without a runtime: a bounded broadcast of [`Notice`]s from an engine
//! to its subscribers. A notice is kept until every subscriber has taken it, at most the
//! capacity of them: a subscriber that falls further behind loses the oldest and is told how
//! many ([`RecvError::Lagged`]), so it reads what it follows again; the engine never waits for
//! a subscriber. [`Subscription::recv`] is a future that any executor can
//! await (it keeps the wakers itself), and [`Subscription::try_recv`] serves synchronous code.

use std::collections::{HashMap, VecDeque};
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
    /// The notices some subscriber has yet to take, at most `capacity`; `first` is the number
    /// of the oldest.
    kept: VecDeque<Notice>,
    first: u64,
    capacity: usize,
    /// Each subscription's next notice, by subscription.
    cursors: HashMap<u64, u64>,
    next_subscription: u64,
    waiting: Vec<Waker>,
    closed: bool,
}

impl Channel {
    /// Lets go of the notices every subscriber has taken.
    fn trim(&mut self) {
        let taken =
            (self.cursors.values().min().copied()).unwrap_or(self.first + self.kept.len() as u64);
        while self.first < taken && self.kept.pop_front().is_some() {
            self.first += 1;
        }
    }
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
                cursors: HashMap::new(),
                next_subscription: 0,
                waiting: Vec::new(),
                closed: false,
            })),
        }
    }

    /// Tells every subscriber; with none, the notice goes nowhere.
    pub fn send(&self, notice: Notice) {
        let waiting = {
            let mut channel = lock(&self.channel);
            if channel.cursors.is_empty() {
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
        lock(&self.channel).cursors.len()
    }

    /// A subscription to every notice sent from now on.
    pub fn subscribe(&self) -> Subscription {
        let mut channel = lock(&self.channel);
        let (id, next) = (
            channel.next_subscription,
            channel.first + channel.kept.len() as u64,
        );
        channel.next_subscription += 1;
        channel.cursors.insert(id, next);
        Subscription {
            channel: self.channel.clone(),
            id,
            next,
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
    id: u64,
    /// The number of the next notice to hand out.
    next: u64,
}

impl Subscription {
    fn take(&mut self, channel: &mut Channel) -> Result<Notice, TryRecvError> {
        if self.next < channel.first {
            let lost = channel.first - self.next;
            self.next = channel.first;
            channel.cursors.insert(self.id, self.next);
            return Err(TryRecvError::Lagged(lost));
        }
        match channel.kept.get((self.next - channel.first) as usize) {
            Some(notice) => {
                let notice = notice.clone();
                self.next += 1;
                channel.cursors.insert(self.id, self.next);
                channel.trim();
                Ok(notice)
            }
            None if channel.closed => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next notice, if one was sent.
    pub fn try_recv(&mut self) -> Result<Notice, TryRecvError> {
        let channel = self.channel.clone();
        let mut channel = lock(&channel);
        self.take(&mut channel)
    }

    /// The next notice, once one is sent.
    pub async fn recv(&mut self) -> Result<Notice, RecvError> {
        poll_fn(|cx| {
            let channel = self.channel.clone();
            let mut channel = lock(&channel);
            match self.take(&mut channel) {
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
        channel.cursors.remove(&self.id);
        channel.trim();
        if channel.cursors.is_empty() {
            // No task waits on a subscription that no longer exists.
            channel.waiting.clear();
        }
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

    #[test]
    fn a_notice_every_subscriber_took_is_let_go() {
        let notifier = Notifier::new(8);
        let (mut one, mut two) = (notifier.subscribe(), notifier.subscribe());
        for n in 0..3 {
            notifier.send(numbered(n));
        }
        let kept = |notifier: &Notifier| lock(&notifier.channel).kept.len();
        assert_eq!(kept(&notifier), 3);
        for n in 0..3 {
            assert_eq!(one.try_recv().map(number), Ok(n));
        }
        assert_eq!(kept(&notifier), 3, "two has yet to take them");
        assert_eq!(two.try_recv().map(number), Ok(0));
        assert_eq!(kept(&notifier), 2);
        drop(two);
        assert_eq!(kept(&notifier), 0, "nobody is left to take them");
        notifier.send(numbered(3));
        assert_eq!(one.try_recv().map(number), Ok(3));
        assert_eq!(kept(&notifier), 0);
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
