//! A fair work queue: one FIFO lane per scenario or hook, served round-robin, so a burst in
//! one lane waits behind itself and not in front of everyone else.

use std::collections::{HashMap, VecDeque};

pub struct FairQueue<T> {
    lanes: HashMap<String, VecDeque<T>>,
    order: VecDeque<String>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            lanes: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn push(&mut self, lane: &str, item: T) {
        let q = match self.lanes.get_mut(lane) {
            Some(q) => q,
            None => self.lanes.entry(lane.to_string()).or_default(),
        };
        if q.is_empty() {
            self.order.push_back(lane.to_string());
        }
        q.push_back(item);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every queued item, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.lanes.values().flatten()
    }

    /// Up to `max` items, at most `per_lane` from a lane per round.
    pub fn take(&mut self, max: usize, per_lane: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(max.min(self.len));
        while out.len() < max {
            let Some(lane) = self.order.pop_front() else {
                break;
            };
            let q = self.lanes.get_mut(&lane).expect("ordered lanes exist");
            for _ in 0..per_lane.min(max - out.len()) {
                match q.pop_front() {
                    Some(item) => out.push(item),
                    None => break,
                }
            }
            if q.is_empty() {
                self.lanes.remove(&lane);
            } else {
                self.order.push_back(lane);
            }
        }
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_does_not_hold_back_another_lane() {
        let mut q = FairQueue::default();
        for i in 0..10_000 {
            q.push("busy", i);
        }
        q.push("quiet", -1);
        let first = q.take(64, 16);
        assert!(first.contains(&-1));
        assert_eq!(first.len(), 64);
        assert_eq!(q.len(), 10_001 - 64);
    }

    #[test]
    fn lanes_keep_their_order() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push("a", i);
        }
        let all = q.take(100, 2);
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(q.is_empty());
    }
}
