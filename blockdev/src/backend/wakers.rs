//! Waking queues whose requests wait for another queue's writes.
//!
//! A qcow2 write, write-zeroes or discard that touches a guest cluster held
//! by an unfinished write of another queue is parked rather than blocking
//! the thread: one thread may serve several queues of a disk (the VMM's
//! device thread does), and only that thread can finish the holder. When a
//! queue finishes or aborts a write plan it wakes every other queue that
//! has parked requests by signalling its completion eventfd; that queue's
//! event loop then reaps, which retries what it parked.
//!
//! A queue may find a cluster busy just before its holder lets go, and park
//! just after the holder looked for parked queues. So the release counter
//! (the epoch) is read before trying and again after parking: if it moved,
//! the queue wakes itself.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// One queue's entry: the eventfd its event loop watches, and whether it
/// has parked requests.
#[derive(Debug)]
pub(crate) struct QueueWaker {
    eventfd: EventFd,
    parked: AtomicBool,
}

impl QueueWaker {
    /// Signals the queue's eventfd (a full counter still leaves it
    /// readable, so the result does not matter).
    pub fn wake(&self) {
        let _ = self.eventfd.write(1);
    }
}

/// The queues of one disk, for waking the ones with parked requests.
#[derive(Debug, Default)]
pub(crate) struct ParkedWakers {
    /// Write plans finished or aborted so far.
    epoch: AtomicU64,
    /// Queues whose `parked` flag is set.
    parked_queues: AtomicUsize,
    queues: Mutex<Vec<Arc<QueueWaker>>>,
}

impl ParkedWakers {
    /// Adds a queue that is woken through `eventfd`.
    pub fn register(&self, eventfd: EventFd) -> Arc<QueueWaker> {
        let waker = Arc::new(QueueWaker {
            eventfd,
            parked: AtomicBool::new(false),
        });
        self.lock().push(waker.clone());
        waker
    }

    /// Removes a queue (when it is dropped).
    pub fn unregister(&self, waker: &Arc<QueueWaker>) {
        self.set_parked(waker, false);
        self.lock().retain(|w| !Arc::ptr_eq(w, waker));
    }

    /// The release counter, read before trying to start a request that may
    /// have to park.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Records whether `waker`'s queue has parked requests.
    pub fn set_parked(&self, waker: &QueueWaker, parked: bool) {
        if waker.parked.swap(parked, Ordering::SeqCst) != parked {
            if parked {
                self.parked_queues.fetch_add(1, Ordering::SeqCst);
            } else {
                self.parked_queues.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// A queue parked a request after reading `epoch_before`: true when a
    /// plan was released since, whose wake-up it may have missed.
    pub fn released_since(&self, epoch_before: u64) -> bool {
        self.epoch() != epoch_before
    }

    /// A write plan was finished or aborted (its clusters are free): wake
    /// every other queue with parked requests.
    pub fn plan_released(&self, by: &QueueWaker) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.parked_queues.load(Ordering::SeqCst) == 0 {
            return;
        }
        for waker in self.lock().iter() {
            if !std::ptr::eq(&**waker, by) && waker.parked.load(Ordering::SeqCst) {
                waker.wake();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<QueueWaker>>> {
        self.queues.lock().expect("waker list lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn readable(waker: &QueueWaker) -> bool {
        waker.eventfd.read().is_ok()
    }

    #[test]
    fn only_other_parked_queues_are_woken() {
        let wakers = ParkedWakers::default();
        let a = wakers.register(EventFd::new(EFD_NONBLOCK).unwrap());
        let b = wakers.register(EventFd::new(EFD_NONBLOCK).unwrap());
        let c = wakers.register(EventFd::new(EFD_NONBLOCK).unwrap());
        wakers.plan_released(&a);
        assert!(!readable(&b) && !readable(&c));
        wakers.set_parked(&b, true);
        wakers.set_parked(&b, true);
        wakers.set_parked(&a, true);
        wakers.plan_released(&a);
        assert!(readable(&b));
        assert!(!readable(&a) && !readable(&c));
        wakers.set_parked(&b, false);
        wakers.plan_released(&c);
        assert!(readable(&a) && !readable(&b));
        wakers.unregister(&a);
        assert_eq!(wakers.parked_queues.load(Ordering::SeqCst), 0);
        assert_eq!(wakers.lock().len(), 2);
    }

    #[test]
    fn a_release_between_try_and_park_is_seen() {
        let wakers = ParkedWakers::default();
        let before = wakers.epoch();
        assert!(!wakers.released_since(before));
        let a = wakers.register(EventFd::new(EFD_NONBLOCK).unwrap());
        wakers.plan_released(&a);
        assert!(wakers.released_since(before));
    }
}
