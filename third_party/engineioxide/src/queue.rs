//! A socket's send queue: the packets waiting for the transport, at most `capacity` of
//! them, with the semantics of the tokio mpsc channel it replaces (one receiver at a time,
//! permits, closing from the receiving side while what is queued can still be received).
//!
//! Why not the channel: tokio allocates a bounded channel's shared state (about 500 bytes)
//! and its first block of 32 slots when the channel is made, whatever its capacity, and
//! every connection has one for as long as it lives, nearly always empty. This queue keeps
//! its first packet inline (a socket that is written to now and then never allocates for
//! it) and the ones behind it in a [`VecDeque`] that grows while they wait and is given
//! back once they are all taken.
//!
//! The receiving side is not a handle of its own: only whoever holds the socket's
//! `internal_rx` lock receives (the ws writer, a polling request, the session's close), as
//! the channel's receiver was held behind that lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

pub(crate) struct SendQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Set once, under the state's lock; read without it by [`SendQueue::is_closed`].
    closed: AtomicBool,
    /// Wakes the receiver: an item was queued, a permit given back, or the queue closed.
    readable: Notify,
    /// Wakes everyone waiting in [`SendQueue::closed`].
    closing: Notify,
}

struct State<T> {
    /// The next item; only when it is there can `behind` hold any.
    first: Option<T>,
    behind: VecDeque<T>,
    /// Places held by permits not used yet.
    reserved: usize,
}

impl<T> State<T> {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.behind.len()
    }

    fn push(&mut self, item: T) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.behind.push_back(item);
        }
    }

    fn pop(&mut self) -> Option<T> {
        let item = self.first.take()?;
        self.first = self.behind.pop_front();
        if self.behind.is_empty() && self.behind.capacity() > 0 {
            // Give the memory of a burst back: nearly every socket is idle nearly always.
            self.behind = VecDeque::new();
        }
        Some(item)
    }
}

impl<T> SendQueue<T> {
    /// An empty queue of at most `capacity` items (and permits).
    ///
    /// # Panics
    /// If `capacity` is zero, as tokio's channel does.
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a send queue holds one item at least");
        Self {
            state: Mutex::new(State {
                first: None,
                behind: VecDeque::new(),
                reserved: 0,
            }),
            capacity,
            closed: AtomicBool::new(false),
            readable: Notify::new(),
            closing: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every change to the state is complete before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`, unless the queue is full or closed.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let mut state = self.lock();
            if self.closed.load(Ordering::Relaxed) {
                return Err(TrySendError::Closed(item));
            }
            if state.len() + state.reserved >= self.capacity {
                return Err(TrySendError::Full(item));
            }
            state.push(item);
        }
        self.readable.notify_one();
        Ok(())
    }

    /// Queues `item` even if the queue is full: for a control packet that must reach the
    /// transport, such as the Noop that ends a waiting polling request when the socket
    /// upgrades (once per session). Fails once the queue is closed.
    pub(crate) fn push_control(&self, item: T) -> Result<(), T> {
        {
            let mut state = self.lock();
            if self.closed.load(Ordering::Relaxed) {
                return Err(item);
            }
            state.push(item);
        }
        self.readable.notify_one();
        Ok(())
    }

    /// Holds a place for one item, unless the queue is full or closed.
    pub(crate) fn try_reserve(&self) -> Result<QueuePermit<'_, T>, TrySendError<()>> {
        let mut state = self.lock();
        if self.closed.load(Ordering::Relaxed) {
            return Err(TrySendError::Closed(()));
        }
        if state.len() + state.reserved >= self.capacity {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(QueuePermit { queue: self })
    }

    /// Takes the next item; `None` once the queue is closed and nothing is left in it or
    /// held by a permit. Cancel safe: an item is taken only by the poll that returns it.
    pub(crate) async fn recv(&self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                // An item queued between the check and here leaves a permit in the
                // notifier: this returns at once.
                Err(TryRecvError::Empty) => self.readable.notified().await,
            }
        }
    }

    /// Takes the next item if there is one.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut state = self.lock();
        match state.pop() {
            Some(item) => Ok(item),
            None if state.reserved == 0 && self.closed.load(Ordering::Relaxed) => {
                Err(TryRecvError::Disconnected)
            }
            None => Err(TryRecvError::Empty),
        }
    }

    /// Closes the queue: nothing more can be queued or reserved; what is queued, and what
    /// permits held already send, can still be received.
    pub(crate) fn close(&self) {
        {
            let _state = self.lock();
            self.closed.store(true, Ordering::Release);
        }
        self.readable.notify_one();
        self.closing.notify_waiters();
    }

    /// Whether the queue is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until the queue is closed.
    pub(crate) async fn closed(&self) {
        let notified = self.closing.notified();
        tokio::pin!(notified);
        // Registered before the check, so a close right after it is not missed.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }
}

impl<T> std::fmt::Debug for SendQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("SendQueue")
            .field("queued", &state.len())
            .field("reserved", &state.reserved)
            .field("capacity", &self.capacity)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A place held in a [`SendQueue`] for one item; given back if dropped unused.
pub(crate) struct QueuePermit<'a, T> {
    queue: &'a SendQueue<T>,
}

impl<T> QueuePermit<'_, T> {
    /// Queues `item` in the place held (even if the queue was closed since, as tokio's
    /// permits do: the receiver still drains it).
    pub(crate) fn send(self, item: T) {
        let queue = self.queue;
        std::mem::forget(self);
        {
            let mut state = queue.lock();
            state.reserved -= 1;
            state.push(item);
        }
        queue.readable.notify_one();
    }
}

impl<T> Drop for QueuePermit<'_, T> {
    fn drop(&mut self) {
        self.queue.lock().reserved -= 1;
        // A receiver of a closed queue may be waiting for this permit only.
        self.queue.readable.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[test]
    fn it_holds_capacity_items_and_permits_then_is_full() {
        let queue = SendQueue::new(3);
        queue.try_send(1).unwrap();
        let permit = queue.try_reserve().unwrap();
        queue.try_send(2).unwrap();
        assert!(matches!(queue.try_send(3), Err(TrySendError::Full(3))));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Full(()))));
        // A permit dropped unused gives its place back.
        drop(permit);
        queue.try_send(3).unwrap();
        assert_eq!(queue.try_recv(), Ok(1));
        assert_eq!(queue.try_recv(), Ok(2));
        assert_eq!(queue.try_recv(), Ok(3));
        assert_eq!(queue.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn permits_keep_their_place_in_order_of_sending() {
        let queue = SendQueue::new(4);
        let first = queue.try_reserve().unwrap();
        let second = queue.try_reserve().unwrap();
        queue.try_send("direct").unwrap();
        second.send("second");
        first.send("first");
        let taken: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
        assert_eq!(taken, ["direct", "second", "first"]);
    }

    #[test]
    fn one_waiting_item_allocates_nothing_and_a_burst_is_given_back() {
        let queue = SendQueue::new(128);
        queue.try_send(0).unwrap();
        assert_eq!(queue.lock().behind.capacity(), 0);
        assert_eq!(queue.try_recv(), Ok(0));
        for i in 0..100 {
            queue.try_send(i).unwrap();
        }
        assert!(queue.lock().behind.capacity() >= 99);
        let taken: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
        assert_eq!(taken, (0..100).collect::<Vec<_>>());
        assert_eq!(queue.lock().behind.capacity(), 0);
    }

    #[test]
    fn a_control_item_goes_in_even_when_full_but_not_once_closed() {
        let queue = SendQueue::new(1);
        queue.try_send("data").unwrap();
        assert!(matches!(queue.try_send("more"), Err(TrySendError::Full(_))));
        queue.push_control("noop").unwrap();
        assert_eq!(queue.try_recv(), Ok("data"));
        assert_eq!(queue.try_recv(), Ok("noop"));
        queue.close();
        assert_eq!(queue.push_control("late"), Err("late"));
    }

    #[tokio::test]
    async fn a_closed_queue_takes_nothing_new_but_drains_what_it_holds() {
        let queue = SendQueue::new(4);
        queue.try_send(1).unwrap();
        let permit = queue.try_reserve().unwrap();
        queue.close();
        assert!(queue.is_closed());
        assert!(matches!(queue.try_send(2), Err(TrySendError::Closed(2))));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Closed(()))));
        assert_eq!(queue.recv().await, Some(1));
        // The permit held before the close still sends; until it does, the queue is not
        // done.
        assert!(queue.recv().now_or_never().is_none());
        permit.send(3);
        assert_eq!(queue.recv().await, Some(3));
        assert_eq!(queue.recv().await, None);
    }

    #[tokio::test]
    async fn a_permit_dropped_after_the_close_ends_the_queue() {
        let queue = Arc::new(SendQueue::<u8>::new(4));
        let permit = queue.try_reserve().unwrap();
        queue.close();
        let receiver = tokio::spawn({
            let queue = queue.clone();
            async move { queue.recv().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!receiver.is_finished());
        drop(permit);
        let end = tokio::time::timeout(TIMEOUT, receiver).await.unwrap();
        assert_eq!(end.unwrap(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_each_item() {
        let queue = Arc::new(SendQueue::new(8));
        let (got, mut taken) = tokio::sync::mpsc::unbounded_channel();
        let receiver = tokio::spawn({
            let queue = queue.clone();
            async move {
                while let Some(item) = queue.recv().await {
                    got.send(item).unwrap();
                }
            }
        });
        for i in 0..5 {
            // The receiver is waiting on an empty queue when each item arrives.
            tokio::time::sleep(Duration::from_millis(2)).await;
            queue.try_send(i).unwrap();
            let item = tokio::time::timeout(TIMEOUT, taken.recv()).await.unwrap();
            assert_eq!(item, Some(i));
        }
        assert!(!receiver.is_finished());
        queue.close();
        tokio::time::timeout(TIMEOUT, receiver)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn closed_resolves_for_waiters_before_and_after_the_close() {
        let queue = Arc::new(SendQueue::<u8>::new(1));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.closed().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        queue.close();
        tokio::time::timeout(TIMEOUT, waiter)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(TIMEOUT, queue.closed()).await.unwrap();
    }

    #[tokio::test]
    async fn a_receive_dropped_after_its_wake_up_loses_nothing() {
        let queue = SendQueue::new(4);
        // Waiting on the empty queue, then dropped after the item woke it, as a `select!`
        // drops the branch that lost.
        let mut waiting = Box::pin(queue.recv());
        assert!((&mut waiting).now_or_never().is_none());
        queue.try_send("kept").unwrap();
        drop(waiting);
        assert_eq!(queue.recv().now_or_never(), Some(Some("kept")));
    }
}
