//! Deadlines for many connections in O(1) each: the FIFO-per-timeout-value
//! technique of Apache httpd's event MPM.
//!
//! Every connection a worker owns waits under the same timeout (the idle
//! timeout, or the short lingering-close timeout), so ordering connections
//! by their last activity orders them by deadline too. A [`TimeoutQueue`] is
//! an intrusive doubly-linked list over connection slots: activity moves a
//! slot to the tail (O(1)), expiry pops from the head while the head is due
//! (O(1) per expired connection), and the worker sleeps until the head's
//! deadline. Changing the timeout on reload keeps the order valid, so the
//! new value applies at once to existing connections, counted from their
//! last activity.
//!
//! The queue stores only slot numbers and instants; it never touches
//! sockets, so a worker decides what expiry means (a notice, a close).

use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    stamp: Instant,
    linked: bool,
}

/// A FIFO of slots ordered by last activity.
#[derive(Debug)]
pub struct TimeoutQueue {
    links: Vec<Link>,
    head: u32,
    tail: u32,
    len: usize,
}

impl Default for TimeoutQueue {
    fn default() -> Self {
        TimeoutQueue {
            links: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl TimeoutQueue {
    /// Number of slots in the queue.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no slot is queued.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records activity on `slot` at `now`: (re)queues it at the tail.
    /// `now` must not go backwards between calls (the worker passes the
    /// time it read once per loop turn).
    pub fn touch(&mut self, slot: usize, now: Instant) {
        let s = slot as u32;
        if slot >= self.links.len() {
            self.links.resize(
                slot + 1,
                Link {
                    prev: NIL,
                    next: NIL,
                    stamp: now,
                    linked: false,
                },
            );
        }
        if self.links[slot].linked {
            if self.tail == s {
                self.links[slot].stamp = now;
                return;
            }
            self.unlink(slot);
        }
        let link = &mut self.links[slot];
        link.prev = self.tail;
        link.next = NIL;
        link.stamp = now;
        link.linked = true;
        if self.tail == NIL {
            self.head = s;
        } else {
            self.links[self.tail as usize].next = s;
        }
        self.tail = s;
        self.len += 1;
    }

    /// Removes `slot` if queued (the connection closed).
    pub fn remove(&mut self, slot: usize) {
        if self.links.get(slot).is_some_and(|l| l.linked) {
            self.unlink(slot);
        }
    }

    fn unlink(&mut self, slot: usize) {
        let Link { prev, next, .. } = self.links[slot];
        if prev == NIL {
            self.head = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
        self.links[slot].linked = false;
        self.len -= 1;
    }

    /// True if `slot` is queued.
    pub fn contains(&self, slot: usize) -> bool {
        self.links.get(slot).is_some_and(|l| l.linked)
    }

    /// When the oldest slot falls due under `timeout`.
    pub fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.head != NIL).then(|| self.links[self.head as usize].stamp + timeout)
    }

    /// Removes and returns the oldest slot if it is due at `now`.
    pub fn pop_expired(&mut self, now: Instant, timeout: Duration) -> Option<usize> {
        let due = self.next_deadline(timeout)? <= now;
        if due {
            let slot = self.head as usize;
            self.unlink(slot);
            Some(slot)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_activity_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = TimeoutQueue::default();
        q.touch(3, t0);
        q.touch(1, t0 + s);
        q.touch(2, t0 + 2 * s);
        q.touch(3, t0 + 3 * s); // activity moves 3 behind the others
        let t = Duration::from_secs(10);
        assert_eq!(q.next_deadline(t), Some(t0 + s + t));
        assert_eq!(q.pop_expired(t0 + 10 * s, t), None);
        assert_eq!(q.pop_expired(t0 + 12 * s, t), Some(1));
        assert_eq!(q.pop_expired(t0 + 12 * s, t), Some(2));
        assert_eq!(q.pop_expired(t0 + 12 * s, t), None);
        // A shorter timeout (reload) applies to what is queued.
        assert_eq!(q.pop_expired(t0 + 12 * s, Duration::from_secs(5)), Some(3));
        assert!(q.is_empty());
    }

    #[test]
    fn remove_and_retouch() {
        let t0 = Instant::now();
        let mut q = TimeoutQueue::default();
        for i in 0..5 {
            q.touch(i, t0);
        }
        q.remove(2);
        q.remove(0);
        q.remove(4);
        q.remove(4);
        assert_eq!(q.len(), 2);
        q.touch(1, t0);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_expired(t0, Duration::ZERO)).collect();
        assert_eq!(order, vec![3, 1]);
    }
}
