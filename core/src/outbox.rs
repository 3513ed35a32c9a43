//! A bounded, acknowledged send queue: what an owner keeps for each peer it
//! replicates to. Sans-IO: the relay's peer task and the mesh simulation drive
//! the same code.
//!
//! Items get consecutive sequence numbers. A batch is sent from the first item
//! not yet sent on the current stream; the peer acknowledges the highest
//! sequence number it holds durably, which drops every item up to it. A new
//! stream (`reconnected`) sends everything not acknowledged again. A full
//! queue refuses new items instead of growing: the caller repairs that peer by
//! other means (anti-entropy) rather than waiting for it.

use std::collections::VecDeque;

/// See the module docs.
#[derive(Debug)]
pub struct Outbox<T> {
    items: VecDeque<(u64, T, usize)>,
    next_seq: u64,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
    sent_upto: u64,
    acked: u64,
}

impl<T> Outbox<T> {
    /// An empty queue holding at most `max_items` items and `max_bytes` bytes
    /// (an item larger than `max_bytes` still enters an empty queue).
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self { items: VecDeque::new(), next_seq: 1, bytes: 0, max_items, max_bytes, sent_upto: 0, acked: 0 }
    }

    /// True when an item of `bytes` would be accepted now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.items.len() < self.max_items && (self.items.is_empty() || self.bytes + bytes <= self.max_bytes)
    }

    /// Queues `item` (weighing `bytes`); its sequence number, or `None` when full.
    pub fn push(&mut self, item: T, bytes: usize) -> Option<u64> {
        if !self.has_room(bytes) {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += bytes;
        self.items.push_back((seq, item, bytes));
        Some(seq)
    }

    /// A new stream: everything not acknowledged is sent again.
    pub fn reconnected(&mut self) {
        self.sent_upto = self.acked;
    }

    /// True when some queued item was not sent on the current stream yet.
    pub fn has_unsent(&self) -> bool {
        self.items.back().is_some_and(|(s, _, _)| *s > self.sent_upto)
    }

    /// The next batch to send on the current stream (at most `max` items):
    /// the sequence number of its last item and the items. `None` when
    /// everything queued was sent.
    pub fn next_batch(&mut self, max: usize) -> Option<(u64, Vec<&T>)> {
        let start = self.items.partition_point(|(s, _, _)| *s <= self.sent_upto);
        let batch: Vec<(u64, &T)> = self.items.iter().skip(start).take(max.max(1)).map(|(s, t, _)| (*s, t)).collect();
        let last = batch.last()?.0;
        self.sent_upto = last;
        Some((last, batch.into_iter().map(|(_, t)| t).collect()))
    }

    /// The peer holds everything up to `seq` durably. Returns true when the
    /// acknowledged mark moved.
    pub fn ack(&mut self, seq: u64) -> bool {
        while self.items.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, _, b)) = self.items.pop_front() {
                self.bytes -= b;
            }
        }
        let moved = seq > self.acked;
        self.acked = self.acked.max(seq);
        self.sent_upto = self.sent_upto.max(self.acked);
        moved
    }

    /// Highest sequence number acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Items queued (sent or not) and not acknowledged.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The oldest item not acknowledged.
    pub fn front(&self) -> Option<&T> {
        self.items.front().map(|(_, t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_acks_and_resends_after_reconnect() {
        let mut q = Outbox::new(10, 1 << 20);
        for i in 0..5 {
            assert_eq!(q.push(i, 1), Some(i + 1));
        }
        assert_eq!(q.next_batch(2), Some((2, vec![&0, &1])));
        assert_eq!(q.next_batch(10), Some((5, vec![&2, &3, &4])));
        assert_eq!(q.next_batch(10), None, "everything was sent");
        assert!(!q.has_unsent());
        assert!(q.ack(2));
        assert_eq!((q.len(), q.acked()), (3, 2));
        // The stream broke: 3..=5 were not acknowledged and go again.
        q.reconnected();
        assert_eq!(q.next_batch(10), Some((5, vec![&2, &3, &4])));
        assert!(!q.ack(1), "an old ack changes nothing");
        assert!(q.ack(5));
        assert!(q.is_empty());
    }

    #[test]
    fn bounded_in_items_and_bytes() {
        let mut q = Outbox::new(2, 100);
        assert!(q.push("a", 60).is_some());
        assert!(q.push("b", 60).is_none(), "over the byte bound");
        assert!(q.push("c", 40).is_some());
        assert!(q.push("d", 1).is_none(), "over the item bound");
        q.ack(1);
        assert!(q.push("d", 1).is_some(), "room again after an ack");
        let mut big = Outbox::new(2, 10);
        assert!(big.push("huge", 1000).is_some(), "an empty queue takes any item");
    }
}
