//! Deadlines to wake up at: a min-heap of instants with cancellation, so the queue runner
//! sleeps exactly until the next retry or suspension end instead of polling.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Names one scheduled item, for [`Timers::cancel`]. Never reused within one [`Timers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

/// Items due at instants, popped in deadline order; items due at the same instant come out in
/// insertion order, so a run replays exactly.
///
/// Cancellation is lazy: the item leaves at once, its heap slot when it reaches the top or
/// when cancelled slots outnumber live ones (then the heap is rebuilt), so memory stays
/// proportional to the live items and every operation is O(log n) amortised. The top of the
/// heap is always live, which lets [`Timers::next_deadline`] take `&self`.
#[derive(Debug)]
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, (Instant, T)>,
    seq: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new(), live: HashMap::new(), seq: 0 }
    }
}

impl<T> Timers<T> {
    /// No items scheduled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedule `item` for `at`.
    pub fn insert(&mut self, at: Instant, item: T) -> TimerId {
        let id = self.seq;
        self.seq += 1;
        self.heap.push(Reverse((at, id)));
        self.live.insert(id, (at, item));
        TimerId(id)
    }

    /// Remove a scheduled item and return it; `None` if it was already popped or cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let (_, item) = self.live.remove(&id.0)?;
        self.drop_dead_top();
        if self.heap.len() > 2 * self.live.len() + 16 {
            self.heap = self.live.iter().map(|(&id, &(at, _))| Reverse((at, id))).collect();
        }
        Some(item)
    }

    /// When the item `id` is due, if it is still scheduled.
    pub fn deadline(&self, id: TimerId) -> Option<Instant> {
        self.live.get(&id.0).map(|(at, _)| *at)
    }

    /// The earliest deadline: sleep until then (or until new work arrives).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Every item due at or before `now`, earliest first (ties in insertion order).
    pub fn pop_due(&mut self, now: Instant) -> Vec<T> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some((_, item)) = self.live.remove(&id) {
                due.push(item);
            }
        }
        self.drop_dead_top();
        due
    }

    /// Items scheduled (cancelled ones not counted).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// No items scheduled.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn drop_dead_top(&mut self) {
        while let Some(Reverse((_, id))) = self.heap.peek() {
            if self.live.contains_key(id) {
                break;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        assert_eq!(t.next_deadline(), None);
        assert!(t.pop_due(t0 + S(1000)).is_empty());
        for (secs, name) in [(30, "c"), (10, "a"), (20, "b"), (40, "d")] {
            t.insert(t0 + S(secs), name);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.next_deadline(), Some(t0 + S(10)));
        assert!(t.pop_due(t0 + S(9)).is_empty());
        assert_eq!(t.pop_due(t0 + S(10)), ["a"]);
        assert_eq!(t.next_deadline(), Some(t0 + S(20)));
        assert_eq!(t.pop_due(t0 + S(35)), ["b", "c"]);
        assert_eq!(t.pop_due(t0 + S(100)), ["d"]);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn equal_instants_keep_insertion_order() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        for i in 0..100 {
            t.insert(t0 + S(i % 3), i);
        }
        let got = t.pop_due(t0 + S(2));
        let want: Vec<_> =
            (0..100).filter(|i| i % 3 == 0).chain((0..100).filter(|i| i % 3 == 1)).chain((0..100).filter(|i| i % 3 == 2)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn cancellation() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let a = t.insert(t0 + S(10), "a");
        let b = t.insert(t0 + S(20), "b");
        let c = t.insert(t0 + S(30), "c");
        assert_eq!(t.deadline(b), Some(t0 + S(20)));
        // Cancelling the middle one is invisible until it would have been due.
        assert_eq!(t.cancel(b), Some("b"));
        assert_eq!(t.cancel(b), None);
        assert_eq!(t.deadline(b), None);
        assert_eq!(t.len(), 2);
        // Cancelling the top moves the next deadline at once.
        assert_eq!(t.cancel(a), Some("a"));
        assert_eq!(t.next_deadline(), Some(t0 + S(30)));
        assert_eq!(t.pop_due(t0 + S(100)), ["c"]);
        // A popped item cannot be cancelled; ids are never reused.
        assert_eq!(t.cancel(c), None);
        let d = t.insert(t0, "d");
        assert_ne!(d, a);
        assert_ne!(d, c);
        assert_eq!(t.cancel(d), Some("d"));
        assert_eq!(t.next_deadline(), None);
        assert!(t.is_empty());
    }

    #[test]
    fn reschedule_is_cancel_and_insert() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let id = t.insert(t0 + S(60), "example.com");
        let item = t.cancel(id).unwrap();
        let id = t.insert(t0 + S(300), item);
        assert_eq!(t.next_deadline(), Some(t0 + S(300)));
        assert_eq!(t.deadline(id), Some(t0 + S(300)));
        assert!(t.pop_due(t0 + S(299)).is_empty());
        assert_eq!(t.pop_due(t0 + S(300)), ["example.com"]);
    }

    #[test]
    fn cancelled_slots_do_not_accumulate() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let keep = t.insert(t0, u64::MAX);
        for i in 0..100_000u64 {
            let id = t.insert(t0 + S(1 + i), i);
            assert_eq!(t.cancel(id), Some(i));
            assert!(t.heap.len() <= 2 * t.live.len() + 17);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.deadline(keep), Some(t0));
        assert_eq!(t.pop_due(t0 + S(1_000_000)), [u64::MAX]);
    }

    /// A model check: random inserts, cancels and pops against a sorted list.
    #[test]
    fn matches_a_simple_model() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let mut model: Vec<(Instant, u64, TimerId)> = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut now = t0;
        for i in 0..20_000u64 {
            match rnd(4) {
                0 | 1 => {
                    let at = now + S(rnd(50));
                    let id = t.insert(at, i);
                    model.push((at, i, id));
                }
                2 if !model.is_empty() => {
                    let k = rnd(model.len() as u64) as usize;
                    let (_, item, id) = model.remove(k);
                    assert_eq!(t.cancel(id), Some(item));
                }
                _ => {
                    now += S(rnd(10));
                    // Stable sort by instant: ties stay in insertion order.
                    model.sort_by_key(|e| e.0);
                    let n = model.iter().take_while(|e| e.0 <= now).count();
                    let want: Vec<u64> = model.drain(..n).map(|e| e.1).collect();
                    assert_eq!(t.pop_due(now), want);
                }
            }
            assert_eq!(t.len(), model.len());
            assert_eq!(t.next_deadline(), model.iter().map(|e| e.0).min());
        }
    }
}
